"""The repository's entry points agree: pyproject.toml, environment.yml, README, dev.sh, CI."""

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


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = {_normalise(r) for r in project["dependencies"] + extras["dev"] + extras["book"]}

    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = {_normalise(r) for r in _pip_list(environment["dependencies"])}

    missing, extra = sorted(expected - listed), sorted(listed - expected)
    assert not missing and not extra, (
        "environment.yml `pip:` must equal pyproject dependencies + [dev] + [book]:\n"
        f"  in pyproject.toml only:  {missing}\n"
        f"  in environment.yml only: {extra}"
    )


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
