"""FC's fused split / mix / merge against the reference FracConnection.

Every case runs the same module with ``impl="triton"`` and ``impl="torch"`` and compares the
output and every gradient (the fractions, the branch output, each parameter). On CPU the
kernels run in Triton's interpreter (tests/conftest.py); the ``gpu`` tests use real sizes.
"""

import pytest
import torch
from test_kernels_hyper import DEVICE, DTYPES, RecordingBranch, compare, noisy

import hclib
from hclib.kernels.dispatch import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs triton")

# (batch, m, d): d/m = 33, 50, 33, 17, 33, 25, 3 (odd, and below one block)
# (dynamic, norm, norm_affine, tanh)
CASES = [
    ((1,), 1, 33, (True, "layer", False, True)),
    ((3,), 2, 100, (False, "layer", False, True)),
    ((17,), 4, 132, (True, "layer", True, True)),
    ((2, 20), 8, 136, (True, "rms", False, True)),
    ((40,), 3, 99, (True, "rms", True, False)),
    ((40,), 4, 100, (True, "layer", False, False)),
    ((5,), 8, 24, (True, "layer", False, True)),
]


def make_layer(m, d, variant):
    dynamic, norm, affine, tanh = variant
    layer = hclib.FracConnection(
        d, RecordingBranch(d), m=m, dynamic=dynamic, norm=norm, norm_affine=affine, tanh=tanh
    )
    return noisy(layer).to(DEVICE)


@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize(("batch", "m", "d", "variant"), CASES)
def test_fc_triton_matches_the_reference_forward_and_every_gradient(
    batch, m, d, variant, dtype, tol
):
    layer = make_layer(m, d, variant)
    H = torch.randn(*batch, m, d // m).to(DEVICE, dtype)
    compare(layer, H, tol)


@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_triton_read_out_is_the_concat_of_y_transpose_h_with_the_reference_mappings(dynamic):
    from hclib.kernels.frac import frac_pre

    m, d = 4, 44
    layer = make_layer(m, d, (dynamic, "layer", True, True)).double()
    H = torch.randn(2, 5, m, d // m, dtype=torch.float64, device=DEVICE)
    h0, post, res, H_pass = frac_pre(H, **layer._fused_parameters())
    pre, post_ref, res_ref = layer.mappings(H if dynamic else None)  # pre = Y^T
    torch.testing.assert_close(post, post_ref, atol=1e-13, rtol=0)
    torch.testing.assert_close(res, res_ref, atol=1e-13, rtol=0)
    mixed = torch.einsum("...ji,...if->...jf", pre, H)  # Y^T H  (..., m, d/m)
    torch.testing.assert_close(h0, hclib.merge_fractions(mixed), atol=1e-13, rtol=0)
    assert torch.equal(H_pass, H)


@pytest.mark.parametrize("m", [1, 4])
def test_fc_triton_at_init_is_the_prenorm_residual(m):
    # FC Eq. 15: Y = A = I, B = 1 make every layer h + T(h)
    branch = RecordingBranch(24)
    layer = hclib.FracConnection(24, branch, m=m, impl="triton").to(DEVICE)
    h = torch.randn(6, 24, device=DEVICE)
    out = hclib.merge_fractions(layer(hclib.split_fractions(h, m)))
    torch.testing.assert_close(out, h + branch(h), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    ("dynamic", "norm", "affine"), [(False, "layer", False), (True, "layer", True)]
)
def test_fc_fused_kernels_pass_float64_gradcheck(dynamic, norm, affine):
    from hclib.kernels.frac import frac_post_res, frac_pre

    m, d = 2, 6
    layer = make_layer(m, d, (dynamic, norm, affine, True)).double()
    params = layer._fused_parameters()
    names = [k for k, v in params.items() if isinstance(v, torch.Tensor)]
    tensors = [params[k].detach().clone().requires_grad_(True) for k in names]
    W = torch.randn(d, d, dtype=torch.float64, device=DEVICE)

    def connection(H, *weights):
        kwargs = {**params, **dict(zip(names, weights, strict=True))}
        h0, post, res, H_pass = frac_pre(H, **kwargs)
        return frac_post_res(H_pass, torch.tanh(h0 @ W), post, res)

    H = torch.randn(3, m, d // m, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(connection, (H, *tensors), fast_mode=True)


def test_fc_triton_keeps_the_reference_errors():
    layer = make_layer(4, 24, (True, "layer", False, True))
    layer.impl = "triton"
    with pytest.raises(
        ValueError, match=r"expected a state of shape \(\.\.\., 4, 6\) \(m, d/m\), got \(3, 4, 5\)"
    ):
        layer(torch.randn(3, 4, 5, device=DEVICE))
    broken = hclib.FracConnection(24, lambda x: x[..., :-1], m=4, impl="triton")
    with pytest.raises(ValueError, match=r"it mapped \(3, 24\) to \(3, 23\)"):
        broken(torch.randn(3, 4, 6, device=DEVICE))


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "tol"), DTYPES)
@pytest.mark.parametrize(("batch", "m", "d"), [((2, 2048), 4, 4096), ((4096,), 8, 1000)])
@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_triton_matches_the_reference_at_real_sizes_on_gpu(batch, m, d, dynamic, dtype, tol):
    layer = make_layer(m, d, (dynamic, "layer", False, True))
    compare(layer, torch.randn(*batch, m, d // m, device=DEVICE, dtype=dtype), tol)
