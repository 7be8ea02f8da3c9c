"""The reproduction table in the book's introduction is generated from every chapter's verdicts.

Chapters 8-10 write their verdict records to ``results/verdicts/<chapter>.json`` from a checked
cell; the one-seed claims of chapters 1-6 are kept in ``results/verdicts/01-06.json``.
``python -m hclib.stats`` renders the table of ``book/intro.md`` from all of them. These tests
check that the committed table is the generated one, that every number a record quotes appears
verbatim in a checked output of its chapter (the cells nbval compares on every run), and that
no verdict a chapter prints is missing from the records.
"""

import json
import re
from pathlib import Path

import pytest

from hclib.stats import (
    INTRO,
    TABLE_END,
    TABLE_START,
    VERDICTS,
    load_verdicts,
    reproduction_table,
    table_summary,
)

ROOT = Path(__file__).resolve().parents[1]
RECORDS = load_verdicts()


def _checked_outputs(chapter: str) -> str:
    cells = json.loads((ROOT / "notebooks" / f"{chapter}.ipynb").read_text())["cells"]
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


def test_the_committed_table_is_the_generated_one():
    text = INTRO.read_text()
    assert TABLE_START in text and TABLE_END in text, "book/intro.md lost its table markers"
    committed = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    generated = f"{reproduction_table(RECORDS)}\n\n{table_summary(RECORDS)}"
    assert committed == generated, "run `python -m hclib.stats` and commit book/intro.md"


def test_the_table_has_rows_for_every_chapter_that_tests_a_claim():
    chapters = {r.chapter[:2] for r in RECORDS}
    assert {"01", "04", "05", "06", "08", "09", "10"} <= chapters, sorted(chapters)


def test_one_seed_rows_are_marked_as_such():
    rows = reproduction_table(RECORDS).splitlines()[2:]
    for record, row in zip(RECORDS, rows, strict=True):
        assert ("(one seed)" in row) == (record.seeds == 1), row


@pytest.mark.parametrize("record", RECORDS, ids=[r.claim[:50] for r in RECORDS])
def test_every_record_quotes_numbers_its_chapter_checks(record):
    outputs = _checked_outputs(record.chapter)
    quoted = [record.number, *re.findall(r"`([^`]+)`", record.note)]
    missing = [q for q in quoted if q not in outputs]
    assert not missing, (
        f"not in a checked output of {record.chapter}: {missing}; a record must quote the "
        "chapter's printed numbers verbatim"
    )
    assert record.verdict in VERDICTS


# the chapters that print their reproduction table with markdown_table in a checked cell
PRINTED = ["08_toy_models", "09_small_gpt", "10_moe_llm_with_lightning"]


@pytest.mark.parametrize("chapter", PRINTED)
def test_every_verdict_a_chapter_prints_has_its_record(chapter):
    printed = set()
    for line in _checked_outputs(chapter).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 5 and cells[4] in VERDICTS:
            printed.add((cells[0], cells[3], cells[4]))  # claim, our number, verdict
    assert printed, f"no reproduction table in the checked outputs of {chapter}"
    kept = {(r.claim, r.number, r.verdict) for r in RECORDS if r.chapter == chapter}
    assert printed == kept, f"{chapter}: printed but not kept {printed - kept}, or the reverse"
