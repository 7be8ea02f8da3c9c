"""Sphinx hooks for the book's offline HTML (a local extension named in book/_config.yml).

1. Drop repeated <script> and <link> assets. Sphinx 7.4 emits an inline script that an
   extension registers after the builder starts (sphinx-thebe, sphinx-togglebutton) twice
   (once with `filename=None`, once with `filename=''`), and the second `const THEBE_JS_URL`
   is a JavaScript SyntaxError on every page.
2. Refuse pages that would load a script or stylesheet from the network: a warning, which
   the build (`-n -W`) turns into an error. MathJax comes from the `sphinx-mathjax-offline`
   package and is served from _static/mathjax/. Hyperlinks may point anywhere.
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)


def _key(asset: Any) -> tuple:
    filename = getattr(asset, "filename", asset) or ""
    attributes = getattr(asset, "attributes", {})
    return (str(filename), getattr(asset, "priority", 0), tuple(sorted(attributes.items())))


def _local_assets_once(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    for name in ("script_files", "css_files"):
        assets = context.get(name)
        if not assets:
            continue
        unique, seen = [], set()
        for asset in assets:
            key = _key(asset)
            if key not in seen:
                seen.add(key)
                unique.append(asset)
            if "://" in key[0] or key[0].startswith("//"):
                logger.warning(
                    "page %s would load %s from the network; the book must work offline",
                    pagename,
                    key[0],
                    location=pagename,
                )
        # The builder restores its own lists after each page, so editing them in place is safe.
        assets[:] = unique


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", _local_assets_once, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
