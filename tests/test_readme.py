"""The README's examples run and check what they say: hclib.connect first, then the
connections one by one with their layer_id. (tests/test_wheel.py runs them again in a bare
install of the wheel.)"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_connect_example_then_the_lower_level_one():
    assert len(BLOCKS) == 2, "the README should hold two Python examples"
    connect, lower = BLOCKS
    assert 'hclib.connect(blocks, d, connection="residual")' in connect
    for name in ("hc", "fc", "mhc"):
        assert f'("{name}", ' in connect
    for name in ("Residual", "HyperConnection", "FracConnection", "ManifoldHyperConnection"):
        assert f"hclib.{name}(" in lower
    assert lower.count("layer_id=layer_id") == 3, "HC, FC and mHC each get their layer_id"
    for code in BLOCKS:
        assert len(code.strip().splitlines()) <= 16, "a README example fits on one screen"


@pytest.mark.parametrize("index", range(len(BLOCKS)), ids=["connect", "connections"])
def test_readme_example_runs(index):
    exec(compile(BLOCKS[index], f"{README}:example-{index + 1}", "exec"), {})


def test_readme_names_the_commands_a_new_user_needs():
    text = README.read_text()
    for command in (
        ".venv/bin/jupyter lab notebooks/",
        "python -m hclib.data build",
        "python -m hclib.data info --corpus all",
        "python -m hclib.train fit --config configs/gpt-tiny.yaml",
        "(book/how_to_run.md)",
        "book/_build/html/index.html",
    ):
        assert command in text, f"README.md should mention {command!r}"
    for path in re.findall(r"\]\(([\w/.-]+\.md)\)", text):
        assert (ROOT / path).exists(), f"README.md links {path}, which does not exist"
    for config in re.findall(r"--config (configs/[\w.-]+)", text):
        assert (ROOT / config).exists(), f"README.md names {config}, which does not exist"
