"""benchmarks/connections.py: the CPU smoke run writes its files, the work is the same for every
hclib provider, and the targets are read off the rows (met, missed, by how much)."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import hclib
from hclib.book import device_slug
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "connections.py"


bench = load_script("connections")


@pytest.mark.slow
def test_smoke_run_writes_csv_markdown_and_plot_and_every_provider_runs_or_says_why(tmp_path):
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path), "--no-progress"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "connections.csv").open() as f:
        rows = list(csv.DictReader(f))
    connection_rows = len(bench.CONNECTIONS) * (len(bench.PROVIDERS) - 1) * len(bench.MODES)
    assert len(rows) == connection_rows + len(bench.MODES)  # plus the residual add
    assert {r["smoke"] for r in rows} == {"1"}
    for row in rows:
        assert row["status"] == "ok" or row["status"].startswith("n/a: "), row
        if row["provider"] in ("residual", "torch"):
            assert row["status"] == "ok" and float(row["median_ms"]) > 0
        if row["provider"] == "triton" and row["status"] == "ok":  # Triton's interpreter
            assert float(row["max_rel_err"]) < 2e-2
    report = (tmp_path / "connections.md").read_text()
    assert "--smoke" in report and "## Targets" in report and "**The floor**" in report
    assert (tmp_path / "connections.png").read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_without_cuda_the_full_run_refuses_and_points_to_smoke():
    with pytest.raises(SystemExit, match="no CUDA device.*--smoke"):
        bench.settings_from(bench.parse_args([]))


def test_size_lists_accept_4k_notation_and_reject_the_rest():
    assert bench._ints("4k,16k,32k") == [4096, 16_384, 32_768]
    assert bench._ints("1024, 2048") == [1024, 2048]
    with pytest.raises(Exception, match="expected integers such as 4096 or 4k, got '4m'"):
        bench._ints("4m")
    assert bench._choices(bench.PROVIDERS)("triton,torch") == ["torch", "triton"]
    with pytest.raises(Exception, match="subset of residual, torch"):
        bench._choices(bench.PROVIDERS)("cuda")


def test_default_output_folder_is_results_date_device():
    args = bench.parse_args(["--smoke", "--connections", "fc"])
    s = bench.settings_from(args)
    assert s.connections == ["fc"] and s.tokens == [16] and s.providers == list(bench.PROVIDERS)
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


@pytest.mark.parametrize("connection", ["residual", "hc", "fc", "mhc"])
def test_the_work_is_h0_from_pre_and_h_new_from_post_res_with_a_free_branch(connection):
    case = bench.Case(connection, 2, 5, 8)
    bench.make_tensors(case, torch.device("cpu"), torch.float64)
    work = bench.build_work(case, "torch")
    h0, out = work.forward()
    H, y = case.tensors["H"], case.tensors["y"]
    if connection == "residual":
        assert h0 is H
        torch.testing.assert_close(out, H + y)
        return
    pre, post, res = work.module.mappings(H)
    if connection == "fc":  # pre mixes fractions, post scales each fraction of y
        torch.testing.assert_close(h0, hclib.merge_fractions(pre @ H))
        y_rows = hclib.split_fractions(y, 2)
    else:  # pre reads the streams out, post writes y into each of them
        torch.testing.assert_close(h0, (pre.unsqueeze(-2) @ H).squeeze(-2))
        y_rows = y.unsqueeze(-2)
    torch.testing.assert_close(out, res @ H + post.unsqueeze(-1) * y_rows)
    assert post.std() > 0  # the parameters were moved off their initial values


def test_every_hclib_provider_gets_the_same_parameters():
    case = bench.Case("mhc", 2, 3, 8)
    bench.make_tensors(case, torch.device("cpu"), torch.float32)
    eager, compiled = bench.build_work(case, "torch"), bench.build_work(case, "compile")
    assert len(eager.inputs) == len(compiled.inputs) > 2
    for p, q in zip(eager.inputs[2:], compiled.inputs[2:], strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_backward_mode_differentiates_one_graph_again_and_again():
    case = bench.Case("hc", 2, 4, 8)
    bench.make_tensors(case, torch.device("cpu"), torch.float32)
    work = bench.build_work(case, "torch")
    backward = work.runner("backward")
    first, second = backward(), backward()
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    both = work.runner("forward+backward")()
    for a, b in zip(first, both, strict=True):
        torch.testing.assert_close(a, b)


def test_unavailable_providers_say_why():
    case = bench.Case("hc", 2, 4, 8)
    bench.make_tensors(case, torch.device("cpu"), torch.bfloat16)
    with pytest.raises(bench.NotAvailableError, match="implements mHC only"):
        bench.build_work(case, "liger")


def _rows(times: dict, pct: dict, case=None):
    """Rows at the target case: times[(connection, provider)] in ms, pct[connection] of peak."""
    case = case or bench.TARGET_CASE
    rows = []
    for (connection, provider), ms in times.items():
        row = dict.fromkeys(bench.FIELDS, "")
        row.update(
            connection=connection,
            provider=provider,
            rate=1 if connection == "residual" else case["rate"],
            rate_name={"hc": "n", "mhc": "n", "fc": "m"}.get(connection, ""),
            tokens=case["tokens"],
            d=case["d"],
            mode=case["mode"],
            status="ok" if ms is not None else "n/a: not installed",
            median_ms="" if ms is None else str(ms),
            achieved_gbps="1000",
            pct_of_peak=str(pct.get(connection, "")) if provider == "triton" else "",
            x_residual="" if ms is None else str(ms / times[("residual", "residual")]),
        )
        rows.append(row)
    return rows


TIMES = {
    ("residual", "residual"): 1.0,
    ("mhc", "torch"): 10.0,
    ("mhc", "compile"): 5.0,
    ("mhc", "triton"): 2.5,
    ("mhc", "liger"): 3.0,
    ("mhc", "lucidrains"): 20.0,
    ("hc", "torch"): 6.0,
    ("hc", "compile"): 4.0,
    ("hc", "triton"): 2.2,
    ("hc", "lucidrains"): 2.0,
    ("fc", "triton"): 2.5,
}


def test_targets_say_met_or_missed_and_by_how_much():
    targets = {t.name: t for t in bench.evaluate_targets(_rows(TIMES, {"mhc": 75, "hc": 63}))}
    expected = {
        "mHC Triton >= 3x faster than eager": ("met", "4.00x (>= 3x): 33% above the target"),
        "mHC Triton >= 1.5x faster than torch.compile": ("met", "2.00x (>= 1.5x): 33% above"),
        "mHC Triton faster than liger": ("met", "1.20x (>= 1x): 20% above"),
        "mHC Triton faster than lucidrains": ("met", "8.00x"),
        "mHC Triton >= 70% of peak bandwidth on the floor": ("met", "75.00% (>= 70%): 7% above"),
        "HC Triton >= 3x faster than eager": ("missed", "2.73x (>= 3x): 9% short of the target"),
        "HC Triton >= 1.5x faster than torch.compile": ("met", "1.82x"),
        "HC Triton faster than lucidrains": ("missed", "0.91x (>= 1x): 9% short"),
        "HC Triton >= 70% of peak bandwidth on the floor": ("missed", "63.00% (>= 70%): 10% short"),
        "FC Triton within 3x of the residual add": ("met", "2.50x (<= 3x): 17% under the bound"),
    }
    assert set(targets) == set(expected)
    for name, (status, detail) in expected.items():
        assert targets[name].status == status, (name, targets[name])
        assert detail in targets[name].detail, (name, targets[name].detail)


def test_targets_are_not_measured_when_a_provider_did_not_run_or_the_case_is_absent():
    times = {**TIMES, ("mhc", "liger"): None}
    targets = {t.name: t for t in bench.evaluate_targets(_rows(times, {"mhc": 75}))}
    assert targets["mHC Triton faster than liger"].status == "not measured"
    assert targets["HC Triton >= 70% of peak bandwidth on the floor"].status == "not measured"
    other = {**bench.TARGET_CASE, "tokens": 4096}
    assert {t.status for t in bench.evaluate_targets(_rows(TIMES, {}, other))} == {"not measured"}


def test_report_and_plot_from_gpu_like_rows(tmp_path):
    rows = _rows(TIMES, {"mhc": 75, "hc": 63})
    s = bench.settings_from(bench.parse_args(["--smoke", "--out", str(tmp_path)]))
    s.device_name, s.peak_tbs, s.smoke = "NVIDIA H100 80GB HBM3", 3.35, False
    bench.write_csv(rows, tmp_path / "connections.csv")
    bench.write_markdown(rows, s, tmp_path / "connections.md")
    bench.plot(rows, tmp_path / "connections.png")
    report = (tmp_path / "connections.md").read_text()
    assert "3.35 TB/s, the data-sheet figure of the H100 SXM" in report
    assert "- **missed**: HC Triton faster than lucidrains" in report
    assert "| mhc n=4 | 32768 | 4096 | forward+backward | 1.000 |" in report
    assert (tmp_path / "connections.png").stat().st_size > 10_000
