"""The GPT as a LightningModule: one switch for the connection, AdamW with the papers'
weight-decay rule, warmup plus cosine, optional recomputation and ``torch.compile``.

The constructor's arguments are :class:`hclib.models.GPTConfig`'s fields (so a recipe says
``model.connection: hc`` and ``model.n: 4``) followed by the optimisation settings. The
batch is ``(x, y, i)`` from :class:`hclib.training.CorpusDataModule`: token ids, next-token
targets and the micro-batch index.

Used in: notebooks/09_small_gpt and 10_moe_llm_with_lightning.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

from hclib.models.gpt import GPT, GPTConfig
from hclib.optim import param_groups
from hclib.training.checkpoints import load_weights
from hclib.training.schedule import WarmupCosine
from hclib.training.sharding import shard_gpt

__all__ = ["GPTModule"]


class GPTModule(pl.LightningModule):
    """Train :class:`hclib.models.GPT` on next-token prediction.

    The model arguments are :class:`hclib.models.GPTConfig`'s fields, same names and
    defaults. Under the CLI, ``vocab_size`` comes from the corpus and ``block_size`` from
    ``data.block_size``.

    Args:
        vocab_size: tokens in the vocabulary (linked from the corpus by the CLI).
        block_size: longest sequence, the RoPE tables' length (linked from data.block_size).
        n_layer: transformer blocks; each has two connections (attention, feed-forward).
        n_head: attention heads; must divide d_model, with an even head width for RoPE.
        d_model: model width d.
        mlp: feed-forward layer, "swiglu" or "gelu".
        mlp_ratio: GELU hidden width = ratio * d; SwiGLU's is 2/3 of that, to a multiple of 8.
        connection: how the sublayers are joined: "residual", "hc", "fc" or "mhc".
        n: streams (expansion rate) of hc and mhc.
        m: fractions of fc; must divide d_model.
        dynamic: input-dependent weights for hc and fc (DHC, DFC); false: static.
        output_init_scale: HC's sqrt(n) init of the output projections: "none",
            "divide_sqrt_n" or "multiply_sqrt_n".
        rope_theta: RoPE base.
        norm_eps: RMSNorm epsilon.
        dropout: attention and branch dropout probability.
        tie_embeddings: the output layer shares the embedding matrix.
        init_std: std of the linear and embedding weights at init.
        moe_layers: blocks (0-based) whose feed-forward layer is a mixture of experts.
        n_experts: routed experts per MoE layer.
        top_k: experts per token.
        moe_hidden: hidden width of each expert (None: the dense SwiGLU's).
        shared_expert: one always-on expert beside the routed ones.
        aux_loss_coef: weight of the MoE load-balancing loss (from global expert counts).
        z_loss_coef: weight of the MoE router z-loss.
        state_dtype: the carried state under autocast: "autocast" holds it in the autocast
            dtype (bfloat16 under bf16-mixed), "weights" in the weights' dtype (float32).
            The connections' coefficients are float32 either way.
        impl: the connections' kernels: "auto", "torch", "compile" or "triton"
            (hclib.kernels.dispatch).
        lr: peak learning rate of AdamW.
        min_lr_ratio: the cosine's floor as a fraction of lr.
        warmup_steps: linear warmup steps; a warmup as long as the run is shortened to a
            tenth of it, with a warning.
        decay_steps: step where the cosine reaches its floor (None: trainer.max_steps).
        weight_decay: AdamW decay of the matrices; norms, biases, gates and the
            connections' static weights take none (hclib.param_groups).
        betas: AdamW's betas.
        eps: AdamW's epsilon.
        compile: torch.compile the model (or each layer, with recompute).
        recompute: activation recomputation: keep only each layer's input and recompute its
            connection and branch in the backward pass (torch.utils.checkpoint).
        init_from: a checkpoint (a .ckpt file or a sharded checkpoint folder) whose weights
            start a new run, with a fresh optimizer and schedule; the architecture must match.

    Logged: ``train/loss`` (the optimised loss), ``train/ce`` (its cross-entropy part),
    ``val/loss`` (cross-entropy; ``test/loss`` under ``python -m hclib.train test``, which
    evaluates the validation split), and for MoE models ``moe/aux_loss/block{b}``,
    ``moe/z_loss/block{b}``, ``moe/load/block{b}/expert{e}`` (fraction of assignments over
    all ranks) and ``moe/load_max/block{b}`` (the busiest expert's load times ``n_experts``:
    1 is balanced).

    Under Lightning's ``ModelParallelStrategy`` (``configs/fsdp.yaml``),
    :meth:`configure_model` shards the model with FSDP2 (:func:`hclib.training.shard_gpt`).
    """

    def __init__(
        self,
        vocab_size: int = 256,
        block_size: int = 256,
        n_layer: int = 4,
        n_head: int = 4,
        d_model: int = 128,
        mlp: Literal["swiglu", "gelu"] = "swiglu",
        mlp_ratio: float = 4.0,
        connection: Literal["residual", "hc", "fc", "mhc"] = "residual",
        n: int = 4,
        m: int = 4,
        dynamic: bool = True,
        output_init_scale: Literal["none", "divide_sqrt_n", "multiply_sqrt_n"] = "none",
        rope_theta: float = 10000.0,
        norm_eps: float = 1e-6,
        dropout: float = 0.0,
        tie_embeddings: bool = True,
        init_std: float = 0.02,
        moe_layers: list[int] | None = None,
        n_experts: int = 8,
        top_k: int = 2,
        moe_hidden: int | None = None,
        shared_expert: bool = False,
        aux_loss_coef: float = 0.01,
        z_loss_coef: float = 0.001,
        state_dtype: Literal["autocast", "weights"] = "autocast",
        impl: Literal["auto", "torch", "compile", "triton"] = "auto",
        lr: float = 3e-4,
        min_lr_ratio: float = 0.1,
        warmup_steps: int = 100,
        decay_steps: int | None = None,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        compile: bool = False,
        recompute: bool = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        given = dict(self.hparams)
        known = {f.name for f in fields(GPTConfig)}
        values = {k: v for k, v in given.items() if k in known}
        values["moe_layers"] = list(moe_layers or [])
        self.cfg = GPTConfig(**values)
        self.model = GPT(self.cfg)
        if init_from is not None:
            load_weights(self.model, init_from)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if decay_steps is not None and decay_steps <= warmup_steps:
            raise ValueError(f"decay_steps={decay_steps} must exceed warmup_steps={warmup_steps}")
        self.recompute = bool(recompute)
        self.model.recompute = self.recompute
        self.moe_blocks = list(self.cfg.moe_layers)
        if compile:
            if self.recompute:
                for layer in self.model.layers:
                    layer.compile()
            else:
                self.model.compile()

    # ----------------------------------------------------------------------------- forward

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``GPT.forward``: logits ``(B, T, vocab)`` and, with targets, the loss; with
        ``recompute`` each layer's activations are recomputed in the backward pass
        (``GPT.recompute``, inside the model's own forward, so FSDP's hooks see it)."""
        return self.model(idx, targets)

    def _aux_total(self) -> torch.Tensor | float:
        cfg = self.cfg
        return sum(
            cfg.aux_loss_coef * moe.aux_loss + cfg.z_loss_coef * moe.z_loss
            for moe in self.model.moe_modules()
        )

    # ---------------------------------------------------------------------------- training

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        if self.cfg.dropout > 0 and len(batch) > 2:
            self._seed_step(int(batch[2]))
        _, loss = self(x, y)
        log_now = self._log_now()
        self.log("train/loss", loss, prog_bar=True)
        if self.moe_blocks and log_now:
            self.log("train/ce", loss.detach() - self._aux_total())
            self._log_moe()
        elif not self.moe_blocks:
            self.log("train/ce", loss.detach())
        return loss

    def _seed_step(self, i: int) -> None:
        """Dropout of micro-batch ``i`` depends on (data seed, i, rank) only: exact resume."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        seed = getattr(dm, "seed", 0)
        rank = self.global_rank if self._trainer is not None else 0
        state = np.random.SeedSequence([int(seed), i, rank, 1]).generate_state(1, np.uint64)[0]
        torch.manual_seed(int(state) & 0x7FFF_FFFF_FFFF_FFFF)

    def _log_now(self) -> bool:
        if self._trainer is None:
            return True
        every = max(1, self.trainer.log_every_n_steps)
        # Lightning writes the logged values when (global_step + 1) % every == 0 (global_step is
        # the count of finished steps): log on that step so the value written is this step's.
        return (self.trainer.global_step + 1) % every == 0

    def _log_moe(self) -> None:
        for block, moe in zip(self.moe_blocks, self.model.moe_modules(), strict=True):
            self.log(f"moe/aux_loss/block{block}", moe.aux_loss.detach())
            self.log(f"moe/z_loss/block{block}", moe.z_loss.detach())
            load = moe.expert_load  # (E,) fractions of assignments, summing to 1
            self.log(f"moe/load_max/block{block}", load.max() * moe.n_experts)
            for e in range(moe.n_experts):
                self.log(f"moe/load/block{block}/expert{e}", load[e])

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits, _ = self(x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """``python -m hclib.train test``: the validation loss, logged as ``test/loss``."""
        x, y = batch[0], batch[1]
        logits, _ = self(x)
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        self.log("test/loss", loss, sync_dist=True, batch_size=x.shape[0])
        return loss

    def configure_model(self) -> None:
        """Shard the model with FSDP2 under ``ModelParallelStrategy`` (a no-op otherwise)."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None:
            shard_gpt(self.model, mesh)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(self.model, hp.weight_decay)
        for group in groups:
            group.pop("names")
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps)
        total = hp.decay_steps
        if total is None:
            total = self.trainer.max_steps if self._trainer is not None else -1
            if total is None or total < 0:
                raise ValueError(
                    "the cosine schedule needs a length: set trainer.max_steps or model.decay_steps"
                )
        warmup = hp.warmup_steps
        if warmup >= total:
            warmup = total // 10
            rank_zero_warn(
                f"model.warmup_steps={hp.warmup_steps} is not shorter than the run's "
                f"{total} steps; warming up for {warmup} steps instead"
            )
        schedule = WarmupCosine(warmup, total, hp.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
