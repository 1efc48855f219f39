"""The Great Expectations side of the gate: the suite, run on one row of metrics.

One file-backed GX project per data root (``<data root>/gx/``) holds a pandas data source
``warehouse`` with a dataframe asset per corpus, the suite (``coverage`` by default; one
``ExpectColumnMaxToBeBetween`` per gated metric: the max of a one-row column is the
value, so every result carries its ``observed_value``), a validation definition per corpus,
the stored validation results and the Data Docs rendered from them. The suite is rebuilt
for every validation: its bounds depend on the run's yardstick and the gated metrics on the
corpus. The rows themselves come from the warehouse (``semisynth.quality.gate``) as a
DataFrame passed at run time, so GX never opens the warehouse.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from semisynth.quality.thresholds import Bounds

SOURCE = "warehouse"  # the pandas data source: its frames are read from the warehouse
BATCH = "run"  # the whole one-row frame of a run

_GX: tuple | None = None


def _gx():
    """(great_expectations, its expectations), imported on first use: the import takes
    seconds, and processes that only score (Dask workers) never need it."""
    global _GX
    if _GX is None:
        # lazy: great_expectations, scipy and pandas, loaded only when this runs
        import great_expectations as gx
        import great_expectations.expectations as gxe

        _GX = (gx, gxe)
    return _GX


@contextlib.contextmanager
def _exclusive(gx_root: Path) -> Iterator[None]:
    # Nothing serialises the processes that gate on one data root (a flow run, the
    # `validate` command, a second flow run), and the context rewrites shared files in
    # place: great_expectations.yml when a source or asset is added, the suite's and the
    # validation definition's JSON on every validation. A validation also checks that its
    # suite and definition still match the stored ones (GX raises if another process
    # rewrote them in between), and building Data Docs reads every stored result. So one
    # process at a time per gx_root, across processes (flock).
    gx_root.mkdir(parents=True, exist_ok=True)
    with open(gx_root / ".gate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _context(gx_root: Path):
    # lazy: great_expectations, scipy and pandas, loaded only when this runs
    from great_expectations.data_context.types.base import ProgressBarsConfig

    gx, _ = _gx()
    context = gx.get_context(mode="file", project_root_dir=str(gx_root))
    if context.config.analytics_enabled is not False:  # first use of this gx_root
        context.variables.progress_bars = ProgressBarsConfig(globally=False,
                                                             metric_calculations=False)
        context.enable_analytics(False)  # no network here; also saves the settings
    return context


def _source(context):
    try:
        source = context.data_sources.get(SOURCE)
    except KeyError:
        return context.data_sources.add_pandas(name=SOURCE)
    if source.type != "pandas":  # a gx_root of the former SQL gate: drop its duckdb source
        context.data_sources.delete(SOURCE)
        return context.data_sources.add_pandas(name=SOURCE)
    return source


def _batch_definition(context, asset_name: str):
    """The whole-dataframe batch of the asset, both added on first use."""
    source = _source(context)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(asset_name)
    try:
        return asset.get_batch_definition(BATCH)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH)


def _gx_error(info: dict) -> str | None:
    """The message of an exception GX caught while evaluating an expectation; GX reports it
    either at the top level or per metric (keyed by metric id)."""
    for entry in (info, *info.values()):
        if isinstance(entry, dict) and entry.get("raised_exception"):
            return str(entry.get("exception_message"))
    return None


def validate(gx_root: Path, suite_name: str, run_id: str, corpus: str, row: pd.DataFrame,
             bounds: dict[str, Bounds]) -> dict[str, tuple[float | None, bool]]:
    """Run the suite ``suite_name`` (``bounds``: metric -> (min, max)) on ``row``, the
    corpus's one-row frame with a column per metric, and store the result in the GX project
    under ``run_id``. Returns metric -> (GX's observed value, GX's verdict); an all-NaN
    column (a metric missing from the warehouse) fails with no observed value."""
    # lazy: great_expectations, scipy and pandas, loaded only when this runs
    from great_expectations.core.run_identifier import RunIdentifier

    gx, gxe = _gx()
    gx_root = Path(gx_root)
    with _exclusive(gx_root):
        context = _context(gx_root)
        # an asset per corpus: the corpus is named in every stored result and Data Docs page
        name = re.sub(r"[^\w.-]", "_", corpus)
        batch = _batch_definition(context, f"metrics_{name}")
        suite = context.suites.add_or_update(gx.ExpectationSuite(name=suite_name, expectations=[
            gxe.ExpectColumnMaxToBeBetween(column=m, min_value=low, max_value=high,
                                           meta={"metric": m})
            for m, (low, high) in bounds.items()]))
        definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(
            name=f"{suite_name}-{name}", data=batch, suite=suite))
        result = definition.run(batch_parameters={"dataframe": row},
                                run_id=RunIdentifier(run_name=run_id))
    outcome = {}
    for r in result.results:
        metric = r.expectation_config.meta["metric"]
        error = _gx_error(r.exception_info or {})
        if error:  # a broken gate, not a failing corpus
            raise RuntimeError(f"GX could not evaluate {metric}: {error}")
        observed = r.result.get("observed_value")
        outcome[metric] = (None if observed is None else float(observed), bool(r.success))
    return outcome


def build_data_docs(gx_root: Path) -> Path:
    """Render the stored validation results as Data Docs; returns the index page."""
    gx_root = Path(gx_root)
    with _exclusive(gx_root):
        _context(gx_root).build_data_docs()
    return gx_root / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html"
