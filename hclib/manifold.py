"""Manifold-constrained hyper-connections (mHC, arXiv 2512.24880) and Sinkhorn-Knopp.

mHC keeps HC's ``n`` streams ``x`` ``(..., n, d)`` and one layer
``x' = H_res x + H_post^T T(H_pre x)`` (mHC Eq. 3), but constrains the weights (Eqs. 7-9)::

    x_vec  = RMSNorm(vec(x))                                  (1, n d): all streams at once
    H~_pre  = a_pre  * (x_vec phi_pre)       + b_pre          (1, n)
    H~_post = a_post * (x_vec phi_post)      + b_post         (1, n)
    H~_res  = a_res  * mat(x_vec phi_res)    + b_res          (n, n)            (Eq. 7)
    H_pre = sigmoid(H~_pre),  H_post = 2 sigmoid(H~_post),
    H_res = SinkhornKnopp(H~_res)                                               (Eq. 8)

so ``H_res`` is (to 20 iterations) doubly stochastic: products of such matrices keep
every row and column sum at 1, and the signal can neither explode nor vanish through the
residual path.

Derived in: notebooks/06_manifold_constrained_hyper_connections.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import nn

from hclib.connection import (
    Connection,
    Mappings,
    check_eps,
    check_finite,
    check_layer_id,
    compute_dtype,
)
from hclib.kernels.dispatch import check_impl, compiled, resolve_impl
from hclib.streams import check_count

__all__ = ["ManifoldHyperConnection", "sinkhorn_knopp"]


def sinkhorn_knopp(logits: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Project logits onto (nearly) doubly stochastic matrices (mHC Eqs. 8-9).

    ``M^(0) = exp(logits)``, then ``iters`` rounds of ``M <- T_r(T_c(M))``: first every column
    is divided by its sum, then every row (Eq. 9). Because rows are normalised last, every row
    of the result sums to 1 (to rounding); the column sums converge to 1 as ``iters`` grows.

    The rounds run on ``log M``, where dividing a column (row) by its sum is subtracting its
    log-sum-exp: the same iteration, term for term, but nothing underflows, so it holds for
    logits of any spread (``exp`` of float32 logits some 90 apart would round to 0 and change
    the result). Each matrix is computed on its own, with the same code whatever its values:
    one matrix's result never depends on the others in the batch, and the iterations have no
    data-dependent branch (``torch.compile`` traces them in one graph). The rounds run in
    float32 (float64 for float64 logits), and the result has the dtype of ``logits``.

    ``-inf`` logits are exact zeros of ``M^(0)`` and are allowed. A row or column made only of
    ``-inf`` has no doubly stochastic scaling (Eq. 9 would divide 0 by 0): that matrix comes
    back NaN (its gradient too), and the other matrices of the batch are unaffected.

    Args:
        logits: ``(..., n, n)`` floating point, finite or ``-inf``.
        iters: number of column-then-row rounds, an integer ``>= 1`` (mHC uses ``t_max = 20``);
            numpy integers, 0-d integer tensors and anything with ``__index__`` are accepted.

    Returns:
        ``(..., n, n)``, entrywise non-negative (positive unless an entry underflows or its
        logit is ``-inf``).

    Raises:
        TypeError: ``logits`` not a floating-point tensor, or ``iters`` not an integer.
        ValueError: bad shape, ``iters < 1``, or a NaN or ``+inf`` logit (this value check
            needs the values on the host; under ``torch.compile`` it is left out, so as not to
            break the graph).
    """
    _check_logits(logits)
    iters = _check_iters(iters)
    if not torch.compiler.is_compiling():
        _check_logit_values(logits)
    return _sinkhorn_knopp(logits, iters)


def _sinkhorn_knopp(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Eq. 9 on ``log M`` without input checks (the connections' logits come from their own
    projection)."""
    log_M = logits.to(compute_dtype(logits.dtype))  # log M^(0) = logits          (Eq. 9)
    for _ in range(iters):
        log_M = log_M - torch.logsumexp(log_M, dim=-2, keepdim=True)  # T_c: columns sum to 1
        log_M = log_M - torch.logsumexp(log_M, dim=-1, keepdim=True)  # T_r: rows sum to 1
    return log_M.exp().to(logits.dtype)  # M^(iters)  (..., n, n)


def _check_logits(logits: object) -> None:
    """Type, dtype and shape of Sinkhorn logits (no look at the values)."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(
            f"logits must be a floating-point tensor, got {logits.dtype} "
            "(convert with logits.float())"
        )
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"logits must have shape (..., n, n), got {tuple(logits.shape)}")


def _check_logit_values(logits: torch.Tensor) -> None:
    """Refuse NaN and ``+inf`` logits (one host sync)."""
    bad = torch.isnan(logits) | torch.isposinf(logits)
    if bool(bad.any()):
        nan, inf = int(torch.isnan(logits).sum()), int(torch.isposinf(logits).sum())
        raise ValueError(
            f"logits must be finite or -inf, got {nan} NaN and {inf} +inf entries: "
            "SK(x) is undefined for them"
        )


def _check_iters(iters: object) -> int:
    """``iters`` as an ``int >= 1``: ints, numpy integers, 0-d integer tensors, ``__index__``."""
    if isinstance(iters, bool) or (isinstance(iters, torch.Tensor) and iters.dtype == torch.bool):
        raise TypeError("iters must be an int number of Sinkhorn-Knopp iterations, got bool")
    try:
        value = operator.index(iters)
    except TypeError:
        raise TypeError(
            f"iters must be an int number of Sinkhorn-Knopp iterations, got {type(iters).__name__}"
        ) from None
    return check_count(value, "iters", "Sinkhorn-Knopp iterations")


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def _manifold_mappings(
    Hc: torch.Tensor,
    phi: torch.Tensor,
    bias: torch.Tensor,
    alpha_pre: torch.Tensor,
    alpha_post: torch.Tensor,
    alpha_res: torch.Tensor,
    eps: float,
    iters: int,
) -> Mappings:
    """mHC Eqs. 7-8 for a state ``Hc`` ``(..., n, d)`` in the compute dtype: the reference.

    A plain function of tensors, so that ``impl="compile"`` compiles it once for every module.
    """
    n, dtype = Hc.shape[-2], Hc.dtype
    x = Hc.flatten(-2)  # vec(x_l)  (..., n d)
    x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps)  # RMSNorm
    proj = x @ phi.to(dtype)  # (..., n^2 + 2n)
    bias = bias.to(dtype)
    a_pre, a_post, a_res = (a.to(dtype) for a in (alpha_pre, alpha_post, alpha_res))
    pre = a_pre * proj[..., :n] + bias[:n]  # Eq. 7  (..., n)
    post = a_post * proj[..., n : 2 * n] + bias[n : 2 * n]  # (..., n)
    res = a_res * proj[..., 2 * n :] + bias[2 * n :]  # (..., n^2)
    res = res.unflatten(-1, (n, n))  # mat(.)  (..., n, n)
    return Mappings(
        pre=torch.sigmoid(pre),  # Eq. 8
        post=2.0 * torch.sigmoid(post),
        res=_sinkhorn_knopp(res, iters),
    )


def _read_out(
    Hc: torch.Tensor, *weights: torch.Tensor, eps: float, iters: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h0, post, res)``: the mappings and the branch input ``H_pre x`` (reference)."""
    pre, post, res = _manifold_mappings(Hc, *weights, eps, iters)
    h0 = (pre.unsqueeze(-2) @ Hc).squeeze(-2)  # H_pre x  (..., d)
    return h0, post, res


def _write_in(
    Hc: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor
) -> torch.Tensor:
    """``H_res x + H_post^T y`` (mHC Eq. 3), the reference."""
    return res @ Hc + post.unsqueeze(-1) * y.unsqueeze(-2)  # (..., n, d)


class ManifoldHyperConnection(Connection):
    """Manifold-constrained hyper-connection around one branch (mHC Eqs. 7-9).

    Args:
        dim: model width ``d`` (the paper's ``C``).
        branch: callable ``(..., d) -> (..., d)`` including its own pre-norm.
        n: expansion rate, the number of streams.
        layer_id: index of this connection, 0-based; at init the branch reads mostly from
            stream ``layer_id % n`` (see below).
        sinkhorn_iters: Sinkhorn-Knopp iterations ``t_max`` (paper: 20).
        pre_init: initial read-out weight ``H_pre`` of stream ``layer_id % n``. The other
            ``n - 1`` streams share ``1 - pre_init`` equally, so ``sum(H_pre) = 1``.
        post_init: initial write-in weight ``H_post`` of every stream, in ``(0, 2)``.
        res_init_diag: initial diagonal of ``H_res``, in ``(0, 1)``; the off-diagonal
            entries share the rest of each row equally, which is exactly doubly stochastic.
        gate_init: initial gating factors ``alpha_pre, alpha_post, alpha_res`` (paper: 0.01).
        eps: epsilon of the RMSNorm of the flattened state (the paper prints 1e-20).
        impl: ``"auto"`` (default), ``"torch"``, ``"compile"`` or ``"triton"``, resolved per
            call by :func:`hclib.kernels.resolve_impl`: ``"torch"`` runs the equations below,
            ``"compile"`` the same code under ``torch.compile`` (the branch stays eager),
            ``"triton"`` the fused kernels :func:`hclib.kernels.manifold_pre.manifold_pre`
            (norm, projection, sigmoid, Sinkhorn-Knopp and ``h0`` in one read-out) and
            :func:`hclib.kernels.post_res.post_res`; ``"auto"`` picks ``"triton"`` on NVIDIA
            GPUs of compute capability >= 9.0 for float32 and bfloat16 states, ``"torch"``
            elsewhere (:func:`hclib.kernels.dispatch.auto_impl`).

    Initialisation (the paper leaves the biases and ``phi`` open; our choice): ``phi = 0`` as
    HC's dynamic projections, so at init the weights are ``sigmoid(b_pre)``,
    ``2 sigmoid(b_post)`` and ``SK(b_res)``. The defaults ``post_init = 1`` (HC's ``B = 1``),
    ``sum(H_pre) = 1`` and a row-stochastic ``H_res`` make a network of replicated streams
    compute the Pre-Norm residual network for any ``n >= 2``: every stream carries the Pre-Norm
    hidden state, as with HC's initialisation. (Exactly up to the rounding of the biases: a
    float32 ``sigmoid(b_pre)`` sums to 1 within ~1e-8, so a module created in float32 and cast
    to float64 is off by that much; one created in float64 matches to 1e-15.) ``H_res`` cannot
    be the identity (it would need infinite logits), so it starts near it, with diagonal
    ``res_init_diag = 0.95``; ``H_pre`` cannot be one-hot, so it starts concentrated on stream
    ``layer_id % n`` (``pre_init = 0.9``), which, like HC's ``e_{k mod n}``, breaks the symmetry
    between streams (with uniform weights and ``phi = 0`` every stream would get the same
    gradient and the streams would stay copies of each other). For ``n = 1`` the read-out
    ``sigmoid(b_pre) < 1`` scales the branch input by ``pre_init``, which a branch that starts
    with its own norm ignores (up to the norm's epsilon).

    Parameters:
        ``phi`` ``(n d, n^2 + 2n)`` = ``[phi_pre | phi_post | phi_res]`` (Eq. 14's fused
        layout), ``bias`` ``(n^2 + 2n,)`` = ``[b_pre | b_post | vec(b_res)]``, and the gates
        ``alpha_pre``, ``alpha_post``, ``alpha_res`` ``(1,)``: ``n d (n^2 + 2n) + n^2 + 2n + 3``
        in all (Section 4.2).

    Shapes:
        state ``x`` ``(..., n, d)`` -> ``(..., n, d)``.
    """

    #: parameters that take weight decay: only the projection
    decayed_parameters = ("phi",)

    def __init__(
        self,
        dim: int,
        branch: Callable[..., torch.Tensor],
        n: int = 4,
        layer_id: int = 0,
        sinkhorn_iters: int = 20,
        pre_init: float = 0.9,
        post_init: float = 1.0,
        res_init_diag: float = 0.95,
        gate_init: float = 0.01,
        eps: float = 1e-6,
        impl: str = "auto",
    ) -> None:
        super().__init__(dim, branch)
        self.n = n = check_count(n, "n", "streams")
        self.impl = check_impl(impl)
        self.layer_id = check_layer_id(layer_id)
        self.sinkhorn_iters = check_count(sinkhorn_iters, "sinkhorn_iters", "iterations")
        self.eps = check_eps(eps)
        gate_init = check_finite(gate_init, "gate_init")
        for name, value, low, high in (
            ("pre_init", pre_init, 0.0, 1.0),
            ("post_init", post_init, 0.0, 2.0),
            ("res_init_diag", res_init_diag, 0.0, 1.0),
        ):
            if not low < check_finite(value, name) < high:
                raise ValueError(f"{name} must lie in ({low:g}, {high:g}), got {value}")
        pre_init, post_init = float(pre_init), float(post_init)
        res_init_diag = float(res_init_diag)

        b_pre = torch.full((n,), _logit((1.0 - pre_init) / (n - 1)) if n > 1 else 0.0)
        b_pre[self.layer_id % n] = _logit(pre_init)  # sigmoid(b_pre) sums to 1 for n >= 2
        b_post = torch.full((n,), _logit(post_init / 2.0))  # 2 sigmoid(b_post) = post_init
        # exp(b_res) = c I + (J - I) has equal row and column sums, so SK returns it normalised:
        # diagonal c / (c + n - 1) = res_init_diag.
        b_res = torch.zeros(n, n)
        if n > 1:
            b_res.fill_diagonal_(math.log(res_init_diag * (n - 1) / (1.0 - res_init_diag)))
        k = n * n + 2 * n
        self.phi = nn.Parameter(torch.zeros(n * self.dim, k))  # [phi_pre | phi_post | phi_res]
        self.bias = nn.Parameter(torch.cat([b_pre, b_post, b_res.flatten()]))  # (n^2 + 2n,)
        self.alpha_pre = nn.Parameter(torch.full((1,), float(gate_init)))
        self.alpha_post = nn.Parameter(torch.full((1,), float(gate_init)))
        self.alpha_res = nn.Parameter(torch.full((1,), float(gate_init)))

    def _weights(self) -> tuple[torch.Tensor, ...]:
        return (self.phi, self.bias, self.alpha_pre, self.alpha_post, self.alpha_res)

    def _mappings(self, Hc: torch.Tensor) -> Mappings:
        return _manifold_mappings(Hc, *self._weights(), self.eps, self.sinkhorn_iters)

    def _compute(self, H: torch.Tensor) -> torch.Tensor:
        H = self._check_state(H, (self.n, self.dim), "(n, d)")
        return H.to(compute_dtype(H.dtype, self.phi.dtype))

    def forward(self, H: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``(..., n, d) -> (..., n, d)``; extra arguments go to the branch.

        The weights and the mixing run in float32 (float64 if the input or the module is
        float64) whatever the input dtype; the branch sees its input in the dtype of ``H``
        and the result has the dtype of ``H``.
        """
        H = self._check_state(H, (self.n, self.dim), "(n, d)")
        impl = resolve_impl(self.impl, H)
        if impl == "triton":
            return self._forward_triton(H, args, kwargs)
        Hc = self._compute(H)
        read_out, write_in = (_read_out, _write_in)
        if impl == "compile":
            read_out, write_in = compiled(_read_out), compiled(_write_in)
        h0, post, res = read_out(Hc, *self._weights(), eps=self.eps, iters=self.sinkhorn_iters)
        y = self._run_branch(h0.to(H.dtype), args, kwargs).to(Hc.dtype)  # (..., d)
        out = write_in(Hc, y, post, res)  # Eq. 3  (..., n, d)
        return out.to(H.dtype)

    def _forward_triton(self, H: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
        """The fused read-out, the branch, the fused write-in; same dtypes as the reference."""
        from hclib.kernels.manifold_pre import manifold_pre  # imports triton: only on use
        from hclib.kernels.post_res import post_res

        h0, post, res, H_pass = manifold_pre(
            H, *self._weights(), eps=self.eps, iters=self.sinkhorn_iters
        )  # h0 (..., d) in the dtype of H; post (..., n), res (..., n, n) in float32
        y = self._run_branch(h0, args, kwargs)  # (..., d)
        if compute_dtype(y.dtype, post.dtype) != post.dtype:
            y = y.to(post.dtype)  # as the reference, which mixes in the compute dtype
        return post_res(H_pass, y, post, res)  # Eq. 3  (..., n, d)

    def mappings(self, H: torch.Tensor) -> Mappings:
        """Per-token ``pre`` ``(..., n)`` in (0, 1), ``post`` ``(..., n)`` in (0, 2) and
        ``res`` ``(..., n, n)`` doubly stochastic (to ``sinkhorn_iters``), in float32 or float64.
        """
        if H is None:
            raise ValueError("mHC weights depend on the input: pass H of shape (..., n, d)")
        return self._mappings(self._compute(H))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n={self.n}, layer_id={self.layer_id}, "
            f"sinkhorn_iters={self.sinkhorn_iters}, impl={self.impl!r}"
        )
