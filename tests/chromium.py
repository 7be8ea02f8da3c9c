"""Headless Chromium driven through the DevTools protocol, for the browser tests.

Chromium runs with ``--remote-debugging-pipe``: JSON messages ending in a NUL byte, commands on
fd 3, replies on fd 4, so the tests need nothing beyond the standard library and the
``chromium`` executable. The network is cut off: every host name fails to resolve and every
proxied request is refused; file:// pages and servers on 127.0.0.1 (never proxied) still load.

Used by tests/test_book_render.py (the built book) and tests/test_jupyterlab.py (a chapter in
JupyterLab).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
WIDTH, HEIGHT = 1280, 900  # CSS pixels of the window
TIMEOUT_S = 60.0
MISSING = (
    "Chromium is not installed (Debian: apt-get install chromium); `bash dev.sh test` installs "
    "it where it may (root with apt-get)"
)


def find_browser() -> str | None:
    """The path of the first of :data:`BROWSERS` on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class Chromium:
    """Headless Chromium with its network cut off, driven over the DevTools pipe."""

    def __init__(
        self, executable: str, user_data_dir: Path, local_hosts: tuple[str, ...] = ()
    ) -> None:
        """Start Chromium; ``local_hosts`` (e.g. ``("127.0.0.1",)``) are the only hosts it
        may reach, directly, for a test server; every other host stays unreachable."""
        commands_read, self._commands = os.pipe()  # we write commands, Chromium reads fd 3
        self._replies, replies_write = os.pipe()  # Chromium writes replies on fd 4

        def plug_pipes() -> None:  # in the child, before exec: the pipes become fds 3 and 4
            high_read = fcntl.fcntl(commands_read, fcntl.F_DUPFD, 10)
            high_write = fcntl.fcntl(replies_write, fcntl.F_DUPFD, 10)
            os.dup2(high_read, 3)
            os.dup2(high_write, 4)

        args = [
            executable,
            "--headless",
            "--no-sandbox",  # CI runs as root, where Chromium refuses its sandbox
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--hide-scrollbars",
            "--mute-audio",
            # No network: every host name fails to resolve and every proxied request is refused.
            "--host-resolver-rules=MAP * ~NOTFOUND"
            + "".join(f", EXCLUDE {host}" for host in local_hosts),
            "--proxy-server=127.0.0.1:9",
            *([f"--proxy-bypass-list={';'.join(local_hosts)}"] if local_hosts else []),
            f"--user-data-dir={user_data_dir}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._log = open(user_data_dir.parent / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            preexec_fn=plug_pipes,  # the test process runs no threads
            close_fds=False,
        )
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:  # closing anyway
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)
        self._log.close()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its pipe (exit status {self.proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            message = self._read_message(deadline)
            if message.get("id") != self._next_id:
                self.events.append(message)
                continue
            if "error" in message:
                raise RuntimeError(f"{method} failed: {message['error']}")
            return message["result"]

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self.events.append(self._read_message(deadline))
