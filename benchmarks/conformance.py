"""Conformance: hclib against the independent implementations, equation by equation.

For every implementation of HC, FC or mHC that the package registries carry, this script copies
one set of weights into both it and the matching ``hclib`` module, so that both *should*
compute the same function, and measures in float64 on the CPU how far apart they are: the
output and every gradient (of the input and of each shared parameter), over several ``n``,
``m``, ``d``, depths and layer ids. Where they differ it neutralises one deviation at a time
(norm type and gain, epsilons, float32 arithmetic, Sinkhorn order and orientation, how the
write-in acts on fractions, per-stream versus flattened norm) and reports the difference after
each step, the equation the step concerns and which side follows the paper. It also compares
``hclib.sinkhorn_knopp`` with an exact float64 log-domain iteration and with POT's Sinkhorn,
and checks which implementations start, at their own initialisation, from the Pre-Norm network.

Peers (the ``conformance`` extra): lucidrains' ``hyper-connections`` (HC; FC through
``num_fracs``; mHC), the DeepSeek-V4 ``DeepseekV4HyperConnection`` of ``transformers``,
Liger-Kernel's ``LigerMHC`` (float32 Triton kernels; in Triton's interpreter without a GPU), POT
and ``mhc``. Each missing peer is skipped with a line that says so.

    python benchmarks/conformance.py            # prints the tables, writes results/<date>-cpu/
    python benchmarks/conformance.py --out /tmp/c --quick

The comparison machinery (:class:`Pair`, :func:`compare`, :func:`hclib_self_pairs`) needs no
peer and is tested on hclib against itself in tests/test_conformance.py.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import importlib.metadata
import math
import os
import sys
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.func import functional_call

if not torch.cuda.is_available():  # Liger-Kernel's Triton kernels then run in the interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

import hclib  # noqa: E402
import hclib.manifold  # noqa: E402
from hclib.book import results_dir  # noqa: E402

Params = dict[str, torch.Tensor]
DTYPE = torch.float64
#: standard deviations of the random Sinkhorn logits
SINKHORN_SCALES = (1.0, 5.0, 20.0)
#: random logit matrices per size and scale (``--quick``: the first 8)
SINKHORN_MATRICES = 64

# --------------------------------------------------------------------------------------------
# The machinery: two functions of one set of leaf parameters, compared output and gradients.
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """One layer computed twice from the same leaf parameters.

    ``peer(leaves, H)`` and ``ours(leaves, H)`` map a state ``H`` in hclib's layout
    ``(B, T, k, w)`` (``k`` streams or fractions of width ``w``) to the next state, each
    building its own module parameters from ``leaves`` by differentiable operations, so that
    the gradients of both sides land on the same leaves and can be compared directly.
    """

    leaves: Params
    peer: Callable[[Params, torch.Tensor], torch.Tensor]
    ours: Callable[[Params, torch.Tensor], torch.Tensor]


@dataclass
class Diff:
    """Largest absolute differences between the two sides of a stack of :class:`Pair`.

    ``out``: of the output; ``grads``: of each gradient, keyed ``"H"`` (the input) and
    ``"<layer>.<leaf>"``; ``scale``: the largest absolute output, for reading ``out``.
    """

    out: float
    grads: dict[str, float] = field(default_factory=dict)
    scale: float = 1.0

    @property
    def grad(self) -> float:
        """The largest gradient difference over the input and every leaf."""
        return max(self.grads.values(), default=0.0)

    @property
    def worst(self) -> str:
        """The gradient with the largest difference."""
        return max(self.grads, key=self.grads.get, default="")


def _run(stack: list[Pair], side: str, H: torch.Tensor, G: torch.Tensor):
    leaves = [
        {k: v.detach().clone().requires_grad_(True) for k, v in p.leaves.items()} for p in stack
    ]
    x = H.detach().clone().requires_grad_(True)
    out = x
    for pair, lv in zip(stack, leaves, strict=True):
        out = getattr(pair, side)(lv, out)
    flat = [x] + [t for lv in leaves for t in lv.values()]
    grads = torch.autograd.grad((out * G).sum(), flat, allow_unused=True)
    names = ["H"] + [f"{i}.{k}" for i, lv in enumerate(leaves) for k in lv]
    return out.detach(), dict(zip(names, grads, strict=True))


def compare(stack: list[Pair], H: torch.Tensor, seed: int = 0) -> Diff:
    """Run the stack on both sides from ``H``; compare outputs and, for one random cotangent
    of the output, the gradients of ``H`` and of every leaf.

    A gradient that is ``None`` on one side (the leaf does not reach that side's output) is
    compared as zeros.
    """
    g = torch.Generator().manual_seed(seed + 7)
    G = torch.randn(H.shape, generator=g, dtype=H.dtype)
    out_p, grads_p = _run(stack, "peer", H, G)
    out_o, grads_o = _run(stack, "ours", H, G)
    diffs = {}
    for name in grads_p:
        a, b = grads_p[name], grads_o[name]
        if a is None and b is None:
            continue
        a = torch.zeros_like(b) if a is None else a
        b = torch.zeros_like(a) if b is None else b
        diffs[name] = float((a - b).abs().max())
    return Diff(out=float((out_p - out_o).abs().max()), grads=diffs, scale=float(out_o.abs().max()))


@contextlib.contextmanager
def float64_arithmetic() -> Iterator[None]:
    """Make ``Tensor.float()`` a no-op on float64 tensors for the duration.

    Some peers cast to float32 inside the module (``x.float()``); under this context they
    compute in float64, which separates rounding from the equations.
    """
    original = torch.Tensor.float

    def _float(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    torch.Tensor.float = _float
    try:
        yield
    finally:
        torch.Tensor.float = original


def _hclib_call(module: nn.Module, params: Params, H: torch.Tensor) -> torch.Tensor:
    return functional_call(module, params, (H,))


def make_branch(d: int, g: torch.Generator) -> nn.Module:
    """A branch ``T`` with its own pre-norm, ``(..., d) -> (..., d)``: LayerNorm, Linear, tanh,
    Linear, in float64 with random weights. The same object serves both sides of a pair."""
    branch = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.Tanh(), nn.Linear(d, d)).to(DTYPE)
    with torch.no_grad():
        for p in branch.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=DTYPE) * (0.3 if p.dim() == 1 else 1.0))
            if p.dim() == 2:
                p.div_(math.sqrt(d))
        branch[0].weight.add_(1.0)
    return branch


def _randn(g: torch.Generator, *shape: int, std: float = 1.0) -> torch.Tensor:
    return torch.randn(shape, generator=g, dtype=DTYPE) * std


def _hc_leaves(kind: str, k: int, w: int, layer_id: int, g: torch.Generator) -> Params:
    """Random leaves in hclib's HC (``kind="hc"``, ``k = n``) or FC (``kind="fc"``, ``k = m``)
    layout, near the paper's initialisation so every term matters: the static weights of
    Eq. 14 / Eq. 15 plus noise, dynamic projections of unit scale, scales 0.5, a norm gain."""
    if kind == "hc":
        static = torch.zeros(k, k + 1, dtype=DTYPE)
        static[layer_id % k, 0] = 1.0
        static[:, 1:] = torch.eye(k, dtype=DTYPE)
    else:
        static = torch.cat([torch.eye(k, dtype=DTYPE)] * 2, dim=1)
    cols = static.shape[1]
    return {
        "static_alpha": static + _randn(g, k, cols, std=0.3),
        "static_beta": 1.0 + _randn(g, k, std=0.3),
        "dynamic_alpha": _randn(g, w, cols, std=1 / math.sqrt(w)),
        "dynamic_beta": _randn(g, w, std=1 / math.sqrt(w)),
        "alpha_scale": 0.5 + _randn(g, 1, std=0.1),
        "beta_scale": 0.5 + _randn(g, 1, std=0.1),
        "norm_gain": 1.0 + _randn(g, w, std=0.3),
    }


def _hclib_alpha_beta(kind: str, k: int, w: int, d: int, branch, layer_id: int, cfg: dict):
    """hclib's HC or FC module in float64 and a function of the leaves that calls it."""
    kwargs = dict(
        norm=cfg.get("norm", "layer"),
        norm_affine=cfg.get("norm_affine", False),
        eps=cfg.get("eps", 1e-5),
        impl="torch",
    )
    if kind == "hc":
        module = hclib.HyperConnection(d, branch, n=k, layer_id=layer_id, **kwargs)
    else:
        module = hclib.FracConnection(d, branch, m=k, layer_id=layer_id, **kwargs)
    module = module.to(DTYPE)

    def ours(lv: Params, H: torch.Tensor) -> torch.Tensor:
        params = {name: lv[name] for name in lv if name != "norm_gain"}
        if kwargs["norm_affine"]:
            params["norm.weight"] = lv["norm_gain"]
            if kwargs["norm"] == "layer":
                params["norm.bias"] = torch.zeros_like(lv["norm_gain"])
        return _hclib_call(module, params, H)

    return module, ours


def hclib_self_pairs(
    kind: str, k: int, d: int, depth: int, seed: int = 0, perturb: str | None = None
) -> list[Pair]:
    """A stack of ``depth`` hclib layers compared with itself through the identity mapping.

    ``kind``: ``"hc"``, ``"fc"`` or ``"mhc"``; ``k``: ``n`` or ``m``. With ``perturb=None`` both
    sides are the same function, so :func:`compare` must give exactly zero. ``perturb`` makes
    the "peer" side differ on purpose (``"transpose"``: mixing matrix transposed;
    ``"norm"``: a different norm epsilon), so the test can see that the comparison detects it.
    """
    g = torch.Generator().manual_seed(seed)
    stack = []
    for layer_id in range(depth):
        branch = make_branch(d, g)
        if kind == "mhc":
            module = hclib.ManifoldHyperConnection(d, branch, n=k, layer_id=layer_id, impl="torch")
            module = module.to(DTYPE)
            leaves = {
                "phi": _randn(g, k * d, k * k + 2 * k, std=1 / math.sqrt(k * d)),
                "bias": module.bias.detach().clone() + _randn(g, k * k + 2 * k, std=0.3),
                "alpha_pre": 0.5 + _randn(g, 1, std=0.1),
                "alpha_post": 0.5 + _randn(g, 1, std=0.1),
                "alpha_res": 0.5 + _randn(g, 1, std=0.1),
            }

            def ours(lv, H, module=module):
                return _hclib_call(module, lv, H)

            peer = ours
            if perturb == "transpose":

                def peer(lv, H, module=module, k=k):
                    b = lv["bias"]
                    res = b[2 * k :].view(k, k).transpose(0, 1).reshape(-1)
                    return _hclib_call(module, {**lv, "bias": torch.cat([b[: 2 * k], res])}, H)

            elif perturb == "norm":
                other = hclib.ManifoldHyperConnection(
                    d, branch, n=k, layer_id=layer_id, impl="torch", eps=1e-2
                ).to(DTYPE)

                def peer(lv, H, other=other):
                    return _hclib_call(other, lv, H)

        else:
            w = d if kind == "hc" else d // k
            leaves = _hc_leaves(kind, k, w, layer_id, g)
            cfg = {"norm": "rms", "norm_affine": True, "eps": 1e-5}
            _, ours = _hclib_alpha_beta(kind, k, w, d, branch, layer_id, cfg)
            peer = ours
            if perturb == "transpose":

                def peer(lv, H, ours=ours, k=k):
                    a = lv["static_alpha"]
                    mixed = torch.cat([a[:, :-k], a[:, -k:].transpose(0, 1)], dim=1)
                    return ours({**lv, "static_alpha": mixed}, H)

            elif perturb == "norm":
                _, peer = _hclib_alpha_beta(kind, k, w, d, branch, layer_id, {**cfg, "eps": 1e-2})
        stack.append(Pair(leaves, peer, ours))
    return stack


def state(kind: str, k: int, d: int, B: int = 2, T: int = 3, seed: int = 0) -> torch.Tensor:
    """A random state in hclib's layout: ``(B, T, n, d)`` (HC, mHC) or ``(B, T, m, d/m)`` (FC),
    streams deliberately different from each other and of different scales."""
    g = torch.Generator().manual_seed(seed + 1)
    w = d // k if kind == "fc" else d
    scale = torch.linspace(0.5, 2.0, k, dtype=DTYPE).view(k, 1)
    return torch.randn(B, T, k, w, generator=g, dtype=DTYPE) * scale + 0.1


# --------------------------------------------------------------------------------------------
# The peers: how each one's parameters map onto hclib's, and the deviations to neutralise.
# --------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One row of the ladder: what is neutralised (cumulatively), the equation it concerns and
    which side follows the paper there."""

    key: str
    what: str
    equation: str
    paper_side: str


@dataclass
class Peer:
    """An independent implementation: its name, package, the hclib module it maps onto, the
    ladder of deviations, and ``build(case, steps_done, seed) -> list[Pair]``."""

    name: str
    package: str
    ours: str
    steps: list[Step]
    build: Callable[[dict, set[str], int], list[Pair]]
    cases: list[dict]
    kind: str
    context: Callable[[set[str]], contextlib.AbstractContextManager] = lambda done: (
        contextlib.nullcontext()
    )
    #: what is left after the last step: float64 rounding, or float32 for float32-only kernels
    floor: float = 1e-12


def version(package: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _streams_to_lucid(H: torch.Tensor) -> torch.Tensor:
    """hclib ``(B, T, n, d)`` -> lucidrains ``(B n, T, d)`` (streams folded into the batch)."""
    B, T, n, d = H.shape
    return H.permute(0, 2, 1, 3).reshape(B * n, T, d)


def _streams_from_lucid(R: torch.Tensor, n: int) -> torch.Tensor:
    Bn, T, d = R.shape
    return R.view(Bn // n, n, T, d).permute(0, 2, 1, 3)


def _lucid_hc_params(kind: str, lv: Params, k: int) -> Params:
    """hclib's HC/FC leaves in lucidrains' layout. For FC (``num_fracs = m``, one stream) the
    columns of ``static_alpha`` and ``dynamic_alpha_fn`` are read as ``(fraction, [input |
    residual])`` pairs, so ``[Y | A]`` is interleaved; ``dynamic_beta_fn`` has one column per
    target fraction, tied here to hclib's single ``W_beta``."""
    sa, da = lv["static_alpha"], lv["dynamic_alpha"]
    if kind == "fc":
        sa = torch.stack((sa[:, :k], sa[:, k:]), dim=-1).flatten(-2)  # (m, 2m) interleaved
        da = torch.stack((da[:, :k], da[:, k:]), dim=-1).flatten(-2)
        db = lv["dynamic_beta"].unsqueeze(-1).expand(-1, k)  # (d/m, m)
    else:
        db = lv["dynamic_beta"]
    return {
        "static_alpha": sa,
        "dynamic_alpha_fn": da,
        "dynamic_alpha_scale": lv["alpha_scale"].reshape(()),
        "static_beta": lv["static_beta"],
        "dynamic_beta_fn": db,
        "dynamic_beta_scale": lv["beta_scale"].reshape(()),
        "norm.gamma": lv["norm_gain"] - 1.0,
    }


def _diagonal_depth_connection(self, branch_output, residuals, *, beta):
    """lucidrains' depth connection with the write-in acting per fraction (FC Eq. 8): target
    fraction ``f`` gets ``beta[f, f] * T(h_0)_f`` instead of ``sum_f' beta[f', f] T(h_0)_f'``."""
    y = self.split_fracs(branch_output)  # (B, T, f, w)
    b = beta.diagonal(dim1=-3, dim2=-1)  # (B, T, s, f)
    out = torch.einsum("btfw,btsf->btfsw", y, b)
    out = out.permute(0, 3, 1, 2, 4).flatten(0, 1).flatten(-2)  # ((B s), T, (f w))
    return self.dropout(self.depth_residual_fn(out, residuals))


def _build_lucid_hc(kind: str):
    def build(case: dict, done: set[str], seed: int) -> list[Pair]:
        from hyper_connections import HyperConnections

        k, d, depth = case["k"], case["d"], case["depth"]
        w = d if kind == "hc" else d // k
        g = torch.Generator().manual_seed(seed)
        cfg = {}
        if "norm" in done:
            cfg.update(norm="rms", norm_affine=True)
        cfg["eps"] = 0.0 if "eps" in done else 1e-5
        stack = []
        for i in range(depth):
            layer_id = case.get("layer0", 0) + i
            branch = make_branch(d, g)
            leaves = _hc_leaves(kind, k, w, layer_id, g)
            _, ours = _hclib_alpha_beta(kind, k, w, d, branch, layer_id, cfg)
            if kind == "hc":
                peer_mod = HyperConnections(k, dim=d, branch=branch, layer_index=layer_id)
            else:
                peer_mod = HyperConnections(1, dim=d, branch=branch, layer_index=0, num_fracs=k)
                if "write_in" in done:
                    peer_mod.depth_connection = types.MethodType(
                        _diagonal_depth_connection, peer_mod
                    )
            peer_mod = peer_mod.to(DTYPE)

            def peer(lv, H, peer_mod=peer_mod, k=k):
                params = _lucid_hc_params(kind, lv, k)
                if kind == "hc":
                    out = functional_call(peer_mod, params, (_streams_to_lucid(H),))
                    return _streams_from_lucid(out, k)
                out = functional_call(peer_mod, params, (H.flatten(-2),))  # (B, T, d)
                return out.unflatten(-1, (k, d // k))

            stack.append(Pair(leaves, peer, ours))
        return stack

    return build


class _FlatRMSNorm(nn.Module):
    """lucidrains' norm, but over all streams at once (mHC Eq. 7's RMSNorm of ``vec(x)``):
    ``x / rms(x over (n, d)) * (1 + gamma)``, without epsilon."""

    def __init__(self, d: int, dims: tuple[int, ...] = (-2, -1)) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(d))
        self.dims = dims  # the stream and feature dimensions of the peer's normed tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms = x.pow(2).mean(dim=self.dims, keepdim=True)  # over streams and features
        return x * torch.rsqrt(ms) * (self.gamma + 1)


def _lucid_mhc_to_hclib(lv: Params, n: int, d: int) -> Params:
    """lucidrains' per-stream mHC parameters as hclib's flattened ones (mHC Eq. 7).

    lucidrains projects each stream's normed features with one shared ``W`` ``(d, 1 + n)``
    (column 0: ``H_pre``; column ``1 + t``: row ``s`` of ``alpha_res``, which mixes as
    ``H' = alpha_res^T H``, so ``H_res[t, s]``) and ``W_beta`` ``(d,)`` (``H_post``). In hclib's
    ``phi`` ``(n d, n^2 + 2n)`` that is a block-diagonal matrix, each block scaled by the norm
    gain ``1 + gamma``; the biases are the static weights, transposed for ``H_res``.
    """
    gain = lv["norm.gamma"] + 1.0
    W = lv["dynamic_alpha_fn"][0] * gain[:, None]  # (d, 1 + n)
    Wb = lv["dynamic_beta_fn"] * gain  # (d,)
    phi = torch.zeros(n, d, n * n + 2 * n, dtype=W.dtype)  # (stream, feature, column)
    for s in range(n):
        phi[s, :, s] = W[:, 0]
        phi[s, :, n + s] = Wb
        for t in range(n):
            phi[s, :, 2 * n + t * n + s] = W[:, 1 + t]
    sa = lv["static_alpha"]
    bias = torch.cat([sa[:, 0], lv["static_beta"], sa[:, 1:].transpose(0, 1).reshape(-1)])
    return {
        "phi": phi.reshape(n * d, -1),
        "bias": bias,
        "alpha_pre": lv["pre_branch_scale"],
        "alpha_post": lv["h_post_scale"].reshape(1),
        "alpha_res": lv["residual_scale"],
    }


def _paper_order_sinkhorn(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """For lucidrains' ``alpha_res`` (``H_res^T``): hclib's column-then-row iteration on
    ``H_res``, transposed back."""
    return hclib.sinkhorn_knopp(logits.transpose(-1, -2), iters).transpose(-1, -2)


def _build_lucid_mhc(case: dict, done: set[str], seed: int, v2: bool = False) -> list[Pair]:
    """lucidrains' mHC (``v2``: the module ``hyper_connections.mHCv2``, which keeps the streams
    beside the features, ``(B, T, n, d)``, and stores ``beta`` as ``(n, 1, 1)`` and
    ``(d, 1)``; the same equations otherwise)."""
    if v2:
        from hyper_connections.mHCv2 import ManifoldConstrainedHyperConnections
    else:
        from hyper_connections import ManifoldConstrainedHyperConnections

    n, d, depth = case["k"], case["d"], case["depth"]
    g = torch.Generator().manual_seed(seed)
    stack = []
    for i in range(depth):
        layer_id = case.get("layer0", 0) + i
        branch = make_branch(d, g)
        init = torch.zeros(n, n + 1, dtype=DTYPE)
        init[layer_id % n, 0] = 1.0
        init[:, 1:] = torch.eye(n, dtype=DTYPE)
        leaves = {
            # residual logits spread wide enough that 20 Sinkhorn rounds have not converged
            "static_alpha": init * 2.0 + _randn(g, n, n + 1, std=2.0),
            "dynamic_alpha_fn": _randn(g, 1, d, n + 1, std=1 / math.sqrt(d)),
            "pre_branch_scale": 0.5 + _randn(g, 1, std=0.1),
            "residual_scale": 0.5 + _randn(g, 1, std=0.1),
            "static_beta": 1.0 + _randn(g, n, std=0.3),
            "dynamic_beta_fn": _randn(g, d, std=1 / math.sqrt(d)),
            "h_post_scale": 0.5 + _randn(g, std=0.1),
            "norm.gamma": _randn(g, d, std=0.3),
        }
        kwargs = {}
        if "sinkhorn" in done:
            kwargs["residual_mix_constraint_fn"] = _paper_order_sinkhorn
        peer_mod = ManifoldConstrainedHyperConnections(
            n, dim=d, branch=branch, layer_index=layer_id, sinkhorn_iters=20, **kwargs
        )
        if "norm" in done:  # v1 norms (B, T, 1, n, d), v2 (B, T, n, 1, d)
            peer_mod.norm = _FlatRMSNorm(d, (-3, -2, -1) if v2 else (-2, -1))
        peer_mod = peer_mod.to(DTYPE)
        ours_mod = hclib.ManifoldHyperConnection(
            d, branch, n=n, layer_id=layer_id, eps=0.0 if "norm" in done else 1e-6, impl="torch"
        ).to(DTYPE)

        def peer(lv, H, peer_mod=peer_mod, n=n, d=d):
            if v2:
                beta = {"static_beta": lv["static_beta"].view(n, 1, 1)}
                beta["dynamic_beta_fn"] = lv["dynamic_beta_fn"].view(d, 1)
                return functional_call(peer_mod, {**lv, **beta}, (H,))
            out = functional_call(peer_mod, lv, (_streams_to_lucid(H),))
            return _streams_from_lucid(out, n)

        def ours(lv, H, ours_mod=ours_mod, n=n, d=d):
            return _hclib_call(ours_mod, _lucid_mhc_to_hclib(lv, n, d), H)

        stack.append(Pair(leaves, peer, ours))
    return stack


def _dsv4_config(n: int, d: int, hc_eps: float = 1e-6):
    from transformers import DeepseekV4Config

    return DeepseekV4Config(hidden_size=d, hc_mult=n, hc_sinkhorn_iters=20, hc_eps=hc_eps)


def _dsv4_to_hclib(lv: Params, n: int) -> Params:
    """DeepSeek-V4's ``fn`` ``(n^2 + 2n, n d)``, ``base`` and ``scale`` ``(3,)`` as hclib's
    ``phi``, ``bias`` and gates. DeepSeek-V4 mixes with ``comb^T`` (``H_res = comb^T``), so
    the ``n x n`` block of columns is transposed."""

    def perm(x: torch.Tensor) -> torch.Tensor:  # (n^2 + 2n, ...): transpose the comb block
        res = x[2 * n :].unflatten(0, (n, n)).transpose(0, 1).flatten(0, 1)
        return torch.cat([x[: 2 * n], res])

    s = lv["scale"]
    return {
        "phi": perm(lv["fn"]).transpose(0, 1),
        "bias": perm(lv["base"]),
        "alpha_pre": s[0:1],
        "alpha_post": s[1:2],
        "alpha_res": s[2:3],
    }


def _dsv4_layer(module: nn.Module, branch, params: Params, H: torch.Tensor) -> torch.Tensor:
    """One connection as ``DeepseekV4DecoderLayer.forward`` uses it (attention half)."""
    post, comb, collapsed = functional_call(module, params, (H,))
    y = branch(collapsed)
    dtype = H.dtype
    return post.to(dtype).unsqueeze(-1) * y.unsqueeze(-2) + torch.matmul(
        comb.to(dtype).transpose(-1, -2), H
    )


def _build_dsv4(case: dict, done: set[str], seed: int) -> list[Pair]:
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

    n, d, depth = case["k"], case["d"], case["depth"]
    g = torch.Generator().manual_seed(seed)
    config = _dsv4_config(n, d, hc_eps=0.0 if "hc_eps" in done else 1e-6)
    stack = []
    for i in range(depth):
        layer_id = case.get("layer0", 0) + i
        branch = make_branch(d, g)
        k = n * n + 2 * n
        leaves = {
            "fn": _randn(g, k, n * d, std=1 / math.sqrt(n * d)),
            "base": torch.cat([_randn(g, 2 * n, std=0.5), _randn(g, n * n, std=2.0)]),
            "scale": 0.5 + _randn(g, 3, std=0.1),
        }
        peer_mod = DeepseekV4HyperConnection(config).to(DTYPE)
        ours_mod = hclib.ManifoldHyperConnection(
            d, branch, n=n, layer_id=layer_id, eps=config.rms_norm_eps, impl="torch"
        ).to(DTYPE)

        def peer(lv, H, peer_mod=peer_mod, branch=branch):
            return _dsv4_layer(peer_mod, branch, lv, H)

        def ours(lv, H, ours_mod=ours_mod, n=n):
            return _hclib_call(ours_mod, _dsv4_to_hclib(lv, n), H)

        stack.append(Pair(leaves, peer, ours))
    return stack


def _build_liger(case: dict, done: set[str], seed: int) -> list[Pair]:
    from liger_kernel.transformers.mhc import LigerMHC

    n, d, depth = case["k"], case["d"], case["depth"]
    g = torch.Generator().manual_seed(seed)
    eps = 0.0 if "sinkhorn_eps" in done else 1e-6
    stack = []
    for i in range(depth):
        layer_id = case.get("layer0", 0) + i
        branch = make_branch(d, g)
        ours_mod = hclib.ManifoldHyperConnection(
            d, branch, n=n, layer_id=layer_id, eps=1e-6, impl="torch"
        ).to(DTYPE)
        leaves = {
            "phi": _randn(g, n * d, n * n + 2 * n, std=1 / math.sqrt(n * d)),
            "bias": torch.cat([_randn(g, 2 * n, std=0.5), _randn(g, n * n, std=2.0)]),
            "alpha_pre": 0.5 + _randn(g, 1, std=0.1),
            "alpha_post": 0.5 + _randn(g, 1, std=0.1),
            "alpha_res": 0.5 + _randn(g, 1, std=0.1),
        }
        peer_mod = LigerMHC(
            copy.deepcopy(branch).float(),
            hc=n,
            c=d,
            tmax=20,
            rms_eps=1e-6,
            sinkhorn_eps=eps,
            phi_dtype=torch.float32,
            allow_fp32=True,
        )

        def peer(lv, H, peer_mod=peer_mod):
            params = {
                "phi": lv["phi"].float(),
                "b": lv["bias"].float(),
                **{a: lv[a].float().reshape(()) for a in ("alpha_pre", "alpha_post", "alpha_res")},
            }
            return functional_call(peer_mod, params, (H.float(),)).to(H.dtype)

        def ours(lv, H, ours_mod=ours_mod):
            return _hclib_call(ours_mod, lv, H)

        stack.append(Pair(leaves, peer, ours))
    return stack


def _rows_last_first(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """The Sinkhorn iteration with rows normalised first and columns last (Liger-Kernel's
    order): mHC Eq. 9 on the transpose, transposed back."""
    return _original_sinkhorn(logits.transpose(-1, -2), iters).transpose(-1, -2)


#: the unchecked Sinkhorn that ManifoldHyperConnection's reference math calls
_original_sinkhorn = hclib.manifold._sinkhorn_knopp


@contextlib.contextmanager
def _liger_context_manager(done: set[str]) -> Iterator[None]:
    """With ``"order"`` neutralised, hclib's mHC uses the peer's Sinkhorn order for the
    duration (the peer's kernel cannot be changed; hclib's module is left as it is)."""
    if "order" not in done:
        yield
        return
    with mock.patch.object(hclib.manifold, "_sinkhorn_knopp", _rows_last_first):
        yield


def _fp64_context(done: set[str]) -> contextlib.AbstractContextManager:
    return float64_arithmetic() if "fp64" in done else contextlib.nullcontext()


def _cases(kind: str, quick: bool) -> list[dict]:
    if kind == "fc":
        grid = [(2, 8, 1, 0), (4, 16, 3, 0), (4, 32, 2, 5)]
    else:
        grid = [(2, 8, 1, 1), (4, 16, 3, 0), (4, 32, 2, 5), (3, 12, 4, 2)]
    if quick:
        grid = grid[:2]
    return [{"k": k, "d": d, "depth": L, "layer0": l0} for k, d, L, l0 in grid]


def peers(quick: bool = False) -> list[Peer]:
    """The implementations compared, with their ladders of deviations."""
    hc_norm = Step(
        "norm",
        "norm of Eq. 10: RMSNorm with gain (1 + gamma) on both sides (hclib: norm='rms', "
        "norm_affine=True)",
        "HC Eq. 10 / FC Eq. 11 (Algorithm 2: LayerNorm)",
        "hclib (default LayerNorm, as Algorithm 2)",
    )
    hc_eps = Step(
        "eps",
        "norm epsilon: hclib eps=0 (the peer's F.normalize clamps the norm at 1e-12)",
        "HC Eq. 10 (the paper prints no epsilon)",
        "neither (an implementation choice)",
    )
    fp64 = Step(
        "fp64",
        "float64 arithmetic: the peer's .float() casts made no-ops",
        "none (rounding: the peer computes the mappings in float32)",
        "neither (precision)",
    )
    lucid_mhc_steps = [  # mHC and mHCv2 of hyper-connections differ from hclib alike
        Step(
            "norm",
            "RMSNorm over all n streams at once (the peer normalises each stream), epsilon 0",
            "mHC Eq. 7 (RMSNorm(vec(x_l)), projection of the flattened nC vector)",
            "hclib",
        ),
        Step(
            "sinkhorn",
            "Sinkhorn order on H_res: columns then rows, rows last (the peer normalises "
            "rows of H_res first and columns last)",
            "mHC Eq. 9 (M <- T_r(T_c(M)))",
            "hclib",
        ),
        fp64,
    ]
    return [
        Peer(
            "lucidrains HC",
            "hyper-connections",
            "HyperConnection",
            [hc_norm, hc_eps],
            _build_lucid_hc("hc"),
            _cases("hc", quick),
            "hc",
        ),
        Peer(
            "lucidrains FC (num_fracs)",
            "hyper-connections",
            "FracConnection",
            [
                Step(
                    "write_in",
                    "write-in per fraction: target fraction f gets beta_f T(h_0)_f (the peer "
                    "sums beta[f', f] T(h_0)_f' over all source fractions f')",
                    "FC Eq. 8 (B^T o Reshape(T(h_0)), elementwise per fraction)",
                    "hclib",
                ),
                hc_norm,
                hc_eps,
            ],
            _build_lucid_hc("fc"),
            _cases("fc", quick),
            "fc",
        ),
        Peer(
            "lucidrains mHC",
            "hyper-connections",
            "ManifoldHyperConnection",
            lucid_mhc_steps,
            _build_lucid_mhc,
            _cases("mhc", quick),
            "mhc",
            _fp64_context,
        ),
        Peer(
            "lucidrains mHCv2",
            "hyper-connections",
            "ManifoldHyperConnection",
            lucid_mhc_steps,
            lambda case, done, seed: _build_lucid_mhc(case, done, seed, v2=True),
            _cases("mhc", quick),
            "mhc",
            _fp64_context,
        ),
        Peer(
            "DeepSeek-V4 HyperConnection",
            "transformers",
            "ManifoldHyperConnection",
            [
                Step(
                    "hc_eps",
                    "hc_eps = 0 (the peer adds 1e-6 to H_pre, to the softmax and to every "
                    "Sinkhorn denominator)",
                    "mHC Eqs. 8-9 (sigmoid, exp, exact normalisations)",
                    "hclib",
                ),
                fp64,
            ],
            _build_dsv4,
            _cases("mhc", quick),
            "mhc",
            _fp64_context,
        ),
        Peer(
            "Liger-Kernel LigerMHC",
            "liger-kernel",
            "ManifoldHyperConnection",
            [
                Step(
                    "sinkhorn_eps",
                    "sinkhorn_eps = 0 (the peer adds 1e-6 to the softmax output and to every "
                    "Sinkhorn denominator)",
                    "mHC Eq. 9 (exact normalisations)",
                    "hclib",
                ),
                Step(
                    "order",
                    "Sinkhorn order: hclib made to normalise rows first and columns last, as "
                    "the peer's kernel does (the paper: columns first, rows last); the rest is "
                    "the float32 of the peer's kernels, which cannot be switched off",
                    "mHC Eq. 9 (M <- T_r(T_c(M)))",
                    "hclib",
                ),
            ],
            _build_liger,
            [c for c in _cases("mhc", quick) if c["k"] & (c["k"] - 1) == 0],  # Triton: n = 2^j
            "mhc",
            _liger_context_manager,
            floor=1e-5,
        ),
    ]


def _peer_available(peer: Peer) -> str | None:
    """None if the peer imports, else why not."""
    try:
        if peer.package == "hyper-connections":
            import hyper_connections  # noqa: F401
        elif peer.package == "transformers":
            from transformers.models.deepseek_v4 import modeling_deepseek_v4  # noqa: F401
        elif peer.package == "liger-kernel":
            from liger_kernel.transformers.mhc import LigerMHC  # noqa: F401
    except ImportError as err:
        return f"not installed ({err})"
    return None


def run_ladder(peer: Peer, seed: int = 0) -> list[dict]:
    """Rows: for every case and every prefix of the ladder, the largest differences."""
    rows = []
    ladder = [Step("as installed", "nothing neutralised", "", "")] + peer.steps
    for ci, case in enumerate(peer.cases):
        H = state(peer.kind, case["k"], case["d"], seed=seed + ci)
        done: set[str] = set()
        for step in ladder:
            if step.key != "as installed":
                done.add(step.key)
            with peer.context(done):
                stack = peer.build(case, set(done), seed + 100 * ci)
                diff = compare(stack, H, seed=seed + ci)
            rows.append(
                {
                    "peer": peer.name,
                    "package": peer.package,
                    "version": version(peer.package),
                    "hclib": peer.ours,
                    "k": case["k"],
                    "d": case["d"],
                    "depth": case["depth"],
                    "layer_ids": f"{case['layer0']}-{case['layer0'] + case['depth'] - 1}",
                    "step": step.key,
                    "neutralised": step.what,
                    "equation": step.equation,
                    "paper_side": step.paper_side,
                    "out_diff": diff.out,
                    "grad_diff": diff.grad,
                    "worst_grad": diff.worst,
                    "out_scale": diff.scale,
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Sinkhorn-Knopp: hclib against an exact log-domain iteration, POT and the peers' versions.
# --------------------------------------------------------------------------------------------


def log_sinkhorn(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """mHC Eq. 9 in the log domain, float64: ``iters`` rounds of column then row
    normalisation of ``exp(logits)``, each a subtraction of a log-sum-exp (nothing can
    underflow)."""
    log_M = logits.to(torch.float64)
    for _ in range(iters):
        log_M = log_M - torch.logsumexp(log_M, dim=-2, keepdim=True)
        log_M = log_M - torch.logsumexp(log_M, dim=-1, keepdim=True)
    return log_M.exp()


def _pot(logits: torch.Tensor, iters: int, method: str) -> torch.Tensor:
    import ot

    out = []
    for L in logits.reshape(-1, *logits.shape[-2:]).to(torch.float64).numpy():
        n = L.shape[0]
        ones = torch.ones(n, dtype=torch.float64).numpy()
        P = ot.sinkhorn(
            ones, ones, -L, reg=1.0, method=method, numItermax=iters, stopThr=0.0, warn=False
        )
        out.append(torch.as_tensor(P))
    return torch.stack(out).view(logits.shape)


def _dsv4_sinkhorn(logits: torch.Tensor, iters: int, hc_eps: float) -> torch.Tensor:
    """DeepSeek-V4's in-module Sinkhorn on ``H_res``: the module with ``fn = 0``, ``scale = 1``
    and ``base`` carrying ``logits^T`` (it uses ``comb^T``), so ``comb^T`` is its ``H_res``."""
    from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

    *batch, n, _ = logits.shape
    config = _dsv4_config(n, 4, hc_eps=hc_eps)
    config.hc_sinkhorn_iters = iters
    module = DeepseekV4HyperConnection(config).to(torch.float64)
    out = []
    with float64_arithmetic():
        for L in logits.reshape(-1, n, n).to(torch.float64):
            params = {
                "fn": torch.zeros_like(module.fn),
                "base": torch.cat([torch.zeros(2 * n, dtype=torch.float64), L.T.reshape(-1)]),
                "scale": torch.ones(3, dtype=torch.float64),
            }
            _, comb, _ = functional_call(
                module, params, (torch.ones(1, 1, n, 4, dtype=torch.float64),)
            )
            out.append(comb[0, 0].T)
    return torch.stack(out).view(logits.shape)


def _liger_sinkhorn(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """Liger-Kernel's in-kernel Sinkhorn on ``H_res`` (its ``h_res`` mixes as ``H_res x``):
    ``liger_mhc_coeffs`` with ``phi = 0`` and the logits as the bias, one matrix at a time."""
    from liger_kernel.transformers.functional import liger_mhc_coeffs

    *_, n, _ = logits.shape
    x = torch.ones(1, n, 4)
    phi = torch.zeros(n * 4, n * n + 2 * n)
    one = torch.ones(())
    out = []
    for L in logits.reshape(-1, n, n):
        b = torch.cat([torch.zeros(2 * n), L.reshape(-1).float()])
        _, _, res = liger_mhc_coeffs(
            x, phi, b, one, one, one, allow_fp32=True, tmax=iters, sinkhorn_eps=eps
        )
        out.append(res[0].double())
    return torch.stack(out).view(logits.shape)


def _importable(package: str) -> bool:
    """Whether the peer of that distribution imports (see :func:`_peer_available`)."""
    return _peer_available(Peer("", package, "", [], None, [], "")) is None


def sinkhorn_rows(seed: int = 0, quick: bool = False) -> list[dict]:
    """For logits of several sizes and scales, each Sinkhorn implementation against the exact
    log-domain iteration with the same number of rounds (t = 20) and against the converged
    doubly stochastic limit; plus its row and column sum errors."""
    g = torch.Generator().manual_seed(seed)
    impls: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor]]] = [
        ("hclib.sinkhorn_knopp", "hclib", lambda L: hclib.sinkhorn_knopp(L, 20)),
        (
            "hclib.sinkhorn_knopp, float32",
            "hclib",
            lambda L: hclib.sinkhorn_knopp(L.float(), 20).double(),
        ),
    ]
    if version("pot"):
        impls += [
            ("POT sinkhorn (method='sinkhorn')", "pot", lambda L: _pot(L, 20, "sinkhorn")),
            ("POT sinkhorn (method='sinkhorn_log')", "pot", lambda L: _pot(L, 20, "sinkhorn_log")),
        ]
    if version("hyper-connections"):
        from hyper_connections import manifold_constrained_hyper_connections as mc

        impls += [
            (
                "hyper-connections sinkhorn_knopps (float32 inside)",
                "hyper-connections",
                lambda L: mc.sinkhorn_knopps(L, 20),
            ),
            (
                "hyper-connections log_domain_sinkhorn_knopps (float32 inside)",
                "hyper-connections",
                lambda L: mc.log_domain_sinkhorn_knopps(L, 20),
            ),
        ]
    if _importable("transformers"):
        impls += [
            (
                "DeepSeek-V4 in-module Sinkhorn, hc_eps=1e-6",
                "transformers",
                lambda L: _dsv4_sinkhorn(L, 20, 1e-6),
            ),
            (
                "DeepSeek-V4 in-module Sinkhorn, hc_eps=0",
                "transformers",
                lambda L: _dsv4_sinkhorn(L, 20, 0.0),
            ),
        ]
    if _importable("liger-kernel"):
        impls += [
            (
                "Liger-Kernel in-kernel Sinkhorn (float32), sinkhorn_eps=1e-6",
                "liger-kernel",
                lambda L: _liger_sinkhorn(L, 20, 1e-6),
            ),
            (
                "Liger-Kernel in-kernel Sinkhorn (float32), sinkhorn_eps=0, on L^T, transposed",
                "liger-kernel",
                lambda L: _liger_sinkhorn(L.mT, 20, 0.0).mT,
            ),
        ]
    if version("mhc"):
        from mhc.constraints.matrix import project_doubly_stochastic

        impls += [
            (
                "mhc project_doubly_stochastic (rows first, +1e-9)",
                "mhc",
                lambda L: project_doubly_stochastic(L, iterations=20),
            ),
            (
                "mhc project_doubly_stochastic on L^T, transposed",
                "mhc",
                lambda L: project_doubly_stochastic(L.mT, iterations=20).mT,
            ),
        ]
    sizes = [2, 4, 8] if not quick else [4]
    scales = SINKHORN_SCALES
    rows = []
    for name, package, fn in impls:
        worst = {f"{key}_s{s:g}": 0.0 for s in scales for key in ("vs_log_t20", "vs_limit")}
        worst.update(vs_log_t20=0.0, vs_limit=0.0, row_err=0.0, col_err=0.0)
        g = torch.Generator().manual_seed(seed)  # the same logits for every implementation
        for n in sizes:
            for scale in scales:
                L = torch.randn(SINKHORN_MATRICES, n, n, generator=g, dtype=torch.float64) * scale
                L = L[:8] if quick else L
                P = fn(L).to(torch.float64)
                ref = log_sinkhorn(L, 20)
                limit = log_sinkhorn(L, 5000)
                err = float((P - ref).abs().max())
                worst[f"vs_log_t20_s{scale:g}"] = max(worst[f"vs_log_t20_s{scale:g}"], err)
                worst["vs_log_t20"] = max(worst["vs_log_t20"], err)
                err = float((P - limit).abs().max())
                worst[f"vs_limit_s{scale:g}"] = max(worst[f"vs_limit_s{scale:g}"], err)
                worst["vs_limit"] = max(worst["vs_limit"], err)
                worst["row_err"] = max(worst["row_err"], float((P.sum(-1) - 1).abs().max()))
                worst["col_err"] = max(worst["col_err"], float((P.sum(-2) - 1).abs().max()))
        rows.append(
            {
                "implementation": name,
                "package": package,
                "version": version(package) if package != "hclib" else hclib.__version__,
                **worst,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Initialisation: does each implementation start from the Pre-Norm network?
# --------------------------------------------------------------------------------------------


def _final_norm(h: torch.Tensor) -> torch.Tensor:
    return nn.functional.layer_norm(h, h.shape[-1:], eps=0.0)


def init_rows(depth: int = 6, d: int = 16, k: int = 4, seed: int = 0) -> list[dict]:
    """Each implementation with its own default initialisation in a ``depth``-layer stack of
    pre-norm branches, against the Pre-Norm network ``h <- h + T_l(h)`` with the same
    branches: the largest difference of the final normed hidden state (final LayerNorm without
    epsilon, so HC's factor ``n`` on the summed streams cancels exactly)."""
    g = torch.Generator().manual_seed(seed)
    branches = [make_branch(d, g) for _ in range(depth)]
    h = torch.randn(2, 3, d, generator=g, dtype=DTYPE)
    with torch.no_grad():
        ref = h
        for T in branches:
            ref = ref + T(ref)
        ref = _final_norm(ref)

    def hclib_stack(make, expand, reduce):
        H = expand(h)
        for i, T in enumerate(branches):
            H = make(T, i).to(DTYPE)(H)
        return reduce(H)

    nets: list[tuple[str, str, Callable[[], torch.Tensor]]] = [
        (
            "hclib HyperConnection (dynamic)",
            "hclib",
            lambda: hclib_stack(
                lambda T, i: hclib.HyperConnection(d, T, n=k, layer_id=i, impl="torch"),
                lambda x: hclib.expand_streams(x, k),
                hclib.reduce_streams,
            ),
        ),
        (
            "hclib FracConnection (dynamic)",
            "hclib",
            lambda: hclib_stack(
                lambda T, i: hclib.FracConnection(d, T, m=k, layer_id=i, impl="torch"),
                lambda x: hclib.split_fractions(x, k),
                hclib.merge_fractions,
            ),
        ),
        (
            "hclib ManifoldHyperConnection",
            "hclib",
            lambda: hclib_stack(
                lambda T, i: hclib.ManifoldHyperConnection(d, T, n=k, layer_id=i, impl="torch").to(
                    DTYPE
                ),
                lambda x: hclib.expand_streams(x, k),
                hclib.reduce_streams,
            ),
        ),
    ]
    if version("hyper-connections"):
        from hyper_connections import HyperConnections, ManifoldConstrainedHyperConnections

        def lucid(cls, **kw):
            def run():
                R = h.repeat_interleave(k, dim=0) if kw.get("streams", True) else h
                streams = k if kw.get("streams", True) else 1
                for i, T in enumerate(branches):
                    extra = {"num_fracs": k} if not kw.get("streams", True) else {}
                    R = cls(streams, dim=d, branch=T, layer_index=i, **extra).to(DTYPE)(R)
                return R.view(-1, streams, *R.shape[1:]).sum(1)

            return run

        nets += [
            ("lucidrains HyperConnections", "hyper-connections", lucid(HyperConnections)),
            (
                "lucidrains HyperConnections(num_fracs=m)",
                "hyper-connections",
                lucid(HyperConnections, streams=False),
            ),
            (
                "lucidrains ManifoldConstrainedHyperConnections",
                "hyper-connections",
                lucid(ManifoldConstrainedHyperConnections),
            ),
        ]
        from hyper_connections.mHCv2 import ManifoldConstrainedHyperConnections as MHCv2

        def lucid_v2():  # streams beside the features: (B, T, n, d)
            H = hclib.expand_streams(h, k)
            for i, T in enumerate(branches):
                H = MHCv2(k, dim=d, branch=T, layer_index=i).to(DTYPE)(H)
            return hclib.reduce_streams(H)

        nets.append(("lucidrains mHCv2", "hyper-connections", lucid_v2))
    if _importable("transformers"):
        from transformers.models.deepseek_v4.modeling_deepseek_v4 import (
            DeepseekV4HyperConnection,
            DeepseekV4HyperHead,
        )

        def dsv4():
            config = _dsv4_config(k, d)
            std = config.initializer_range
            gd = torch.Generator().manual_seed(seed + 5)
            H = h.unsqueeze(2).expand(-1, -1, k, -1).contiguous()
            with float64_arithmetic():
                for T in branches:
                    m = DeepseekV4HyperConnection(config).to(DTYPE)
                    with torch.no_grad():  # DeepseekV4PreTrainedModel._init_weights
                        m.fn.copy_(torch.randn(m.fn.shape, generator=gd, dtype=DTYPE) * std)
                        m.base.zero_()
                        m.scale.fill_(1.0)
                    H = _dsv4_layer(m, T, dict(m.named_parameters()), H)
                head = DeepseekV4HyperHead(config).to(DTYPE)
                with torch.no_grad():
                    head.hc_fn.copy_(torch.randn(head.hc_fn.shape, generator=gd, dtype=DTYPE) * std)
                    head.hc_base.zero_()
                    head.hc_scale.fill_(1.0)
                return head(H)

        nets.append(("DeepSeek-V4 HyperConnection (+ HyperHead)", "transformers", dsv4))
    if _importable("liger-kernel"):
        from liger_kernel.transformers.mhc import LigerMHC

        def liger():
            torch.manual_seed(seed + 6)  # LigerMHC draws its phi from the global generator
            H = hclib.expand_streams(h.float(), k)
            for T in branches:
                layer = copy.deepcopy(T).float()
                m = LigerMHC(layer, hc=k, c=d, phi_dtype=torch.float32, allow_fp32=True)
                H = m(H)
            return hclib.reduce_streams(H).double()

        nets.append(("Liger-Kernel LigerMHC (float32 kernels)", "liger-kernel", liger))
    rows = []
    for name, package, run in nets:
        with torch.no_grad():
            out = _final_norm(run()).detach()
        rows.append(
            {
                "implementation": name,
                "package": package,
                "version": hclib.__version__ if package == "hclib" else version(package),
                "n_or_m": k,
                "depth": depth,
                "max_abs_diff_vs_prenorm": float((out - ref).abs().max()),
            }
        )
    return rows


def lucid_fc_static(m: int = 4) -> dict[str, list[list[float]]] | None:
    """lucidrains' ``HyperConnections(1, num_fracs=m)`` at its own initialisation: the static
    ``Y``, ``A`` and ``B`` as its forward reads them (columns of ``static_alpha`` in
    ``(fraction, [input | residual])`` pairs, the layout the ladder's mapping uses and checks).
    FC Eq. 15 has ``Y = A = I`` and ``B = 1``. None without the package."""
    if not version("hyper-connections"):
        return None
    from hyper_connections import HyperConnections

    module = HyperConnections(1, dim=4 * m, num_fracs=m, layer_index=0)
    static = module.static_alpha.detach().view(m, m, 2)  # (source f1, target f2, [Y | A])
    return {
        "Y": static[..., 0].tolist(),
        "A": static[..., 1].tolist(),
        "B": module.static_beta.detach().tolist(),
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def summarise(rows: list[dict]) -> list[dict]:
    """One row per peer and ladder step: the largest differences over all cases."""
    out: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["peer"], r["step"])
        s = out.setdefault(key, {**r, "out_diff": 0.0, "grad_diff": 0.0, "cases": 0})
        s["out_diff"] = max(s["out_diff"], r["out_diff"])
        if r["grad_diff"] >= s["grad_diff"]:
            s["grad_diff"], s["worst_grad"] = r["grad_diff"], r["worst_grad"]
        s["cases"] += 1
    return list(out.values())


def markdown(ladder: list[dict], sinkhorn: list[dict], init: list[dict], skipped: list[str]) -> str:
    """The three tables as Markdown."""
    lines = [
        "# Conformance: hclib against the independent implementations",
        "",
        f"hclib {hclib.__version__}, torch {torch.__version__}, float64 on the CPU. "
        "Written by `python benchmarks/conformance.py`.",
        "",
        "## Same weights, same function? (largest absolute difference over all cases)",
        "",
        "Each row neutralises one more deviation than the row above it. Cases: "
        "(n or m, d, depth, layer ids) = "
        + "; ".join(
            sorted(
                {
                    f"({r['k']}, {r['d']}, {r['depth']}, {r['layer_ids']})"
                    for r in ladder
                    if r["peer"].startswith("lucidrains HC")
                }
            )
        )
        + " (HC), "
        + "; ".join(
            sorted(
                {
                    f"({r['k']}, {r['d']}, {r['depth']}, {r['layer_ids']})"
                    for r in ladder
                    if "FC" in r["peer"]
                }
            )
        )
        + " (FC), "
        + "; ".join(
            sorted(
                {
                    f"({r['k']}, {r['d']}, {r['depth']}, {r['layer_ids']})"
                    for r in ladder
                    if r["hclib"] == "ManifoldHyperConnection"
                }
            )
        )
        + " (mHC).",
        "",
        "| implementation | version | step | neutralised | output | gradients | equation | "
        "paper side |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summarise(ladder):
        lines.append(
            f"| {r['peer']} | {r['version']} | {r['step']} | {r['neutralised']} | "
            f"{_fmt(r['out_diff'])} | {_fmt(r['grad_diff'])} | {r['equation']} | "
            f"{r['paper_side']} |"
        )
    lines += [
        "",
        "## Sinkhorn-Knopp: t = 20 rounds on exp(L), L with N(0, s^2) entries, n x n",
        "",
        "Largest absolute difference from the exact float64 log-domain iteration of mHC Eq. 9 "
        "with the same 20 rounds, per logit scale s, and from the converged doubly stochastic "
        f"limit (5000 rounds); largest row-sum and column-sum errors |sum - 1|. "
        f"{SINKHORN_MATRICES} matrices per size n in {{2, 4, 8}} and scale s.",
        "",
        "| implementation | version | "
        + " | ".join(f"vs exact, s = {s:g}" for s in SINKHORN_SCALES)
        + " | "
        + " | ".join(f"vs limit, s = {s:g}" for s in SINKHORN_SCALES)
        + " | row sums | column sums |",
        "|---|---|" + "---|" * (2 * len(SINKHORN_SCALES) + 2),
    ]
    for r in sinkhorn:
        per_scale = " | ".join(
            _fmt(r[f"{key}_s{s:g}"]) for key in ("vs_log_t20", "vs_limit") for s in SINKHORN_SCALES
        )
        lines.append(
            f"| {r['implementation']} | {r['version']} | {per_scale} | "
            f"{_fmt(r['row_err'])} | {_fmt(r['col_err'])} |"
        )
    lines += [
        "",
        "## Initialisation: the Pre-Norm network?",
        "",
        "| implementation | version | n or m | depth | max abs difference vs Pre-Norm |",
        "|---|---|---|---|---|",
    ]
    for r in init:
        lines.append(
            f"| {r['implementation']} | {r['version']} | {r['n_or_m']} | {r['depth']} | "
            f"{_fmt(r['max_abs_diff_vs_prenorm'])} |"
        )
    fc = lucid_fc_static(4)
    if fc is not None:

        def matrix(M: list[list[float]]) -> str:
            return "[" + ", ".join("[" + ", ".join(f"{x:g}" for x in row) + "]" for row in M) + "]"

        lines += [
            "",
            "## lucidrains FC at its own initialisation (num_fracs = 4)",
            "",
            "The static weights as the module's forward reads them (FC Eq. 15: Y = A = I, "
            "B = 1; rows: source fraction, columns: target fraction):",
            "",
            f"- Y = {matrix(fc['Y'])}",
            f"- A = {matrix(fc['A'])}",
            "- B = [" + ", ".join(f"{x:g}" for x in fc["B"]) + "], applied as "
            "sum over source fractions (every target fraction receives all of T(h_0))",
        ]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped) + "."]
    return "\n".join(lines) + "\n"


def write_csv(path: Path, ladder: list[dict], sinkhorn: list[dict], init: list[dict]) -> None:
    """One CSV, a ``table`` column telling the three tables apart."""
    fields = [
        "table",
        "implementation",
        "package",
        "version",
        "hclib",
        "k",
        "d",
        "depth",
        "layer_ids",
        "step",
        "neutralised",
        "equation",
        "paper_side",
        "out_diff",
        "grad_diff",
        "worst_grad",
        "out_scale",
        "vs_log_t20",
        *[f"vs_log_t20_s{s:g}" for s in SINKHORN_SCALES],
        "vs_limit",
        *[f"vs_limit_s{s:g}" for s in SINKHORN_SCALES],
        "row_err",
        "col_err",
        "n_or_m",
        "max_abs_diff_vs_prenorm",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in ladder:
            writer.writerow(
                {
                    "table": "ladder",
                    "implementation": r["peer"],
                    **{k: v for k, v in r.items() if k in fields},
                }
            )
        for r in sinkhorn:
            writer.writerow({"table": "sinkhorn", **r})
        for r in init:
            writer.writerow({"table": "init", **r})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/<today>-cpu)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer cases (for a smoke check)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ladder, skipped = [], []
    for peer in peers(args.quick):
        why = _peer_available(peer)
        if why:
            skipped.append(f"{peer.name}: {why}")
            print(f"skip {peer.name}: {why}", file=sys.stderr)
            continue
        ladder += run_ladder(peer, args.seed)
    sinkhorn = sinkhorn_rows(args.seed, args.quick)
    init = init_rows(seed=args.seed)
    text = markdown(ladder, sinkhorn, init, skipped)
    print(text)
    out = args.out or results_dir("cpu")
    out.mkdir(parents=True, exist_ok=True)
    (out / "conformance.md").write_text(text)
    write_csv(out / "conformance.csv", ladder, sinkhorn, init)
    print(f"wrote {out / 'conformance.md'} and {out / 'conformance.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
