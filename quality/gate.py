"""The release gate: for one run and one candidate corpus, stored metrics -> bounds ->
the GX suite -> one ``validations`` row per expectation.

The corpus's metrics and the reference's split-half yardstick are read from the warehouse
(read-only); ``thresholds`` turns the yardstick (and the stored CIs) into bounds; the run's
metrics, pivoted into ONE row with a column per metric, go to GX as a DataFrame
(``suite.validate``), and GX's observed value and verdict make each row. A metric whose
yardstick was measured on another token budget fails as not comparable; one without a
yardstick fails as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from semisynth.config import GateConfig
from semisynth.quality import suite
from semisynth.quality.thresholds import (
    BUDGET_MISMATCH,
    NO_YARDSTICK,
    GateResult,
    expectation_name,
    has_rule,
    noise_slack,
    standard_error,
    threshold_text,
    thresholds,
)
from semisynth.warehouse import db


def _metrics_where(run_id: str, corpus: str, comparison: str,
                   reference: str | None) -> tuple[str, list]:
    """The WHERE clause selecting a corpus's usable metric rows of a run, and its parameters."""
    where = ("run_id = ? AND corpus = ? AND comparison = ? "
             "AND value IS NOT NULL AND NOT isnan(value)")
    params = [run_id, corpus, comparison]
    if reference is not None:  # rows without a reference (edit_rate may have none) still count
        where += " AND coalesce(reference, ?) = ?"
        params += [reference, reference]
    return where, params


@dataclass(frozen=True)
class Stored:
    """A metric's row as the warehouse holds it."""

    value: float
    budget: int | None  # tokens per side of the comparison
    se: float  # standard error from its bootstrap 95% CI; 0.0 without one


def _stored(db_path: Path, where: tuple[str, list]) -> dict[str, Stored]:
    # max(value): one row per metric is expected; the row GX validates (_metric_row)
    # aggregates the same way, and the budget and CI are taken from that row.
    frame = db.query(db_path, "SELECT metric, max(value) AS value, arg_max(budget, value) AS budget, "
                              "arg_max(ci_low, value) AS ci_low, arg_max(ci_high, value) AS ci_high "
                              f"FROM metrics WHERE {where[0]} GROUP BY metric", where[1])
    out = {}
    for row in frame.itertuples(index=False):
        budget = None if pd.isna(row.budget) else int(row.budget)  # None, NaN or NA
        ci = [None if pd.isna(v) else float(v) for v in (row.ci_low, row.ci_high)]
        out[row.metric] = Stored(float(row.value), budget, standard_error(*ci))
    return out


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _metric_row(db_path: Path, where: tuple[str, list], metrics: list[str]) -> pd.DataFrame:
    """The run's metrics pivoted into one row, a column per metric (max(value), as
    ``_stored`` aggregates); a metric without a row is NaN, which GX fails unobserved."""
    columns = ", ".join(f"max(value) FILTER (WHERE metric = ?) AS {_sql_name(m)}" for m in metrics)
    return db.query(db_path, f"SELECT {columns} FROM metrics WHERE {where[0]}",
                    [*metrics, *where[1]])


def validate_corpus(db_path: Path, gx_root: Path, run_id: str, corpus: str, reference: str,
                    gate: GateConfig, edited: bool, synthetic_share: bool = False) -> GateResult:
    """Run the suite on ``corpus``'s metrics of ``run_id``; rows are returned, not written.
    ``edited``: gate its edit rate; ``synthetic_share``: gate its estimated synthetic share."""
    db_path, gx_root = Path(db_path), Path(gx_root)
    where = _metrics_where(run_id, corpus, "vs_reference", reference)
    stored = _stored(db_path, where)
    split = _stored(db_path, _metrics_where(run_id, reference, "split_half", None))
    gated = sorted(m for m in {*stored, *split} if has_rule(m))
    # A yardstick measured on another budget than the candidate says nothing about it
    # (n-gram statistics depend on sample size): such a metric fails instead of being gated.
    mismatched = {m: (stored[m].budget, split[m].budget) for m in gated
                  if m in stored and m in split and stored[m].budget != split[m].budget}
    yardstick = {m: split[m].value for m in split if m not in mismatched}
    noise = {m: noise_slack(split[m].se, stored[m].se if m in stored else 0.0, gate)
             for m in split}
    # the stored names too: a metric with fixed bounds and no condition is gated when measured
    bounds = thresholds(yardstick, gate, sorted({*gated, *stored}), edited, noise,
                        synthetic_share)
    # A metric missing for this run is an all-NaN column: GX fails it with no observed
    # value, so GX's stored result (and Data Docs) agree with the gate.
    outcome = suite.validate(gx_root, gate.suite, run_id, corpus,
                             _metric_row(db_path, where, list(bounds)), bounds) if bounds else {}

    now = db.now()
    base = {"run_id": run_id, "corpus": corpus, "suite": gate.suite, "validated_at": now}
    rows = []
    for metric in sorted({*gated, *bounds}):
        observed = stored[metric].value if metric in stored else None
        if metric in mismatched:
            ours, theirs = mismatched[metric]
            rows.append({**base, "expectation": f"{metric} ({BUDGET_MISMATCH})", "metric": metric,
                         "observed": observed, "success": False,
                         "threshold": f"{BUDGET_MISMATCH}: {ours} vs {theirs} tokens"})
            continue
        if metric not in bounds:  # the reference has no split-half value to compare with
            rows.append({**base, "expectation": f"{metric} ({NO_YARDSTICK})", "metric": metric,
                         "observed": observed, "threshold": NO_YARDSTICK, "success": False})
            continue
        value, success = outcome[metric]
        rows.append({**base, "expectation": expectation_name(metric, bounds[metric]),
                     "metric": metric, "observed": value,
                     "threshold": threshold_text(bounds[metric]), "success": success})
    if not rows:  # nothing to gate is not a pass
        rows.append({**base, "expectation": "gated metrics present", "metric": "*",
                     "observed": None, "threshold": "none in the warehouse", "success": False})
    return GateResult(corpus, gate.suite, all(r["success"] for r in rows), rows)
