"""The book's palette and figure helpers: one colour per connection, one style.

Colours come from the Okabe-Ito palette, which stays distinguishable for colour-blind
readers and in greyscale print.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["PALETTE", "color", "set_log_ticks", "show_figure", "use_book_style"]

PALETTE: dict[str, str] = {
    "pre-norm": "#D55E00",  # vermilion: the Pre-Norm residual (HC Figure 3's red)
    "post-norm": "#000000",  # black: far from Pre-Norm's vermilion
    "hc": "#0072B2",  # blue: hyper-connections (HC Figure 3's blue)
    "fc": "#009E73",  # green: frac-connections
    "mhc": "#CC79A7",  # purple: manifold-constrained HC
    "reference": "#999999",  # grey
    "other": "#56B4E9",  # sky blue
}


def color(name: str) -> str:
    """The colour of a connection: ``"pre-norm"``, ``"post-norm"``, ``"hc"``, ``"fc"``,
    ``"mhc"`` (a suffix such as ``"hc x4"`` or ``"hc-static"`` is ignored)."""
    key = name.lower().strip()
    for prefix in sorted(PALETTE, key=len, reverse=True):
        if key.startswith(prefix):
            return PALETTE[prefix]
    return PALETTE["other"]


def use_book_style(**overrides: Any) -> None:
    """Set matplotlib defaults for the book's figures (sizes, grid, no top/right spines)."""
    from hclib.extras import require  # the notebooks extra brings matplotlib

    mpl = require("matplotlib", "notebooks", "hclib.plotting.use_book_style")

    style = {
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": "medium",
        "legend.frameon": False,
        "font.size": 10,
    }
    style.update(overrides)
    mpl.rcParams.update(style)


def set_log_ticks(axis: Any, ticks: Sequence[float]) -> None:
    """Label a log-scaled axis with plain numbers at ``ticks`` and no minor ticks.

    ``axis`` is ``ax.xaxis`` or ``ax.yaxis``; call it after ``ax.set_yscale("log")``.
    """
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    axis.set_major_locator(FixedLocator(list(ticks)))
    axis.set_major_formatter(ScalarFormatter())
    axis.set_minor_locator(NullLocator())


def show_figure(fig: Any, name: str) -> None:
    """Show ``fig`` in the notebook and store it under ``name`` for the book's captions.

    The book numbers, captions and cross-references a figure only through a MyST directive,
    ``{glue:figure} name`` with a ``:name:`` label; MyST-NB's ``glue`` keeps the figure in the
    cell's output under ``name`` for it. Tag the calling cell ``remove-output`` so that the
    book shows the figure once, in its captioned directive. Where ``myst_nb`` is not installed
    (e.g. on Colab) the figure is simply shown.
    """
    import matplotlib.pyplot as plt
    from IPython.display import display

    try:
        from myst_nb import glue
    except ImportError:  # no MyST-NB: nothing to number, just show the figure
        display(fig)
    else:
        glue(name, fig, display=True)
    plt.close(fig)
