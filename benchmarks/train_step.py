"""Time whole training steps of the GPT with each connection: tokens/s, step time, peak memory.

usage::

    python benchmarks/train_step.py [--dims 768,2048] [--connections residual,hc,fc,mhc]
        [--modes eager,compiled] [--recompute off,on] [--impl auto] [--n 4] [--m 4]
        [--n-layer 12] [--batch 8] [--seq 1024] [--vocab 4096] [--steps 20] [--warmup 5]
        [--out results/...] [--smoke]

**The step**, the same for every model: ``zero_grad``, forward and loss under
``torch.autocast(bfloat16)`` with float32 weights (Lightning's ``bf16-mixed``), backward,
gradient clipping to norm 1 and an AdamW step with :func:`hclib.param_groups`, through
:class:`hclib.training.GPTModule` (so ``recompute`` and ``compile`` are the trainer's own
switches). Every model has the same depth, heads of width 64, the same batch of
``batch x seq`` random tokens; only the connection differs: the Pre-Norm residual, HC
(``n`` streams, dynamic), FC (``m`` fractions, dynamic) and mHC (``n`` streams).

**Modes**: ``eager``, and ``compiled`` (``torch.compile`` of the model; of each layer under
``recompute``). ``--impl`` goes to every connection (``hclib.kernels``: ``torch``, ``compile``,
``triton``, ``auto``). ``--recompute on`` keeps only each layer's input and recomputes its
connection and branch in the backward pass.

**Output**: a table on stdout, ``train_step.csv`` and ``train_step.md`` (the table, the ratios
to the residual model and the targets met or missed) in ``--out`` (default
``results/<date>-<device>/``). Step times are medians over ``--steps`` timed steps after
``--warmup`` untimed ones (CUDA events); peak memory is ``torch.cuda.max_memory_allocated``
over the timed steps; MFU uses :func:`hclib.training.flops_per_token` and the device's bf16
peak. ``--smoke`` runs a tiny size on the CPU, eager only unless ``--modes`` names
``compiled``, to check that the script runs and writes its files; its numbers mean nothing and
it writes to a temporary folder unless ``--out`` is given. Never commit CPU results.

Targets (at d = 2048, n = m = 4, against the residual model in the same mode): HC and mHC step
time at most 1.10x, FC at most 1.03x; HC's peak memory at most 1.3x with recomputation on.

Derived in: notebooks/09_small_gpt (the cost of a connection in a whole model).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from hclib.book import results_dir
from hclib.models.gpt import GPTConfig
from hclib.optim import param_groups
from hclib.training import GPTModule, flops_per_token, peak_flops

CONNECTIONS = ("residual", "hc", "fc", "mhc")
MODES = ("eager", "compiled")
TARGET_D = 2048
#: (connection, what, limit): step time or peak memory over the residual model's
TARGETS = (
    ("hc", "time", 1.10),
    ("mhc", "time", 1.10),
    ("fc", "time", 1.03),
    ("hc", "memory", 1.30),
)
FIELDS = (
    "d",
    "connection",
    "rate",
    "mode",
    "recompute",
    "impl",
    "status",
    "step_ms",
    "p20_ms",
    "p80_ms",
    "tokens_per_s",
    "mfu",
    "peak_mem_gib",
    "x_residual_time",
    "x_residual_memory",
    "params_m",
    "n_layer",
    "batch",
    "seq",
    "device",
    "smoke",
)


@dataclass
class Settings:
    dims: list[int]
    connections: list[str]
    modes: list[str]
    recompute: list[bool]
    impl: str
    n: int
    m: int
    n_layer: int
    batch: int
    seq: int
    vocab: int
    steps: int
    warmup: int
    device: torch.device
    device_name: str
    smoke: bool
    out: Path


def build(s: Settings, d: int, connection: str, mode: str, recompute: bool) -> GPTModule:
    kwargs: dict[str, Any] = dict(
        vocab_size=s.vocab,
        block_size=s.seq,
        n_layer=s.n_layer,
        n_head=max(1, d // 64),
        d_model=d,
        connection=connection,
        n=s.n,
        m=s.m,
        compile=mode == "compiled",
        recompute=recompute,
    )
    if "impl" in {f.name for f in fields(GPTConfig)}:  # the kernels chapter's switch
        kwargs["impl"] = s.impl
    return GPTModule(**kwargs).to(s.device)


def make_optimizer(module: GPTModule) -> torch.optim.Optimizer:
    """The trainer's AdamW (param_groups, betas, eps), without the schedule."""
    hp = module.hparams
    groups = [
        {k: v for k, v in g.items() if k != "names"}
        for g in param_groups(module.model, hp.weight_decay)
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)


def time_steps(s: Settings, module: GPTModule) -> dict[str, Any]:
    """Median step time, its spread and the peak memory of ``s.steps`` training steps."""
    optimizer = make_optimizer(module)
    g = torch.Generator(device="cpu").manual_seed(0)
    tokens = torch.randint(0, s.vocab, (s.batch, s.seq + 1), generator=g).to(s.device)
    x, y = tokens[:, :-1], tokens[:, 1:]
    cuda = s.device.type == "cuda"

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            _, loss = module(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()

    for _ in range(s.warmup):
        step()
    times = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(s.steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        for _ in range(s.steps):
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
        peak = float("nan")
    times.sort()
    q = statistics.quantiles(times, n=5) if len(times) >= 2 else [times[0]] * 4
    median = statistics.median(times)
    tokens_per_s = s.batch * s.seq / (median / 1e3)
    peak_fl = peak_flops(s.device_name if cuda else None, "bf16-mixed")
    fpt = flops_per_token(module.model, s.seq)
    return {
        "step_ms": median,
        "p20_ms": q[0],
        "p80_ms": q[3],
        "tokens_per_s": tokens_per_s,
        "mfu": fpt * tokens_per_s / peak_fl if peak_fl else None,
        "peak_mem_gib": peak,
        "params_m": module.model.num_params() / 1e6,
    }


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run(s: Settings) -> list[dict[str, Any]]:
    rows = []
    for d in s.dims:
        for mode in s.modes:
            for recompute in s.recompute:
                for connection in s.connections:
                    rate = {"hc": s.n, "mhc": s.n, "fc": s.m}.get(connection, 1)
                    row: dict[str, Any] = dict(
                        d=d, connection=connection, rate=rate, mode=mode, recompute=recompute,
                        impl=s.impl, n_layer=s.n_layer, batch=s.batch, seq=s.seq,
                        device=s.device_name, smoke=s.smoke,
                    )  # fmt: skip
                    label = (
                        f"d={d} {connection:<8} {mode:<8} recompute={'on' if recompute else 'off'}"
                    )
                    print(f"... {label}", file=sys.stderr, flush=True)
                    module = None
                    try:
                        module = build(s, d, connection, mode, recompute)
                        row.update(time_steps(s, module), status="ok")
                    except torch.cuda.OutOfMemoryError:
                        row["status"] = "out of memory"
                    except Exception as error:  # noqa: BLE001 - one failed case does not stop the run
                        row["status"] = f"error: {type(error).__name__}: {error}"[:200]
                    del module
                    _release()
                    rows.append(row)
    add_ratios(rows)
    return rows


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Step time and peak memory over the residual model's in the same (d, mode, recompute)."""
    base = {
        (r["d"], r["mode"], r["recompute"]): r
        for r in rows
        if r["connection"] == "residual" and r["status"] == "ok"
    }
    for r in rows:
        b = base.get((r["d"], r["mode"], r["recompute"]))
        if r["status"] != "ok" or b is None:
            continue
        r["x_residual_time"] = r["step_ms"] / b["step_ms"]
        if b["peak_mem_gib"] == b["peak_mem_gib"]:  # not NaN (CPU)
            r["x_residual_memory"] = r["peak_mem_gib"] / b["peak_mem_gib"]


def evaluate_targets(rows: list[dict[str, Any]]) -> list[str]:
    """One line per target and mode: met, missed (with the margin) or not measured."""
    lines = []
    for connection, what, limit in TARGETS:
        for mode in MODES:
            recompute = what == "memory"
            key = "x_residual_time" if what == "time" else "x_residual_memory"
            found = [
                r
                for r in rows
                if r["d"] == TARGET_D
                and r["connection"] == connection
                and r["mode"] == mode
                and r["recompute"] == recompute
                and r.get(key) is not None
            ]
            name = f"{connection} {what} <= {limit:.2f}x residual (d={TARGET_D}, {mode}"
            name += ", recompute on)" if recompute else ")"
            if not found:
                lines.append(f"- {name}: not measured")
                continue
            value = found[0][key]
            verdict = "met" if value <= limit else "missed"
            lines.append(f"- {name}: {verdict} ({value:.3f}x)")
    return lines


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return format(value, spec)


def table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        "| d | connection | mode | recompute | step ms | tokens/s | MFU | peak GiB "
        "| x time | x memory | status |"
    )
    lines = [head, "|---" * 11 + "|"]
    for r in rows:
        name = r["connection"] + (f" x{r['rate']}" if r["connection"] != "residual" else "")
        lines.append(
            f"| {r['d']} | {name} | {r['mode']} | {'on' if r['recompute'] else 'off'} "
            f"| {_fmt(r.get('step_ms'), '.1f')} | {_fmt(r.get('tokens_per_s'), ',.0f')} "
            f"| {_fmt(r.get('mfu'), '.1%')} | {_fmt(r.get('peak_mem_gib'), '.2f')} "
            f"| {_fmt(r.get('x_residual_time'), '.3f')} "
            f"| {_fmt(r.get('x_residual_memory'), '.3f')} "
            f"| {r['status']} |"
        )
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k) for k in FIELDS})


def write_markdown(rows: list[dict[str, Any]], s: Settings, path: Path) -> None:
    text = [
        "# Training step of the GPT with each connection",
        "",
        f"- date: {datetime.date.today().isoformat()}; device: {s.device_name}; "
        f"torch {torch.__version__}",
        f"- {s.n_layer} blocks, heads of width 64, batch {s.batch} x {s.seq} tokens, "
        f"vocabulary {s.vocab}; bf16 autocast, float32 weights, AdamW, clipping; "
        f"n = {s.n}, m = {s.m}; impl = {s.impl}",
        f"- medians of {s.steps} steps after {s.warmup} warm-up steps"
        + ("; SMOKE RUN on the CPU: the numbers mean nothing" if s.smoke else ""),
        "",
        *table(rows),
        "",
        "x time, x memory: over the residual model with the same d, mode and recompute.",
        "",
        "## Targets",
        "",
        *evaluate_targets(rows),
        "",
    ]
    path.write_text("\n".join(text))


def _ints(text: str) -> list[int]:
    return [int(float(t[:-1]) * 1024) if t.endswith("k") else int(t) for t in text.split(",")]


def _choices(allowed: Sequence[str]):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"{bad} not in {list(allowed)}")
        return items

    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dims", type=_ints, default=None, help="model widths (default 768,2048)")
    p.add_argument("--connections", type=_choices(CONNECTIONS), default=list(CONNECTIONS))
    p.add_argument("--modes", type=_choices(MODES), default=None, help="default eager,compiled")
    p.add_argument("--recompute", type=_choices(("off", "on")), default=["off", "on"])
    p.add_argument("--impl", default="auto", help="the connections' impl (hclib.kernels)")
    p.add_argument("--n", type=int, default=4, help="streams of hc and mhc")
    p.add_argument("--m", type=int, default=4, help="fractions of fc")
    p.add_argument("--n-layer", type=int, default=None, help="blocks (default 12)")
    p.add_argument("--batch", type=int, default=None, help="sequences per step (default 8)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default 1024)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary (the book's BPE: 4096)")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 5)")
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-<device>/")
    p.add_argument("--smoke", action="store_true", help="a tiny size on the CPU: checks the script")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit(
            "benchmarks/train_step.py times training steps on a GPU and found no CUDA device; "
            "run it with --smoke to check the script on the CPU"
        )
    small = args.smoke
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    out = args.out
    if out is None:
        if small:
            out = Path(tempfile.mkdtemp(prefix="hclib-train-step-smoke-"))
        else:
            out = results_dir(device_name)
    return Settings(
        dims=args.dims or ([64] if small else [768, 2048]),
        connections=args.connections,
        modes=args.modes or (["eager"] if small else list(MODES)),
        recompute=[r == "on" for r in args.recompute],
        impl=args.impl,
        n=args.n,
        m=args.m,
        n_layer=args.n_layer or (2 if small else 12),
        batch=args.batch or (2 if small else 8),
        seq=args.seq or (32 if small else 1024),
        vocab=args.vocab if not small else 256,
        steps=args.steps or (3 if small else 20),
        warmup=args.warmup if args.warmup is not None else (1 if small else 5),
        device=torch.device("cuda" if cuda else "cpu"),
        device_name=device_name,
        smoke=small,
        out=out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    s = settings_from(parse_args(argv))
    if s.smoke:
        torch.set_num_threads(1)
    rows = run(s)
    s.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, s.out / "train_step.csv")
    write_markdown(rows, s, s.out / "train_step.md")
    print("\n".join(table(rows)))
    print()
    print("\n".join(evaluate_targets(rows)))
    print(f"\nwrote {s.out / 'train_step.csv'} and {s.out / 'train_step.md'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
