"""The ``impl`` switch: which code runs a connection's math, and that the choice never changes it.

``"torch"`` is the reference and must compute exactly what the equations say (bitwise what it
computed before the switch existed); ``"compile"`` and ``"triton"`` must agree with it;
``"auto"`` picks Triton only for CUDA tensors; ``import hclib`` never imports triton.
"""

import copy
import subprocess
import sys

import pytest
import torch
from branches import prenorm_branch, randomise
from torch import nn

import hclib
from hclib.kernels import dispatch
from hclib.kernels.dispatch import IMPLS, resolve_impl, triton_available
from hclib.models.gpt import GPT, GPTConfig
from hclib.models.mlp import DeepMLP
from hclib.models.wiring import build_connection

CPU = torch.zeros(1)
needs_triton = pytest.mark.skipif(not triton_available(), reason="needs triton")


def connections(impl="auto"):
    """One module of each connection, with random weights, around a float64 branch."""
    d = 12
    return {
        "residual": hclib.Residual(d, prenorm_branch(d, seed=0), impl=impl),
        "hc": randomise(hclib.HyperConnection(d, prenorm_branch(d, seed=1), n=3, impl=impl)),
        "fc": randomise(hclib.FracConnection(d, prenorm_branch(d, seed=2), m=4, impl=impl)),
        "mhc": randomise(
            hclib.ManifoldHyperConnection(d, prenorm_branch(d, seed=3), n=3, impl=impl), 0.1
        ),
    }


def state(kind, batch=(2, 5), d=12, dtype=torch.float64):
    shape = {"residual": (d,), "hc": (3, d), "fc": (4, d // 4), "mhc": (3, d)}[kind]
    return torch.randn(*batch, *shape, dtype=dtype, generator=torch.Generator().manual_seed(7))


def forward_backward(layer, H):
    H = H.detach().clone().requires_grad_(True)
    layer.zero_grad()
    out = layer(H)
    out.pow(2).sum().backward()
    return [out, H.grad] + [p.grad for p in layer.parameters()]


# ----------------------------------------------------------------------- resolution
RESOLUTIONS = [  # (impl, CUDA tensor, expected)
    ("torch", False, "torch"),
    ("compile", False, "compile"),
    ("auto", False, "torch"),
    ("torch", True, "torch"),
    ("compile", True, "compile"),
    ("auto", True, "triton"),
    ("triton", True, "triton"),
]


@pytest.mark.parametrize(("impl", "cuda", "expected"), RESOLUTIONS)
def test_resolve_impl_picks_triton_only_for_cuda_tensors_under_auto(impl, cuda, expected):
    if cuda and not (torch.cuda.is_available() and triton_available()):
        pytest.skip("needs CUDA and triton")
    tensor = torch.zeros(1, device="cuda" if cuda else "cpu")
    assert resolve_impl(impl, tensor) == expected


@needs_triton
def test_resolve_impl_runs_triton_on_cpu_tensors_only_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert resolve_impl("triton", CPU) == "triton"
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="impl='triton' runs on CUDA tensors.*got a tensor on cpu"):
        resolve_impl("triton", CPU)


def test_resolve_impl_without_triton_falls_back_under_auto_and_names_the_package(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert resolve_impl("auto", CPU) == "torch"
    with pytest.raises(ImportError, match=r"impl='triton' needs the triton package"):
        resolve_impl("triton", CPU)


@pytest.mark.parametrize("bad", ["cuda", "Triton", "", None, 1])
def test_every_connection_and_model_rejects_an_unknown_impl(bad):
    message = r"impl must be one of \('auto', 'torch', 'compile', 'triton'\)"
    d, branch = 8, nn.Identity()
    makers = [
        lambda: hclib.Residual(d, branch, impl=bad),
        lambda: hclib.HyperConnection(d, branch, impl=bad),
        lambda: hclib.FracConnection(d, branch, impl=bad),
        lambda: hclib.ManifoldHyperConnection(d, branch, impl=bad),
        lambda: build_connection("hc", d, branch, impl=bad),
        lambda: GPTConfig(impl=bad),
        lambda: DeepMLP(4, 2, dim=d, depth=1, impl=bad),
    ]
    for make in makers:
        with pytest.raises(ValueError, match=message):
            make()
    with pytest.raises(ValueError, match=message):
        resolve_impl(bad, CPU)


def test_impl_reaches_every_connection_of_the_models():
    cfg = GPTConfig(d_model=16, n_head=2, n_layer=2, connection="hc", impl="compile")
    assert {c.impl for c in GPT(cfg).connections()} == {"compile"}
    mlp = DeepMLP(4, 2, dim=8, depth=3, connection="fc", impl="torch")
    assert {c.impl for c in mlp.layers} == {"torch"}
    assert IMPLS == ("auto", "torch", "compile", "triton")


def test_import_hclib_does_not_import_triton_and_works_without_it():
    code = (
        "import sys\n"
        "import hclib, hclib.kernels, hclib.models.gpt\n"
        "assert 'triton' not in sys.modules, 'import hclib imported triton'\n"
        "for name in [m for m in sys.modules if m.startswith('hclib.kernels')]:\n"
        "    del sys.modules[name]\n"
        "sys.modules['triton'] = None  # as if it were not installed\n"
        "import torch\n"
        "layer = hclib.HyperConnection(8, torch.nn.Identity(), n=2)\n"
        "assert layer(torch.randn(3, 2, 8)).shape == (3, 2, 8)\n"
    )
    env = {"TRITON_INTERPRET": "0", "PATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------ the reference is unchanged
def hc_reference_as_written_before_impl(layer, H):
    """HyperConnection.forward as it read before ``impl`` existed (HC Eqs. 3-5)."""
    Hc, alpha, beta = layer._state_weights(H, (layer.n, layer.dim), "(n, d)", expand=False)
    mix = alpha.transpose(-1, -2) @ Hc
    h0, H_mixed = mix[..., 0, :], mix[..., 1:, :]
    y = layer.branch(h0.to(H.dtype)).to(Hc.dtype)
    return (beta.unsqueeze(-1) * y.unsqueeze(-2) + H_mixed).to(H.dtype)


def fc_reference_as_written_before_impl(layer, H):
    """FracConnection.forward as it read before ``impl`` existed (FC Eq. 8)."""
    Hc, alpha, beta = layer._state_weights(H, *layer._tail(), expand=False)
    m = layer.m
    mix = alpha.transpose(-1, -2) @ Hc
    h0 = hclib.merge_fractions(mix[..., :m, :])
    y = layer.branch(h0.to(H.dtype)).to(Hc.dtype)
    return (beta.unsqueeze(-1) * hclib.split_fractions(y, m) + mix[..., m:, :]).to(H.dtype)


@pytest.mark.parametrize("impl", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_torch_impl_is_bitwise_the_reference_equations(impl, dtype):
    layers = connections(impl)
    for kind, by_hand in (
        ("hc", hc_reference_as_written_before_impl),
        ("fc", fc_reference_as_written_before_impl),
    ):
        layer = layers[kind].float()
        layer.branch.to(dtype)
        H = state(kind, dtype=dtype)
        torch.testing.assert_close(layer(H), by_hand(layer, H), atol=0, rtol=0)


# ---------------------------------------------------------------- compile and triton agree
@pytest.fixture
def traced_compile(monkeypatch):
    """``impl="compile"`` traced by dynamo and AOTAutograd but run eagerly (no codegen)."""
    monkeypatch.setattr(dispatch, "compile_options", {"backend": "aot_eager"})
    dispatch.reset_compiled()
    yield
    dispatch.reset_compiled()


@pytest.mark.parametrize("kind", ["residual", "hc", "fc"])  # mhc: test_kernels_manifold.py
def test_compile_impl_traces_the_reference_and_gives_its_values(kind, traced_compile):
    layer = connections("torch")[kind]
    expected = forward_backward(layer, state(kind))
    layer.impl = "compile"
    for got, want in zip(forward_backward(layer, state(kind)), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_compile_impl_shares_one_graph_between_the_layers_of_a_model(traced_compile):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    layers = [
        hclib.HyperConnection(12, prenorm_branch(12, seed=k), n=3, layer_id=k, impl="compile")
        for k in range(5)
    ]
    H = state("hc").requires_grad_(True)  # as every later layer's input
    for layer in layers:
        H = layer(H)
    assert counters["stats"]["unique_graphs"] == 2  # _read_out and _write_in, once each


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["hc", "fc"])
def test_compile_impl_with_inductor_matches_the_reference_on_gpu(kind):
    dispatch.reset_compiled()
    layer = connections("torch")[kind].float().cuda()
    H = state(kind, dtype=torch.float32).cuda()
    expected = forward_backward(layer, H)
    layer.impl = "compile"
    for got, want in zip(forward_backward(layer, H), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@needs_triton
@pytest.mark.parametrize("connection", ["hc", "fc"])
def test_gpt_with_triton_connections_matches_the_reference(connection):
    torch.manual_seed(0)
    cfg = GPTConfig(d_model=32, n_head=2, n_layer=1, vocab_size=50, connection=connection)
    model = GPT(cfg)
    for layer in model.connections():
        randomise(layer, 0.1)
    idx = torch.randint(0, 50, (2, 9))
    results = []
    for impl in ("torch", "triton"):
        clone = copy.deepcopy(model)
        for layer in clone.connections():
            layer.impl = impl
        _, loss = clone(idx, idx)
        loss.backward()
        results.append([loss] + [p.grad for p in clone.parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
