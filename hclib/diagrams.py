"""Drawn pictures of connections: what a layer computes, as a diagram rather than a data plot.

Every function draws onto a matplotlib ``Axes`` (a new figure when none is given) and returns
it, in the book's palette (:mod:`hclib.plotting`). The drawings are deterministic: they depend
only on their arguments, never on a random state.

The three blocks of an HC matrix keep one colour in every picture, so that a reader can match
the layer drawing with the matrix drawing: :data:`BLOCK_COLORS`.

Derived in: notebooks/02_hyper_connections.py (one layer, the HC matrix),
notebooks/03_dynamic_hyper_connections.py (per-token matrices as heatmaps), and chapters 4-6
(unfolded networks, FC's split against HC's copies, Sinkhorn steps, Birkhoff sums, stream flow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch, Rectangle

from hclib.plotting import PALETTE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "BLOCK_COLORS",
    "draw_hc_heatmap",
    "draw_hc_layer",
    "draw_hc_matrix",
    "draw_mixing_heatmap",
    "draw_permutation_sum",
    "draw_split_vs_copies",
    "draw_stream_flow",
    "draw_unfolded_network",
]

#: One colour per block of the HC matrix (Okabe-Ito, like :data:`hclib.plotting.PALETTE`).
BLOCK_COLORS: dict[str, str] = {
    "A_m": "#E69F00",  # orange: read-out, which streams enter the branch
    "B": "#009E73",  # bluish green: write-in, how much branch output each stream receives
    "A_r": PALETTE["hc"],  # blue: stream mixing
    "zero": PALETTE["reference"],  # grey: the fixed top-left zero
}
_INK = "#333333"  # lines and text that belong to no block


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive int (the number of streams), got {n!r}")


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize)
    return ax


def _bare(ax: Axes) -> None:
    """Axes for a drawing: equal aspect, no ticks, spines or grid."""
    ax.set_aspect("equal")
    ax.set_axis_off()


def draw_hc_layer(n: int = 3, ax: Axes | None = None) -> Axes:
    """One hyper-connected layer: ``n`` streams in, the branch ``T``, ``n`` streams out.

    Left to right: the streams ``H^{k-1}`` (rows of an ``(n, d)`` matrix) are read out with the
    weights ``A_m`` (``alpha_{i,0}``) into one vector, the branch input ``h_0``; the branch ``T``
    (its own norm, then attention or an FFN) maps it to ``T(h_0)``; meanwhile the streams are
    mixed with each other by ``A_r`` (``alpha_{i,j}``: old stream ``i`` into new stream ``j``);
    finally the branch output is written into stream ``i`` with the weight ``B_i`` (``beta_i``)
    and added, which gives ``H^k`` (HC Eqs. 2-5).

    Args:
        n: the number of streams (expansion rate), at least 1.
        ax: where to draw; a new figure of a suitable size when ``None``.

    Returns:
        The axes drawn on.
    """
    from matplotlib.patches import Circle, FancyBboxPatch

    _check_n(n)
    ax = _axes(ax, (7.6, 1.6 + 0.75 * n))
    _bare(ax)
    lane = [-1.0 * i for i in range(n)]  # y of stream i (stream 1 on top)
    y_branch = 1.7
    x_in, x_tap, x_mix0, x_mix1, x_add, x_out = 0.9, 1.7, 3.4, 6.0, 8.1, 9.4
    x_sum, x_t0, x_t1, x_fan = 2.9, 3.8, 6.7, 7.4

    def arrow(p, q, c, lw=1.4, style="-|>", **kw):
        ax.add_patch(
            FancyArrowPatch(p, q, arrowstyle=style, mutation_scale=10, color=c, lw=lw, **kw)
        )

    # the streams: lanes through the mixing box, then the "+" where B writes the branch output
    for i, y in enumerate(lane):
        ax.text(x_in - 0.15, y, f"$h^{{k-1}}_{i + 1}$", ha="right", va="center", color=_INK)
        ax.plot([x_in, x_mix0], [y, y], color=_INK, lw=1.6)
        ax.plot([x_mix1, x_add - 0.17], [y, y], color=_INK, lw=1.6)
        arrow((x_add + 0.17, y), (x_out, y), _INK, lw=1.6)
        ax.text(x_out + 0.15, y, f"$h^{{k}}_{i + 1}$", ha="left", va="center", color=_INK)
        ax.add_patch(Circle((x_add, y), 0.17, fc="white", ec=_INK, lw=1.2, zorder=3))
        ax.text(x_add, y, "+", ha="center", va="center", fontsize=9, zorder=4)
    ax.text(x_in - 0.35, lane[-1] - 0.75, "$H^{k-1}$: $n$ streams", ha="left", fontsize=9)
    ax.text(x_out + 0.6, lane[-1] - 0.75, "$H^{k}$", ha="right", fontsize=9)

    # A_r: every old stream feeds every new stream; the diagonal is the residual-like part
    c_r = BLOCK_COLORS["A_r"]
    top, bottom = lane[0] + 0.4, lane[-1] - 0.4
    ax.add_patch(
        FancyBboxPatch(
            (x_mix0, bottom), x_mix1 - x_mix0, top - bottom, boxstyle="round,pad=0.02",
            fc=c_r, alpha=0.10, ec=c_r, lw=1.2,
        )
    )  # fmt: skip
    for yi in lane:
        for yj in lane:
            diagonal = yi == yj
            ax.plot(
                [x_mix0, x_mix1], [yi, yj], color=c_r, lw=1.8 if diagonal else 0.7,
                alpha=1.0 if diagonal else 0.55,
            )  # fmt: skip
    ax.text(
        (x_mix0 + x_mix1) / 2, bottom - 0.25, r"$A_r$: mix the streams ($\alpha_{i,j}$)",
        ha="center", va="top", color=c_r, fontsize=9,
    )  # fmt: skip

    # A_m: weighted taps of every stream, summed into the branch input h_0
    c_m = BLOCK_COLORS["A_m"]
    for y in lane:
        ax.plot([x_tap, x_tap], [y, y], marker="o", ms=4, color=c_m)
        arrow((x_tap, y), (x_sum - 0.12, y_branch - 0.12), c_m, lw=1.2)
    ax.text(
        x_sum - 0.3, y_branch + 0.12, r"$A_m$: read out ($\alpha_{i,0}$)",
        ha="right", va="bottom", color=c_m, fontsize=9,
    )  # fmt: skip
    ax.add_patch(Circle((x_sum, y_branch), 0.17, fc="white", ec=c_m, lw=1.2, zorder=3))
    ax.text(x_sum, y_branch, r"$\Sigma$", ha="center", va="center", fontsize=8, zorder=4)
    arrow((x_sum + 0.17, y_branch), (x_t0, y_branch), _INK)
    ax.text((x_sum + x_t0) / 2, y_branch + 0.1, "$h_0$", ha="center", va="bottom", fontsize=9)

    # the branch T, exactly as in a Pre-Norm transformer block
    ax.add_patch(
        FancyBboxPatch(
            (x_t0, y_branch - 0.35), x_t1 - x_t0, 0.7, boxstyle="round,pad=0.05",
            fc="white", ec=_INK, lw=1.4,
        )
    )  # fmt: skip
    ax.text(
        (x_t0 + x_t1) / 2, y_branch, "$T$: Norm → attention or FFN",
        ha="center", va="center", fontsize=9,
    )  # fmt: skip

    # B: the branch output, written into every stream with its own weight
    c_b = BLOCK_COLORS["B"]
    ax.plot([x_t1, x_fan], [y_branch, y_branch], color=c_b, lw=1.4)
    ax.text((x_t1 + x_fan) / 2, y_branch + 0.1, "$T(h_0)$", ha="center", va="bottom", fontsize=9)
    for y in lane:
        arrow((x_fan, y_branch), (x_add - 0.1, y + 0.14), c_b, lw=1.2)
    ax.text(
        x_fan + 0.1, y_branch + 0.15, r"$B$: write in ($\beta_i$)",
        ha="left", va="bottom", color=c_b, fontsize=9,
    )  # fmt: skip
    ax.set_xlim(x_in - 0.7, x_out + 0.7)
    ax.set_ylim(lane[-1] - 1.0, y_branch + 0.7)
    return ax


def _block_of(row: int, col: int) -> str:
    if row == 0:
        return "zero" if col == 0 else "B"
    return "A_m" if col == 0 else "A_r"


def draw_hc_matrix(n: int = 3, ax: Axes | None = None) -> Axes:
    """The ``(n+1) x (n+1)`` HC matrix of HC Eq. 1, each cell named, each block labelled.

    ``[[0, B], [A_m, A_r]]`` with ``B = (beta_1 ... beta_n)`` (write-in), ``A_m = (alpha_{1,0}
    ... alpha_{n,0})^T`` (read-out) and ``A_r = (alpha_{i,j})`` (mixing), in the colours of
    :func:`draw_hc_layer`.

    Args:
        n: the number of streams, at least 1.
        ax: where to draw; a new figure when ``None``.

    Returns:
        The axes drawn on.
    """
    _check_n(n)
    ax = _axes(ax, (1.2 + 0.75 * (n + 1), 0.9 + 0.75 * (n + 1)))
    _bare(ax)
    size = n + 1
    for r in range(size):
        for c in range(size):
            block = _block_of(r, c)
            ax.add_patch(
                Rectangle((c, -r - 1), 1, 1, fc=BLOCK_COLORS[block], alpha=0.22, ec="white", lw=1.5)
            )
            if block == "zero":
                label = "0"
            elif block == "B":
                label = rf"$\beta_{c}$"
            elif block == "A_m":
                label = rf"$\alpha_{{{r},0}}$"
            else:
                label = rf"$\alpha_{{{r},{c}}}$"
            ax.text(c + 0.5, -r - 0.5, label, ha="center", va="center", fontsize=10)
    # block outlines and names outside the matrix
    outline = dict(fill=False, lw=1.8)
    ax.add_patch(Rectangle((1, -1), n, 1, ec=BLOCK_COLORS["B"], **outline))
    ax.add_patch(Rectangle((0, -size), 1, n, ec=BLOCK_COLORS["A_m"], **outline))
    ax.add_patch(Rectangle((1, -size), n, n, ec=BLOCK_COLORS["A_r"], **outline))
    ax.text(1 + n / 2, 0.15, "$B$: write-in", ha="center", va="bottom", color=BLOCK_COLORS["B"])
    ax.text(
        -0.15, -1 - n / 2, "$A_m$:\nread-out", ha="right", va="center",
        color=BLOCK_COLORS["A_m"],
    )  # fmt: skip
    ax.text(
        1 + n / 2, -size - 0.15, "$A_r$: stream mixing", ha="center", va="top",
        color=BLOCK_COLORS["A_r"],
    )  # fmt: skip
    ax.set_xlim(-1.6, size + 0.1)
    ax.set_ylim(-size - 0.8, 0.8)
    return ax


def draw_hc_heatmap(
    matrix: torch.Tensor,
    ax: Axes | None = None,
    *,
    vmax: float | None = None,
    title: str | None = None,
    annotate: bool = True,
    fmt: str = "{:.2f}",
) -> Axes:
    """A numeric ``(n+1) x (n+1)`` HC matrix as a heatmap, its blocks outlined as in
    :func:`draw_hc_matrix`.

    The colour scale is symmetric around 0 (red positive, blue negative), ``[-vmax, vmax]``;
    ``vmax`` defaults to the largest absolute entry, so pass the same ``vmax`` to heatmaps
    that should be compared.

    Args:
        matrix: ``(n+1, n+1)``, e.g. :meth:`hclib.HyperConnection.static_matrix`, or a
            per-token matrix assembled from :meth:`hclib.HyperConnection.mappings`.
        ax: where to draw; a new figure when ``None``.
        vmax: the end of the colour scale (> 0).
        title: drawn above the matrix.
        annotate: write each entry's value in its cell with ``fmt``.

    Returns:
        The axes drawn on; the image is ``ax.images[0]`` (for a colour bar).
    """
    m = torch.as_tensor(matrix).detach().to("cpu", torch.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
        raise ValueError(
            f"matrix must be square (n+1, n+1) with n >= 1, got shape {tuple(m.shape)}"
        )
    if not torch.isfinite(m).all():
        raise ValueError("matrix has non-finite entries")
    scale = float(m.abs().max()) if vmax is None else float(vmax)
    if not scale > 0:
        raise ValueError(f"vmax must be > 0, got {scale} (an all-zero matrix needs a vmax)")
    ax = _axes(ax, (2.6, 2.4))
    size = m.shape[0]
    ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, extent=(0, size, -size, 0))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    n = size - 1
    for (x, y, w, h), block in (
        ((1, -1, n, 1), "B"),
        ((0, -size, 1, n), "A_m"),
        ((1, -size, n, n), "A_r"),
    ):
        ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=BLOCK_COLORS[block], lw=2.0))
    if annotate:
        for r in range(size):
            for c in range(size):
                value = float(m[r, c])
                dark = abs(value) > 0.6 * scale
                ax.text(
                    c + 0.5, -r - 0.5, fmt.format(value), ha="center", va="center",
                    fontsize=8, color="white" if dark else "black",
                )  # fmt: skip
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlim(0, size)
    ax.set_ylim(-size, 0)
    return ax


# --- Chapters 4-6 ---


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
