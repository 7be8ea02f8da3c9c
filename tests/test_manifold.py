"""mHC and Sinkhorn-Knopp: every exactly checkable claim of mHC (arXiv 2512.24880).

Numbers in test names and comments refer to ../shared/papers.md, sections 3 and 7
(items 25-34, 37, 38). Every formula is written out here from the paper (with einsum),
independently of hclib.
"""

import contextlib
import copy
import math

import numpy as np
import pytest
import torch
from branches import prenorm_branch, prenorm_stack, randomise
from torch import nn

import hclib

F64 = torch.float64
F32 = torch.float32
RATES = [1, 2, 3, 8]  # expansion rates n
DEPTHS = [1, 3, 7]
BATCHES = [(), (5,), (2, 3)]
D = 13  # odd width on purpose (the paper's C)


# ------------------------------------------------------------------------------ helpers


def sinkhorn_by_hand(logits, iters):
    """mHC Eqs. 8-9: M0 = exp(logits); M <- T_r(T_c(M)), columns first, then rows."""
    M = torch.exp(logits)
    for _ in range(iters):
        M = M / torch.einsum("...ij->...j", M).unsqueeze(-2)  # T_c: divide column j by its sum
        M = M / torch.einsum("...ij->...i", M).unsqueeze(-1)  # T_r: divide row i by its sum
    return M


def sinkhorn_rows_first_by_hand(logits, iters):
    """The other order, T_c(T_r(M)): NOT the paper's; here only to show the difference."""
    M = torch.exp(logits)
    for _ in range(iters):
        M = M / torch.einsum("...ij->...i", M).unsqueeze(-1)
        M = M / torch.einsum("...ij->...j", M).unsqueeze(-2)
    return M


def row_error(M):
    return (M.sum(-1) - 1).abs().amax(-1)


def column_error(M):
    return (M.sum(-2) - 1).abs().amax(-1)


def random_doubly_stochastic(n, batch=(), dtype=F64, seed=0):
    """A random DS matrix: a convex combination of permutation matrices (Birkhoff).

    The n cyclic shifts are always included, so every entry is positive.
    """
    g = torch.Generator().manual_seed(seed)
    eye = torch.eye(n, dtype=dtype)
    perms = [eye.roll(k, dims=1) for k in range(n)]
    perms += [eye[torch.randperm(n, generator=g)] for _ in range(3)]
    perms = torch.stack(perms)  # (K, n, n)
    w = -torch.log(torch.rand(*batch, len(perms), generator=g, dtype=dtype))  # Dirichlet(1)
    w = w / w.sum(-1, keepdim=True)
    return torch.einsum("...k,kij->...ij", w, perms)


def mhc_mappings_by_hand(layer, x, eps=None):
    """mHC Eqs. 7-8 written directly from the paper, reading the module's parameters.

    x_vec = RMSNorm(vec(x)) over all n C features (vec is row-major: stream 0 first);
    H~ = alpha * (x_vec phi) + b for pre, post, res; mat() is row-major.
    """
    n = layer.n
    eps = layer.eps if eps is None else eps
    xv = x.reshape(*x.shape[:-2], -1)  # vec(x_l)  (..., n C)
    xv = xv / torch.sqrt(xv.pow(2).mean(-1, keepdim=True) + eps)  # RMSNorm, no gain
    phi_pre, phi_post, phi_res = layer.phi[:, :n], layer.phi[:, n : 2 * n], layer.phi[:, 2 * n :]
    b_pre, b_post, b_res = layer.bias[:n], layer.bias[n : 2 * n], layer.bias[2 * n :]
    pre = layer.alpha_pre * torch.einsum("...k,kj->...j", xv, phi_pre) + b_pre
    post = layer.alpha_post * torch.einsum("...k,kj->...j", xv, phi_post) + b_post
    res = layer.alpha_res * torch.einsum("...k,kj->...j", xv, phi_res) + b_res
    res = res.reshape(*res.shape[:-1], n, n)  # mat(.)
    sigmoid = lambda t: 1.0 / (1.0 + torch.exp(-t))  # noqa: E731
    return sigmoid(pre), 2.0 * sigmoid(post), sinkhorn_by_hand(res, layer.sinkhorn_iters)


def mhc_forward_by_hand(pre, post, res, branch, x):
    """mHC Eq. 3: x' = H_res x + H_post^T F(H_pre x)."""
    h0 = torch.einsum("...i,...id->...d", pre, x)  # H_pre x  (..., C)
    return torch.einsum("...ij,...jd->...id", res, x) + torch.einsum(
        "...i,...d->...id", post, branch(h0)
    )


@contextlib.contextmanager
def default_dtype(dtype):
    """Build modules with parameters computed in ``dtype`` from the start.

    mHC's initial biases are logits of pre_init etc.; computed in float32 and cast later,
    sigmoid(b_pre) sums to 1 only to float32 precision (about 1e-8).
    """
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def gradcheck_module(module, H):
    """float64 gradcheck of ``module(H)`` w.r.t. ``H`` and every parameter of ``module``.

    gradcheck perturbs its inputs in place, so passing the parameters themselves (not
    copies) checks the gradient of each of them without a functional call.
    """
    params = list(module.parameters())
    return torch.autograd.gradcheck(lambda H, *ps: module(H), (H, *params))


# ------------------------------------------------------- 25. Sinkhorn output (Eqs. 8-9)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0])
def test_sinkhorn_output_is_entrywise_positive_with_rows_summing_to_one(batch, n, scale):
    torch.manual_seed(n)
    logits = scale * torch.randn(*batch, n, n)
    S = hclib.sinkhorn_knopp(logits)
    assert S.shape == logits.shape and S.dtype == F32
    assert torch.all(S > 0)
    assert torch.all(row_error(S) <= 4 * n * torch.finfo(F32).eps)  # fp32 precision


LARGE_LOGITS = [  # (dtype, how the logits are made)
    (F32, "offset 1e4"),
    (F32, "offset -1e4"),
    (F32, "std 100"),
    (F64, "std 100"),
    (F64, "std 1000"),
]


@pytest.mark.parametrize(
    ("dtype", "kind"), LARGE_LOGITS, ids=[f"{str(t)[6:]}-{k}" for t, k in LARGE_LOGITS]
)
def test_sinkhorn_rows_sum_to_one_for_any_real_logits_including_large_ones(dtype, kind):
    # Any real matrix has a positive exp; SK of it is a finite, row-stochastic matrix. Entries
    # may underflow to 0 in floating point, but no row may lose its unit sum or become NaN.
    torch.manual_seed(0)
    noise = torch.randn(64, 4, 4, dtype=dtype)
    what, value = kind.split()
    logits = noise + float(value) if what == "offset" else float(value) * noise
    S = hclib.sinkhorn_knopp(logits)
    assert torch.all(torch.isfinite(S)), f"{int((~torch.isfinite(S)).sum())} non-finite entries"
    assert torch.all(S >= 0)
    assert torch.all(row_error(S) <= 16 * torch.finfo(dtype).eps)


def test_sinkhorn_column_error_shrinks_as_iterations_grow():
    # Rows are exact after every round; the column error is the truncation error of t_max.
    torch.manual_seed(0)
    logits = 2.0 * torch.randn(500, 4, 4, dtype=F64)
    errors = [column_error(hclib.sinkhorn_knopp(logits, it)).mean() for it in (1, 5, 20, 100)]
    assert all(a > 10 * b for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-5
    for it in (1, 5, 20, 100):
        assert row_error(hclib.sinkhorn_knopp(logits, it)).max() < 1e-14


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_sinkhorn_with_1000_iterations_is_doubly_stochastic_to_1e_6(n):
    torch.manual_seed(n)
    S = hclib.sinkhorn_knopp(torch.randn(50, n, n), iters=1000)
    assert S.dtype == F32
    assert row_error(S).max() < 1e-6 and column_error(S).max() < 1e-6


@pytest.mark.parametrize("iters", [1, 2, 20])
@pytest.mark.parametrize("batch", BATCHES)
def test_sinkhorn_normalises_columns_then_rows_as_eq_9(iters, batch):
    torch.manual_seed(iters)
    logits = 2.0 * torch.randn(*batch, 4, 4, dtype=F64)
    S = hclib.sinkhorn_knopp(logits, iters)
    torch.testing.assert_close(S, sinkhorn_by_hand(logits, iters), atol=1e-14, rtol=0)
    other = sinkhorn_rows_first_by_hand(logits, iters)
    assert (S - other).abs().max() > 1e-6  # the order matters at finite t_max
    # columns-then-rows leaves the rows exact; rows-then-columns would leave the columns exact
    assert row_error(S).max() < 1e-15 and column_error(S).max() > 1e-6
    assert column_error(other).max() < 1e-15 and row_error(other).max() > 1e-6


# ---------------------------------------------------------- 26. SK is exact on DS input
@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("value", [-50.0, 0.0, 3.0, 1e4])
@pytest.mark.parametrize("iters", [1, 20])
def test_sinkhorn_of_constant_logits_is_uniform_one_over_n(n, value, iters):
    S = hclib.sinkhorn_knopp(torch.full((2, n, n), value), iters)
    torch.testing.assert_close(S, torch.full((2, n, n), 1.0 / n), atol=1e-7, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("shift", [0.0, -7.0, 40.0])
@pytest.mark.parametrize(("dtype", "atol"), [(F32, 1e-6), (F64, 1e-13)], ids=["float32", "float64"])
def test_sinkhorn_returns_a_doubly_stochastic_input_unchanged(n, shift, dtype, atol):
    P = random_doubly_stochastic(n, (5,), seed=n)  # convex combination of permutations
    assert row_error(P).max() < 1e-14 and column_error(P).max() < 1e-14
    S = hclib.sinkhorn_knopp((torch.log(P) + shift).to(dtype))  # exp(logits) = e^shift P
    torch.testing.assert_close(S, P.to(dtype), atol=atol, rtol=0)


# ----------------------------------------------------------------- 27. DS closure
@pytest.mark.parametrize("n", [1, 2, 3, 8])
@pytest.mark.parametrize("count", [2, 10, 60])
def test_products_of_doubly_stochastic_matrices_are_doubly_stochastic_with_unit_gains(n, count):
    Ps = random_doubly_stochastic(n, (count,), seed=count)
    prod = torch.eye(n, dtype=F64)
    for P in Ps:
        prod = prod @ P
    assert torch.all(prod >= 0)
    assert row_error(prod) < 1e-13 and column_error(prod) < 1e-13
    gain = hclib.amax_gain(prod)
    torch.testing.assert_close(gain.forward, torch.tensor(1.0, dtype=F64), atol=1e-13, rtol=0)
    torch.testing.assert_close(gain.backward, torch.tensor(1.0, dtype=F64), atol=1e-13, rtol=0)


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_spectral_norm_of_a_doubly_stochastic_matrix_is_one(n):
    P = random_doubly_stochastic(n, (20,), seed=n)
    norms = torch.linalg.matrix_norm(P, ord=2)
    torch.testing.assert_close(norms, torch.ones(20, dtype=F64), atol=1e-12, rtol=0)
    ones = torch.ones(n, dtype=F64)
    torch.testing.assert_close(P @ ones, ones.expand(20, n), atol=1e-14, rtol=0)  # the equality


# -------------------------------------------------------- 28. row-stochastic composite
@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_product_of_60_sinkhorn_outputs_has_forward_gain_one_while_backward_gain_drifts(n):
    torch.manual_seed(n)
    S = hclib.sinkhorn_knopp(4.0 * torch.randn(60, n, n), iters=20)  # float32, t_max = 20
    prod = torch.eye(n)
    for M in S:
        prod = prod @ M
    gain = hclib.amax_gain(prod)
    assert abs(gain.forward.item() - 1.0) < 1e-5  # rows: T_r is applied last
    assert row_error(prod) < 1e-5
    assert abs(gain.backward.item() - 1.0) > 1e-4  # columns carry the truncation error


# ----------------------------------------------------- 29. mean / constant preservation
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("batch", BATCHES)
def test_doubly_stochastic_res_preserves_the_stream_sum_and_identical_streams(n, batch):
    torch.manual_seed(n)
    layer = hclib.ManifoldHyperConnection(D, nn.Identity(), n=n, sinkhorn_iters=500)
    layer = randomise(layer.double(), std=0.2)
    x = torch.randn(*batch, n, D, dtype=F64)
    res = layer.mappings(x).res  # doubly stochastic to float64 precision
    assert torch.all(column_error(res) < 1e-13)
    mixed = torch.einsum("...ij,...jd->...id", res, x)
    torch.testing.assert_close(mixed.sum(-2), x.sum(-2), atol=1e-12, rtol=0)  # 1^T res x = 1^T x
    v = torch.randn(*batch, D, dtype=F64)
    same = v.unsqueeze(-2).expand(*batch, n, D)  # 1 (x) v
    torch.testing.assert_close(
        torch.einsum("...ij,...jd->...id", res, same), same, atol=1e-13, rtol=0
    )


# -------------------------------------------------------------------- 30. ranges
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_pre_in_0_1_and_post_in_0_2_for_any_input(n, scale):
    torch.manual_seed(n)
    layer = randomise(hclib.ManifoldHyperConnection(D, nn.Identity(), n=n).double(), std=0.5)
    x = scale * torch.randn(64, n, D, dtype=F64)
    pre, post, _ = layer.mappings(x)
    assert torch.all((pre > 0) & (pre < 1))
    assert torch.all((post > 0) & (post < 2))


@pytest.mark.parametrize("n", RATES)
def test_pre_and_post_stay_in_their_closed_ranges_for_huge_weights(n):
    # With huge phi and bias, sigmoid saturates to exactly 0 or 1 in floating point: the open
    # intervals become closed, but nothing leaves them and nothing is NaN.
    torch.manual_seed(n)
    layer = randomise(hclib.ManifoldHyperConnection(D, nn.Identity(), n=n), std=1e3)
    x = 1e3 * torch.randn(64, n, D)
    pre, post, _ = layer.mappings(x)
    assert torch.all((pre >= 0) & (pre <= 1))
    assert torch.all((post >= 0) & (post <= 2))


# ------------------------------------------------------------------ 31. n = 1
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("std", [0.5, 100.0])
def test_mhc_with_one_stream_has_res_exactly_one(batch, std):
    torch.manual_seed(0)
    layer = randomise(hclib.ManifoldHyperConnection(D, nn.Identity(), n=1), std=std)
    res = layer.mappings(1e3 * torch.randn(*batch, 1, D)).res
    assert res.shape == (*batch, 1, 1)
    assert torch.all(res == 1.0)
    assert torch.all(hclib.sinkhorn_knopp(1e30 * torch.randn(7, 1, 1)) == 1.0)


# ------------------------------------------------------------------- 32. shapes
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("batch", BATCHES)
def test_mhc_parameter_and_mapping_shapes_and_gates_start_at_0_01(n, batch):
    layer = hclib.ManifoldHyperConnection(D, nn.Identity(), n=n)
    k = n * n + 2 * n
    assert layer.phi.shape == (n * D, k)  # [phi_pre | phi_post | phi_res]
    assert layer.bias.shape == (k,)
    for gate in (layer.alpha_pre, layer.alpha_post, layer.alpha_res):
        assert gate.shape == (1,) and gate.item() == pytest.approx(0.01)
    x = torch.randn(*batch, n, D)
    pre, post, res = layer.mappings(x)
    assert pre.shape == (*batch, n) and post.shape == (*batch, n) and res.shape == (*batch, n, n)
    assert layer(x).shape == (*batch, n, D)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_mhc_res_row_i_depends_on_all_streams_unlike_hc(n):
    torch.manual_seed(n)
    mhc = randomise(hclib.ManifoldHyperConnection(D, nn.Identity(), n=n).double())
    hc = randomise(hclib.HyperConnection(D, nn.Identity(), n=n).double())
    x = torch.randn(n, D, dtype=F64)
    mhc_base, hc_base = mhc.mappings(x).res, hc.mappings(x).res
    for j in range(n):
        x2 = x.clone()
        x2[j] += torch.randn(D, dtype=F64)
        mhc_moved, hc_moved = mhc.mappings(x2).res, hc.mappings(x2).res
        for i in range(n):
            # mHC reads vec(x) of all streams: every row moves when any stream moves
            assert (mhc_moved[i] - mhc_base[i]).abs().max() > 1e-8
            # HC: row i of A_r (= column i of res = A_r^T) reads stream i only
            hc_change = (hc_moved[:, i] - hc_base[:, i]).abs().max()
            assert hc_change > 1e-8 if i == j else hc_change == 0.0


# ------------------------------------------------------- 33. reordered RMSNorm (Eqs. 14-16)
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("batch", BATCHES)
def test_reordered_rmsnorm_equals_rmsnorm_with_its_gain_folded_into_phi(n, batch):
    torch.manual_seed(n)
    k, nC = n * n + 2 * n, n * D
    gamma = 1.0 + 0.3 * torch.randn(nC, dtype=F64)
    phi, b = torch.randn(nC, k, dtype=F64), torch.randn(k, dtype=F64)
    a_pre, a_post, a_res = torch.randn(3, dtype=F64)
    alpha = torch.cat([a_pre.expand(n), a_post.expand(n), a_res.expand(n * n)])  # per column
    x = torch.randn(*batch, n, D, dtype=F64)
    xv = x.reshape(*batch, nC)
    # Eq. 7 as written: alpha * (RMSNorm_gamma(x) phi) + b  (torch's rms_norm, eps = 0)
    direct = alpha * (nn.functional.rms_norm(xv, (nC,), gamma, eps=0.0) @ phi) + b
    # Eqs. 14-16: the matmul first with gamma folded into phi, then divide by r
    r = torch.linalg.vector_norm(xv, dim=-1, keepdim=True) / math.sqrt(nC)  # Eq. 15
    reordered = (1.0 / r) * alpha * (xv @ (torch.diag(gamma) @ phi)) + b  # Eqs. 14, 16
    torch.testing.assert_close(reordered, direct, atol=1e-12, rtol=0)
    # the module with the gain folded into phi by hand computes sigmoid / 2 sigmoid / SK of it
    layer = hclib.ManifoldHyperConnection(D, nn.Identity(), n=n, eps=0.0).double()
    with torch.no_grad():
        layer.phi.copy_(gamma[:, None] * phi)  # diag(gamma) phi
        layer.bias.copy_(b)
        layer.alpha_pre.fill_(a_pre), layer.alpha_post.fill_(a_post), layer.alpha_res.fill_(a_res)
    pre, post, res = layer.mappings(x)
    torch.testing.assert_close(pre, torch.sigmoid(direct[..., :n]), atol=1e-12, rtol=0)
    torch.testing.assert_close(post, 2 * torch.sigmoid(direct[..., n : 2 * n]), atol=1e-12, rtol=0)
    logits = direct[..., 2 * n :].reshape(*batch, n, n)
    torch.testing.assert_close(res, sinkhorn_by_hand(logits, 20), atol=1e-12, rtol=0)


# ------------------------------------------------------------- 34. Amax gain definitions
def test_amax_gain_is_max_abs_row_sum_forward_and_max_abs_column_sum_backward():
    M = torch.tensor([[1.0, -2.0], [3.0, 0.5]])  # row sums -1, 3.5; column sums 4, -1.5
    N = torch.tensor([[0.5, -3.0], [1.0, 1.0]])  # row sums -2.5, 2; column sums 1.5, -2
    gain = hclib.amax_gain(torch.stack([M, N]))
    assert gain.forward.tolist() == [3.5, 2.5]
    assert gain.backward.tolist() == [4.0, 2.0]
    torch.manual_seed(0)
    R = torch.randn(3, 5, 4, 4, dtype=F64)
    gain = hclib.amax_gain(R)
    assert gain.forward.shape == gain.backward.shape == (3, 5)
    forward = [[max(abs(sum(row)) for row in m.tolist()) for m in b] for b in R]
    backward = [[max(abs(sum(col)) for col in m.T.tolist()) for m in b] for b in R]
    torch.testing.assert_close(gain.forward, torch.tensor(forward, dtype=F64), atol=1e-14, rtol=0)
    torch.testing.assert_close(gain.backward, torch.tensor(backward, dtype=F64), atol=1e-14, rtol=0)


@pytest.mark.parametrize("n", RATES)
def test_amax_gains_of_identity_and_doubly_stochastic_matrices_are_one(n):
    for M in (torch.eye(n, dtype=F64), random_doubly_stochastic(n, (10,), seed=n)):
        gain = hclib.amax_gain(M)
        torch.testing.assert_close(gain.forward, torch.ones_like(gain.forward), atol=1e-14, rtol=0)
        torch.testing.assert_close(
            gain.backward, torch.ones_like(gain.backward), atol=1e-14, rtol=0
        )


# ---------------------------------------------------------------- 37. parameter count
@pytest.mark.parametrize(("n", "C", "expected"), [(4, 2560, 245_787), (2, 13, 219), (1, 13, 45)])
def test_mhc_parameter_count_matches_section_4_2(n, C, expected):
    layer = hclib.ManifoldHyperConnection(C, nn.Identity(), n=n)
    count = sum(p.numel() for p in layer.parameters())
    assert count == n * C * (n * n + 2 * n) + (n * n + 2 * n) + 3 == expected


def test_mhc_weight_decay_applies_to_phi_only():
    model = nn.ModuleList([hclib.ManifoldHyperConnection(D, prenorm_branch(D), n=4)])
    decayed, plain = hclib.param_groups(model, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert set(decayed["names"]) == {"0.phi", "0.branch.1.weight"}
    assert set(plain["names"]) == {
        "0.bias",
        "0.alpha_pre",
        "0.alpha_post",
        "0.alpha_res",
        "0.branch.0.weight",
        "0.branch.0.bias",
        "0.branch.1.bias",
    }


# ------------------------------------------------------- 38. ablation's fixed mappings
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("batch", BATCHES)
def test_fixed_mappings_of_the_ablation_give_x_plus_branch_of_the_stream_mean(n, batch):
    # mHC Table 1: H_pre = 1/n, H_post = 1, H_res = I, set through the biases with phi = 0.
    branch = prenorm_branch(D, seed=n)
    layer = hclib.ManifoldHyperConnection(D, branch, n=n).double()
    b_pre = -math.log(n - 1) if n > 1 else math.inf  # sigmoid(b_pre) = 1/n
    b_res = torch.full((n, n), -math.inf, dtype=F64).fill_diagonal_(0.0)  # exp -> I
    with torch.no_grad():
        layer.phi.zero_()
        b_pre = torch.full((n,), b_pre, dtype=F64)
        layer.bias.copy_(torch.cat([b_pre, torch.zeros(n, dtype=F64), b_res.flatten()]))
    x = torch.randn(*batch, n, D, dtype=F64)
    pre, post, res = layer.mappings(x)
    torch.testing.assert_close(pre, torch.full_like(pre, 1.0 / n), atol=1e-15, rtol=0)
    assert torch.all(post == 1.0) and torch.all(res == torch.eye(n, dtype=F64))
    expected = x + branch(x.mean(-2)).unsqueeze(-2)  # x + 1_n F(mean_streams(x))
    torch.testing.assert_close(layer(x), expected, atol=1e-13, rtol=0)


# ------------------------------------------------------------------ initialisation
INITS = [(0.9, 1.0, 0.95), (0.6, 1.5, 0.7)]  # (pre_init, post_init, res_init_diag)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("layer_id", [0, 1, 5, 11])
@pytest.mark.parametrize(("pre_init", "post_init", "res_init_diag"), INITS)
def test_mhc_init_mappings_read_stream_layer_id_mod_n_and_mix_doubly_stochastically(
    n, layer_id, pre_init, post_init, res_init_diag
):
    layer = hclib.ManifoldHyperConnection(
        D,
        nn.Identity(),
        n=n,
        layer_id=layer_id,
        pre_init=pre_init,
        post_init=post_init,
        res_init_diag=res_init_diag,
    )
    assert torch.all(layer.phi == 0)
    x = 5.0 * torch.randn(2, 3, n, D)  # phi = 0: the same mappings for any input
    pre, post, res = layer.mappings(x)
    atol = 1e-6  # float32 parameters
    target = torch.full((n,), (1.0 - pre_init) / (n - 1) if n > 1 else pre_init)
    target[layer_id % n] = pre_init
    torch.testing.assert_close(pre, target.expand(2, 3, n), atol=atol, rtol=0)
    torch.testing.assert_close(pre.sum(-1), torch.ones(2, 3) * (pre_init if n == 1 else 1.0))
    torch.testing.assert_close(post, torch.full((2, 3, n), post_init), atol=atol, rtol=0)
    off = (1.0 - res_init_diag) / (n - 1) if n > 1 else 0.0
    diag = res_init_diag if n > 1 else 1.0
    expected = torch.full((n, n), off) + (diag - off) * torch.eye(n)
    torch.testing.assert_close(res, expected.expand(2, 3, n, n), atol=atol, rtol=0)
    assert row_error(res).max() < atol and column_error(res).max() < atol


@pytest.mark.parametrize("n", [2, 3, 4, 8])
@pytest.mark.parametrize("depth", DEPTHS)
def test_mhc_init_stack_from_replicated_streams_equals_n_times_the_prenorm_stack(n, depth):
    torch.manual_seed(10 * depth + n)
    branches = [prenorm_branch(D) for _ in range(depth)]
    with default_dtype(F64):  # sum(pre) = 1 and res DS to float64 precision
        layers = [
            hclib.ManifoldHyperConnection(D, b, n=n, layer_id=k) for k, b in enumerate(branches)
        ]
    h = torch.randn(2, 3, D, dtype=F64)
    x = hclib.expand_streams(h, n)
    for layer, expected in zip(layers, prenorm_stack(branches, h), strict=True):
        x = layer(x)
        for i in range(n):  # every stream carries the Pre-Norm state
            torch.testing.assert_close(x[..., i, :], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(hclib.reduce_streams(x), n * expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("batch", BATCHES)
def test_mhc_with_one_stream_at_init_is_prenorm_for_a_scale_invariant_branch(depth, batch):
    # n = 1: pre = pre_init < 1 scales the branch input; a branch that starts with an exact
    # (eps = 0) norm does not see the factor.
    torch.manual_seed(depth)
    branches = [prenorm_branch(D, eps=0.0) for _ in range(depth)]
    layers = [
        hclib.ManifoldHyperConnection(D, b, n=1, layer_id=k).double()
        for k, b in enumerate(branches)
    ]
    h = torch.randn(*batch, D, dtype=F64)
    x = hclib.expand_streams(h, 1)
    for layer, expected in zip(layers, prenorm_stack(branches, h), strict=True):
        x = layer(x)
        torch.testing.assert_close(x[..., 0, :], expected, atol=1e-12, rtol=0)


# ------------------------------------------------------------- forward (Eqs. 7-8, Eq. 3)
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("iters", [1, 20])
def test_mhc_forward_is_eqs_7_8_then_eq_3(n, batch, iters):
    torch.manual_seed(n + iters)
    branch = prenorm_branch(D, seed=n)
    layer = hclib.ManifoldHyperConnection(D, branch, n=n, layer_id=1, sinkhorn_iters=iters)
    layer = randomise(layer.double())  # random phi, bias (incl. a non-symmetric b_res), gates
    x = torch.randn(*batch, n, D, dtype=F64)
    pre, post, res = mhc_mappings_by_hand(layer, x)
    maps = layer.mappings(x)
    torch.testing.assert_close(maps.pre, pre, atol=1e-14, rtol=0)
    torch.testing.assert_close(maps.post, post, atol=1e-14, rtol=0)
    torch.testing.assert_close(maps.res, res, atol=1e-13, rtol=0)
    expected = mhc_forward_by_hand(pre, post, res, branch, x)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_mhc_bias_res_is_row_major_vec_of_b_res():
    # With phi = 0, H_res = SK(b_res); a non-symmetric b_res tells row-major from column-major.
    n = 3
    layer = hclib.ManifoldHyperConnection(D, nn.Identity(), n=n).double()
    b_res = torch.tensor([[0.0, 2.0, -1.0], [0.5, 0.0, 1.5], [-2.0, 1.0, 0.0]], dtype=F64)
    with torch.no_grad():
        layer.bias[2 * n :] = b_res.flatten()  # vec, row-major
    res = layer.mappings(torch.randn(n, D, dtype=F64)).res
    torch.testing.assert_close(res, sinkhorn_by_hand(b_res, 20), atol=1e-14, rtol=0)
    assert (res - sinkhorn_by_hand(b_res.T, 20)).abs().max() > 1e-3


# -------------------------------------------------------------- dtypes and gradients
@pytest.mark.parametrize("n", [1, 2, 4])
def test_mhc_mixing_runs_in_float32_for_bfloat16_input(n):
    torch.manual_seed(n)
    layer = randomise(
        hclib.ManifoldHyperConnection(16, prenorm_branch(16, F32), n=n, layer_id=1), std=0.1
    )
    x = torch.randn(3, n, 16)
    reference = layer(x)  # everything in float32
    layer_bf16 = copy.deepcopy(layer)
    layer_bf16.branch.to(torch.bfloat16)  # the branch runs in the model dtype
    maps = layer_bf16.mappings(x.bfloat16())
    assert all(t.dtype == F32 for t in maps)
    out = layer_bf16(x.bfloat16())
    assert out.dtype == torch.bfloat16 and layer_bf16.phi.dtype == F32
    torch.testing.assert_close(out.float(), reference, atol=5e-2, rtol=5e-2)
    # rows of res still sum to 1 at float32 precision, not bfloat16's
    assert row_error(maps.res).max() < 1e-6


@pytest.mark.parametrize(("n", "d"), [(1, 3), (2, 3), (3, 2)])
@pytest.mark.parametrize("iters", [1, 20])
def test_mhc_passes_float64_gradcheck_wrt_input_and_all_parameters(n, d, iters):
    torch.manual_seed(n)
    layer = hclib.ManifoldHyperConnection(d, prenorm_branch(d), n=n, sinkhorn_iters=iters)
    layer = randomise(layer.double())
    x = torch.randn(2, n, d, dtype=F64, requires_grad=True)
    assert gradcheck_module(layer, x)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("iters", [1, 5, 20])
def test_sinkhorn_passes_float64_gradcheck(n, iters):
    torch.manual_seed(n)
    logits = torch.randn(2, n, n, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: hclib.sinkhorn_knopp(t, iters), (logits,))


# ------------------------------------------------------------------------- bad input
def mhc(**kwargs):
    return hclib.ManifoldHyperConnection(D, nn.Identity(), **kwargs)


BAD_INPUTS = [
    (lambda: mhc(n=0), ValueError, "n must be >= 1 .* got n=0"),
    (lambda: mhc(n=2.0), TypeError, "n must be an int.*float"),
    (lambda: mhc(n=True), TypeError, "n must be an int.*bool"),
    (lambda: mhc(layer_id=-1), ValueError, "layer_id must be >= 0, got -1"),
    (
        lambda: mhc(sinkhorn_iters=0),
        ValueError,
        "sinkhorn_iters must be >= 1.*got sinkhorn_iters=0",
    ),
    (
        lambda: hclib.sinkhorn_knopp(torch.zeros(3, 3), 0),
        ValueError,
        "iters must be >= 1.*iters=0",
    ),
    (lambda: hclib.sinkhorn_knopp(torch.zeros(3, 3), 2.5), TypeError, "iters must be an int"),
    (
        lambda: hclib.sinkhorn_knopp(torch.zeros(3, 4)),
        ValueError,
        r"\(\.\.\., n, n\), got \(3, 4\)",
    ),
    (lambda: hclib.sinkhorn_knopp(torch.zeros(3)), ValueError, r"\(\.\.\., n, n\), got \(3,\)"),
    (lambda: hclib.sinkhorn_knopp([[0.0]]), TypeError, "torch.Tensor, got list"),
    (lambda: hclib.amax_gain(torch.zeros(2, 3)), ValueError, r"\(\.\.\., n, n\), got \(2, 3\)"),
    (lambda: mhc(n=4)(torch.zeros(2, D)), ValueError, rf"\(\.\.\., 4, {D}\).*got \(2, {D}\)"),
    (
        lambda: mhc(n=4)(torch.zeros(2, 3, D)),
        ValueError,
        rf"\(\.\.\., 4, {D}\).*got \(2, 3, {D}\)",
    ),
    (lambda: mhc(n=2).mappings(torch.zeros(2, 2, D + 1)), ValueError, rf"got \(2, 2, {D + 1}\)"),
    (lambda: mhc(n=2).mappings(None), ValueError, "pass H"),
    (lambda: mhc(n=2)(torch.zeros(2, D, dtype=torch.long)), TypeError, "floating-point.*int64"),
    (lambda: mhc(pre_init=1.0), ValueError, r"pre_init must lie in \(0, 1\), got 1.0"),
    (lambda: mhc(pre_init=0.0), ValueError, r"pre_init must lie in \(0, 1\), got 0.0"),
    (lambda: mhc(post_init=2.0), ValueError, r"post_init must lie in \(0, 2\), got 2.0"),
    (lambda: mhc(post_init=-0.5), ValueError, r"post_init must lie in \(0, 2\), got -0.5"),
    (lambda: mhc(res_init_diag=1.0), ValueError, r"res_init_diag must lie in \(0, 1\), got 1.0"),
    (lambda: mhc(res_init_diag=0.0), ValueError, r"res_init_diag must lie in \(0, 1\), got 0.0"),
    (lambda: hclib.ManifoldHyperConnection(D, None), TypeError, "branch must be a callable"),
    (
        lambda: hclib.ManifoldHyperConnection(D, nn.Linear(D, 5), n=2)(torch.zeros(3, 2, D)),
        ValueError,
        rf"without changing the width.*\(3, {D}\) to \(3, 5\)",
    ),
]


@pytest.mark.parametrize(("build", "error", "message"), BAD_INPUTS)
def test_mhc_rejects_bad_input_naming_expected_and_given(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ---------------------------- Sinkhorn: exact at any spread, matrix by matrix, inputs checked
def sinkhorn_log_by_hand(logits, iters=20):
    """mHC Eq. 9 on log M in float64: dividing a column (row) by its sum is subtracting its
    log-sum-exp, written out as max + log(sum(exp(L - max)))."""
    L = logits.to(F64)
    for _ in range(iters):
        m = L.amax(-2, keepdim=True)
        L = L - (m + torch.exp(L - m).sum(-2, keepdim=True).log())  # T_c
        m = L.amax(-1, keepdim=True)
        L = L - (m + torch.exp(L - m).sum(-1, keepdim=True).log())  # T_r
    return L.exp()


def wide_logits(kind, spread, dtype, n=4, batch=256, seed=0):
    """Logits whose entries lie ``spread`` apart: uniform entries, or rows (columns) shifted by
    up to ``spread`` plus unit noise (rows far below the others underflow in exp)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, n, n, generator=g, dtype=F64)
    if kind == "entries":
        logits = spread * torch.rand(batch, n, n, generator=g, dtype=F64)
    elif kind == "rows":
        logits = spread * torch.rand(batch, n, 1, generator=g, dtype=F64) + noise
    else:
        logits = spread * torch.rand(batch, 1, n, generator=g, dtype=F64) + noise
    return logits.to(dtype)


def test_the_log_space_oracle_is_eq_9_term_for_term():
    # where float64 exp does not underflow (spreads up to ~700), the two agree to rounding
    for kind in ("entries", "rows", "columns"):
        logits = wide_logits(kind, 600.0, F64, batch=64)
        for iters in (1, 5, 20):
            torch.testing.assert_close(
                sinkhorn_log_by_hand(logits, iters),
                sinkhorn_by_hand(logits, iters),
                atol=1e-13,
                rtol=0,
            )


WIDE = [  # (dtype, spread, atol): float32 up to ~100 apart, float64 up to ~1000
    (F32, 10.0, 2e-6),
    (F32, 40.0, 2e-6),
    (F32, 100.0, 4e-6),
    (F64, 100.0, 1e-13),
    (F64, 1000.0, 1e-12),
]


@pytest.mark.parametrize("kind", ["entries", "rows", "columns"])
@pytest.mark.parametrize("n", [2, 4, 8])
@pytest.mark.parametrize(
    ("dtype", "spread", "atol"), WIDE, ids=[f"{str(t)[6:]}-{s:g}" for t, s, _ in WIDE]
)
def test_sinkhorn_equals_the_float64_log_space_iteration_at_wide_spreads(
    dtype, spread, atol, n, kind
):
    logits = wide_logits(kind, spread, dtype, n=n, seed=n)
    S = hclib.sinkhorn_knopp(logits)
    assert S.dtype == dtype
    torch.testing.assert_close(S.to(F64), sinkhorn_log_by_hand(logits), atol=atol, rtol=0)


def test_sinkhorn_in_float32_exp_space_would_be_wrong_where_rows_are_120_apart():
    # what the log-space rounds avoid: exp of a row far below its columns' maxima underflows
    # (to 0 or to subnormals with few bits), which the row normalisation then blows up
    logits = wide_logits("rows", 120.0, F32, seed=1)
    M = torch.exp(logits - logits.amax(-2, keepdim=True))
    for _ in range(20):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    truth = sinkhorn_log_by_hand(logits)
    exp_error = (M.to(F64) - truth).abs().nan_to_num(nan=1.0).max()
    assert exp_error > 1e-3
    assert (hclib.sinkhorn_knopp(logits).to(F64) - truth).abs().max() < 4e-6


@pytest.mark.parametrize(("dtype", "spread"), [(F32, 100.0), (F64, 1000.0)])
def test_sinkhorn_gradient_equals_the_float64_log_space_iteration_at_wide_spreads(dtype, spread):
    logits = wide_logits("rows", spread, dtype, batch=64, seed=2)
    grad = torch.randn(logits.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
    x = logits.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(hclib.sinkhorn_knopp(x), x, grad.to(dtype))
    x64 = logits.detach().to(F64).requires_grad_(True)
    (ref,) = torch.autograd.grad(sinkhorn_log_by_hand(x64), x64, grad)
    atol = 4e-6 if dtype == F32 else 1e-12
    torch.testing.assert_close(g.to(F64), ref, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["rows", "entries"])
def test_sinkhorn_passes_float64_gradcheck_at_spread_50_and_with_minus_inf_entries(kind):
    logits = wide_logits(kind, 50.0, F64, n=3, batch=2, seed=4)
    logits[0, 1, 2] = -math.inf  # a structural zero, not a whole row
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: hclib.sinkhorn_knopp(t, 5), (logits,))


def test_sinkhorn_of_a_matrix_never_depends_on_the_others_in_the_batch():
    # each matrix alone, then inside a batch with wild neighbours: one 1000 apart, one with a
    # row of -inf (no doubly stochastic scaling: NaN), one of -inf entries, one constant
    g = torch.Generator().manual_seed(5)
    mine = 3.0 * torch.randn(4, 4, generator=g)
    others = [
        1000.0 * torch.randn(4, 4, generator=g),
        torch.randn(4, 4, generator=g).index_fill(0, torch.tensor([2]), -math.inf),
        torch.randn(4, 4, generator=g).index_put_(
            (torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])), torch.tensor(-math.inf)
        ),
        torch.full((4, 4), 7.0),
    ]
    alone = hclib.sinkhorn_knopp(mine[None])[0]
    batch = torch.stack([others[0], mine, others[1], others[2], others[3]])
    S = hclib.sinkhorn_knopp(batch)
    torch.testing.assert_close(S[1], alone, atol=0, rtol=0)
    assert torch.isnan(S[2]).all()  # the matrix with a row of -inf, and only it
    assert torch.isfinite(S[[0, 1, 3, 4]]).all()
    x = batch.clone().requires_grad_(True)
    S = hclib.sinkhorn_knopp(x)
    S[1].pow(2).sum().backward()
    y = mine[None].clone().requires_grad_(True)
    hclib.sinkhorn_knopp(y).pow(2).sum().backward()
    torch.testing.assert_close(x.grad[1], y.grad[0], atol=0, rtol=0)
    assert (x.grad[[0, 3, 4]] == 0).all()  # (the NaN matrix's gradient is NaN)


def test_sinkhorn_gives_exact_zeros_for_minus_inf_logits_and_a_nan_matrix_for_a_minus_inf_row():
    logits = 2.0 * torch.randn(3, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(6))
    logits[0, 0, 1] = logits[0, 2, 3] = -math.inf
    S = hclib.sinkhorn_knopp(logits)
    assert S[0, 0, 1] == 0 and S[0, 2, 3] == 0
    torch.testing.assert_close(S, sinkhorn_by_hand(logits, 20), atol=1e-14, rtol=0)
    logits[1, :, 3] = -math.inf  # a column of -inf
    S = hclib.sinkhorn_knopp(logits)
    assert torch.isnan(S[1]).all() and torch.isfinite(S[[0, 2]]).all()


class Three:
    """Not an int, but usable as one (``__index__``)."""

    def __index__(self):
        return 3


@pytest.mark.parametrize(
    "iters", [3, np.int64(3), np.int32(3), torch.tensor(3), Three()], ids=lambda v: type(v).__name__
)
def test_sinkhorn_accepts_integer_like_iters(iters):
    logits = torch.randn(2, 4, 4, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(hclib.sinkhorn_knopp(logits, iters), hclib.sinkhorn_knopp(logits, 3))


def logits_with(value):
    logits = torch.zeros(2, 3, 3)
    logits[1, 2, 0] = value
    return logits


SINKHORN_BAD_INPUTS = [  # (logits, iters, error, message)
    (
        torch.zeros(2, 3, 3, dtype=torch.long),
        20,
        TypeError,
        "floating-point tensor, got torch.int64",
    ),
    (
        torch.zeros(2, 3, 3, dtype=torch.int32),
        20,
        TypeError,
        "floating-point tensor, got torch.int32",
    ),
    (torch.ones(2, 3, 3, dtype=torch.bool), 20, TypeError, "floating-point tensor, got torch.bool"),
    (torch.zeros(2, 3, 3, dtype=torch.complex64), 20, TypeError, "floating-point.*complex64"),
    (logits_with(math.nan), 20, ValueError, "finite or -inf, got 1 NaN and 0 \\+inf entries"),
    (logits_with(math.inf), 20, ValueError, "finite or -inf, got 0 NaN and 1 \\+inf entries"),
    (torch.zeros(2, 3, 3), True, TypeError, "iters must be an int.*got bool"),
    (torch.zeros(2, 3, 3), torch.tensor(True), TypeError, "iters must be an int.*got bool"),
    (torch.zeros(2, 3, 3), 3.0, TypeError, "iters must be an int.*got float"),
    (torch.zeros(2, 3, 3), np.float64(3.0), TypeError, "iters must be an int.*got float64"),
    (torch.zeros(2, 3, 3), torch.tensor(3.0), TypeError, "iters must be an int.*got Tensor"),
    (torch.zeros(2, 3, 3), "3", TypeError, "iters must be an int.*got str"),
    (torch.zeros(2, 3, 3), np.int64(0), ValueError, "iters must be >= 1.*iters=0"),
    (torch.zeros(2, 3, 3), -2, ValueError, "iters must be >= 1.*iters=-2"),
]


@pytest.mark.parametrize(("logits", "iters", "error", "message"), SINKHORN_BAD_INPUTS)
def test_sinkhorn_rejects_bad_input_naming_expected_and_given(logits, iters, error, message):
    with pytest.raises(error, match=message):
        hclib.sinkhorn_knopp(logits, iters)
