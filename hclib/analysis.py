"""Reading a stack of connections: unfolded connection matrices and Amax gains.

* :func:`connection_matrix` unfolds a stack of connections into the layer-to-layer matrix of
  HC Eq. 27: entry ``(k, j)`` says how much of layer ``j``'s output reaches layer ``k``'s
  input. Pre-Norm gives the strictly lower-triangular matrix of ones; HC learns a
  Lambda-shaped pattern (HC Section 4.5).
* :func:`capture_branch_inputs`, :func:`adjacent_cosine_similarity` and
  :func:`branch_grad_norms` give the two sides of the seesaw (HC Section 1, Figure 3):
  how similar consecutive layers' inputs are (representation collapse) and how large each
  layer's gradient is (vanishing gradients).
* :func:`amax_gain` measures how much a mixing matrix can amplify a signal going forward
  (max absolute row sum) or a gradient going backward (max absolute column sum), the
  measure mHC Section 3.1 uses to show that unconstrained HC products explode.

Derived in: notebooks/01_residual_connections (seesaw measures),
notebooks/04_what_hyper_connections_express (unfolding),
notebooks/06_manifold_constrained_hyper_connections (gains).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import nn

from hclib.connection import Connection, Mappings
from hclib.frac import FracConnection

__all__ = [
    "AmaxGain",
    "adjacent_cosine_similarity",
    "amax_gain",
    "branch_grad_norms",
    "capture_branch_inputs",
    "connection_matrix",
]


class AmaxGain(NamedTuple):
    """Forward gain (max absolute row sum) and backward gain (max absolute column sum)."""

    forward: torch.Tensor
    backward: torch.Tensor


def amax_gain(M: torch.Tensor) -> AmaxGain:
    """Amax gain magnitudes of mixing matrices (mHC Section 3.1).

    ``forward = max_i |sum_j M_ij|`` bounds how much ``M x`` can grow a signal whose streams
    are equal; ``backward = max_j |sum_i M_ij|`` does the same for the gradient ``M^T g``.
    Both are 1 for the identity and for every doubly stochastic matrix.

    Args:
        M: ``(..., n, n)``; the paper applies it to token-averaged mappings.

    Returns:
        ``AmaxGain(forward, backward)``, each of shape ``(...)``.
    """
    if not isinstance(M, torch.Tensor):
        raise TypeError(f"M must be a torch.Tensor, got {type(M).__name__}")
    if M.dim() < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"M must have shape (..., n, n), got {tuple(M.shape)}")
    if M.shape[-1] == 0:
        raise ValueError(f"M must have shape (..., n, n) with n >= 1, got {tuple(M.shape)}")
    forward = M.sum(dim=-1).abs().amax(dim=-1)  # max |row sum|
    backward = M.sum(dim=-2).abs().amax(dim=-1)  # max |column sum|
    return AmaxGain(forward=forward, backward=backward)


def _token_mean(mappings: Mappings, streams: int, frac: bool) -> Mappings:
    """Average per-token mappings over every batch dimension."""
    pre_shape = (streams, streams) if frac else (streams,)
    return Mappings(
        pre=mappings.pre.reshape(-1, *pre_shape).mean(dim=0),
        post=mappings.post.reshape(-1, streams).mean(dim=0),
        res=mappings.res.reshape(-1, streams, streams).mean(dim=0),
    )


def connection_matrix(layers: Sequence[nn.Module], H: torch.Tensor | None = None) -> torch.Tensor:
    """Unfold a stack of connections into its layer-to-layer connection matrix (HC Eq. 27).

    Layers are numbered ``0 .. L+1``: 0 is the embedding (written into every stream, the
    replication of HC Section 2.1), ``1 .. L`` are the branches of ``layers`` in order and
    ``L+1`` is the output (the sum of the streams, HC Algorithm 1). With the mHC naming
    of :class:`hclib.connection.Mappings`, the input of layer ``k`` receives the output of
    layer ``j < k`` with weight (HC Eq. 27, ``c_kj = B^j (prod A_r^t) A_m^k``)::

        C[k, j] = pre^k  res^{k-1} ... res^{j+1}  post^j        (a scalar)

    with ``post^0 = 1`` and ``pre^{L+1} = 1``. Pre-Norm residual layers give the strictly
    lower-triangular matrix of ones. For frac-connections each entry is the ``m x m`` block
    ``pre^k res^{k-1} ... res^{j+1} diag(post^j)`` mapping fraction ``q`` of layer ``j``'s
    output to fraction ``p`` of layer ``k``'s input (the embedding and output blocks are
    identities: FC splits and concatenates).

    Dynamic connections have per-token weights: ``H``, the state entering the first layer,
    is forwarded through the stack and each layer's mappings are averaged over its tokens
    before they are composed (as mHC's Figure 8 averages its matrices).

    Args:
        layers: the connections in order, all of one kind: ``Residual``, ``HyperConnection``
            or ``ManifoldHyperConnection`` (with one ``n``), or ``FracConnection`` (one ``m``).
        H: the state entering ``layers[0]``: ``(..., n, d)``, ``(..., m, d/m)`` or, for
            residual layers, ``(..., d)``. Needed when any weight depends on the input.

    Returns:
        ``(L+2, L+2)``, or ``(L+2, L+2, m, m)`` for frac-connections; zero on and above
        the diagonal.
    """
    layers = _check_connections(layers)
    frac = isinstance(layers[0], FracConnection)
    if any(isinstance(layer, FracConnection) != frac for layer in layers):
        raise TypeError("cannot unfold a stack that mixes frac-connections with stream connections")

    per_layer: list[Mappings] = []
    with torch.no_grad():
        for layer in layers:
            maps = layer.mappings(H)
            streams = maps.post.shape[-1]
            per_layer.append(_token_mean(maps, streams, frac))
            if H is not None:
                H = layer(H)
    sizes = {maps.post.shape[-1] for maps in per_layer}
    if len(sizes) != 1:
        raise ValueError(f"all layers must carry the same number of streams, got {sorted(sizes)}")
    k = sizes.pop()
    dtype, device = per_layer[0].res.dtype, per_layer[0].res.device
    eye = torch.eye(k, dtype=dtype, device=device)
    ones = torch.ones(k, dtype=dtype, device=device)
    L = len(layers)

    if frac:
        # block form: read-out pre^k (m, m), write-in diag(post^j), mixing res (m, m)
        pres = [m.pre for m in per_layer] + [eye]
        posts = [eye] + [torch.diag(m.post) for m in per_layer]
        out = torch.zeros(L + 2, L + 2, k, k, dtype=dtype, device=device)
    else:
        pres = [m.pre.unsqueeze(0) for m in per_layer] + [ones.unsqueeze(0)]  # (1, k) rows
        posts = [ones.unsqueeze(1)] + [m.post.unsqueeze(1) for m in per_layer]  # (k, 1) cols
        out = torch.zeros(L + 2, L + 2, dtype=dtype, device=device)
    res = [None] + [m.res for m in per_layer]  # res[t] is layer t's mixing, t = 1..L

    for target in range(1, L + 2):
        row = pres[target - 1]  # pre^target: how layer `target` reads the state
        for source in range(target - 1, -1, -1):
            block = row @ posts[source]  # pre^k res^{k-1} ... res^{j+1} post^j
            out[target, source] = block if frac else block.squeeze()
            if source > 0:
                row = row @ res[source]  # one more mixing step back in depth
    return out


def _check_connections(layers: Sequence[nn.Module]) -> list[Connection]:
    layers = list(layers)
    if not layers:
        raise ValueError("layers must hold at least one connection")
    for layer in layers:
        if not isinstance(layer, Connection):
            raise TypeError(f"every layer must be an hclib connection, got {type(layer).__name__}")
    return layers


@contextmanager
def capture_branch_inputs(layers: Sequence[nn.Module]) -> Iterator[list[torch.Tensor | None]]:
    """Record the input each connection hands its branch (the "layer input" ``h_0``).

    Usage::

        with capture_branch_inputs(model.layers) as inputs:
            model(x)
        # inputs[k]: the detached input of layer k's branch, shape (..., d)

    The list holds the inputs of the latest forward pass.
    """
    layers = _check_connections(layers)
    inputs: list[torch.Tensor | None] = [None] * len(layers)
    handles, swapped = [], []
    for k, layer in enumerate(layers):
        branch = layer.branch
        if isinstance(branch, nn.Module):

            def hook(module, args, k=k):
                inputs[k] = args[0].detach()

            handles.append(branch.register_forward_pre_hook(hook))
        else:

            def recording(x, *args, _branch=branch, _k=k, **kwargs):
                inputs[_k] = x.detach()
                return _branch(x, *args, **kwargs)

            layer.branch = recording
            swapped.append((layer, branch))
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()
        for layer, branch in swapped:
            layer.branch = branch


def adjacent_cosine_similarity(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine similarity between the inputs of consecutive layers, token by token.

    HC Figure 3 and FC Figure 2: high similarity deep in a Pre-Norm network means the
    layers see nearly the same input (representation collapse).

    Args:
        inputs: ``L`` tensors of shape ``(..., d)`` (same shape), e.g. from
            :func:`capture_branch_inputs`.

    Returns:
        ``(L - 1, tokens)``: row ``k`` compares layer ``k`` with layer ``k + 1``.
    """
    inputs = list(inputs)
    if len(inputs) < 2:
        raise ValueError(f"need the inputs of at least 2 layers, got {len(inputs)}")
    shapes = {tuple(x.shape) for x in inputs}
    if len(shapes) != 1:
        raise ValueError(f"all layer inputs must have one shape, got {sorted(shapes)}")
    flat = torch.stack([x.reshape(-1, x.shape[-1]) for x in inputs])  # (L, tokens, d)
    return nn.functional.cosine_similarity(flat[:-1], flat[1:], dim=-1)  # (L-1, tokens)


def branch_grad_norms(layers: Sequence[nn.Module]) -> torch.Tensor:
    """The L2 norm of the gradient of each connection's branch parameters, ``(L,)``.

    Call after ``loss.backward()``. Small norms in the first layers are Post-Norm's
    vanishing gradients (Xiong et al. 2020; HC Section 1).
    """
    layers = _check_connections(layers)
    norms = []
    for layer in layers:
        branch = layer.branch
        params = branch.parameters() if isinstance(branch, nn.Module) else ()
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            norms.append(torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in grads])))
        else:
            norms.append(torch.tensor(float("nan")))
    return torch.stack([x.detach().float().cpu() for x in norms])
