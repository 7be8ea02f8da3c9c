"""The toy task, its training loop and the seesaw measures."""

from pathlib import Path

import pytest
import torch
from torch import nn

import hclib
from hclib.book import book_size, device_slug, provenance, results_dir, scaled
from hclib.models import DeepMLP
from hclib.toy import (
    SWEEP_SIZES,
    SweepSize,
    load_toy_sweep,
    make_toy_data,
    run_toy_sweep,
    save_toy_sweep,
    seesaw_measures,
    sweep_configs,
    train_toy,
)


def test_toy_data_is_deterministic_in_its_seed_and_uses_every_class():
    a, b = make_toy_data(512, 128, seed=3), make_toy_data(512, 128, seed=3)
    torch.testing.assert_close(a.x_train, b.x_train, rtol=0, atol=0)
    assert torch.equal(a.y_val, b.y_val)
    assert a.x_train.shape == (512, 16) and a.y_train.shape == (512,)
    assert a.classes == 8 and len(torch.unique(a.y_train)) == 8
    assert not torch.equal(make_toy_data(512, 128, seed=4).y_train, a.y_train)


def test_training_on_the_toy_task_lowers_the_loss():
    data = make_toy_data(1024, 256)
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=3, connection="hc", n=2)
    history = train_toy(model, data, steps=60, eval_every=30, progress=False)
    assert len(history["loss"]) == 60 and history["val_step"] == [30, 60]
    assert sum(history["loss"][-10:]) < sum(history["loss"][:10])


def test_connection_lr_trains_the_connection_weights_at_their_own_rate():
    data = make_toy_data(512, 128)
    torch.manual_seed(0)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=3, connection="hc", n=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_toy(model, data, steps=5, lr=1e-3, connection_lr=1e-1, eval_every=5, progress=False)
    after = model.state_dict()
    # AdamW moves each entry by about lr per step: 5 steps of 1e-1 versus 5 steps of 1e-3
    static = (after["layers.0.static_alpha"] - before["layers.0.static_alpha"]).abs().max()
    branch = (after["layers.0.branch.1.weight"] - before["layers.0.branch.1.weight"]).abs().max()
    assert static > 0.1 and branch < 0.01
    with pytest.raises(ValueError, match="connection_lr must be > 0"):
        train_toy(model, data, steps=1, connection_lr=0.0, progress=False)


def test_seesaw_measures_have_one_value_per_layer_and_per_adjacent_pair():
    data = make_toy_data(256, 64)
    model = DeepMLP(data.in_features, data.classes, dim=16, depth=6)
    out = seesaw_measures(model, data.x_val, data.y_val)
    assert out["grad_norm"].shape == (6,) and torch.all(out["grad_norm"] > 0)
    for key in ("cos_p05", "cos_median", "cos_p95"):
        assert out[key].shape == (5,)
    assert torch.all(out["cos_p05"] <= out["cos_median"]) and torch.all(
        out["cos_median"] <= out["cos_p95"]
    )
    assert all(p.grad is None for p in model.parameters())


def test_capture_branch_inputs_records_what_each_branch_reads_and_restores_functions():
    def double(x):
        return 2 * x

    layers = [hclib.HyperConnection(4, double, n=2, layer_id=i) for i in range(3)]
    H = torch.randn(5, 2, 4)
    with hclib.analysis.capture_branch_inputs(layers) as inputs:
        out = H
        for layer in layers:
            out = layer(out)
    torch.testing.assert_close(inputs[0], H[:, 0])
    assert all(layer.branch is double for layer in layers)


def test_adjacent_cosine_similarity_is_one_for_parallel_inputs():
    x = torch.randn(3, 4, 8)
    cos = hclib.analysis.adjacent_cosine_similarity([x, 2 * x, -x])
    assert cos.shape == (2, 12)
    torch.testing.assert_close(cos[0], torch.ones(12))
    torch.testing.assert_close(cos[1], -torch.ones(12))
    with pytest.raises(ValueError, match="at least 2"):
        hclib.analysis.adjacent_cosine_similarity([x])


def test_branch_grad_norms_are_nan_for_branches_without_parameters():
    layers = [hclib.Residual(4, nn.Identity()), hclib.Residual(4, nn.Linear(4, 4))]
    sum(layer(torch.randn(2, 4)).sum() for layer in layers).backward()
    norms = hclib.analysis.branch_grad_norms(layers)
    assert torch.isnan(norms[0]) and norms[1] > 0


def test_book_size_knob_defaults_to_small_and_rejects_unknown_sizes(monkeypatch):
    monkeypatch.delenv("HCLIB_BOOK_SIZE", raising=False)
    assert book_size() == "small" and scaled(1, 2) == 1
    monkeypatch.setenv("HCLIB_BOOK_SIZE", "full")
    assert scaled(1, 2) == 2
    monkeypatch.setenv("HCLIB_BOOK_SIZE", "huge")
    with pytest.raises(ValueError, match="HCLIB_BOOK_SIZE must be one of"):
        book_size()


def test_provenance_names_the_versions_the_date_and_the_checkouts_commit():
    import re

    made = provenance()
    assert made["torch"] == torch.__version__ and made["hclib"] == hclib.__version__
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", made["date"])
    in_git = (Path(hclib.__file__).resolve().parents[1] / ".git").exists()
    assert (re.fullmatch(r"[0-9a-f]{40}", made["commit"] or "") is not None) == in_git


def test_medium_size_takes_a_chapters_medium_value_else_the_small_one(monkeypatch):
    monkeypatch.setenv("HCLIB_BOOK_SIZE", "medium")
    assert book_size() == "medium"
    assert scaled(1, 3, medium=2) == 2 and scaled(1, 3) == 1


def test_sweep_sizes_are_checked_and_count_their_runs():
    assert SWEEP_SIZES["small"].runs == 14 * 3 and len(sweep_configs()) == 14
    assert SWEEP_SIZES["medium"].runs == 14 * 10
    medium = SWEEP_SIZES["medium"]
    assert medium.run_kwargs()["eval_every"] == medium.steps == medium.settings()["steps"]
    with pytest.raises(ValueError, match="depth must be >= 1"):
        SweepSize(64, 0, 10, 8, 64, (0,), 1)
    with pytest.raises(ValueError, match="at least one seed"):
        SweepSize(64, 4, 10, 8, 64, (), 1)


def test_an_interrupted_sweep_continues_from_the_runs_it_kept(tmp_path, capsys):
    data = make_toy_data(n_train=256, n_val=64)
    configs = {k: v for k, v in list(sweep_configs().items())[:3]}
    kwargs = dict(dim=8, depth=2, probe=16, steps=3, batch_size=16, eval_every=3)
    whole = run_toy_sweep(configs, data, [0, 1], workers=2, **kwargs)  # one thread per run
    first = run_toy_sweep(configs, data, [0], runs_dir=tmp_path, workers=2, **kwargs)  # stops
    assert len(list(tmp_path.glob("*.json"))) == 3
    (tmp_path / "pre-norm-seed0.json").write_text(
        (tmp_path / "pre-norm-seed0.json").read_text().replace('"val_loss": ', '"val_loss": 1')
    )  # a kept run is read back, not trained again: its (edited) loss comes back
    capsys.readouterr()
    resumed = run_toy_sweep(
        configs, data, [0, 1], runs_dir=tmp_path, workers=2, progress=True, **kwargs
    )
    assert len(list(tmp_path.glob("*.json"))) == 6
    printed = capsys.readouterr().err.splitlines()  # one line per run trained now
    assert len(printed) == 3 and printed[-1].startswith("[6/6] SHC n=1 seed 1: val loss")
    assert resumed[0]["val_loss"] != whole[0]["val_loss"]
    keys = ("name", "seed", "val_loss", "grad_norm", "cos_median")
    assert [[r[k] for k in keys] for r in resumed[1:]] == [[r[k] for k in keys] for r in whole[1:]]
    assert first[0]["val_loss"] == whole[0]["val_loss"]
    with pytest.raises(ValueError, match="use another runs_dir"):
        run_toy_sweep({"Pre-Norm": {"norm": "post"}}, data, [0], runs_dir=tmp_path, **kwargs)


def test_every_connection_has_a_palette_colour():
    from hclib.plotting import PALETTE, color

    assert color("HC x4") == PALETTE["hc"] and color("pre-norm") == PALETTE["pre-norm"]
    assert color("mhc") == PALETTE["mhc"] and color("something") == PALETTE["other"]


SWEEP = {
    "Pre-Norm": {"norm": "pre"},
    "HC n=1": {"connection": "hc", "n": 1},
    "FC m=1": {"connection": "fc", "m": 1},
    "HC n=2": {"connection": "hc", "n": 2, "dynamic": False},
}
SWEEP_SIZE = {"dim": 8, "depth": 3, "probe": 32, "steps": 6, "batch_size": 16, "eval_every": 3}


def _without_times(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def sweep():
    data = make_toy_data(256, 64)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, as in the chapters
    try:
        return data, run_toy_sweep(SWEEP, data, seeds=[0, 1], **SWEEP_SIZE)
    finally:
        torch.set_num_threads(threads)


def test_toy_sweep_has_one_row_per_seed_and_config_with_per_layer_measures(sweep):
    _, rows = sweep
    assert [(r["name"], r["seed"]) for r in rows] == [(n, s) for s in (0, 1) for n in SWEEP]
    for row in rows:
        assert len(row["grad_norm"]) == 3 and len(row["cos_median"]) == 2
        assert 0 < row["val_acc"] <= 1 and row["val_loss"] > 0 and row["seconds"] > 0


def test_toy_sweep_runs_are_paired_so_fc_with_one_fraction_equals_hc_with_one_stream(sweep):
    # FC m=1 is HC n=1 (chapter 5); under the same seed both runs are the same computation
    _, rows = sweep
    by = {(r["name"], r["seed"]): r for r in _without_times(rows)}
    for seed in (0, 1):
        hc, fc = dict(by[("HC n=1", seed)]), dict(by[("FC m=1", seed)])
        assert {**hc, "name": ""} == {**fc, "name": ""}
    assert by[("Pre-Norm", 0)]["val_loss"] != by[("Pre-Norm", 1)]["val_loss"]


def test_toy_sweep_in_worker_processes_gives_the_same_rows(sweep):
    # the workers use one thread, this process may use more: equal up to summation order
    data, rows = sweep
    parallel = run_toy_sweep(SWEEP, data, seeds=[0, 1], workers=2, **SWEEP_SIZE)
    for mine, theirs in zip(_without_times(parallel), _without_times(rows), strict=True):
        assert (mine["name"], mine["seed"]) == (theirs["name"], theirs["seed"])
        for key in ("val_loss", "val_acc", "cos_median", "grad_norm"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6)


def test_toy_sweep_round_trips_through_json_with_its_settings(sweep, tmp_path):
    _, rows = sweep
    path = save_toy_sweep(tmp_path / "new" / "sweep.json", rows, steps=6, device="cpu")
    settings, loaded = load_toy_sweep(path)
    assert settings == {"steps": 6, "device": "cpu"} and loaded == rows
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a toy sweep"):
        load_toy_sweep(tmp_path / "other.json")


def test_toy_sweep_sets_the_seed_itself():
    data = make_toy_data(64, 16)
    with pytest.raises(ValueError, match="sets 'seed' itself"):
        run_toy_sweep(SWEEP, data, seeds=[0], seed=3)
    with pytest.raises(ValueError, match="at least one seed"):
        run_toy_sweep(SWEEP, data, seeds=[])


def test_results_dir_is_results_date_device_slug():
    assert device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"
    assert device_slug("  ") == "device"
    folder = results_dir("NVIDIA H200", root="r", date="2026-11-23")
    assert folder == Path("r/2026-11-23-nvidia-h200")
