"""The residual connection (HC Section 3.1, Eqs. 15-16)."""

import pytest
import torch
from branches import prenorm_branch
from torch import nn

import hclib

DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.float64, 1e-12, 1e-12)]


@pytest.mark.parametrize(("dtype", "atol", "rtol"), DTYPES)
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_prenorm_residual_adds_the_branch_to_its_input(dtype, atol, rtol, batch):
    branch = prenorm_branch(13, dtype)
    h = torch.randn(*batch, 13, dtype=dtype)
    out = hclib.Residual(13, branch)(h)
    torch.testing.assert_close(out, h + branch(h), atol=atol, rtol=rtol)


def test_postnorm_residual_normalises_the_sum():
    branch = nn.Linear(13, 13).double()
    h = torch.randn(4, 13, dtype=torch.float64)
    layer = hclib.Residual(13, branch, norm="post")
    expected = nn.functional.layer_norm(h + branch(h), (13,), eps=1e-5)
    torch.testing.assert_close(layer(h), expected, atol=1e-12, rtol=1e-12)


def test_postnorm_mappings_reproduce_the_layernorm_for_zero_mean_sums():
    # HC Eq. 16: with zero-mean h and a re-centred branch, LayerNorm(h + T(h)) equals
    # (h + T(h)) / sigma, i.e. pre = 1, post = res = 1 / sigma.
    linear = nn.Linear(9, 9).double()

    def branch(x):
        y = linear(x)
        return y - y.mean(dim=-1, keepdim=True)

    h = torch.randn(6, 9, dtype=torch.float64)
    h = h - h.mean(dim=-1, keepdim=True)
    layer = hclib.Residual(9, branch, norm="post")
    pre, post, res = layer.mappings(h)
    assert pre.shape == post.shape == (6, 1) and res.shape == (6, 1, 1)
    rebuilt = res[..., 0] * h + post * branch(pre * h)
    torch.testing.assert_close(rebuilt, layer(h), atol=1e-12, rtol=1e-12)


def test_prenorm_mappings_are_all_ones():
    layer = hclib.Residual(5, nn.Identity())
    pre, post, res = layer.mappings(torch.randn(2, 3, 5))
    assert pre.shape == (2, 3, 1) and res.shape == (2, 3, 1, 1)
    for weight in (pre, post, res):
        assert torch.all(weight == 1)
    assert layer.mappings().res.shape == (1, 1)


def test_residual_forwards_extra_arguments_to_the_branch():
    calls = {}

    def branch(x, scale, *, shift=0.0):
        calls["args"] = (scale, shift)
        return scale * x + shift

    h = torch.randn(3, 4)
    out = hclib.Residual(4, branch)(h, 2.0, shift=1.0)
    assert calls["args"] == (2.0, 1.0)
    torch.testing.assert_close(out, h + 2.0 * h + 1.0)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_residual_passes_float64_gradcheck(norm):
    layer = hclib.Residual(5, prenorm_branch(5), norm=norm).double()
    h = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (h,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_residual_keeps_the_input_dtype(dtype):
    layer = hclib.Residual(8, prenorm_branch(8, dtype))
    assert layer(torch.randn(3, 8, dtype=dtype)).dtype == dtype


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: hclib.Residual(4, nn.Identity(), norm="middle"), ValueError, "'pre' or 'post'"),
        (lambda: hclib.Residual(4, "not a layer"), TypeError, "branch must be a callable"),
        (lambda: hclib.Residual(0, nn.Identity()), ValueError, "dim must be >= 1"),
        (lambda: hclib.Residual(4, nn.Identity())(torch.zeros(2, 5)), ValueError, r"\(\.\.\., 4\)"),
        (lambda: hclib.Residual(4, nn.Linear(4, 3))(torch.zeros(2, 4)), ValueError, "width"),
        (lambda: hclib.Residual(4, lambda x: x.tolist())(torch.zeros(4)), TypeError, "must return"),
        (lambda: hclib.Residual(4, nn.Identity(), "post").mappings(), ValueError, "pass h"),
    ],
)
def test_bad_residual_inputs_raise_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()
