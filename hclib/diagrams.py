"""Pictures of connections drawn by code: networks, states and mixing matrices.

Every function draws onto matplotlib axes it is given (or creates), in the book's palette
(:mod:`hclib.plotting`), and is deterministic: the same arrays give the same picture.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch, Rectangle

from hclib.plotting import PALETTE

# --- Chapters 4-6 ---

__all__ = [
    "draw_mixing_heatmap",
    "draw_permutation_sum",
    "draw_split_vs_copies",
    "draw_stream_flow",
    "draw_unfolded_network",
]


def _as_array(M) -> np.ndarray:
    """A float numpy copy of a tensor or array (torch tensors are detached first)."""
    if hasattr(M, "detach"):
        M = M.detach().cpu().numpy()
    return np.array(M, dtype=float)


def _blank(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def draw_unfolded_network(C, ax_net, ax_mat, color: str, title: str = "", fmt: str = "{:.2g}"):
    """A small network drawn as boxes and arcs beside its unfolded connection matrix.

    Layer 0 is the embedding, layers ``1..L`` the branches and layer ``L+1`` the output, as in
    :func:`hclib.connection_matrix`. Each arc ``j -> k`` is drawn with a width proportional to
    ``|c_kj|`` (no arc where ``c_kj = 0``); the matrix shows the same numbers.

    Args:
        C: ``(L+2, L+2)`` strictly lower-triangular connection matrix.
        ax_net, ax_mat: axes for the network and for the matrix.
        color: colour of the arcs and of the matrix's colour map.
        title: written above the network.
        fmt: format of the numbers written into the matrix cells.

    Derived in: notebooks/04_what_hyper_connections_express.
    """
    C = _as_array(C)
    size = C.shape[0]
    if C.ndim != 2 or C.shape[1] != size or size < 2:
        raise ValueError(f"C must be a square (L+2, L+2) matrix, got shape {C.shape}")
    names = ["emb"] + [str(k) for k in range(1, size - 1)] + ["out"]
    top = np.abs(C).max() or 1.0
    # the network: boxes stacked bottom (embedding) to top (output), arcs on the right
    for k, name in enumerate(names):
        ax_net.add_patch(
            Rectangle((-0.5, k - 0.3), 1.0, 0.6, facecolor="white", edgecolor="black", lw=1)
        )
        ax_net.text(0, k, name, ha="center", va="center", fontsize=8)
    for k in range(size):
        for j in range(k):
            weight = abs(C[k, j]) / top
            if weight == 0:
                continue
            arc = FancyArrowPatch(
                (0.5, j + 0.15),
                (0.5, k - 0.15),
                connectionstyle="arc3,rad=0.5",
                arrowstyle="-|>",
                mutation_scale=6,
                lw=0.3 + 1.7 * weight,
                color=to_rgba(color, 0.25 + 0.75 * weight),
            )
            ax_net.add_patch(arc)
    ax_net.set_xlim(-0.7, 0.8 + 0.28 * size)
    ax_net.set_ylim(-0.6, size - 0.4)
    ax_net.set_title(title, color=color)
    _blank(ax_net)
    # the matrix: zero cells on and above the diagonal left blank
    shown = np.where(np.tril(np.ones_like(C, dtype=bool), -1), C, np.nan)
    cmap = plt.matplotlib.colors.LinearSegmentedColormap.from_list("c", ["white", color])
    ax_mat.imshow(shown, cmap=cmap, vmin=0, vmax=top, origin="lower")
    for k in range(size):
        for j in range(k):
            value = C[k, j]
            ink = "white" if abs(value) / top > 0.6 else "black"
            ax_mat.text(j, k, fmt.format(value), ha="center", va="center", fontsize=7, color=ink)
    ax_mat.set_xticks(range(size), names, fontsize=7)
    ax_mat.set_yticks(range(size), names, fontsize=7)
    ax_mat.set_xlabel("source layer j")
    ax_mat.set_ylabel("target layer k")
    ax_mat.grid(False)


def draw_split_vs_copies(d: int, n: int, m: int, ax=None, cmap: str = "viridis"):
    """The hidden state ``h`` (d features), HC's ``n`` copies of it and FC's ``m`` fractions.

    Drawn to scale: one unit of width is one feature, one unit of height one row of the state.
    The colour of a cell is its feature index, so a reader sees HC repeat every feature
    ``n`` times while FC places each feature once.

    Derived in: notebooks/05_frac_connections.
    """
    if d % m:
        raise ValueError(f"d={d} is not divisible by m={m} fractions")
    if ax is None:
        _, ax = plt.subplots(figsize=(7.5, 3.2))
    features = np.arange(d)[None, :]
    gap = 1.2
    blocks = [  # (label, image, x offset, y offset, edge colour)
        ("h: the hidden state, (d,)", features, 0, n + m + 2 * gap, "black"),
        (f"HC: n={n} copies, (n, d)", np.repeat(features, n, axis=0), 0, m + gap, PALETTE["hc"]),
        (f"FC: m={m} fractions, (m, d/m)", features.reshape(m, d // m), 0, 0, PALETTE["fc"]),
    ]
    for label, image, x0, y0, edge in blocks:
        rows, cols = image.shape
        ax.imshow(
            image,  # row 0 on top, as H is written
            cmap=cmap,
            vmin=0,
            vmax=d - 1,
            extent=(x0, x0 + cols, y0, y0 + rows),
            interpolation="nearest",
        )
        for r in range(rows + 1):
            ax.plot([x0, x0 + cols], [y0 + r, y0 + r], color=edge, lw=1.2)
        ax.plot([x0, x0], [y0, y0 + rows], color=edge, lw=1.2)
        ax.plot([x0 + cols, x0 + cols], [y0, y0 + rows], color=edge, lw=1.2)
        ax.text(d + 1, y0 + rows / 2, f"{label}\n{rows * cols} numbers", va="center", fontsize=9)
    ax.set_xlim(-0.5, 1.75 * d)
    ax.set_ylim(-0.5, n + m + 2 * gap + 1.5)
    ax.set_aspect("equal")
    _blank(ax)
    return ax


def _sum_label(s: float) -> str:
    """A row or column sum: three decimals near 1, three significant digits otherwise."""
    return f"{s:.3f}" if abs(s) < 10 else f"{s:.3g}"


def draw_mixing_heatmap(M, ax, color: str, title: str = "", vmax: float = 1.0, sums: bool = True):
    """A small mixing matrix as a heatmap with its entries, row sums and column sums.

    Row sums are written to the right of each row, column sums under each column; a sum that
    is 1 to three decimals is written in black, any other in the book's vermilion.

    Derived in: notebooks/06_manifold_constrained_hyper_connections.
    """
    M = _as_array(M)
    n_rows, n_cols = M.shape
    cmap = plt.matplotlib.colors.LinearSegmentedColormap.from_list("c", ["white", color])
    ax.imshow(M, cmap=cmap, vmin=0, vmax=vmax)
    for i in range(n_rows):
        for j in range(n_cols):
            ink = "white" if M[i, j] / vmax > 0.6 else "black"
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=7, color=ink)
    if sums:
        for i, s in enumerate(M.sum(1)):
            ink = "black" if abs(s - 1) < 5e-4 else PALETTE["pre-norm"]
            ax.text(n_cols - 0.3, i, _sum_label(s), va="center", fontsize=7, color=ink)
        for j, s in enumerate(M.sum(0)):
            ink = "black" if abs(s - 1) < 5e-4 else PALETTE["pre-norm"]
            ax.text(j, n_rows - 0.2, _sum_label(s), ha="center", va="top", fontsize=7, color=ink)
    ax.set_xlim(-0.5, n_cols + (0.6 if sums else -0.5))
    ax.set_ylim(n_rows + (0.3 if sums else -0.5), -0.5)
    ax.set_title(title, fontsize=9)
    _blank(ax)


def draw_permutation_sum(M, weights, perms, color: str, max_terms: int = 5):
    """A doubly stochastic matrix drawn as ``M = w_1 P_1 + w_2 P_2 + ...`` (Birkhoff).

    Args:
        M: ``(n, n)`` the matrix on the left-hand side.
        weights: the convex weights, largest first.
        perms: ``perms[t][i]`` is the column of the 1 in row ``i`` of ``P_t``.
        color: colour of the heatmaps.
        max_terms: terms drawn; the remaining ones are summarised by their total weight.

    Returns the figure.

    Derived in: notebooks/06_manifold_constrained_hyper_connections.
    """
    M = _as_array(M)
    n = M.shape[0]
    shown = min(max_terms, len(weights))
    rest = float(np.sum(weights[shown:]))
    panels = shown + 1 + (rest > 0)
    cols = min(panels, 3)
    rows = -(-panels // cols)  # ceiling
    fig, grid = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.3 * rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[panels:]:
        _blank(ax)
    draw_mixing_heatmap(M, axes[0], color, "M", sums=False)
    for t in range(shown):
        P = np.zeros((n, n))
        P[np.arange(n), np.asarray(perms[t])] = 1.0
        draw_mixing_heatmap(P, axes[t + 1], color, f"{weights[t]:.3f} x", sums=False)
    if rest > 0:
        ax = axes[panels - 1]
        ax.text(
            0.5,
            0.5,
            f"+ {len(weights) - shown} more\nterms, total\nweight {rest:.3f}",
            ha="center",
            va="center",
            fontsize=10,
            transform=ax.transAxes,
        )
        _blank(ax)
    for t in range(1, shown + 1):  # "=" after M, "+" between the terms
        sign = "=" if t == 1 else "+"
        axes[t].text(-0.85, (n - 1) / 2, sign, ha="center", va="center", fontsize=16)
    fig.tight_layout()
    return fig


def draw_stream_flow(res, ax, color: str, title: str = "", negative: str | None = None):
    """How ``n`` streams flow through a stack of mixing matrices ``H_res`` (mHC notation).

    Streams are horizontal lanes, layers are columns; a band from stream ``i`` at layer ``l``
    to stream ``j`` at layer ``l+1`` has a width proportional to ``sqrt(|H_res[l][j, i]|)``
    (the share of stream ``i`` that goes into stream ``j``; the square root keeps entries of a
    few hundredths visible next to diagonal entries near 1). Negative entries are drawn dashed in
    ``negative`` (default: the book's vermilion).

    Args:
        res: ``(layers, n, n)`` mixing matrices, ``x_{l+1} = H_res[l] x_l``.

    Derived in: notebooks/06_manifold_constrained_hyper_connections.
    """
    res = _as_array(res)
    if res.ndim != 3 or res.shape[1] != res.shape[2]:
        raise ValueError(f"res must have shape (layers, n, n), got {res.shape}")
    negative = negative or PALETTE["pre-norm"]
    layers, n, _ = res.shape
    top = np.abs(res).max() or 1.0
    for layer in range(layers):
        for i in range(n):
            for j in range(n):
                w = res[layer, j, i]
                if abs(w) < 0.01 * top:
                    continue
                ax.plot(
                    [layer, layer + 1],
                    [i, j],
                    ls="-" if w > 0 else "--",
                    color=color if w > 0 else negative,
                    lw=0.2 + 4.0 * np.sqrt(abs(w) / top),
                    alpha=0.4 + 0.6 * np.sqrt(abs(w) / top),
                    solid_capstyle="butt",
                )
    for layer in range(layers + 1):
        ax.scatter([layer] * n, range(n), s=14, color="black", zorder=3)
    ax.set_yticks(range(n), [f"stream {i}" for i in range(n)], fontsize=8)
    ax.set_xticks(range(layers + 1))
    ax.set_xlabel("layer boundary l")
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_title(title, color=color)
    ax.grid(False)
