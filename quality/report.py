"""``semisynth report RUN_ID``: one self-contained HTML page about a run.

Metric tables from the warehouse (each candidate next to its reference's split-half
yardstick, with budgets and bootstrap intervals), the run's PNG plots inlined as data
URIs, the gate verdicts with observed values and thresholds, releases, quarantined rows,
and links to the Great Expectations Data Docs built under the data root.
"""

from __future__ import annotations

import html
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from semisynth import metric_registry
from semisynth.documents import atomic_path
from semisynth.errors import NotWritable, UnknownRun, write_refused
from semisynth.quality import plots
from semisynth.quality.plots import PAPER_GPT2_PPL
from semisynth.quality.thresholds import failure_reason
from semisynth.warehouse import db

CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; padding: 0 1em; }
.warn { background: #fff3cd; border: 1px solid #e0b400; padding: .5em 1em; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.l, th.l { text-align: left; }
.pass { color: #17612a; font-weight: bold; } .fail { color: #a4161a; font-weight: bold; }
tr.fail td { background: #fdecea; }
.ci { color: #777; font-size: 0.85em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.85em; }
code { background: #f5f5f5; padding: 0 3px; }
"""


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


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT


def _e(value) -> str:
    return "" if _missing(value) else html.escape(str(value))


def _num(v, digits: int = 4) -> str:
    if _missing(v):
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}g}"


def _table(headers: list[str], rows: list[list[str]], left: int = 1,
           row_classes: list[str] | None = None) -> str:
    """An HTML table; cells are already-escaped HTML; the first ``left`` columns left-aligned."""
    head = "".join(f'<th class="{"l" if i < left else ""}">{h}</th>' for i, h in enumerate(headers))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{row_classes[k]}"' if row_classes and row_classes[k] else ""
        cells = "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _metrics_section(metrics: pd.DataFrame) -> str:
    if metrics.empty:
        return "<p>No metrics were recorded for this run.</p>"
    parts = []
    vs = metrics[metrics.comparison == "vs_reference"]
    split = metrics[metrics.comparison == "split_half"]
    refs = sorted(set(vs.reference.dropna()) | set(split.corpus))
    for ref in refs:
        cands = sorted(set(vs[vs.reference == ref].corpus))
        yard = split[split.corpus == ref]
        budgets = sorted({int(b) for b in metrics[(metrics.metric != "edit_rate")
                                                  & (metrics.corpus.isin([ref, *cands]))].budget
                          if not _missing(b)})
        names = sorted(set(yard.metric) | set(vs[vs.corpus.isin(cands)].metric),
                       key=metric_registry.report_position)
        headers = ["metric", f"{_e(ref)} split-half (yardstick)"] + [_e(c) for c in cands]

        def cell(frame, metric):
            hit = frame[frame.metric == metric]
            if hit.empty:
                return ""
            r = hit.iloc[0]
            text = _num(r.value)
            if not _missing(r.ci_low):
                text += f' <span class="ci">[{_num(r.ci_low)}, {_num(r.ci_high)}]</span>'
            if r.metric == "edit_rate":
                text += f' <span class="ci">of {_num(r.budget)} tokens</span>'
            return text

        rows = [[_e(m), cell(yard, m)] + [cell(vs[vs.corpus == c], m) for c in cands]
                for m in names]
        parts.append(f"<h3>Against reference <code>{_e(ref)}</code></h3>"
                     f"<p>Equal token budget per side: {', '.join(map(str, budgets)) or 'n/a'} "
                     "tokens. Bracketed: bootstrap 95% confidence interval.</p>"
                     + _table(headers, rows))
    return "".join(parts)


def _gate_section(validations: pd.DataFrame) -> str:
    if validations.empty:
        return "<p>No gate validation in this run.</p>"
    parts = []
    for (corpus, suite), v in validations.groupby(["corpus", "suite"], sort=True):
        ok = bool(v.success.all())
        verdict = '<span class="pass">PASSED</span>' if ok else '<span class="fail">FAILED</span>'
        failing = [str(m) for m, s in zip(v.metric, v.success, strict=True) if not s]
        note = f" — failing: {_e(', '.join(failing))}" if failing else ""
        rows, classes = [], []
        for r in v.itertuples():
            rows.append([_e(r.expectation), _e(r.metric),
                         "missing" if _missing(r.observed) else _num(r.observed),
                         _e(r.threshold),
                         '<span class="pass">pass</span>' if r.success
                         else '<span class="fail">FAIL</span>'])
            classes.append("" if r.success else "fail")
        parts.append(f"<h3><code>{_e(corpus)}</code>: suite <code>{_e(suite)}</code> {verdict}"
                     f"{note}</h3>"
                     + _table(["expectation", "metric", "observed", "threshold", "result"], rows,
                              left=2, row_classes=classes))
    return "".join(parts)


def _plots_section(folder: Path) -> str:
    pngs = sorted(folder.glob("*.png"), key=lambda p: (not p.name.startswith("ppl"), p.name))
    if not pngs:
        return f"<p>No plots in <code>{_e(folder)}</code>.</p>"
    return "".join(
        f'<figure><img alt="{_e(p.stem)}" src="{plots.data_uri(p)}">'
        f"<figcaption>{_e(p.name)}</figcaption></figure>" for p in pngs)


def _data_docs(root: Path, run_id: str, has_validations: bool) -> str:
    gx_root = Path(root) / "gx"
    if not has_validations or not (gx_root / "gx").is_dir():
        return "<p>No Great Expectations results for this run.</p>"
    # lazy: pandas and pyarrow, loaded only when this runs
    from semisynth.quality import suite

    try:
        index = suite.build_data_docs(gx_root)
    except OSError as exc:  # a read-only data root: the report itself can go elsewhere
        if not write_refused(exc):
            raise
        return (f"<p>Data Docs not built: <code>{_e(gx_root)}</code> is not writable "
                f"({_e(exc.strerror)}).</p>")
    site = index.parent
    pages = sorted(p for p in (site / "validations").rglob("*.html") if run_id in p.parts)
    items = [f'<li><a href="{index.resolve().as_uri()}">Data Docs index</a> '
             f"(<code>{_e(index)}</code>)</li>"]
    for p in pages:
        rel = p.relative_to(site / "validations")
        items.append(f'<li><a href="{p.resolve().as_uri()}">{_e(rel.parts[0])}: '
                     f"validation result of this run</a> (<code>{_e(rel)}</code>)</li>")
    return f"<ul>{''.join(items)}</ul>"


def _release_candidates(config_json) -> set[str]:
    """Corpora the run's config marks ``release: true`` (none if it cannot be read)."""
    try:
        corpora = json.loads(config_json).get("corpora", {})
        return {name for name, c in corpora.items() if c.get("release")}
    except (TypeError, ValueError, AttributeError):
        return set()


def build_report(root: Path, run_id: str, out: Path | None = None) -> Path:
    """Write the report of ``run_id`` (default ``<root>/runs/<run_id>/report.html``); a
    place it may not write is a NotWritable error."""
    root = Path(root)
    wh = db.warehouse_path(root)
    run = db.query(wh, "SELECT * FROM runs WHERE run_id = ?", [run_id])
    if run.empty:
        recent = db.query(wh, "SELECT run_id FROM runs ORDER BY started_at DESC LIMIT 5").run_id
        known = ", ".join(recent) or "none"
        raise UnknownRun(f"unknown run id {run_id!r} in {wh} (latest runs: {known})")
    run = run.iloc[0]
    folder = plots.run_folder(root, run_id)

    def q(sql: str) -> pd.DataFrame:
        return db.query(wh, sql, [run_id])

    metrics = q("SELECT * FROM metrics WHERE run_id = ? ORDER BY corpus, metric")
    validations = q("SELECT * FROM validations WHERE run_id = ? ORDER BY corpus, metric")
    releases = q("SELECT * FROM releases WHERE run_id = ? ORDER BY name, version")
    corpora = q("SELECT * FROM corpora WHERE run_id = ? ORDER BY corpus")
    quarantine = q("SELECT corpus, file, reason, count(*) AS rows FROM quarantine "
                   "WHERE run_id = ? GROUP BY ALL ORDER BY corpus, file, reason")
    docs_html = _data_docs(root, run_id, not validations.empty)

    started = run.started_at
    overview = _table(["run", "status", "config", "prior", "started (UTC)", "finished (UTC)",
                       "Prefect flow run", "message"], [[
        _e(run_id), _e(run.status), _e(run.config_name), _e(run.model), _e(started),
        _e(run.finished_at),
        _e(run.flow_run_id or "—"), _e(run.message or "")]], left=8)
    if run.status == "REFUSED":  # the views leave such a run out, too
        overview += ('<p class="warn"><strong>This run is REFUSED</strong>: it stopped on its '
                     "input (the message above says why), so its rows below are partial. They "
                     "are not the warehouse's results (its views show finished runs only).</p>")
    elif run.status not in ("COMPLETED", "FAILED"):
        overview += (f'<p class="warn"><strong>This run is {_e(run.status)}</strong>: it did not '
                     "finish, so its rows below may be partial. They are not the warehouse's "
                     "results (its views show finished runs only).</p>")
    corpora_html = "<p>No corpora recorded.</p>" if corpora.empty else _table(
        ["corpus", "role", "reference", "origin", "documents", "tokens", "shards", "rows in",
         "quarantined"],
        [[_e(r.corpus), _e(r.role), _e(r.reference), _e(r.origin), _num(r.documents),
          _num(r.tokens), _num(r.shards), _num(r.rows_in), _num(r.rows_quarantined)]
         for r in corpora.itertuples()], left=4)
    releases_html = "<p>No release in this run.</p>" if releases.empty else _table(
        ["name", "version", "corpus", "documents", "path", "manifest sha256"],
        [[_e(r.name), _e(r.version), _e(r.corpus), _num(r.documents), f"<code>{_e(r.path)}</code>",
          f"<code>{_e(str(r.manifest_sha256)[:16])}…</code>"] for r in releases.itertuples()],
        left=3)
    failed = sorted(c for c, v in validations.groupby("corpus") if not v.success.all()) \
        if not validations.empty else []
    candidates = _release_candidates(run.config_json)
    blocked = [c for c in failed if c in candidates]
    if blocked:
        releases_html += f"<p>Blocked by the gate, not released: {_e(', '.join(blocked))}</p>"
    quarantine_html = "<p>No quarantined rows.</p>" if quarantine.empty else _table(
        ["corpus", "file", "reason", "rows"],
        [[_e(r.corpus), _e(r.file), _e(r.reason), _num(r.rows)] for r in quarantine.itertuples()],
        left=3)

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>semisynth run {_e(run_id)}</title><style>{CSS}</style></head>
<body>
<h1>semisynth run <code>{_e(run_id)}</code></h1>
{overview}
{_experiment_section(wh, run_id)}
<h2>Corpora</h2>{corpora_html}
<h2>Gate verdicts</h2>{_gate_section(validations)}
<h2>Metrics</h2>{_metrics_section(metrics)}
<h2>Plots</h2>{_plots_section(folder)}
<h2>Releases</h2>{releases_html}
<h2>Quarantine</h2>{quarantine_html}
<h2>Great Expectations Data Docs</h2>{docs_html}
<p class="ci">Warehouse <code>{_e(wh)}</code>; report written
{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC.</p>
</body></html>
"""
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


# The collapse experiment: held-out perplexity per arm beside the arm's gate metrics.

EXPERIMENT_GATE_METRICS = ("ppl_low_frac", "ppl_ks", "distinct_2", "ref_coverage_2", "js_2",
                           "edit_rate")


def experiment_summary(wh: Path, run_id: str) -> pd.DataFrame:
    """The run's rows of ``experiment_summary_by_run`` (empty: not an experiment run, or a
    warehouse written before the experiment's tables existed)."""
    # lazy: duckdb, loaded only when this runs
    import duckdb

    try:
        return db.query(wh, "SELECT * FROM experiment_summary_by_run WHERE run_id = ? "
                            "ORDER BY eval_corpus, selection NULLS FIRST, "
                            "edit_threshold NULLS FIRST, synthetic_share, arm", [run_id])
    except duckdb.CatalogException:
        return pd.DataFrame()


def collapse_shape(summary: pd.DataFrame, corpus: str = "heldout-human") -> list[tuple[str, bool]]:
    """The paper's shape, checked on the mixture arms' held-out perplexity: the all-synthetic
    arm above the human-only arm with 95% intervals apart, and the mean not falling as the
    synthetic share rises (a dip within the intervals allowed). [(claim, holds)]."""
    rows = summary[(summary.eval_corpus == corpus) & summary.edit_threshold.isna()
                   & summary.selection.isna()].sort_values("synthetic_share")
    human, full = rows[rows.synthetic_share == 0.0], rows[rows.synthetic_share == 1.0]
    checks = []
    if len(human) and len(full):
        h, s = human.iloc[0], full.iloc[0]
        apart = bool(s.ci_low > h.ci_high) if not (_missing(s.ci_low) or _missing(h.ci_high)) \
            else bool(s.mean_ppl > h.mean_ppl)
        checks.append((f"{s.arm} ({s.mean_ppl:.4g}) above {h.arm} ({h.mean_ppl:.4g}), "
                       "95% intervals apart", apart))
    rising = True
    for (_, a), (_, b) in zip(rows.iterrows(), rows.iloc[1:].iterrows(), strict=False):
        if b.mean_ppl < a.mean_ppl and not (b.ci_high >= a.ci_low):
            rising = False
    if len(rows) > 1:
        checks.append(("mean PPL does not fall as the synthetic share rises "
                       "(any dip within the intervals)", rising))
    return checks


def experiment_table(wh: Path, run_id: str) -> tuple[list[str], list[list[str]]]:
    """(headers, rows) of the run's experiment: per arm its held-out PPL (mean [95% CI] over
    seeds) on each held-out corpus, relative to the human-only arm beside the paper's
    GPT-2 curve, and its training corpus's gate metrics against the human pool."""
    summary = experiment_summary(wh, run_id)
    if summary.empty:
        return [], []
    gate = db.query(wh, "SELECT corpus, metric, value FROM metrics WHERE run_id = ? AND "
                        "comparison = 'vs_reference'", [run_id])
    gate = {(r.corpus, r.metric): r.value for r in gate.itertuples()}
    corpora = list(dict.fromkeys(summary.eval_corpus))
    human = summary[(summary.eval_corpus == "heldout-human") & summary.edit_threshold.isna()
                    & summary.selection.isna() & (summary.synthetic_share == 0.0)]
    base = human.mean_ppl.iloc[0] if len(human) else None
    headers = (["arm", "synthetic share", "edit", "selection", "seeds"]
               + [f"{c} PPL [95% CI]" for c in corpora]
               + ["relative (human)", "paper GPT-2 (relative)"] + list(EXPERIMENT_GATE_METRICS))
    rows = []
    first = summary[summary.eval_corpus == corpora[0]]
    for r in first.itertuples():
        cells = [r.arm, f"{r.synthetic_share:g}", _num(r.edit_threshold), "" if _missing(r.selection) else r.selection,
                 str(r.seeds)]
        for c in corpora:
            hit = summary[(summary.eval_corpus == c) & (summary.arm == r.arm)].iloc[0]
            ci = "" if _missing(hit.ci_low) else f" [{hit.ci_low:.4g}, {hit.ci_high:.4g}]"
            cells.append(f"{hit.mean_ppl:.4g}{ci}")
        mine = summary[(summary.eval_corpus == "heldout-human") & (summary.arm == r.arm)]
        cells.append(f"{mine.mean_ppl.iloc[0] / base:.3f}" if base and len(mine) else "")
        paper = PAPER_GPT2_PPL.get(r.synthetic_share) if _missing(r.edit_threshold) \
            and _missing(r.selection) else None
        cells.append(f"{paper / PAPER_GPT2_PPL[0.0]:.3f}" if paper else "")
        cells += [_num(gate.get((r.arm, m))) for m in EXPERIMENT_GATE_METRICS]
        rows.append(cells)
    return headers, rows


def experiment_markdown(wh: Path, run_id: str, name: str, train_tokens: int) -> str:
    """The experiment flow run's markdown summary artifact."""
    headers, rows = experiment_table(wh, run_id)
    summary = experiment_summary(wh, run_id)
    lines = [f"# Collapse experiment `{name}`, run `{run_id}`", "",
             f"Every arm trains on exactly {train_tokens} tokens; perplexity per token on the "
             "held-out documents, mean over seeds with a 95% Student-t interval; the gate "
             "metrics are the arm's training corpus against the human pool.", "",
             "| " + " | ".join(headers) + " |", "|---" * len(headers) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    lines += ["", "## The paper's shape", ""]
    lines += [f"- {'yes' if ok else 'NO'}: {claim}" for claim, ok in collapse_shape(summary)]
    return "\n".join(lines)


def _experiment_section(wh: Path, run_id: str) -> str:
    """The report's experiment section ('' for a run without experiment results)."""
    headers, rows = experiment_table(wh, run_id)
    if not headers:
        return ""
    checks = collapse_shape(experiment_summary(wh, run_id))
    verdicts = "".join(
        f'<li><span class="{"pass" if ok else "fail"}">{"yes" if ok else "NO"}</span>: '
        f"{_e(claim)}</li>" for claim, ok in checks)
    return ("<h2>Collapse experiment</h2><p>Held-out perplexity of the model trained on each "
            "arm (mean over seeds, 95% interval), relative to the human-only arm beside the "
            "paper's GPT-2 124M curve, and the arm's training corpus's gate metrics against "
            f"the human pool.</p>{_table([_e(h) for h in headers], [[_e(c) for c in r] for r in rows], left=4)}"
            f"<ul>{verdicts}</ul>")
