"""Sharding the GPT with FSDP2 (``torch.distributed.fsdp.fully_shard``) under Lightning.

``configs/fsdp.yaml`` selects Lightning's ``ModelParallelStrategy``, which starts the
processes, builds a two-dimensional device mesh ``(data_parallel, tensor_parallel)`` (by
default: nodes x devices per node) and calls :meth:`GPTModule.configure_model`, which calls
:func:`shard_gpt` here. The book's models use no tensor parallelism, so the mesh's two
dimensions are read as FSDP2's *replicate* and *shard* dimensions:

* one node (``data_parallel`` of size 1): every parameter, gradient and optimizer state is
  sharded over the node's devices (FULL_SHARD);
* several nodes: sharded within a node and replicated across nodes (HSDP, FSDP1's
  HYBRID_SHARD), which keeps the all-gathers on the fast links inside a node. To shard over
  every device of every node instead, set the strategy's ``data_parallel_size: 1`` and
  ``tensor_parallel_size`` to nodes x devices.

Each connection (its branch inside) is one FSDP unit, and the root unit holds the embedding,
the final norm and the (tied) output layer. Gradients are averaged over every rank, as DDP
does, so a sharded run follows the single-process run on the same global batch.
``torch.nn.utils.clip_grad_norm_`` (what Lightning's ``gradient_clip_val`` calls) computes the
norm of the sharded gradients over all shards (they are DTensors), so clipping is exact.

Precision: no FSDP2 ``MixedPrecisionPolicy`` is set, so parameters are gathered and
gradients reduced in float32, and ``bf16-mixed`` works as on one device (autocast casts
each matrix product's inputs). A bfloat16 ``param_dtype`` would halve the gathers' bytes but
would also run the connections' coefficient math (their ``phi``, ``alpha``, static weights)
in bfloat16, which the book's connections keep in float32.

Used in: configs/fsdp.yaml, configs/cluster.yaml (through :class:`hclib.training.GPTModule`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["full_parameters", "is_sharded", "shard_gpt"]


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` or one of its submodules was sharded with ``fully_shard``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def shard_gpt(model: nn.Module, mesh) -> nn.Module:
    """Shard a :class:`hclib.models.GPT` in place: one FSDP2 unit per connection, then the root.

    Args:
        model: the GPT (its ``layers`` hold the connections).
        mesh: a ``DeviceMesh``, 1-D (shard) or 2-D (replicate, shard), e.g. Lightning's
            ``ModelParallelStrategy`` mesh ``(data_parallel, tensor_parallel)``.

    Returns the same module; calling it twice does nothing the second time.
    """
    from torch.distributed.fsdp import fully_shard

    if is_sharded(model):
        return model
    if mesh.ndim == 2 and mesh.size(0) == 1:
        mesh = mesh[mesh.mesh_dim_names[1]]  # one replica: plain sharding over the devices
    if mesh.ndim not in (1, 2):
        raise ValueError(f"expected a 1-D or 2-D device mesh, got {mesh.ndim} dimensions")
    for layer in model.layers:  # each connection with its branch
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the embedding, final norm and tied output layer
    return model


@contextlib.contextmanager
def full_parameters(model: nn.Module) -> Iterator[None]:
    """Gather every FSDP2-sharded parameter of ``model`` for the duration of the block.

    Every rank must enter it (it all-gathers). Inside, methods other than ``forward``
    (``GPT.state``, a connection's ``mappings``) see whole tensors. A no-op for an
    unsharded model.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not units:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    try:
        with torch.no_grad():
            yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
