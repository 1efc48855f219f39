"""``semisynth report RUN_ID``: one self-contained HTML page about a run.

Metric tables from the warehouse (each candidate next to its reference's split-half
yardstick, with budgets and bootstrap intervals), the run's PNG plots inlined as data
URIs, the gate verdicts with observed values and thresholds, releases, quarantined rows,
and links to the Great Expectations Data Docs built under the data root. The rows come from
``semisynth.warehouse.report_data``; the page is the Jinja2 template
``templates/report.html.j2``; this module arranges the rows for it. Also the flow run's
markdown summary (``summary_markdown``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import jinja2
import pandas as pd

from semisynth import metric_registry
from semisynth.documents import atomic_path
from semisynth.errors import NotWritable, write_refused
from semisynth.quality import plots
from semisynth.quality.experiment_stats import collapse_shape, experiment_table
from semisynth.quality.formatting import missing, number
from semisynth.quality.thresholds import failure_reason
from semisynth.warehouse import db, report_data


def summary_markdown(run_id: str, budget: int, values: dict[str, dict[str, float]],
                     gates: dict[str, dict], releases: dict[str, str],
                     blocked: list[str]) -> str:
    """The flow run's markdown summary artifact: the main metrics per corpus (vs its
    reference), every gate verdict with its failing expectations, releases and blocks."""
    shown = metric_registry.summary_metrics()  # the metrics declared `summary`
    lines = [f"# semisynth run `{run_id}`", "",
             f"Equal token budget per comparison: {budget} tokens.", "",
             "## Metrics per corpus (vs its reference)", "",
             "| corpus | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for corpus, metrics in values.items():
        cells = [f"{metrics[m]:.4g}" if metrics.get(m) is not None else "" for m in shown]
        lines.append(f"| {corpus} | " + " | ".join(cells) + " |")
    lines += ["", "## Gate verdicts (suite `coverage`)", ""]
    for corpus, g in gates.items():
        lines.append(f"- **{corpus}**: {'PASSED' if g['success'] else 'FAILED'}")
        lines += [f"  - `{f['metric']}`: {failure_reason(f)}" for f in g["failures"]]
    lines += ["", "## Releases", ""]
    lines += [f"- {c}: `{p}`" for c, p in releases.items()] or ["- none"]
    lines += [f"- {c}: blocked by the gate, not released" for c in blocked]
    return "\n".join(lines)


# The page's template: autoescaped, so every value from the warehouse is written as text.
# A block tag's own line leaves no blank line behind (trim_blocks, lstrip_blocks).
TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("semisynth.quality", "templates"), autoescape=True,
    undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters["text"] = lambda value: "" if missing(value) else str(value)
TEMPLATES.filters["num"] = number
TEMPLATES.tests["missing"] = missing


@dataclass
class MetricTable:
    """The metrics against one reference: per metric, the reference's split-half yardstick
    then each candidate (a ``metrics`` row, or None where it was not measured)."""
    reference: str
    candidates: list[str]
    budgets: list[int]
    rows: list[tuple[str, list]] = field(default_factory=list)


@dataclass
class GateVerdict:
    """One corpus's validation by one suite, with its expectations' ``validations`` rows."""
    corpus: str
    suite: str
    passed: bool
    failing: list[str]
    expectations: list


@dataclass
class Link:
    uri: str
    path: Path
    corpus: str = ""


@dataclass
class DataDocs:
    """Where the Great Expectations Data Docs are: the index and this run's validation
    pages, or why they were not built."""
    gx_root: Path
    not_writable: OSError | None = None
    index: Link | None = None
    pages: list[Link] = field(default_factory=list)


@dataclass
class Plot:
    stem: str
    name: str
    uri: str


def _metric_tables(metrics: pd.DataFrame) -> list[MetricTable] | None:
    """A table per reference (None: the run recorded no metrics)."""
    if metrics.empty:
        return None
    vs = metrics[metrics.comparison == "vs_reference"]
    split = metrics[metrics.comparison == "split_half"]
    tables = []
    for ref in sorted(set(vs.reference.dropna()) | set(split.corpus)):
        cands = sorted(set(vs[vs.reference == ref].corpus))
        yard = split[split.corpus == ref]
        # edit_rate counts the edited corpus's own tokens, not the comparison's budget
        budgets = sorted({int(b) for b in metrics[(metrics.metric != "edit_rate")
                                                  & (metrics.corpus.isin([ref, *cands]))].budget
                          if not missing(b)})
        names = sorted(set(yard.metric) | set(vs[vs.corpus.isin(cands)].metric),
                       key=metric_registry.report_position)
        sides = [yard] + [vs[vs.corpus == c] for c in cands]

        def row_of(frame: pd.DataFrame, metric: str):
            return next(frame[frame.metric == metric].itertuples(index=False), None)

        tables.append(MetricTable(ref, cands, budgets,
                                  [(m, [row_of(side, m) for side in sides]) for m in names]))
    return tables


def _gate_verdicts(validations: pd.DataFrame) -> list[GateVerdict]:
    if validations.empty:
        return []
    return [GateVerdict(corpus, suite, bool(v.success.all()),
                        [str(m) for m, s in zip(v.metric, v.success, strict=True) if not s],
                        list(v.itertuples(index=False)))
            for (corpus, suite), v in validations.groupby(["corpus", "suite"], sort=True)]


def _plots(folder: Path) -> list[Plot]:
    """The run's PNGs, the perplexity plots first."""
    pngs = sorted(folder.glob("*.png"), key=lambda p: (not p.name.startswith("ppl"), p.name))
    return [Plot(p.stem, p.name, plots.data_uri(p)) for p in pngs]


def _data_docs(root: Path, run_id: str, has_validations: bool) -> DataDocs | None:
    gx_root = Path(root) / "gx"
    if not has_validations or not (gx_root / "gx").is_dir():
        return None
    # lazy: pandas and pyarrow, loaded only when this runs
    from semisynth.quality import suite

    try:
        index = suite.build_data_docs(gx_root)
    except OSError as exc:  # a read-only data root: the report itself can go elsewhere
        if not write_refused(exc):
            raise
        return DataDocs(gx_root, not_writable=exc)
    validations = index.parent / "validations"
    pages = sorted(p for p in validations.rglob("*.html") if run_id in p.parts)
    return DataDocs(gx_root, index=Link(index.resolve().as_uri(), index), pages=[
        Link(p.resolve().as_uri(), p.relative_to(validations),
             p.relative_to(validations).parts[0]) for p in pages])


def _release_candidates(config_json) -> set[str]:
    """Corpora the run's config marks ``release: true`` (none if it cannot be read)."""
    try:
        corpora = json.loads(config_json).get("corpora", {})
        return {name for name, c in corpora.items() if c.get("release")}
    except (TypeError, ValueError, AttributeError):
        return set()


def _experiment(wh: Path, run_id: str) -> dict | None:
    """The experiment section's table and shape checks (None: a run without experiment
    results)."""
    headers, rows = experiment_table(wh, run_id)
    if not headers:
        return None
    return {"headers": headers, "rows": rows,
            "shape": collapse_shape(report_data.experiment_summary(wh, run_id))}


def build_report(root: Path, run_id: str, out: Path | None = None) -> Path:
    """Write the report of ``run_id`` (default ``<root>/runs/<run_id>/report.html``); a
    run the warehouse does not hold is an UnknownRun error, a place it may not write a
    NotWritable one."""
    root = Path(root)
    wh = db.warehouse_path(root)
    run = report_data.run_row(wh, run_id)
    folder = plots.run_folder(root, run_id)
    validations = report_data.validations(wh, run_id)
    failed = sorted(c for c, v in validations.groupby("corpus") if not v.success.all()) \
        if not validations.empty else []
    candidates = _release_candidates(run.config_json)
    page = TEMPLATES.get_template("report.html.j2").render(
        run=run,
        experiment=_experiment(wh, run_id),
        corpora=list(report_data.corpora(wh, run_id).itertuples(index=False)),
        verdicts=_gate_verdicts(validations),
        metric_tables=_metric_tables(report_data.metrics(wh, run_id)),
        plots=_plots(folder), plot_folder=folder,
        releases=list(report_data.releases(wh, run_id).itertuples(index=False)),
        blocked=[c for c in failed if c in candidates],
        quarantine=list(report_data.quarantine_counts(wh, run_id).itertuples(index=False)),
        data_docs=_data_docs(root, run_id, not validations.empty),
        warehouse=wh, written_at=datetime.now(UTC))
    out = Path(out) if out else folder / "report.html"
    try:
        with atomic_path(out) as tmp:
            tmp.write_text(page, encoding="utf-8")
    except OSError as exc:
        if write_refused(exc):
            raise NotWritable("the report's folder", out.parent, exc,
                              "--out FILE writes the report elsewhere") from exc
        raise
    return out
