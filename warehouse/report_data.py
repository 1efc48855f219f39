"""What the run report (``semisynth report``) and the collapse experiment's summary read from
the warehouse: one function per question, each a query over the run's rows, returning pandas
frames (or the run's row). The report's layout lives in ``semisynth.quality.report``."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import duckdb
import pandas as pd

from semisynth.errors import UnknownRun
from semisynth.warehouse import db


def run_row(wh: Path, run_id: str) -> NamedTuple:
    """The run's row of ``runs`` (its columns as attributes); UnknownRun, naming the latest
    runs, when there is none."""
    run = db.query(wh, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    if run.empty:
        recent = db.query(wh, "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").run_id
        known = ", ".join(recent) or "none"
        raise UnknownRun(f"unknown run id {run_id!r} in {wh} (latest runs: {known})")
    return next(run.itertuples(index=False))


def metrics(wh: Path, run_id: str) -> pd.DataFrame:
    return db.query(wh, "SELECT * FROM metrics WHERE run_id = ? ORDER BY corpus, metric", [run_id])


def validations(wh: Path, run_id: str) -> pd.DataFrame:
    return db.query(wh, "SELECT * FROM validations WHERE run_id = ? ORDER BY corpus, metric",
                    [run_id])


def releases(wh: Path, run_id: str) -> pd.DataFrame:
    return db.query(wh, "SELECT * FROM releases WHERE run_id = ? ORDER BY name, version", [run_id])


def corpora(wh: Path, run_id: str) -> pd.DataFrame:
    return db.query(wh, "SELECT * FROM corpora WHERE run_id = ? ORDER BY corpus", [run_id])


def quarantine_counts(wh: Path, run_id: str) -> pd.DataFrame:
    """Quarantined rows per (corpus, file, reason): columns corpus, file, reason, rows."""
    return db.query(wh, "SELECT corpus, file, reason, count(*) AS rows FROM quarantine "
                        "WHERE run_id = ? GROUP BY ALL ORDER BY corpus, file, reason", [run_id])


def quarantined(wh: Path, run_id: str, limit: int) -> tuple[int, list[dict]]:
    """The run's quarantined input rows: how many, and the first ``limit`` (corpus, file,
    line, reason) in file and line order."""
    total = db.query(wh, "SELECT count(*) AS n FROM quarantine WHERE run_id = ?", [run_id])
    rows = db.query(wh, "SELECT corpus, file, line, reason FROM quarantine WHERE run_id = ? "
                        "ORDER BY corpus, file, line LIMIT ?", [run_id, limit])
    return int(total.n.iloc[0]), rows.to_dict("records")


def experiment_summary(wh: Path, run_id: str) -> pd.DataFrame:
    """The run's rows of ``experiment_summary_by_run`` (empty: not an experiment run, or a
    warehouse written before the experiment's tables existed)."""
    try:
        return db.query(wh, "SELECT * FROM experiment_summary_by_run WHERE run_id = ? "
                            "ORDER BY eval_corpus, selection NULLS FIRST, "
                            "edit_threshold NULLS FIRST, synthetic_share, arm", [run_id])
    except duckdb.CatalogException:
        return pd.DataFrame()


def vs_reference_values(wh: Path, run_id: str) -> dict[tuple[str, str], float]:
    """The run's metric values against each corpus's reference: {(corpus, metric): value}."""
    rows = db.query(wh, "SELECT corpus, metric, value FROM metrics WHERE run_id = ? AND "
                        "comparison = 'vs_reference'", [run_id])
    return {(r.corpus, r.metric): r.value for r in rows.itertuples()}
