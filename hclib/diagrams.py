"""Drawn pictures of connections: what a layer computes, as a diagram rather than a data plot.

Every function draws onto a matplotlib ``Axes`` (a new figure when none is given) and returns
it, in the book's palette (:mod:`hclib.plotting`). The drawings are deterministic: they depend
only on their arguments, never on a random state.

The three blocks of an HC matrix keep one colour in every picture, so that a reader can match
the layer drawing with the matrix drawing: :data:`BLOCK_COLORS`.

Derived in: notebooks/02_hyper_connections.py (one layer, the HC matrix) and
notebooks/03_dynamic_hyper_connections.py (per-token matrices as heatmaps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from hclib.plotting import PALETTE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["BLOCK_COLORS", "draw_hc_heatmap", "draw_hc_layer", "draw_hc_matrix"]

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
    from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch

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
    from matplotlib.patches import Rectangle

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
    from matplotlib.patches import Rectangle

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
