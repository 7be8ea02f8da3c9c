"""benchmarks/kernel_resources.py: its reading of ptxas' report, its verdict, the kernels it
covers, and one real ahead-of-time compile for sm_90 (no GPU needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import load_script

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "kernel_resources.py"


kr = load_script("kernel_resources", "kernel_resources")

LOG_OK = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_post_res_fwd' for 'sm_90a'
ptxas info    : Function properties for _post_res_fwd
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 128 registers, used 0 barriers
"""
LOG_SPILL = """ptxas info    : Compiling entry function '_readout_bwd' for 'sm_80'
ptxas info    : Function properties for _readout_bwd
    1896 bytes stack frame, 1200 bytes spill stores, 696 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 1896 bytes cumulative stack size
"""

# (log, registers, spill bytes = stores + loads)
PTXAS_CASES = [(LOG_OK, 128, 0), (LOG_SPILL, 255, 1896)]


@pytest.mark.parametrize("log, registers, spills", PTXAS_CASES)
def test_ptxas_report_gives_registers_and_spill_stores_plus_loads(log, registers, spills):
    assert kr.parse_ptxas(log) == (registers, spills)


def test_a_log_without_a_register_count_is_an_error():
    with pytest.raises(ValueError, match="registers"):
        kr.parse_ptxas("ptxas info    : 0 bytes gmem\n")


# (spill bytes, shared bytes, arch, fits)
FIT_CASES = [
    (0, 0, 90, True),
    (8, 0, 90, False),  # any spill fails
    (0, 227 * 1024, 90, True),  # the sm_90 limit itself fits
    (0, 227 * 1024 + 1, 90, False),
    (0, 163 * 1024, 80, True),
    (0, 170 * 1024, 80, False),  # fits an H100's block, not an A100's
]


@pytest.mark.parametrize("spills, shared, arch, expected", FIT_CASES)
def test_a_config_fits_without_spills_and_within_the_shared_memory_limit(
    spills, shared, arch, expected
):
    assert kr.fits(spills, shared, arch) is expected


def test_an_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="sm_70"):
        kr.fits(0, 0, 70)


def test_only_configs_autotuning_may_pick_fail_the_check():
    rows = [
        {"kernel": "a", "fits": False, "pruned": True},  # pruned: never run
        {"kernel": "b", "fits": True, "pruned": False},
        {"kernel": "c", "fits": False, "pruned": False},
    ]
    assert [r["kernel"] for r in kr.failures(rows)] == ["c"]


def test_every_autotuned_kernel_of_hclib_kernels_is_checked():
    """Each ``triton.autotune`` wrapper in the kernel files appears in the plan, with all its
    configs: a new kernel cannot escape the check."""
    import triton

    from hclib.kernels import hyper_pre, manifold_pre, post_res, sinkhorn

    planned = {(L.module, L.fn) for n in (2, 4) for L in kr.launches(n, 256, "bf16", 1024)}
    tuned = [
        (m.__name__, x.fn.__name__ if hasattr(x.fn, "__name__") else x.fn.fn.__name__)
        for m in (hyper_pre, manifold_pre, post_res, sinkhorn)
        for x in vars(m).values()
        if isinstance(x, triton.runtime.Autotuner)
    ]
    assert tuned, "no autotuned kernel found"
    assert set(tuned) <= planned
    kernels = {fn for _, fn in planned}
    assert {"_manifold_pre_bwd_state", "_readout_bwd", "_post_res_bwd"} <= kernels
    assert any(fn.startswith("_sinkhorn") for fn in kernels)


def test_one_kernel_compiles_for_sm_90_and_is_reported(tmp_path):
    """A real compile with Triton's bundled ptxas: the script runs, writes its two files with
    the agreed columns and finds the kernel fitting."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, str(SCRIPT), "--arch", "90", "--n", "2", "--d", "256"]
    cmd += ["--dtype", "fp32", "--kernels", "post_res_fwd[HC]", "--jobs", "1", "--no-cache"]
    cmd += ["--out", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "kernel_resources.csv").read_text().splitlines()
    assert lines[0] == ",".join(kr.COLUMNS)
    from hclib.kernels.post_res import _post_res_fwd_tuned

    assert len(lines) == 1 + len(_post_res_fwd_tuned.configs)  # one row per config
    for line in lines[1:]:
        row = dict(zip(kr.COLUMNS, line.split(","), strict=True))
        assert row["arch"] == "90" and row["kernel"] == "post_res_fwd[HC]"
        assert row["fits"] == "True" and row["spill_bytes"] == "0"
        assert 0 < int(row["registers"]) <= 255
    assert "post_res_fwd[HC]" in (tmp_path / "kernel_resources.md").read_text()
