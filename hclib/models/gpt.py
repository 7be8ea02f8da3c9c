"""A readable GPT whose sublayers are joined by any connection: residual, HC, FC or mHC.

Each transformer block contributes two connections, one around attention and one around
the feed-forward layer (HC Section 4: a model with ``L`` blocks has ``2L`` HC modules, with
``layer_id`` counting them). Every branch carries its own pre-norm (RMSNorm). The carried
state is made from the token embedding and read out before the final norm as in HC
Algorithm 1: replicated into ``n`` streams and summed (HC, mHC), split into ``m`` fractions
and concatenated (FC), or kept as is (residual).

Parts: RMSNorm pre-norms, rotary position embeddings (RoPE), causal attention through
``scaled_dot_product_attention``, a SwiGLU or GELU feed-forward layer, or a top-k MoE
(:mod:`hclib.models.moe`) in the blocks listed by ``moe_layers``.

Precision: under autocast (Lightning's ``bf16-mixed``) the carried state is held in the
autocast dtype, as the book's byte counts assume, and the connections compute their
coefficients in float32; ``state_dtype="weights"`` keeps it in the weights' dtype.
``GPT.recompute`` recomputes each layer in the backward pass inside ``forward`` (so FSDP's
hooks see every call).

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from hclib.connection import Connection
from hclib.kernels.dispatch import check_impl
from hclib.models.moe import MoE, SwiGLU
from hclib.models.wiring import (
    build_connection,
    carried_dtype,
    check_connection,
    enter_state,
    leave_state,
)
from hclib.streams import check_count

__all__ = ["GPT", "GPTConfig"]

_OUTPUT_SCALES = ("none", "divide_sqrt_n", "multiply_sqrt_n")
STATE_DTYPES = ("autocast", "weights")


@dataclass
class GPTConfig:
    """Every knob of :class:`GPT`. Unknown keys in :meth:`from_dict` raise an error."""

    vocab_size: int = 256  #: tokens in the vocabulary
    block_size: int = 256  #: longest sequence (the RoPE tables are this long)
    n_layer: int = 4  #: transformer blocks (2 connections each)
    n_head: int = 4  #: attention heads; must divide d_model
    d_model: int = 128  #: model width d
    mlp: str = "swiglu"  #: "swiglu" or "gelu"
    mlp_ratio: float = 4.0  #: GELU hidden = ratio * d; SwiGLU hidden = 2/3 of that, rounded to 8
    connection: str = "residual"  #: "residual", "hc", "fc" or "mhc"
    n: int = 4  #: streams for hc and mhc
    m: int = 4  #: fractions for fc; must divide d_model
    dynamic: bool = True  #: dynamic weights for hc and fc
    impl: str = "auto"  #: connection math: "auto", "torch", "compile" or "triton" (hclib.kernels)
    output_init_scale: str = "none"  #: HC Section 4's sqrt(n) scaling of output projections
    rope_theta: float = 10000.0  #: RoPE base
    norm_eps: float = 1e-6  #: RMSNorm epsilon
    dropout: float = 0.0  #: attention and residual-branch dropout
    tie_embeddings: bool = True  #: share the token embedding with the output layer
    init_std: float = 0.02  #: std of linear and embedding weights
    moe_layers: list[int] = field(default_factory=list)  #: blocks whose FFN is an MoE
    n_experts: int = 8  #: routed experts per MoE layer
    top_k: int = 2  #: experts per token
    moe_hidden: int | None = None  #: expert hidden width (default: the dense SwiGLU's)
    shared_expert: bool = False  #: one always-on expert beside the routed ones
    aux_loss_coef: float = 0.01  #: weight of the load-balancing loss
    z_loss_coef: float = 0.001  #: weight of the router z-loss
    state_dtype: str = "autocast"  #: carried state under autocast: "autocast" dtype or "weights"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "d_model"):
            check_count(getattr(self, name), name, "units")
        check_connection(self.connection, self.d_model, self.n, self.m)
        check_impl(self.impl)
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_head={self.n_head}")
        if (self.d_model // self.n_head) % 2:
            raise ValueError(f"the head width {self.d_model // self.n_head} must be even for RoPE")
        if self.mlp not in ("swiglu", "gelu"):
            raise ValueError(f"mlp must be 'swiglu' or 'gelu', got {self.mlp!r}")
        if self.output_init_scale not in _OUTPUT_SCALES:
            raise ValueError(
                f"output_init_scale must be one of {_OUTPUT_SCALES}, got {self.output_init_scale!r}"
            )
        if self.state_dtype not in STATE_DTYPES:
            raise ValueError(f"state_dtype must be one of {STATE_DTYPES}, got {self.state_dtype!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        self.moe_layers = [int(i) for i in self.moe_layers]
        bad = [i for i in self.moe_layers if not 0 <= i < self.n_layer]
        if bad:
            raise ValueError(f"moe_layers {bad} are outside the {self.n_layer} blocks")
        if self.moe_layers:
            check_count(self.n_experts, "n_experts", "experts")
            if not 1 <= self.top_k <= self.n_experts:
                raise ValueError(f"top_k={self.top_k} must lie in [1, n_experts={self.n_experts}]")

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.d_model)
        if self.mlp == "swiglu":  # same parameter count as the GELU MLP
            hidden = 8 * math.ceil(2 * hidden / 3 / 8)
        return hidden

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """Build a config from a dict, naming any unknown key."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)


def rope_tables(block_size: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` tables ``(block_size, head_dim / 2)`` of rotary embeddings."""
    freqs = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(block_size, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs ``(x_i, x_{i + hd/2})`` of ``x`` ``(B, heads, T, hd)`` by position."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, h, T, hd/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE, ``(B, T, d) -> (B, T, d)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        cos, sin = rope_tables(cfg.block_size, cfg.d_model // cfg.n_head, cfg.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)  # (B, T, d) each
        q, k, v = (t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))  # (B,h,T,hd)
        q = apply_rope(q, self.cos[:T], self.sin[:T])
        k = apply_rope(k, self.cos[:T], self.sin[:T])
        p = self.dropout if self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(B, T, d))  # (B, T, d)


class GELUMLP(nn.Module):
    """``W_2 gelu(W_1 x)``, ``(..., d) -> (..., d)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.gelu(self.up(x)))


class Branch(nn.Sequential):
    """A sublayer with its own pre-norm: ``dropout(f(RMSNorm(x)))``."""

    def __init__(self, cfg: GPTConfig, f: nn.Module) -> None:
        super().__init__(nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps), f, nn.Dropout(cfg.dropout))


class GPT(nn.Module):
    """Decoder-only transformer; ``cfg.connection`` picks how its sublayers are joined.

    Shapes:
        ``idx`` ``(B, T)`` token ids -> logits ``(B, T, vocab_size)``.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"cfg must be a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList()  # 2 connections per block: attention, then FFN
        for block in range(cfg.n_layer):
            if block in cfg.moe_layers:
                hidden = cfg.moe_hidden or cfg.mlp_hidden
                ffn = MoE(cfg.d_model, hidden, cfg.n_experts, cfg.top_k, cfg.shared_expert)
            elif cfg.mlp == "swiglu":
                ffn = SwiGLU(cfg.d_model, cfg.mlp_hidden)
            else:
                ffn = GELUMLP(cfg.d_model, cfg.mlp_hidden)
            for k, f in ((2 * block, CausalSelfAttention(cfg)), (2 * block + 1, ffn)):
                self.layers.append(
                    build_connection(
                        cfg.connection,
                        cfg.d_model,
                        Branch(cfg, f),
                        k,
                        n=cfg.n,
                        m=cfg.m,
                        dynamic=cfg.dynamic,
                        impl=cfg.impl,
                    )
                )
        self.final_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.recompute = False  # recompute each layer in the backward pass (GPTModule sets it)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 style init: N(0, init_std); output projections also / sqrt(2 n_layer).

        ``output_init_scale`` applies HC Section 4's extra factor ``sqrt(n)`` to the output
        projections (attention ``out``, FFN ``down``) of HC/mHC models. The paper says the std
        is scaled "by a factor of sqrt(n)" without saying in which direction; both are offered.
        """
        cfg = self.cfg
        std = cfg.init_std
        out_std = std / math.sqrt(2 * cfg.n_layer)
        if cfg.connection in ("hc", "mhc") and cfg.output_init_scale != "none":
            factor = math.sqrt(cfg.n)
            out_std = (
                out_std / factor if cfg.output_init_scale == "divide_sqrt_n" else out_std * factor
            )
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_output = name.endswith((".out", ".down"))
                nn.init.normal_(module.weight, 0.0, out_std if is_output else std)
            elif isinstance(module, MoE):
                nn.init.normal_(module.w_gate, 0.0, std)
                nn.init.normal_(module.w_up, 0.0, std)
                nn.init.normal_(module.w_down, 0.0, out_std)

    def state(self, idx: torch.Tensor) -> torch.Tensor:
        """The carried state after the embedding, ``(B, T, d)``, ``(B, T, n, d)`` or
        ``(B, T, m, d/m)``: what :func:`hclib.connection_matrix` needs with ``connections()``.

        Under autocast (``bf16-mixed``) the state is held in the autocast dtype, so it moves
        and stores the bytes chapter 7 counts; every connection keeps its input's dtype and
        computes its coefficients in float32. ``state_dtype="weights"`` keeps it in the
        weights' dtype instead (float32 under ``bf16-mixed``), see
        :func:`hclib.models.wiring.carried_dtype`.
        """
        h = self.embed(idx)  # (B, T, d), the weights' dtype
        h = h.to(carried_dtype(h, self.cfg.state_dtype))
        return enter_state(self.cfg.connection, h, self.cfg.n, self.cfg.m)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(B, T, vocab)`` and, with ``targets`` ``(B, T)``, the training loss.

        The loss is the mean next-token cross-entropy plus, for MoE layers,
        ``aux_loss_coef`` times the load-balancing losses and ``z_loss_coef`` times the
        router z-losses. Targets equal to -100 are ignored.
        """
        if idx.dim() != 2:
            raise ValueError(f"idx must have shape (B, T), got {tuple(idx.shape)}")
        if idx.shape[1] > self.cfg.block_size:
            raise ValueError(
                f"sequence length {idx.shape[1]} exceeds block_size={self.cfg.block_size}"
            )
        H = self.state(idx)
        for layer in self.layers:
            if self.recompute and torch.is_grad_enabled():
                # keep only the layer's input; recompute its activations in the backward pass
                H = checkpoint(layer, H, use_reentrant=False)
            else:
                H = layer(H)
        logits = self.head(self.final_norm(leave_state(self.cfg.connection, H)))
        if targets is None:
            return logits, None
        loss = nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100
        )
        for moe in self.moe_modules():
            loss = loss + self.cfg.aux_loss_coef * moe.aux_loss + self.cfg.z_loss_coef * moe.z_loss
        return logits, loss

    def moe_modules(self) -> list[MoE]:
        """The MoE feed-forward layers, in order."""
        return [m for m in self.modules() if isinstance(m, MoE)]

    def connections(self) -> list[Connection]:
        """The ``2 n_layer`` connections in order (attention, FFN, attention, ...)."""
        return list(self.layers)

    def num_params(self, exclude_embedding: bool = True) -> int:
        """Number of parameters (tied weights once), without the embedding by default."""
        total = sum(p.numel() for p in self.parameters())
        return total - (self.embed.weight.numel() if exclude_embedding else 0)
