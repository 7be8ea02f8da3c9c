"""``torch.compile`` sees each connection as one graph: no graph breaks, no host syncs.

``torch._dynamo.explain`` traces a call as ``torch.compile`` would and reports every graph
break with its reason. The reference modules (``impl="torch"``) must trace in one graph: a
data-dependent Python branch (``if tensor.any():``) or a host sync (``.item()``) in their math
would break it, once per layer. The Sinkhorn kernel is a registered ``torch.library`` op, so
a compiled model keeps it inside its graph too (checked here under Triton's interpreter, with
Inductor compiling the ops around it).
"""

import pytest
import torch
from branches import prenorm_branch

import hclib
from hclib.kernels.dispatch import triton_available

D = 8


def connection(kind, impl):
    branch = prenorm_branch(D, dtype=torch.float32, seed=0)
    if kind == "residual":
        return hclib.Residual(D, branch, impl=impl), (2, 3, D)
    if kind == "hc static":
        return hclib.HyperConnection(D, branch, n=4, dynamic=False, impl=impl), (2, 3, 4, D)
    if kind == "hc dynamic":
        return hclib.HyperConnection(D, branch, n=4, dynamic=True, impl=impl), (2, 3, 4, D)
    if kind == "fc":
        return hclib.FracConnection(D, branch, m=4, impl=impl), (2, 3, 4, D // 4)
    return hclib.ManifoldHyperConnection(D, branch, n=4, impl=impl), (2, 3, 4, D)


KINDS = ["residual", "hc static", "hc dynamic", "fc", "mhc"]


def explain(fn, *args):
    torch._dynamo.reset()
    report = torch._dynamo.explain(fn)(*args)
    reasons = [str(b.reason) for b in report.break_reasons]
    return report.graph_count, report.graph_break_count, reasons


@pytest.mark.parametrize("kind", KINDS)
def test_reference_connection_traces_in_one_graph_without_breaks(kind):
    module, shape = connection(kind, "torch")
    graphs, breaks, reasons = explain(module, torch.randn(shape))
    assert (graphs, breaks) == (1, 0), reasons


def test_a_stack_of_reference_mhc_layers_traces_in_one_graph():
    layers = torch.nn.Sequential(
        *(
            hclib.ManifoldHyperConnection(
                D, prenorm_branch(D, torch.float32, seed=i), n=4, layer_id=i
            )
            for i in range(3)
        )
    )
    for layer in layers:
        layer.impl = "torch"
    graphs, breaks, reasons = explain(layers, torch.randn(2, 3, 4, D))
    assert (graphs, breaks) == (1, 0), reasons


def test_sinkhorn_reference_traces_without_breaks_and_checks_values_only_eagerly():
    logits = torch.randn(5, 4, 4)
    graphs, breaks, reasons = explain(lambda x: hclib.sinkhorn_knopp(2.0 * x, 20), logits)
    assert (graphs, breaks) == (1, 0), reasons
    with pytest.raises(ValueError, match="NaN"):
        hclib.sinkhorn_knopp(torch.full((2, 2), float("nan")))  # eager: checked


def test_explain_does_count_a_data_dependent_branch():
    # the measuring stick works: a host sync in the math is one break
    def synced(x):
        y = hclib.sinkhorn_knopp(x)
        if bool(torch.isfinite(y).all()):
            y = y * 1.0
        return y

    _, breaks, _ = explain(synced, torch.randn(5, 4, 4))
    assert breaks >= 1


# ---------------------------------------------------------------- the registered kernel op
needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")


def kernel_sinkhorn(x, iters=5):
    from hclib.kernels.sinkhorn import sinkhorn_knopp  # after conftest set the interpreter

    return sinkhorn_knopp(x, iters)


@needs_triton
def test_sinkhorn_kernel_op_stays_inside_the_graph():
    logits = torch.randn(6, 4, 4, requires_grad=True)
    graphs, breaks, reasons = explain(lambda x: kernel_sinkhorn(2.0 * x).sum(-1), logits)
    assert (graphs, breaks) == (1, 0), reasons


@needs_triton
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_sinkhorn_kernel_op_equals_the_reference_forward_and_backward(backend):
    def fn(x):
        return kernel_sinkhorn(2.0 * x).pow(2).sum(-1)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    x = torch.randn(6, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = compiled(x)
    (g,) = torch.autograd.grad(out.sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = hclib.sinkhorn_knopp(2.0 * x_ref, 5).pow(2).sum(-1)
    (g_ref,) = torch.autograd.grad(ref.sum(), x_ref)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, g_ref, atol=1e-6, rtol=1e-5)


@needs_triton
def test_sinkhorn_kernel_op_passes_torch_library_opcheck():
    # schema, fake (shape) function, autograd registration and dispatch agree with each other
    logits = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    kernel_sinkhorn(logits)  # imports the kernel file, which registers the op
    torch.library.opcheck(torch.ops.hclib.sinkhorn_knopp.default, (logits, 5))


# ------------------------------------------------- the fused connections (impl="triton")
# The kernels' autograd Functions run as the registered ops hclib::fused / hclib::fused_backward
# while torch.compile traces (hclib.kernels.ops); under the interpreter too.


@needs_triton
@pytest.mark.parametrize("kind", KINDS)
def test_fused_connection_traces_in_one_graph_without_breaks(kind):
    module, shape = connection(kind, "triton")
    graphs, breaks, reasons = explain(module, torch.randn(shape))
    assert (graphs, breaks) == (1, 0), reasons


@needs_triton
@pytest.mark.parametrize("kind", ["residual", "hc", "fc", "mhc"])
def test_a_whole_gpt_with_fused_connections_compiles_to_one_graph(kind):
    from hclib.models.gpt import GPT, GPTConfig

    cfg = GPTConfig(
        vocab_size=64,
        block_size=16,
        n_layer=2,
        n_head=2,
        d_model=16,
        connection=kind,
        impl="triton",
    )
    torch.manual_seed(0)
    graphs, breaks, reasons = explain(GPT(cfg), torch.randint(0, 64, (2, 8)))
    assert (graphs, breaks) == (1, 0), reasons


def _forward_backward(module, H):
    H = H.detach().clone().requires_grad_(True)
    module.zero_grad()
    out = module(H)
    out.pow(2).sum().backward()
    return [out, H.grad] + [p.grad for p in module.parameters()]


@needs_triton
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("kind", ["hc static", "hc dynamic", "fc", "mhc"])
def test_compiled_fused_connection_equals_the_eager_kernels_forward_and_every_gradient(
    kind, backend
):
    module, shape = connection(kind, "triton")
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    H = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    eager = _forward_backward(module, H)
    torch._dynamo.reset()
    compiled = _forward_backward(torch.compile(module, backend=backend, fullgraph=True), H)
    assert len(compiled) == len(eager)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["hc dynamic", "fc", "mhc"])
def test_compiled_fused_connection_equals_the_eager_kernels_on_gpu_at_4k_tokens(kind):
    # Inductor around the real kernels: the registered ops in a compiled graph, bf16 states
    module, shape = connection(kind, "triton")
    module = module.cuda()
    shape = (4096, *shape[2:])
    H = torch.randn(shape, generator=torch.Generator().manual_seed(2)).cuda().bfloat16()
    eager = _forward_backward(module, H)
    torch._dynamo.reset()
    compiled = _forward_backward(torch.compile(module, fullgraph=True), H)
    for got, want in zip(compiled, eager, strict=True):
        torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
