"""The repository's entry points agree: pyproject.toml, environment.yml, README, dev.sh, CI."""

import json
import re
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]
README_COMMANDS = ["bash dev.sh book", "bash dev.sh test"]


def _normalise(requirement: str) -> str:
    """`Sphinx_Exercise >= 1` -> `sphinx-exercise>=1`: PEP 503 name, no whitespace."""
    requirement = re.sub(r"\s+", "", requirement)
    name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    if name is None:
        raise ValueError(f"expected a requirement string, got {requirement!r}")
    pep503 = re.sub(r"[-_.]+", "-", name.group()).lower()
    return pep503 + requirement[name.end() :]


def _pip_list(conda_dependencies: list) -> list[str]:
    pip_lists = [d["pip"] for d in conda_dependencies if isinstance(d, dict) and "pip" in d]
    assert len(pip_lists) == 1, f"expected one `pip:` list in environment.yml, got {pip_lists}"
    return pip_lists[0]


def _expand(requirements: list[str], extras: dict[str, list[str]]) -> list[str]:
    """Replace ``hclib[a,b]`` (an extra that includes others) by the lists of ``a`` and ``b``."""
    out = []
    for requirement in requirements:
        self_reference = re.fullmatch(r"hclib\[([\w,\s-]+)\]", requirement.strip())
        if self_reference is None:
            out.append(requirement)
            continue
        for extra in self_reference.group(1).split(","):
            out.extend(_expand(extras[extra.strip()], extras))
    return out


ENVIRONMENT_EXTRAS = ["train", "notebooks", "dev", "book"]


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = project["dependencies"] + [r for e in ENVIRONMENT_EXTRAS for r in extras[e]]
    expected = {_normalise(r) for r in _expand(wanted, extras)}

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {_normalise(r) for r in _pip_list(environment["dependencies"])}

    missing, extra = sorted(expected - listed), sorted(listed - expected)
    assert not missing and not extra, (
        "environment.yml `pip:` must equal pyproject dependencies + "
        f"{ENVIRONMENT_EXTRAS} extras:\n"
        f"  in pyproject.toml only:  {missing}\n"
        f"  in environment.yml only: {extra}"
    )


# What the connection modules need, and nothing else: no training, plotting or logging package.
CORE = {"torch", "numpy"}
EXTRAS = {
    "train": {"pytorch-lightning", "jsonargparse", "tensorboard", "tokenizers"},
    "notebooks": {"jupyterlab", "jupytext", "matplotlib", "ipykernel"},
}


def _name(requirement: str) -> str:
    return re.match(r"[a-z0-9-]+", _normalise(requirement)).group()


def test_the_core_install_needs_only_torch_and_numpy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert {_name(r) for r in project["dependencies"]} == CORE


@pytest.mark.parametrize(
    "extra", ["train", "notebooks", "dev", "book", "gpu", "bench"], ids=lambda e: f"{e}-extra"
)
def test_each_extra_exists_and_holds_what_the_book_says(extra):
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert extras.get(extra), f"pyproject.toml lacks the {extra!r} extra"
    names = {_name(r) for r in _expand(extras[extra], extras)}
    assert EXTRAS.get(extra, set()) <= names


def _section(markdown: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.M | re.S)
    assert match, f"expected a `## {title}` section in README.md"
    return match.group(1)


def _commands(block: str) -> list[str]:
    """The commands of a shell block: lines without blank lines, comments and trailing comments."""
    lines = (line.split(" #")[0].strip() for line in block.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_gives_exactly_two_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", _section(readme, "Quick start"), re.M | re.S)
    assert [language for language, _ in blocks] == ["bash"], (
        f"expected exactly one ```bash block in Quick start, got languages {blocks}"
    )
    assert _commands(blocks[0][1]) == README_COMMANDS

    mentioned = sorted(set(re.findall(r"bash dev\.sh \w+", readme)))
    assert mentioned == README_COMMANDS, f"README mentions other dev.sh commands: {mentioned}"


def test_dev_sh_accepts_exactly_the_readme_commands():
    dev_sh = (ROOT / "dev.sh").read_text()
    cases = re.findall(r"^\s+(\w+)\) cmd_\w+ ;;$", dev_sh, re.M)
    assert [f"bash dev.sh {c}" for c in cases] == README_COMMANDS


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec bash dev.sh test" in ci
    assert "pytest" not in ci, ".ci/run must leave what is tested to `bash dev.sh test`"


# modules of the core install that must import with torch and numpy alone
CORE_MODULES = [
    "hclib",
    "hclib.models",
    "hclib.analysis",
    "hclib.kernels",
    "hclib.optim",
    "hclib.stack",
    "hclib.toy",
    "hclib.plotting",
    "hclib.book",
    "hclib.traffic",
]
IMPORTS_OF = """
import importlib, json, sys
import numpy, torch
new = {}
for module in sys.argv[1:]:
    before = {name.split(".")[0] for name in sys.modules}
    importlib.import_module(module)
    after = {name.split(".")[0] for name in sys.modules}
    new[module] = sorted(after - before - set(sys.stdlib_module_names) - {"hclib"})
print(json.dumps(new))
"""


def test_core_modules_import_no_package_beyond_torch_and_numpy():
    """In the full dev environment (every extra installed), importing the core modules pulls
    in nothing but the standard library: no Lightning, TensorBoard, tokenizers, matplotlib..."""
    import json
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_OF, *CORE_MODULES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    new = json.loads(result.stdout)
    assert list(new) == CORE_MODULES
    assert {module: extra for module, extra in new.items() if extra} == {}


def test_both_commands_install_the_jupyterlab_settings_that_open_a_py_as_a_notebook():
    dev_sh = (ROOT / "dev.sh").read_text()
    for command in ("cmd_test", "cmd_book"):
        body = dev_sh.split(f"{command}() {{", 1)[1].split("\n}\n", 1)[0]
        assert "install_jupyterlab_settings" in body, f"{command} should install them"
    settings = json.loads((ROOT / "notebooks" / "jupyterlab-overrides.json").read_text())
    viewers = settings["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers == {"python": "Jupytext Notebook"}
