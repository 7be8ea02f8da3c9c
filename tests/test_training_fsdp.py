"""Sharded training (configs/fsdp.yaml: FSDP2 through Lightning's ModelParallelStrategy) on
two CPU processes with gloo, against one process on the same global batch.

Each case runs the real command line, ``python -m hclib.train fit --config <recipe> --config
configs/fsdp.yaml --trainer.devices 2 --trainer.gradient_clip_val ...``, in a subprocess,
converts its sharded checkpoint to one file with ``python -m hclib.train convert-checkpoint``
and compares the weights with a one-process run of the same recipe.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training import (  # noqa: F401  (fixtures)
    ROOT,
    TINY_RECIPE,
    cli_args,
    corpus_root,
    no_pytest_argv,
    weights,
)

from hclib.training import GPTModule, read_checkpoint
from hclib.training.cli import main

FSDP = ROOT / "configs" / "fsdp.yaml"
MOE_TINY = ROOT / "configs" / "moe-tiny.yaml"

# (case, extra arguments): the connections of the issue and the MoE tiny recipe
CASES = [
    ("residual", ["--model.connection", "residual"]),
    # hc: test_a_sharded_run_resumes_from_its_checkpoint_folder_and_matches_one_process
    ("mhc", ["--model.connection", "mhc", "--model.n", "2"]),
    ("moe-tiny", ["--model.moe_layers", "[1]", "--model.moe_hidden", "48"]),  # shrunk to 2 blocks
]
STEPS = 3


def run_args(root: Path, out: Path, case: str, *extra: str) -> list[str]:
    # a clip value the tiny model's gradients exceed, so that clipping acts at every step
    return cli_args(
        root, out, "--trainer.max_steps", str(STEPS), "--checkpoint.every_n_train_steps",
        str(STEPS), "--trainer.gradient_clip_val", "0.05", "--model.warmup_steps", "1",
        "--trainer.val_check_interval", str(STEPS), *extra,
        recipe=MOE_TINY if case == "moe-tiny" else TINY_RECIPE,
    )  # fmt: skip


def launch(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "hclib.train", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def sharded(*extra: str) -> list[str]:
    return ["--config", str(FSDP), "--trainer.devices", "2", *extra]


def assert_same_weights(a: dict, b: dict, rtol: float, atol: float) -> None:
    names = [k for k in a if k.startswith("model.")]
    assert names and set(names) <= set(b)
    for name in names:
        torch.testing.assert_close(b[name].float(), a[name].float(), rtol=rtol, atol=atol, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(("case", "extra"), CASES, ids=[c for c, _ in CASES])
def test_sharded_training_on_two_processes_matches_one_process(
    corpus_root,  # noqa: F811
    tmp_path,
    case,
    extra,
):
    one = main(["fit", *run_args(corpus_root, tmp_path / "one", case, *extra)])
    assert one.trainer.global_step == STEPS
    single = torch.load(
        tmp_path / "one" / "run" / "checkpoints" / f"step={STEPS:06d}.ckpt",
        map_location="cpu",
        weights_only=False,
    )

    launch(["fit", *run_args(corpus_root, tmp_path / "two", case, *extra, *sharded())])
    folder = tmp_path / "two" / "run" / "checkpoints" / f"step={STEPS:06d}.ckpt"
    assert folder.is_dir() and len(list(folder.glob("*.distcp"))) == 2  # one shard per rank

    whole = tmp_path / "whole.ckpt"
    assert main(["convert-checkpoint", str(folder), str(whole)]) is None
    converted = torch.load(whole, map_location="cpu", weights_only=False)
    assert converted["global_step"] == STEPS
    assert_same_weights(single["state_dict"], converted["state_dict"], rtol=2e-4, atol=2e-5)
    # the file is what a reader loads on a laptop: a GPTModule with the run's settings
    module = GPTModule.load_from_checkpoint(whole, map_location="cpu")
    assert module.cfg.connection == one.model.cfg.connection
    # the loss after the steps: the same on a fixed batch
    idx = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
    module.eval(), one.model.eval()
    with torch.no_grad():
        sharded_loss = module(idx[:, :-1], idx[:, 1:])[1]
        single_loss = one.model(idx[:, :-1], idx[:, 1:])[1]
    torch.testing.assert_close(sharded_loss, single_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_sharded_hc_run_matches_one_process_and_resumes_from_its_checkpoint_folder(
    corpus_root,  # noqa: F811
    tmp_path,
):
    extra = ["--model.connection", "hc", "--model.n", "2", "--checkpoint.every_n_train_steps", "2"]
    extra += ["--trainer.gradient_clip_val", "0.05"]
    one = main(
        ["fit", *cli_args(corpus_root, tmp_path / "one", "--trainer.max_steps", "4", *extra)]
    )
    args = cli_args(corpus_root, tmp_path / "whole", "--trainer.max_steps", "4", *extra)
    launch(["fit", *args, *sharded()])
    whole = read_checkpoint(tmp_path / "whole" / "run" / "checkpoints" / "step=000004.ckpt")
    assert_same_weights(
        {f"model.{k}": v for k, v in weights(one).items()}, whole["state_dict"], 2e-4, 2e-5
    )

    halfway = tmp_path / "whole" / "run" / "checkpoints" / "step=000002.ckpt"
    assert halfway.is_dir()
    resumed_args = cli_args(corpus_root, tmp_path / "resumed", "--trainer.max_steps", "4", *extra)
    launch(["fit", *resumed_args, *sharded(), "--ckpt_path", str(halfway)])
    resumed = read_checkpoint(tmp_path / "resumed" / "run" / "checkpoints" / "step=000004.ckpt")
    assert resumed["global_step"] == 4
    assert_same_weights(whole["state_dict"], resumed["state_dict"], rtol=0, atol=0)  # bit for bit
