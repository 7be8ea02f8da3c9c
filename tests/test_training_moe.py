"""The MoE load-balancing loss under data parallelism: two gloo processes, each routing half of
the batch, against one process routing all of it (hclib.models.moe's docstring)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hclib.models.moe import MoE

DIM, HIDDEN, EXPERTS, TOP_K, TOKENS = 16, 24, 4, 2, 64


def make_moe() -> tuple[MoE, torch.Tensor]:
    torch.manual_seed(0)
    moe = MoE(DIM, HIDDEN, EXPERTS, TOP_K)
    x = torch.randn(TOKENS, DIM)
    x[: TOKENS // 2] += 2.0 * torch.randn(DIM)  # the two halves route differently
    return moe, x


def aux_and_router_grad(moe: MoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    moe.zero_grad()
    moe(x)
    moe.aux_loss.backward()
    return moe.aux_loss.detach(), moe.router.weight.grad.clone()


def worker(rank: int, port: int, sync: bool, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        moe, x = make_moe()
        moe.sync_counts = sync
        half = x.chunk(2)[rank]
        aux, grad = aux_and_router_grad(moe, half)
        dist.all_reduce(aux)  # what DDP and FSDP do with the losses' gradients: average them
        dist.all_reduce(grad)
        out[(sync, rank)] = (aux / 2, grad / 2, moe.expert_load.clone())
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_balance_the_global_expert_counts_as_one_process_does():
    moe, x = make_moe()
    aux, grad = aux_and_router_grad(moe, x)
    load = moe.expert_load.clone()
    with mp.Manager() as manager:
        out = manager.dict()
        for sync in (True, False):
            mp.spawn(worker, args=(free_port(), sync, out), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        got_aux, got_grad, got_load = results[(True, rank)]
        torch.testing.assert_close(got_aux, aux, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got_grad, grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(got_load, load)  # the logged load is the global one too
    local_aux = results[(False, 0)][0]
    assert not torch.allclose(local_aux, aux, rtol=1e-3)  # per-rank counts: another loss
