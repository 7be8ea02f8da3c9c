"""Time the connections' work on a GPU: residual add, eager reference, torch.compile, Triton, peers.

usage::

    python benchmarks/connections.py [--connections hc,fc,mhc] [--tokens 4k,16k,32k]
        [--dims 1024,2048,4096] [--n 2,4] [--m 2,4] [--modes forward,backward,forward+backward]
        [--providers residual,torch,compile,triton,lucidrains,liger] [--out results/...] [--smoke]

**The work**, the same for every provider (see :mod:`hclib.traffic`): given the state ``H``
(``(T, n, d)`` for HC and mHC, ``(T, m, d/m)`` for FC, ``(T, d)`` for the residual) and a branch
output ``y`` ``(T, d)`` that does not depend on the branch input (a fixed tensor: the branch
costs nothing), compute the branch input ``h0 = pre(H)`` and the next state
``H' = post_res(H, y)``, the input-dependent mappings included; the backward pass computes the
gradients of ``H``, ``y`` and the parameters from random cotangents of ``h0`` and ``H'``
(``torch.autograd.grad``, so no ``.grad`` is accumulated). "forward" runs with autograd
recording, as in training; "backward" times ``torch.autograd.grad`` on a recorded graph;
"forward+backward" both.

**Providers**: ``residual`` (``h + y``, eager: the baseline every time is divided by);
``torch`` (hclib's reference modules, eager); ``compile`` (the reference under
``torch.compile``); ``triton`` (hclib's fused kernels, ``impl="triton"``); ``lucidrains``
(PyPI ``hyper-connections``: ``HyperConnections`` for HC and FC (``num_fracs=m``),
``ManifoldConstrainedHyperConnections`` for mHC); ``liger`` (PyPI ``liger-kernel``'s fused mHC,
``liger_mhc_coeffs`` + ``liger_mhc_pre`` + ``liger_mhc_post_res``). The peers come with
``pip install -e '.[bench]'``. A provider that cannot run is reported as ``n/a: <reason>``, one
that fails as ``error: <reason>``; neither stops the run.

Differences in the peers' work, which the Markdown report repeats: lucidrains computes the
dynamic weights from an RMSNorm with a learnable gain where hclib's HC and FC use a LayerNorm
without one, and its mHC computes them per stream from that stream's ``d`` features (HC's
parameterization with mHC's sigmoid and Sinkhorn-Knopp) where the mHC paper and hclib read all
``n d`` features at once; it runs under ``torch.autocast(bfloat16)`` with float32 parameters,
the usual mixed-precision set-up (hclib's modules take bfloat16 states without autocast and do
their mixing in float32). Liger's mHC keeps ``phi`` in bfloat16 (its recommended setting),
hclib's in float32. The HC v1 layout of lucidrains stacks the streams in front of the tokens,
``(n, T, d)``; it gets its input in that layout.

**Output**: a table on stdout, and ``connections.csv``, ``connections.md`` (the table, the
floor, the device's peak bandwidth and each target met or missed) and ``connections.png`` in
``--out`` (default ``results/<date>-<device>/``). Times are medians of
``triton.testing.do_bench`` (20th and 80th percentiles beside them), peak memory is
``torch.cuda.max_memory_allocated`` above what was allocated before the timed call.
``--smoke`` runs a tiny size on the CPU with a plain timer (``do_bench`` needs CUDA), Triton in
its interpreter, to check that the script runs and writes its files; its numbers mean nothing
and it writes to a temporary folder unless ``--out`` is given. Never commit CPU results.

Derived in: notebooks/07_memory_traffic_and_fused_kernels (the floor and the targets).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import inspect
import math
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import hclib
from hclib.book import results_dir
from hclib.traffic import MODES, device_peak, floor_bytes

CONNECTIONS = ("hc", "fc", "mhc")
PROVIDERS = ("residual", "torch", "compile", "triton", "lucidrains", "liger")
#: the case the targets are stated for (an H100, bf16, forward+backward of the connection)
TARGET_CASE = {"tokens": 32_768, "d": 4096, "rate": 4, "mode": "forward+backward"}
FIELDS = (
    "connection",
    "rate_name",
    "rate",
    "tokens",
    "d",
    "mode",
    "provider",
    "status",
    "median_ms",
    "p20_ms",
    "p80_ms",
    "floor_bytes_per_token",
    "achieved_gbps",
    "pct_of_peak",
    "x_residual",
    "peak_mem_mib",
    "max_rel_err",
    "note",
    "device",
    "peak_tbs",
    "dtype",
    "smoke",
)
#: provider colours (Okabe-Ito, as hclib.plotting); the residual keeps the book's Pre-Norm colour
PROVIDER_COLORS = {
    "residual": "#D55E00",
    "torch": "#000000",
    "compile": "#E69F00",
    "triton": "#0072B2",
    "lucidrains": "#56B4E9",
    "liger": "#CC79A7",
}


class NotAvailableError(Exception):
    """A provider that cannot run here; the message says why."""


# ---------------------------------------------------------------------------------- the work


class FixedBranch(nn.Module):
    """A branch that costs nothing: it returns the fixed ``y`` ``(T, d)`` and keeps its input."""

    def __init__(self, y: torch.Tensor) -> None:
        super().__init__()
        self.y = y
        self.h0: torch.Tensor | None = None

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        self.h0 = h0
        return self.y


@dataclass
class Work:
    """One provider's connection work on one case.

    ``forward()`` returns ``(h0, H')``; ``inputs`` are what the backward pass differentiates
    (state, branch output, parameters); ``cotangents`` match ``forward()``'s outputs.
    """

    forward: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    inputs: list[torch.Tensor]
    cotangents: tuple[torch.Tensor, torch.Tensor]
    note: str = ""
    module: nn.Module | None = None  # hclib's module, for the tests

    def runner(self, mode: str) -> Callable[[], Any]:
        """The callable a timer runs for ``mode``."""
        inputs, cotangents = self.inputs, self.cotangents
        if mode == "forward":
            return self.forward
        if mode == "backward":
            outputs = self.forward()  # one recorded graph, differentiated again and again
            return lambda: torch.autograd.grad(outputs, inputs, cotangents, retain_graph=True)
        if mode == "forward+backward":
            return lambda: torch.autograd.grad(self.forward(), inputs, cotangents)
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


@dataclass
class Case:
    """One shape: the connection, its rate (``n`` or ``m``), tokens ``T`` and width ``d``."""

    connection: str
    rate: int
    tokens: int
    d: int
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def rate_name(self) -> str:
        return {"hc": "n", "mhc": "n", "fc": "m"}.get(self.connection, "")

    @property
    def state_shape(self) -> tuple[int, ...]:
        T, d, r = self.tokens, self.d, self.rate
        if self.connection == "residual":
            return (T, d)
        if self.connection == "fc":
            return (T, r, d // r)
        return (T, r, d)


def make_tensors(case: Case, device: torch.device, dtype: torch.dtype, seed: int = 0) -> None:
    """The state, the branch output and the cotangents of ``case``, the same for every provider."""
    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    T, d = case.tokens, case.d
    case.tensors = {
        "H": randn(*case.state_shape).requires_grad_(),
        "y": randn(T, d).requires_grad_(),
        "g_h0": randn(T, d),
        "g_out": randn(*case.state_shape),
    }


def _perturb(module: nn.Module, seed: int = 1) -> nn.Module:
    """Move every parameter off its initial value (dynamic projections start at zero), the same
    way for every module of one kind, so that all hclib providers compute the same thing."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return module


def _hclib_module(case: Case, branch: nn.Module, impl: str | None) -> nn.Module:
    classes = {
        "residual": hclib.Residual,
        "hc": hclib.HyperConnection,
        "fc": hclib.FracConnection,
        "mhc": hclib.ManifoldHyperConnection,
    }
    cls = classes[case.connection]
    kwargs: dict[str, Any] = {}
    if case.connection in ("hc", "mhc"):
        kwargs["n"] = case.rate
    elif case.connection == "fc":
        kwargs["m"] = case.rate
    if impl is not None:
        if "impl" not in inspect.signature(cls).parameters:
            raise NotAvailableError(f"hclib.{cls.__name__} has no impl= argument yet")
        kwargs["impl"] = impl
    return cls(case.d, branch, **kwargs)


def _has_impl(case: Case) -> bool:
    cls = {
        "residual": hclib.Residual,
        "hc": hclib.HyperConnection,
        "fc": hclib.FracConnection,
        "mhc": hclib.ManifoldHyperConnection,
    }[case.connection]
    return "impl" in inspect.signature(cls).parameters


def hclib_work(case: Case, provider: str) -> Work:
    """hclib's module for ``case``: ``residual`` and ``torch`` eager, ``compile``, ``triton``."""
    t = case.tensors
    H, y = t["H"], t["y"]
    branch = FixedBranch(y)
    note, compile_whole = "", False
    if provider in ("residual", "torch"):
        module = _hclib_module(case, branch, "torch" if _has_impl(case) else None)
    elif provider == "compile":
        compile_whole = not _has_impl(case)
        module = _hclib_module(case, branch, None if compile_whole else "compile")
        if compile_whole:  # before the impl= switch: compile the whole module (the branch is free)
            note = "torch.compile of the whole module (no impl= yet)"
    elif provider == "triton":
        if not _has_impl(case):
            name = case.connection.upper()
            raise NotAvailableError(f"hclib's {name} has no impl= argument yet")
        from hclib.kernels.dispatch import resolve_impl

        try:
            resolve_impl("triton", H)
        except (ImportError, ValueError) as err:
            raise NotAvailableError(str(err)) from err
        module = _hclib_module(case, branch, "triton")
    else:
        raise ValueError(f"not an hclib provider: {provider!r}")
    module = _perturb(module.to(H.device))
    params = [p for p in module.parameters() if p.requires_grad]
    call = torch.compile(module) if compile_whole else module

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        out = call(H)
        return branch.h0, out

    return Work(forward, [H, y, *params], (t["g_h0"], t["g_out"]), note=note, module=module)


def lucidrains_work(case: Case) -> Work:
    """lucidrains' ``hyper-connections``: HC, FC (``num_fracs=m``) and mHC, with ``branch=None``
    so that ``h0, add_residual = module(H)`` and ``H' = add_residual(y)``."""
    try:
        import hyper_connections
    except ImportError as err:
        raise NotAvailableError(
            "hyper-connections is not installed (pip install -e '.[bench]')"
        ) from err
    t = case.tensors
    T, d, r = case.tokens, case.d, case.rate
    H, y = t["H"], t["y"]
    g_h0, g_out = t["g_h0"], t["g_out"]
    device = H.device
    version = _version("hyper-connections")
    if case.connection == "hc":
        module = hyper_connections.HyperConnections(r, dim=d, layer_index=0)
        # streams in front of the tokens, '(b s) t d' with b = 1: (n, T, d)
        H_in = H.detach().transpose(0, 1).contiguous().requires_grad_()
        y_in = y.unsqueeze(0)  # (1, T, d)
        g_out = g_out.transpose(0, 1).contiguous()
        g_h0 = g_h0.unsqueeze(0)
        note = f"hyper-connections {version} HyperConnections, layout (n, T, d)"
    elif case.connection == "fc":
        module = hyper_connections.HyperConnections(1, dim=d, num_fracs=r, layer_index=0)
        H_in = H.detach().reshape(1, T, d).requires_grad_()  # the fractions are a view of d
        y_in = y.unsqueeze(0)
        g_out, g_h0 = g_out.reshape(1, T, d), g_h0.unsqueeze(0)
        note = f"hyper-connections {version} HyperConnections(num_fracs={r})"
    elif case.connection == "mhc":
        try:  # mHCv2 keeps the streams next to the features: (T, n, d), hclib's layout
            from hyper_connections.mHCv2 import ManifoldConstrainedHyperConnections

            module = ManifoldConstrainedHyperConnections(r, dim=d, layer_index=0)
            H_in, y_in = H, y
            note = f"hyper-connections {version} mHCv2, layout (T, n, d), per-stream weights"
        except ImportError:
            module = hyper_connections.ManifoldConstrainedHyperConnections(r, dim=d, layer_index=0)
            H_in = H.detach().transpose(0, 1).contiguous().requires_grad_()
            y_in = y.unsqueeze(0)
            g_out = g_out.transpose(0, 1).contiguous()
            g_h0 = g_h0.unsqueeze(0)
            note = f"hyper-connections {version} mHC, layout (n, T, d), per-stream weights"
    else:
        raise NotAvailableError(f"hyper-connections has no {case.connection!r}")
    module = module.to(device)
    params = [p for p in module.parameters() if p.requires_grad]

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            h0, add_residual = module(H_in)
            out = add_residual(y_in)
        return h0, out

    return Work(forward, [H_in, y, *params], (g_h0, g_out), note=note)


def liger_work(case: Case) -> Work:
    """Liger-Kernel's fused mHC: coefficients, ``pre`` and ``post_res`` kernels."""
    if case.connection != "mhc":
        raise NotAvailableError("Liger-Kernel implements mHC only")
    t = case.tensors
    H, y = t["H"], t["y"]
    if not H.is_cuda:
        raise NotAvailableError("Liger-Kernel's mHC kernels run on CUDA only")
    try:
        from liger_kernel.transformers.functional import (
            liger_mhc_coeffs,
            liger_mhc_post_res,
            liger_mhc_pre,
        )
    except ImportError as err:
        raise NotAvailableError(
            "liger-kernel with mHC is not installed (pip install -e '.[bench]')"
        ) from err
    n, d, device = case.rate, case.d, H.device
    k = n * n + 2 * n
    g = torch.Generator(device="cpu").manual_seed(2)
    phi = (0.02 * torch.randn(n * d, k, generator=g)).to(device, torch.bfloat16).requires_grad_()
    b = torch.zeros(k, device=device, requires_grad=True)
    alphas = [torch.tensor(0.01, device=device, requires_grad=True) for _ in range(3)]

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        h_pre, h_post, h_res = liger_mhc_coeffs(H, phi, b, *alphas, tmax=20)
        return liger_mhc_pre(H, h_pre), liger_mhc_post_res(H, y, h_post, h_res)

    note = f"liger-kernel {_version('liger-kernel')}, phi in bfloat16"
    return Work(forward, [H, y, phi, b, *alphas], (t["g_h0"], t["g_out"]), note=note)


def build_work(case: Case, provider: str) -> Work:
    """The ``Work`` of ``provider`` on ``case``; :class:`NotAvailableError` if it cannot run."""
    if provider in ("residual", "torch", "compile", "triton"):
        return hclib_work(case, provider)
    if provider == "lucidrains":
        return lucidrains_work(case)
    if provider == "liger":
        return liger_work(case)
    raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# ------------------------------------------------------------------------------ measuring


def time_ms(fn: Callable[[], Any], cuda: bool, warmup: int, rep: int) -> tuple[float, ...]:
    """``(median, 20th, 80th percentile)`` in milliseconds: ``triton.testing.do_bench`` on a GPU
    (``warmup`` and ``rep`` in ms), a plain wall-clock timer on the CPU (``warmup`` untimed
    calls, then ``rep`` timed ones)."""
    if cuda:
        import triton.testing

        q = triton.testing.do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
        return tuple(float(v) for v in q)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(rep, 1)):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    if len(times) == 1:
        return times[0], times[0], times[0]
    cuts = statistics.quantiles(times, n=10, method="inclusive")
    return statistics.median(times), cuts[1], cuts[7]


def peak_memory_mib(fn: Callable[[], Any], cuda: bool) -> float | None:
    """Peak memory one call of ``fn`` allocates above what was allocated before it (CUDA only)."""
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak / 2**20


def _short(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip().splitlines()[0]
    return text if len(text) <= 160 else text[:157] + "..."


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    diff = (out.detach().float() - ref.detach().float()).abs().max()
    return float(diff / ref.detach().float().abs().max().clamp_min(1e-30))


@dataclass
class Settings:
    connections: list[str]
    tokens: list[int]
    dims: list[int]
    n: list[int]
    m: list[int]
    modes: list[str]
    providers: list[str]
    out: Path
    smoke: bool
    warmup: int
    rep: int
    dtype: torch.dtype = torch.bfloat16
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    device_name: str = "cpu"
    peak_tbs: float | None = None
    compile_in_smoke: bool = False


def _cases(s: Settings) -> list[Case]:
    cases = []
    for connection in s.connections:
        rates = s.m if connection == "fc" else s.n
        for rate in rates:
            for T in s.tokens:
                for d in s.dims:
                    if connection == "fc" and d % rate:
                        continue
                    cases.append(Case(connection, rate, T, d))
    return cases


def _row(s: Settings, case: Case, provider: str, mode: str, **values: Any) -> dict[str, Any]:
    row = dict.fromkeys(FIELDS, "")
    row.update(
        connection=case.connection,
        rate_name=case.rate_name,
        rate=case.rate,
        tokens=case.tokens,
        d=case.d,
        mode=mode,
        provider=provider,
        device=s.device_name,
        peak_tbs="" if s.peak_tbs is None else s.peak_tbs,
        dtype=str(s.dtype).removeprefix("torch."),
        smoke=int(s.smoke),
    )
    row.update(values)
    return row


def _measured(
    s: Settings, case: Case, provider: str, mode: str, work: Work, rel_err: float | None
) -> dict:
    cuda = s.device.type == "cuda"
    fn = work.runner(mode)
    median, p20, p80 = time_ms(fn, cuda, s.warmup, s.rep)
    memory = peak_memory_mib(fn, cuda)
    kind = "residual" if provider == "residual" else case.connection
    per_token = floor_bytes(kind, case.d, case.rate, mode, element_size=s.dtype.itemsize)
    gbps = per_token * case.tokens / (median * 1e-3) / 1e9
    values: dict[str, Any] = {
        "status": "ok",
        "median_ms": f"{median:.4f}",
        "p20_ms": f"{p20:.4f}",
        "p80_ms": f"{p80:.4f}",
        "floor_bytes_per_token": per_token,
        "achieved_gbps": f"{gbps:.1f}",
        "peak_mem_mib": "" if memory is None else f"{memory:.1f}",
        "note": work.note,
    }
    if s.peak_tbs:
        values["pct_of_peak"] = f"{100 * gbps / (1000 * s.peak_tbs):.1f}"
    if rel_err is not None:
        values["max_rel_err"] = f"{rel_err:.2e}"
    return values


def run(s: Settings, progress: bool = True) -> list[dict[str, Any]]:
    """Measure every case, provider and mode of ``s``; return the rows of the CSV."""
    from tqdm.auto import tqdm

    cases = _cases(s)
    connection_providers = [p for p in s.providers if p != "residual"]
    residual_shapes = sorted({(c.tokens, c.d) for c in cases}) if "residual" in s.providers else []
    total = (len(cases) * len(connection_providers) + len(residual_shapes)) * len(s.modes)
    bar = tqdm(total=total, desc="connections", disable=not progress, file=sys.stderr)
    rows: list[dict[str, Any]] = []
    residual_ms: dict[tuple[int, int, str], float] = {}

    if "compile" in s.providers:
        # "backward" differentiates one recorded graph repeatedly (retain_graph=True), which a
        # compiled backward that donates its buffers refuses.
        import torch._functorch.config

        torch._functorch.config.donated_buffer = False

    def measure(case: Case, provider: str) -> None:
        label = "residual" if provider == "residual" else case.connection
        if provider == "compile" and s.smoke and not s.compile_in_smoke:
            for mode in s.modes:
                reason = "n/a: skipped by --smoke (compiling takes a minute on a CPU)"
                rows.append(_row(s, case, provider, mode, status=reason))
                bar.update(1)
            return
        bar.set_postfix_str(
            f"{label} {case.rate_name}{case.rate} T={case.tokens} d={case.d} {provider}"
        )
        if provider == "compile":
            torch._dynamo.reset()  # fresh shapes: no recompilation limit, no stale graphs
        work, reason, err = None, "", None
        try:
            work = build_work(case, provider)
            h0, out = work.forward()  # one trial call: compiles, autotunes, surfaces errors
            torch.autograd.grad((h0, out), work.inputs, work.cotangents)
        except NotAvailableError as unavailable:
            reason = f"n/a: {unavailable}"
        except Exception as exc:  # a provider that fails must not stop the run
            reason = f"error: {_short(exc)}"
        if not reason and provider in ("compile", "triton") and "reference" in case.tensors:
            err = _rel_err(out, case.tensors["reference"])
        for mode in s.modes:
            if reason:
                row = _row(s, case, provider, mode, status=reason)
            else:
                try:
                    row = _row(
                        s, case, provider, mode, **_measured(s, case, provider, mode, work, err)
                    )
                except Exception as exc:
                    row = _row(s, case, provider, mode, status=f"error: {_short(exc)}")
            if provider == "residual":
                row.update(connection="residual", rate_name="", rate=1)
                if row["status"] == "ok":
                    residual_ms[(case.tokens, case.d, mode)] = float(row["median_ms"])
            rows.append(row)
            bar.update(1)
        del work
        if s.device.type == "cuda":
            torch.cuda.empty_cache()

    for T, d in residual_shapes:
        case = Case("residual", 1, T, d)
        make_tensors(case, s.device, s.dtype)
        measure(case, "residual")
    for case in cases:
        make_tensors(case, s.device, s.dtype)
        if {"compile", "triton"} & set(connection_providers):
            with torch.no_grad():  # the eager reference's H', to check the others against
                reference = hclib_work(case, "torch")
                case.tensors["reference"] = reference.forward()[1].detach()
                del reference
        for provider in connection_providers:
            measure(case, provider)
        case.tensors.clear()
    bar.close()

    for row in rows:
        key = (row["tokens"], row["d"], row["mode"])
        if row["status"] == "ok" and key in residual_ms:
            row["x_residual"] = f"{float(row['median_ms']) / residual_ms[key]:.2f}"
    return rows


# ------------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One of the issue's targets and how the run did against it."""

    name: str
    status: str  # "met", "missed" or "not measured"
    detail: str


def _ms(rows: Sequence[dict], connection: str, provider: str, rate: int | None, case: dict):
    for row in rows:
        if (
            row["connection"] == connection
            and row["provider"] == provider
            and (rate is None or int(row["rate"]) == rate)
            and int(row["tokens"]) == case["tokens"]
            and int(row["d"]) == case["d"]
            and row["mode"] == case["mode"]
            and row["status"] == "ok"
        ):
            return row
    return None


def _ratio_target(
    name: str, value: float | None, bound: float, at_least: bool, unit: str
) -> Target:
    if value is None:
        return Target(name, "not measured", "a provider of this comparison did not run")
    met = value >= bound if at_least else value <= bound
    sign = ">=" if at_least else "<="
    if at_least:
        margin = (value / bound - 1) * 100
        how = f"{abs(margin):.0f}% {'above' if margin >= 0 else 'short of'} the target"
    else:
        margin = (1 - value / bound) * 100
        how = f"{abs(margin):.0f}% {'under' if margin >= 0 else 'over'} the bound"
    return Target(
        name, "met" if met else "missed", f"{value:.2f}{unit} ({sign} {bound:g}{unit}): {how}"
    )


def evaluate_targets(rows: Sequence[dict], case: dict | None = None) -> list[Target]:
    """The issue's targets, read off the rows at ``case`` (default :data:`TARGET_CASE`).

    Our mHC and HC (Triton): >= 3x faster than eager, >= 1.5x faster than torch.compile,
    faster than lucidrains (and, for mHC, Liger-Kernel), >= 70% of the device's peak
    bandwidth on the floor byte count; our FC within 3x of the residual add.
    """
    case = dict(TARGET_CASE if case is None else case)
    rate = case.pop("rate")
    targets = []

    def speedup(connection: str, other: str) -> float | None:
        ours, theirs = (
            _ms(rows, connection, "triton", rate, case),
            _ms(rows, connection, other, rate, case),
        )
        if ours is None or theirs is None:
            return None
        return float(theirs["median_ms"]) / float(ours["median_ms"])

    for connection in ("mhc", "hc"):
        label = connection.replace("mhc", "mHC").replace("hc", "HC")
        targets.append(
            _ratio_target(
                f"{label} Triton >= 3x faster than eager",
                speedup(connection, "torch"),
                3,
                True,
                "x",
            )
        )
        targets.append(
            _ratio_target(
                f"{label} Triton >= 1.5x faster than torch.compile",
                speedup(connection, "compile"),
                1.5,
                True,
                "x",
            )
        )
        peers = ("liger", "lucidrains") if connection == "mhc" else ("lucidrains",)
        for peer in peers:
            targets.append(
                _ratio_target(
                    f"{label} Triton faster than {peer}", speedup(connection, peer), 1, True, "x"
                )
            )
        ours = _ms(rows, connection, "triton", rate, case)
        pct = ours.get("pct_of_peak") if ours else None
        targets.append(
            _ratio_target(
                f"{label} Triton >= 70% of peak bandwidth on the floor",
                float(pct) if pct not in (None, "") else None,
                70,
                True,
                "%",
            )
        )
    fc = _ms(rows, "fc", "triton", rate, case)
    residual = _ms(rows, "residual", "residual", None, case)
    x = float(fc["median_ms"]) / float(residual["median_ms"]) if fc and residual else None
    targets.append(_ratio_target("FC Triton within 3x of the residual add", x, 3, False, "x"))
    return targets


# ------------------------------------------------------------------------------- reports


def _wide_table(rows: Sequence[dict], providers: Sequence[str]) -> list[str]:
    """Markdown lines: one row per (connection, rate, tokens, d, mode), milliseconds per
    provider, and the Triton kernels' bandwidth and multiple of the residual add."""
    keyed: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        if row["connection"] == "residual":
            continue
        key = (
            row["connection"],
            row["rate_name"],
            row["rate"],
            row["tokens"],
            row["d"],
            row["mode"],
        )
        keyed.setdefault(key, {})[row["provider"]] = row
    residual = {(r["tokens"], r["d"], r["mode"]): r for r in rows if r["connection"] == "residual"}
    columns = [p for p in providers if p != "residual"]
    head = ["connection", "T", "d", "mode", "residual ms", *[f"{p} ms" for p in columns]]
    head += ["triton GB/s", "triton % peak", "triton x residual"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(row: dict | None) -> str:
        if row is None:
            return ""
        if row["status"] != "ok":
            return row["status"].split(":")[0]
        return f"{float(row['median_ms']):.3f}"

    for key, by_provider in keyed.items():
        connection, rate_name, rate, T, d, mode = key
        res = residual.get((T, d, mode))
        triton = by_provider.get("triton")
        ok = triton is not None and triton["status"] == "ok"
        values = [f"{connection} {rate_name}={rate}", str(T), str(d), mode, cell(res)]
        values += [cell(by_provider.get(p)) for p in columns]
        values += [
            triton["achieved_gbps"] if ok else "",
            triton["pct_of_peak"] if ok else "",
            triton["x_residual"] if ok else "",
        ]
        lines.append("| " + " | ".join(values) + " |")
    return lines


def _reasons(rows: Sequence[dict]) -> list[str]:
    seen: dict[tuple[str, str], None] = {}
    for row in rows:
        if row["status"] != "ok":
            label = row["connection"] if row["provider"] != "residual" else "residual"
            seen[(f"{row['provider']} ({label})", row["status"])] = None
    return [f"- {who}: {status}" for who, status in seen]


def write_markdown(rows: Sequence[dict], s: Settings, path: Path) -> None:
    """The report: set-up, the floor, each target met or missed, the table, the n/a reasons."""
    peak = device_peak(s.device_name)
    if s.peak_tbs is None:
        peak_line = f"no peak bandwidth known for {s.device_name!r}: no percentages"
    elif peak is not None and peak.bandwidth_tbs == s.peak_tbs:
        peak_line = f"{s.peak_tbs} TB/s, the data-sheet figure of the {peak.name} (hclib.traffic)"
    else:
        peak_line = f"{s.peak_tbs} TB/s (given with --peak-tbs)"
    notes = sorted({row["note"] for row in rows if row["note"]})
    d = "d"
    lines = [
        "# Connection benchmark",
        "",
        f"- date: {datetime.date.today().isoformat()}; device: {s.device_name}"
        + (" (**--smoke: CPU timer, numbers mean nothing**)" if s.smoke else ""),
        f"- peak memory bandwidth used for the percentages: {peak_line}",
        f"- dtype {str(s.dtype).removeprefix('torch.')}; torch {torch.__version__}, "
        f"triton {_version('triton')}, hyper-connections {_version('hyper-connections')}, "
        f"liger-kernel {_version('liger-kernel')}",
        "- command: `python " + " ".join(["benchmarks/connections.py", *sys.argv[1:]]) + "`",
        "",
        "**The work** (every provider): from the state H and a fixed branch output y (T, d), "
        "compute h0 = pre(H) and H' = post_res(H, y), mappings included; backward from random "
        "cotangents of h0 and H' to the gradients of H, y and the parameters. Times are medians "
        "of `triton.testing.do_bench` in ms.",
        "",
        "**The floor** per token (hclib.traffic.floor_elements: every op reads its inputs and "
        f"writes its outputs once): HC and mHC forward (3n+2){d}, backward (6n+3){d}; FC 5{d} "
        f"and 9{d}; the residual add 3{d} and 3{d}; times {s.dtype.itemsize} bytes. "
        "GB/s = floor bytes / time.",
        "",
        f"## Targets (T={TARGET_CASE['tokens']}, d={TARGET_CASE['d']}, n=m={TARGET_CASE['rate']}, "
        "forward+backward; set for an H100)",
        "",
    ]
    for target in evaluate_targets(rows):
        lines.append(f"- **{target.status}**: {target.name}: {target.detail}")
    lines += ["", "## Times (ms)", "", *_wide_table(rows, s.providers), ""]
    reasons = _reasons(rows)
    if reasons:
        lines += ["## Providers that did not run", "", *reasons, ""]
    if notes:
        lines += ["## Notes on the providers", "", *[f"- {n}" for n in notes], ""]
    lines += [
        "## Differences in the peers' work",
        "",
        "- lucidrains `hyper-connections`: dynamic weights from an RMSNorm with a learnable gain "
        "(hclib: LayerNorm without one); its mHC computes them per stream from d features "
        "(mHC paper and hclib: from all n d features); run under torch.autocast(bfloat16) with "
        "float32 parameters.",
        "- Liger-Kernel mHC: phi in bfloat16 (hclib: float32); 20 Sinkhorn-Knopp iterations as "
        "hclib.",
        "",
    ]
    path.write_text("\n".join(lines))


def write_csv(rows: Sequence[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _number(text: Any) -> float:
    """A CSV cell as a float, NaN when empty."""
    return float(text) if text not in ("", None) else math.nan


def plot(rows: Sequence[dict], path: Path) -> None:
    """Per connection: bandwidth on the floor (top) and time over the residual add (bottom)
    against tokens, at the largest d and rate measured, forward+backward (or the last mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    from hclib.plotting import use_book_style

    use_book_style()
    ok = [r for r in rows if r["status"] == "ok"]
    connections = [c for c in CONNECTIONS if any(r["connection"] == c for r in rows)]
    if not connections:
        return
    modes = [m for m in MODES if any(r["mode"] == m for r in ok)] or ["forward+backward"]
    mode = "forward+backward" if "forward+backward" in modes else modes[-1]
    has_peak = any(r["pct_of_peak"] not in ("", None) for r in ok)
    fig, axes = plt.subplots(
        2, len(connections), figsize=(4.2 * len(connections), 6.4), squeeze=False
    )
    for col, connection in enumerate(connections):
        mine = [r for r in ok if r["connection"] == connection and r["mode"] == mode]
        if not mine:
            axes[0, col].set_title(f"{connection}: nothing ran")
            continue
        d = max(int(r["d"]) for r in mine)
        rate = max(int(r["rate"]) for r in mine if int(r["d"]) == d)
        rate_name = mine[0]["rate_name"]
        chosen = [r for r in mine if int(r["d"]) == d and int(r["rate"]) == rate]
        residual = [
            r
            for r in ok
            if r["connection"] == "residual" and r["mode"] == mode and int(r["d"]) == d
        ]
        for provider in PROVIDERS:
            series = (
                residual
                if provider == "residual"
                else [r for r in chosen if r["provider"] == provider]
            )
            series = sorted(series, key=lambda r: int(r["tokens"]))
            if not series:
                continue
            tokens = [int(r["tokens"]) for r in series]
            y = [_number(r["pct_of_peak"] if has_peak else r["achieved_gbps"]) for r in series]
            style = {"color": PROVIDER_COLORS[provider], "marker": "o", "label": provider}
            axes[0, col].plot(tokens, y, **style)
            if provider != "residual":
                axes[1, col].plot(
                    tokens, [float(r["x_residual"] or "nan") for r in series], **style
                )
        if has_peak:
            axes[0, col].axhline(70, color="#999999", linestyle="--", linewidth=1, label="target")
            axes[0, col].set_ylim(0, 105)
        name = {"hc": "HC", "fc": "FC", "mhc": "mHC"}[connection]
        axes[0, col].set_title(f"{name} {rate_name}={rate}, d={d}, {mode}")
        axes[0, col].set_ylabel(
            "% of peak bandwidth (floor bytes)" if has_peak else "GB/s (floor bytes)"
        )
        axes[1, col].set_ylabel("time / residual add")
        ratios = [v for line in axes[1, col].lines for v in line.get_ydata() if v > 0]
        if ratios:
            axes[1, col].set_yscale("log")
            axes[1, col].yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            axes[1, col].yaxis.set_major_formatter(FormatStrFormatter("%g"))
            axes[1, col].yaxis.set_minor_locator(NullLocator())
        if connection == "fc":
            axes[1, col].axhline(3, color="#999999", linestyle="--", linewidth=1, label="target")
        all_tokens = sorted({int(r["tokens"]) for r in chosen})
        for row_axes in axes[:, col]:
            row_axes.set_xscale("log", base=2)
            row_axes.set_xlim(all_tokens[0] / 1.5, all_tokens[-1] * 1.5)
            row_axes.set_xticks(
                all_tokens, [f"{t // 1024}k" if t >= 1024 else str(t) for t in all_tokens]
            )
            row_axes.minorticks_off()
            row_axes.set_xlabel("tokens T")
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------- CLI


def _ints(text: str) -> list[int]:
    out = []
    for item in text.split(","):
        item = item.strip().lower()
        match = re.fullmatch(r"(\d+)(k?)", item)
        if not match:
            raise argparse.ArgumentTypeError(f"expected integers such as 4096 or 4k, got {item!r}")
        out.append(int(match[1]) * (1024 if match[2] else 1))
    return out


def _choices(allowed: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:  # keeps the order of `allowed`
        items = [item.strip() for item in text.split(",") if item.strip()]
        bad = [item for item in items if item not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {', '.join(allowed)}; got {text!r}"
            )
        return [item for item in allowed if item in items]

    return parse


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time the connections' work (residual, eager, torch.compile, Triton, peers).",
    )
    p.add_argument("--connections", type=_choices(CONNECTIONS), default=list(CONNECTIONS))
    p.add_argument("--tokens", type=_ints, default=None, help="default 4k,16k,32k (--smoke: 16)")
    p.add_argument("--dims", type=_ints, default=None, help="default 1024,2048,4096 (--smoke: 64)")
    p.add_argument("--n", type=_ints, default=None, help="HC and mHC streams, default 2,4")
    p.add_argument("--m", type=_ints, default=None, help="FC fractions, default 2,4")
    p.add_argument("--modes", type=_choices(MODES), default=list(MODES))
    p.add_argument(
        "--providers",
        type=_choices(PROVIDERS),
        default=None,
        help="default all; --smoke skips compile unless it is named here",
    )
    p.add_argument("--out", type=Path, default=None, help="default results/<date>-<device>/")
    p.add_argument("--smoke", action="store_true", help="a tiny size on the CPU: checks the script")
    p.add_argument("--warmup", type=int, default=25, help="do_bench warm-up, ms (CPU: calls)")
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms (CPU: calls)")
    p.add_argument("--peak-tbs", type=float, default=None, help="peak bandwidth, TB/s, if unknown")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        raise SystemExit(
            "benchmarks/connections.py times GPU kernels and found no CUDA device; "
            "run it with --smoke to check the script on the CPU"
        )
    small = args.smoke
    device = torch.device("cuda" if cuda else "cpu")
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = device_peak(device_name)
    s = Settings(
        connections=args.connections,
        tokens=args.tokens or ([16] if small else [4096, 16_384, 32_768]),
        dims=args.dims or ([64] if small else [1024, 2048, 4096]),
        n=args.n or ([2] if small else [2, 4]),
        m=args.m or ([2] if small else [2, 4]),
        modes=args.modes,
        providers=args.providers or list(PROVIDERS),
        compile_in_smoke=bool(args.providers and "compile" in args.providers),
        out=args.out,
        smoke=args.smoke,
        warmup=args.warmup if not small else 0,  # --smoke: the trial call warmed up
        rep=args.rep if not small else 1,
        device=device,
        device_name=device_name,
        peak_tbs=args.peak_tbs if args.peak_tbs else (peak.bandwidth_tbs if peak else None),
    )
    if s.out is None:
        if small:
            s.out = Path(tempfile.mkdtemp(prefix="hclib-bench-smoke-"))
        else:
            s.out = results_dir(device_name)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke and not torch.cuda.is_available():
        # Triton's interpreter runs the kernels on CPU tensors; it must be switched on before
        # hclib.kernels creates its @triton.jit functions.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    s = settings_from(args)
    if s.smoke:
        torch.set_num_threads(1)  # tiny tensors: threads only add start-up noise
    rows = run(s, progress=not args.no_progress)
    s.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, s.out / "connections.csv")
    write_markdown(rows, s, s.out / "connections.md")
    plot(rows, s.out / "connections.png")
    print("\n".join(_wide_table(rows, s.providers)))
    print()
    for target in evaluate_targets(rows):
        print(f"{target.status:>12}: {target.name}: {target.detail}")
    print(f"\nwrote {s.out}/connections.csv, .md and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
