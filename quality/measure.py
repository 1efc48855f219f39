"""Measuring corpora: score files in, metric rows out.

``load_scores`` and ``measure`` are the one computation behind both the flow's metrics
task and the ``semisynth metrics`` / ``validate`` commands: per-document token ids and
perplexities from the score files, every candidate against its reference on one equal
token budget, and each reference's split-half yardstick on that same budget.

The rest of the module is the commands' side: a candidate or reference given as a file,
a glob or a corpus name of the config is turned into score files (ingest, then
score+edit, both cached), measured, stored in the warehouse under a run of its own
(``metrics-<UTC time>`` / ``validate-<UTC time>``) and printed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semisynth.config import Config, MetricsConfig
from semisynth.quality import metrics as metrics_mod
from semisynth.warehouse import db

SCORE_COLUMNS = ["token_ids", "ppl", "scored_tokens", "edited_tokens"]


class InputError(ValueError):
    """A usage or input problem the user can fix (exit code 2)."""


@dataclass
class Scored:
    """A scored corpus: token ids and perplexity per document, and its edit counts."""

    docs: list[np.ndarray]
    ppl: np.ndarray
    scored_tokens: int = 0
    edited_tokens: int = 0

    @property
    def tokens(self) -> int:
        return int(sum(len(d) for d in self.docs))


def load_scores(paths: Sequence[Path]) -> Scored:
    """A corpus's score files (``scores/<key>/<shard>.parquet``), concatenated in order."""
    from semisynth.tasks.score import read_scores, token_arrays

    table = read_scores(list(paths), SCORE_COLUMNS)
    return Scored(
        docs=token_arrays(table),
        ppl=table.column("ppl").to_numpy().astype(float),
        scored_tokens=int(pc.sum(table.column("scored_tokens")).as_py() or 0),
        edited_tokens=int(pc.sum(table.column("edited_tokens")).as_py() or 0),
    )


def smaller_half_tokens(docs: Sequence[np.ndarray], seed: int) -> int:
    """Tokens of the smaller of the reference's two split halves (the yardstick's halves)."""
    halves = metrics_mod.split_half(len(docs), seed)
    return min(int(sum(len(docs[i]) for i in half)) for half in halves)


def default_budget(corpora: Mapping[str, Scored], pairs: Mapping[str, str], seed: int) -> int:
    """The largest budget every comparison can meet: the smaller split half of each
    reference, the whole of each candidate."""
    refs = sorted(set(pairs.values()))
    return min([smaller_half_tokens(corpora[r].docs, seed) for r in refs]
               + [corpora[c].tokens for c in pairs])


def measure(corpora: Mapping[str, Scored], pairs: Mapping[str, str], cfg: MetricsConfig,
            seed: int, budget: int | None = None,
            edited_from: Mapping[str, str] | None = None) -> tuple[list[dict], int]:
    """Metric rows of every candidate of ``pairs`` (candidate -> reference) against its
    reference, and each reference's split-half yardstick, all on one token budget
    (``budget``, else ``cfg.budget_tokens``, else ``default_budget``).

    Rows: {corpus, reference, comparison ("split_half" / "vs_reference"), metric, n, budget,
    value, ci_low, ci_high}. A candidate in ``edited_from`` (candidate -> the corpus it was
    edited from) also gets ``edit_rate``: edited / scored tokens of that source's scores.
    Returns (rows, budget)."""
    for name in {*pairs, *pairs.values()}:
        if name not in corpora:
            raise InputError(f"no scores for corpus {name!r}")
        if not corpora[name].docs:
            raise InputError(f"corpus {name!r} has no documents")
    budget = budget or cfg.budget_tokens or default_budget(corpora, pairs, seed)
    if budget <= 0:
        raise InputError(f"the token budget must be positive, got {budget}")
    kwargs = {"orders": tuple(cfg.ngram_orders), "buckets": cfg.js_buckets,
              "bootstrap": cfg.bootstrap}
    rows = []
    for ref in sorted(set(pairs.values())):
        for r in metrics_mod.split_half_yardstick(corpora[ref].docs, corpora[ref].ppl, budget,
                                                  seed, **kwargs):
            rows.append({**r, "corpus": ref, "reference": ref, "comparison": "split_half"})
    for name, ref in pairs.items():
        cand, reference = corpora[name], corpora[ref]
        corpus_rows = metrics_mod.compare(cand.docs, cand.ppl, reference.docs, reference.ppl,
                                          budget, seed, **kwargs)
        source = (edited_from or {}).get(name)
        if source is not None:
            src = corpora[source]
            corpus_rows.append({"metric": "edit_rate", "n": None, "budget": src.scored_tokens,
                                "value": src.edited_tokens / max(src.scored_tokens, 1),
                                "ci_low": None, "ci_high": None})
        rows += [{**r, "corpus": name, "reference": ref, "comparison": "vs_reference"}
                 for r in corpus_rows]
    return rows, budget


def ngram_tables(corpora: Mapping[str, Scored], orders: Sequence[int]) -> dict[str, dict]:
    """{corpus: {n: (sorted n-gram types, counts)}}: each corpus counted once."""
    return {name: metrics_mod.count_ngrams(c.docs, tuple(orders)).tables(tuple(orders))
            for name, c in corpora.items()}


def distribution_rows(run_id: str, corpora: Mapping[str, Scored], tables: Mapping[str, dict],
                      top: int = 20) -> tuple[list[dict], list[dict]]:
    """Rows of ``ppl_histograms`` (shared log bins over all corpora) and ``ngram_top``
    (from ``ngram_tables``)."""
    bins = metrics_mod.log_bins(np.concatenate([c.ppl for c in corpora.values()]))
    hist_rows, top_rows = [], []
    for name, c in corpora.items():
        hist_rows += [{"run_id": run_id, "corpus": name, **row}
                      for row in metrics_mod.ppl_histogram(c.ppl, bins)]
        for n, (all_types, all_counts) in tables[name].items():
            types, counts = metrics_mod.top_of_table(all_types, all_counts, top)
            total = max(int(all_counts.sum()), 1)
            for rank, (key, count) in enumerate(zip(types, counts, strict=True), start=1):
                top_rows.append({"run_id": run_id, "corpus": name, "n": n, "rank": rank,
                                 "ngram": json.dumps(list(metrics_mod.unpack_ngram(int(key), n))),
                                 "count": int(count), "share": float(count) / total})
    return hist_rows, top_rows


def store(wh: Path, root: Path, run_id: str, rows: list[dict], corpora: Mapping[str, Scored],
          pairs: Mapping[str, str], orders: Sequence[int]) -> list[Path]:
    """A measurement's rows in the warehouse (``metrics``, ``ppl_histograms``,
    ``ngram_top``) and its plots in the run folder; returns the PNGs."""
    from semisynth.quality import plots

    tables = ngram_tables(corpora, orders)
    hist_rows, top_rows = distribution_rows(run_id, corpora, tables)
    db.insert(wh, "metrics", [{**r, "run_id": run_id} for r in rows])
    db.insert(wh, "ppl_histograms", hist_rows)
    db.insert(wh, "ngram_top", top_rows)
    return plots.write_run_plots(plots.run_folder(root, run_id), corpora, pairs, tables)


# -----------------------------------------------------------------------------
# the commands' side: resolve CANDIDATE / REF, score, measure, store, print


def new_run_id(kind: str) -> str:
    now = datetime.now(UTC)
    return f"{kind}-{now:%Y%m%dT%H%M%S}-{now:%f}"


def load_command_config(path: str | None, overrides: list[str] | None) -> tuple[Config, str]:
    """The config named by --config; else configs/demo.yaml when it can be found (the
    current folder or the repository); else built-in defaults with no corpora."""
    from semisynth.config import config_from_tree, find_demo_config, load_config

    path = path or find_demo_config()
    if path is not None:
        return load_config(path, overrides), str(path)
    try:
        return config_from_tree({"corpora": {}}, overrides), "(built-in defaults)"
    except ValueError as exc:  # a malformed override is the user's to fix (exit 2)
        raise InputError(str(exc)) from exc


@dataclass
class Source:
    """A candidate or reference resolved to score files."""

    label: str  # the corpus name in the warehouse: the config's name, else the argument
    origin: str  # "config:files", "config:edited_from:X", "config:mix", "files"
    shards: list[Path]
    scores: list[Path]
    edited_from: str | None = None
    model_work_tokens: int = 0
    ingest: dict = field(default_factory=dict)  # rows_in, rows_ok, rows_quarantined
    quarantine: list[dict] = field(default_factory=list)
    new_shards: list = field(default_factory=list)  # ingest.ShardInfo


class Measurer:
    """Resolves corpus arguments for one command invocation (ingest and scores cached)."""

    def __init__(self, cfg: Config, run_id: str, say=None):
        self.cfg, self.run_id = cfg, run_id
        self.root = cfg.root
        self.wh = db.init(db.warehouse_path(self.root))
        self.sources: dict[str, Source] = {}
        self.say = say or (lambda message: None)

    @cached_property
    def model_id(self) -> str:
        """The prior's id (resolving the default prior fetches it once)."""
        from semisynth.tasks.prior import resolve_model

        return resolve_model(self.cfg.prior.model, self.root)[1]

    @cached_property
    def score_dir(self) -> Path:
        """scores/<key>/: the same cache the flow uses for this prior and these parameters."""
        from semisynth.tasks.score import score_key

        cfg = self.cfg
        return self.root / "scores" / score_key(self.model_id, cfg.prior, cfg.edit, cfg.seed)

    def check(self, spec: str) -> None:
        """Fail early (before any model work) on an argument that names nothing."""
        from semisynth.documents import expand_paths

        c = self.cfg.corpora.get(spec)
        patterns = [self.cfg.resolve(p) for p in c.paths] if c else [spec]
        if c and not c.paths:
            return  # derived: checked when resolved (it needs the warehouse)
        try:
            expand_paths(patterns)
        except (FileNotFoundError, ValueError) as exc:
            if c:
                raise InputError(f"corpus {spec!r}: {exc}") from exc
            known = ", ".join(self.cfg.corpora) or "none"
            raise InputError(f"{spec!r} is neither a corpus of the config (corpora: {known}) "
                             f"nor a document file or glob ({exc})") from exc

    def resolve(self, spec: str) -> Source:
        if spec in self.sources:
            return self.sources[spec]
        if spec in self.cfg.corpora:
            c = self.cfg.corpora[spec]
            if c.paths:
                source = self._from_files(spec, [self.cfg.resolve(p) for p in c.paths],
                                          self.root / "shards" / spec, "config:files",
                                          text_field=c.text_field, id_field=c.id_field,
                                          limit_docs=c.limit_docs)
            else:
                source = self._derived(spec)
                if c.edited_from:
                    self.resolve(c.edited_from)  # its scores hold the edit counts
            source.edited_from = c.edited_from
        else:  # run_metrics checked it before any model work
            source = self._from_files(spec, [spec], self.root / "shards" / "_files", "files")
        self.sources[spec] = source
        return source

    def _from_files(self, label: str, patterns: list[str], out_dir: Path, origin: str,
                    **ingest_kwargs) -> Source:
        from semisynth.tasks.ingest import ingest
        from semisynth.tasks.score import score_shard

        result = ingest(patterns, out_dir, label, shard_docs=self.cfg.shard_docs, **ingest_kwargs)
        if result.rows_ok == 0:
            raise InputError(f"{label}: no usable documents in {', '.join(patterns)} "
                             f"({result.rows_quarantined} rows quarantined)")
        scores, work = [], 0
        for shard in result.shards:
            cached = (self.score_dir / Path(shard.path).name).exists()
            self.say(f"{label}: shard {shard.shard_hash} ({shard.documents} documents): "
                     + ("cached scores" if cached else "scoring with the prior"))
            stats = score_shard(Path(shard.path), self.score_dir / Path(shard.path).name, self.root,
                                self.cfg.prior, self.cfg.edit, self.cfg.seed)
            scores.append(Path(stats.path))
            work += stats.scored_tokens if stats.model_work else 0
        return Source(label, origin, [Path(s.path) for s in result.shards], scores,
                      model_work_tokens=work,
                      ingest={"rows_in": result.rows_in, "rows_ok": result.rows_ok,
                              "rows_quarantined": result.rows_quarantined},
                      quarantine=result.quarantine, new_shards=result.shards)

    def _derived(self, name: str) -> Source:
        """A derived corpus (edited_from / mix): the shards of the latest run that scored
        it, with their score files for this config's prior and parameters."""
        c = self.cfg.corpora[name]
        origin = f"config:edited_from:{c.edited_from}" if c.edited_from else "config:mix"
        frame = db.query(self.wh, """
            SELECT d.shard_hash, min(s.path) AS path FROM doc_scores d
            LEFT JOIN shards s ON s.shard_hash = d.shard_hash AND s.corpus = d.corpus
            WHERE d.corpus = ? AND d.run_id = (
                SELECT d2.run_id FROM doc_scores d2 JOIN runs r2 USING (run_id)
                WHERE d2.corpus = ? ORDER BY r2.started_at DESC LIMIT 1)
            GROUP BY d.shard_hash ORDER BY min(d.rowid)""", [name, name], read_only=False)
        if frame.empty:
            frame = db.query(self.wh, "SELECT shard_hash, path FROM shards WHERE corpus = ? "
                                      "ORDER BY rowid", [name], read_only=False)
        if frame.empty:
            raise InputError(
                f"corpus {name!r} is derived ({origin.split(':', 1)[1]}) and no run has made it "
                f"yet under {self.root}: run the flow first (semisynth run CONFIG)")
        scores = [self.score_dir / f"{h}.parquet" for h in frame["shard_hash"]]
        missing = [p for p in scores if not p.exists()]
        if missing:
            raise InputError(
                f"corpus {name!r}: {len(missing)} of {len(scores)} shards have no scores under "
                f"{self.score_dir} (this config's prior and edit parameters): run the flow with "
                f"this config first (semisynth run CONFIG)")
        shards = [Path(p) if isinstance(p, str) else self.root / "shards" / name / f"{h}.parquet"
                  for h, p in zip(frame["shard_hash"], frame["path"], strict=True)]
        return Source(name, origin, shards, scores)


@dataclass
class Measurement:
    run_id: str
    candidate: str
    reference: str
    budget: int
    rows: list[dict]
    edited: bool
    plots: list[Path]
    model_work_tokens: int
    sources: dict[str, Source]
    warehouse: Path


def run_metrics(cfg: Config, candidate: str, reference: str, budget: int | None, kind: str,
                command: str, say=None) -> Measurement:
    """Resolve, score (cached), measure and store one candidate against one reference."""
    if budget is not None and budget <= 0:
        raise InputError(f"--budget must be a positive number of tokens, got {budget}")
    if candidate == reference:
        raise InputError(f"the candidate and the reference are the same corpus ({candidate}); "
                         "the reference's own split halves are measured with any candidate")
    run_id = new_run_id(kind)
    started = db.now()
    m = Measurer(cfg, run_id, say)
    m.check(reference)
    m.check(candidate)
    ref = m.resolve(reference)
    cand = m.resolve(candidate)
    corpora = {s.label: load_scores(s.scores) for s in m.sources.values()}
    pairs = {cand.label: ref.label}
    edited = {cand.label: cand.edited_from} if cand.edited_from else {}
    rows, used = measure(corpora, pairs, cfg.metrics, cfg.seed, budget, edited)

    wh = m.wh
    db.insert(wh, "runs", [{
        "run_id": run_id, "flow_run_id": None, "config_name": cfg.name,
        "config_json": cfg.model_dump_json(), "started_at": started, "finished_at": None,
        "status": "RUNNING", "model": m.model_id, "message": command}])
    _store_inputs(wh, run_id, cfg, m, corpora, {cand.label: "candidate", ref.label: "reference"})
    shown = {ref.label: corpora[ref.label], cand.label: corpora[cand.label]}
    pngs = store(wh, m.root, run_id, rows, shown, pairs, cfg.metrics.ngram_orders)
    db.execute(wh, "UPDATE runs SET finished_at = ?, status = 'COMPLETED' WHERE run_id = ?",
               [db.now(), run_id])
    return Measurement(run_id, cand.label, ref.label, used, rows, cand.edited_from is not None,
                       pngs, sum(s.model_work_tokens for s in m.sources.values()),
                       dict(m.sources), wh)


def _store_inputs(wh: Path, run_id: str, cfg: Config, m: Measurer, corpora: dict[str, Scored],
                  roles: dict[str, str]) -> None:
    """shards, quarantine, corpora and doc_scores rows of the command's run."""
    from semisynth.warehouse.loaders import record_new_shards

    for s in m.sources.values():
        if s.new_shards:
            record_new_shards(wh, run_id, s.label, s.new_shards)
        db.insert(wh, "quarantine", [{**q, "run_id": run_id} for q in s.quarantine])
    rows, frames = [], []
    for s in m.sources.values():
        if s.label not in roles:
            continue
        c = cfg.corpora.get(s.label)
        reference = next(label for label, role in roles.items() if role == "reference")
        rows.append({"run_id": run_id, "corpus": s.label, "role": c.role if c else roles[s.label],
                     "reference": reference if roles[s.label] == "candidate" else None,
                     "origin": s.origin,
                     "documents": len(corpora[s.label].docs), "tokens": corpora[s.label].tokens,
                     "shards": len(s.shards), **s.ingest})
        for shard, score in zip(s.shards, s.scores, strict=True):
            t = pq.read_table(score, columns=["id", "doc_hash", "scored_tokens", "nll_sum",
                                              "ppl"]).to_pandas()
            frames.append(t.rename(columns={"id": "doc_id", "scored_tokens": "tokens"}).assign(
                run_id=run_id, corpus=s.label, shard_hash=Path(shard).stem))
    db.insert(wh, "corpora", rows)
    if frames:
        import pandas as pd

        db.insert(wh, "doc_scores", pd.concat(frames, ignore_index=True))


def format_table(result: Measurement) -> str:
    """The command's table: one line per metric, with its CI and the reference's yardstick."""
    yard = {r["metric"]: r["value"] for r in result.rows if r["comparison"] == "split_half"}
    rows = [r for r in result.rows if r["comparison"] == "vs_reference"]
    head = (f"{result.candidate} vs {result.reference}: run {result.run_id}, equal token budget "
            f"{result.budget} tokens per side")
    lines = [head, "",
             f"{'metric':<16} {'n':>2} {'value':>10} {'95% CI':>21} {'yardstick':>10} {'budget':>9}"]

    def num(v):
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"

    for r in rows:
        ci = f"[{num(r['ci_low'])}, {num(r['ci_high'])}]" if r["ci_low"] is not None else ""
        lines.append(f"{r['metric']:<16} {'' if r['n'] is None else r['n']:>2} "
                     f"{num(r['value']):>10} {ci:>21} {num(yard.get(r['metric'])):>10} "
                     f"{r['budget']:>9}")
    lines += ["", f"yardstick: {result.reference} split half A vs half B on the same budget"]
    return "\n".join(lines)


SUITES = ("coverage",)  # the GX suites semisynth.quality.suite builds


def run_validation(cfg: Config, candidate: str, reference: str, budget: int | None, suite: str,
                   command: str, say=None):
    """run_metrics, then the GX suite on the run's rows, recorded in ``validations``.
    Returns (Measurement, thresholds.GateResult)."""
    from semisynth.quality import gate

    if suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    result = run_metrics(cfg, candidate, reference, budget, "validate", command, say)
    gate_cfg = cfg.gate.model_copy(update={"suite": suite})
    verdict = gate.validate_corpus(result.warehouse, cfg.root / "gx", result.run_id,
                                   result.candidate, result.reference, gate_cfg,
                                   edited=result.edited)
    gate.record(result.warehouse, verdict)
    status = "COMPLETED" if verdict.success else "FAILED"
    failing = [r["metric"] for r in verdict.failures()]
    message = f"{command}: " + (f"failed {', '.join(failing)}" if failing else "passed")
    db.execute(result.warehouse, "UPDATE runs SET status = ?, message = ? WHERE run_id = ?",
               [status, message, result.run_id])
    return result, verdict


def format_verdict(result: Measurement, verdict) -> str:
    """Every expectation with its observed value and threshold, then the verdict."""
    lines = [f"suite {verdict.suite} on {result.candidate} (reference {result.reference}), "
             f"run {result.run_id}, budget {result.budget} tokens", "",
             f"{'':4} {'metric':<16} {'observed':>10}  threshold"]

    def observed(r):
        return "missing" if r["observed"] is None else f"{r['observed']:.4g}"

    for r in verdict.rows:
        lines.append(f"{'PASS' if r['success'] else 'FAIL':4} {r['metric']:<16} "
                     f"{observed(r):>10}  {r['threshold']}")
    failing = verdict.failures()
    lines.append("")
    if failing:
        lines.append(f"FAILED: {len(failing)} of {len(verdict.rows)} expectations failed:")
        lines += [f"  - {r['expectation']}: observed {observed(r)}" for r in failing]
    else:
        lines.append(f"PASSED: all {len(verdict.rows)} expectations")
    return "\n".join(lines)
