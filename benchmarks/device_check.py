"""Every GPU result of the project in one command, within a time budget: parity, speed, steps.

usage::

    python benchmarks/device_check.py [--budget-s 480] [--out results/<date>-<device>/]
        [--wheels wheels/] [--steps wheels,parity,connections-d4096,...] [--smoke]
    python benchmarks/device_check.py --prepare-wheels [--wheels wheels/]   # where there is network

**The steps**, in this order (the most wanted result first, so that a budget that runs out
costs the least):

1. ``wheels``: installs the peers' wheels from ``--wheels`` (lucidrains' ``hyper-connections``,
   ``liger-kernel`` and their pure-Python dependencies) without network: a GPU machine has
   none. ``--prepare-wheels`` downloads them beforehand, at the versions installed here.
2. ``parity``: the ``gpu``-marked tests (every fused kernel against the reference, forward and
   every gradient, at real sizes: 32k tokens, d up to 4096), log in ``parity.log``.
3. ``connections-d4096``: ``benchmarks/connections.py`` at the headline shape: 32k tokens,
   d = 4096, n = m = 4, bfloat16, forward, backward and forward+backward, every provider
   (residual, eager, ``torch.compile``, Triton, lucidrains, Liger).
4. ``train_step``: ``benchmarks/train_step.py`` at d = 2048 (compiled, recomputation off and on).
5. ``connections-d2048``: the connections again at d = 2048.
6. ``chapters``: the GPU size of chapters 8-10, run by ``benchmarks/chapters_gpu.py`` when that
   script exists (called with ``--out DIR``, and ``--smoke`` under ``--smoke``; it writes its
   CSV, Markdown and PNG files into ``DIR``); skipped with a message while it does not.

Each step runs as its own process with what is left of the budget (``--budget-s``, default 480:
8 minutes) as its time limit; when the budget runs out, the running step is stopped, the later
ones are not started, and everything that finished is kept and reported.

**Output**, one folder (default ``results/<date>-<device>/``): a subfolder per step with that
script's own files (CSV, Markdown, PNG), ``parity.log`` (and ``parity.xml``, JUnit),
``logs/<step>.log``, and the merged ``device_check.csv`` (every CSV row of every step, with the
step's name in front) and ``device_check.md``: the device and versions, each step's status and
time, the parity counts, every target met or missed and by how much, and the plots.

``--smoke`` runs the same flow on the CPU (``CUDA_VISIBLE_DEVICES`` emptied, Triton's
interpreter on) at each script's toy size, into a temporary folder unless ``--out`` is given:
CI runs it (``tests/test_device_check.py``) to check the plumbing; its numbers mean nothing and
it installs nothing. Never commit its results.

Derived in: benchmarks/README.md (how to run it on a rented GPU).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import importlib.util
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
#: the peers' distributions and the pure-Python dependencies pip would fetch for them
PEER_DISTRIBUTIONS = ("hyper-connections", "liger-kernel", "einops", "torch-einops-utils")
#: test files that hold ``gpu``-marked parity tests
PARITY_TESTS = (
    "tests/test_kernels_sinkhorn.py",
    "tests/test_kernels_post_res.py",
    "tests/test_kernels_hyper.py",
    "tests/test_kernels_frac.py",
    "tests/test_kernels_manifold.py",
    "tests/test_impl.py",
    "tests/test_graph_breaks.py",
)
#: the optional script of the chapters' GPU size (chapters 8-10)
CHAPTERS_SCRIPT = BENCHMARKS / "chapters_gpu.py"
#: seconds kept back from the budget to merge and write the report
REPORT_RESERVE_S = 10.0
#: a step is not started with less than this left
MIN_STEP_S = 3.0
#: the connections' shapes (tokens, d, n = m); the smoke sizes stand in for them on the CPU
HEADLINE = {"tokens": 32_768, "d": 4096, "rate": 4}
SMOKE = {"tokens": 16, "d": 64, "rate": 2}
STEP_NAMES = (
    "wheels",
    "parity",
    "connections-d4096",
    "train_step",
    "connections-d2048",
    "chapters",
)


@dataclass
class Step:
    """One step of the check: the commands it runs and how it went."""

    name: str
    title: str
    commands: list[list[str]] = field(default_factory=list)
    folder: Path | None = None
    skip: str = ""  # why the step does not run, when it does not
    status: str = "not run"
    seconds: float = 0.0
    detail: str = ""


# ------------------------------------------------------------------------------- the steps


def _python() -> list[str]:
    return [sys.executable]


def _connections(out: Path, d: int, smoke: bool) -> list[str]:
    size = SMOKE if smoke else {**HEADLINE, "d": d}
    cmd = _python() + [
        str(BENCHMARKS / "connections.py"),
        "--connections",
        "hc,fc,mhc",
        "--tokens",
        str(size["tokens"]),
        "--dims",
        str(size["d"] * d // 4096),  # --smoke: 64 and 32
        "--n",
        str(size["rate"]),
        "--m",
        str(size["rate"]),
        "--modes",
        "forward,backward,forward+backward",
        "--out",
        str(out),
        "--no-progress",
    ]
    return cmd + (["--smoke"] if smoke else [])


def wheel_files(wheels: Path) -> list[Path]:
    return sorted(wheels.glob("*.whl")) if wheels.is_dir() else []


def plan(out: Path, wheels: Path, smoke: bool, chosen: Sequence[str]) -> list[Step]:
    """The steps of a run, in order, with their commands (nothing runs here)."""
    steps = []
    wheel_step = Step("wheels", "the peers' wheels, installed without network")
    found = wheel_files(wheels)
    if smoke:
        wheel_step.skip = f"--smoke installs nothing ({len(found)} wheels in {wheels})"
    elif not found:
        wheel_step.skip = (
            f"no wheels in {wheels}: lucidrains and Liger run only if already installed "
            "(prepare them with: python benchmarks/device_check.py --prepare-wheels)"
        )
    else:
        wheel_step.commands = [
            _python()
            + ["-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels)]
            + [str(w) for w in found]
        ]
    steps.append(wheel_step)

    parity = Step("parity", "gpu-marked parity tests (kernels against the reference)")
    parity.commands = [
        _python()
        + ["-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider"]
        + ["--junitxml", str(out / "parity.xml")]
        + list(PARITY_TESTS)
    ]
    steps.append(parity)

    for d in (4096, 2048):
        name = f"connections-d{d}"
        step = Step(name, f"benchmarks/connections.py, 32k tokens, d = {d}, n = m = 4, bf16")
        step.folder = out / name
        step.commands = [_connections(step.folder, d, smoke)]
        steps.append(step)

    train = Step("train_step", "benchmarks/train_step.py, a GPT step per connection, d = 2048")
    train.folder = out / "train_step"
    train_cmd = _python() + [str(BENCHMARKS / "train_step.py"), "--out", str(train.folder)]
    if smoke:
        train_cmd += ["--smoke", "--recompute", "off,on"]
    else:
        train_cmd += ["--dims", "2048", "--modes", "compiled", "--recompute", "off,on"]
        train_cmd += ["--steps", "10", "--warmup", "3"]
    train.commands = [train_cmd]
    steps.insert(3, train)  # after the headline shape, before d = 2048

    chapters = Step("chapters", "the GPU size of chapters 8-10 (benchmarks/chapters_gpu.py)")
    chapters.folder = out / "chapters"
    if CHAPTERS_SCRIPT.exists():
        # the chapters' results beside the other steps' folders, where the chapters look for
        # results/<date>-<device>/08_toy_models.json etc.; its own report in its step folder
        cmd = _python() + [str(CHAPTERS_SCRIPT), "--out", str(out)]
        cmd += ["--report-dir", str(chapters.folder)]
        chapters.commands = [cmd + (["--smoke"] if smoke else [])]
    else:
        chapters.skip = (
            f"{CHAPTERS_SCRIPT.relative_to(ROOT)} does not exist: the chapters' GPU size is "
            "not defined yet"
        )
    steps.append(chapters)
    for step in steps:
        if step.name not in chosen and not step.skip:
            step.skip = "not chosen (--steps)"
    return steps


def _stop(proc: subprocess.Popen) -> None:
    """Stop a step's process group: SIGTERM, then SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, deadline: float, log: Path, env: dict[str, str]) -> None:
    """Run ``step``'s commands one after the other, each stopped at ``deadline`` (a
    ``time.monotonic()`` value); its output goes to ``log``."""
    if step.skip:
        step.status, step.detail = "skipped", step.skip
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    step.status = "ok"
    with log.open("w") as sink:
        for cmd in step.commands:
            left = deadline - time.monotonic()
            if left < MIN_STEP_S:
                step.status = "stopped: budget" if step.seconds else "not reached: budget spent"
                break
            if step.name == "chapters":  # it stops by itself and keeps what finished
                cmd = [*cmd, "--budget-s", f"{max(left - 15.0, 1.0):.0f}"]
            sink.write("$ " + " ".join(cmd) + "\n")
            sink.flush()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                _stop(proc)
                step.status = f"stopped: budget (after {left:.0f} s)"
                break
            finally:
                step.seconds = time.monotonic() - start
            if rc != 0:
                step.status = f"failed (exit {rc})"
                break
    step.seconds = time.monotonic() - start
    if not step.detail:
        step.detail = f"log: {log.name if log.parent.name != 'logs' else 'logs/' + log.name}"


# ------------------------------------------------------------------------------- the report


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def read_rows(steps: Sequence[Step]) -> list[dict[str, str]]:
    """Every CSV row of every step's folder, with ``step`` and ``file`` in front."""
    rows = []
    for step in steps:
        if step.folder is None or not step.folder.is_dir():
            continue
        for path in sorted(step.folder.glob("*.csv")):
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    rows.append({"step": step.name, "file": path.name, **row})
    return rows


def write_merged_csv(rows: Sequence[dict[str, str]], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["step", "file"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def parity_counts(xml: Path) -> str:
    """``"N passed, F failed, E errors, S skipped"`` from pytest's JUnit XML, or why not."""
    if not xml.exists():
        return "no JUnit file: the tests did not finish"
    root = ET.parse(xml).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n, failed, errors, skipped = (
        int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")
    )
    passed = n - failed - errors - skipped
    return f"{passed} passed, {failed} failed, {errors} errors, {skipped} skipped"


def connection_targets(steps: Sequence[Step], smoke: bool) -> list[tuple[str, str, str]]:
    """``(status, target, detail)`` of connections.py's targets at the headline shape."""
    head = next(s for s in steps if s.name == "connections-d4096")
    path = head.folder / "connections.csv" if head.folder else None
    if path is None or not path.exists():
        return [("not measured", "the connections' targets", f"{head.name}: {head.status}")]
    connections = _load(BENCHMARKS / "connections.py", "hclib_bench_connections")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    size = SMOKE if smoke else HEADLINE
    case = {**size, "mode": "forward+backward"}
    return [(t.status, t.name, t.detail) for t in connections.evaluate_targets(rows, case)]


def _typed(text: str) -> object:
    """A CSV cell back as what train_step.py wrote: None, a bool, a number or the text."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return float(text)
    except ValueError:
        return text


def train_step_targets(steps: Sequence[Step], smoke: bool) -> list[str]:
    step = next(s for s in steps if s.name == "train_step")
    path = step.folder / "train_step.csv" if step.folder else None
    if path is None or not path.exists():
        return [f"- not measured: the training-step targets ({step.name}: {step.status})"]
    train_step = _load(BENCHMARKS / "train_step.py", "hclib_bench_train_step")
    if smoke:
        train_step.TARGET_D = SMOKE["d"]  # the toy width stands in for d = 2048
    with path.open(newline="") as f:
        rows = [{key: _typed(value) for key, value in row.items()} for row in csv.DictReader(f)]
    return train_step.evaluate_targets(rows)


def versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for dist in ("torch", "triton", "hyper-connections", "liger-kernel"):
        try:
            parts.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def write_report(
    steps: Sequence[Step], out: Path, device: str, budget_s: float, elapsed: float, smoke: bool
) -> Path:
    lines = [
        f"# Device check: {device}" + (" (smoke: CPU, toy sizes, numbers mean nothing)" * smoke),
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"commit {git_commit()}",
        f"- {versions()}",
        f"- budget {budget_s:.0f} s, used {elapsed:.0f} s",
        "",
        "## Steps",
        "",
        "| step | what | status | seconds | detail |",
        "| --- | --- | --- | ---: | --- |",
    ]
    for s in steps:
        detail = s.detail.replace("|", "\\|")
        lines.append(f"| {s.name} | {s.title} | {s.status} | {s.seconds:.0f} | {detail} |")
    lines += ["", "## Parity (gpu-marked tests)", "", parity_counts(out / "parity.xml")]
    lines += ["", "Full log: `parity.log`.", "", "## Targets", ""]
    lines += ["| status | target | by how much |", "| --- | --- | --- |"]
    for status, name, detail in connection_targets(steps, smoke):
        lines.append(f"| {status} | {name} | {detail} |")
    lines += ["", "Training step (`train_step/train_step.md`):", ""]
    lines += train_step_targets(steps, smoke)
    plots = sorted(
        p for s in steps if s.folder and s.folder.is_dir() for p in s.folder.glob("*.png")
    )
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p.parent.name}]({p.relative_to(out).as_posix()})" for p in plots]
    path = out / "device_check.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------------------- the command


def prepare_wheels(wheels: Path) -> int:
    """Download the peers' wheels (no dependencies beyond :data:`PEER_DISTRIBUTIONS`) at the
    versions installed here, for a GPU machine without network."""
    pins = []
    for dist in PEER_DISTRIBUTIONS:
        try:
            pins.append(f"{dist}=={importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(dist)
    cmd = _python() + ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d"]
    cmd += [str(wheels), *pins]
    print("$ " + " ".join(cmd))
    return subprocess.call(cmd)


def child_env(smoke: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, even on a GPU machine
        env["TRITON_INTERPRET"] = "1"
    return env


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Every GPU result in one run, within a time budget.")
    p.add_argument("--budget-s", type=float, default=480.0, help="total seconds (default 480)")
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-<device>/")
    p.add_argument("--wheels", type=Path, default=ROOT / "wheels", help="the peers' wheels")
    p.add_argument(
        "--steps",
        default=",".join(STEP_NAMES),
        help=f"the steps to run, in their fixed order (default all: {','.join(STEP_NAMES)})",
    )
    p.add_argument("--smoke", action="store_true", help="the same flow on the CPU, toy sizes")
    p.add_argument(
        "--prepare-wheels", action="store_true", help="download the peers' wheels and exit"
    )
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare_wheels:
        return prepare_wheels(args.wheels)
    start = time.monotonic()
    chosen = [name.strip() for name in args.steps.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(STEP_NAMES))
    if unknown:
        raise SystemExit(f"unknown steps {unknown}; choose from {', '.join(STEP_NAMES)}")
    import torch  # after argument parsing: --help and --prepare-wheels stay quick

    from hclib.book import results_dir

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit(
            "benchmarks/device_check.py needs a CUDA device; --smoke runs its flow on the CPU"
        )
    device = torch.cuda.get_device_name() if cuda else "cpu"
    out = args.out
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="hclib-device-check-")) if args.smoke else None
        out = out or ROOT / results_dir(device)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    deadline = start + args.budget_s - REPORT_RESERVE_S
    steps = plan(out, args.wheels, args.smoke, chosen)
    env = child_env(args.smoke)
    for step in steps:
        log = out / "parity.log" if step.name == "parity" else out / "logs" / f"{step.name}.log"
        run_step(step, deadline, log, env)
        print(f"{step.name:>18}: {step.status} ({step.seconds:.0f} s)", flush=True)
    write_merged_csv(read_rows(steps), out / "device_check.csv")
    report = write_report(steps, out, device, args.budget_s, time.monotonic() - start, args.smoke)
    print(f"\nwrote {out / 'device_check.csv'} and {report}")
    failed = [s.name for s in steps if s.status.startswith("failed")]
    if failed:
        print(f"failed steps: {', '.join(failed)} (see their logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
