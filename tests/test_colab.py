"""One setting holds the repository's address: book/_config.yml `repository.url`.

The book's repository button is built from it by Jupyter Book; every chapter's "Open in Colab"
badge and Colab install cell repeat it (a notebook on Colab must install hclib before it can
read any file of the repository). This file checks that they all agree with the setting, in the
.py and in its paired .ipynb, and that each install cell asks for the extras its chapter
imports. After changing `repository.url`, `python -m hclib.book sync-links` rewrites them all.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from hclib.book import sync_repository_links

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "book" / "_config.yml").read_text())
URL = CONFIG["repository"]["url"]
BRANCH = CONFIG["repository"].get("branch", "main")
COLAB = CONFIG["launch_buttons"]["colab_url"].rstrip("/")
CHAPTERS = sorted(
    p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py") if "#   jupytext:" in p.read_text()
)
EXTRAS = set(
    tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
)

BADGE = re.compile(r"\[!\[Open In Colab\]\(figures/colab-badge\.svg\)\]\((?P<link>[^)\s]+)\)")
GITHUB = re.compile(r"https://github\.com/[^\s\"'`)]+")
# `hclib[notebooks] @ git+https://...` or the clone `/content/hclib[notebooks,train]`
REQUIREMENT = re.compile(r"hclib\[(?P<extras>[\w,]+)\](?: @ git\+(?P<url>[^\s\"']+))?")

# what a chapter imports -> the extra that brings it
NEEDS = {
    "train": re.compile(r"^\s*(from|import) (hclib\.(training|data|experiments|train)\b"
                        r"|pytorch_lightning|lightning|tokenizers|jsonargparse)", re.M),
    "gpu": re.compile(r"^\s*(from|import) triton\b", re.M),
    "notebooks": re.compile(r"^\s*(from|import) (matplotlib|hclib\.plotting|hclib\.toy)\b", re.M),
}  # fmt: skip


def test_the_repository_url_is_one_github_repository():
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", URL), (
        f"book/_config.yml repository.url must be https://github.com/OWNER/REPO, got {URL!r}"
    )
    assert CONFIG["html"]["use_repository_button"], "the book links the repository from the URL"


def _colab_link(chapter: Path) -> str:
    owner_repo = URL.removeprefix("https://github.com/")
    return f"{COLAB}/github/{owner_repo}/blob/{BRANCH}/notebooks/{chapter.stem}.ipynb"


def _cells(chapter: Path) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of the paired .ipynb."""
    notebook = json.loads(chapter.with_suffix(".ipynb").read_text())
    return [(c["cell_type"], "".join(c["source"])) for c in notebook["cells"]]


def _install_cell(sources: list[str], where: str) -> str:
    found = [s for s in sources if '"google.colab" in sys.modules' in s]
    assert len(found) == 1, f"{where}: expected one Colab install cell, found {len(found)}"
    return found[0]


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_the_colab_badge_opens_this_chapter_from_the_configured_repository(chapter):
    for where, text in [
        (chapter.name, chapter.read_text()),
        (chapter.with_suffix(".ipynb").name, "\n".join(s for t, s in _cells(chapter))),
    ]:
        links = [m["link"] for m in BADGE.finditer(text)]
        assert links == [_colab_link(chapter)], (
            f"{where}: the Colab badge must link {_colab_link(chapter)} "
            f"(from book/_config.yml), got {links}"
        )


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_the_install_cell_installs_from_the_configured_repository_with_the_chapter_extras(
    chapter,
):
    code = "\n".join(s for t, s in _cells(chapter) if t == "code")
    needed = {extra for extra, imports in NEEDS.items() if imports.search(code)}
    py_cells = re.split(r"^# %%.*$", chapter.read_text(), flags=re.M)
    for where, cell in [
        (chapter.name, _install_cell(py_cells, chapter.name)),
        (f"{chapter.stem}.ipynb", _install_cell([s for _, s in _cells(chapter)], chapter.stem)),
    ]:
        addresses = set(GITHUB.findall(cell))
        assert addresses == {URL}, f"{where}: the install cell names {addresses}, not {URL}"
        requirements = list(REQUIREMENT.finditer(cell))
        assert requirements, f"{where}: the install cell installs no hclib[extras]"
        for requirement in requirements:
            extras = set(requirement["extras"].split(","))
            assert extras <= EXTRAS, f"{where}: unknown extras {extras - EXTRAS}"
            assert needed <= extras, (
                f"{where}: the chapter imports what the extras {sorted(needed - extras)} bring; "
                f"the install cell asks only for {sorted(extras)}"
            )
            assert requirement["url"] in (None, URL), f"{where}: installs from {requirement['url']}"


def test_the_readme_installs_from_the_configured_repository():
    addresses = set(GITHUB.findall((ROOT / "README.md").read_text()))
    ours = {a for a in addresses if re.search(r"/hclib\b", a)}
    assert ours == {URL}, f"README.md names {ours}; book/_config.yml says {URL}"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_every_chapter_names_the_same_python3_kernel_in_py_and_ipynb(chapter):
    header = chapter.read_text().split("\n# ---\n", 1)[0]
    assert "#   kernelspec:\n#     display_name: Python 3 (ipykernel)\n" in header
    assert header.endswith("#     name: python3")
    kernelspec = json.loads(chapter.with_suffix(".ipynb").read_text())["metadata"]["kernelspec"]
    assert kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python",
                          "name": "python3"}  # fmt: skip


def test_sync_links_moves_every_badge_and_install_cell_to_a_new_address(tmp_path):
    for name in ("README.md", "book/_config.yml", "notebooks/09_small_gpt.py",
                 "notebooks/09_small_gpt.ipynb", "notebooks/10_moe_llm_with_lightning.py",
                 "notebooks/10_moe_llm_with_lightning.ipynb"):  # fmt: skip
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    config = (tmp_path / "book/_config.yml").read_text()
    (tmp_path / "book/_config.yml").write_text(
        config.replace(f"url: {URL}", "url: https://github.com/someone/fork-of-hclib").replace(
            f"branch: {BRANCH}", "branch: dev"
        )
    )
    assert sync_repository_links(tmp_path) and not sync_repository_links(tmp_path)  # idempotent
    for name in ("09_small_gpt", "10_moe_llm_with_lightning"):
        for suffix in (".py", ".ipynb"):
            before = (ROOT / "notebooks" / f"{name}{suffix}").read_text()
            after = (tmp_path / "notebooks" / f"{name}{suffix}").read_text()
            assert URL not in after and "https://github.com/someone/fork-of-hclib" in after
            assert f"github/someone/fork-of-hclib/blob/dev/notebooks/{name}.ipynb" in after
            assert len(before.splitlines()) == len(after.splitlines())
            lines = zip(before.splitlines(), after.splitlines(), strict=True)
            changed = [(a, b) for a, b in lines if a != b]
            assert all(URL in a or "colab.research.google.com" in a for a, _ in changed)
    assert "git+https://github.com/someone/fork-of-hclib" in (tmp_path / "README.md").read_text()
