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
RESOLUTIONS = [  # (impl, CPU tensor, expected)
    ("torch", "torch"),
    ("compile", "compile"),
    ("auto", "torch"),
]


@pytest.mark.parametrize(("impl", "expected"), RESOLUTIONS)
def test_resolve_impl_on_cpu_runs_the_reference_under_auto(impl, expected):
    assert resolve_impl(impl, CPU) == expected


class FakeGPU:
    """A stand-in for a CUDA state tensor: what ``auto_impl`` looks at."""

    is_cuda = True
    device = torch.device("cuda", 1)

    def __init__(self, dtype):
        self.dtype = dtype


AUTO = [  # (compute capability, ROCm, state dtype, expected, part of the reason)
    ((9, 0), None, torch.bfloat16, "triton", "capability 9.0, torch.bfloat16"),
    ((9, 0), None, torch.float32, "triton", "capability 9.0, torch.float32"),
    ((10, 0), None, torch.bfloat16, "triton", "capability 10.0"),
    ((8, 0), None, torch.bfloat16, "torch", "capability 8.0 < 9.0"),  # A100
    ((7, 5), None, torch.float16, "torch", "capability 7.5 < 9.0"),  # T4 on Colab
    ((9, 0), None, torch.float16, "torch", "a torch.float16 state"),
    ((9, 0), None, torch.float64, "torch", "a torch.float64 state"),
    ((9, 4), "6.2.0", torch.bfloat16, "torch", "ROCm"),  # MI300X reports gfx942 as 9.4
]


@pytest.mark.parametrize(("capability", "hip", "dtype", "expected", "why"), AUTO)
def test_auto_picks_triton_only_on_nvidia_gpus_of_capability_9_for_tuned_dtypes(
    monkeypatch, caplog, capability, hip, dtype, expected, why
):
    asked = []
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(
        torch.cuda, "get_device_capability", lambda device: asked.append(device) or capability
    )
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    state = FakeGPU(dtype)
    choice, reason = dispatch.auto_impl(state)
    assert choice == expected and why in reason
    assert asked in ([], [state.device])  # the state's own GPU, not the current one
    with caplog.at_level("INFO", logger="hclib.kernels"):
        for _ in range(3):
            assert resolve_impl("auto", state) == expected
    said = [r.getMessage() for r in caplog.records if r.name == "hclib.kernels"]
    assert said == [f"impl='auto' runs {expected}: {reason}"]  # once, not per call


def test_auto_says_once_that_a_cpu_state_runs_the_reference(monkeypatch, caplog):
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    with caplog.at_level("INFO", logger="hclib.kernels"):
        layer = hclib.ManifoldHyperConnection(8, nn.Identity(), n=2)  # impl="auto"
        for _ in range(2):
            layer(torch.zeros(3, 2, 8))
    said = [r.getMessage() for r in caplog.records if r.name == "hclib.kernels"]
    assert said == ["impl='auto' runs torch: the state is on cpu, not on a CUDA GPU"]


def test_every_kernel_launch_runs_under_the_device_of_its_tensors(monkeypatch):
    # Triton launches on the current device; dispatch.launch switches to the tensors' own
    entered, launched = [], []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            entered.append(self.device)

        def __exit__(self, *exc):
            return False

    class CudaTensor(torch.Tensor):
        is_cuda = True
        device = torch.device("cuda", 1)

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: launched.append((grid, entered[-1]))

    monkeypatch.setattr(torch.cuda, "device", Guard)
    x = torch.zeros(2).as_subclass(CudaTensor)
    dispatch.launch(Kernel(), Kernel(), (4,), (1.0, x, 3), on_gpu=True, cpu_meta={})
    assert entered == [torch.device("cuda", 1)] and launched == [((4,), torch.device("cuda", 1))]


@pytest.mark.gpu
def test_kernels_run_on_the_device_of_their_tensors_on_a_second_gpu():
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    module = connections("triton")["mhc"].float().to("cuda:1")
    H = state("mhc", dtype=torch.float32).to("cuda:1")
    with torch.cuda.device(0):
        out = module(H)
    ref = copy.deepcopy(module)
    ref.impl = "torch"
    torch.testing.assert_close(out, ref(H), atol=1e-4, rtol=1e-4)


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
