"""Paired-seed statistics (hclib.stats): t intervals, TOST, verdicts, multiplicity, records."""

import json
import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from hclib.stats import (
    VERDICTS,
    VerdictRecord,
    compare_seeds,
    load_verdicts,
    markdown_table,
    multiplicity,
    reproduction_table,
    seeds_to_exclude_zero,
    t_interval,
    t_quantile,
    tost,
    write_intro_table,
    write_verdicts,
)

YES, NO, UNSURE = VERDICTS

# Two-sided 95% and 99% critical values of Student's t, from any statistics textbook's table.
T_TABLE = [
    (0.975, 1, 12.706),
    (0.975, 2, 4.303),
    (0.975, 4, 2.776),
    (0.975, 9, 2.262),
    (0.975, 30, 2.042),
    (0.995, 2, 9.925),
    (0.995, 7, 3.499),
    (0.025, 3, -3.182),
]


@pytest.mark.parametrize(("p", "df", "expected"), T_TABLE)
def test_t_quantile_matches_the_textbook_table(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-3)


def test_t_interval_is_mean_plus_minus_t_times_the_standard_error():
    d = np.array([-0.02, -0.01, -0.03, -0.02])
    mean, low, high = t_interval(d.tolist())
    half = 3.182446 * d.std(ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert mean == pytest.approx(-0.02)
    assert (high - mean, mean - low) == pytest.approx((half, half), rel=1e-6)


def test_t_interval_of_a_and_b_is_that_of_their_paired_differences():
    a, b = [1.0, 1.5, 1.2, 0.9], [0.8, 1.4, 1.3, 0.6]
    assert t_interval(a, b, 0.9) == pytest.approx(t_interval(np.subtract(a, b), None, 0.9))


# (a, b, claim, margin, verdict): per-seed values, paired by position.
WORSE = [0.72, 0.73, 0.72]
BETTER = [0.70, 0.71, 0.69]
VERDICT_CASES = [
    (BETTER, WORSE, "lower", None, YES),
    (WORSE, BETTER, "lower", None, NO),
    ([0.70, 0.74, 0.71], WORSE, "lower", None, UNSURE),  # one seed disagrees
    (WORSE, BETTER, "higher", None, YES),
    (BETTER, WORSE, "higher", None, NO),
    (WORSE, WORSE, "lower", None, UNSURE),
    # "not lower" by more than the margin: the lower end of the interval above -margin
    (WORSE, BETTER, "not lower", 0.01, YES),
    (WORSE, WORSE, "not lower", 0.01, YES),  # identical runs: within any margin
    (BETTER, WORSE, "not lower", 0.005, NO),  # lower by more than the margin, clearly
    (BETTER, WORSE, "not lower", 0.05, YES),  # ...but within a wide margin
    ([0.72, 0.73, 0.71], WORSE, "not lower", 0.005, UNSURE),  # leans its way: proves nothing
    (BETTER, WORSE, "not higher", 0.01, YES),
    (WORSE, BETTER, "not higher", 0.005, NO),
    ([0.72, 0.73, 0.71], WORSE, "equivalent", 0.05, YES),
    ([0.72, 0.73, 0.71], WORSE, "equivalent", 0.005, UNSURE),
    (BETTER, WORSE, "equivalent", 0.005, NO),
]


@pytest.mark.parametrize(("a", "b", "claim", "margin", "verdict"), VERDICT_CASES)
def test_compare_seeds_gives_the_verdict_of_the_interval_and_the_margin(
    a, b, claim, margin, verdict
):
    result = compare_seeds(a, b, claim=claim, margin=margin)
    assert result.verdict == verdict
    assert result.seeds == 3 and result.low <= result.mean <= result.high


def test_a_no_better_claim_is_not_shown_by_a_mean_that_leans_its_way():
    # the old rule ("reproduces" when mean >= 0) called this reproduced: half the time by chance
    a, b = [0.75, 0.70, 0.73], [0.70, 0.74, 0.72]
    assert np.mean(np.subtract(a, b)) > 0
    assert compare_seeds(a, b, "not lower", margin=0.01).verdict == UNSURE


def test_equivalence_verdict_agrees_with_the_tost_p_value():
    # at confidence c the interval's ends are the one-sided tests at level (1 - c) / 2
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.normal(0, 0.01, 4), rng.normal(0, 0.01, 4)
        margin = rng.uniform(0.002, 0.03)
        inside = compare_seeds(a, b, "equivalent", 0.90, margin).verdict == YES
        assert inside == (tost(a, b, margin=margin).p < 0.05)


def test_tost_sides_are_scipy_one_sample_t_tests_against_the_margins():
    d = np.array([0.004, -0.002, 0.001, 0.003])
    result = tost(d, margin=0.01)
    lower = scipy_stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(d, 0.01, alternative="less").pvalue
    assert (result.p_lower, result.p_upper) == pytest.approx((lower, upper))
    assert result.p == max(lower, upper)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"a": [0.1], "b": [0.2]}, "at least 2 seeds"),
        ({"a": [0.1, 0.2], "b": [0.2]}, "one value per seed each"),
        ({"a": [0.1, 0.2], "claim": "better"}, "claim must be one of"),
        ({"a": [0.1, float("nan")]}, "must be finite"),
        ({"a": [0.1, 0.2], "confidence": 1.0}, "confidence must be in"),
        ({"a": [0.1, 0.2], "claim": "not lower"}, "needs a positive equivalence margin"),
        ({"a": [0.1, 0.2], "claim": "equivalent", "margin": -1}, "positive equivalence margin"),
        ({"a": [0.1, 0.2], "claim": "lower", "margin": 0.1}, "judged against zero"),
    ],
)
def test_compare_seeds_says_what_it_expected(kwargs, error):
    with pytest.raises(ValueError, match=error):
        compare_seeds(**kwargs)


def test_seeds_to_exclude_zero_solves_t_over_root_s():
    assert seeds_to_exclude_zero(1.0) == 7  # 2.447 / sqrt(7) = 0.92 < 1 <= 2.571 / sqrt(6)
    assert seeds_to_exclude_zero(0.5) == 18
    S = seeds_to_exclude_zero(0.3)
    assert (
        t_quantile(0.975, S - 1) / math.sqrt(S) < 0.3 <= t_quantile(0.975, S - 2) / math.sqrt(S - 1)
    )


def test_multiplicity_counts_false_exclusions_and_the_bonferroni_level():
    m = multiplicity(20, 0.95)
    assert m.expected_false == pytest.approx(1.0)
    assert m.any_false == pytest.approx(1 - 0.95**20)
    assert m.bonferroni == pytest.approx(1 - 0.05 / 20)
    with pytest.raises(ValueError, match="positive whole number"):
        multiplicity(0)


def test_markdown_table_has_a_header_a_rule_and_escaped_cells():
    rows = [{"claim": "a|b", "verdict": "reproduces"}, {"claim": "c", "verdict": 1}]
    assert markdown_table(rows).splitlines() == [
        "| claim | verdict |",
        "| --- | --- |",
        "| a\\|b | reproduces |",
        "| c | 1 |",
    ]
    with pytest.raises(ValueError, match="at least one row"):
        markdown_table([])


def _record(**changes):
    base = dict(
        claim="HC beats Pre-Norm",
        paper="HC Table 1",
        setting="toy MLP",
        number="-0.0026 [-0.0188, +0.0136]",
        seeds=3,
        verdict=UNSURE,
        chapter="08_toy_models",
    )
    return VerdictRecord(**{**base, **changes})


def test_verdict_records_round_trip_and_render_every_row(tmp_path):
    eight = [_record(), _record(claim="FC beats Pre-Norm", verdict=YES)]
    one = [_record(chapter="05_frac_connections", seeds=1, number="True", note="weakly")]
    write_verdicts(eight, "08_toy_models", tmp_path)
    write_verdicts(one, "05_frac_connections", tmp_path)
    loaded = load_verdicts(tmp_path)
    assert loaded == one + eight  # by chapter, file order kept within one
    rows = reproduction_table(loaded).splitlines()[2:]
    assert len(rows) == 3
    assert "1 (one seed)" in rows[0] and "reproduces (one seed" not in rows[1]
    assert rows[0].endswith("; weakly | {doc}`notebooks/05_frac_connections` |")
    assert json.loads((tmp_path / "08_toy_models.json").read_text())[1]["verdict"] == YES


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"verdict": "sort of"}, "verdict must be one of"),
        ({"seeds": 0}, "seeds must be"),
        ({"number": "a | b"}, "must not contain"),
        ({"chapter": "toy"}, "notebook stem"),
    ],
)
def test_verdict_records_refuse_what_the_table_cannot_show(changes, error):
    with pytest.raises(ValueError, match=error):
        _record(**changes)


def test_write_verdicts_refuses_another_chapters_records(tmp_path):
    with pytest.raises(ValueError, match="given for 09_small_gpt"):
        write_verdicts([_record()], "09_small_gpt", tmp_path)


def test_write_intro_table_replaces_only_the_marked_table(tmp_path):
    from hclib.stats import TABLE_END, TABLE_START

    write_verdicts([_record()], "08_toy_models", tmp_path / "v")
    intro = tmp_path / "intro.md"
    intro.write_text(f"before\n{TABLE_START}\nold\n{TABLE_END}\nafter\n")
    assert write_intro_table(intro, tmp_path / "v")
    text = intro.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert not write_intro_table(intro, tmp_path / "v")  # a second run changes nothing
    write_verdicts([_record(verdict=YES)], "08_toy_models", tmp_path / "v")
    assert write_intro_table(intro, tmp_path / "v", check=True)  # out of date...
    assert intro.read_text() == text  # ...and left as it was


def test_records_from_rows_carries_every_column_and_the_seeds():
    from hclib.stats import VerdictRecord, records_from_rows

    row = {
        "claim": "HC beats Pre-Norm",
        "paper and figure": "HC Table 1",
        "our setting": "toy MLP",
        "our number": "-0.01 [-0.02, +0.00], 3 seeds",
        "verdict": "reproduces",
    }
    expected = VerdictRecord(
        claim="HC beats Pre-Norm",
        paper="HC Table 1",
        setting="toy MLP",
        number="-0.01 [-0.02, +0.00], 3 seeds",
        seeds=3,
        verdict="reproduces",
        chapter="08_toy_models",
    )
    assert records_from_rows([row], "08_toy_models", seeds=3) == [expected]
    assert records_from_rows([row], "08_toy_models", seeds=lambda r: 3) == [expected]
