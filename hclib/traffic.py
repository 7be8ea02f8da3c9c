"""Memory traffic of the connections: the counts that chapter 7 and the benchmark share.

A connection does a handful of multiply-adds per element of its state, far too few to keep a
GPU's arithmetic units busy: its speed is set by the bytes it moves between the GPU's memory
(HBM) and its chips. This module counts those bytes, per token and in elements (multiply by
the element size, 2 for bfloat16):

* :func:`mhc_table2`: the mHC paper's Table 2 (forward reads and writes of an unfused HC layer
  and of the residual add, mHC Section 3.2), recomputed from the shapes;
  :func:`post_res_traffic`: the write-in and mixing step, unfused and fused (mHC Section 4.3).
* :func:`floor_ops`, :func:`floor_elements`, :func:`floor_bytes`: two *floors* of the work the
  benchmark times, each under its own assumption (:data:`FUSIONS`, below): ``"per-op"``, every
  op of a connection reading its inputs once and writing its outputs once, and
  ``"cross-layer"``, one layer's write-in fused with the next layer's read-out;
  :func:`recompute_elements`: what recomputing the connections in the backward pass adds;
  :func:`kernel_elements`: what ``hclib.kernels`` moves, by their design, against both floors.
* :func:`count_traffic`: what eager PyTorch moves, op by op, measured on any function.
* :func:`hc_activation_elements` (HC Appendix B) and :func:`recompute_cost`,
  :func:`best_recompute_block`, :func:`recompute_block_estimate` (mHC Eq. 20): memory kept for
  the backward pass and the recomputation block that minimises it.
* :func:`device_peak`: peak memory bandwidth and bfloat16 throughput of known GPUs, by name.

**The connection's work** (identical for every implementation the benchmark compares). Given
the state ``H`` (``(T, k, w)``: ``k = n`` streams of ``w = d`` for HC and mHC, ``k = m``
fractions of ``w = d/m`` for FC, ``(T, d)`` for the residual) and a branch output ``y``
``(T, d)`` that does not depend on the branch input (so the branch costs nothing), compute
the branch input ``h0 = pre(H)`` and the next state ``H' = post_res(H, y)``, including the
input-dependent mappings; backward, from cotangents of ``h0`` and ``H'``, compute the
gradients of ``H``, ``y`` and the connection's parameters.

**The floor.** In a network ``y`` is computed from ``h0``, so a connection is two ops with the
branch between them: ``pre`` (read ``H``, write ``h0``) and ``post_res`` (read ``H`` and ``y``,
write ``H'``). Each op must read its inputs and write its outputs at least once; nothing of the
size of ``H`` survives from one op to the next on chip. The backward pass runs the same ops in
reverse, each reading the gradient of its output and the inputs its gradients need, and writing
the gradients of its inputs; the two contributions to the gradient of ``H`` are summed in
place (the second op reads the first's partial gradient once). Per token, with the state
``k d`` elements wide (``k = n`` for HC and mHC, ``k = 1`` for FC whose state is ``d`` wide):

=====================  ===============================  =====================
op                     reads                            writes
=====================  ===============================  =====================
pre                    ``H``: k d                        ``h0``: d
post_res               ``H``, ``y``: (k+1) d             ``H'``: k d
post_res backward      ``dH'``, ``H``, ``y``: (2k+1) d   ``dH``, ``dy``: (k+1) d
pre backward           ``dh0``, ``H``, ``dH``: (2k+1) d  ``dH``: k d
=====================  ===============================  =====================

so forward ``(3k+2) d``, backward ``(6k+3) d``, both ``(9k+5) d`` (41 d for n = 4). The
residual ``h + y`` has no ``pre`` (``h0`` is ``h`` itself): forward reads ``h, y`` and writes
``h'`` (3 d); backward hands the gradient of ``h'`` to ``y`` as it is and adds the branch's
gradient to it for ``h`` (reads 2 d, writes d): 6 d in all. The per-token mappings (at most
``n^2 + 2n`` numbers) and the parameters (a fixed size, read once for all tokens) are left out:
at ``d = 4096`` they are under 0.1 % of the floor.

**The cross-layer floor.** The per-op floor assumes that ``pre`` and ``post_res`` are
separate kernels. Nothing forces the cut there: ``post_res`` of layer ``l`` and ``pre`` of
layer ``l+1`` have no branch between them, so one kernel can read ``H_l`` and ``y_l``, form
``H_{l+1}`` on chip and write both ``H_{l+1}`` and the next branch input ``h0_{l+1}`` (the
next layer's mappings are computed from ``H_{l+1}`` in the same kernel). The only assumption
left is that no state-sized tensor stays on chip *across a branch*. Its backward reads
``dH_{l+1}``, ``dh0_{l+1}``, ``H_l`` and ``y_l`` (``H_{l+1}`` is recomputed on chip) and
writes ``dH_l`` and ``dy_l``. Per connection: forward ``(2k+2) d``, backward ``(3k+3) d``,
``(5k+5) d`` in all (25 d at n = 4, 4.2 residual adds, against 41 d and 6.8 for the per-op
floor). The residual add is a single op already; its floor is the same under both.

**Element sizes.** :func:`floor_bytes` takes the element size of the state (``H``, ``H'`` and
their gradients) apart from that of the branch's tensors (``h0``, ``y`` and theirs): a float32
state under bfloat16 autocast costs 4 bytes per state element where the branch's cost 2.

Derived in: notebooks/07_memory_traffic_and_fused_kernels.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "CONNECTIONS",
    "DEVICE_PEAKS",
    "FUSIONS",
    "MODES",
    "DevicePeak",
    "OpTraffic",
    "Traffic",
    "TrafficRow",
    "best_recompute_block",
    "count_traffic",
    "device_peak",
    "floor_bytes",
    "floor_elements",
    "floor_ops",
    "hc_activation_elements",
    "kernel_elements",
    "mhc_table2",
    "post_res_traffic",
    "recompute_block_estimate",
    "recompute_cost",
    "recompute_elements",
]

#: the connections whose traffic is counted (the residual add is the baseline)
CONNECTIONS = ("residual", "hc", "fc", "mhc")
#: what is timed: the forward pass, the backward pass, or both
MODES = ("forward", "backward", "forward+backward")
#: the floors' assumptions: one kernel per op ("per-op") or a layer's write-in fused with the
#: next layer's read-out ("cross-layer"); see the module docstring
FUSIONS = ("per-op", "cross-layer")


@dataclass(frozen=True)
class Traffic:
    """Elements (or bytes) read and written; ``a + b`` adds both, ``a * k`` scales both."""

    read: int
    write: int

    @property
    def total(self) -> int:
        """``read + write``."""
        return self.read + self.write

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.read + other.read, self.write + other.write)

    def __mul__(self, k: int) -> Traffic:
        return Traffic(self.read * k, self.write * k)

    __rmul__ = __mul__


class TrafficRow(NamedTuple):
    """One line of mHC's Table 2: the method, the operation and its traffic per token."""

    method: str
    op: str
    traffic: Traffic


def _check_positive(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def mhc_table2(n: int, C: int) -> list[TrafficRow]:
    """mHC Table 2: forward memory access per token of the residual add and of unfused HC.

    Elements per token, as the paper counts them (mHC Section 3.2), the branch's own traffic
    excluded. HC computes its mappings (reading the ``n`` streams, writing ``n^2 + 2n``
    coefficients) and then applies ``H_pre``, ``H_post`` and ``H_res`` and adds the two parts,
    each in a kernel of its own that reads its inputs from memory and writes its output back.
    Summed, HC reads ``(5n+1) C + n^2 + 2n`` and writes ``(3n+1) C + n^2 + 2n``; the residual
    reads ``2C`` and writes ``C``.

    Args:
        n: expansion rate (streams).
        C: model width (the book's ``d``).

    Returns:
        rows ``(method, op, Traffic)`` with method ``"residual"`` or ``"hc"``, in the paper's order.
    """
    n, C = _check_positive(n, "n"), _check_positive(C, "C")
    return [
        TrafficRow("residual", "residual merge", Traffic(2 * C, C)),
        TrafficRow("hc", "calculate H_pre, H_post, H_res", Traffic(n * C, n * n + 2 * n)),
        TrafficRow("hc", "apply H_pre", Traffic(n * C + n, C)),
        TrafficRow("hc", "apply H_post", Traffic(C + n, n * C)),
        TrafficRow("hc", "apply H_res", Traffic(n * C + n * n, n * C)),
        TrafficRow("hc", "residual merge", Traffic(2 * n * C, n * C)),
    ]


def post_res_traffic(n: int, C: int, fused: bool) -> Traffic:
    """Forward traffic per token of the write-in and mixing ``H' = H_res H + H_post^T y``.

    Unfused (mHC Table 2's last three HC rows): ``H_post^T y`` and ``H_res H`` each go to memory
    and a third kernel adds them: reads ``(3n+1) C + n^2 + n``, writes ``3n C``. Fused
    (mHC Section 4.3's ``F_post,res``): one kernel reads the streams, the branch output and the
    coefficients once and writes the result once: reads ``(n+1) C + n^2 + n``, writes ``n C``.

    Args:
        n: expansion rate; C: model width.
        fused: which of the two.
    """
    n, C = _check_positive(n, "n"), _check_positive(C, "C")
    if fused:
        return Traffic((n + 1) * C + n * n + n, n * C)
    rows = {row.op: row.traffic for row in mhc_table2(n, C) if row.method == "hc"}
    return rows["apply H_post"] + rows["apply H_res"] + rows["residual merge"]


def _state_width(kind: str, rate: int) -> int:
    """The state's width in units of ``d``: ``n`` for HC and mHC, 1 for FC and the residual."""
    if kind not in CONNECTIONS:
        raise ValueError(f"kind must be one of {CONNECTIONS}, got {kind!r}")
    _check_positive(rate, "rate")
    return rate if kind in ("hc", "mhc") else 1


#: Per op: (state read, branch-sized read, state written, branch-sized written), in units of
#: the state's width ``k d`` and of ``d``; "fwd"/"bwd" mark the direction.
_FLOOR_TERMS: dict[tuple[str, str], dict[str, tuple[str, tuple[int, int, int, int]]]] = {
    ("residual", "per-op"): {
        "add": ("fwd", (1, 1, 1, 0)),  # read h, y; write h'
        "add backward": ("bwd", (1, 1, 1, 0)),  # read dh', dh0; write dh (dy is dh' itself)
    },
    ("connection", "per-op"): {
        "pre": ("fwd", (1, 0, 0, 1)),  # read H; write h0
        "post_res": ("fwd", (1, 1, 1, 0)),  # read H, y; write H'
        "post_res backward": ("bwd", (2, 1, 1, 1)),  # read dH', H, y; write dH, dy
        "pre backward": ("bwd", (2, 1, 1, 0)),  # read dh0, H, dH; write dH (in place)
    },
    ("connection", "cross-layer"): {
        "post_res + next pre": ("fwd", (1, 1, 1, 1)),  # read H, y; write H', next h0
        "post_res + next pre backward": ("bwd", (2, 2, 1, 1)),  # read dH', dh0', H, y; write dH, dy
    },
}
_FLOOR_TERMS["residual", "cross-layer"] = _FLOOR_TERMS["residual", "per-op"]


def _floor_terms(
    kind: str, rate: int, mode: str, fusion: str
) -> tuple[int, dict[str, tuple[int, int, int, int]]]:
    k = _state_width(kind, rate)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    table = _FLOOR_TERMS["residual" if kind == "residual" else "connection", fusion]
    wanted = {"forward": ("fwd",), "backward": ("bwd",), "forward+backward": ("fwd", "bwd")}[mode]
    return k, {op: terms for op, (way, terms) in table.items() if way in wanted}


def floor_ops(
    kind: str, d: int, rate: int = 1, mode: str = "forward+backward", fusion: str = "per-op"
) -> dict[str, Traffic]:
    """A floor of the connection's work, op by op, in elements per token (module docstring).

    Args:
        kind: ``"residual"``, ``"hc"``, ``"fc"`` or ``"mhc"``.
        d: model width.
        rate: ``n`` for HC and mHC, ``m`` for FC (the floor does not depend on ``m``: the
            state is ``d`` wide for any ``m``); ignored for the residual.
        mode: ``"forward"``, ``"backward"`` or ``"forward+backward"``.
        fusion: ``"per-op"`` (``pre`` and ``post_res`` separate kernels) or ``"cross-layer"``
            (``post_res`` of one layer fused with ``pre`` of the next), :data:`FUSIONS`.

    Returns:
        ``{op name: Traffic}`` in execution order.
    """
    d = _check_positive(d, "d")
    k, terms = _floor_terms(kind, rate, mode, fusion)
    return {
        op: Traffic((rs * k + ro) * d, (ws * k + wo) * d) for op, (rs, ro, ws, wo) in terms.items()
    }


def floor_elements(
    kind: str, d: int, rate: int = 1, mode: str = "forward+backward", fusion: str = "per-op"
) -> Traffic:
    """A floor of the connection's work in elements per token: the sum of :func:`floor_ops`.

    Per-op: forward ``(3k+2) d``, backward ``(6k+3) d``; cross-layer: forward ``(2k+2) d``,
    backward ``(3k+3) d``; ``k = n`` (HC, mHC) or ``k = 1`` (FC); the residual ``3 d`` each way
    under both.
    """
    total = Traffic(0, 0)
    for traffic in floor_ops(kind, d, rate, mode, fusion).values():
        total = total + traffic
    return total


def floor_bytes(
    kind: str,
    d: int,
    rate: int = 1,
    mode: str = "forward+backward",
    element_size: int = 2,
    fusion: str = "per-op",
    state_element_size: int | None = None,
) -> int:
    """Bytes per token of a floor: :func:`floor_elements` with the state's elements (``H``,
    ``H'`` and their gradients) at ``state_element_size`` bytes (default: ``element_size``)
    and the branch-sized ones (``h0``, ``y`` and theirs) at ``element_size`` (2: bfloat16)."""
    d = _check_positive(d, "d")
    element_size = _check_positive(element_size, "element_size")
    state_size = element_size if state_element_size is None else state_element_size
    state_size = _check_positive(state_size, "state_element_size")
    k, terms = _floor_terms(kind, rate, mode, fusion)
    state = sum(rs + ws for rs, _, ws, _ in terms.values()) * k * d
    other = sum(ro + wo for _, ro, _, wo in terms.values()) * d
    return state * state_size + other * element_size


def recompute_elements(kind: str, d: int, rate: int = 1, fusion: str = "per-op") -> Traffic:
    """What recomputing a connection in the backward pass adds per token and layer, in elements.

    Recomputation discards the connection's outputs after the forward pass and runs its
    forward again before its backward: it moves the forward floor once more, ``(3k+2) d``
    per-op or ``(2k+2) d`` cross-layer, on top of :func:`floor_elements`' forward and backward.
    (Reading the kept state alone, ``k d``, would leave out the rewritten ``h0`` and ``H'``.)
    """
    return floor_elements(kind, d, rate, "forward", fusion)


def kernel_elements(kind: str, d: int, rate: int = 1) -> tuple[Traffic, Traffic]:
    """What ``hclib.kernels`` moves per token, forward and backward, by their design: the
    ``(fewest, most)`` elements, as :class:`Traffic` of forward+backward.

    The counts are those of the kernels' docstrings (``s = 1``): HC's read-out
    (:mod:`hclib.kernels.hyper_pre`) and post+res (:mod:`hclib.kernels.post_res`) move exactly
    the per-op floor when their second pass over a token's state is served from the L2 cache,
    and ``n d`` more forward and ``(n + 1) d`` more backward when it is not; mHC's read-out
    (:mod:`hclib.kernels.manifold_pre`) moves ``(n + 1) d`` more backward in any case (its two
    backward kernels both read ``H`` and ``dh0``), and ``n d`` more forward without L2 reuse:
    46 d to 50 d at n = 4 against the floor's 41 d; FC's (:mod:`hclib.kernels.frac`) moves ``d``
    more forward and ``2 d`` more backward without L2 reuse. All are per-op kernels: none
    reaches the cross-layer floor. The residual add is PyTorch's own.
    """
    d = _check_positive(d, "d")
    k = _state_width(kind, rate)
    floor = floor_elements(kind, d, rate)
    if kind == "residual":
        return floor, floor
    if kind == "hc":
        low_extra, high_extra = Traffic(0, 0), Traffic((2 * k + 1) * d, 0)
    elif kind == "mhc":
        low_extra = Traffic((k + 1) * d, 0)
        high_extra = low_extra + Traffic(k * d, 0)
    else:  # fc
        low_extra, high_extra = Traffic(0, 0), Traffic(3 * d, 0)
    return floor + low_extra, floor + high_extra


# ---------------------------------------------------------------------------------------------
# What eager PyTorch moves


class OpTraffic(NamedTuple):
    """Bytes one ATen operation read and wrote."""

    op: str
    read: int
    write: int


def _bytes_in_memory(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses (a broadcast dimension counts once)."""
    distinct = 1
    for size, stride in zip(t.shape, t.stride(), strict=True):
        if stride != 0:
            distinct *= size
    return distinct * t.element_size()


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen, out = set(), []
    for t in tensors:
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return out


#: ops that allocate without touching the data, and ops that overwrite ``self`` without reading it
_ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
_OVERWRITES = {"copy_", "fill_", "zero_"}


class _TrafficRecorder(TorchDispatchMode):
    """Records, for every ATen op that runs, the bytes of its tensor inputs and outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[OpTraffic] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        in_storages = {t.untyped_storage().data_ptr() for t in ins}
        aliases = all(t.untyped_storage().data_ptr() in in_storages for t in outs)
        name = func.overloadpacket.__name__
        if func.is_view or (aliases and outs and not func._schema.is_mutable):
            return out  # a view or an alias: no data moves
        if name in _ALLOCATIONS:
            return out
        if name in _OVERWRITES:  # copy_(self, src): reads src only
            ins = [t for t in ins if t is not args[0]]
        read = sum(_bytes_in_memory(t) for t in _unique(ins))
        write = sum(_bytes_in_memory(t) for t in _unique(outs))
        if read or write:
            self.ops.append(OpTraffic(name, read, write))
        return out


def count_traffic(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[OpTraffic]]:
    """Run ``fn(*args, **kwargs)`` and record the bytes every ATen op reads and writes.

    This is eager PyTorch's memory traffic if no op finds its inputs in a cache: every op is
    one or more kernels that read their inputs from memory and write their outputs back. Views
    (reshape, transpose, slicing, expand) move nothing and are not recorded; a broadcast input
    is counted once. Call ``loss.backward()`` (or ``torch.autograd.backward``) inside ``fn`` to
    include the backward pass.

    Returns:
        ``(fn's result, [OpTraffic(op, read, write), ...])`` in bytes, in execution order.
    """
    recorder = _TrafficRecorder()
    with recorder:
        result = fn(*args, **kwargs)
    return result, recorder.ops


# ---------------------------------------------------------------------------------------------
# Memory kept for the backward pass


def hc_activation_elements(
    n: int, tokens: int, d: int, layers: int, recompute: bool = False
) -> int:
    """Extra activation memory of HC over the residual network, in elements (HC Appendix B).

    Every transformer layer has two HC modules, and each keeps an ``n``-stream state of
    ``n d`` elements per token: ``2 n s b d L`` for ``s b = tokens`` and ``L = layers``. With the
    streams recomputed in the backward pass, only one state is kept at a time: ``n s b d``.
    """
    n, tokens = _check_positive(n, "n"), _check_positive(tokens, "tokens")
    d, layers = _check_positive(d, "d"), _check_positive(layers, "layers")
    return n * tokens * d if recompute else 2 * n * tokens * d * layers


def recompute_cost(n: int, layers: int, block: int) -> int:
    """Elements per token, in units of ``C``, that mHC's recomputation keeps (mHC Eq. 20).

    The state ``x_{l0}`` (``n C``) at the start of each of the ``ceil(L / L_r)`` blocks, plus,
    while one block is recomputed, ``(n + 2) C`` per layer of it: ``n ceil(L / L_r) + (n+2) L_r``.
    """
    n, layers = _check_positive(n, "n"), _check_positive(layers, "layers")
    block = _check_positive(block, "block")
    if block > layers:
        raise ValueError(f"block={block} is longer than the network's layers={layers}")
    return n * math.ceil(layers / block) + (n + 2) * block


def best_recompute_block(n: int, layers: int) -> int:
    """The integer block size ``L_r`` in ``1..L`` with the least :func:`recompute_cost`
    (the smallest such block on a tie)."""
    return min(range(1, layers + 1), key=lambda b: (recompute_cost(n, layers, b), b))


def recompute_block_estimate(n: int, layers: int) -> float:
    """mHC's closed form for the best block, ``sqrt(n L / (n + 2))`` (mHC Eq. 20), from
    treating ``ceil(L / L_r)`` as ``L / L_r``."""
    n, layers = _check_positive(n, "n"), _check_positive(layers, "layers")
    return math.sqrt(n * layers / (n + 2))


# ---------------------------------------------------------------------------------------------
# Known devices


class DevicePeak(NamedTuple):
    """Peak figures of a GPU from its vendor's data sheet."""

    name: str
    bandwidth_tbs: float  # memory bandwidth, TB/s (10^12 bytes per second)
    bf16_tflops: float | None  # dense bfloat16 tensor-core throughput, TFLOP/s

    @property
    def ridge(self) -> float | None:
        """FLOPs per byte above which a kernel can be compute bound (the roofline's ridge)."""
        return None if self.bf16_tflops is None else self.bf16_tflops / self.bandwidth_tbs


#: ``(regular expression on torch.cuda.get_device_name(), DevicePeak)``, tried in order
DEVICE_PEAKS: tuple[tuple[str, DevicePeak], ...] = (
    (r"\bB200\b", DevicePeak("B200", 8.0, 2250.0)),
    (r"\bH200\b", DevicePeak("H200", 4.8, 989.0)),
    (r"\bH100\b.*\bNVL\b", DevicePeak("H100 NVL", 3.9, 835.0)),
    (r"\bH100\b.*\bPCIe\b", DevicePeak("H100 PCIe", 2.0, 756.0)),
    (r"\bH100\b", DevicePeak("H100 SXM", 3.35, 989.0)),
    (r"\bA100\b.*80\s*GB.*\bPCIe\b", DevicePeak("A100 80GB PCIe", 1.935, 312.0)),
    (r"\bA100\b.*80\s*GB", DevicePeak("A100 80GB SXM", 2.039, 312.0)),
    (r"\bA100\b", DevicePeak("A100 40GB", 1.555, 312.0)),
    (r"\bL40S\b", DevicePeak("L40S", 0.864, 362.0)),
    (r"\bV100\b", DevicePeak("V100", 0.9, None)),
)


def device_peak(device_name: str) -> DevicePeak | None:
    """The peak figures of a GPU from its name (``torch.cuda.get_device_name()``), or None.

    ``"NVIDIA H100 80GB HBM3"`` is an H100 SXM (3.35 TB/s), ``"NVIDIA H100 PCIe"`` 2.0 TB/s,
    ``"NVIDIA H200"`` 4.8 TB/s, ``"NVIDIA A100-SXM4-80GB"`` 2.039 TB/s.
    """
    for pattern, peak in DEVICE_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peak
    return None
