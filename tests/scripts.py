"""The benchmark scripts (``benchmarks/<name>.py``) as modules the tests can import, and as
commands the tests can run.

The scripts are not part of the package: they are loaded from their files and registered in
``sys.modules``, where dataclasses (and pickling in worker processes) look their module up.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name: str, module: str | None = None) -> ModuleType:
    """``benchmarks/<name>.py`` imported as ``module`` (default ``bench_<name>``)."""
    module = module or f"bench_{name}"
    spec = importlib.util.spec_from_file_location(module, BENCHMARKS / f"{name}.py")
    loaded = importlib.util.module_from_spec(spec)
    sys.modules[module] = loaded
    spec.loader.exec_module(loaded)
    return loaded


def run_script(
    name: str, *args: str, status: int = 0, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``python benchmarks/<name>.py ARGS`` from the repository root; fail the test with
    the end of its output unless it exits with ``status``."""
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), *args],
        cwd=BENCHMARKS.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == status, done.stdout[-3000:] + done.stderr[-3000:]
    return done
