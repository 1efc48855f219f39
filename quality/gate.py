"""The release gate: the Great Expectations suite ``coverage`` over the warehouse.

For one run and one candidate corpus, a GX query asset pivots the corpus's metrics into
ONE row with a column per metric; the suite holds one ``ExpectColumnMaxToBeBetween`` per
gated metric (the max of a one-row column is the value, so every result carries its
``observed_value``). Bounds are relative to the reference's split-half yardstick Y: Y
moved, in the direction collapse goes, by the larger of a fixed slack and the sampling
noise that the stored bootstrap CIs measure (``GateConfig``, ``thresholds``). A metric
whose yardstick was measured on another token budget fails as not comparable. The suite
is rebuilt for every validation: thresholds depend on the run's yardstick (and CIs) and
the gated metrics on the corpus (``edit_rate`` only for edited corpora).

GX state (suite, asset, stored validation results for Data Docs) lives in a file-backed
context under ``gx_root``; the warehouse is opened read-only through duckdb-engine.
"""

from __future__ import annotations

import fcntl
import math
import re
from dataclasses import dataclass
from pathlib import Path

from semisynth.config import GateConfig
from semisynth.warehouse import db

Bounds = tuple[float | None, float | None]

# How each metric family is gated: the direction collapse moves it ("max": the metric
# grows, bounded above by Y + slack; "min": it shrinks, bounded below by Y - slack) and its
# fixed slack from Y and the order n (distinct_2 belongs to "distinct"). edit_rate has fixed
# bounds and no yardstick.
_RULES = {
    "ppl_low_frac": ("max", lambda y, n, g: g.ppl_low_frac_max_excess),
    "ppl_tail_frac": ("min", lambda y, n, g: g.ppl_tail_frac_max_deficit),
    "ppl_ks": ("max", lambda y, n, g: g.ppl_ks_max_excess),
    "ppl_w1": ("max", lambda y, n, g: g.ppl_w1_max_excess),
    "distinct": ("min", lambda y, n, g: (1 - g.distinct_min_ratio) * y),
    "top1pct_mass": ("max", lambda y, n, g: (g.top1pct_mass_max_ratio - 1) * y),
    "ref_coverage": ("min", lambda y, n, g: (1 - g.coverage_ratio(n)) * y),
    "js": ("max", lambda y, n, g: g.js_max_excess),
}
_NGRAM_METRIC = re.compile(r"(distinct|top1pct_mass|ref_coverage|js)_(\w+)")
NO_YARDSTICK = "no split-half yardstick"
BUDGET_MISMATCH = "budget differs from the yardstick's"
VALIDATION_COLUMNS = ("run_id", "corpus", "suite", "expectation", "metric", "observed",
                      "threshold", "success", "validated_at")
Z_95 = 1.959964  # a 95% interval is +- this many standard errors


def _family(metric: str) -> str | None:
    if metric in _RULES or metric == "edit_rate":
        return metric
    match = _NGRAM_METRIC.fullmatch(metric)
    return match.group(1) if match else None


def standard_error(ci_low: float | None, ci_high: float | None) -> float:
    """The standard error a stored 95% CI stands for (0.0 without a CI)."""
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return 0.0
    return (ci_high - ci_low) / (2 * Z_95)


def noise_slack(se_yardstick: float, se_candidate: float, gate: GateConfig) -> float:
    """How far a candidate from the reference's own source can land from Y by chance.

    The candidate's value and Y are each one draw from two samples (candidate vs reference,
    half A vs half B); a stored bootstrap CI resamples one of the two, so each value's
    standard error is about sqrt(2) se and their difference's about 2 se. Under the null
    the two se estimate the same spread; the larger is taken because a proportion's
    bootstrap spread collapses to 0 when the sample holds none (or all) of its documents."""
    return gate.ci_z * 2 * max(se_yardstick, se_candidate)


def thresholds(yardstick: dict[str, float], gate: GateConfig, metric_names: list[str],
               edited: bool, noise: dict[str, float] | None = None) -> dict[str, Bounds]:
    """(min, max) per gated metric of ``metric_names`` (None: unbounded on that side).

    Each bound is the split-half value y moved by max(fixed slack, noise[metric]) in the
    direction collapse goes (see ``GateConfig``); ``noise`` is ``noise_slack`` per metric
    with CIs (missing: 0). Metrics without a rule, or whose split-half value is missing from
    ``yardstick``, are left out; ``edit_rate`` is gated (whether listed or not) for edited
    corpora only."""
    noise = noise or {}
    bounds: dict[str, Bounds] = {}
    for metric in metric_names:
        family = _family(metric)
        if family not in _RULES or metric not in yardstick:
            continue
        direction, fixed = _RULES[family]
        match = _NGRAM_METRIC.fullmatch(metric)
        order = int(match.group(2)) if match and match.group(2).isdigit() else None
        y = yardstick[metric]
        # a relative hair of slack: a candidate exactly at the bound (small samples give
        # exact ratios, e.g. 9/368 vs 1.5 * 6/368) must not fail on the last float bit
        slack = max(fixed(y, order, gate), noise.get(metric, 0.0)) + 1e-12 * abs(y)
        bounds[metric] = (None, y + slack) if direction == "max" else (y - slack, None)
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
        lines = [f"{self.corpus}: {r['metric']}: {failure_reason(r)}" for r in self.failures()]
        return "\n".join(lines) or f"{self.corpus}: all {len(self.rows)} expectations passed"


def failure_reason(row: dict) -> str:
    """Why a failed expectation (a ``validations`` row) failed, in words."""
    if row["metric"] == "*":
        return f"no gated metrics in the warehouse for run {row['run_id']}"
    if row["threshold"] == NO_YARDSTICK:
        return f"no split-half value of the reference in run {row['run_id']} to set a threshold"
    if row["threshold"].startswith(BUDGET_MISMATCH):
        return f"not comparable, {row['threshold']} (corpus vs yardstick)"
    if row["observed"] is None:
        return f"missing from the warehouse for run {row['run_id']} (want {row['threshold']})"
    return f"observed {row['observed']:.4g}, want {row['threshold']}"


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _metrics_where(run_id: str, corpus: str, comparison: str, reference: str | None) -> str:
    where = (f"run_id = {_sql_text(run_id)} AND corpus = {_sql_text(corpus)} "
             f"AND comparison = {_sql_text(comparison)} AND value IS NOT NULL AND NOT isnan(value)")
    if reference is not None:  # rows without a reference (edit_rate may have none) still count
        where += f" AND coalesce(reference, {_sql_text(reference)}) = {_sql_text(reference)}"
    return where


@dataclass(frozen=True)
class Stored:
    """A metric's row as the warehouse holds it."""

    value: float
    budget: int | None  # tokens per side of the comparison
    se: float  # standard error from its bootstrap 95% CI; 0.0 without one


def _stored(db_path: Path, where: str) -> dict[str, Stored]:
    # max(value): one row per metric is expected; the GX pivot aggregates the same way, and
    # the budget and CI are taken from that row.
    frame = db.query(db_path, "SELECT metric, max(value) AS value, arg_max(budget, value) AS budget, "
                              "arg_max(ci_low, value) AS ci_low, arg_max(ci_high, value) AS ci_high "
                              f"FROM metrics WHERE {where} GROUP BY metric")
    out = {}
    for row in frame.itertuples(index=False):
        budget = None if row.budget is None or row.budget != row.budget else int(row.budget)
        ci = [None if v is None or v != v else float(v) for v in (row.ci_low, row.ci_high)]
        out[row.metric] = Stored(float(row.value), budget, standard_error(*ci))
    return out


def _sql_name(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _pivot_query(where: str, metrics: list[str]) -> str:
    columns = ", ".join(f"max(value) FILTER (WHERE metric = {_sql_text(m)}) AS {_sql_name(m)}"
                        for m in metrics)
    return f"SELECT {columns} FROM metrics WHERE {where}"


_GX: tuple | None = None


def _gx():
    """(great_expectations, its expectations), imported on first use: the import takes
    seconds, and processes that only score (Dask workers) never need it."""
    global _GX
    if _GX is None:
        import great_expectations as gx
        import great_expectations.expectations as gxe
        from great_expectations.execution_engine.sqlalchemy_execution_engine import (
            SqlAlchemyExecutionEngine,
        )

        _buffer_duckdb_results(SqlAlchemyExecutionEngine)
        _GX = (gx, gxe)
    return _GX


def _buffer_duckdb_results(engine_class) -> None:
    # duckdb drops a connection's pending result set as soon as anything else runs on it,
    # and SQLAlchemy rolls back when GX closes the connection, which GX does *before*
    # fetching the rows (every metric then fails with "list index out of range", GX issue
    # #10738). Fetch the rows while the connection is still open, for duckdb only.
    execute_query = engine_class.execute_query

    def execute_query_buffered(self, query):
        if self.dialect_name != "duckdb":
            return execute_query(self, query)
        with self.get_connection() as connection:
            result = connection.execute(query)
            return result.freeze()() if result.returns_rows else result

    engine_class.execute_query = execute_query_buffered


def _gx_error(info: dict) -> str | None:
    """The message of an exception GX caught while evaluating an expectation; GX reports it
    either at the top level or per metric (keyed by metric id)."""
    for entry in (info, *info.values()):
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def _context(gx_root: Path):
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx, _ = _gx()
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
    from great_expectations.core.run_identifier import RunIdentifier

    gx, gxe = _gx()
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
    stored = _stored(db_path, where)
    split = _stored(db_path, _metrics_where(run_id, reference, "split_half", None))
    gated = sorted(m for m in {*stored, *split} if _family(m) in _RULES)
    # A yardstick measured on another budget than the candidate says nothing about it
    # (n-gram statistics depend on sample size): such a metric fails instead of being gated.
    mismatched = {m: (stored[m].budget, split[m].budget) for m in gated
                  if m in stored and m in split and stored[m].budget != split[m].budget}
    yardstick = {m: split[m].value for m in split if m not in mismatched}
    noise = {m: noise_slack(split[m].se, stored[m].se if m in stored else 0.0, gate)
             for m in split}
    bounds = thresholds(yardstick, gate, gated, edited, noise)
    # A metric missing for this run is an all-NULL column: GX fails it with no observed
    # value, so GX's stored result (and Data Docs) agree with the gate.
    outcome = _run_suite(db_path, gx_root, run_id, corpus, gate.suite, where, bounds) \
        if bounds else {}

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


def record(db_path: Path, result: GateResult) -> int:
    """Append the result's rows to the `validations` table."""
    return db.insert(db_path, "validations", [{c: r[c] for c in VALIDATION_COLUMNS}
                                              for r in result.rows])


def build_data_docs(gx_root: Path) -> Path:
    """Render the stored validation results as Data Docs; returns the index page."""
    context = _context(Path(gx_root))
    context.build_data_docs()
    return Path(gx_root) / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
