"""HC's fused kernels (read-out + post+res) against the reference HyperConnection.

Every case runs the same module twice, ``impl="triton"`` and ``impl="torch"``, and compares the
output and every gradient: the state, the branch output and each parameter. On CPU the
kernels run in Triton's interpreter (tests/conftest.py), so the shapes are small; the tests
marked ``gpu`` repeat the comparison at real sizes.
"""

import copy

import pytest
import torch
from torch import nn

import hclib
from hclib.kernels.dispatch import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)]  # (dtype, tolerance x largest entry)
# (batch, n, d): one token, a few, many; d not a multiple of the block size
# (dynamic, norm, norm_affine, tanh): static, and the dynamic variants of Eqs. 10-13
CASES = [
    ((1,), 1, 33, (True, "layer", False, True)),
    ((3,), 2, 100, (False, "layer", False, True)),
    ((17,), 4, 130, (True, "layer", True, True)),
    ((2, 20), 4, 33, (True, "rms", False, True)),
    ((40,), 8, 33, (True, "rms", True, False)),
    ((5,), 8, 100, (False, "layer", False, True)),
    ((40,), 4, 100, (True, "layer", False, False)),
]


class RecordingBranch(nn.Module):
    """``tanh(x W)`` computed in float32, returned in the dtype of ``x``; keeps its output.

    Float32 inside keeps bfloat16 comparisons about the connection, not about the rounding
    a bfloat16 branch would amplify.
    """

    def __init__(self, d, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(d, d, generator=g) / d**0.5)

    def forward(self, x):
        y = torch.tanh(x.float() @ self.weight.float()).to(x.dtype)
        y.retain_grad()
        self.y = y
        return y


def noisy(module, std=0.3, seed=0):
    """Move every parameter off its initial value (init has zero projections, unit scales)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p))
    return module


def run(layer, H, impl, seed=1):
    """Forward and backward with ``impl``; returns the output and every gradient by name."""
    layer = copy.deepcopy(layer)
    layer.impl = impl
    H = H.detach().clone().requires_grad_(True)
    out = layer(H)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    out.backward(g)
    grads = {"H": H.grad, "branch output": layer.branch.y.grad}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    return out, grads


def assert_close_scaled(got, want, tol, name=""):
    """Agreement to ``tol`` relative to the largest entry of ``want`` (sums over d, tokens)."""
    atol = tol * max(want.abs().max().item(), 1e-6)
    torch.testing.assert_close(got, want, atol=atol, rtol=tol, msg=lambda m: f"{name}: {m}")


def compare(layer, H, tol):
    out, grads = run(layer, H, "triton")
    ref_out, ref_grads = run(layer, H, "torch")
    assert out.dtype == H.dtype and out.shape == H.shape
    assert_close_scaled(out, ref_out, tol, "output")
    assert grads.keys() == ref_grads.keys()
    for name, want in ref_grads.items():
        assert grads[name] is not None, f"no gradient for {name}"
        assert grads[name].dtype == want.dtype, name
        assert_close_scaled(grads[name], want, tol, name)


def make_layer(n, d, variant, layer_id=1):
    dynamic, norm, affine, tanh = variant
    branch = RecordingBranch(d)
    layer = hclib.HyperConnection(
        d, branch, n=n, layer_id=layer_id, dynamic=dynamic, norm=norm, norm_affine=affine, tanh=tanh
    )
    return noisy(layer).to(DEVICE)


@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize(("batch", "n", "d", "variant"), CASES)
def test_hc_triton_matches_the_reference_forward_and_every_gradient(
    batch, n, d, variant, dtype, tol
):
    layer = make_layer(n, d, variant)
    H = torch.randn(*batch, n, d).to(DEVICE, dtype)
    compare(layer, H, tol)


@pytest.mark.parametrize("dynamic", [False, True])
def test_hc_triton_read_out_gives_the_reference_mappings(dynamic):
    from hclib.kernels.hyper_pre import hyper_pre

    layer = make_layer(4, 33, (dynamic, "layer", True, True)).double()
    H = torch.randn(2, 5, 4, 33, dtype=torch.float64, device=DEVICE)
    h0, post, res, H_pass = hyper_pre(H, **layer._fused_parameters())
    pre, post_ref, res_ref = layer.mappings(H if dynamic else None)
    torch.testing.assert_close(post, post_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(res, res_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(h0, torch.einsum("...i,...id->...d", pre, H), atol=1e-13, rtol=0)
    assert torch.equal(H_pass, H)


@pytest.mark.parametrize("n", [1, 3])
def test_hc_triton_at_init_is_the_prenorm_residual_in_every_stream(n):
    # Eq. 14: with the initial weights each stream becomes h + T(h)
    branch = RecordingBranch(20)
    layer = hclib.HyperConnection(20, branch, n=n, layer_id=2, impl="triton").to(DEVICE)
    h = torch.randn(6, 20, device=DEVICE)
    out = layer(hclib.expand_streams(h, n))
    for i in range(n):
        torch.testing.assert_close(out[:, i], h + branch(h), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("dynamic", "norm", "affine"),
    [(False, "layer", False), (True, "layer", True), (True, "rms", True)],
)
def test_hc_fused_kernels_pass_float64_gradcheck(dynamic, norm, affine):
    from hclib.kernels.hyper_pre import hyper_pre
    from hclib.kernels.post_res import post_res

    n, d = 2, 5
    layer = make_layer(n, d, (dynamic, norm, affine, True)).double()
    params = layer._fused_parameters()
    names = [k for k, v in params.items() if isinstance(v, torch.Tensor) and v is not None]
    tensors = [params[k].detach().clone().requires_grad_(True) for k in names]
    W = torch.randn(d, d, dtype=torch.float64, device=DEVICE)

    def connection(H, *weights):
        kwargs = {**params, **dict(zip(names, weights, strict=True))}
        h0, post, res, H_pass = hyper_pre(H, **kwargs)
        return post_res(H_pass, torch.tanh(h0 @ W), post, res)

    H = torch.randn(3, n, d, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(connection, (H, *tensors), fast_mode=True)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize(("batch", "n", "d"), [((2, 2048), 4, 4096), ((4096,), 8, 1000)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_hc_triton_matches_the_reference_at_real_sizes_on_gpu(batch, n, d, dynamic, dtype, tol):
    layer = make_layer(n, d, (dynamic, "layer", False, True))
    compare(layer, torch.randn(*batch, n, d, device=DEVICE, dtype=dtype), tol)
