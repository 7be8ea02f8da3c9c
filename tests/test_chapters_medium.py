"""benchmarks/chapters_medium.py: the medium size of chapters 8 and 9 decides more than the
default, writes what the chapters load, stops cleanly and continues where it stopped (the flow
checked at the smoke size)."""

import json
import subprocess
from pathlib import Path

from hclib.experiments import experiment_config, judge_claims, load_results
from hclib.toy import SWEEP_SIZES, load_toy_sweep, sweep_configs
from scripts import run_script

ROOT = Path(__file__).resolve().parents[1]


def test_medium_size_decides_more_than_the_default_with_more_seeds_steps_and_tokens():
    small, medium = SWEEP_SIZES["small"], SWEEP_SIZES["medium"]
    assert len(medium.seeds) > len(small.seeds) and medium.steps > small.steps
    assert medium.depth >= small.depth and medium.workers == 2  # the 2 cores of the machine
    gpt, default = experiment_config("medium"), experiment_config("small")
    assert len(gpt.seeds) > len(default.seeds) and gpt.tokens >= 20 * default.tokens
    assert set(gpt.connections) == set(default.connections) and gpt.d_model > default.d_model


def test_dry_run_prints_both_chapters_settings_and_writes_nothing(tmp_path):
    done = run_script("chapters_medium", "--dry-run", "--out", str(tmp_path / "never"))
    assert "chapter 8 (medium): 14 configurations x 10 seeds = 140 runs" in done.stdout
    assert "chapter 9 (medium): GPT d=128" in done.stdout
    assert not (tmp_path / "never").exists()


def test_smoke_run_writes_what_chapters_8_and_9_load_and_continues_after_a_stop(tmp_path):
    out = tmp_path / "medium"
    stop_at_once = ["--smoke", "--chapter", "9", "--max-minutes", "0", "--out", str(out)]
    stopped = run_script("chapters_medium", *stop_at_once, status=3)
    assert "run the same command to continue" in stopped.stdout
    assert not (out / "09_small_gpt" / "settings.json").exists()
    run_script("chapters_medium", "--smoke", "--out", str(out))  # both; chapter 9 continues
    settings, rows = load_toy_sweep(out / "08_toy_models.json")
    assert settings["size"] == "smoke" and len(rows) == len(sweep_configs()) * 3
    assert not (out / ".08_toy_models-runs").exists()  # removed once the sweep is whole
    settings, records = load_results(out / "09_small_gpt")
    config = experiment_config("smoke")
    assert settings["config"]["size"] == "smoke"
    assert len(records) == len(config.connections) * len(config.seeds)
    assert all(r["trainer"].startswith("lightning") for r in records)
    assert not (out / "09_small_gpt" / "checkpoints").exists()
    assert judge_claims(records)  # the chapter's table can be made from them
    written = json.loads((out / "09_small_gpt" / "settings.json").read_text())
    assert written["command"] == "benchmarks/chapters_medium.py --chapter 9 --smoke"


def test_git_keeps_the_results_files_the_chapters_load():
    """A results folder is committed whole: no ignore rule may hide its runs (a rule 'runs/'
    once hid every run of chapter 9's results)."""
    paths = [
        "results/2026-01-01-cpu-medium/08_toy_models.json",
        "results/2026-01-01-cpu-medium/09_small_gpt/settings.json",
        "results/2026-01-01-cpu-medium/09_small_gpt/runs/hc-seed0.json",
        "results/2026-01-01-nvidia-h100/10_moe_llm_with_lightning/hc/seed0/metrics.csv",
    ]
    done = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True
    )
    assert done.stdout == "", f"ignored by .gitignore: {done.stdout}"
