"""A token-choice top-k mixture-of-experts feed-forward layer (the FFN of the MoE GPT).

Each token's router picks its ``top_k`` experts out of ``n_experts`` and the layer returns
the router-weighted sum of those experts' SwiGLU outputs (plus an optional shared expert that
every token uses, as in DeepSeek-style MoE). Dispatch is vectorised: the ``tokens x top_k``
assignments are sorted by expert, each expert runs one matmul on its contiguous slice
(a grouped matmul), and the results are scattered back; there is no Python loop over tokens.

Two auxiliary losses keep the router healthy and are stored on the module after every
forward pass for the model to add to its loss:

* load balancing (Switch Transformer): ``n_experts * sum_e f_e P_e``, where ``f_e`` is the
  fraction of assignments that went to expert ``e`` and ``P_e`` its mean router probability;
  it is 1 for a perfectly balanced router and grows as the load concentrates;
* router z-loss (ST-MoE): ``mean(logsumexp(router logits)^2)``, which keeps logits small.

Under data parallelism (DDP, FSDP) each rank routes its own slice of the global batch. The
expert counts behind ``f_e`` are summed over the ranks (one all-reduce of ``E`` integers per
layer and step, in training mode only), while ``P_e`` stays the rank's own mean: each rank's
loss ``n_experts * sum_e f_e^global P_e^rank`` has, averaged over the ranks as the
gradients are, the value and gradient of the single-process loss on the whole batch. With
per-rank counts instead, a rank with few tokens would balance its own noise, and the run
would depend on the number of ranks. ``sync_counts=False`` chooses that per-rank loss.

Used in: notebooks/10_moe_llm_with_lightning.
"""

from __future__ import annotations

import torch
from torch import nn

from hclib.streams import check_count

__all__ = ["MoE", "moe_loop_reference"]


class MoE(nn.Module):
    """Top-k token-choice MoE of SwiGLU experts.

    Args:
        dim: model width ``d``.
        hidden: hidden width of each expert.
        n_experts: number of routed experts ``E``.
        top_k: experts per token (``1 <= top_k <= E``).
        shared_expert: add one always-on expert of the same size.
        normalize_weights: renormalise the ``top_k`` router probabilities to sum to 1.
        sync_counts: in training mode under ``torch.distributed``, count the assignments
            of every rank for ``f_e`` (module docstring); False: this rank's only.

    Attributes set by every forward pass:
        ``aux_loss`` (load balancing), ``z_loss`` (router z-loss): scalars;
        ``expert_load`` ``(E,)``: the fraction of assignments each expert received (over
        every rank when the counts are synchronised).

    Shapes:
        ``(..., d) -> (..., d)``.
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        n_experts: int = 8,
        top_k: int = 2,
        shared_expert: bool = False,
        normalize_weights: bool = True,
        sync_counts: bool = True,
    ) -> None:
        super().__init__()
        self.dim = check_count(dim, "dim", "features")
        self.hidden = check_count(hidden, "hidden", "features")
        self.n_experts = check_count(n_experts, "n_experts", "experts")
        self.top_k = check_count(top_k, "top_k", "experts")
        if top_k > n_experts:
            raise ValueError(f"top_k={top_k} cannot exceed n_experts={n_experts}")
        self.normalize_weights = bool(normalize_weights)
        self.sync_counts = bool(sync_counts)
        self.router = nn.Linear(dim, n_experts, bias=False)
        scale_in, scale_out = dim**-0.5, hidden**-0.5
        self.w_gate = nn.Parameter(torch.randn(n_experts, dim, hidden) * scale_in)  # (E, d, h)
        self.w_up = nn.Parameter(torch.randn(n_experts, dim, hidden) * scale_in)  # (E, d, h)
        self.w_down = nn.Parameter(torch.randn(n_experts, hidden, dim) * scale_out)  # (E, h, d)
        self.shared = SwiGLU(dim, hidden) if shared_expert else None
        self.aux_loss = torch.zeros(())
        self.z_loss = torch.zeros(())
        self.expert_load = torch.zeros(n_experts)

    def _sync_now(self) -> bool:
        dist = torch.distributed
        return (
            self.sync_counts
            and self.training
            and dist.is_available()
            and dist.is_initialized()
            and dist.get_world_size() > 1
        )

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router logits ``(N, E)``, top-k weights ``(N, k)`` and expert ids ``(N, k)``."""
        logits = self.router(x).float()  # (N, E)
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)  # (N, k)
        if self.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights, experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., d) -> (..., d)``; sets ``aux_loss``, ``z_loss`` and ``expert_load``."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected input (..., {self.dim}), got {tuple(x.shape)}")
        shape = x.shape
        x = x.reshape(-1, self.dim)  # (N, d)
        E, k = self.n_experts, self.top_k
        logits, weights, experts = self.route(x)

        # sort the N*k assignments by expert so each expert sees one contiguous slice
        flat_experts = experts.reshape(-1)  # (N k,)
        order = flat_experts.argsort(stable=True)
        token_of = order // k  # which token each sorted assignment belongs to
        counts = torch.bincount(flat_experts, minlength=E)  # (E,)
        xs = x[token_of]  # (N k, d), grouped by expert
        outs = []
        for e, xe in enumerate(xs.split(counts.tolist())):  # a loop over experts, not tokens
            h = nn.functional.silu(xe @ self.w_gate[e]) * (xe @ self.w_up[e])  # (c_e, h)
            outs.append(h @ self.w_down[e])  # (c_e, d)
        out_sorted = torch.cat(outs)  # (N k, d)
        w_sorted = weights.reshape(-1)[order].to(x.dtype)  # (N k,)
        y = x.new_zeros(x.shape).index_add(0, token_of, out_sorted * w_sorted[:, None])
        if self.shared is not None:
            y = y + self.shared(x)

        if self._sync_now():
            counts = counts.clone()
            torch.distributed.all_reduce(counts)  # (E,) assignments of every rank
        load = counts.float() / counts.sum()  # f_e
        probs = logits.softmax(dim=-1)
        self.aux_loss = E * (load * probs.mean(dim=0)).sum()  # load balancing
        self.z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()  # router z-loss
        self.expert_load = load.detach()
        return y.reshape(shape)


class SwiGLU(nn.Module):
    """The SwiGLU feed-forward ``W_down(silu(W_gate x) * W_up x)``, ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def moe_loop_reference(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The same layer computed token by token, expert by expert: the slow oracle for tests.

    Args:
        moe: the layer whose weights to use.
        x: ``(..., d)``.
    """
    flat = x.reshape(-1, moe.dim)
    _, weights, experts = moe.route(flat)
    rows = []
    for t in range(flat.shape[0]):
        y = torch.zeros(moe.dim, dtype=x.dtype)
        for j in range(moe.top_k):
            e = experts[t, j].item()
            h = nn.functional.silu(flat[t] @ moe.w_gate[e]) * (flat[t] @ moe.w_up[e])
            y = y + weights[t, j].to(x.dtype) * (h @ moe.w_down[e])
        if moe.shared is not None:
            y = y + moe.shared(flat[t])
        rows.append(y)
    return torch.stack(rows).reshape(x.shape)
