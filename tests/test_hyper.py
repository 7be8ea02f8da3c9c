"""Hyper-connections: every exactly checkable claim of HC (arXiv 2409.19606).

Numbers in test names and comments refer to ../shared/papers.md, section 7.
"""

import copy

import pytest
import torch
from branches import prenorm_branch, prenorm_stack, randomise
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import hclib

F64 = torch.float64
RATES = [1, 2, 3, 8]
DEPTHS = [1, 3, 7]
BATCHES = [(), (5,), (2, 3)]
D = 13  # odd width on purpose


def hc_forward_by_hand(matrix, branch, H):
    """HC Eq. 2 written directly: H^ = B^T T(H^T A_m)^T + A_r^T H."""
    B, A_m, A_r = matrix[0, 1:], matrix[1:, 0], matrix[1:, 1:]
    h0 = torch.einsum("i,...id->...d", A_m, H)  # H^T A_m
    return torch.einsum("i,...d->...id", B, branch(h0)) + torch.einsum("ji,...jd->...id", A_r, H)


# ---------------------------------------------------------------- 1. shapes (Eqs. 1-5)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("dynamic", [False, True])
def test_hc_shapes_follow_eqs_1_to_5(batch, n, dynamic):
    layer = hclib.HyperConnection(D, prenorm_branch(D), n=n, dynamic=dynamic).double()
    H = torch.randn(*batch, n, D, dtype=F64)
    assert layer(H).shape == (*batch, n, D)
    assert layer.static_matrix().shape == (n + 1, n + 1)
    pre, post, res = layer.mappings(H)
    assert pre.shape == (*batch, n) and post.shape == (*batch, n) and res.shape == (*batch, n, n)


# ------------------------------------------------ 2-3. residuals as HC matrices (Eqs. 15-16)
@pytest.mark.parametrize("batch", BATCHES)
def test_hc_with_matrix_0_1_1_1_is_the_prenorm_residual(batch):
    branch = prenorm_branch(D)
    layer = hclib.HyperConnection.from_matrix(
        torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=F64), D, branch
    )
    h = torch.randn(*batch, D, dtype=F64)
    out = layer(h.unsqueeze(-2)).squeeze(-2)
    torch.testing.assert_close(out, h + branch(h), atol=1e-14, rtol=0)
    torch.testing.assert_close(out, hclib.Residual(D, branch)(h), atol=1e-14, rtol=0)


def test_hc_postnorm_matrix_reproduces_layernorm_of_the_sum():
    # Eq. 16 under Appendix G's assumptions: zero-mean h, a re-centred branch, LayerNorm
    # without affine and eps = 0. sigma is the population std of h + T(h) (one token).
    linear = nn.Linear(D, D).double()

    def branch(x):
        y = linear(x)
        return y - y.mean(dim=-1, keepdim=True)  # T = C o T o A (Eq. 36)

    for seed in range(5):
        torch.manual_seed(seed)
        h = torch.randn(D, dtype=F64)
        h = h - h.mean()
        y = branch(h)
        var_h, var_y = h.var(unbiased=False), y.var(unbiased=False)
        cov = ((h - h.mean()) * (y - y.mean())).mean()
        sigma = torch.sqrt(var_h + var_y + 2 * cov)
        matrix = torch.stack(
            [torch.stack([0 * sigma, 1 / sigma]), torch.stack([sigma**0, 1 / sigma])]
        )
        layer = hclib.HyperConnection.from_matrix(matrix, D, branch)
        expected = nn.functional.layer_norm(h + y, (D,), eps=0.0)
        torch.testing.assert_close(layer(h[None])[0], expected, atol=1e-13, rtol=0)


# ------------------------------------------------------ 4-5. initialisation (Eq. 14)
@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_hc_init_stack_carries_the_prenorm_state_in_every_stream(n, depth, dynamic):
    torch.manual_seed(depth * 10 + n)
    branches = [prenorm_branch(D) for _ in range(depth)]
    layers = [
        hclib.HyperConnection(D, b, n=n, layer_id=k, dynamic=dynamic).double()
        for k, b in enumerate(branches)
    ]
    h = torch.randn(2, 3, D, dtype=F64)
    H = hclib.expand_streams(h, n)
    for layer, expected in zip(layers, prenorm_stack(branches, h), strict=True):
        H = layer(H)
        for i in range(n):  # every stream after every layer is the Pre-Norm state
            torch.testing.assert_close(H[..., i, :], expected, atol=1e-13, rtol=0)
    final = hclib.reduce_streams(H)
    torch.testing.assert_close(final, n * expected, atol=1e-12, rtol=0)
    # after the final norm (eps = 0) the factor n disappears
    norm = lambda x: nn.functional.layer_norm(x, (D,), eps=0.0)  # noqa: E731
    torch.testing.assert_close(norm(final), norm(expected), atol=1e-12, rtol=0)


@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("layer_id", [0, 1, 5, 11])
def test_hc_init_reads_stream_layer_id_mod_n_with_identity_mixing_and_unit_writes(n, layer_id):
    layer = hclib.HyperConnection(D, nn.Identity(), n=n, layer_id=layer_id)
    expected = torch.zeros(n + 1, n + 1)
    expected[0, 1:] = 1.0  # B = 1
    expected[1 + layer_id % n, 0] = 1.0  # A_m = e_{layer_id mod n}
    expected[1:, 1:] = torch.eye(n)  # A_r = I
    torch.testing.assert_close(layer.static_matrix(), expected, rtol=0, atol=0)


# -------------------------------------------- 6-8. dynamic weights (Eqs. 10-13)
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("tanh", [True, False])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_dynamic_hc_weights_follow_eqs_10_to_13(n, tanh, norm):
    layer = randomise(hclib.HyperConnection(D, nn.Identity(), n=n, tanh=tanh, norm=norm).double())
    H = torch.randn(4, n, D, dtype=F64)
    if norm == "layer":
        Hn = (H - H.mean(-1, keepdim=True)) / torch.sqrt(
            H.var(-1, unbiased=False, keepdim=True) + 1e-5
        )
    else:
        Hn = H / torch.sqrt(H.pow(2).mean(-1, keepdim=True) + 1e-5)
    act = torch.tanh if tanh else (lambda x: x)
    W_m, W_r = layer.dynamic_alpha[:, :1], layer.dynamic_alpha[:, 1:]
    A_m = layer.alpha_scale * act(Hn @ W_m) + layer.static_alpha[:, :1]  # Eq. 12  (4, n, 1)
    A_r = layer.alpha_scale * act(Hn @ W_r) + layer.static_alpha[:, 1:]  # Eq. 13  (4, n, n)
    B = layer.beta_scale * act(Hn @ layer.dynamic_beta) + layer.static_beta  # Eq. 11 (4, n)
    pre, post, res = layer.mappings(H)
    torch.testing.assert_close(pre, A_m[..., 0], atol=1e-14, rtol=0)
    torch.testing.assert_close(post, B, atol=1e-14, rtol=0)
    torch.testing.assert_close(res, A_r.transpose(-1, -2), atol=1e-14, rtol=0)
    # and the forward pass uses them as in Eq. 2, token by token
    branch = prenorm_branch(D, seed=n)
    layer.branch = branch
    for t in range(4):
        matrix = torch.zeros(n + 1, n + 1, dtype=F64)
        matrix[0, 1:], matrix[1:, :1], matrix[1:, 1:] = B[t], A_m[t], A_r[t]
        expected = hc_forward_by_hand(matrix, branch, H[t])
        torch.testing.assert_close(layer(H[t]), expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_dynamic_hc_row_i_depends_on_stream_i_only(n):
    layer = randomise(hclib.HyperConnection(D, nn.Identity(), n=n).double())
    H = torch.randn(n, D, dtype=F64)
    base = layer.mappings(H)
    for j in range(n):
        H2 = H.clone()
        H2[j] += torch.randn(D, dtype=F64)
        moved = layer.mappings(H2)
        for i in range(n):
            # row i of A_m, A_r (= column i of res) and entry i of B
            same = [moved.pre[i] - base.pre[i], moved.post[i] - base.post[i]]
            same.append(moved.res[:, i] - base.res[:, i])
            changed = max(x.abs().max().item() for x in same)
            if i == j:
                assert changed > 1e-6
            else:
                assert changed == 0.0


@pytest.mark.parametrize("n", RATES)
def test_dynamic_hc_at_init_equals_static_hc_and_its_scales_get_zero_gradient(n):
    branch = prenorm_branch(D, seed=n)
    static = hclib.HyperConnection(D, branch, n=n, layer_id=3, dynamic=False).double()
    dynamic = hclib.HyperConnection(D, branch, n=n, layer_id=3, dynamic=True).double()
    H = torch.randn(5, n, D, dtype=F64)
    out = dynamic(H)
    torch.testing.assert_close(out, static(H), atol=0, rtol=0)
    out.pow(2).sum().backward()
    assert dynamic.alpha_scale.grad.item() == 0.0 and dynamic.beta_scale.grad.item() == 0.0
    assert dynamic.dynamic_alpha.grad.abs().max() > 0 and dynamic.dynamic_beta.grad.abs().max() > 0


def test_dynamic_hc_scales_start_at_0_01_and_projections_at_zero():
    layer = hclib.HyperConnection(64, nn.Identity(), n=4)
    assert layer.alpha_scale.item() == pytest.approx(
        0.01
    ) and layer.beta_scale.item() == pytest.approx(0.01)
    assert torch.all(layer.dynamic_alpha == 0) and torch.all(layer.dynamic_beta == 0)
    assert layer.dynamic_alpha.shape == (64, 5) and layer.dynamic_beta.shape == (64,)


# --------------------------------------- 9-10. sequential and parallel duality (Section 3.2)
def sequential_matrix(n):
    """Eq. 42: [[0, 1_{1 x n}], [e_1, I_n]]."""
    M = torch.zeros(n + 1, n + 1, dtype=F64)
    M[0, 1:] = 1.0
    M[1, 0] = 1.0
    M[1:, 1:] = torch.eye(n, dtype=F64)
    return M


def parallel_matrix(n, i):
    """Eqs. 54-55 for layer k with k - 1 = i (mod n), slots 0-based.

    i = 0: read the sum of all slots, every slot becomes that sum, write into slot 0.
    i > 0: read slot i (still holding the group input), keep the slots, write into slot i.
    For n = 2 these are Eq. 18 and the even-layer matrix derived in papers.md (Eq. 19).
    """
    M = torch.zeros(n + 1, n + 1, dtype=F64)
    if i == 0:
        M[0, 1] = 1.0
        M[1:, :] = 1.0
    else:
        M[0, 1 + i] = 1.0
        M[1 + i, 0] = 1.0
        M[1:, 1:] = torch.eye(n, dtype=F64)
    return M


@pytest.mark.parametrize("n", RATES)
@pytest.mark.parametrize("depth", DEPTHS)
def test_sequential_hc_matrix_keeps_all_streams_equal_to_the_prenorm_chain(n, depth):
    torch.manual_seed(n + depth)
    branches = [prenorm_branch(D) for _ in range(depth)]
    h = torch.randn(3, D, dtype=F64)
    H = hclib.expand_streams(h, n)
    for branch, expected in zip(branches, prenorm_stack(branches, h), strict=True):
        H = hclib.HyperConnection.from_matrix(sequential_matrix(n), D, branch)(H)
        for i in range(n):
            torch.testing.assert_close(H[..., i, :], expected, atol=1e-13, rtol=0)


def test_parallel_matrices_for_n_2_are_eq_18_and_the_derived_eq_19():
    odd = torch.tensor([[0, 1, 0], [1, 1, 1], [1, 1, 1]], dtype=F64)
    even = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=F64)
    torch.testing.assert_close(parallel_matrix(2, 0), odd, rtol=0, atol=0)
    torch.testing.assert_close(parallel_matrix(2, 1), even, rtol=0, atol=0)


@pytest.mark.parametrize("n", [2, 3, 4])
@pytest.mark.parametrize("groups", [1, 3])
def test_parallel_hc_matrices_make_each_group_of_n_layers_a_parallel_block(n, groups):
    # Eq. 53: after each group, sum of streams = sum_i (T_i(x) + x), x = sum before the group.
    torch.manual_seed(100 + n)
    branches = [prenorm_branch(D) for _ in range(n * groups)]
    H = torch.randn(2, n, D, dtype=F64)
    for g in range(groups):
        x = hclib.reduce_streams(H)
        group = branches[g * n : (g + 1) * n]
        expected = sum(branch(x) + x for branch in group)
        for i, branch in enumerate(group):
            H = hclib.HyperConnection.from_matrix(parallel_matrix(n, i), D, branch)(H)
        torch.testing.assert_close(hclib.reduce_streams(H), expected, atol=1e-12, rtol=0)


# ----------------------------------------------------------- 13-15. parameters and FLOPs
@pytest.mark.parametrize(("n", "expected"), [(4, 768), (2, 256)])
def test_static_hc_has_n_times_n_plus_2_parameters_per_module(n, expected):
    # Eqs. 21-22 for OLMo-1B: L = 16 layers, two HC modules per layer.
    modules = [hclib.HyperConnection(2048, nn.Identity(), n=n, dynamic=False) for _ in range(32)]
    per_module = sum(p.numel() for p in modules[0].parameters())
    assert per_module == n * (n + 2)
    assert sum(p.numel() for m in modules for p in m.parameters()) == expected


@pytest.mark.parametrize(
    ("d", "layers", "n", "expected"),
    [(2048, 16, 4, 394_048), (2048, 16, 2, 262_464), (4096, 32, 4, 1_574_528)],
)
def test_dynamic_hc_parameter_count_matches_eqs_23_to_25(d, layers, n, expected):
    # |theta_norm| + d(n+2) + n(n+2) + 2 with a parameter-free norm (OLMo, Appendix B).
    module = hclib.HyperConnection(d, nn.Identity(), n=n)
    per_module = sum(p.numel() for p in module.parameters())
    assert per_module == d * (n + 2) + n * (n + 2) + 2
    assert per_module * 2 * layers == expected
    affine = hclib.HyperConnection(d, nn.Identity(), n=n, norm_affine=True)
    assert sum(p.numel() for p in affine.parameters()) == per_module + 2 * d  # LayerNorm w, b


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_static_hc_width_connection_costs_d_n_n_plus_1_multiply_adds_per_token(n):
    tokens, d = 6, 32
    layer = hclib.HyperConnection(d, nn.Identity(), n=n, dynamic=False)
    with FlopCounterMode(display=False) as counter:
        layer(torch.randn(tokens, n, d))
    assert counter.get_total_flops() == 2 * tokens * d * n * (n + 1)  # FLOPs = 2 x MACs


# ------------------------------------------------------------- the static matrix API
@pytest.mark.parametrize("n", RATES)
def test_from_matrix_builds_exactly_the_given_matrix_and_matches_eq_2(n):
    torch.manual_seed(n)
    matrix = torch.randn(n + 1, n + 1, dtype=F64)
    matrix[0, 0] = 0.0
    branch = prenorm_branch(D, seed=n)
    layer = hclib.HyperConnection.from_matrix(matrix, D, branch)
    assert not layer.dynamic and layer.static_alpha.dtype == F64
    torch.testing.assert_close(layer.static_matrix(), matrix, rtol=0, atol=0)
    H = torch.randn(2, 3, n, D, dtype=F64)
    torch.testing.assert_close(layer(H), hc_forward_by_hand(matrix, branch, H), atol=1e-13, rtol=0)


def test_hc_forwards_extra_arguments_to_the_branch():
    def branch(x, scale, *, shift):
        return scale * x + shift

    layer = hclib.HyperConnection(4, branch, n=2, layer_id=1)
    H = torch.randn(3, 2, 4)
    out = layer(H, 2.0, shift=0.5)
    expected = H + (2.0 * H[:, 1] + 0.5).unsqueeze(1)
    torch.testing.assert_close(out, expected)


# ------------------------------------------------------------------ dtypes and gradients
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("tanh", [True, False])
def test_hc_passes_float64_gradcheck(dynamic, tanh):
    torch.manual_seed(0)
    layer = randomise(
        hclib.HyperConnection(5, prenorm_branch(5), n=3, layer_id=1, dynamic=dynamic, tanh=tanh)
    ).double()
    names = [name for name, _ in layer.named_parameters()]  # the branch's included

    def f(H, *params):
        return torch.func.functional_call(layer, dict(zip(names, params, strict=True)), (H,))

    H = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    inputs = (H, *[p.detach().clone().requires_grad_() for p in layer.parameters()])
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2)]
)
def test_hc_runs_in_float32_float64_and_bfloat16(dtype, atol):
    # A float32 module (the usual case) applied to inputs of each dtype, against the same
    # weights run entirely in float64.
    torch.manual_seed(1)
    layer = randomise(hclib.HyperConnection(16, prenorm_branch(16, torch.float32), n=4), std=0.1)
    H = torch.randn(3, 4, 16, dtype=F64)
    reference = copy.deepcopy(layer).double()(H)
    layer.branch.to(dtype)  # the branch computes in the model dtype; the connection in fp32+
    out = layer(H.to(dtype))
    assert out.dtype == dtype
    assert layer.static_alpha.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference, atol=atol, rtol=atol)


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: hclib.HyperConnection(8, nn.Identity(), n=0), ValueError, "n must be >= 1"),
        (lambda: hclib.HyperConnection(8, nn.Identity(), n=2.5), TypeError, "n must be an int"),
        (lambda: hclib.HyperConnection(8, nn.Identity(), layer_id=-1), ValueError, "layer_id"),
        (
            lambda: hclib.HyperConnection(8, nn.Identity(), norm="batch"),
            ValueError,
            "'layer' or 'rms'",
        ),
        (lambda: hclib.HyperConnection(8, None), TypeError, "branch must be a callable"),
        (
            lambda: hclib.HyperConnection(8, nn.Identity(), n=4)(torch.zeros(2, 3, 8)),
            ValueError,
            r"\(\.\.\., 4, 8\)",
        ),
        (
            lambda: hclib.HyperConnection(8, nn.Identity(), n=4)(torch.zeros(2, 8)),
            ValueError,
            r"got \(2, 8\)",
        ),
        (
            lambda: hclib.HyperConnection(8, nn.Identity(), n=2)(
                torch.zeros(2, 2, 8, dtype=torch.long)
            ),
            TypeError,
            "floating",
        ),
        (
            lambda: hclib.HyperConnection(8, nn.Linear(8, 4), n=2)(torch.zeros(2, 8)),
            ValueError,
            "width",
        ),
        (
            lambda: hclib.HyperConnection(8, nn.Identity(), n=2).mappings(),
            ValueError,
            "pass the state",
        ),
        (
            lambda: hclib.HyperConnection.from_matrix(torch.zeros(2, 3), 8, nn.Identity()),
            ValueError,
            "square",
        ),
        (
            lambda: hclib.HyperConnection.from_matrix(torch.zeros(1, 1), 8, nn.Identity()),
            ValueError,
            "square",
        ),
        (
            lambda: hclib.HyperConnection.from_matrix(torch.zeros(3), 8, nn.Identity()),
            ValueError,
            "2-D",
        ),
        (
            lambda: hclib.HyperConnection.from_matrix(torch.ones(3, 3), 8, nn.Identity()),
            ValueError,
            "top-left",
        ),
    ],
)
def test_bad_hc_inputs_raise_clear_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()
