"""benchmarks/conformance.py: the comparison machinery gives exactly zero on hclib against
itself and sees a deliberate deviation; the parameter mappings are exact re-layouts; and, where
the peers are installed, each peer computes hclib's function once its listed deviations are
neutralised (and not before)."""

import csv
from pathlib import Path

import pytest
import torch

import hclib
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "conformance.py"


conf = load_script("conformance")

# (kind, n or m, d, depth)
SELF_CASES = [
    ("hc", 1, 8, 1),
    ("hc", 4, 16, 3),
    ("fc", 2, 8, 2),
    ("fc", 4, 16, 3),
    ("mhc", 2, 8, 1),
    ("mhc", 4, 12, 3),
]
PERTURBATIONS = ["transpose", "norm"]


@pytest.mark.parametrize("kind,k,d,depth", SELF_CASES)
def test_identity_mapping_gives_exactly_zero_difference(kind, k, d, depth):
    H = conf.state(kind, k, d)
    diff = conf.compare(conf.hclib_self_pairs(kind, k, d, depth), H)
    assert diff.out == 0.0
    leaves = conf.hclib_self_pairs(kind, k, d, depth)[0].leaves
    assert set(diff.grads) == {"H"} | {f"{i}.{n}" for i in range(depth) for n in leaves}
    assert diff.grad == 0.0
    assert diff.scale > 0.1  # the output is not trivially zero


@pytest.mark.parametrize("perturb", PERTURBATIONS)
@pytest.mark.parametrize("kind,k,d,depth", [c for c in SELF_CASES if c[1] > 1])
def test_comparison_sees_a_deliberate_deviation(kind, k, d, depth, perturb):
    H = conf.state(kind, k, d)
    diff = conf.compare(conf.hclib_self_pairs(kind, k, d, depth, perturb=perturb), H)
    assert diff.out > 1e-6
    assert diff.grad > 1e-6


def test_gradients_of_every_leaf_are_compared_not_only_the_output():
    # a deviation that only reaches the gradients: the same forward, a detached leaf
    stack = conf.hclib_self_pairs("hc", 2, 8, 1)
    pair = stack[0]
    ours = pair.ours

    def peer(lv, H):
        return ours({**lv, "beta_scale": lv["beta_scale"].detach()}, H)

    diff = conf.compare([conf.Pair(pair.leaves, peer, ours)], conf.state("hc", 2, 8))
    assert diff.out == 0.0
    assert diff.worst == "0.beta_scale" and diff.grad > 1e-6


def test_float64_arithmetic_makes_float_a_no_op_only_inside_and_only_for_float64():
    x = torch.ones(2, dtype=torch.float64)
    with conf.float64_arithmetic():
        assert x.float().dtype == torch.float64
        assert torch.ones(2, dtype=torch.float16).float().dtype == torch.float32
    assert x.float().dtype == torch.float32


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("iters", [1, 20])
def test_log_domain_reference_equals_hclib_sinkhorn_in_float64(n, iters):
    L = torch.randn(16, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n)) * 5
    torch.testing.assert_close(
        conf.log_sinkhorn(L, iters), hclib.sinkhorn_knopp(L, iters), atol=1e-14, rtol=0
    )


@pytest.mark.parametrize("n,d", [(2, 3), (4, 5)])
def test_lucid_mhc_mapping_is_block_diagonal_and_keeps_every_weight_once(n, d):
    g = torch.Generator().manual_seed(0)
    lv = {
        "static_alpha": torch.randn(n, n + 1, generator=g, dtype=torch.float64),
        "dynamic_alpha_fn": torch.randn(1, d, n + 1, generator=g, dtype=torch.float64),
        "pre_branch_scale": torch.rand(1, dtype=torch.float64),
        "residual_scale": torch.rand(1, dtype=torch.float64),
        "static_beta": torch.randn(n, generator=g, dtype=torch.float64),
        "dynamic_beta_fn": torch.randn(d, generator=g, dtype=torch.float64),
        "h_post_scale": torch.rand((), dtype=torch.float64),
        "norm.gamma": torch.zeros(d, dtype=torch.float64),
    }
    out = conf._lucid_mhc_to_hclib(lv, n, d)
    phi = out["phi"].view(n, d, n * n + 2 * n)
    W = lv["dynamic_alpha_fn"][0]
    for s in range(n):
        # stream s feeds its own H_pre and H_post entries and column s of H_res, nothing else
        used = {s, n + s} | {2 * n + t * n + s for t in range(n)}
        for c in range(n * n + 2 * n):
            assert bool(phi[s, :, c].any()) == (c in used)
        assert torch.equal(phi[s, :, s], W[:, 0])
        assert torch.equal(phi[s, :, n + s], lv["dynamic_beta_fn"])
    # H_res[t, s] = alpha_res[s, t]: the static residual block arrives transposed
    b_res = out["bias"][2 * n :].view(n, n)
    assert torch.equal(b_res, lv["static_alpha"][:, 1:].T)
    assert torch.equal(out["bias"][:n], lv["static_alpha"][:, 0])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_dsv4_mapping_transposes_only_the_comb_block(n):
    k = n * n + 2 * n
    lv = {
        "fn": torch.arange(k * 2 * n, dtype=torch.float64).view(k, 2 * n),
        "base": torch.arange(k, dtype=torch.float64),
        "scale": torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
    }
    out = conf._dsv4_to_hclib(lv, n)
    assert torch.equal(out["bias"][: 2 * n], lv["base"][: 2 * n])
    assert torch.equal(out["bias"][2 * n :].view(n, n), lv["base"][2 * n :].view(n, n).T)
    assert torch.equal(out["phi"][:, : 2 * n], lv["fn"][: 2 * n].T)
    assert [float(out[a]) for a in ("alpha_pre", "alpha_post", "alpha_res")] == [1.0, 2.0, 3.0]


def test_hclib_rows_of_the_init_table_start_from_the_prenorm_network():
    rows = [r for r in conf.init_rows(depth=3, d=8, k=2) if r["package"] == "hclib"]
    assert len(rows) == 3
    for r in rows:
        assert r["max_abs_diff_vs_prenorm"] < 1e-10, r


def _peer(name):
    peer = next(p for p in conf.peers(quick=True) if p.name == name)
    why = conf._peer_available(peer)
    if why:
        pytest.skip(f"{name}: {why}")
    return peer


PEERS = [
    "lucidrains HC",
    "lucidrains FC (num_fracs)",
    "lucidrains mHC",
    "lucidrains mHCv2",
    "DeepSeek-V4 HyperConnection",
    "Liger-Kernel LigerMHC",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", PEERS)
def test_peer_computes_hclibs_function_once_its_deviations_are_neutralised(name):
    peer = _peer(name)
    rows = conf.run_ladder(peer)
    for case in {(r["k"], r["d"], r["depth"]) for r in rows}:
        ladder = [r for r in rows if (r["k"], r["d"], r["depth"]) == case]
        assert ladder[0]["step"] == "as installed", ladder[0]
        assert ladder[0]["out_diff"] > 10 * max(ladder[-1]["out_diff"], peer.floor / 100)
        # float64 rounding (or float32 for a float32-only kernel) is all that is left
        assert ladder[-1]["out_diff"] < peer.floor, ladder[-1]
        assert ladder[-1]["grad_diff"] < 10 * peer.floor, ladder[-1]


@pytest.mark.slow
def test_pot_sinkhorn_with_the_same_rounds_equals_hclib():
    pytest.importorskip("ot")
    rows = {r["implementation"]: r for r in conf.sinkhorn_rows(quick=True)}
    assert rows["hclib.sinkhorn_knopp"]["vs_log_t20"] < 1e-13
    assert rows["POT sinkhorn (method='sinkhorn')"]["vs_log_t20"] < 1e-13


def test_appendix_includes_the_committed_table_with_every_peer_and_its_version():
    page = (ROOT / "book" / "appendix_conformance.md").read_text()
    include = page.split("```{include} ", 1)[1].split("\n", 1)[0]
    table = (ROOT / "book" / include).resolve()
    assert table.is_file(), f"the appendix includes {include}, which does not exist"
    text = table.read_text()
    for name in PEERS:
        assert f"| {name} |" in text, f"{name} is missing from {table}"
    rows = list(csv.DictReader((table.with_suffix(".csv")).open()))
    assert rows and all(r["version"] for r in rows), "every row names the version it measured"


@pytest.mark.parametrize("m", [1, 2, 4])
def test_lucid_fc_mapping_interleaves_read_out_and_residual_columns_per_fraction(m):
    w = 3
    lv = conf._hc_leaves("fc", m, w, 0, torch.Generator().manual_seed(m))
    out = conf._lucid_hc_params("fc", lv, m)
    pairs = out["static_alpha"].view(m, m, 2)  # (source, target, [read-out | residual])
    assert torch.equal(pairs[..., 0], lv["static_alpha"][:, :m])  # Y
    assert torch.equal(pairs[..., 1], lv["static_alpha"][:, m:])  # A
    dyn = out["dynamic_alpha_fn"].view(w, m, 2)
    assert torch.equal(dyn[..., 0], lv["dynamic_alpha"][:, :m])
    assert torch.equal(dyn[..., 1], lv["dynamic_alpha"][:, m:])
    # one W_beta column per target fraction, all tied to FC's single W_beta
    assert out["dynamic_beta_fn"].shape == (w, m)
    assert all(torch.equal(c, lv["dynamic_beta"]) for c in out["dynamic_beta_fn"].unbind(-1))
    assert torch.equal(out["norm.gamma"] + 1.0, lv["norm_gain"])
