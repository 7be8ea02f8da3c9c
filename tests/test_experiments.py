"""hclib.experiments and benchmarks/gpt_experiments.py: chapter 9's runs, results and verdicts.

Every run is the ``smoke`` size (d=32, 2 blocks, windows of 16 tokens, 6 steps) on a synthetic
corpus written into tmp_path.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hclib.data import write_corpus
from hclib.experiments import (
    AUTO_CORPORA,
    GPT_CLAIMS,
    LOSS_MARGIN,
    NOT_MEASURED,
    SIZES,
    VARIANTS,
    Claim,
    ExperimentConfig,
    experiment_config,
    judge_claims,
    lambda_contrast,
    load_results,
    markdown_table,
    newest_results,
    pick_corpus,
    run_experiments,
    run_metric,
    saved_activation_bytes,
    summary_rows,
    train_gpt,
    verdict_records,
    write_results,
)
from hclib.models import GPT
from hclib.optim import param_groups
from hclib.stats import VERDICTS
from hclib.training import TrainWindows, WarmupCosine
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpt_experiments.py"
VOCAB = 64
SMOKE = experiment_config("smoke").replace(corpus="markov")


def markov_tokens(count: int, seed: int) -> np.ndarray:
    """A learnable stream: each token is ``3 * previous + {0 or 1}`` modulo VOCAB."""
    rng = np.random.default_rng(seed)
    steps = rng.integers(0, 2, size=count)
    out = np.zeros(count, dtype=np.int64)
    for i in range(1, count):
        out[i] = (3 * out[i - 1] + steps[i]) % VOCAB
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is several times faster, as in the chapter."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    source = {"kind": "synthetic", "rule": "t[i] = 3 t[i-1] + {0, 1} mod 64"}
    write_corpus(root, "markov", markov_tokens(5_000, 0), markov_tokens(1_000, 1), VOCAB, source)
    return root


@pytest.fixture(scope="module")
def corpus(corpus_root):
    return pick_corpus("markov", corpus_root)


@pytest.fixture(scope="module")
def runs(corpus):
    """Every smoke run: 5 connections x 2 seeds, with their models."""
    return run_experiments(SMOKE, corpus, keep_models=True)


# --------------------------------------------------------------------------- sizes


def test_full_size_is_at_least_50m_parameters_and_200m_tokens_per_run():
    full = experiment_config("full")
    with torch.device("meta"):  # no memory, no init cost
        model = GPT(full.model_config("residual", 4096))
    assert model.num_params() >= 50_000_000
    assert full.tokens >= 200_000_000
    assert {"residual", "mhc"} <= set(full.connections) and len(full.seeds) >= 2


def test_every_connection_of_a_size_has_the_same_depth_width_and_tokens():
    for size, config in SIZES.items():
        cfgs = [config.model_config(name, 256) for name in config.connections]
        shapes = {(c.d_model, c.n_layer, c.n_head, c.block_size) for c in cfgs}
        assert len(shapes) == 1, size


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"connections": ("hc", "dense")}, "connections must be names of VARIANTS"),
        ({"warmup_steps": 6}, "warmup_steps=6 must be below steps=6"),
        ({"seeds": ()}, "at least one seed"),
        ({"n_head": 3}, "d_model=32 is not divisible by n_head=3"),
        ({"steps": 0}, "steps"),
    ],
)
def test_config_errors_say_what_was_expected_and_given(changes, message):
    with pytest.raises(ValueError, match=message):
        SMOKE.replace(**changes)


def test_unknown_size_and_run_name_are_errors():
    with pytest.raises(ValueError, match="size must be one of"):
        experiment_config("huge")
    with pytest.raises(ValueError, match="name must be one of"):
        SMOKE.model_config("dense", 64)


def test_config_round_trips_through_json():
    for config in SIZES.values():
        again = ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict())))
        assert again == config
    with pytest.raises(ValueError, match="unknown ExperimentConfig keys"):
        ExperimentConfig.from_dict({**SMOKE.to_dict(), "colour": "blue"})


def test_hc_n1_variant_is_hc_with_one_stream():
    cfg = SMOKE.model_config("hc-n1", 64)
    assert (cfg.connection, cfg.n) == ("hc", 1)
    assert set(VARIANTS) == {"residual", "hc", "fc", "mhc", "hc-n1"}


def test_auto_corpus_prefers_the_largest_built_one(tmp_path):
    source = {"kind": "synthetic"}
    tokens = markov_tokens(200, 0)
    write_corpus(tmp_path, "shakespeare-bpe", tokens, tokens, VOCAB, source)
    assert pick_corpus("auto", tmp_path).name == "shakespeare-bpe"
    write_corpus(tmp_path, "tinystories-bpe", tokens, tokens, VOCAB, source)
    assert pick_corpus("auto", tmp_path).name == "tinystories-bpe"
    assert AUTO_CORPORA[0] == "fineweb-edu-bpe"


# --------------------------------------------------------------------------- one run


def test_train_gpt_is_the_loop_written_out(corpus):
    """The loop of the docstring, by hand, gives the same losses and weights bit for bit as the
    Lightning run (which clips the optimizer's parameters, in the optimizer's order)."""
    config = SMOKE
    torch.manual_seed(1)
    model = GPT(config.model_config("hc", corpus.vocab_size))
    groups = param_groups(model, config.weight_decay)
    for group in groups:
        group.pop("names")
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    train = TrainWindows(corpus.train, config.block_size, config.batch_size, seed=1)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses = []
    for step in range(config.steps):
        x, y, _ = train.batch(step)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    record, trained = train_gpt(config, "hc", 1, corpus)
    assert record["train_loss"] == losses
    for p, q in zip(model.parameters(), trained.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_same_seed_gives_every_connection_the_same_branch_weights_and_batches(corpus):
    models = {}
    for name in ("residual", "hc", "fc", "mhc"):
        torch.manual_seed(3)
        models[name] = GPT(SMOKE.model_config(name, corpus.vocab_size))
    branches = {
        name: [layer.branch.state_dict() for layer in model.layers]
        for name, model in models.items()
    }
    for name in ("hc", "fc", "mhc"):
        for a, b in zip(branches[name], branches["residual"], strict=True):
            for key in a:
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    x = torch.randint(0, VOCAB, (2, 8))
    torch.testing.assert_close(models["fc"](x)[0], models["residual"](x)[0])  # FC init = Pre-Norm


def test_record_holds_curves_probes_and_costs(runs):
    records, models = runs
    assert len(records) == len(SMOKE.connections) * len(SMOKE.seeds) == len(models)
    L = 2 * SMOKE.n_layer
    for r in records:
        assert len(r["train_loss"]) == len(r["grad_norm"]) == SMOKE.steps
        assert r["val_step"] == [3, 6] and len(r["val_loss"]) == 2
        assert r["probe_step"] == [0, 3, 6]
        for key in ("gain_forward", "gain_backward", "composite_forward", "composite_backward"):
            assert np.array(r[key]).shape == (3, L), key
        assert np.array(r["cos_median"]).shape == (3, L - 1)
        assert r["tokens_per_s"] > 0 and r["activation_bytes_per_token"] > 0
        assert r["peak_memory_mib"] is None  # CPU
        assert r["tokens"] == SMOKE.tokens
        json.dumps(r)  # plain JSON types
    at_init = [r for r in records if r["connection"] in ("residual", "hc", "fc")]
    for r in at_init:  # residual, HC and FC start with identity mixing: every gain is 1
        np.testing.assert_allclose(r["composite_forward"][0], 1.0, atol=1e-6)


def test_pre_norm_run_has_an_all_ones_connection_matrix_and_zero_lambda(runs):
    records, _ = runs
    r = next(r for r in records if r["connection"] == "residual")
    C = torch.tensor(r["final"]["matrix"])
    torch.testing.assert_close(C, torch.ones_like(C).tril(-1))
    assert run_metric(r, "lambda") == 0.0


def test_hc_gains_are_those_of_the_trained_models_mixing_matrices(runs, corpus):
    from hclib.analysis import amax_gain

    records, models = runs
    r = next(r for r in records if r["connection"] == "hc" and r["seed"] == 0)
    model = models[("hc", 0)]
    assert not all(
        math.isclose(g, 1.0, abs_tol=1e-7) for g in r["gain_forward"][-1]
    )  # training moved them
    from hclib.training import ValWindows

    val = ValWindows(corpus.val, SMOKE.block_size, SMOKE.eval_windows)
    idx = torch.stack([val[j][0] for j in range(SMOKE.probe_windows)])
    H, gains = model.state(idx), []
    with torch.no_grad():
        for layer in model.layers:
            res = layer.mappings(H).res.reshape(-1, SMOKE.n, SMOKE.n).mean(0)
            gains.append(amax_gain(res).forward.item())
            H = layer(H)
    np.testing.assert_allclose(r["gain_forward"][-1], gains, rtol=1e-5)


def test_saved_activation_bytes_counts_each_saved_storage_once_and_no_parameters():
    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(8))

        def forward(self, x, targets):
            h = x.float() * self.w  # saves x (an activation) and w (a parameter)
            return None, (h * h).tanh().sum()  # h twice (one storage), tanh's output

    x = torch.ones(2, 4, 8)
    assert saved_activation_bytes(Toy(), x, None) == 3 * x.numel() * 4


def test_resumed_run_equals_an_uninterrupted_one(corpus, tmp_path):
    whole, _ = train_gpt(SMOKE, "mhc", 0, corpus)
    checkpoint = tmp_path / "mhc.ckpt"
    assert train_gpt(SMOKE, "mhc", 0, corpus, checkpoint=checkpoint, stop_at=0.0) is None
    assert checkpoint.exists()
    state = torch.load(checkpoint, weights_only=False)  # Lightning's checkpoint
    assert state["global_step"] == 1  # one step per call at least
    resumed, _ = train_gpt(SMOKE, "mhc", 0, corpus, checkpoint=checkpoint)
    assert not checkpoint.exists()  # deleted at the end
    for key in ("train_loss", "grad_norm", "val_loss", "composite_backward", "probe_step"):
        assert resumed[key] == whole[key], key
    assert resumed["val_step"] == whole["val_step"] == [3, 6]
    assert resumed["activation_bytes_per_token"] == whole["activation_bytes_per_token"] > 0


def test_run_experiments_saves_each_run_and_does_not_train_it_again(corpus, tmp_path):
    config = SMOKE.replace(connections=("residual", "hc"), seeds=(0,))
    records, _ = run_experiments(config, corpus, out=tmp_path)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [
        "hc-seed0.json",
        "residual-seed0.json",
    ]
    started = time.perf_counter()
    again, models = run_experiments(config, corpus, out=tmp_path, keep_models=True)
    assert time.perf_counter() - started < 1.0 and models == {}  # loaded, not trained
    assert again == json.loads(json.dumps(records))


def test_run_experiments_stops_at_the_deadline_and_continues_a_checkpointed_run(corpus, tmp_path):
    config = SMOKE.replace(connections=("residual", "fc"), seeds=(0,))
    assert run_experiments(config, corpus, out=tmp_path, stop_at=0.0) == ([], {})
    checkpoint = tmp_path / "checkpoints" / "residual-seed0.ckpt"
    assert train_gpt(config, "residual", 0, corpus, checkpoint=checkpoint, stop_at=0.0) is None
    done, _ = run_experiments(config, corpus, out=tmp_path)
    whole, _ = run_experiments(config, corpus)
    assert [r["train_loss"] for r in done] == [r["train_loss"] for r in whole]
    assert not checkpoint.exists()


# --------------------------------------------------------------------------- results


def test_results_folder_round_trips_and_the_newest_full_one_is_found(runs, tmp_path):
    records, _ = runs
    full = SMOKE.replace(size="full")
    write_results(tmp_path / "2026-01-01-gpu-a" / "09", full, records, corpus="markov")
    write_results(tmp_path / "2026-02-01-gpu-b" / "09", full, records[:4], corpus="markov")
    write_results(tmp_path / "2026-03-01-cpu" / "09", SMOKE, records, corpus="markov")
    found = newest_results(tmp_path, "09", size="full")
    assert found == tmp_path / "2026-02-01-gpu-b" / "09"
    settings, loaded = load_results(found)
    assert settings["corpus"] == "markov" and ExperimentConfig.from_dict(settings["config"]) == full
    assert loaded == json.loads(json.dumps(records[:4]))
    assert (found / "summary.csv").read_text().count("\n") == 5  # header + 4 runs
    assert (found / "verdicts.md").read_text().startswith("| claim | paper and figure |")
    assert newest_results(tmp_path, "09", size="small") is None
    with pytest.raises(FileNotFoundError, match="not a results folder"):
        load_results(tmp_path)


def test_summary_rows_give_final_losses_and_costs(runs):
    records, _ = runs
    rows = summary_rows(records)
    assert [r["final_val_loss"] for r in rows] == [r["val_loss"][-1] for r in records]
    assert {"tokens_per_s", "activation_bytes_per_token", "peak_memory_mib"} <= set(rows[0])


# --------------------------------------------------------------------------- claims

LAMBDA_CASES = [  # (name, matrix builder, expected sign of the contrast)
    ("pre-norm: all ones", lambda L: torch.ones(L + 2, L + 2).tril(-1), 0),
    ("lambda: adjacent and early columns strong", "lambda", 1),
    ("post-norm: adjacent only", lambda L: torch.diag(torch.ones(L + 1), -1), -1),
]


def _lambda_matrix(L: int) -> torch.Tensor:
    C = 0.2 * torch.ones(L + 2, L + 2).tril(-1)
    C[:, :2] = C[:, :2] * 5  # the embedding and the first layer feed everyone
    C += torch.diag(torch.ones(L + 1), -1)  # strong adjacent weights
    return C.tril(-1)


@pytest.mark.parametrize("name, build, sign", LAMBDA_CASES, ids=[c[0] for c in LAMBDA_CASES])
def test_lambda_contrast_is_zero_for_pre_norm_and_positive_only_for_a_lambda(name, build, sign):
    C = _lambda_matrix(8) if build == "lambda" else build(8)
    value = lambda_contrast(C)
    assert (value > 1e-9) - (value < -1e-9) == sign, value


def test_lambda_contrast_reads_fc_block_matrices_and_rejects_small_ones():
    blocks = torch.ones(10, 10).tril(-1)[:, :, None, None] * torch.eye(2) / 2 * 2
    assert lambda_contrast(blocks) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 4 layers"):
        lambda_contrast(torch.ones(4, 4))


def _fake(connection: str, seed: int, loss: float) -> dict:
    return {"connection": connection, "label": connection.upper(), "seed": seed,
            "val_loss": [loss]}  # fmt: skip


VERDICT_CASES = [  # (losses of a by seed, losses of b by seed, claim kind, verdict)
    ([1.0, 1.1, 1.2], [1.5, 1.6, 1.7], "lower", VERDICTS[0]),
    ([1.5, 1.6, 1.7], [1.0, 1.1, 1.2], "lower", VERDICTS[1]),
    ([1.0, 1.6, 1.2], [1.5, 1.1, 1.2], "lower", VERDICTS[2]),
    ([1.0], [1.5], "lower", NOT_MEASURED),
]


@pytest.mark.parametrize("a, b, kind, verdict", VERDICT_CASES)
def test_judge_claims_pairs_seeds_and_gives_the_three_verdicts(a, b, kind, verdict):
    records = [_fake("hc", s, v) for s, v in enumerate(a)]
    records += [_fake("residual", s, v) for s, v in enumerate(b)]
    records.append(_fake("residual", 99, 0.0))  # an unpaired seed is left out
    claim = Claim("HC beats Pre-Norm", "HC Table 1", "val_loss", "hc", "residual", kind)
    (row,) = judge_claims(records, [claim], setting="toy")
    assert row["verdict"] == verdict
    assert list(row) == ["claim", "paper and figure", "our setting", "our number", "verdict"]


def test_no_better_claims_are_judged_against_the_margin_stated_before_the_run():
    no_better = [c for c in GPT_CLAIMS if c.kind in ("not lower", "not higher")]
    assert no_better and all(c.margin == LOSS_MARGIN > 0 for c in no_better)
    # HC n=1 leans below Pre-Norm but within the margin in every seed: shown "no better"
    records = [_fake("hc-n1", s, 2.0 - 0.002 * (s + 1)) for s in range(3)]
    records += [_fake("residual", s, 2.0) for s in range(3)]
    (row,) = judge_claims(records, [c for c in no_better if c.a == "hc-n1"], setting="toy")
    assert row["verdict"] == VERDICTS[0]
    assert row["our setting"].endswith(f"equivalence margin {LOSS_MARGIN:g}")


def test_verdict_records_keep_every_measured_row_with_its_seeds():
    records = [_fake("hc", s, 1.0 + s / 10) for s in range(3)]
    records += [_fake("residual", s, 1.2) for s in range(3)] + [_fake("fc", 0, 1.0)]
    claims = [c for c in GPT_CLAIMS if c.metric == "val_loss" and c.b == "residual"]
    rows = judge_claims(records, claims, setting="toy")
    kept = verdict_records(rows, "09_small_gpt")
    assert [r.claim for r in kept] == [r["claim"] for r in rows if r["verdict"] != NOT_MEASURED]
    assert {r.seeds for r in kept} == {3} and kept[0].number == rows[0]["our number"]


def test_the_chapters_claims_all_get_a_verdict_from_the_smoke_runs(runs):
    records, _ = runs
    rows = judge_claims(records, setting="smoke")
    assert len(rows) == len(GPT_CLAIMS)
    assert all(r["verdict"] in (*VERDICTS, NOT_MEASURED) for r in rows)
    table = markdown_table(rows)
    assert table.count("\n") == len(rows) + 1


# --------------------------------------------------------------------------- the script


@pytest.mark.slow
def test_script_smoke_run_writes_the_results_folder(corpus_root, tmp_path):
    out = tmp_path / "09_small_gpt"
    args = ["--smoke", "--corpus", "markov", "--data-root", str(corpus_root), "--out", str(out)]
    args += ["--connections", "residual,mhc", "--no-progress"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=ROOT,
        env={**os.environ, "TQDM_DISABLE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    settings, records = load_results(out)
    assert settings["config"]["size"] == "smoke" and settings["corpus"] == "markov"
    assert settings["runs_finished"] == settings["runs_planned"] == 4
    assert [r["connection"] for r in records] == ["residual", "mhc"] * 2
    assert "| claim |" in done.stdout


def test_script_refuses_the_full_size_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="found no CUDA device"):
        load_script("gpt_experiments").main([])
    with pytest.raises(SystemExit):
        load_script("gpt_experiments").parse_args(["--connections", "residual,dense"])


def test_run_callbacks_refuse_bad_periods():
    from hclib.training import RunRecord, StopAndResume

    with pytest.raises(ValueError, match="probe_every must be an int >= 1"):
        RunRecord(probe_every=0)
    with pytest.raises(ValueError, match="probe_windows must be an int >= 1"):
        RunRecord(probe_every=5, probe_windows=True)
    with pytest.raises(ValueError, match="every must be an int >= 0"):
        StopAndResume("x.ckpt", every=-1)


def test_eval_every_must_divide_the_steps_so_the_last_step_is_validated():
    with pytest.raises(ValueError, match="eval_every=4 must divide steps=6"):
        SMOKE.replace(eval_every=4)
