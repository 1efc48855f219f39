"""The release gate: the Great Expectations suite ``coverage`` over the warehouse.

For one run and one candidate corpus, a GX query asset pivots the corpus's metrics into
ONE row with a column per metric; the suite holds one ``ExpectColumnMaxToBeBetween`` per
gated metric (the max of a one-row column is the value, so every result carries its
``observed_value``). Bounds are relative to the reference's split-half yardstick
(``GateConfig``). The suite is rebuilt for every validation: thresholds depend on the run's
yardstick and the gated metrics on the corpus (``edit_rate`` only for edited corpora).

GX state (suite, asset, stored validation results for Data Docs) lives in a file-backed
context under ``gx_root``; the warehouse is opened read-only through duckdb-engine.
"""

from __future__ import annotations

import fcntl
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import great_expectations as gx
import great_expectations.expectations as gxe
from great_expectations.core.run_identifier import RunIdentifier
from great_expectations.data_context.types.base import ProgressBarsConfig
from great_expectations.execution_engine.sqlalchemy_execution_engine import (
    SqlAlchemyExecutionEngine,
)

from semisynth.config import GateConfig
from semisynth.warehouse import db

Bounds = tuple[float | None, float | None]

# Bounds of a metric from the split-half value y of the same metric, per metric family
# (distinct_2 belongs to "distinct"). edit_rate has fixed bounds and no yardstick.
_RULES = {
    "ppl_low_frac": lambda y, g: (None, y + g.ppl_low_frac_max_excess),
    "ppl_tail_frac": lambda y, g: (y - g.ppl_tail_frac_max_deficit, None),
    "ppl_ks": lambda y, g: (None, y + g.ppl_ks_max_excess),
    "ppl_w1": lambda y, g: (None, y + g.ppl_w1_max_excess),
    "distinct": lambda y, g: (y * g.distinct_min_ratio, None),
    "top1pct_mass": lambda y, g: (None, y * g.top1pct_mass_max_ratio),
    "ref_coverage": lambda y, g: (y * g.ref_coverage_min_ratio, None),
    "js": lambda y, g: (None, y + g.js_max_excess),
}
_NGRAM_METRIC = re.compile(r"(distinct|top1pct_mass|ref_coverage|js)_\w+")
NO_YARDSTICK = "no split-half yardstick"
VALIDATION_COLUMNS = ("run_id", "corpus", "suite", "expectation", "metric", "observed",
                      "threshold", "success", "validated_at")


def _family(metric: str) -> str | None:
    if metric in _RULES or metric == "edit_rate":
        return metric
    match = _NGRAM_METRIC.fullmatch(metric)
    return match.group(1) if match else None


def thresholds(yardstick: dict[str, float], gate: GateConfig, metric_names: list[str],
               edited: bool) -> dict[str, Bounds]:
    """(min, max) per gated metric of ``metric_names`` (None: unbounded on that side).

    Metrics without a rule, or whose split-half value is missing from ``yardstick``, are
    left out; ``edit_rate`` is gated (whether listed or not) for edited corpora only."""
    bounds: dict[str, Bounds] = {}
    for metric in metric_names:
        family = _family(metric)
        if family in _RULES and metric in yardstick:
            bounds[metric] = _RULES[family](yardstick[metric], gate)
    if edited:
        bounds["edit_rate"] = (gate.edit_rate_min, gate.edit_rate_max)
    return bounds


def threshold_text(bounds: Bounds) -> str:
    low, high = bounds
    if low is not None and high is not None:
        return f"[{low:.4g}, {high:.4g}]"
    return f">= {low:.4g}" if high is None else f"<= {high:.4g}"


def expectation_name(metric: str, bounds: Bounds) -> str:
    both = bounds[0] is not None and bounds[1] is not None
    return f"{metric} {'in ' if both else ''}{threshold_text(bounds)}"


@dataclass
class GateResult:
    corpus: str
    suite: str
    success: bool
    rows: list[dict]  # one per expectation, columns of the `validations` table

    def failures(self) -> list[dict]:
        return [r for r in self.rows if not r["success"]]

    def summary(self) -> str:
        lines = []
        for r in self.failures():
            if r["metric"] == "*":
                why = f"no gated metrics in the warehouse for run {r['run_id']}"
            elif r["threshold"] == NO_YARDSTICK:
                why = f"no split-half value of the reference in run {r['run_id']} to set a threshold"
            elif r["observed"] is None:
                why = f"missing from the warehouse for run {r['run_id']} (want {r['threshold']})"
            else:
                why = f"observed {r['observed']:.4g}, want {r['threshold']}"
            lines.append(f"{self.corpus}: {r['metric']}: {why}")
        return "\n".join(lines) or f"{self.corpus}: all {len(self.rows)} expectations passed"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _metrics_where(run_id: str, corpus: str, comparison: str, reference: str | None) -> str:
    where = (f"run_id = {_sql_text(run_id)} AND corpus = {_sql_text(corpus)} "
             f"AND comparison = {_sql_text(comparison)} AND value IS NOT NULL AND NOT isnan(value)")
    if reference is not None:  # rows without a reference (edit_rate may have none) still count
        where += f" AND coalesce(reference, {_sql_text(reference)}) = {_sql_text(reference)}"
    return where


def _metric_values(db_path: Path, where: str) -> dict[str, float]:
    # max(): one row per metric is expected; the GX pivot aggregates the same way.
    frame = db.query(db_path, f"SELECT metric, max(value) AS value FROM metrics WHERE {where} "
                              "GROUP BY metric")
    return dict(zip(frame["metric"], frame["value"].astype(float), strict=True))


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pivot_query(where: str, metrics: list[str]) -> str:
    columns = ", ".join(f"max(value) FILTER (WHERE metric = {_sql_text(m)}) AS {_sql_name(m)}"
                        for m in metrics)
    return f"SELECT {columns} FROM metrics WHERE {where}"


# duckdb drops a connection's pending result set as soon as anything else runs on it, and
# SQLAlchemy rolls back when GX closes the connection, which GX does *before* fetching the
# rows (every metric then fails with "list index out of range", GX issue #10738). Fetch
# the rows while the connection is still open, for duckdb only.
_execute_query = SqlAlchemyExecutionEngine.execute_query


def _execute_query_buffered(self: SqlAlchemyExecutionEngine, query):
    if self.dialect_name != "duckdb":
        return _execute_query(self, query)
    with self.get_connection() as connection:
        result = connection.execute(query)
        return result.freeze()() if result.returns_rows else result


SqlAlchemyExecutionEngine.execute_query = _execute_query_buffered


def _gx_error(info: dict) -> str | None:
    """The message of an exception GX caught while evaluating an expectation; GX reports it
    either at the top level or per metric (keyed by metric id)."""
    for entry in (info, *info.values()):
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _context(gx_root: Path):
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    if context.config.analytics_enabled is not False:  # first use of this gx_root
        context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                             metric_calculations=False)
        context.enable_analytics(False)  # no network here; also saves the settings
    return context


def _datasource(context, db_path: Path):
    url = f"duckdb:///{Path(db_path).resolve()}"
    kwargs = {"connect_args": {"read_only": True}}  # the gate never writes the warehouse
    try:
        source = context.data_sources.get("warehouse")
        if str(source.connection_string) == url:
            return source
    except KeyError:
        pass
    return context.data_sources.add_or_update_sql(name="warehouse", connection_string=url,
                                                  kwargs=kwargs)


def _run_suite(db_path: Path, gx_root: Path, run_id: str, corpus: str, suite_name: str,
               where: str, bounds: dict[str, Bounds]) -> dict[str, tuple[float | None, bool]]:
    """Validate with GX; returns metric -> (observed value, success)."""
    gx_root.mkdir(parents=True, exist_ok=True)
    # One GX writer at a time per gx_root: the context rewrites its YAML and JSON files.
    with open(gx_root / ".gate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        context = _context(gx_root)
        sources = [_datasource(context, db_path)]
        try:
            name = re.sub(r"[^\w.-]", "_", corpus)
            asset_name = f"metrics_{name}"
            if asset_name in sources[0].get_asset_names():
                sources[0].delete_asset(asset_name)  # the query names this run's id
            asset = sources[0].add_query_asset(asset_name, _pivot_query(where, list(bounds)))
            batch = asset.add_batch_definition_whole_table("run")
            suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=[
                gxe.ExpectColumnMaxToBeBetween(column=m, min_value=low, max_value=high,
                                               meta={"metric": m})
                for m, (low, high) in bounds.items()]))
            definition = context.validation_definitions.add_or_update(
                gx.ValidationDefinition(name=f"{suite_name}-{name}", data=batch, suite=suite))
            sources.append(definition.batch_definition.data_asset.datasource)
            result = definition.run(run_id=RunIdentifier(run_name=run_id))
        finally:
            # Let go of the warehouse: a pooled read-only connection would block writers.
            # A data source has two engines (get_engine tests the connection when a source
            # or asset is added; the execution engine validates), and the definition GX
            # returns holds its own copy of the data source: close them all.
            for source in sources:
                source.get_engine().dispose()
                source.get_execution_engine().close()
    outcome = {}
    for r in result.results:
        metric = r.expectation_config.meta["metric"]
        error = _gx_error(r.exception_info or {})
        if error:  # a broken gate, not a failing corpus
            raise RuntimeError(f"GX could not evaluate {metric}: {error}")
        outcome[metric] = (r.result.get("observed_value"), bool(r.success))
    return outcome


def validate_corpus(db_path: Path, gx_root: Path, run_id: str, corpus: str, reference: str,
                    gate: GateConfig, edited: bool) -> GateResult:
    """Run the suite on ``corpus``'s metrics of ``run_id``; rows are returned, not written."""
    db_path, gx_root = Path(db_path), Path(gx_root)
    where = _metrics_where(run_id, corpus, "vs_reference", reference)
    observed = _metric_values(db_path, where)
    yardstick = _metric_values(db_path, _metrics_where(run_id, reference, "split_half", None))
    gated = sorted(m for m in {*observed, *yardstick} if _family(m) in _RULES)
    bounds = thresholds(yardstick, gate, gated, edited)
    # A metric missing for this run is an all-NULL column: GX fails it with no observed
    # value, so GX's stored result (and Data Docs) agree with the gate.
    outcome = _run_suite(db_path, gx_root, run_id, corpus, gate.suite, where, bounds) \
        if bounds else {}

    now = datetime.now(UTC).replace(tzinfo=None)
    base = {"run_id": run_id, "corpus": corpus, "suite": gate.suite, "validated_at": now}
    rows = []
    for metric in sorted({*gated, *bounds}):
        if metric not in bounds:  # the reference has no split-half value to compare with
            rows.append({**base, "expectation": f"{metric} ({NO_YARDSTICK})", "metric": metric,
                         "observed": observed.get(metric), "threshold": NO_YARDSTICK,
                         "success": False})
            continue
        value, success = outcome[metric]
        rows.append({**base, "expectation": expectation_name(metric, bounds[metric]),
                     "metric": metric, "observed": value,
                     "threshold": threshold_text(bounds[metric]), "success": success})
    if not rows:  # nothing to gate is not a pass
        rows.append({**base, "expectation": "gated metrics present", "metric": "*",
                     "observed": None, "threshold": "none in the warehouse", "success": False})
    return GateResult(corpus, gate.suite, all(r["success"] for r in rows), rows)


def record(db_path: Path, result: GateResult) -> int:
    """Append the result's rows to the `validations` table."""
    return db.insert(db_path, "validations", [{c: r[c] for c in VALIDATION_COLUMNS}
                                              for r in result.rows])


def build_data_docs(gx_root: Path) -> Path:
    """Render the stored validation results as Data Docs; returns the index page."""
    context = _context(Path(gx_root))
    context.build_data_docs()
    return Path(gx_root) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
