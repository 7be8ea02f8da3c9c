"""The package as a user installs it: the sdist and the wheel, in a virtual environment of its own.

`bash dev.sh test` runs this file as its own step (marker ``wheel``; the unit-test step leaves
it out): it builds the sdist, builds the wheel from the sdist, installs the wheel WITHOUT extras
into a fresh virtual environment (no system site-packages: only the wheel, its two
requirements and pip), and there imports hclib, runs the README's examples and checks that each
command needing an extra says which one. torch is installed first, at the version of this
environment and as dev.sh installs it: from a local wheel when pip's configuration offers one,
else from the index (PyTorch's CPU index for a CPU build; pip's cache makes a second run fast).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.wheel

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TORCH = torch.__version__.split("+")[0]  # e.g. 2.13.0 (the local build tag is pip's business)
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # as in dev.sh

# The bare venv must see only what is installed in it: no source tree on PYTHONPATH (pip would
# take an hclib.egg-info there for an installed hclib, and python would import the source).
BARE_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _pip_ok(cmd: list, cwd: Path) -> bool:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=BARE_ENV, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        print(f"{' '.join(map(str, cmd))} failed:\n{result.stderr[-1500:]}")
    return result.returncode == 0


def _run(*cmd, cwd=None, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """The sdist and, built from it, the wheel (python -m build, no isolation: offline)."""
    pytest.importorskip("build", reason="the `build` package is in the dev extra")
    out = tmp_path_factory.mktemp("dist")
    egg_info = ROOT / "hclib.egg-info"  # setuptools writes it while making the sdist
    had_egg_info = egg_info.exists()
    try:
        _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=ROOT)
    finally:
        if not had_egg_info:
            shutil.rmtree(egg_info, ignore_errors=True)
    return out


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in {folder}, got {found}"
    return found[0]


@pytest.fixture(scope="module")
def bare_venv(dist, tmp_path_factory) -> Path:
    """A fresh venv holding torch, then the wheel without extras (numpy comes with it)."""
    folder = tmp_path_factory.mktemp("bare-venv")
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(folder)
    python = folder / "bin" / "python"
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # as dev.sh installs torch: a local wheel with local dependencies; the local wheel with its
    # dependencies from the index; else the index (PyTorch's CPU index for a CPU build)
    spec = f"torch=={TORCH}"
    cpu_index = ["--index-url", PYTORCH_CPU_INDEX] if torch.version.cuda is None else []
    for attempt in (
        [["--no-index", spec]],
        [["--no-index", "--no-deps", spec], [spec]],
        [[spec, *cpu_index]],
    ):
        if all(_pip_ok([*pip, *args], folder) for args in attempt):
            break
    else:
        pytest.fail(f"could not install {spec} into the bare venv (see the pip output above)")
    _run(*pip, _one(dist, "hclib-*.whl"), cwd=folder, env=BARE_ENV)
    return python


def test_the_wheel_requires_only_torch_and_numpy(dist):
    with zipfile.ZipFile(_one(dist, "hclib-*.whl")) as wheel:
        metadata = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
        lines = wheel.read(metadata).decode().splitlines()
    requires = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist")]
    core = sorted(r for r in requires if "extra ==" not in r)
    assert core == ["numpy", "torch>=2.4"]
    extras = {line.split(":", 1)[1].strip() for line in lines if line.startswith("Provides-Extra")}
    assert {"train", "notebooks", "book", "dev", "gpu", "bench"} <= extras


def test_the_sdist_holds_the_package_readme_licence_and_pyproject(dist):
    with tarfile.open(_one(dist, "hclib-*.tar.gz")) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    package = {str(p.relative_to(ROOT)) for p in (ROOT / "hclib").rglob("*.py")}
    assert {"pyproject.toml", "README.md", "LICENSE"} <= names
    assert package <= names, f"missing from the sdist: {sorted(package - names)}"


def _in_bare_venv(python: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    # run outside the repository, so that the installed wheel is imported, not the source tree
    return subprocess.run(
        [str(python), "-c", textwrap.dedent(code), *args],
        cwd=python.parent,
        env=BARE_ENV,
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_bare_install_imports_hclib_from_the_wheel_with_torch_and_numpy_only(bare_venv):
    result = _in_bare_venv(
        bare_venv,
        """
        import importlib.metadata as md, sys
        import hclib
        assert "site-packages" in hclib.__file__, hclib.__file__
        installed = sorted(d.metadata["Name"].lower() for d in md.distributions())
        print(installed)
        """,
    )
    assert result.returncode == 0, result.stderr
    installed = set(eval(result.stdout.strip().splitlines()[-1]))  # noqa: S307 (our own list)
    for optional in ("pytorch-lightning", "matplotlib", "tensorboard", "tokenizers", "tqdm"):
        assert optional not in installed


def _readme_examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_examples_run_in_the_bare_install(bare_venv):
    examples = _readme_examples()
    assert examples
    for code in examples:
        result = _in_bare_venv(bare_venv, code)
        assert result.returncode == 0, f"README example failed:\n{code}\n{result.stderr}"


def test_python_m_hclib_runs_in_the_bare_install(bare_venv):
    result = _in_bare_venv(
        bare_venv, "import runpy; runpy.run_module('hclib', run_name='__main__')"
    )
    assert result.returncode == 0, result.stderr
    assert "ManifoldHyperConnection" in result.stdout


# (what, code run in the bare venv, the extra its error must name)
NEEDS_AN_EXTRA = [
    ("python -m hclib.train", ["-m", "hclib.train", "fit", "--help"], "train"),
    ("python -m hclib.data build", ["-m", "hclib.data", "build", "--root", "."], "train"),
    ("import hclib.training", ["-c", "import hclib.training"], "train"),
    ("hclib.plotting", ["-c", "import hclib.plotting as p; p.use_book_style()"], "notebooks"),
]


@pytest.mark.parametrize(("what", "args", "extra"), NEEDS_AN_EXTRA, ids=lambda x: str(x))
def test_a_command_that_needs_an_extra_names_it(bare_venv, what, args, extra):
    result = subprocess.run(
        [str(bare_venv), *args],
        cwd=bare_venv.parent,
        env=BARE_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, f"{what} ran without its extra"
    assert f"pip install 'hclib[{extra}]'" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr or what.startswith(("import", "hclib.")), (
        f"{what} should print one line, not a traceback:\n{result.stderr}"
    )
