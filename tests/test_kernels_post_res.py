"""The fused write-in and mixing op ``H' = res @ H + post (x) y`` against its reference.

On CPU the kernels run in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1), so
the shapes here are small; the tests marked ``gpu`` repeat the comparison at real sizes.
"""

import pytest
import torch

from hclib.kernels.dispatch import triton_available
from hclib.kernels.reference import post_res_reference

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (T, n, d): one token, a few, many; n in {1, 2, 4, 8}; d not a multiple of the block size
SHAPES = [(1, 1, 33), (3, 2, 100), (17, 4, 130), (40, 8, 33), (5, 3, 7)]
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]
# token-shared (static) or per-token (dynamic) weights; y for every row or one per row (FC)
LAYOUTS = [
    ("per-token", "every-row"),
    ("static", "every-row"),
    ("per-token", "per-row"),
    ("static", "per-row"),
]


def make_inputs(T, n, d, dtype, weights, y_layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(T, n, d, generator=g).to(DEVICE, dtype)
    y = torch.randn(*((T, n, d) if y_layout == "per-row" else (T, d)), generator=g)
    lead = (T,) if weights == "per-token" else ()
    post = torch.randn(*lead, n, generator=g)
    res = torch.randn(*lead, n, n, generator=g)
    return H, y.to(DEVICE, dtype), post.to(DEVICE), res.to(DEVICE)


def forward_and_grads(fn, inputs, seed=1):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    out.backward(g)
    return out, [x.grad for x in leaves]


def post_res(*args):
    from hclib.kernels.post_res import post_res  # imported after conftest set the interpreter

    return post_res(*args)


@pytest.mark.parametrize(("weights", "y_layout"), LAYOUTS)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_post_res_matches_the_reference_forward_and_every_gradient(
    shape, dtype, atol, rtol, weights, y_layout
):
    inputs = make_inputs(*shape, dtype, weights, y_layout)
    out, grads = forward_and_grads(post_res, inputs)
    ref_out, ref_grads = forward_and_grads(post_res_reference, inputs)
    assert out.dtype == dtype and out.shape == shape
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    for name, got, want in zip(("H", "y", "post", "res"), grads, ref_grads, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        # weight gradients are sums over d of bf16 products: scale the tolerance with d
        scale = shape[2] ** 0.5 if name in ("post", "res") else 1.0
        torch.testing.assert_close(got, want, atol=atol * scale, rtol=rtol, msg=name)


@pytest.mark.parametrize("batch", [(), (2, 3), (4, 1, 5)])
def test_post_res_flattens_any_leading_shape_to_tokens(batch):
    n, d = 3, 20
    H = torch.randn(*batch, n, d, device=DEVICE)
    y = torch.randn(*batch, d, device=DEVICE)
    post, res = torch.randn(*batch, n, device=DEVICE), torch.randn(*batch, n, n, device=DEVICE)
    torch.testing.assert_close(post_res(H, y, post, res), post_res_reference(H, y, post, res))
    # and with shared weights
    post, res = post[(0,) * len(batch)], res[(0,) * len(batch)]
    torch.testing.assert_close(post_res(H, y, post, res), post_res_reference(H, y, post, res))


@pytest.mark.parametrize(("weights", "y_layout"), LAYOUTS)
def test_post_res_passes_float64_gradcheck(weights, y_layout):
    inputs = make_inputs(2, 2, 5, torch.float64, weights, y_layout)
    inputs = [x.double().requires_grad_(True) for x in inputs]
    assert torch.autograd.gradcheck(post_res, inputs, fast_mode=True)


def test_post_res_with_identity_mixing_and_unit_writes_is_the_residual_per_row():
    # res = I, post = 1: every row becomes H_i + y (HC at init, Eq. 14)
    H, y = torch.randn(7, 4, 33, device=DEVICE), torch.randn(7, 33, device=DEVICE)
    out = post_res(H, y, torch.ones(4, device=DEVICE), torch.eye(4, device=DEVICE))
    torch.testing.assert_close(out, H + y[:, None, :], atol=0, rtol=0)


def test_post_res_names_the_expected_shapes_in_its_errors():
    H, y = torch.randn(5, 4, 8), torch.randn(5, 8)
    with pytest.raises(ValueError, match=r"y must have shape \(\.\.\., d\) or"):
        post_res(H, torch.randn(5, 7), torch.ones(4), torch.eye(4))
    with pytest.raises(ValueError, match=r"post must have shape .* got \(3,\)"):
        post_res(H, y, torch.ones(3), torch.eye(4))
    with pytest.raises(ValueError, match=r"res must have shape .* got \(5, 4\)"):
        post_res(H, y, torch.ones(4), torch.ones(5, 4))
    with pytest.raises(TypeError, match="floating-point"):
        post_res(H.long(), y, torch.ones(4), torch.eye(4))


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("shape", [(4096, 4, 4096), (1000, 8, 1000), (1, 4, 4099)])
def test_post_res_matches_the_reference_at_real_sizes_on_gpu(shape, dtype, atol, rtol):
    inputs = make_inputs(*shape, dtype, "per-token", "every-row")
    out, grads = forward_and_grads(post_res, inputs)
    ref_out, ref_grads = forward_and_grads(post_res_reference, inputs)
    torch.testing.assert_close(out, ref_out, atol=atol, rtol=rtol)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=atol * shape[2] ** 0.5, rtol=rtol)
