"""The README's example runs and checks what it says."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_wraps_a_layer_with_each_connection_and_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) == 1, "the README should hold exactly one Python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 14
    for name in ("Residual", "HyperConnection", "FracConnection", "ManifoldHyperConnection"):
        assert f"hclib.{name}(" in code
    exec(compile(code, str(README), "exec"), {})
