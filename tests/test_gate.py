"""The release gate on a real DuckDB warehouse through real Great Expectations."""

import json
from pathlib import Path

import pytest

from semisynth.config import GateConfig
from semisynth.quality import gate, suite, thresholds
from semisynth.warehouse import db, records

RUN = "20261124T000000-test"
GATE = GateConfig(
    ppl_low_frac_max_excess=0.15, ppl_tail_frac_max_deficit=0.08, ppl_ks_max_excess=0.2,
    ppl_w1_max_excess=0.35, distinct_min_ratio=0.85, top1pct_mass_max_ratio=1.25,
    ref_coverage_min_ratio=0.85, js_max_excess=0.1, edit_rate_min=0.0005, edit_rate_max=0.25,
)
# The reference's split-half values (half A vs half B): the yardstick.
YARDSTICK = {"ppl_low_frac": 0.26, "ppl_tail_frac": 0.1, "ppl_ks": 0.05, "ppl_w1": 0.1,
             "distinct_2": 0.8, "top1pct_mass_2": 0.2, "ref_coverage_2": 0.7, "js_2": 0.05}
HEALTHY = {**YARDSTICK, "ppl_low_frac": 0.3, "distinct_2": 0.78, "ppl_q50": 21.0}
COLLAPSED = {**HEALTHY, "ppl_low_frac": 0.9, "distinct_2": 0.3}


def _rows(corpus: str, comparison: str, values: dict) -> list[dict]:
    return [{"run_id": RUN, "corpus": corpus, "reference": "human", "comparison": comparison,
             "metric": m, "n": None, "budget": 10_000, "value": v} for m, v in values.items()]


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("gate")
    wh = db.init(root / "warehouse.duckdb")
    without_js = {m: v for m, v in HEALTHY.items() if m != "js_2"}
    db.insert(wh, "metrics", _rows("human", "split_half", YARDSTICK) + _rows("healthy", "vs_reference", HEALTHY)
              + _rows("collapsed", "vs_reference", COLLAPSED)
              + _rows("edited", "vs_reference", {**without_js, "edit_rate": 0.05})
              + _rows("incomplete", "vs_reference", {**without_js, "js_3": 0.1}))
    return wh, root / "gx"  # one GX project for every test: validations repeat in it


def _rounded(bounds: dict) -> dict:
    return {m: tuple(None if b is None else round(b, 9) for b in pair) for m, pair in bounds.items()}


def test_thresholds_known_answers():
    names = [*YARDSTICK, "ppl_q50", "js_3"]  # no rule for ppl_q50, no yardstick for js_3
    bounds = thresholds.thresholds(YARDSTICK, GATE, names, edited=False)
    assert _rounded(bounds) == {
        "ppl_low_frac": (None, 0.41), "ppl_tail_frac": (0.02, None), "ppl_ks": (None, 0.25),
        "ppl_w1": (None, 0.45), "distinct_2": (0.68, None), "top1pct_mass_2": (None, 0.25),
        "ref_coverage_2": (0.595, None), "js_2": (None, 0.15)}
    edited = thresholds.thresholds(YARDSTICK, GATE, ["distinct_2"], edited=True)
    assert _rounded(edited) == {"distinct_2": (0.68, None), "edit_rate": (0.0005, 0.25)}
    assert thresholds.threshold_text((None, 0.41000000000000003)) == "<= 0.41"
    assert thresholds.threshold_text((0.73, None)) == ">= 0.73"
    assert thresholds.expectation_name("edit_rate", (0.0005, 0.25)) == "edit_rate in [0.0005, 0.25]"


def test_healthy_corpus_passes(warehouse):
    wh, gx_root = warehouse
    result = gate.validate_corpus(wh, gx_root, RUN, "healthy", "human", GATE, edited=False)
    assert result.success, result.summary()
    assert result.suite == "coverage" and result.failures() == []
    assert sorted(r["metric"] for r in result.rows) == sorted(YARDSTICK)  # ppl_q50 is not gated
    low = next(r for r in result.rows if r["metric"] == "ppl_low_frac")
    assert low["expectation"] == "ppl_low_frac <= 0.41" and low["threshold"] == "<= 0.41"
    assert low["observed"] == pytest.approx(0.3)
    assert set(low) == set(thresholds.VALIDATION_COLUMNS)
    # GX stored the result under the run's id (what Data Docs are built from).
    assert (gx_root / "gx" / "uncommitted" / "validations" / "coverage" / RUN).is_dir()


def test_collapsed_corpus_fails_naming_metrics_and_is_recorded(warehouse):
    wh, gx_root = warehouse
    result = gate.validate_corpus(wh, gx_root, RUN, "collapsed", "human", GATE, edited=False)
    assert not result.success
    failed = {r["metric"]: r for r in result.failures()}
    assert set(failed) == {"ppl_low_frac", "distinct_2"}
    assert failed["ppl_low_frac"]["observed"] == pytest.approx(0.9)
    assert failed["distinct_2"]["observed"] == pytest.approx(0.3)
    assert failed["distinct_2"]["threshold"] == ">= 0.68"
    summary = result.summary()
    assert "ppl_low_frac: observed 0.9, want <= 0.41" in summary
    assert "distinct_2: observed 0.3, want >= 0.68" in summary

    assert records.record_validations(wh, result.rows) == len(result.rows)
    stored = db.query(wh, "SELECT metric, observed, threshold, success, suite FROM validations "
                          "WHERE corpus = 'collapsed' AND NOT success ORDER BY metric")
    assert stored["metric"].tolist() == ["distinct_2", "ppl_low_frac"]
    assert stored["observed"].tolist() == pytest.approx([0.3, 0.9])
    assert set(stored["suite"]) == {"coverage"}


def test_gx_decides_stores_the_result_and_renders_it_in_data_docs(tmp_path):
    """The verdict is GX's: GX's stored validation result fails the out-of-bound metrics
    with the values it observed (and a metric missing from the warehouse with none), the
    gate's rows agree with it, and Data Docs render that run's page."""
    wh = db.init(tmp_path / "warehouse.duckdb")
    collapsed = {m: v for m, v in COLLAPSED.items() if m != "js_2"}
    db.insert(wh, "metrics", _rows("human", "split_half", YARDSTICK)
              + _rows("collapsed", "vs_reference", collapsed))
    gx_root = tmp_path / "gx"
    result = gate.validate_corpus(wh, gx_root, RUN, "collapsed", "human", GATE, edited=False)

    [stored] = (gx_root / "gx" / "uncommitted" / "validations" / "coverage" / RUN).glob("*/*.json")
    gx_result = json.loads(stored.read_text())
    assert gx_result["success"] is False
    by_metric = {r["expectation_config"]["kwargs"]["column"]: r for r in gx_result["results"]}
    assert sorted(by_metric) == sorted(YARDSTICK)
    low = by_metric["ppl_low_frac"]
    assert low["success"] is False and low["result"]["observed_value"] == pytest.approx(0.9)
    assert low["expectation_config"]["kwargs"]["max_value"] == pytest.approx(0.41)
    assert by_metric["distinct_2"]["result"]["observed_value"] == pytest.approx(0.3)
    assert by_metric["js_2"]["success"] is False and by_metric["js_2"]["result"]["observed_value"] is None
    assert by_metric["ppl_ks"]["success"] is True
    for row in result.rows:  # the gate reports what GX decided and observed
        gx_row = by_metric[row["metric"]]
        assert row["success"] == gx_row["success"]
        assert row["observed"] == gx_row["result"]["observed_value"]
    assert {r["metric"] for r in result.failures()} == {"ppl_low_frac", "distinct_2", "js_2"}

    index = suite.build_data_docs(gx_root)
    assert index.is_file()
    [page] = (index.parent / "validations" / "coverage" / RUN).glob("*/*.html")
    assert "collapsed" in page.name  # one asset per corpus
    html = page.read_text()
    assert "ppl_low_frac" in html and "0.9" in html and "Failed" in html


def test_missing_metrics_fail_clearly(warehouse):
    wh, gx_root = warehouse
    result = gate.validate_corpus(wh, gx_root, RUN, "incomplete", "human", GATE, edited=True)
    failed = {r["metric"]: r for r in result.failures()}
    # No js_2 row; edited but no edit_rate; js_3 has no split-half value to set a bound.
    assert set(failed) == {"js_2", "edit_rate", "js_3"}
    assert failed["js_2"]["observed"] is None
    assert f"js_2: missing from the warehouse for run {RUN}" in result.summary()
    assert failed["js_3"]["threshold"] == thresholds.NO_YARDSTICK
    # The edited corpus that has its edit_rate (within bounds) fails on js_2 only.
    edited = gate.validate_corpus(wh, gx_root, RUN, "edited", "human", GATE, edited=True)
    assert [r["metric"] for r in edited.failures()] == ["js_2"]
    # A corpus with no rows at all, or a run without a yardstick, fails too.
    assert not gate.validate_corpus(wh, gx_root, RUN, "absent", "human", GATE, False).success
    lone = gate.validate_corpus(wh, gx_root, "other-run", "healthy", "human", GATE, False)
    assert not lone.success and lone.rows[0]["metric"] == "*"


def test_noise_slack_widens_bounds_known_answers():
    g = GateConfig(ci_z=3.0)  # defaults otherwise: coverage ratio 0.5 for trigrams
    assert thresholds.standard_error(0.1, 0.1 + 2 * thresholds.Z_95 * 0.05) == pytest.approx(0.05)
    assert thresholds.standard_error(None, 0.3) == 0.0 and thresholds.standard_error(0.1, float("nan")) == 0.0
    # 2 se is the standard error of the difference; the larger se of the two counts
    assert thresholds.noise_slack(0.05, 0.1, g) == pytest.approx(3.0 * 2 * 0.1)
    y = {"ppl_low_frac": 0.25, "ppl_tail_frac": 0.1, "ref_coverage_2": 0.4, "ref_coverage_3": 0.2,
         "top1pct_mass_3": 0.04}
    noise = {"ppl_low_frac": 0.36, "ppl_tail_frac": 0.05, "ref_coverage_2": 0.1}
    bounds = thresholds.thresholds(y, g, list(y), edited=False, noise=noise)
    assert _rounded(bounds) == {
        "ppl_low_frac": (None, 0.61),      # noise 0.36 > fixed 0.15
        "ppl_tail_frac": (0.02, None),     # fixed 0.08 > noise 0.05
        "ref_coverage_2": (0.3, None),     # noise 0.1 > fixed 0.15 * 0.4
        "ref_coverage_3": (0.1, None),     # trigram coverage: 0.5 Y by default
        "top1pct_mass_3": (None, 0.06)}    # 1.5 Y
    assert _rounded(thresholds.thresholds(y, g, list(y), False)) != _rounded(bounds)  # no CIs: fixed


def test_coverage_ratio_per_order():
    assert GateConfig(ref_coverage_min_ratio=0.8).coverage_ratio(3) == 0.8
    per_order = GateConfig(ref_coverage_min_ratio={1: 0.9, 3: 0.6})
    assert per_order.coverage_ratio(1) == 0.9 and per_order.coverage_ratio(3) == 0.6
    assert per_order.coverage_ratio(2) == 0.6 and per_order.coverage_ratio(None) == 0.6
    with pytest.raises(ValueError, match="at least one order"):
        GateConfig(ref_coverage_min_ratio={})


def test_stored_cis_widen_bounds_and_budgets_must_match(tmp_path):
    """Through GX: the yardstick's and candidate's CIs widen ppl_low_frac's bound, and a
    metric measured on another budget than its yardstick fails as not comparable."""
    wh = db.init(tmp_path / "warehouse.duckdb")

    def row(corpus, comparison, metric, value, budget=10_000, ci=(None, None)):
        return {"run_id": RUN, "corpus": corpus, "reference": "ref", "comparison": comparison,
                "metric": metric, "n": None, "budget": budget, "value": value,
                "ci_low": ci[0], "ci_high": ci[1]}

    half = 0.1 * thresholds.Z_95  # the candidate's CI: +- this, se 0.1; the yardstick's se: 0.051
    db.insert(wh, "metrics", [
        row("ref", "split_half", "ppl_low_frac", 0.25, ci=(0.15, 0.35)),
        row("ref", "split_half", "distinct_2", 0.8),
        row("noisy", "vs_reference", "ppl_low_frac", 0.55, ci=(0.55 - half, 0.55 + half)),
        row("noisy", "vs_reference", "distinct_2", 0.79),
        row("other_budget", "vs_reference", "ppl_low_frac", 0.25, ci=(0.15, 0.35)),
        row("other_budget", "vs_reference", "distinct_2", 0.79, budget=20_000),
    ])
    g = GateConfig(ci_z=3.0)
    noisy = gate.validate_corpus(wh, tmp_path / "gx", RUN, "noisy", "ref", g, edited=False)
    assert noisy.success, noisy.summary()
    low = next(r for r in noisy.rows if r["metric"] == "ppl_low_frac")
    assert low["threshold"] == "<= 0.85"  # 0.25 + 3 * 2 * max(0.051, 0.1)
    strict = gate.validate_corpus(wh, tmp_path / "gx", RUN, "noisy", "ref",
                                  GateConfig(ci_z=0.0), edited=False)
    assert [r["metric"] for r in strict.failures()] == ["ppl_low_frac"]  # <= 0.25 + 0.15

    other = gate.validate_corpus(wh, tmp_path / "gx", RUN, "other_budget", "ref", g, False)
    failed = {r["metric"]: r for r in other.failures()}
    assert set(failed) == {"distinct_2"}
    assert failed["distinct_2"]["threshold"] == f"{thresholds.BUDGET_MISMATCH}: 20000 vs 10000 tokens"
    assert "distinct_2: not comparable" in other.summary()


def test_a_value_exactly_at_a_relative_bound_passes():
    # small samples give exact ratios: 9/368 is 1.5 times 6/368, but 6/368 + 0.5 * 6/368
    # lands one float step below 9/368
    bounds = thresholds.thresholds({"top1pct_mass_3": 6 / 368}, GateConfig(top1pct_mass_max_ratio=1.5),
                             ["top1pct_mass_3"], edited=False)
    assert bounds["top1pct_mass_3"][1] >= 9 / 368
