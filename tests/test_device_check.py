"""benchmarks/device_check.py: one command, one folder, every GPU result, within a budget.

The ``--smoke`` run is the CI check of the whole flow (CPU, Triton's interpreter, toy sizes);
the other tests check the parts a GPU run relies on without a GPU: a step past the budget is
stopped and what finished is kept, the chapters' hook runs a script when there is one, the
wheels are installed without network, the report reads the parity counts.
"""

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_check.py"


dc = load_script("device_check")


@pytest.mark.slow
def test_smoke_run_writes_one_folder_with_merged_csv_report_plots_and_parity_log(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for name in ("device_check.csv", "device_check.md", "parity.log", "parity.xml"):
        assert (out / name).exists(), name
    for name in ("connections-d4096", "connections-d2048"):
        assert (out / name / "connections.png").exists()
    with (out / "device_check.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = {row["step"] for row in rows}
    assert steps == {"connections-d4096", "connections-d2048", "train_step", "chapters"}
    assert {row["d"] for row in rows if row["step"] == "connections-d4096"} >= {"64"}
    report = (out / "device_check.md").read_text()
    for step in dc.STEP_NAMES:
        assert f"| {step} |" in report
    assert "## Targets" in report and "FC Triton within 3x of the residual add" in report
    assert "hc time <= 1.10x residual" in report
    assert (
        "chapters_gpu.py does not exist" in report or (ROOT / "benchmarks/chapters_gpu.py").exists()
    )
    assert "![connections-d4096](connections-d4096/connections.png)" in report


def test_a_step_past_the_budget_is_stopped_and_the_next_is_not_started(tmp_path):
    sleeper = dc.Step(
        "sleeper", "sleeps", commands=[[sys.executable, "-c", "import time; time.sleep(60)"]]
    )
    start = time.monotonic()
    dc.run_step(sleeper, start + 4.0, tmp_path / "logs" / "sleeper.log", dc.child_env(True))
    assert sleeper.status.startswith("stopped: budget"), sleeper.status
    assert time.monotonic() - start < 30  # stopped, not waited for
    late = dc.Step("late", "never starts", commands=[[sys.executable, "-c", "pass"]])
    dc.run_step(late, time.monotonic() + 1.0, tmp_path / "logs" / "late.log", dc.child_env(True))
    assert late.status == "not reached: budget spent"


def test_a_failing_step_is_reported_with_its_exit_code(tmp_path):
    step = dc.Step("boom", "fails", commands=[[sys.executable, "-c", "raise SystemExit(3)"]])
    dc.run_step(step, time.monotonic() + 60, tmp_path / "logs" / "boom.log", dc.child_env(True))
    assert step.status == "failed (exit 3)"


def test_a_spent_budget_still_writes_the_report_and_keeps_nothing_half_done(tmp_path):
    rc = dc.main(["--smoke", "--budget-s", "1", "--out", str(tmp_path)])
    assert rc == 0
    report = (tmp_path / "device_check.md").read_text()
    # parity, 2 x connections, train_step and the chapters
    assert report.count("| not reached: budget spent |") == 5
    assert "| chapters |" in report and "| wheels |" in report
    assert "not measured" in report


def test_the_chapters_hook_runs_the_script_when_it_exists(tmp_path, monkeypatch):
    script = tmp_path / "chapters_gpu.py"
    script.write_text(
        "import sys, pathlib\n"
        "report = pathlib.Path(sys.argv[sys.argv.index('--report-dir') + 1])\n"
        "report.mkdir(parents=True)\n"
        "(report / 'chapters.csv').write_text('chapter,loss\\n8,3.5\\n')\n"
        "assert '--smoke' in sys.argv and '--budget-s' in sys.argv\n"
    )
    monkeypatch.setattr(dc, "CHAPTERS_SCRIPT", script)
    steps = dc.plan(tmp_path / "out", tmp_path / "wheels", True, ["chapters"])
    chapters = steps[-1]
    assert chapters.name == "chapters" and not chapters.skip
    dc.run_step(chapters, time.monotonic() + 60, tmp_path / "chapters.log", dc.child_env(True))
    assert chapters.status == "ok", (tmp_path / "chapters.log").read_text()
    rows = dc.read_rows(steps)
    assert rows == [{"step": "chapters", "file": "chapters.csv", "chapter": "8", "loss": "3.5"}]
    assert all(step.skip for step in steps[:-1])  # only the chosen step runs


def test_without_the_chapters_script_the_step_is_skipped_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setattr(dc, "CHAPTERS_SCRIPT", dc.BENCHMARKS / "no_such_script.py")
    chapters = dc.plan(tmp_path, tmp_path, False, dc.STEP_NAMES)[-1]
    assert "no_such_script.py does not exist" in chapters.skip


def test_wheels_are_installed_without_network_and_prepared_at_the_installed_versions(
    tmp_path, monkeypatch
):
    (tmp_path / "liger_kernel-0.0.1-py3-none-any.whl").write_text("")
    wheels = dc.plan(tmp_path / "out", tmp_path, False, dc.STEP_NAMES)[0]
    (cmd,) = wheels.commands
    assert cmd[1:5] == ["-m", "pip", "install", "--no-index"]
    assert cmd[-1].endswith("liger_kernel-0.0.1-py3-none-any.whl")
    assert "--smoke installs nothing" in dc.plan(tmp_path, tmp_path, True, dc.STEP_NAMES)[0].skip
    calls = []
    monkeypatch.setattr(dc.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    versions = {"hyper-connections": "0.4.11", "einops": "0.8.2"}

    def version(dist):
        if dist not in versions:
            raise dc.importlib.metadata.PackageNotFoundError(dist)
        return versions[dist]

    monkeypatch.setattr(dc.importlib.metadata, "version", version)
    assert dc.main(["--prepare-wheels", "--wheels", str(tmp_path)]) == 0
    (cmd,) = calls
    assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]
    assert "hyper-connections==0.4.11" in cmd and "einops==0.8.2" in cmd
    assert "liger-kernel" in cmd  # not installed here: the newest


def test_parity_counts_are_read_from_the_junit_file(tmp_path):
    xml = tmp_path / "parity.xml"
    xml.write_text(
        '<testsuites><testsuite tests="10" failures="1" errors="0" skipped="2"></testsuite>'
        "</testsuites>"
    )
    assert dc.parity_counts(xml) == "7 passed, 1 failed, 0 errors, 2 skipped"
    assert "did not finish" in dc.parity_counts(tmp_path / "missing.xml")


def test_unknown_steps_are_refused_by_name():
    with pytest.raises(SystemExit, match="unknown steps \\['parity-x'\\]"):
        dc.main(["--smoke", "--steps", "parity-x"])
