"""The Lightning training stack: schedule, data order, resume, guards, diagnostics, recipes.

Every run here is a tiny GPT (d=32, 2 blocks, windows of 32 tokens) on a synthetic corpus
written into tmp_path, for a handful of steps on the CPU. The 2-process DDP comparison runs
the real command line in subprocesses.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_lightning.cli import LightningCLI

from hclib.data import CorpusMissingError, write_corpus
from hclib.models.gpt import GPT, GPTConfig
from hclib.training import (
    ConnectionDiagnostics,
    CorpusDataModule,
    GPTModule,
    NonFiniteLossGuard,
    TrainWindows,
    ValWindows,
    WarmupCosine,
    flops_per_token,
    peak_flops,
    probe_connections,
)
from hclib.training.cli import TrainCLI, main
from hclib.training.flops import active_params
from scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = [ROOT / "configs" / "fsdp.yaml"]  # added after a recipe, not recipes themselves
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
RECIPES = [p for p in CONFIGS if p not in OVERLAYS]
TINY_RECIPE = ROOT / "configs" / "gpt-tiny.yaml"
VOCAB = 64

CONNECTIONS = [("residual", {}), ("hc", {"n": 2}), ("fc", {"m": 4}), ("mhc", {"n": 2})]
TINY_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "warmup_steps": 2}


# --------------------------------------------------------------------------- the corpus


def markov_tokens(count: int, seed: int) -> np.ndarray:
    """A learnable token stream: each token is ``3 * previous + {0 or 1}`` modulo VOCAB."""
    rng = np.random.default_rng(seed)
    out = np.empty(count, dtype=np.int64)
    out[0] = 0
    steps = rng.integers(0, 2, size=count)
    for i in range(1, count):
        out[i] = (3 * out[i - 1] + steps[i]) % VOCAB
    return out


@pytest.fixture(scope="module")
def corpus_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpora")
    source = {"kind": "synthetic", "rule": "t[i] = 3 t[i-1] + {0, 1} mod 64"}
    write_corpus(root, "markov", markov_tokens(20_000, 0), markov_tokens(2_000, 1), VOCAB, source)
    return root


@pytest.fixture(autouse=True)
def no_pytest_argv(monkeypatch):
    """LightningCLI warns when sys.argv holds arguments besides the ones it is given."""
    monkeypatch.setattr(sys, "argv", ["hclib.train"])


def cli_args(
    root: Path, out: Path, *extra: str, logger: bool = False, recipe: Path = TINY_RECIPE
) -> list[str]:
    """The tiny recipe (or ``recipe``), shrunk, writing into ``out/run``."""
    loggers = (
        json.dumps(
            [
                {
                    "class_path": f"pytorch_lightning.loggers.{kind}",
                    "init_args": {"save_dir": str(out), "name": "run"},
                }
                for kind in ("CSVLogger", "TensorBoardLogger")
            ]
        )
        if logger
        else "false"
    )
    args = [
        "--config", str(recipe),
        "--data.corpus", "markov", "--data.root", str(root),
        "--data.block_size", "32", "--data.batch_size", "8", "--data.val_batches", "2",
        "--model.n_layer", "2", "--model.n_head", "2", "--model.d_model", "32",
        "--model.warmup_steps", "2", "--model.lr", "1e-2",
        "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
        "--trainer.log_every_n_steps", "1", "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(out), "--trainer.logger", loggers,
        "--trainer.callbacks", "[]", "--run_name", "run",
        "--diagnostics.every_n_steps", "0", "--checkpoint.every_n_train_steps", "3",
    ]  # fmt: skip
    return args + list(extra)


def fit(root: Path, out: Path, *extra: str, logger: bool = False) -> LightningCLI:
    return main(["fit", *cli_args(root, out, *extra, logger=logger)])


def weights(cli: LightningCLI) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in cli.model.model.state_dict().items()}


# ------------------------------------------------------------------------ the schedule

SCHEDULE_CASES = [  # (warmup, total, floor, step, multiplier)
    (4, 12, 0.1, 0, 0.25),
    (4, 12, 0.1, 3, 1.0),
    (4, 12, 0.1, 4, 1.0),
    (4, 12, 0.1, 8, 0.1 + 0.9 * 0.5),
    (4, 12, 0.1, 12, 0.1),
    (4, 12, 0.1, 100, 0.1),
    (0, 10, 0.0, 0, 1.0),
    (0, 10, 0.0, 5, 0.5),
]


@pytest.mark.parametrize(("warmup", "total", "floor", "step", "expected"), SCHEDULE_CASES)
def test_warmup_cosine_rises_linearly_then_follows_half_a_cosine_to_its_floor(
    warmup, total, floor, step, expected
):
    assert WarmupCosine(warmup, total, floor)(step) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("args", "message"),
    [((10, 10), "total_steps=10 must exceed warmup_steps=10"), ((-1, 10), "warmup_steps")],
)
def test_warmup_cosine_rejects_a_schedule_with_no_decay(args, message):
    with pytest.raises(ValueError, match=message):
        WarmupCosine(*args)


# -------------------------------------------------------------------------- data order


def test_the_batch_of_a_step_depends_only_on_the_seed_and_the_step():
    tokens = np.arange(5000) % VOCAB
    from_zero = iter(TrainWindows(tokens, 16, 4, seed=3))
    batches = [next(from_zero) for _ in range(6)]
    resumed = next(iter(TrainWindows(tokens, 16, 4, seed=3, start=5)))
    for a, b in zip(batches[5], resumed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert int(resumed[2]) == 5
    other_seed = next(iter(TrainWindows(tokens, 16, 4, seed=4, start=5)))
    assert not torch.equal(other_seed[0], resumed[0])
    x, y, _ = resumed
    torch.testing.assert_close(x[:, 1:], y[:, :-1], rtol=0, atol=0)  # y is x shifted by one


def test_ranks_take_disjoint_rows_of_the_same_global_batch():
    tokens = np.arange(5000) % VOCAB
    whole = TrainWindows(tokens, 16, 6, seed=1).batch(7)
    parts = [TrainWindows(tokens, 16, 6, seed=1, rank=r, world_size=3).batch(7) for r in range(3)]
    torch.testing.assert_close(torch.cat([p[0] for p in parts]), whole[0], rtol=0, atol=0)
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 4 processes"):
        TrainWindows(tokens, 16, 6, world_size=4)


def test_loader_workers_keep_the_order_of_a_single_process():
    tokens = np.arange(3000) % VOCAB
    data = TrainWindows(tokens, 8, 2, seed=0, start=10)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    got = [b[2].item() for b, _ in zip(loader, range(5), strict=False)]
    assert got == [10, 11, 12, 13, 14]


def test_validation_windows_are_fixed_evenly_spread_and_capped_by_the_split():
    tokens = np.arange(1000) % VOCAB
    data = ValWindows(tokens, 32, 8)
    assert len(data) == 8 and data.starts[0] == 0 and data.starts[-1] == 1000 - 33
    assert len(ValWindows(tokens, 32, 500)) == 999 // 32  # no more windows than fit apart
    x, y = data[3]
    assert x.shape == y.shape == (32,)


def test_a_split_shorter_than_one_window_is_rejected_with_the_lengths():
    with pytest.raises(ValueError, match="holds 10 tokens, fewer than block_size"):
        TrainWindows(np.arange(10), 16, 2)


# ------------------------------------------------------------------------------ module


def test_the_module_takes_every_gptconfig_field_with_the_same_default():
    params = inspect.signature(GPTModule.__init__).parameters
    for f in fields(GPTConfig):
        assert f.name in params, f"GPTConfig.{f.name} is not an argument of GPTModule"
        default = params[f.name].default
        expected = f.default_factory() if callable(f.default_factory) else f.default
        if f.name == "moe_layers":
            assert default is None and expected == []
        else:
            assert default == expected, f.name


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
def test_recomputation_gives_the_same_loss_and_gradients(connection, rates):
    torch.manual_seed(0)
    plain = GPTModule(
        vocab_size=VOCAB,
        block_size=16,
        connection=connection,
        moe_layers=[1],
        **TINY_MODEL,
        **rates,
    )
    recomputed = GPTModule(
        vocab_size=VOCAB,
        block_size=16,
        connection=connection,
        moe_layers=[1],
        recompute=True,
        **TINY_MODEL,
        **rates,
    )
    recomputed.load_state_dict(plain.state_dict())
    idx = torch.randint(0, VOCAB, (3, 17))
    losses = []
    for module in (plain, recomputed):
        _, loss = module(idx[:, :-1], idx[:, 1:])
        loss.backward()
        losses.append(loss)
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    for (name, p), q in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_an_m_that_does_not_divide_d_is_rejected_naming_both():
    with pytest.raises(ValueError, match="d=30 is not divisible by m=4 fractions"):
        GPTModule(d_model=30, n_head=3, connection="fc", m=4)


# --------------------------------------------------------------------------- FLOPs, MFU


def test_flops_per_token_is_six_times_the_matmul_weights_plus_the_attention_term():
    cfg = GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, d_model=32)
    model = GPT(cfg)
    d, h = 32, cfg.mlp_hidden
    per_block = 4 * d * d + 3 * d * h  # qkv + out, SwiGLU gate/up/down
    N = 2 * per_block + 100 * d  # + the tied output head
    assert active_params(model) == N
    assert flops_per_token(model) == 6 * N + 12 * 2 * d * 16
    assert flops_per_token(model, seq_len=8) == 6 * N + 12 * 2 * d * 8


def test_moe_flops_count_top_k_of_the_routed_experts():
    dense = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, d_model=32))
    moe = GPT(
        GPTConfig(
            vocab_size=100,
            block_size=16,
            n_layer=2,
            n_head=2,
            d_model=32,
            moe_layers=[1],
            n_experts=4,
            top_k=2,
        )
    )
    router = 32 * 4
    assert active_params(moe) == active_params(dense) + 3 * 32 * dense.cfg.mlp_hidden + router


@pytest.mark.parametrize(
    ("name", "precision", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16-mixed", 989e12),
        ("NVIDIA H100 PCIe", "bf16-mixed", 756e12),
        ("NVIDIA A100-SXM4-40GB", "16-mixed", 312e12),
        ("NVIDIA L40S", "bf16-true", 362e12),
        ("NVIDIA H100 80GB HBM3", "32-true", None),  # the table holds 16-bit peaks only
        ("Some Future GPU", "bf16-mixed", None),
        (None, "bf16-mixed", None),  # a CPU
    ],
)
def test_peak_flops_come_from_the_device_name_or_are_unknown(name, precision, peak):
    assert peak_flops(name, precision) == peak


# ----------------------------------------------------------------------- diagnostics


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
def test_diagnostics_probe_gives_each_layers_mappings_gains_and_similarity(connection, rates):
    torch.manual_seed(0)
    model = GPT(
        GPTConfig(
            vocab_size=VOCAB,
            block_size=16,
            n_layer=2,
            n_head=2,
            d_model=32,
            connection=connection,
            **rates,
        )
    )
    out = probe_connections(model, torch.randint(0, VOCAB, (2, 16)))
    L, k = 4, {"residual": 1, "hc": 2, "fc": 4, "mhc": 2}[connection]
    assert out["res"].shape == (L, k, k) and out["post"].shape == (L, k)
    assert out["cos_median"].shape == (L - 1,)
    assert out["matrix"].shape[:2] == (L + 2, L + 2)
    if connection in ("residual", "hc", "fc"):  # at init all three are the Pre-Norm network
        ones = torch.ones(L)
        for key in ("gain_forward", "gain_backward", "composite_forward", "composite_backward"):
            torch.testing.assert_close(out[key], ones)
    if connection == "residual":
        torch.testing.assert_close(out["matrix"], torch.ones(L + 2, L + 2).tril(-1))
    if connection == "mhc":  # rows of Sinkhorn-Knopp's output sum to 1, and so do products'
        torch.testing.assert_close(out["composite_forward"], torch.ones(L), rtol=0, atol=1e-5)
    assert model.training  # the probe leaves the mode as it found it


# --------------------------------------------------------------------- runs (Trainer)


def test_fit_lowers_the_loss_and_logs_to_csv_and_tensorboard(corpus_root, tmp_path):
    cli = fit(
        corpus_root,
        tmp_path,
        "--trainer.max_steps",
        "12",
        "--model.connection",
        "hc",
        "--model.n",
        "2",
        "--diagnostics.every_n_steps",
        "6",
        logger=True,
    )
    run = tmp_path / "run" / "version_0"
    rows = (run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for key in (
        "train/loss",
        "train/ce",
        "val/loss",
        "tokens_per_s",
        "diag/gain_fwd/layer0",
        "diag/cos/layer0",
    ):
        assert key in header, key
    losses = [
        float(r.split(",")[header.index("train/loss")])
        for r in rows[1:]
        if r.split(",")[header.index("train/loss")]
    ]
    assert losses[-1] < losses[0] - 0.5, losses
    assert list(run.glob("events.out.tfevents.*")), "TensorBoard wrote nothing"
    assert not (tmp_path / "run" / "version_1").exists()  # both loggers share one folder
    assert (run / "diagnostics" / "step000006.png").exists()
    saved = torch.load(run / "diagnostics" / "step000012.pt")
    assert saved["connection"] == "hc" and saved["res"].shape == (4, 2, 2)
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert cli.trainer.global_step == 12


def test_a_resumed_run_reaches_bit_for_bit_the_weights_of_an_uninterrupted_one(
    corpus_root, tmp_path
):
    # dropout on, so that the random state must be restored too; validation in between
    common = ("--model.connection", "mhc", "--model.n", "2", "--model.dropout", "0.1")
    whole = fit(corpus_root, tmp_path / "whole", *common)
    checkpoint = tmp_path / "whole" / "run" / "checkpoints" / "step=000003.ckpt"
    assert checkpoint.exists()
    resumed = fit(corpus_root, tmp_path / "resumed", *common, "--ckpt_path", str(checkpoint))
    assert resumed.trainer.global_step == whole.trainer.global_step == 6
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    halfway = GPTModule.load_from_checkpoint(checkpoint).model.state_dict()
    assert not torch.equal(halfway["embed.weight"], a["embed.weight"])  # it did train on


class PoisonedModule(GPTModule):
    """Returns a NaN loss from step 2 on."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step >= 2 else loss


def test_a_nan_loss_stops_the_run_with_the_step_and_a_remedy(corpus_root, tmp_path):
    import pytorch_lightning as pl

    model = PoisonedModule(vocab_size=VOCAB, block_size=32, **TINY_MODEL)
    data = CorpusDataModule("markov", root=str(corpus_root), block_size=32, batch_size=4)
    trainer = pl.Trainer(
        max_steps=5, callbacks=[NonFiniteLossGuard()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
        accelerator="cpu", limit_val_batches=0,
    )  # fmt: skip
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 2 .* --model.init_from"):
        trainer.fit(model, data)
    assert trainer.global_step == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the update never ran


def test_moe_runs_log_aux_losses_and_the_load_of_every_expert(corpus_root, tmp_path):
    fit(
        corpus_root,
        tmp_path,
        "--trainer.max_steps",
        "3",
        "--model.moe_layers",
        "[1]",
        "--model.n_experts",
        "4",
        "--model.top_k",
        "2",
        logger=True,
    )
    rows = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    loads = [f"moe/load/block1/expert{e}" for e in range(4)]
    for key in ("moe/aux_loss/block1", "moe/z_loss/block1", "moe/load_max/block1", *loads):
        assert key in header, key
    row = next(r.split(",") for r in rows[1:] if r.split(",")[header.index(loads[0])])
    assert sum(float(row[header.index(k)]) for k in loads) == pytest.approx(1.0, abs=1e-5)


def test_diagnostics_callback_can_be_switched_off_and_rejects_bad_periods():
    assert ConnectionDiagnostics(every_n_steps=0).every_n_steps == 0
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 0"):
        ConnectionDiagnostics(every_n_steps=-5)


# ------------------------------------------------------------------- command-line errors


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--model.connection", "hcx"],
            "Expected a typing.Literal['residual', 'hc', 'fc', 'mhc']. Got value: hcx",
        ),
        (["--model.conection", "hc"], "unrecognized arguments: --model.conection hc"),
        (["--model.d_model", "many"], 'Parser key "model.d_model"'),
    ],
)
def test_the_cli_names_a_bad_key_or_value_before_building_anything(
    corpus_root, tmp_path, capsys, extra, message
):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *cli_args(corpus_root, tmp_path, *extra)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unknown_key_in_a_config_file_is_named(corpus_root, tmp_path, capsys):
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  conection: hc\n")
    with pytest.raises(SystemExit):
        main(["fit", *cli_args(corpus_root, tmp_path, "--config", str(config))])
    assert "conection" in capsys.readouterr().err


def test_a_missing_corpus_names_the_command_that_builds_it(tmp_path):
    with pytest.raises(CorpusMissingError, match="python -m hclib.data"):
        CorpusDataModule("not-built", root=str(tmp_path))


# ----------------------------------------------------------------------------- recipes


class ParseOnly(TrainCLI):
    """The CLI up to the parsed config: nothing is built (no corpus, no GPU needed)."""

    def instantiate_classes(self) -> None:
        pass


def parse_recipe(path: Path, *extra: str) -> ParseOnly:
    return ParseOnly(
        GPTModule, CorpusDataModule, run=False, auto_configure_optimizers=False,
        args=["--config", str(path), *extra],
    )  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses_and_builds_a_valid_model_config(recipe):
    config = parse_recipe(recipe).config
    model = {
        k: v for k, v in vars(config.model).items() if k in {f.name for f in fields(GPTConfig)}
    }
    model["moe_layers"] = model["moe_layers"] or []
    GPTConfig(**{**model, "vocab_size": 4096})  # raises on a bad combination
    assert config.data.batch_size % (config.trainer.devices * config.trainer.num_nodes) == 0


@pytest.mark.parametrize("recipe", CONFIGS, ids=lambda p: p.name)
def test_every_recipe_comments_every_key(recipe):
    for number, line in enumerate(recipe.read_text().splitlines(), 1):
        text = line.strip()
        if (
            not text
            or text.startswith("#")
            or text.startswith("- class_path")
            or text.endswith(":")
        ):
            continue
        assert "#" in text, f"{recipe.name}:{number} has no comment: {line!r}"


def test_moe_recipes_route_top_2_of_at_least_8_experts_on_the_gpu():
    config = parse_recipe(ROOT / "configs" / "moe-small.yaml").config
    assert config.model.n_experts >= 8 and config.model.top_k == 2 and config.model.moe_layers


def test_the_cluster_recipe_shards_with_the_strategy_of_the_fsdp_overlay():
    from pytorch_lightning.strategies import ModelParallelStrategy

    cluster = parse_recipe(ROOT / "configs" / "cluster.yaml").config
    overlay = parse_recipe(TINY_RECIPE, "--config", str(OVERLAYS[0])).config
    assert cluster.trainer.strategy == overlay.trainer.strategy  # the two cannot drift apart
    strategy_cfg = cluster.trainer.strategy
    module_name, _, class_name = strategy_cfg.class_path.rpartition(".")
    cls = getattr(__import__(module_name, fromlist=[class_name]), class_name)
    strategy = cls(**vars(strategy_cfg.init_args))
    assert isinstance(strategy, ModelParallelStrategy)
    assert cluster.trainer.gradient_clip_algorithm == "norm" and cluster.trainer.gradient_clip_val
    assert cluster.trainer.num_nodes >= 2 and cluster.trainer.precision == "bf16-mixed"


# ------------------------------------------------------------------- 2-process DDP (CPU)


@pytest.mark.slow
def test_two_process_ddp_on_cpu_matches_one_process_on_the_same_global_batch(corpus_root, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    finals = {}
    for devices in (1, 2):
        out = tmp_path / f"ddp{devices}"
        args = cli_args(
            corpus_root,
            out,
            "--trainer.devices",
            str(devices),
            "--trainer.strategy",
            "ddp" if devices > 1 else "auto",
            "--trainer.precision",
            "64-true",
            "--model.connection",
            "hc",
            "--model.n",
            "2",
            "--trainer.max_steps",
            "4",
            "--checkpoint.every_n_train_steps",
            "4",
        )
        proc = subprocess.run(
            [sys.executable, "-m", "hclib.train", "fit", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        ckpt = torch.load(
            out / "run" / "checkpoints" / "step=000004.ckpt", map_location="cpu", weights_only=False
        )
        finals[devices] = ckpt["state_dict"]
    for name, value in finals[1].items():
        torch.testing.assert_close(finals[2][name], value, rtol=1e-9, atol=1e-11, msg=name)
    assert math.isfinite(float(finals[1]["model.embed.weight"].sum()))


# ------------------------------------------------------------- benchmarks/train_step.py


def test_train_step_benchmark_smoke_run_writes_its_table_and_ratios(tmp_path, capsys):
    bench = load_script("train_step")
    args = ["--smoke", "--out", str(tmp_path), "--connections", "residual,hc", "--steps", "2"]
    assert bench.main(args) == 0
    with open(tmp_path / "train_step.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["connection"], r["recompute"]) for r in rows] == [
        ("residual", "False"), ("hc", "False"), ("residual", "True"), ("hc", "True"),
    ]  # fmt: skip
    assert all(r["status"] == "ok" and float(r["tokens_per_s"]) > 0 for r in rows)
    assert float(rows[0]["x_residual_time"]) == 1.0
    assert "SMOKE RUN" in (tmp_path / "train_step.md").read_text()


def test_train_step_benchmark_reads_each_target_as_met_missed_or_not_measured():
    bench = load_script("train_step")
    at = {"d": 2048, "mode": "eager"}
    rows = [
        {**at, "connection": "hc", "recompute": False, "x_residual_time": 1.08},
        {**at, "connection": "fc", "recompute": False, "x_residual_time": 1.05},
        {**at, "connection": "hc", "recompute": True, "x_residual_memory": 1.2},
    ]
    lines = bench.evaluate_targets(rows)
    assert "- hc time <= 1.10x residual (d=2048, eager): met (1.080x)" in lines
    assert "- fc time <= 1.03x residual (d=2048, eager): missed (1.050x)" in lines
    assert "- hc memory <= 1.30x residual (d=2048, eager, recompute on): met (1.200x)" in lines
    assert "- mhc time <= 1.10x residual (d=2048, compiled): not measured" in lines
