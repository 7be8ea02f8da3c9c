"""The reproduction table in the book's introduction quotes only numbers its chapters compute.

Every row of the table under "What reproduces at the book's scale" in ``book/intro.md`` names a
chapter (``{doc}`notebooks/...```) and quotes its numbers as code spans. Each quoted span must
appear verbatim in the committed output of a cell of that chapter tagged ``nbval-check-output``,
the cells whose outputs nbval compares on every test run. So a number in the table cannot drift
from what the chapter computes without a test failing.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INTRO = ROOT / "book" / "intro.md"
HEADING = "## What reproduces at the book's scale"
VERDICTS = ("reproduces", "does not reproduce at this scale", "inconclusive: within seed spread")
COLUMNS = ["Claim", "Paper", "Our setting", "Our number", "Verdict", "Chapter"]


def _table_rows() -> list[dict[str, str]]:
    text = INTRO.read_text()
    assert HEADING in text, f"expected a section {HEADING!r} in book/intro.md"
    section = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]
    assert len(lines) >= 3, "expected a Markdown table with a header and rows"
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == COLUMNS, f"expected columns {COLUMNS}, got {header}"
    rows = []
    for line in lines[2:]:
        # a `|` inside a code span would split a cell: the table must not contain one
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(COLUMNS), f"expected {len(COLUMNS)} cells in {line!r}"
        rows.append(dict(zip(COLUMNS, cells, strict=True)))
    return rows


def _checked_outputs(notebook: Path) -> str:
    cells = json.loads(notebook.read_text())["cells"]
    texts = []
    for cell in cells:
        if cell["cell_type"] != "code":
            continue
        if "nbval-check-output" not in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if "text" in output:
                texts.append("".join(output["text"]))
            texts.append("".join(output.get("data", {}).get("text/plain", "")))
    return "\n".join(texts)


ROWS = _table_rows()


def test_reproduction_table_has_rows_for_every_chapter_that_tests_a_claim():
    chapters = {re.search(r"notebooks/(\d\d)_", row["Chapter"]).group(1) for row in ROWS}
    assert {"01", "04", "05", "06", "08", "09", "10"} <= chapters, sorted(chapters)


@pytest.mark.parametrize("row", ROWS, ids=[row["Claim"][:50] for row in ROWS])
def test_reproduction_table_quotes_numbers_the_chapter_checks(row):
    match = re.fullmatch(r"\{doc\}`(notebooks/[\w]+)`", row["Chapter"])
    assert match, f"expected {{doc}}`notebooks/...` in the Chapter cell, got {row['Chapter']!r}"
    notebook = ROOT / (match.group(1) + ".ipynb")
    assert notebook.exists(), f"{notebook} does not exist"
    assert row["Verdict"].startswith(VERDICTS), (
        f"a verdict starts with one of {VERDICTS}, got {row['Verdict']!r}"
    )
    quoted = re.findall(r"`([^`]+)`", row["Our number"])
    assert quoted, f"quote the chapter's numbers as code spans: {row['Our number']!r}"
    outputs = _checked_outputs(notebook)
    missing = [q for q in quoted if q not in outputs]
    assert not missing, (
        f"not in a checked output of {notebook.name}: {missing}; the table must quote the "
        "chapter's printed numbers verbatim"
    )
