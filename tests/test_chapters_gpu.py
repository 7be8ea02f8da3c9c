"""benchmarks/chapters_gpu.py: the gpu size of chapters 8-10 fits its time, writes what the
chapters load, and stops cleanly at its budget (the flow checked at the smoke size, on the CPU)."""

import csv
import json

import pytest
import yaml

from hclib.experiments import experiment_config, judge_claims, load_results, newest_results
from hclib.toy import SWEEP_SIZES, load_toy_sweep, sweep_configs
from scripts import load_script, run_script

cg = load_script("chapters_gpu")


# --------------------------------------------------------------------------- the gpu size


def test_gpu_size_fits_three_minutes_by_the_scripts_own_cost_model():
    cost = cg.CostModel()
    items = cg.plan("gpu", cost)
    total = cg.estimate(items)
    assert total["total"] <= cost.target_s == 180.0, cg.plan_table(items, cost)
    assert total["cpu"] > 0 and total["gpu"] > 0  # both lanes are counted
    # every GPU run's arithmetic is counted from the model (FLOPs per token x tokens)
    assert all(i.flops_per_run > 1e12 for i in items if i.lane == "gpu" and i.runs)


def test_gpu_size_decides_more_than_the_default_size_every_connection_three_seeds():
    toy = SWEEP_SIZES["gpu"]
    assert len(toy.seeds) > 3 and toy.depth * toy.steps * toy.batch_size > 16 * 120 * 128
    gpt, small = cg.gpt_config("gpu"), experiment_config("small")
    assert len(gpt.seeds) >= 3 and set(gpt.connections) == set(small.connections)
    assert gpt.tokens >= 50 * small.tokens and gpt.d_model > small.d_model
    fields = cg._moe_fields(cg.moe_recipe(), "gpu")
    assert len(cg.MOE_SEEDS["gpu"]) >= 3
    assert fields["max_steps"] * fields["batch_size"] * fields["block_size"] >= 10 * 120 * 512
    assert fields["accelerator"] == "gpu" and fields["precision"] == "bf16-mixed"


def test_dry_run_prints_the_plan_and_its_assumptions_and_runs_nothing(tmp_path):
    done = run_script("chapters_gpu", "--dry-run", "--out", str(tmp_path / "never"))
    assert "| 8: toy sweep: 14 configurations x 6 seeds" in done.stdout
    assert "Estimated: CPU lane" in done.stdout and "20% of 989 TFLOP/s" in done.stdout
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- the smoke flow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run into results/<date>-cpu/ of a temporary root."""
    root = tmp_path_factory.mktemp("results")
    out = root / "2026-12-05-cpu"
    done = run_script("chapters_gpu", "--smoke", "--out", str(out))
    return root, out, done


def test_smoke_run_writes_chapter_8s_sweep_as_its_loader_reads_it(smoke):
    root, out, _ = smoke
    settings, rows = load_toy_sweep(out / cg.TOY_NAME)
    assert settings["size"] == "smoke"
    for key in ("date", "dim", "depth", "steps", "batch_size", "seeds", "machine", "seconds"):
        assert key in settings, key  # what chapter 8's full-size section prints
    names = list(sweep_configs())
    assert [(r["name"], r["seed"]) for r in rows] == [
        (name, seed) for seed in settings["seeds"] for name in names
    ]
    assert all(len(r["cos_median"]) == settings["depth"] - 1 for r in rows)


def test_smoke_run_writes_chapter_9s_results_folder_as_its_loader_reads_it(smoke):
    root, out, _ = smoke
    folder = newest_results(root, cg.GPT_NAME, size="smoke")
    assert folder == out / cg.GPT_NAME
    settings, records = load_results(folder)
    config = cg.gpt_config("smoke")
    assert settings["runs_finished"] == settings["runs_planned"] == len(records)
    assert {(r["connection"], r["seed"]) for r in records} == {
        (c, s) for c in config.connections for s in config.seeds
    }
    assert judge_claims(records, setting="smoke")  # the reproduction table's rows
    assert not (folder / "checkpoints").exists()


def test_smoke_run_writes_chapter_10s_logs_as_its_loader_reads_them(smoke):
    root, out, _ = smoke
    (runs_json,) = sorted(root.glob(f"*/{cg.MOE_NAME}/runs.json"))  # chapter 10's glob
    description = json.loads(runs_json.read_text())
    assert description["size"] == "smoke" and description["recipe"] == "configs/moe-gpu.yaml"
    assert description["connections"] == list(cg.MOE_CONNECTIONS)
    assert description["seeds"] == list(cg.MOE_SEEDS["smoke"])
    for connection in description["connections"]:
        for seed in description["seeds"]:
            folder = runs_json.parent / connection / f"seed{seed}"
            with (folder / "metrics.csv").open(newline="") as f:
                log = list(csv.DictReader(f))
            assert any(row["val/loss"] for row in log)
            assert any(key.startswith("moe/load/") for key in log[0])
            config = yaml.safe_load((folder / "config.yaml").read_text())
            assert config["model"]["connection"] == connection and config["seed_everything"] == seed
            for section, key in (("data", "batch_size"), ("data", "block_size"),
                                 ("trainer", "accumulate_grad_batches"), ("trainer", "max_steps"),
                                 ("model", "moe_layers"), ("model", "n_experts")):  # fmt: skip
                assert key in config[section]
    assert not (out / f".{cg.MOE_NAME}-logs").exists()


def test_smoke_run_reports_every_chapter_with_its_estimate_and_time(smoke):
    _, out, done = smoke
    with (out / "chapters_gpu.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["chapter"] for r in rows] == ["8", "9", "10"]
    assert all(r["status"] == "ok" and r["runs_kept"] == r["runs_planned"] for r in rows)
    assert "## What ran" in (out / "chapters_gpu.md").read_text()


def test_a_spent_budget_stops_cleanly_keeping_only_complete_seeds(tmp_path):
    done = run_script("chapters_gpu", "--smoke", "--out", str(tmp_path), "--budget-s", "8")
    with (tmp_path / "chapters_gpu.csv").open(newline="") as f:
        rows = {r["chapter"]: r for r in csv.DictReader(f)}
    assert any(r["status"].startswith("stopped: budget") for r in rows.values()), done.stdout
    report = (tmp_path / "chapters_gpu.md").read_text()
    assert "stopped by the budget" in report and "Skipped" in report
    if (tmp_path / cg.TOY_NAME).exists():  # whatever was kept is whole seeds
        settings, kept = load_toy_sweep(tmp_path / cg.TOY_NAME)
        assert len(kept) == len(settings["seeds"]) * len(sweep_configs())
    moe = tmp_path / cg.MOE_NAME
    if moe.exists():
        seeds = json.loads((moe / "runs.json").read_text())["seeds"]
        assert sorted(p.name for p in moe.glob("*/seed*")) == sorted(
            f"seed{s}" for s in seeds for _ in cg.MOE_CONNECTIONS
        )
    assert not list(tmp_path.glob("**/checkpoints")) and not list(tmp_path.glob(".*-logs"))
