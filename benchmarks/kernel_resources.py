"""Compile every Triton kernel of :mod:`hclib.kernels` for real GPUs, without one, and check that
each autotune config fits: no register spills, shared memory within the target's limit.

usage::

    python benchmarks/kernel_resources.py --arch 90 --arch 80 [--n 2,4,8] [--d 4096]
        [--dtype bf16,fp32] [--tokens 32768] [--jobs 2] [--out DIR]

For each target ``GPUTarget("cuda", arch, 32)``, each kernel, each shape (``n`` streams, and as
many FC fractions ``m = n`` of ``d / m`` features), each state dtype and each autotune config,
the kernel is compiled ahead of time with ``triton.compile`` (an ``ASTSource`` with the
signature and constexprs its launcher uses on a GPU, pointers 16-byte aligned as PyTorch
allocates them). Triton's bundled ``ptxas -v`` reports the registers and spill bytes per thread
(spill stores plus spill loads); the compiled kernel's metadata gives its shared memory.

A config *fits* when nothing spills and its shared memory is at most the per-block limit of the
target (opt-in maximum of the CUDA programming guide's table of compute capabilities: 227 KiB on
sm_90, 163 KiB on sm_80). A config that the kernel's ``prune_configs_by`` removes for that shape
is listed as ``pruned``, without numbers (compiled only with ``--compile-pruned``): autotuning
never runs it. The script exits with status 1 when a config that autotuning may pick (not
pruned) does not fit, and 0 otherwise.

Compiles that cannot differ are done once (the same kernel, signature, constexprs, options and
target, e.g. a kernel that only sees float32 buffers, for both state dtypes), in ``--jobs``
processes. ``d`` is a runtime argument of every kernel: it changes what is compiled only through
its divisibility by 16 and through the pruning rules.

Output: the table on stdout; with ``--out``, ``kernel_resources.csv`` (columns ``arch, kernel,
config, n, d, dtype, registers, spill_bytes, shared_bytes, fits, pruned``) and
``kernel_resources.md`` in that folder.

Derived in: notebooks/07_memory_traffic_and_fused_kernels (the table is its evidence until GPU
timings exist).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import hashlib
import importlib
import inspect
import io
import json
import multiprocessing
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

#: shared memory one block may use (bytes), per compute capability: the opt-in maximum of
#: the CUDA C++ programming guide's "Technical Specifications per Compute Capability"
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024, 100: 227 * 1024}

#: state dtypes by their command-line names: (torch dtype name, Triton pointer element)
DTYPES = {"bf16": ("bfloat16", "bf16"), "fp32": ("float32", "fp32"), "fp16": ("float16", "fp16")}

COLUMNS = [
    "arch",
    "kernel",
    "config",
    "n",
    "d",
    "dtype",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "fits",
    "pruned",
]


# ------------------------------------------------------------------------ ptxas parsing
_REGISTERS = re.compile(r"Used (\d+) registers")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def parse_ptxas(log: str) -> tuple[int, int]:
    """``(registers, spill bytes)`` from the ``ptxas -v`` log of one kernel.

    Spill bytes are spill stores plus spill loads (bytes per thread). Raises ``ValueError``
    when the log holds no register count (ptxas did not report on a kernel).
    """
    regs = [int(m) for m in _REGISTERS.findall(log)]
    if not regs:
        raise ValueError(f"no 'Used N registers' line in the ptxas log:\n{log}")
    spills = sum(int(s) + int(ld) for s, ld in _SPILLS.findall(log))
    return max(regs), spills


def fits(spill_bytes: int, shared_bytes: int, arch: int) -> bool:
    """Whether a compiled config can run well on ``sm_<arch>``: no spills, enough shared memory."""
    if arch not in SHARED_LIMIT:
        raise ValueError(
            f"no shared-memory limit known for sm_{arch}; known: {sorted(SHARED_LIMIT)}"
        )
    return spill_bytes == 0 and shared_bytes <= SHARED_LIMIT[arch]


def failures(rows: Iterable[dict]) -> list[dict]:
    """The rows that make the check fail: configs autotuning may pick that do not fit."""
    return [r for r in rows if r["fits"] is False and not r["pruned"]]


# ------------------------------------------------------------------------ compile jobs
@dataclasses.dataclass(frozen=True)
class Job:
    """One ahead-of-time compile: everything that decides the binary, nothing else."""

    module: str  #: e.g. "hclib.kernels.post_res"
    fn: str  #: the @triton.jit function's name in that module
    signature: tuple  #: ((arg name, Triton type or "constexpr"), ...)
    constexprs: tuple  #: ((arg name, value as text), ...)
    attrs: tuple  #: indices of arguments divisible by 16
    num_warps: int
    num_stages: int
    arch: int


def _constexpr_text(value) -> str:
    import triton.language as tl

    if isinstance(value, tl.dtype):
        return f"tl.{value.name}"
    return repr(value)


def _constexpr_value(text: str):
    import triton.language as tl

    if text.startswith("tl."):
        return tl.dtype(text[3:])
    return eval(text, {})  # noqa: S307 - our own repr() of ints, bools, strings


def _cache_file(job: Job, fn, cache: Path) -> Path:
    """Where the result of ``job`` is kept: named by a hash of the job, the kernel's source
    (Triton's ``cache_key`` covers the function and the ``@triton.jit`` functions it calls) and
    the Triton version."""
    import triton

    text = json.dumps([dataclasses.astuple(job), fn.cache_key, triton.__version__])
    return cache / (hashlib.sha256(text.encode()).hexdigest()[:32] + ".json")


def compile_job(job: Job, cache: Path | None = None) -> tuple[int, int, int]:
    """Compile ``job`` for its target; return ``(registers, spill bytes, shared bytes)``.

    With ``cache``, a result computed before for the same job and kernel source is read from
    that folder instead (and a new one is written there).
    """
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(job.module), job.fn)
    if cache is not None:
        path = _cache_file(job, fn, cache)
        if path.exists():
            return tuple(json.loads(path.read_text()))
    signature = dict(job.signature)
    constexprs = {k: _constexpr_value(v) for k, v in job.constexprs}
    attrs = {(i,): [["tt.divisibility", 16]] for i in job.attrs}
    src = ASTSource(fn, signature, constexprs, attrs)
    knobs.nvidia.dump_ptxas_log = True  # make_cubin prints ptxas' -v report to stdout
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        kernel = triton.compile(
            src,
            target=GPUTarget("cuda", job.arch, 32),
            options={"num_warps": job.num_warps, "num_stages": job.num_stages},
        )
    registers, spills = parse_ptxas(log.getvalue())
    result = (registers, spills, int(kernel.metadata.shared))
    if cache is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
    return result


def _compiling_environment() -> None:
    """Compile, not interpret: must run before ``hclib.kernels`` is imported (Triton reads the
    variable when a ``@triton.jit`` function is made)."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default; no warning


def _worker_init(cache: str) -> None:
    _compiling_environment()
    # a private, empty cache: a cached kernel would skip ptxas and its report
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(dir=cache)


# ------------------------------------------------------------------------ kernel specs
@dataclasses.dataclass
class Launch:
    """A kernel as a launcher runs it on a GPU for one shape: its argument types, its constexprs
    and its configs (the autotuner's, or the fixed launch options)."""

    kernel: str  #: label in the table
    module: str
    fn: str
    pointers: dict  #: argument -> Triton element type ("bf16", "fp32", "i32")
    scalars: dict  #: argument -> (Triton type, value for the pruning rules)
    constexprs: dict  #: the launcher's constexprs (not the tuned ones)
    tuned: object = None  #: the triton.autotune wrapper, or None
    options: dict = dataclasses.field(default_factory=lambda: {"num_warps": 4, "num_stages": 3})


def _configs(launch: Launch):
    """``[(label, constexprs, num_warps, num_stages, pruned)]`` of a launch."""
    import torch

    if launch.tuned is None:
        w, s = launch.options["num_warps"], launch.options["num_stages"]
        return [(f"fixed w{w} s{s}", {}, w, s, False)]
    tuned = launch.tuned
    kept = tuned.configs
    if tuned.early_config_prune is not None:
        dt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
        dt |= {"i32": torch.int32, "fp64": torch.float64}
        nargs = {k: torch.empty(0, dtype=dt[v], device="meta") for k, v in launch.pointers.items()}
        nargs |= {k: v for k, (_, v) in launch.scalars.items()}
        kept = tuned.early_config_prune(tuned.configs, nargs, **launch.constexprs)
    out = []
    for c in tuned.configs:
        label = (
            " ".join(f"{k}={v}" for k, v in c.kwargs.items()) + f" w{c.num_warps} s{c.num_stages}"
        )
        out.append((label, dict(c.kwargs), c.num_warps, c.num_stages, c not in kept))
    return out


def _jobs(launch: Launch, arch: int, d_divisible: bool):
    """``[(config label, pruned, Job)]`` for one launch on one target."""
    import triton

    fn = getattr(importlib.import_module(launch.module), launch.fn)
    if isinstance(fn, triton.runtime.Autotuner):
        fn = fn.fn
    out = []
    for label, tuned, w, s, pruned in _configs(launch):
        consts = {**launch.constexprs, **tuned}
        signature, constexprs, attrs = [], [], []
        for idx, p in enumerate(fn.params):
            if p.is_constexpr:
                if p.name not in consts:
                    raise KeyError(
                        f"{launch.module}.{launch.fn}: no value for constexpr {p.name}; "
                        "update its spec in benchmarks/kernel_resources.py"
                    )
                signature.append((p.name, "constexpr"))
                constexprs.append((p.name, _constexpr_text(consts[p.name])))
            elif p.name in launch.pointers:
                signature.append((p.name, "*" + launch.pointers[p.name]))
                attrs.append(idx)  # PyTorch's allocations are aligned far beyond 16 bytes
            elif p.name in launch.scalars:
                ty, value = launch.scalars[p.name]
                signature.append((p.name, ty))
                if ty.startswith("i") and isinstance(value, int) and value % 16 == 0:
                    if p.name not in ("D", "F") or d_divisible:
                        attrs.append(idx)
            else:
                raise KeyError(
                    f"{launch.module}.{launch.fn}: argument {p.name} has no type; "
                    "update its spec in benchmarks/kernel_resources.py"
                )
        job = Job(
            launch.module, launch.fn, tuple(signature), tuple(constexprs), tuple(attrs), w, s, arch
        )
        out.append((label, pruned, job))
    return out


def launches(n: int, d: int, dtype: str, tokens: int) -> list[Launch]:
    """Every kernel launch of a training step of HC, FC (``m = n``) and mHC at this shape."""
    import torch
    import triton
    import triton.language as tl

    from hclib.kernels import hyper_pre, manifold_pre, post_res, sinkhorn

    st = DTYPES[dtype][1]
    f32 = "fp32"
    T = ("i32", tokens)
    out = []

    # post_res: HC and mHC (one y for every row), FC (one row of y per fraction)
    for name, N, D, y_rows in (("HC", n, d, False), ("FC", n, d // n, True)):
        common = dict(N=N, NP=triton.next_power_of_2(N), Y_ROWS=y_rows, ACC=tl.float32)
        scal = {"T": T, "D": ("i32", D), "s_post_t": ("i32", N), "s_res_t": ("i32", N * N)}
        ptr = dict(H=st, Y=st, POST=f32, RES=f32, OUT=st)
        out.append(
            Launch(
                f"post_res_fwd[{name}]",
                post_res.__name__,
                "_post_res_fwd",
                ptr,
                scal,
                common,
                post_res._post_res_fwd_tuned,
            )
        )
        ptr = dict(G=st, H=st, Y=st, POST=f32, RES=f32, GH=st, GY=st, GPOST=f32, GRES=f32)
        out.append(
            Launch(
                f"post_res_bwd[{name}]",
                post_res.__name__,
                "_post_res_bwd",
                ptr,
                scal,
                common,
                post_res._post_res_bwd_tuned,
            )
        )

    # hyper_pre's read-out: HC (k = n rows of d, p = 1) and FC (k = m rows of d/m, p = m),
    # dynamic (LayerNorm with gain, tanh) and static
    for name, K, F, P in (("HC", n, d, 1), ("FC", n, d // n, n)):
        NC = P + K + 1
        for dynamic in (True, False):
            cfg = hyper_pre.ReadOutConfig(P=P, layer=True, eps=1e-5, tanh=True)
            meta = hyper_pre._meta(K, NC, cfg, dynamic, dynamic, torch.float32, True)
            label = f"{name} {'dynamic' if dynamic else 'static'}"
            scal = {"T": T, "F": ("i32", F), "eps": ("fp32", 1e-5)}
            ptr = dict(H=st, OUT=st)
            ptr |= {a: f32 for a in ("STATIC", "W", "GAMMA", "GW", "BW", "SCALE")}
            ptr |= {a: f32 for a in ("COEF", "Z", "MEAN", "RSTD")}
            fwd = {**meta, **hyper_pre.gpu_forward_meta(K, F)}
            out.append(
                Launch(
                    f"readout_fwd[{label}]",
                    hyper_pre.__name__,
                    "_readout_fwd",
                    ptr,
                    scal,
                    fwd,
                    hyper_pre._readout_fwd_tuned,
                )
            )
            ptr = dict(GOUT=st, GHP=st, H=st, GH=st)
            ptr |= {a: f32 for a in ("GIN", "STATIC", "COEF", "Z", "MEAN", "RSTD", "W")}
            ptr |= {a: f32 for a in ("GAMMA", "GW", "BW", "SCALE", "GCOEF", "GZ", "GC", "SPART")}
            bwd = {**meta, **hyper_pre.gpu_backward_meta(K, F), "HAS_GHP": True}
            bwd["HAS_GIN"] = dynamic  # a static read-out returns no weights to differentiate
            scal = {"T": T, "F": ("i32", F)}
            out.append(
                Launch(
                    f"readout_bwd[{label}]",
                    hyper_pre.__name__,
                    "_readout_bwd",
                    ptr,
                    scal,
                    bwd,
                    hyper_pre._readout_bwd_tuned,
                )
            )

    # mHC's read-out: forward, backward kernels 1 and 2
    mp = manifold_pre
    NP, KP, K = sinkhorn.padded_rate(n), mp._coef_width(n), n * n + 2 * n
    split = dtype == "bf16"
    prec = "tf32x3"
    common = dict(N=n, NP=NP, KP=KP, K=K, ACC=tl.float32)
    phi = "bf16" if split else f32
    ptr = dict(H=st, PHI=phi, PHI_LO=phi, H0=st)
    ptr |= {a: f32 for a in ("BIAS", "ALPHA", "POST", "RES", "Z", "RINV")}
    scal = {"T": T, "D": ("i32", d), "K": ("i32", K), "eps": ("fp32", 1e-6), "iters": ("i32", 20)}
    meta = dict(common, SPLIT=split, PREC=prec, ROUND=False)
    out.append(Launch("mhc_fwd", mp.__name__, "_manifold_pre_fwd", ptr, scal, meta, mp._fwd_tuned))
    ptr = dict(H=st, G_H0=st)
    names = ("G_POST", "G_RES", "Z", "RINV", "BIAS", "ALPHA", "PRE", "DZS", "CX", "PART")
    ptr |= {a: f32 for a in names}
    scal = {"T": T, "D": ("i32", d), "K": ("i32", K), "iters": ("i32", 20)}
    scal["segment"] = ("i32", sinkhorn.backward_segment(20))
    out.append(
        Launch(
            "mhc_bwd_coef", mp.__name__, "_manifold_pre_bwd_coef", ptr, scal, common, mp._coef_tuned
        )
    )
    ptr = dict(H=st, G_H0=st, G_PASS=st, G_H=st)
    ptr |= {a: f32 for a in ("PRE", "DZS", "CX", "PHI", "G_PHI")}
    scal = {"T": T, "D": ("i32", d), "K": ("i32", K), "per_split": ("i32", 512)}
    meta = dict(common, HAS_PASS=True, SPLIT=split, PREC=prec, ROUND=False)
    out.append(
        Launch(
            "mhc_bwd_state",
            mp.__name__,
            "_manifold_pre_bwd_state",
            ptr,
            scal,
            meta,
            mp._state_kernel(NP),
        )
    )

    # the stand-alone Sinkhorn-Knopp kernels (mHC with impl="triton" outside the fused read-out)
    out.extend(_sinkhorn_launches(n, tokens))
    return out


def _params(fn) -> list[tuple[str, bool]]:
    """``[(argument, is constexpr)]`` of a ``@triton.jit`` function, also when it was made for
    the interpreter (``TRITON_INTERPRET=1``, as in the test suite)."""
    if hasattr(fn, "params"):
        return [(p.name, p.is_constexpr) for p in fn.params]
    sig = inspect.signature(fn.fn).parameters.values()
    return [(p.name, "constexpr" in str(p.annotation)) for p in sig]


def _sinkhorn_launches(n: int, tokens: int) -> list[Launch]:
    """The ``_sinkhorn*_kernel`` functions of :mod:`hclib.kernels.sinkhorn`, found by name; their
    arguments typed by convention (``*_ptr``: float32 buffers, ``flag*``: int32)."""
    import torch

    from hclib.kernels import sinkhorn

    known = {
        "NP": sinkhorn.padded_rate(n),
        "BLOCK_T": sinkhorn._block_tokens(n, torch.device("cuda")),
        "N": n,
    }
    ints = {"T": tokens, "n": n, "iters": 20, "segment": sinkhorn.backward_segment(20)}
    out = []
    for name in sorted(vars(sinkhorn)):
        fn = getattr(sinkhorn, name)
        if not (name.startswith("_sinkhorn") and name.endswith("_kernel")):
            continue
        if not hasattr(fn, "arg_names"):  # not a @triton.jit function
            continue
        pointers, scalars, constexprs, variants = {}, {}, {}, [{}]
        for arg, is_constexpr in _params(fn):
            if is_constexpr:
                if arg == "REDO":
                    variants = [{"REDO": False}, {"REDO": True}]
                elif arg in known:
                    constexprs[arg] = known[arg]
            elif arg.endswith("_ptr"):
                pointers[arg] = "i32" if arg.startswith("flag") else "fp32"
            elif arg in ints:
                scalars[arg] = ("i32", ints[arg])
        for v in variants:
            label = name.strip("_") + "".join(f"[{k}={x}]" for k, x in v.items())
            meta = {**constexprs, **v}
            out.append(Launch(label, sinkhorn.__name__, name, pointers, scalars, meta))
    return out


# ------------------------------------------------------------------------------- running
def plan(archs, ns, d, dtypes, tokens, only: str = "", pruned_too: bool = False):
    """``(rows, jobs)``: one row per (target, kernel, config, n, dtype) without its numbers, and
    the distinct compiles; ``row["job"]`` indexes ``jobs`` (None for a pruned config, unless
    ``pruned_too``). ``only``: comma-separated substrings, to keep the kernels whose label
    contains one of them."""
    rows, index, jobs = [], {}, []
    keep = [x for x in only.split(",") if x]
    for arch in archs:
        for n in ns:
            for dtype in dtypes:
                for launch in launches(n, d, dtype, tokens):
                    if keep and not any(x in launch.kernel for x in keep):
                        continue
                    for label, pruned, job in _jobs(launch, arch, d % 16 == 0):
                        if pruned and not pruned_too:
                            job = None
                        elif job not in index:
                            index[job] = len(jobs)
                            jobs.append(job)
                        row = dict(arch=arch, kernel=launch.kernel, config=label, n=n, d=d)
                        row |= dict(dtype=dtype, pruned=pruned, job=index.get(job))
                        rows.append(row)
    return rows, jobs


def run(rows, jobs, processes: int, cache: Path | None = None):
    """Compile ``jobs`` in ``processes`` processes and fill in every row's numbers (results kept
    in and read from the folder ``cache`` unless it is None). Returns ``(rows, cache hits)``."""
    work = functools.partial(compile_job, cache=cache)
    hits = 0
    if cache is not None:
        for j in jobs:
            fn = getattr(importlib.import_module(j.module), j.fn)
            hits += _cache_file(j, fn, cache).exists()
    with tempfile.TemporaryDirectory() as triton_cache:
        if processes > 1:
            ctx = multiprocessing.get_context("spawn")
            with ctx.Pool(processes, _worker_init, (triton_cache,)) as pool:
                results = pool.map(work, jobs, chunksize=1)
        else:
            _worker_init(triton_cache)
            results = [work(j) for j in jobs]
    for row in rows:
        if row["job"] is None:  # pruned, not compiled: no numbers
            row |= dict(registers=None, spill_bytes=None, shared_bytes=None, fits=None)
            continue
        regs, spills, shared = results[row["job"]]
        row |= dict(registers=regs, spill_bytes=spills, shared_bytes=shared)
        row["fits"] = fits(spills, shared, row["arch"])
    return rows, hits


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(rows) -> str:
    """The rows as a Markdown table, in the order of :data:`COLUMNS`."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [_cell(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(rows) -> str:
    """Per (target, kernel): configs kept, the most registers, spill bytes and shared memory
    among them, as a Markdown table."""
    groups: dict[tuple, list] = {}
    for r in rows:
        if not r["pruned"]:
            groups.setdefault((r["arch"], r["kernel"]), []).append(r)
    lines = [
        "| arch | kernel | configs | max registers | max spill_bytes | max shared KiB | all fit |",
        "|---|---|---|---|---|---|---|",
    ]
    for (arch, kernel), rs in groups.items():
        shared = max(r["shared_bytes"] for r in rs) / 1024
        lines.append(
            f"| {arch} | {kernel} | {len(rs)} | {max(r['registers'] for r in rs)} | "
            f"{max(r['spill_bytes'] for r in rs)} | {shared:.1f} | "
            f"{_cell(all(r['fits'] for r in rs))} |"
        )
    return "\n".join(lines)


def write(
    rows, out: Path, argv: list[str], seconds: float, version: str, compiles: tuple[int, int]
) -> None:
    """``kernel_resources.csv`` and ``kernel_resources.md`` in ``out``; ``compiles``: (distinct
    compiles, how many of them were read from the cache)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "kernel_resources.csv", "w", newline="") as f:
        w = csv.DictWriter(f, COLUMNS, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    bad = failures(rows)
    pruned = sum(r["pruned"] for r in rows)
    limits = ", ".join(
        f"sm_{a}: {SHARED_LIMIT[a] // 1024} KiB" for a in sorted({r["arch"] for r in rows})
    )
    text = [
        "# Register and shared-memory use of the Triton kernels, per autotune config",
        "",
        f"`python benchmarks/kernel_resources.py {' '.join(argv)}` (Triton {version}, "
        f"compiled ahead of time with its bundled ptxas; no GPU): {compiles[0]} distinct "
        f"compiles ({compiles[1]} of them read from the result cache) in {seconds:.0f} s.",
        "",
        "`registers`: per thread; `spill_bytes`: spill stores plus spill loads per thread; "
        f"`shared_bytes`: per block, against the per-block limit ({limits}). "
        "`fits`: no spills and shared memory within the limit. `pruned`: the kernel's "
        "`prune_configs_by` removes the config at this shape, so autotuning never runs it "
        "(not compiled: `-`).",
        "",
        f"{len(rows)} rows, {pruned} pruned; configs that autotuning may pick and that do not "
        f"fit: **{len(bad)}**.",
        "",
        "## Per kernel and target (configs autotuning may pick, over n and dtypes)",
        "",
        summary(rows),
        "",
        "## Every config",
        "",
        table(rows),
        "",
    ]
    (out / "kernel_resources.md").write_text("\n".join(text))


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _compiling_environment()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, action="append", help="compute capability, e.g. 90")
    ap.add_argument("--n", type=_ints, default=[2, 4, 8], help="streams (and FC fractions)")
    ap.add_argument("--d", type=int, default=4096, help="model width")
    ap.add_argument("--dtype", default="bf16,fp32", help=f"state dtypes, of {sorted(DTYPES)}")
    ap.add_argument("--tokens", type=int, default=32768, help="tokens, for the pruning rules")
    ap.add_argument("--jobs", type=int, default=2, help="compile processes")
    ap.add_argument("--kernels", default="", help="only these kernels (substrings, a,b)")
    ap.add_argument("--out", type=Path, help="folder for kernel_resources.csv and .md")
    ap.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "hclib" / "kernel_resources",
        help="folder of results kept between runs, by job and kernel source (default: %(default)s)",
    )
    ap.add_argument("--no-cache", action="store_true", help="compile everything again")
    ap.add_argument(
        "--compile-pruned",
        action="store_true",
        help="also compile the configs that pruning removes (default: list them, '-' numbers)",
    )
    args = ap.parse_args(argv)
    archs = args.arch or [90, 80]
    for a in archs:
        if a not in SHARED_LIMIT:
            ap.error(f"--arch {a}: no shared-memory limit known; known: {sorted(SHARED_LIMIT)}")
    dtypes = [x for x in args.dtype.split(",") if x]
    for x in dtypes:
        if x not in DTYPES:
            ap.error(f"--dtype {x}: expected one of {sorted(DTYPES)}")
    for n in args.n:
        if n < 1 or args.d % n:
            ap.error(f"--d {args.d} must be divisible by every n (FC fractions), got n = {n}")

    import triton

    start = time.perf_counter()
    rows, jobs = plan(archs, args.n, args.d, dtypes, args.tokens, args.kernels, args.compile_pruned)
    print(f"{len(rows)} configs, {len(jobs)} distinct compiles, {args.jobs} processes", flush=True)
    rows, hits = run(rows, jobs, args.jobs, None if args.no_cache else args.cache)
    seconds = time.perf_counter() - start
    print(table(rows))
    bad = failures(rows)
    print(
        f"\n{len(rows)} configs ({sum(r['pruned'] for r in rows)} pruned), {len(jobs)} compiles "
        f"({hits} from the cache) in {seconds:.0f} s"
    )
    if args.out:
        write(rows, args.out, argv, seconds, triton.__version__, (len(jobs), hits))
        print(f"wrote {args.out / 'kernel_resources.csv'} and kernel_resources.md")
    if bad:
        print(f"FAIL: {len(bad)} configs that autotuning may pick spill or exceed shared memory:")
        for r in bad:
            print(
                f"  sm_{r['arch']} {r['kernel']} {r['config']} n={r['n']} {r['dtype']}: "
                f"{r['registers']} registers, {r['spill_bytes']} spill bytes, "
                f"{r['shared_bytes']} shared bytes"
            )
        return 1
    print("OK: every config that autotuning may pick fits")
    return 0


if __name__ == "__main__":
    sys.exit(main())
