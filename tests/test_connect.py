"""hclib.connect: one line joins a stack of branches with any of the four connections."""

import contextlib

import pytest
import torch
from branches import F64, prenorm_branch, prenorm_stack, randomise
from torch import nn

import hclib

D, DEPTH = 16, 5

# (connection, rate keyword, factor): at init the stack's output is factor x Pre-Norm
CASES = [
    ("residual", {}, 1),
    ("hc", {"n": 1}, 1),
    ("hc", {"n": 4}, 4),
    ("fc", {"m": 1}, 1),
    ("fc", {"m": 4}, 1),
    ("mhc", {"n": 2}, 2),
    ("mhc", {"n": 4}, 4),
]
IDS = [f"{c}-{next(iter(r.values()), '')}" for c, r, _ in CASES]
BATCHES = [(), (3,), (2, 7)]


@contextlib.contextmanager
def default_dtype(dtype):
    """Create the connections' parameters in ``dtype`` (mHC's biases are exact in float64)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def branches(seed=0, depth=DEPTH):
    return [prenorm_branch(D, seed=seed + k) for k in range(depth)]


@pytest.mark.parametrize(("connection", "rate", "factor"), CASES, ids=IDS)
@pytest.mark.parametrize("batch", BATCHES)
def test_connect_at_init_computes_the_prenorm_residual_network(connection, rate, factor, batch):
    blocks = branches()
    with default_dtype(F64):
        stack = hclib.connect(blocks, D, connection, **rate)
    h = torch.randn(*batch, D, dtype=F64)
    expected = prenorm_stack(blocks, h)[-1]
    torch.testing.assert_close(stack(h), factor * expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("connection", "rate", "factor"), CASES, ids=IDS)
def test_connect_then_a_final_norm_equals_the_residual_stack_at_init(connection, rate, factor):
    """The A/B switch: after the final norm, every connection starts as connection="residual"."""
    blocks = branches(seed=10)
    with default_dtype(F64):
        stack = hclib.connect(blocks, D, connection, **rate)
        baseline = hclib.connect(blocks, D, "residual")
    final_norm = nn.LayerNorm(D, eps=0.0, elementwise_affine=False)
    h = torch.randn(4, D, dtype=F64)
    torch.testing.assert_close(final_norm(stack(h)), final_norm(baseline(h)), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("connection", "rate", "factor"), CASES, ids=IDS)
def test_connect_wraps_branch_k_with_layer_id_k_and_the_requested_connection(
    connection, rate, factor
):
    blocks = branches()
    stack = hclib.connect(blocks, D, connection, **rate)
    kind = {
        "residual": hclib.Residual,
        "hc": hclib.HyperConnection,
        "fc": hclib.FracConnection,
        "mhc": hclib.ManifoldHyperConnection,
    }[connection]
    assert len(stack.layers) == DEPTH
    for k, (layer, block) in enumerate(zip(stack.layers, blocks, strict=True)):
        assert type(layer) is kind
        assert layer.branch is block
        if connection != "residual":
            assert layer.layer_id == k
    if connection in ("hc", "mhc"):
        assert [layer.n for layer in stack.layers] == [rate["n"]] * DEPTH


@pytest.mark.parametrize(("connection", "rate", "factor"), CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_connect_maps_b_t_d_to_b_t_d_in_the_input_dtype(connection, rate, factor, dtype):
    stack = hclib.connect(branches(), D, connection, **rate).to(dtype)
    h = torch.randn(2, 7, D, dtype=dtype)
    out = stack(h)
    assert out.shape == h.shape and out.dtype == dtype


@pytest.mark.parametrize(("connection", "rate", "factor"), CASES, ids=IDS)
def test_connect_trains_every_branch_and_every_connection_parameter(connection, rate, factor):
    blocks = [b.float() for b in branches()]
    stack = randomise(hclib.connect(blocks, D, connection, **rate), std=0.1)
    stack(torch.randn(3, D)).pow(2).sum().backward()
    for name, parameter in stack.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"


def test_connect_enter_and_leave_are_the_two_ends_of_forward():
    stack = hclib.connect([b.float() for b in branches()], D, "hc", n=3)
    h = torch.randn(2, D)
    H = stack.enter(h)
    assert H.shape == (2, 3, D)
    for layer in stack.layers:
        H = layer(H)
    torch.testing.assert_close(stack.leave(H), stack(h))


def test_connect_passes_extra_arguments_to_every_branch():
    seen = []

    class Scaled(nn.Module):
        def forward(self, x, scale, *, shift=0.0):
            seen.append((scale, shift))
            return scale * x + shift

    stack = hclib.connect([Scaled(), Scaled()], D, "residual")
    h = torch.randn(D)
    torch.testing.assert_close(stack(h, 0.5, shift=1.0), 2.25 * h + 2.5)  # (1.5 h + 1) * 1.5 + 1
    assert seen == [(0.5, 1.0), (0.5, 1.0)]


@pytest.mark.parametrize(
    ("connection", "options", "attribute", "value"),
    [
        ("hc", {"dynamic": False}, "dynamic", False),
        ("fc", {"tanh": False}, "use_tanh", False),
        ("residual", {"norm": "post"}, "placement", "post"),
        ("mhc", {"impl": "torch"}, "impl", "torch"),
    ],
)
def test_connect_passes_options_to_every_connection(connection, options, attribute, value):
    stack = hclib.connect(branches(), D, connection, **options)
    assert all(getattr(layer, attribute) == value for layer in stack.layers)


BAD = [
    (lambda: hclib.connect(branches(), D, "highway"), ValueError, "connection must be one of"),
    (lambda: hclib.connect(branches(), 10, "fc", m=4), ValueError, "d=10 is not divisible by m=4"),
    (lambda: hclib.connect(branches(), D, "hc", n=0), ValueError, "n must be >= 1 streams"),
    (lambda: hclib.connect(branches(), D, "hc", rate=2), TypeError, "unknown option.*'rate'"),
    (lambda: hclib.connect([], D), ValueError, "branches is empty"),
    (lambda: hclib.connect(prenorm_branch(D), D), TypeError, r"pass \[branch\]"),
    (lambda: hclib.connect([nn.Identity(), 3], D), TypeError, "branch must be a callable"),
    (lambda: hclib.connect(branches(), D)(torch.randn(2, D + 1)), ValueError, r"\(\.\.\., 16\)"),
    (lambda: hclib.connect(branches(), D)([1.0] * D), TypeError, "must be a torch.Tensor"),
]


@pytest.mark.parametrize(("build", "error", "message"), BAD)
def test_connect_rejects_bad_input_with_a_clear_error(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_connect_is_exported_and_documented_with_shapes():
    assert "connect" in hclib.__all__ and "ConnectedStack" in hclib.__all__
    assert "(..., d)" in hclib.connect.__doc__ and "layer_id" in hclib.connect.__doc__


@pytest.mark.parametrize("connection", ["residual", "hc", "mhc"])
def test_connection_matrix_unfolds_the_layers_of_a_connected_stack(connection):
    """At init the unfolded matrix of a stack is the Pre-Norm one: every earlier layer feeds
    every later one with weight 1 (HC Eq. 27; mHC's read-out sums to 1 over the streams), and
    the output, the sum of the n streams, gets each with weight n."""
    with default_dtype(F64):
        stack = hclib.connect(branches(depth=3), D, connection, n=2)
    H = stack.enter(torch.randn(4, D, dtype=F64))
    C = hclib.connection_matrix(stack.layers, None if connection == "residual" else H)
    assert C.shape == (5, 5)  # embedding, 3 branches, output
    expected = torch.ones(5, 5, dtype=C.dtype).tril(-1)
    expected[-1] *= 1 if connection == "residual" else 2  # n = 2 streams summed at the output
    torch.testing.assert_close(C, expected, atol=1e-6, rtol=0)
