"""Random branches and parameter noise shared by the connection tests.

A branch is any callable ``(..., d) -> (..., d)`` carrying its own pre-norm; the tests use a
random ``Tanh o Linear o LayerNorm`` with a non-trivial norm gain and bias, so that no
claim holds by accident of an identity-like branch.
"""

import torch
from torch import nn

F64 = torch.float64


def prenorm_branch(d, dtype=F64, seed=None, eps=1e-5):
    """A random branch with its own pre-norm, T = Tanh o Linear o LayerNorm.

    Shapes: ``(..., d) -> (..., d)``.
    """
    if seed is not None:
        torch.manual_seed(seed)
    branch = nn.Sequential(nn.LayerNorm(d, eps=eps), nn.Linear(d, d), nn.Tanh()).to(dtype)
    nn.init.normal_(branch[0].weight, 1.0, 0.3)
    nn.init.normal_(branch[0].bias, 0.0, 0.3)
    return branch


def randomise(module, std=0.5):
    """Add N(0, std^2) noise to every parameter (static weights, projections, scales, branch)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module


def prenorm_stack(branches, h):
    """The Pre-Norm residual network ``h <- h + T(h)``; returns every layer's output."""
    outs = []
    for branch in branches:
        h = h + branch(h)
        outs.append(h)
    return outs
