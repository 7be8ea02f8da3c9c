"""Sinkhorn-Knopp in registers (hclib.kernels.sinkhorn) against the reference hclib.sinkhorn_knopp.

The reference (mHC Eqs. 8-9, iterated on log M) is the oracle:
the kernel's forward must equal it and its backward, which recomputes the rounds instead of
storing them, must equal autograd through it. On CPU the kernels run in Triton's interpreter
(tests/conftest.py sets TRITON_INTERPRET=1); the tests marked ``gpu`` repeat the comparison
at a real size.
"""

import pytest
import torch

import hclib
from hclib.kernels.dispatch import triton_available

pytestmark = [
    pytest.mark.skipif(not triton_available(), reason="needs triton"),
    # the interpreter runs numpy, which warns on the -inf - -inf of a row of -inf logits
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
F32, F64 = torch.float32, torch.float64
RATES = [1, 2, 4, 8]  # n
ITERS = [1, 5, 20]  # Sinkhorn rounds t_max (mHC: 20)
BATCHES = [(3,), (2, 5)]  # leading dims; tokens in one tile and over several


def sinkhorn(logits, iters=20):
    from hclib.kernels.sinkhorn import sinkhorn_knopp  # after conftest set the interpreter

    return sinkhorn_knopp(logits, iters)


def value_and_grad(fn, logits, grad):
    x = logits.detach().clone().requires_grad_(True)
    out = fn(x)
    (g,) = torch.autograd.grad(out, x, grad)
    return out, g


def random_logits(batch, n, dtype=F32, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*batch, n, n, generator=g, dtype=F64)).to(DEVICE, dtype)


# ------------------------------------------------------------- forward and backward, float32
@pytest.mark.parametrize("iters", ITERS)
@pytest.mark.parametrize("n", RATES)
def test_kernel_equals_the_reference_forward_and_backward_in_float32(n, iters):
    batch = BATCHES[n % 2]
    logits = random_logits(batch, n, seed=n + iters)
    grad = random_logits(batch, n, scale=1.0, seed=100 + n)
    out, g = value_and_grad(lambda x: sinkhorn(x, iters), logits, grad)
    ref, ref_g = value_and_grad(lambda x: hclib.sinkhorn_knopp(x, iters), logits, grad)
    assert out.shape == ref.shape and out.dtype == ref.dtype == F32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g, ref_g, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n", RATES)
def test_kernel_equals_the_reference_in_float64_to_rounding(n):
    logits = random_logits((4,), n, dtype=F64, seed=n)
    grad = random_logits((4,), n, dtype=F64, scale=1.0, seed=10 + n)
    out, g = value_and_grad(lambda x: sinkhorn(x, 20), logits, grad)
    ref, ref_g = value_and_grad(lambda x: hclib.sinkhorn_knopp(x, 20), logits, grad)
    assert out.dtype == F64
    torch.testing.assert_close(out, ref, atol=1e-14, rtol=0)
    torch.testing.assert_close(g, ref_g, atol=1e-13, rtol=0)


# --------------------------------------------------------------------- float64 gradcheck
@pytest.mark.parametrize("iters", ITERS)
@pytest.mark.parametrize("n", RATES)
def test_kernel_backward_passes_float64_gradcheck(n, iters):
    # fast_mode checks one random direction v^T J u against finite differences: one backward
    # call instead of one per output entry, which the interpreter could not afford.
    logits = random_logits((2,), n, dtype=F64, seed=n * iters).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sinkhorn(x, iters), (logits,), fast_mode=True)


# ------------------------------------------------ wide spreads, each matrix on its own
WIDE = [  # (dtype, spread, atol)
    (F32, 100.0, 4e-6),
    (F64, 1000.0, 1e-12),
]


def wide_logits(spread, dtype, batch=40, n=4, seed=3):
    """Rows shifted by up to ``spread`` plus unit noise: rows far below the others underflow
    in exp (float32 logits ~90 apart), which the log-space rounds do not notice."""
    g = torch.Generator().manual_seed(seed)
    rows = spread * torch.rand(batch, n, 1, generator=g, dtype=F64)
    return (rows + torch.randn(batch, n, n, generator=g, dtype=F64)).to(DEVICE, dtype)


@pytest.mark.parametrize(("dtype", "spread", "atol"), WIDE, ids=["float32-100", "float64-1000"])
def test_kernel_equals_the_reference_at_wide_spreads_forward_and_backward(dtype, spread, atol):
    logits = wide_logits(spread, dtype)
    grad = random_logits((40,), 4, dtype=dtype, scale=1.0, seed=4)
    out, g = value_and_grad(sinkhorn, logits, grad)
    ref, ref_g = value_and_grad(hclib.sinkhorn_knopp, logits, grad)
    assert torch.all(torch.isfinite(out)) and torch.all(torch.isfinite(g))
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    torch.testing.assert_close(g, ref_g, atol=atol, rtol=0)


def test_kernel_result_of_a_matrix_never_depends_on_the_others_in_the_batch():
    # 70 tokens: two programs of 64 in the interpreter; token 5 alone, then among neighbours
    # 1000 apart, one with a row of -inf (NaN: no doubly stochastic scaling), -inf entries
    logits = random_logits((70,), 4, scale=2.0, seed=5)
    logits[0] *= 500.0
    logits[1, 2, :] = float("-inf")
    logits[2, 0, 3] = logits[2, 3, 1] = float("-inf")
    grad = random_logits((70,), 4, scale=1.0, seed=6)
    out, g = value_and_grad(sinkhorn, logits, grad)
    alone, alone_g = value_and_grad(sinkhorn, logits[5:6], grad[5:6])
    torch.testing.assert_close(out[5:6], alone, atol=0, rtol=0)
    torch.testing.assert_close(g[5:6], alone_g, atol=0, rtol=0)
    assert torch.isnan(out[1]).all()
    keep = [i for i in range(70) if i != 1]
    assert torch.isfinite(out[keep]).all() and torch.isfinite(g[keep]).all()
    ref, ref_g = value_and_grad(hclib.sinkhorn_knopp, logits[keep], grad[keep])
    torch.testing.assert_close(out[keep], ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(g[keep], ref_g, atol=1e-6, rtol=1e-5)
    assert out[2, 0, 3] == 0 and out[2, 3, 1] == 0


# ------------------------------------------------------------------ shapes and dtypes
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_computes_in_float32_and_returns_the_dtype_of_the_logits(dtype):
    logits = random_logits((7,), 3, seed=1).to(dtype)
    out = sinkhorn(logits)
    assert out.dtype == dtype
    torch.testing.assert_close(out, hclib.sinkhorn_knopp(logits), atol=0, rtol=0)


def test_kernel_returns_an_empty_batch_unchanged_in_shape():
    logits = torch.zeros(0, 4, 4, device=DEVICE, requires_grad=True)
    out = sinkhorn(logits)
    assert out.shape == (0, 4, 4)
    out.sum().backward()
    assert logits.grad.shape == (0, 4, 4)


@pytest.mark.parametrize(
    ("logits", "iters", "error", "match"),
    [
        (torch.zeros(3, 4), 20, ValueError, r"\(\.\.\., n, n\), got \(3, 4\)"),
        (torch.zeros(4), 20, ValueError, r"\(\.\.\., n, n\), got \(4,\)"),
        (torch.zeros(2, 3, 3), 0, ValueError, "iters"),
        ([[0.0]], 20, TypeError, "must be a torch.Tensor, got list"),
        (torch.zeros(2, 3, 3, dtype=torch.long), 20, TypeError, "floating-point.*int64"),
        (torch.ones(2, 3, 3, dtype=torch.bool), 20, TypeError, "floating-point.*bool"),
        (torch.full((2, 3, 3), float("nan")), 20, ValueError, "finite or -inf, got 18 NaN"),
        (torch.full((2, 3, 3), float("inf")), 20, ValueError, r"0 NaN and 18 \+inf"),
        (torch.zeros(2, 3, 3), True, TypeError, "iters must be an int.*bool"),
    ],
)
def test_kernel_rejects_what_the_reference_rejects(logits, iters, error, match):
    with pytest.raises(error, match=match):
        sinkhorn(logits, iters)
    with pytest.raises(error, match=match):
        hclib.sinkhorn_knopp(logits, iters)


# --------------------------------------------------------------------------- GPU sizes
@pytest.mark.gpu
@pytest.mark.parametrize("n", RATES)
def test_kernel_equals_the_reference_at_32k_tokens_on_gpu(n):
    logits = random_logits((32768,), n, seed=n)
    grad = random_logits((32768,), n, scale=1.0, seed=n + 1)
    out, g = value_and_grad(sinkhorn, logits, grad)
    ref, ref_g = value_and_grad(hclib.sinkhorn_knopp, logits, grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g, ref_g, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize(("dtype", "spread", "atol"), WIDE, ids=["float32-100", "float64-1000"])
def test_kernel_equals_the_reference_at_32k_tokens_and_wide_spreads_on_gpu(dtype, spread, atol):
    logits = wide_logits(spread, dtype, batch=32768, seed=7)
    grad = random_logits((32768,), 4, dtype=dtype, scale=1.0, seed=8)
    out, g = value_and_grad(sinkhorn, logits, grad)
    ref, ref_g = value_and_grad(hclib.sinkhorn_knopp, logits, grad)
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    torch.testing.assert_close(g, ref_g, atol=atol, rtol=0)
