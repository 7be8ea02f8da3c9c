"""Frac-connections: every exactly checkable claim of FC (arXiv 2503.14125).

Numbers in test names and comments refer to ../shared/papers.md, sections 2 and 7 (items 17-24).
Every formula is written out here from the paper (with einsum), independently of hclib.
"""

import copy

import pytest
import torch
from branches import prenorm_branch, prenorm_stack, randomise
from torch import nn

import hclib

F64 = torch.float64
FRACS = [1, 2, 3, 8]  # frac-rates m
DEPTHS = [1, 3, 7]
BATCHES = [(), (5,), (2, 3)]
D = 24  # divisible by 1, 2, 3, 4, 8; d/m = 24, 12, 8, 3 (odd for m = 8)


# ------------------------------------------------------------------------------ helpers


def split_by_hand(h, m):
    """FC Eq. 6: m contiguous chunks of d/m features, stacked.  (..., d) -> (..., m, d/m)"""
    return torch.stack(torch.chunk(h, m, dim=-1), dim=-2)


def concat_by_hand(H):
    """Concatenate the fractions back.  (..., m, d/m) -> (..., d)"""
    return torch.cat(torch.unbind(H, dim=-2), dim=-1)


def fc_forward_by_hand(Y, A, B, branch, H):
    """FC Eq. 8 / Algorithm 1: H^ = B^T o split(T(concat(Y^T H))) + A^T H.

    Y, A ``(..., m, m)``, B ``(..., m)`` (per-token weights allowed), H ``(..., m, d/m)``.
    B acts elementwise: fraction i of the branch output is scaled by beta_i.
    """
    m = H.shape[-2]
    h0 = concat_by_hand(torch.einsum("...ji,...jf->...if", Y, H))  # concat(Y^T H)  (..., d)
    y = split_by_hand(branch(h0), m)  # (..., m, d/m)
    return torch.einsum("...i,...if->...if", B, y) + torch.einsum("...ji,...jf->...if", A, H)


def random_fc_matrix(m, seed):
    """A random (m+1, 2m) FC matrix [[0, B], [Y, A]] (Eq. 7) in float64."""
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(m + 1, 2 * m, dtype=F64, generator=g)
    M[0, :m] = 0.0
    return M


def blocks(M):
    """(B, Y, A) of an FC matrix laid out as Eq. 7."""
    m = M.shape[0] - 1
    return M[0, m:], M[1:, :m], M[1:, m:]


def normalise_by_hand(H, kind, eps=1e-5):
    """LayerNorm / RMSNorm over the last dimension, without affine parameters."""
    if kind == "layer":
        centred = H - H.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + eps)
    return H / torch.sqrt(H.pow(2).mean(-1, keepdim=True) + eps)


# ------------------------------------------------------- 17. split / concat (Eq. 6)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("m", [1, 2, 3, 4, 8])
def test_split_then_merge_is_the_identity_with_contiguous_fractions(batch, m):
    h = torch.randn(*batch, D, dtype=F64)
    H = hclib.split_fractions(h, m)
    assert H.shape == (*batch, m, D // m)
    f = D // m
    for i in range(m):  # fraction i holds features i*d/m .. (i+1)*d/m - 1
        assert torch.equal(H[..., i, :], h[..., i * f : (i + 1) * f])
    assert torch.equal(H, split_by_hand(h, m))
    assert torch.equal(hclib.merge_fractions(H), h)
    assert torch.equal(hclib.merge_fractions(H), concat_by_hand(H))
    assert torch.equal(hclib.split_fractions(hclib.merge_fractions(H), m), H)


# ------------------------------------------------------------- 18. FC matrix (Eq. 7)
@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_matrix_is_m_plus_1_by_2m_with_square_y_and_a_and_a_row_b(m, dynamic):
    layer = hclib.FracConnection(D, nn.Identity(), m=m, dynamic=dynamic)
    M = layer.static_matrix()
    assert M.shape == (m + 1, 2 * m)
    assert torch.all(M[0, :m] == 0)  # the 1 x m zero block
    B, Y, A = M[0:1, m:], M[1:, :m], M[1:, m:]
    assert B.shape == (1, m) and Y.shape == (m, m) and A.shape == (m, m)
    assert torch.equal(B[0], layer.static_beta.detach())
    assert torch.equal(torch.cat([Y, A], dim=1), layer.static_alpha.detach())  # [Y | A]
    H = torch.randn(2, 3, m, D // m)
    pre, post, res = layer.mappings(H)
    assert pre.shape == (2, 3, m, m) and post.shape == (2, 3, m) and res.shape == (2, 3, m, m)


# ------------------------------------------------------------ 19. FC forward (Eq. 8)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("m", FRACS)
def test_fc_forward_is_eq_8_with_an_elementwise_beta(batch, m):
    matrix = random_fc_matrix(m, seed=m)
    branch = prenorm_branch(D, seed=m)
    layer = hclib.FracConnection.from_matrix(matrix, D, branch)
    H = torch.randn(*batch, m, D // m, dtype=F64)
    expected = fc_forward_by_hand(*blocks(matrix)[1:], blocks(matrix)[0], branch, H)
    torch.testing.assert_close(layer(H), expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("m", [2, 3, 8])
def test_fc_beta_is_not_an_outer_product(m):
    # HC writes B^T T(h_0)^T, an outer product: every stream gets beta_i times the whole
    # output. Read that way for fractions, fraction i would get beta_i times *one* (d/m)-row,
    # e.g. the sum of the fractions of T(h_0); the full d-wide outer product does not even fit
    # the state. FC's beta is elementwise (Algorithm 2: beta[..., None] * h_o.reshape(m, d/m)).
    matrix = random_fc_matrix(m, seed=10 + m)
    B, Y, A = blocks(matrix)
    branch = prenorm_branch(D, seed=m)
    layer = hclib.FracConnection.from_matrix(matrix, D, branch)
    H = torch.randn(4, m, D // m, dtype=F64)
    y = split_by_hand(branch(concat_by_hand(torch.einsum("ji,...jf->...if", Y, H))), m)
    residual = torch.einsum("ji,...jf->...if", A, H)
    outer = torch.einsum("i,...f->...if", B, y.sum(-2)) + residual  # the HC-style reading
    elementwise = torch.einsum("i,...if->...if", B, y) + residual
    assert torch.einsum("i,...d->...id", B, concat_by_hand(y)).shape[-1] == D != D // m
    assert (outer - elementwise).abs().max() > 1e-2
    torch.testing.assert_close(layer(H), elementwise, atol=1e-13, rtol=0)
    assert (layer(H) - outer).abs().max() > 1e-2


# ------------------------------------------------------- 20. init = Pre-Norm (Eq. 15)
@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("layer_id", [0, 1, 5])
def test_fc_init_matrix_is_eq_15_for_every_layer(m, layer_id):
    layer = hclib.FracConnection(D, nn.Identity(), m=m, layer_id=layer_id)
    expected = torch.zeros(m + 1, 2 * m)
    expected[0, m:] = 1.0  # B = 1
    expected[1:, :m] = torch.eye(m)  # Y = I
    expected[1:, m:] = torch.eye(m)  # A = I (no layer-dependent one-hot, unlike HC)
    assert torch.equal(layer.static_matrix(), expected)
    assert torch.all(layer.dynamic_alpha == 0) and torch.all(layer.dynamic_beta == 0)
    assert layer.dynamic_alpha.shape == (D // m, 2 * m) and layer.dynamic_beta.shape == (D // m,)
    assert layer.alpha_scale.item() == pytest.approx(0.01)
    assert layer.beta_scale.item() == pytest.approx(0.01)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_init_layer_is_exactly_the_prenorm_residual(batch, m, dynamic):
    branch = prenorm_branch(D, seed=m)
    layer = hclib.FracConnection(D, branch, m=m, dynamic=dynamic).double()
    h = torch.randn(*batch, D, dtype=F64)
    out = concat_by_hand(layer(split_by_hand(h, m)))
    torch.testing.assert_close(out, h + branch(h), atol=0, rtol=0)


@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_init_stack_equals_prenorm_stack_exactly(m, depth, dynamic):
    torch.manual_seed(10 * depth + m)
    branches = [prenorm_branch(D) for _ in range(depth)]
    layers = [
        hclib.FracConnection(D, b, m=m, layer_id=k, dynamic=dynamic).double()
        for k, b in enumerate(branches)
    ]
    h = torch.randn(2, 3, D, dtype=F64)
    H = hclib.split_fractions(h, m)
    for layer, expected in zip(layers, prenorm_stack(branches, h), strict=True):
        H = layer(H)
        torch.testing.assert_close(concat_by_hand(H), expected, atol=0, rtol=0)
    # the final concat is the Pre-Norm final hidden itself: no factor m (HC has a factor n)
    torch.testing.assert_close(hclib.merge_fractions(H), expected, atol=0, rtol=0)


# ------------------------------------------------------------ 21. FC m = 1 == HC n = 1
def copy_hc_into_fc(hc, fc):
    """Give a one-fraction FC exactly the scalars of a one-stream HC.

    Both keep [read-out | residual] in static_alpha (HC: [A_m | A_r], FC: [Y | A]), the
    write-in in static_beta, and [W_m | W_r] / [W_gamma | W_alpha] in dynamic_alpha.
    """
    with torch.no_grad():
        for name, p in fc.named_parameters():
            if not name.startswith("branch."):
                p.copy_(hc.get_parameter(name))


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("dynamic", [False, True])
@pytest.mark.parametrize("tanh", [True, False])
@pytest.mark.parametrize("norm", ["layer", "rms"])
def test_fc_with_one_fraction_equals_hc_with_one_stream(batch, dynamic, tanh, norm):
    branch = prenorm_branch(D, seed=7)
    kwargs = dict(dynamic=dynamic, tanh=tanh, norm=norm, norm_affine=True)
    hc = randomise(hclib.HyperConnection(D, branch, n=1, **kwargs).double())
    fc = hclib.FracConnection(D, branch, m=1, **kwargs).double()
    copy_hc_into_fc(hc, fc)
    assert torch.equal(fc.static_matrix(), hc.static_matrix())  # [[0, b], [a_m, a_r]]
    H = torch.randn(*batch, 1, D, dtype=F64)  # one stream == one fraction of width d
    torch.testing.assert_close(fc(H), hc(H), atol=1e-14, rtol=0)
    fc_maps, hc_maps = fc.mappings(H), hc.mappings(H)
    torch.testing.assert_close(fc_maps.pre[..., 0], hc_maps.pre, atol=1e-15, rtol=0)
    torch.testing.assert_close(fc_maps.post, hc_maps.post, atol=1e-15, rtol=0)
    torch.testing.assert_close(fc_maps.res, hc_maps.res, atol=1e-15, rtol=0)


def test_fc_and_hc_from_the_same_2_by_2_matrix_compute_the_same_layer():
    matrix = random_fc_matrix(1, seed=3)  # (2, 2): also a valid HC matrix for n = 1
    branch = prenorm_branch(D, seed=3)
    fc = hclib.FracConnection.from_matrix(matrix, D, branch)
    hc = hclib.HyperConnection.from_matrix(matrix, D, branch)
    H = torch.randn(4, 1, D, dtype=F64)
    torch.testing.assert_close(fc(H), hc(H), atol=1e-14, rtol=0)


# -------------------------------------------------------- 22. dynamic FC (Eqs. 11-14)
@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("tanh", [True, False])
@pytest.mark.parametrize("norm", ["layer", "rms"])
@pytest.mark.parametrize("norm_affine", [False, True])
def test_dynamic_fc_weights_follow_eqs_11_to_14_with_the_norm_over_each_fraction(
    m, tanh, norm, norm_affine
):
    torch.manual_seed(m)
    layer = hclib.FracConnection(
        D, nn.Identity(), m=m, tanh=tanh, norm=norm, norm_affine=norm_affine
    )
    layer = randomise(layer.double())
    f = D // m
    H = torch.randn(4, m, f, dtype=F64)
    Hn = normalise_by_hand(H, norm)  # Eq. 11: over the d/m features of every fraction
    if norm_affine:
        Hn = Hn * layer.norm.weight
        if norm == "layer":
            Hn = Hn + layer.norm.bias
    act = torch.tanh if tanh else (lambda x: x)  # "w/o tanh" = identity activation
    W_gamma, W_alpha = layer.dynamic_alpha[:, :m], layer.dynamic_alpha[:, m:]  # (d/m, m) each
    s_a, s_b = layer.alpha_scale, layer.beta_scale
    B = s_b * act(torch.einsum("...if,f->...i", Hn, layer.dynamic_beta)) + layer.static_beta
    Y = s_a * act(torch.einsum("...if,fj->...ij", Hn, W_gamma)) + layer.static_alpha[:, :m]
    A = s_a * act(torch.einsum("...if,fj->...ij", Hn, W_alpha)) + layer.static_alpha[:, m:]
    pre, post, res = layer.mappings(H)
    torch.testing.assert_close(pre, Y.transpose(-1, -2), atol=1e-14, rtol=0)  # Eq. 13
    torch.testing.assert_close(post, B, atol=1e-14, rtol=0)  # Eq. 12
    torch.testing.assert_close(res, A.transpose(-1, -2), atol=1e-14, rtol=0)  # Eq. 14
    # and the forward pass uses these per-token weights as in Eq. 8
    layer.branch = prenorm_branch(D, seed=m)
    expected = fc_forward_by_hand(Y, A, B, layer.branch, H)
    torch.testing.assert_close(layer(H), expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("m", [2, 3, 8])
@pytest.mark.parametrize("tanh", [True, False])
def test_dynamic_fc_row_i_of_y_and_a_and_beta_i_depend_only_on_fraction_i(m, tanh):
    torch.manual_seed(m)
    layer = randomise(hclib.FracConnection(D, nn.Identity(), m=m, tanh=tanh).double())
    H = torch.randn(m, D // m, dtype=F64)
    base = layer.mappings(H)
    for j in range(m):
        H2 = H.clone()
        H2[j] += torch.randn(D // m, dtype=F64)
        moved = layer.mappings(H2)
        for i in range(m):
            # row i of Y(H) and A(H) is column i of pre = Y^T and res = A^T; entry i of B
            diffs = [
                moved.pre[:, i] - base.pre[:, i],
                moved.res[:, i] - base.res[:, i],
                moved.post[i] - base.post[i],
            ]
            changed = max(x.abs().max().item() for x in diffs)
            if i == j:
                assert changed > 1e-6
            else:
                assert changed == 0.0


@pytest.mark.parametrize("m", FRACS)
def test_fc_without_tanh_is_linear_in_the_normalised_input(m):
    # tanh=False is the identity activation: the dynamic part is s * norm(H) W exactly, so
    # it leaves the bounded range |s| that tanh imposes when W is large.
    layer = hclib.FracConnection(D, nn.Identity(), m=m, tanh=False, norm="rms").double()
    with torch.no_grad():
        layer.dynamic_alpha.normal_(0.0, 100.0)
        layer.dynamic_beta.normal_(0.0, 100.0)
    H = torch.randn(3, m, D // m, dtype=F64)
    Hn = normalise_by_hand(H, "rms")
    pre, post, _ = layer.mappings(H)
    torch.testing.assert_close(
        post - 1.0,
        layer.beta_scale * torch.einsum("...if,f->...i", Hn, layer.dynamic_beta),
        atol=1e-12,
        rtol=0,
    )
    assert (pre - torch.eye(m, dtype=F64)).abs().max() > 0.01  # beyond tanh's bound |s|


# ------------------------------------------------------------------ 23. state width
@pytest.mark.parametrize("m", FRACS)
def test_fc_carries_exactly_d_features_per_token_while_hc_carries_n_times_d(m):
    tokens = (2, 3)
    h = torch.randn(*tokens, D)
    fc = hclib.FracConnection(D, prenorm_branch(D, dtype=torch.float32), m=m)
    hc = hclib.HyperConnection(D, prenorm_branch(D, dtype=torch.float32), n=m)
    fc_state = fc(hclib.split_fractions(h, m))
    hc_state = hc(hclib.expand_streams(h, m))
    assert fc_state.shape == (*tokens, m, D // m)
    assert fc_state[0, 0].numel() == D  # d features per token
    assert hc_state[0, 0].numel() == m * D  # n d features per token


# ------------------------------------------------------------ 24. parameters (Eqs. 16-19)
def count(modules):
    return sum(p.numel() for module in modules for p in module.parameters())


@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_static_fc_has_m_times_2m_plus_1_parameters_per_module(m):
    # Eqs. 16-17 for OLMo-1B: L = 16 layers, two FC modules per layer.
    modules = [hclib.FracConnection(2048, nn.Identity(), m=m, dynamic=False) for _ in range(32)]
    assert count(modules[:1]) == m * (2 * m + 1)
    assert count(modules) == m * (2 * m + 1) * 2 * 16
    if m == 4:
        assert count(modules) == 1152


@pytest.mark.parametrize(("d", "m", "layers"), [(2048, 4, 16), (2048, 2, 16), (24, 3, 7)])
def test_dynamic_fc_with_rmsnorm_parameter_count_matches_eqs_18_19(d, m, layers):
    modules = [
        hclib.FracConnection(d, nn.Identity(), m=m, norm="rms", norm_affine=True)
        for _ in range(2 * layers)
    ]
    per_module = d // m + (d // m) * (2 * m + 1) + m * (2 * m + 1) + 2
    assert count(modules[:1]) == per_module
    assert count(modules) == per_module * 2 * layers
    if (d, m, layers) == (2048, 4, 16):
        assert count(modules) == 165_056


@pytest.mark.parametrize("m", FRACS)
def test_dynamic_fc_at_init_equals_static_fc_and_its_scales_get_zero_gradient(m):
    branch = prenorm_branch(D, seed=m)
    static = hclib.FracConnection(D, branch, m=m, dynamic=False).double()
    dynamic = hclib.FracConnection(D, branch, m=m, dynamic=True).double()
    H = 3.0 * torch.randn(5, m, D // m, dtype=F64)
    out = dynamic(H)
    torch.testing.assert_close(out, static(H), atol=0, rtol=0)
    out.pow(2).sum().backward()
    assert dynamic.alpha_scale.grad.item() == 0.0 and dynamic.beta_scale.grad.item() == 0.0
    assert dynamic.dynamic_alpha.grad.abs().max() > 0 and dynamic.dynamic_beta.grad.abs().max() > 0


@pytest.mark.parametrize("m", FRACS)
def test_fc_from_matrix_round_trips_static_matrix(m):
    matrix = random_fc_matrix(m, seed=20 + m)
    layer = hclib.FracConnection.from_matrix(matrix, D, nn.Identity())
    assert not layer.dynamic and layer.m == m and layer.static_alpha.dtype == F64
    assert torch.equal(layer.static_matrix(), matrix)
    B, Y, A = blocks(matrix)
    assert torch.equal(layer.static_beta.detach(), B)
    assert torch.equal(layer.static_alpha.detach(), torch.cat([Y, A], dim=1))
    # and the other way round: a module's matrix rebuilds the same module
    original = randomise(hclib.FracConnection(D, nn.Identity(), m=m, dynamic=False))
    rebuilt = hclib.FracConnection.from_matrix(original.static_matrix(), D, nn.Identity())
    assert torch.equal(rebuilt.static_matrix(), original.static_matrix())
    assert torch.equal(rebuilt.mappings().pre, original.mappings().pre)


@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_weight_decay_applies_to_dynamic_projections_not_static_weights(dynamic):
    # FC Section 4.3: static parts no weight decay, dynamic parts weight decay.
    model = nn.ModuleList(
        [hclib.FracConnection(D, prenorm_branch(D), m=4, dynamic=dynamic, norm_affine=True)]
    )
    decayed, plain = hclib.param_groups(model, weight_decay=0.1)
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    expected_decayed = {"0.branch.1.weight"}
    expected_plain = {"0.static_alpha", "0.static_beta", "0.branch.0.weight", "0.branch.0.bias"}
    expected_plain |= {"0.branch.1.bias"}
    if dynamic:
        expected_decayed |= {"0.dynamic_alpha", "0.dynamic_beta"}
        expected_plain |= {"0.alpha_scale", "0.beta_scale", "0.norm.weight", "0.norm.bias"}
    assert set(decayed["names"]) == expected_decayed
    assert set(plain["names"]) == expected_plain
    params = dict(model.named_parameters())
    for group in (decayed, plain):
        assert [id(p) for p in group["params"]] == [id(params[n]) for n in group["names"]]


# ------------------------------------------------------------ dtypes and gradients
def gradcheck_module(module, H):
    """float64 gradcheck of ``module(H)`` w.r.t. ``H`` and every parameter of ``module``.

    gradcheck perturbs its inputs in place, so passing the parameters themselves (not
    copies) checks the gradient of each of them without a functional call.
    """
    params = list(module.parameters())
    return torch.autograd.gradcheck(lambda H, *ps: module(H), (H, *params))


GRADCHECK_CASES = [(False, True, "layer")] + [  # (dynamic, tanh, norm)
    (True, tanh, norm) for tanh in (True, False) for norm in ("layer", "rms")
]


@pytest.mark.parametrize(("d", "m"), [(6, 2), (9, 3), (16, 8)])
@pytest.mark.parametrize(("dynamic", "tanh", "norm"), GRADCHECK_CASES)
def test_fc_passes_float64_gradcheck_wrt_input_and_all_parameters(d, m, dynamic, tanh, norm):
    torch.manual_seed(d + m)
    layer = hclib.FracConnection(
        d, prenorm_branch(d), m=m, dynamic=dynamic, tanh=tanh, norm=norm, norm_affine=True
    )
    layer = randomise(layer.double())  # non-zero projections, scales, norm gains
    H = torch.randn(2, m, d // m, dtype=F64, requires_grad=True)
    assert gradcheck_module(layer, H)


@pytest.mark.parametrize(
    ("dtype", "atol"),
    [(torch.float32, 1e-5), (torch.float64, 1e-12), (torch.bfloat16, 5e-2)],
    ids=["float32", "float64", "bfloat16"],
)
@pytest.mark.parametrize("m", [2, 4])
def test_fc_runs_in_float32_float64_and_bfloat16(dtype, atol, m):
    # A float32 module applied to inputs of each dtype, against the same weights in float64.
    torch.manual_seed(m)
    layer = randomise(hclib.FracConnection(16, prenorm_branch(16, torch.float32), m=m), std=0.1)
    H = torch.randn(3, m, 16 // m, dtype=F64)
    reference = copy.deepcopy(layer).double()(H)
    layer.branch.to(dtype)  # the branch computes in the model dtype; the connection in fp32+
    out = layer(H.to(dtype))
    assert out.dtype == dtype and layer.static_alpha.dtype == torch.float32
    assert layer.mappings(H.to(dtype)).pre.dtype == (F64 if dtype == F64 else torch.float32)
    torch.testing.assert_close(out.double(), reference, atol=atol, rtol=atol)


# ------------------------------------------------------------------------- bad input
def _bad_corner():
    M = torch.zeros(3, 4)
    M[0, 1] = 0.5
    return hclib.FracConnection.from_matrix(M, 8, nn.Identity())


BAD_INPUTS = [
    (
        lambda: hclib.FracConnection(250, nn.Identity(), m=4),
        ValueError,
        "d=250 is not divisible by m=4",
    ),
    (
        lambda: hclib.split_fractions(torch.zeros(250), 4),
        ValueError,
        "d=250 is not divisible by m=4",
    ),
    (lambda: hclib.FracConnection(8, nn.Identity(), m=0), ValueError, "m must be >= 1 .* got m=0"),
    (lambda: hclib.FracConnection(8, nn.Identity(), m=-2), ValueError, "got m=-2"),
    (lambda: hclib.FracConnection(8, nn.Identity(), m=2.0), TypeError, "m must be an int.*float"),
    (lambda: hclib.FracConnection(8, nn.Identity(), m=True), TypeError, "m must be an int.*bool"),
    (lambda: hclib.split_fractions(torch.zeros(8), 0), ValueError, "m must be >= 1"),
    (lambda: hclib.FracConnection(8, nn.Identity(), layer_id=-1), ValueError, "layer_id"),
    (
        lambda: hclib.FracConnection(8, nn.Identity(), m=2, norm="batch"),
        ValueError,
        "'layer' or 'rms'",
    ),
    (lambda: hclib.FracConnection(8, None, m=2), TypeError, "branch must be a callable.*NoneType"),
    (lambda: hclib.FracConnection(8, "T", m=2), TypeError, "branch must be a callable.*str"),
    (
        lambda: hclib.FracConnection(24, nn.Identity(), m=4)(torch.zeros(2, 24)),
        ValueError,
        r"\(\.\.\., 4, 6\).*got \(2, 24\)",
    ),
    (
        lambda: hclib.FracConnection(24, nn.Identity(), m=4)(torch.zeros(2, 3, 8)),
        ValueError,
        r"\(\.\.\., 4, 6\).*got \(2, 3, 8\)",
    ),
    (
        lambda: hclib.FracConnection(24, nn.Identity(), m=4)(torch.zeros(4, 6, dtype=torch.long)),
        TypeError,
        "floating-point.*int64",
    ),
    (
        lambda: hclib.FracConnection(24, nn.Linear(24, 12), m=4)(torch.zeros(2, 4, 6)),
        ValueError,
        r"without changing the width.*\(2, 24\) to \(2, 12\)",
    ),
    (
        lambda: hclib.FracConnection(24, nn.Identity(), m=4).mappings(None),
        ValueError,
        "pass the state",
    ),
    (
        lambda: hclib.FracConnection.from_matrix(torch.zeros(3, 3), 8, nn.Identity()),
        ValueError,
        r"\(m\+1, 2m\).*got \(3, 3\)",
    ),
    (
        lambda: hclib.FracConnection.from_matrix(torch.zeros(1, 0), 8, nn.Identity()),
        ValueError,
        r"\(m\+1, 2m\) with m >= 1.*got \(1, 0\)",
    ),
    (
        lambda: hclib.FracConnection.from_matrix(torch.zeros(3, 4, 1), 8, nn.Identity()),
        ValueError,
        "2-D.*got shape",
    ),
    (
        lambda: hclib.FracConnection.from_matrix(torch.zeros(4, 6), 8, nn.Identity()),
        ValueError,
        "d=8 is not divisible by m=3",
    ),
    (_bad_corner, ValueError, r"top-left block .* must be zero.*0\.5"),
]


@pytest.mark.parametrize(("build", "error", "message"), BAD_INPUTS)
def test_fc_rejects_bad_input_naming_expected_and_given(build, error, message):
    with pytest.raises(error, match=message):
        build()


# ------------------------------------------------------ unfolded connection matrix
@pytest.mark.parametrize("m", FRACS)
@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("dynamic", [False, True])
def test_fc_init_stack_unfolds_to_identity_blocks_strictly_below_the_diagonal(m, depth, dynamic):
    # At init every FC layer is h + T(h): the layer-to-layer matrix is Pre-Norm's strictly
    # lower-triangular matrix of ones, each one an m x m identity (fraction p feeds fraction p).
    layers = [
        hclib.FracConnection(
            D, prenorm_branch(D, seed=k), m=m, layer_id=k, dynamic=dynamic
        ).double()
        for k in range(depth)
    ]
    H = torch.randn(2, 3, m, D // m, dtype=F64) if dynamic else None
    C = hclib.connection_matrix(layers, H)
    size = depth + 2
    assert C.shape == (size, size, m, m)
    expected = torch.zeros(size, size, m, m, dtype=C.dtype)
    for k in range(size):
        for j in range(k):
            expected[k, j] = torch.eye(m)
    assert torch.equal(C, expected)
