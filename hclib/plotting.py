"""The book's palette and figure helpers: one colour per connection, one style.

Colours come from the Okabe-Ito palette, which stays distinguishable for colour-blind
readers and in greyscale print.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PALETTE", "color", "use_book_style"]

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
