"""Runs a user can trust and tell apart: the carried state's dtype under autocast, resume
checks, new runs from a checkpoint's weights, signals, run folders, short runs, ``test``,
``--help``. All in one process on the CPU, with the tiny recipe of tests/test_training.py.
"""

from __future__ import annotations

import os
import signal

import pytest
import pytorch_lightning as pl
import torch
from test_training import (  # noqa: F401  (fixtures)
    CONNECTIONS,
    VOCAB,
    cli_args,
    corpus_root,
    fit,
    no_pytest_argv,
    weights,
)

from hclib.models.gpt import GPT, GPTConfig
from hclib.training import GPTModule, Preemption
from hclib.training.cli import main

# ----------------------------------------------------------------- the carried state


def carried_dtypes(model: GPT, idx: torch.Tensor) -> list[torch.dtype]:
    """The dtype of the state entering every layer, and leaving the last one."""
    seen = []
    hooks = [
        layer.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
        for layer in model.layers
    ]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            seen.insert(0, model.state(idx).dtype)
            model(idx)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


@pytest.mark.parametrize(("connection", "rates"), CONNECTIONS)
@pytest.mark.parametrize(
    ("state_dtype", "expected"), [("autocast", torch.bfloat16), ("weights", torch.float32)]
)
def test_under_autocast_the_carried_state_is_held_in_the_autocast_dtype_unless_switched(
    connection, rates, state_dtype, expected
):
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=32,
        connection=connection, state_dtype=state_dtype, **rates,
    )  # fmt: skip
    model = GPT(cfg)
    idx = torch.randint(0, VOCAB, (2, 16))
    dtypes = carried_dtypes(model, idx)
    assert dtypes == [expected] * (len(model.layers) + 1)
    assert model.state(idx).dtype == torch.float32  # without autocast: the weights' dtype


def test_a_bf16_state_trains_close_to_a_float32_state():
    torch.manual_seed(0)
    kw = dict(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, d_model=32, connection="mhc")
    low, full = GPT(GPTConfig(**kw)), GPT(GPTConfig(**kw, state_dtype="weights"))
    full.load_state_dict(low.state_dict())
    idx = torch.randint(0, VOCAB, (4, 17))
    losses = []
    for model in (low, full):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            losses.append(model(idx[:, :-1], idx[:, 1:])[1].float())
    assert torch.isfinite(losses[0])
    torch.testing.assert_close(losses[0], losses[1], rtol=2e-2, atol=0)  # bf16 rounding only


def test_an_unknown_state_dtype_is_named():
    with pytest.raises(ValueError, match="state_dtype must be one of"):
        GPTConfig(state_dtype="half")


# ---------------------------------------------------------------------------- resume


def test_a_resume_with_a_different_model_value_stops_naming_key_values_and_the_remedy(
    corpus_root,  # noqa: F811
    tmp_path,
):
    fit(corpus_root, tmp_path / "first", "--model.connection", "hc", "--model.n", "2")
    ckpt = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    cases = [
        (["--model.connection", "residual"], "model.connection: checkpoint 'hc', this run"),
        (["--model.lr", "0.5", "--model.connection", "hc", "--model.n", "2"], "model.lr"),
        (["--data.seed", "7", "--model.connection", "hc", "--model.n", "2"], "data.seed"),
    ]
    for extra, message in cases:
        out = tmp_path / "second"
        with pytest.raises(ValueError, match=message) as info:
            fit(corpus_root, out, *extra, "--ckpt_path", str(ckpt))
        assert f"--model.init_from {ckpt}" in str(info.value)
        assert not (out / "run").exists() or not any((out / "run").rglob("*.ckpt"))


def test_init_from_starts_a_new_run_from_the_weights_with_a_fresh_schedule(
    corpus_root,  # noqa: F811
    tmp_path,
):
    first = fit(corpus_root, tmp_path / "first", "--model.connection", "mhc", "--model.n", "2")
    ckpt = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    module = GPTModule(
        vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, d_model=32, connection="mhc", n=2,
        init_from=str(ckpt),
    )  # fmt: skip
    for name, value in weights(first).items():
        assert torch.equal(module.model.state_dict()[name], value), name
    second = fit(
        corpus_root, tmp_path / "second", "--model.connection", "mhc", "--model.n", "2",
        "--model.lr", "3e-3", "--model.init_from", str(ckpt), "--trainer.max_steps", "2",
    )  # fmt: skip
    assert second.trainer.global_step == 2  # counted from 0: a new run
    with pytest.raises(ValueError, match="do not fit this model"):
        GPTModule(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, d_model=32,
                  init_from=str(ckpt))  # fmt: skip


# --------------------------------------------------------------------------- signals


class SignalAt(pl.Callback):
    """Send ``signum`` to this process after training step ``step``."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_a_checkpoint_and_exits_non_zero_and_the_run_resumes_from_it(
    corpus_root,  # noqa: F811
    tmp_path,
    signum,
):
    import json

    callbacks = json.dumps([{"class_path": "test_training_runs.SignalAt",
                             "init_args": {"step": 2, "signum": int(signum)}}])  # fmt: skip
    before = signal.getsignal(signum)
    with pytest.raises(SystemExit) as info:
        fit(corpus_root, tmp_path, "--trainer.callbacks", callbacks)
    assert signal.getsignal(signum) == before  # the handlers are given back
    assert info.value.code == 143
    saved = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    step = torch.load(saved, map_location="cpu", weights_only=False)["global_step"]
    assert step in (2, 3)  # the step on which the signal arrived, finished
    resumed = fit(corpus_root, tmp_path / "again", "--ckpt_path", str(saved))
    assert resumed.trainer.global_step == 6


def test_preemption_rejects_a_zero_exit_code():
    with pytest.raises(ValueError, match="exit_code must be a non-zero int"):
        Preemption(exit_code=0)


# ---------------------------------------------------------------------- run folders


def recipe_args(root, out, *extra):
    """The tiny recipe's own loggers (no --run_name, no --trainer.logger), in ``out``."""
    args = cli_args(root, out, *extra)
    cut = args.index("--trainer.logger")
    args = args[:cut] + args[cut + 2 :]  # the recipe's CSV and TensorBoard loggers
    cut = args.index("--run_name")
    return args[:cut] + args[cut + 2 :]


def test_runs_are_named_after_the_recipe_and_connection_and_one_key_renames_every_logger(
    corpus_root,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    monkeypatch.chdir(tmp_path)  # the recipe's loggers write into ./runs
    args = recipe_args(corpus_root, tmp_path / "root", "--trainer.max_steps", "1")
    main(["fit", *args, "--model.connection", "hc", "--model.n", "2"])
    main(["fit", *args, "--run_name", "mine"])
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["gpt-tiny-hc", "mine"]
    for name in ("gpt-tiny-hc", "mine"):
        version = runs / name / "version_0"
        assert (version / "metrics.csv").exists() and list(version.glob("events.out.*"))
        assert not (runs / name / "version_1").exists()  # both loggers in one folder


def test_a_run_that_fails_its_checks_leaves_no_folder_behind(corpus_root, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    args = recipe_args(corpus_root, tmp_path / "root", "--trainer.max_steps", "-1")
    with pytest.raises(ValueError, match="the cosine schedule needs a length"):
        main(["fit", *args, "--trainer.max_epochs", "1"])
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*"))


def test_a_warmup_longer_than_the_run_is_shortened_with_a_warning(corpus_root, tmp_path):  # noqa: F811
    with pytest.warns(UserWarning, match="warming up for 0 steps instead"):
        cli = fit(corpus_root, tmp_path, "--model.warmup_steps", "50", "--trainer.max_steps", "5")
    assert cli.trainer.global_step == 5
    with pytest.warns(UserWarning, match="warmup"):
        fit(corpus_root, tmp_path / "dev", "--trainer.fast_dev_run", "true")


def test_test_evaluates_the_validation_split_and_predict_is_not_offered(
    corpus_root,  # noqa: F811
    tmp_path,
    capsys,
):
    fit(corpus_root, tmp_path)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cli = main(["test", *cli_args(corpus_root, tmp_path), "--ckpt_path", str(ckpt)])
    tested = float(cli.trainer.callback_metrics["test/loss"])
    validated = main(["validate", *cli_args(corpus_root, tmp_path), "--ckpt_path", str(ckpt)])
    assert tested == pytest.approx(float(validated.trainer.callback_metrics["val/loss"]))
    with pytest.raises(SystemExit):
        main(["predict", *cli_args(corpus_root, tmp_path)])
    assert "invalid choice: 'predict'" in capsys.readouterr().err


def test_fit_help_shows_the_meaning_of_every_model_key(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for key, meaning in [
        ("--model.connection", "how the sublayers are joined"),
        ("--model.n ", "streams (expansion rate) of hc and mhc"),
        ("--model.state_dtype", "the carried state under autocast"),
        ("--model.init_from", "fresh optimizer and schedule"),
        ("--model.aux_loss_coef", "global expert counts"),
        ("--run_name", "<recipe>-<connection>"),
    ]:
        assert key in text, key
        assert meaning in text.rsplit(key, 1)[1][:400], key  # the key's entry, after the usage
