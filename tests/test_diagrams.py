"""The drawn pictures of connections (hclib.diagrams): deterministic, labelled, checked input."""

import io

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import hclib  # noqa: E402
from hclib.diagrams import (  # noqa: E402
    BLOCK_COLORS,
    draw_hc_heatmap,
    draw_hc_layer,
    draw_hc_matrix,
)

DRAWINGS = [
    ("layer", lambda ax: draw_hc_layer(3, ax)),
    ("matrix", lambda ax: draw_hc_matrix(4, ax)),
    ("heatmap", lambda ax: draw_hc_heatmap(torch.arange(16.0).reshape(4, 4) - 7, ax)),
]


def _png(draw) -> bytes:
    fig, ax = plt.subplots()
    draw(ax)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _texts(ax) -> str:
    return " ".join(t.get_text() for t in ax.texts)


@pytest.mark.parametrize(("name", "draw"), DRAWINGS, ids=[d[0] for d in DRAWINGS])
def test_drawing_is_deterministic(name, draw):
    torch.manual_seed(0)
    first = _png(draw)
    torch.manual_seed(1)  # a different random state must not change the picture
    assert _png(draw) == first


@pytest.mark.parametrize("n", [1, 2, 4])
def test_layer_drawing_names_every_block_and_every_stream(n):
    ax = draw_hc_layer(n)
    text = _texts(ax)
    for block in ("$A_m$", "$A_r$", "$B$", "$T$"):
        assert block in text
    for i in range(1, n + 1):
        assert f"$h^{{k-1}}_{i}$" in text and f"$h^{{k}}_{i}$" in text
    plt.close(ax.figure)


@pytest.mark.parametrize("n", [1, 3])
def test_matrix_drawing_has_one_named_cell_per_entry(n):
    ax = draw_hc_matrix(n)
    text = _texts(ax)
    assert text.count(r"\beta_") == n
    assert text.count(r"\alpha_") == n * (n + 1)  # A_m and A_r
    assert "0" in [t.get_text() for t in ax.texts]
    plt.close(ax.figure)


def test_heatmap_of_the_initial_matrix_shows_its_entries_on_a_symmetric_scale():
    layer = hclib.HyperConnection(8, nn.Identity(), n=2, layer_id=1, dynamic=False)
    ax = draw_hc_heatmap(layer.static_matrix())
    image = ax.images[0]
    assert image.get_clim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.texts[:3]] == ["0.00", "1.00", "1.00"]  # row 0: 0, B
    edge_colors = {matplotlib.colors.to_hex(p.get_edgecolor()) for p in ax.patches}
    assert {BLOCK_COLORS[b].lower() for b in ("A_m", "A_r", "B")} <= edge_colors
    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: draw_hc_layer(0), "n must be a positive int"),
        (lambda: draw_hc_matrix(2.0), "n must be a positive int"),
        (lambda: draw_hc_heatmap(torch.zeros(2, 3)), r"square \(n\+1, n\+1\)"),
        (lambda: draw_hc_heatmap(torch.ones(1, 1)), "n >= 1"),
        (lambda: draw_hc_heatmap(torch.zeros(3, 3)), "vmax must be > 0"),
        (lambda: draw_hc_heatmap(torch.full((2, 2), float("nan"))), "non-finite"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
    plt.close("all")


def _shell_that_shows_png_figures():
    """An IPython shell that renders figures as PNG, as a Jupyter kernel with inline plots."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.core.pylabtools import select_figure_formats

    shell = InteractiveShell.instance()
    select_figure_formats(shell, {"png"})
    return shell


def test_show_figure_glues_the_figure_under_its_name_and_closes_it():
    from IPython.utils.capture import capture_output

    from hclib.plotting import show_figure

    _shell_that_shows_png_figures()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with capture_output() as captured:
        show_figure(fig, "fig-test")
    (output,) = captured.outputs
    assert output.metadata["scrapbook"]["name"] == "fig-test"
    assert "image/png" in output.data  # shown in Jupyter too, not only stored
    assert not plt.fignum_exists(fig.number)


def test_show_figure_without_myst_nb_just_shows_the_figure(monkeypatch):
    import sys

    from IPython.utils.capture import capture_output

    from hclib.plotting import show_figure

    _shell_that_shows_png_figures()
    monkeypatch.setitem(sys.modules, "myst_nb", None)  # as on Colab: the import fails
    fig, _ = plt.subplots()
    with capture_output() as captured:
        show_figure(fig, "fig-test")
    (output,) = captured.outputs
    assert "scrapbook" not in (output.metadata or {})
    assert "image/png" in output.data
