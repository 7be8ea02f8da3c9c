"""The built book renders in a browser, offline.

Every page that book/_toc.yml names is opened from book/_build/html in headless Chromium with
the network cut off. Each page must show its title, hold no error or stderr output cells, load
every image from local files, have MathJax typeset every formula, ask for nothing but local
files, and raise no JavaScript error. Screenshots of each whole page land in
book/_build/screenshots/ (gitignored with the rest of book/_build/): `<page>-1.png` is the top
of the page, `-2.png`, ... the rest, 4,000 pixels each.

`bash dev.sh test` builds the book from the committed notebook outputs and then runs this
file (`-m book`); the unit-test step leaves it out. Without Chromium or without a built book
the tests skip and say why.

Chromium is driven through the DevTools protocol over a pipe (tests/chromium.py), so the tests
need nothing beyond the standard library and the `chromium` executable.
"""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from chromium import HEIGHT, MISSING, WIDTH, Chromium, find_browser

pytestmark = pytest.mark.book

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
HTML = BOOK / "_build" / "html"
SCREENSHOTS = BOOK / "_build" / "screenshots"
TILE = 4000  # pixels of page height per screenshot (Chromium cannot capture past 16,384)


def _toc_pages() -> list[str]:
    """The page names of book/_toc.yml in reading order: `intro`, ..., `notebooks/01_...`."""
    toc = yaml.safe_load((BOOK / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(entry["file"])
            for key in ("parts", "chapters", "sections"):
                walk(entry.get(key, []))

    walk(toc.get("parts", []) + toc.get("chapters", []))
    return pages


PAGES = _toc_pages()


def _require_built_book() -> None:
    if not (HTML / "index.html").exists():
        pytest.skip(
            f"the book is not built: {HTML / 'index.html'} does not exist (bash dev.sh book)"
        )


# Runs in the page once it has loaded: wait for every image and for MathJax's first typeset
# (at most 30 s), then report what a reader would see.
INSPECT_PAGE = """
(async () => {
  const images = [...document.images];
  for (const img of images) img.loading = "eager";
  const settled = Promise.all(images.map((img) => img.complete ? null : new Promise((done) => {
    img.addEventListener("load", done);
    img.addEventListener("error", done);
  })));
  const mathjax = window.MathJax && MathJax.startup && MathJax.startup.promise;
  const timeout = new Promise((done) => setTimeout(() => done("timeout"), 30000));
  const waited = await Promise.race([Promise.all([settled, mathjax]), timeout]);
  const article = document.querySelector("article") || document.body;
  const title = article.querySelector("h1");
  const outputs = [...article.querySelectorAll(".cell_output, .output")];
  return {
    timedOut: waited === "timeout",
    title: title ? title.textContent.replace(/[#¶]/g, "").trim() : null,
    mathjaxLoaded: Boolean(window.MathJax && MathJax.version),
    formulas: article.querySelectorAll(".math").length,
    untypeset: [...article.querySelectorAll(".math")]
      .filter((el) => !el.querySelector("mjx-container"))
      .map((el) => el.textContent.slice(0, 80)),
    texErrors: [...article.querySelectorAll("mjx-merror")].map((el) => el.textContent),
    errorCells: [...article.querySelectorAll(".output.stderr, .output.traceback, .output.error")]
      .map((el) => el.textContent.trim().slice(0, 160)),
    tracebacks: outputs.filter((el) => el.textContent.includes("Traceback (most recent call last)"))
      .length,
    images: images.map((img) => ({
      src: img.getAttribute("src"),
      url: img.currentSrc || img.src,
      complete: img.complete,
      width: img.naturalWidth,
    })),
  };
})()
"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_browser()
    if executable is None:
        pytest.skip(MISSING)
    _require_built_book()
    chromium = Chromium(executable, tmp_path_factory.mktemp("chromium") / "profile")
    yield chromium
    chromium.close()


def _render(browser: Chromium, page: Path) -> tuple[dict, list[dict], list[bytes]]:
    """Open one page; return what INSPECT_PAGE saw, the page's events and its screenshots."""
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    try:
        for domain in ("Page", "Network", "Runtime"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        first_event = len(browser.events)
        browser.send("Page.navigate", {"url": page.as_uri()}, session)
        browser.wait_for("Page.loadEventFired", session)
        seen = browser.send(
            "Runtime.evaluate",
            {"expression": INSPECT_PAGE, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in seen:
            raise RuntimeError(f"inspecting the page failed: {seen['exceptionDetails']}")
        report = seen["result"]["value"]
        # One window-sized screenshot per TILE pixels, scrolling down the page (capturing beyond
        # the viewport instead shifts this theme's layout sideways).
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": TILE, "deviceScaleFactor": 1, "mobile": False},
            session,
        )
        height = browser.send(
            "Runtime.evaluate",
            {"expression": "document.documentElement.scrollHeight", "returnByValue": True},
            session,
        )["result"]["value"]
        shots = []
        for top in range(0, max(height - TILE, 0) + TILE, TILE):
            browser.send(
                "Runtime.evaluate",
                {"expression": f"window.scrollTo(0, {min(top, max(height - TILE, 0))})"},
                session,
            )
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session)
            shots.append(base64.b64decode(shot["data"]))
        events = [e for e in browser.events[first_event:] if e.get("sessionId") == session]
        return report, events, shots
    finally:
        browser.send("Target.closeTarget", {"targetId": target})


@pytest.mark.parametrize("name", PAGES, ids=[Path(name).name for name in PAGES])
def test_page_renders_offline_with_title_figures_and_math(browser, name):
    page = HTML / f"{name}.html"
    assert page.exists(), f"book/_toc.yml names {name}, but the build has no {page}"

    report, events, screenshots = _render(browser, page)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob(f"{Path(name).name}-*.png"):
        old.unlink()
    for number, screenshot in enumerate(screenshots, start=1):
        (SCREENSHOTS / f"{Path(name).name}-{number}.png").write_bytes(screenshot)

    assert not report["timedOut"], f"{name}: images or MathJax still loading after 30 s"
    assert report["title"], f"{name}: the page has no <h1> title"
    assert not report["errorCells"] and report["tracebacks"] == 0, (
        f"{name}: {len(report['errorCells'])} stderr/error output cells and "
        f"{report['tracebacks']} tracebacks; the book shows no stderr (warnings and progress "
        f"bars print there: silence them in the chapter). They begin: {report['errorCells']}"
    )
    broken = [
        img["src"]
        for img in report["images"]
        if not (img["url"].startswith("file:") and img["complete"] and img["width"] > 0)
    ]
    assert not broken, f"{name}: images that are not local or did not load: {broken}"
    if report["formulas"]:
        assert report["mathjaxLoaded"], f"{name}: has math, but MathJax did not load"
    assert not report["untypeset"], (
        f"{name}: formulas MathJax did not typeset: {report['untypeset']}"
    )
    assert not report["texErrors"], f"{name}: TeX errors in formulas: {report['texErrors']}"

    requested = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    external = [url for url in requested if not re.match(r"(file|data|blob|about):", url)]
    assert not external, f"{name}: the page asked the network for {external}"
    failed = [
        e["params"].get("errorText") for e in events if e.get("method") == "Network.loadingFailed"
    ]
    assert not failed, f"{name}: {len(failed)} local files failed to load: {failed}"
    js_errors = [
        e["params"]["exceptionDetails"].get("exception", {}).get("description")
        or e["params"]["exceptionDetails"].get("text")
        for e in events
        if e.get("method") == "Runtime.exceptionThrown"
    ]
    assert not js_errors, f"{name}: JavaScript errors: {js_errors}"


class _ExternalAssets(HTMLParser):
    """Collects the URLs of scripts, stylesheets, images and frames that are not local."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        url = None
        if tag in ("script", "img", "iframe", "source", "video", "audio"):
            url = attributes.get("src")
        elif tag == "link" and attributes.get("rel") in ("stylesheet", "preload", "icon"):
            url = attributes.get("href")
        if url and re.match(r"(https?:)?//", url):
            self.found.append(f"<{tag}> {url}")


def test_built_html_loads_no_asset_from_a_cdn():
    """Plain hyperlinks (the Colab launch link, the repository) may leave; assets may not."""
    _require_built_book()
    external = {}
    for page in sorted(HTML.rglob("*.html")):
        parser = _ExternalAssets()
        parser.feed(page.read_text(encoding="utf-8"))
        if parser.found:
            external[str(page.relative_to(HTML))] = parser.found
    assert not external, f"pages that load assets from the network: {external}"
