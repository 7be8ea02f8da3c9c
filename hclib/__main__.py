"""``python -m hclib``: the smallest demo of the four connections.

It wraps the same random Pre-Norm branches in each connection, runs a short stack from the
papers' initialisation and prints how far each one is from the Pre-Norm residual network:
all four start as exactly that network (HC and mHC carry it in every one of their ``n``
streams, so their summed output is ``n`` times it).
"""

from __future__ import annotations

import torch
from torch import nn

import hclib


def main(depth: int = 6, dim: int = 64, n: int = 4, m: int = 4) -> None:
    torch.manual_seed(0)
    branches = [
        nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(depth)
    ]
    h = torch.randn(2, 16, dim, dtype=torch.float64)  # (B, T, d)
    branches = [b.double() for b in branches]

    reference = h
    for branch in branches:
        reference = reference + branch(reference)  # the Pre-Norm residual network

    stacks = {
        "Residual (pre)": ([hclib.Residual(dim, b) for b in branches], h, lambda x: x, 1),
        f"HyperConnection n={n}": (
            [hclib.HyperConnection(dim, b, n=n, layer_id=i) for i, b in enumerate(branches)],
            hclib.expand_streams(h, n),
            hclib.reduce_streams,
            n,
        ),
        f"FracConnection m={m}": (
            [hclib.FracConnection(dim, b, m=m, layer_id=i) for i, b in enumerate(branches)],
            hclib.split_fractions(h, m),
            hclib.merge_fractions,
            1,
        ),
        f"ManifoldHyperConnection n={n}": (
            [
                hclib.ManifoldHyperConnection(dim, b, n=n, layer_id=i).double()
                for i, b in enumerate(branches)
            ],
            hclib.expand_streams(h, n),
            hclib.reduce_streams,
            n,
        ),
    }
    print(f"{depth} layers, d={dim}, tokens={tuple(h.shape[:-1])}, float64")
    print(f"{'connection':<30} {'state':<18} {'max |out/k - PreNorm|':>22}")
    for name, (layers, state, read_out, k) in stacks.items():
        shape = tuple(state.shape[2:]) or (dim,)
        for layer in layers:
            state = layer(state)
        error = (read_out(state) / k - reference).abs().max().item()
        print(f"{name:<30} {str(shape):<18} {error:>22.2e}")


if __name__ == "__main__":
    main()
