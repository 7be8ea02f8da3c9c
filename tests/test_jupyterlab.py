"""The chapters open in JupyterLab: a server on localhost, chapter 1 in headless Chromium.

`bash dev.sh test` runs this file as its own step (marker ``jupyterlab``). It starts
JupyterLab from .venv (the `notebooks` extra) on 127.0.0.1 with a random token and the
repository's JupyterLab settings (notebooks/jupyterlab-overrides.json, which dev.sh installs in
.venv: a ``.py`` opens as a Jupytext notebook), checks that jupytext serves every chapter's
``.py`` as a notebook that names the python3 kernel, then opens chapter 1, as ``.ipynb`` and as
``.py``, in headless Chromium and waits for its title to render and its python3 kernel to
start. Without JupyterLab, or without Chromium for the browser test, the tests skip and say why.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from chromium import MISSING, Chromium, find_browser

pytestmark = pytest.mark.jupyterlab

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = sorted(
    p for p in NOTEBOOKS.glob("[0-9][0-9]_*.py") if "#   jupytext:" in p.read_text()[:400]
)
CHAPTER_1 = NOTEBOOKS / "01_residual_connections.ipynb"
SETTINGS = NOTEBOOKS / "jupyterlab-overrides.json"  # .venv's JupyterLab settings (dev.sh)
KERNEL = "python3"
START_TIMEOUT_S = 180.0
RENDER_TIMEOUT_S = 180.0


def chapter_title(path: Path) -> str:
    """The first ``# # Title`` markdown line of a chapter's .py."""
    for line in path.with_suffix(".py").read_text().splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    raise AssertionError(f"{path} has no '# # ' title line")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 serving notebooks/."""

    def __init__(self, tmp: Path) -> None:
        executable = Path(sys.executable).parent / "jupyter-lab"
        if not executable.exists():
            pytest.skip(
                "JupyterLab is not installed in this environment (the `notebooks` extra: "
                "pip install -e '.[notebooks]'; `bash dev.sh test` installs it in .venv/)"
            )
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "JUPYTER_PREFER_ENV_PATH": "1",  # the python3 kernel of this environment
            "JUPYTER_CONFIG_DIR": str(tmp / "config"),  # nobody's personal settings
            "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
            "IPYTHONDIR": str(tmp / "ipython"),
        }
        settings = tmp / "settings"  # the repository's settings, as dev.sh installs them
        settings.mkdir()
        (settings / "overrides.json").write_text(SETTINGS.read_text())
        self.log_path = tmp / "jupyterlab.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(executable),
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={self.port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={self.token}",
                f"--ServerApp.root_dir={NOTEBOOKS}",
                f"--LabApp.app_settings_dir={settings}",
                "--LabApp.news_url=",  # no news fetched from the internet
                "--LabApp.extension_manager=readonly",  # no PyPI queries
                *(["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            env=env,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"JupyterLab exited ({self.proc.returncode}):\n{self.log()}")
            try:
                self.get("/api/status")
                return
            except (urllib.error.URLError, ConnectionError) as error:
                if time.monotonic() > deadline:
                    self.close()
                    raise AssertionError(
                        f"JupyterLab did not answer in time:\n{self.log()}"
                    ) from error
                time.sleep(0.5)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def get(self, path: str, **query: str) -> dict | list:
        url = f"{self.url}{path}?{urllib.parse.urlencode({**query, 'token': self.token})}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read())

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = find_browser()
    if executable is None:
        pytest.skip(MISSING)
    profile = tmp_path_factory.mktemp("chromium") / "profile"
    chromium = Chromium(executable, profile, local_hosts=("127.0.0.1",))
    yield chromium
    chromium.close()


def test_there_are_chapters_to_open():
    assert len(CHAPTERS) >= 10 and CHAPTER_1.exists()


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_jupytext_serves_each_chapter_py_as_a_notebook_on_the_python3_kernel(lab, chapter):
    model = lab.get(f"/api/contents/{chapter.name}", type="notebook", content="1")
    assert model["type"] == "notebook", f"{chapter.name} is not served as a notebook"
    notebook = model["content"]
    assert notebook["metadata"]["kernelspec"]["name"] == KERNEL
    assert any(chapter_title(chapter) in "".join(c["source"]) for c in notebook["cells"])


# Runs in the JupyterLab page: the h1 headings rendered in the notebook panel, if any yet
# (or "EDITOR" when the file opened in the text editor instead).
RENDERED_TITLES = """
[...document.querySelectorAll('.jp-NotebookPanel .jp-RenderedMarkdown h1')]
  .map((h) => h.textContent.replace(/¶/g, '').trim())
  .concat(document.querySelector('.jp-FileEditor') ? ['EDITOR'] : [])
"""


@pytest.mark.parametrize("suffix", [".ipynb", ".py"])
def test_jupyterlab_opens_chapter_1_in_a_browser_with_its_title_and_kernel(lab, browser, suffix):
    """Chapter 1 renders as a notebook, its .py too (through jupytext), on the python3 kernel."""
    name = CHAPTER_1.with_suffix(suffix).name
    title = chapter_title(CHAPTER_1)
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    try:
        browser.send("Page.enable", session=session)
        url = f"{lab.url}/lab/tree/{name}?token={lab.token}"
        browser.send("Page.navigate", {"url": url}, session)
        deadline, seen = time.monotonic() + RENDER_TIMEOUT_S, []
        while title not in seen:
            assert "EDITOR" not in seen, f"JupyterLab opened {name} as text, not as a notebook"
            assert time.monotonic() < deadline, (
                f"JupyterLab showed no title {title!r} in {RENDER_TIMEOUT_S:.0f} s "
                f"(h1 seen: {seen}); server log:\n{lab.log()}"
            )
            time.sleep(1.0)
            result = browser.send(
                "Runtime.evaluate",
                {"expression": RENDERED_TITLES, "returnByValue": True},
                session,
            )
            seen = result["result"].get("value") or []
        # JupyterLab starts the kernel session after the notebook has rendered: wait for it
        while True:
            sessions = lab.get("/api/sessions")
            opened = [s for s in sessions if s["path"] == name]
            if opened:
                break
            assert time.monotonic() < deadline, f"no kernel session for {name}: {sessions}"
            time.sleep(1.0)
        assert opened[0]["kernel"]["name"] == KERNEL
    finally:
        browser.send("Target.closeTarget", {"targetId": target})
