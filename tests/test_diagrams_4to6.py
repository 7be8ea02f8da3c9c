"""The drawings of chapters 4-6 (hclib.diagrams) and the plotting helpers they use."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.patches import FancyArrowPatch  # noqa: E402
from torch import nn  # noqa: E402

import hclib  # noqa: E402
from hclib.diagrams import (  # noqa: E402
    draw_mixing_heatmap,
    draw_permutation_sum,
    draw_split_vs_copies,
    draw_stream_flow,
    draw_unfolded_network,
)
from hclib.plotting import PALETTE, set_log_ticks  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# (connection matrix, number of non-zero entries below the diagonal)
NETWORKS = [
    (hclib.connection_matrix([hclib.Residual(8, nn.Identity()) for _ in range(4)]), 15),
    (torch.tril(torch.ones(4, 4), -1) * torch.tensor([1.0, 0.0, 2.0, 0.5]), 4),
]


@pytest.mark.parametrize(("C", "nonzero"), NETWORKS)
def test_unfolded_network_draws_one_arc_per_nonzero_weight(C, nonzero):
    _, (ax_net, ax_mat) = plt.subplots(1, 2)
    draw_unfolded_network(C, ax_net, ax_mat, PALETTE["hc"], "test")
    arcs = [p for p in ax_net.patches if isinstance(p, FancyArrowPatch)]
    assert len(arcs) == nonzero
    assert len(ax_mat.texts) == C.shape[0] * (C.shape[0] - 1) // 2  # one number per cell


def test_unfolded_network_rejects_a_non_square_matrix():
    _, (a, b) = plt.subplots(1, 2)
    with pytest.raises(ValueError, match="square"):
        draw_unfolded_network(torch.zeros(3, 4), a, b, "black")


@pytest.mark.parametrize(("d", "n", "m"), [(16, 4, 4), (12, 2, 3), (8, 1, 1)])
def test_split_vs_copies_is_drawn_to_scale(d, n, m):
    ax = draw_split_vs_copies(d, n, m)
    extents = [tuple(im.get_extent()) for im in ax.images]
    widths = [right - left for left, right, _, _ in extents]
    heights = [top - bottom for _, _, bottom, top in extents]
    assert widths == pytest.approx([d, d, d // m])  # h, HC's copies, FC's fractions
    assert heights == pytest.approx([1, n, m])
    counts = [t.get_text().split("\n")[1] for t in ax.texts]
    assert counts == [f"{d} numbers", f"{n * d} numbers", f"{d} numbers"]


def test_split_vs_copies_rejects_an_indivisible_width():
    with pytest.raises(ValueError, match="d=10 is not divisible by m=4"):
        draw_split_vs_copies(10, 4, 4)


def test_mixing_heatmap_marks_sums_that_are_not_one():
    M = np.array([[0.5, 0.5], [0.2, 0.6]])  # row 1 sums to 0.8, column 0 to 0.7
    _, ax = plt.subplots()
    draw_mixing_heatmap(M, ax, PALETTE["mhc"])
    sums = {t.get_text(): t.get_color() for t in ax.texts[4:]}
    assert sums["1.000"] == "black"
    assert sums["0.800"] == PALETTE["pre-norm"] and sums["0.700"] == PALETTE["pre-norm"]


def test_permutation_sum_has_one_panel_per_term_and_one_for_the_rest():
    M = 0.5 * np.eye(3) + 0.3 * np.eye(3)[[1, 2, 0]] + 0.2 * np.eye(3)[[2, 0, 1]]
    perms = [np.arange(3), np.array([1, 2, 0]), np.array([2, 0, 1])]

    def panels(fig):
        heatmaps = sum(bool(ax.images) for ax in fig.axes)
        rest = [t.get_text() for ax in fig.axes for t in ax.texts if "more" in t.get_text()]
        return heatmaps, rest

    assert panels(draw_permutation_sum(M, [0.5, 0.3, 0.2], perms, "black")) == (1 + 3, [])
    heatmaps, rest = panels(draw_permutation_sum(M, [0.5, 0.3, 0.2], perms, "black", 2))
    assert heatmaps == 1 + 2 and rest == ["+ 1 more\nterms, total\nweight 0.200"]


def test_stream_flow_draws_negative_entries_dashed():
    res = torch.eye(3).repeat(2, 1, 1)
    res[1, 0, 2] = -0.5
    _, ax = plt.subplots()
    draw_stream_flow(res, ax, PALETTE["hc"])
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(ax.lines) == 2 * 3 + 1
    assert len(dashed) == 1 and dashed[0].get_color() == PALETTE["pre-norm"]
    assert list(dashed[0].get_ydata()) == [2, 0]  # from stream 2 into stream 0


def test_stream_flow_rejects_a_single_matrix():
    _, ax = plt.subplots()
    with pytest.raises(ValueError, match="layers, n, n"):
        draw_stream_flow(torch.eye(3), ax, "black")


def test_set_log_ticks_labels_plain_numbers_without_minor_ticks():
    _, ax = plt.subplots()
    ax.plot([1, 10], [1, 10])
    ax.set_yscale("log")
    set_log_ticks(ax.yaxis, [1, 2, 5])
    assert list(ax.yaxis.get_majorticklocs()) == [1, 2, 5]
    assert len(ax.yaxis.get_minorticklocs()) == 0
