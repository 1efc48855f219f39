"""Measuring corpora: score files in, metric rows out.

``load_scores`` and ``measure`` are the one computation behind both the flow's metrics
task and the ``semisynth metrics`` / ``validate`` commands: per-document token ids and
perplexities from the score files, every candidate against its reference on one equal
token budget, and each reference's split-half yardstick on that same budget. The n-grams
of each equal-budget sample are counted by map-reduce over the score files it reads
(``ngrams.count_sample``): on a Dask cluster when ``measure`` is given a client, here
otherwise, with the same values.

``measure_run`` is the metrics stage itself (measure, store, plot), the same for the flow
and the commands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semisynth.config import Config, MetricsConfig
from semisynth.quality.budget import split_half
from semisynth.quality.comparison import compare, split_half_yardstick
from semisynth.quality.ngrams import DocumentFiles, count_ngrams, top_of_table, unpack_ngram
from semisynth.quality.ppl_metrics import log_bins, ppl_histogram
from semisynth.warehouse import db

log = logging.getLogger(__name__)

SCORE_COLUMNS = ["token_ids", "ppl", "scored_tokens", "edited_tokens"]


class InputError(ValueError):
    """A usage or input problem the user can fix (exit code 2)."""


@dataclass
class Scored:
    """A scored corpus: token ids and perplexity per document, and its edit counts;
    ``files``: where each document is stored (None: the corpus is counted in memory)."""

    docs: list[np.ndarray]
    ppl: np.ndarray
    scored_tokens: int = 0
    edited_tokens: int = 0
    files: DocumentFiles | None = None

    @property
    def tokens(self) -> int:
        return int(sum(len(d) for d in self.docs))


def load_scores(paths: Sequence[Path]) -> Scored:
    """A corpus's score files (``scores/<key>/<shard>.parquet``), concatenated in order."""
    from semisynth.tasks.score import read_scores, token_arrays

    paths = list(paths)
    table = read_scores(paths, SCORE_COLUMNS)
    return Scored(
        docs=token_arrays(table),
        ppl=table.column("ppl").to_numpy().astype(float),
        scored_tokens=int(pc.sum(table.column("scored_tokens")).as_py() or 0),
        edited_tokens=int(pc.sum(table.column("edited_tokens")).as_py() or 0),
        files=DocumentFiles.of_files(paths, [pq.ParquetFile(p).metadata.num_rows for p in paths]),
    )


def smaller_half_tokens(docs: Sequence[np.ndarray], seed: int) -> int:
    """Tokens of the smaller of the reference's two split halves (the yardstick's halves)."""
    halves = split_half(len(docs), seed)
    return min(int(sum(len(docs[i]) for i in half)) for half in halves)


def default_budget(corpora: Mapping[str, Scored], pairs: Mapping[str, str], seed: int) -> int:
    """The largest budget every comparison can meet: the smaller split half of each
    reference, the whole of each candidate."""
    refs = sorted(set(pairs.values()))
    return min([smaller_half_tokens(corpora[r].docs, seed) for r in refs]
               + [corpora[c].tokens for c in pairs])


def measure(corpora: Mapping[str, Scored], pairs: Mapping[str, str], cfg: MetricsConfig,
            seed: int, budget: int | None = None,
            edited_from: Mapping[str, str] | None = None, client=None) -> tuple[list[dict], int]:
    """Metric rows of every candidate of ``pairs`` (candidate -> reference) against its
    reference, and each reference's split-half yardstick, all on one token budget
    (``budget``, else ``cfg.budget_tokens``, else ``default_budget``).

    Rows: {corpus, reference, comparison ("split_half" / "vs_reference"), metric, n, budget,
    value, ci_low, ci_high}. A candidate in ``edited_from`` (candidate -> the corpus it was
    edited from) also gets ``edit_rate``: edited / scored tokens of that source's scores.
    ``client``: a ``distributed.Client`` whose workers count the samples' n-grams (every
    corpus must then come with its ``files``); the rows are the same without one.
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
        for r in split_half_yardstick(corpora[ref].docs, corpora[ref].ppl, budget, seed,
                                      files=corpora[ref].files, client=client, **kwargs):
            rows.append({**r, "corpus": ref, "reference": ref, "comparison": "split_half"})
    for name, ref in pairs.items():
        cand, reference = corpora[name], corpora[ref]
        corpus_rows = compare(cand.docs, cand.ppl, reference.docs, reference.ppl, budget, seed,
                              cand_files=cand.files, ref_files=reference.files, client=client,
                              **kwargs)
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
    return {name: count_ngrams(c.docs, tuple(orders)).tables(tuple(orders))
            for name, c in corpora.items()}


def distribution_rows(run_id: str, corpora: Mapping[str, Scored], tables: Mapping[str, dict],
                      top: int = 20) -> tuple[list[dict], list[dict]]:
    """Rows of ``ppl_histograms`` (shared log bins over all corpora) and ``ngram_top``
    (from ``ngram_tables``)."""
    bins = log_bins(np.concatenate([c.ppl for c in corpora.values()]))
    hist_rows, top_rows = [], []
    for name, c in corpora.items():
        hist_rows += [{"run_id": run_id, "corpus": name, **row}
                      for row in ppl_histogram(c.ppl, bins)]
        for n, (all_types, all_counts) in tables[name].items():
            types, counts = top_of_table(all_types, all_counts, top)
            total = max(int(all_counts.sum()), 1)
            for rank, (key, count) in enumerate(zip(types, counts, strict=True), start=1):
                top_rows.append({"run_id": run_id, "corpus": name, "n": n, "rank": rank,
                                 "ngram": json.dumps(list(unpack_ngram(int(key), n))),
                                 "count": int(count), "share": float(count) / total})
    return hist_rows, top_rows


def store(wh: Path, root: Path, run_id: str, rows: list[dict], corpora: Mapping[str, Scored],
          pairs: Mapping[str, str], orders: Sequence[int]) -> list[Path]:
    """A measurement's rows in the warehouse (``metrics``, ``ppl_histograms``,
    ``ngram_top``) and its plots in the run folder; returns the PNGs."""
    from semisynth.quality import plots

    tables = ngram_tables(corpora, orders)
    hist_rows, top_rows = distribution_rows(run_id, corpora, tables)
    # one transaction: a kill between the tables leaves none of them, not a half measurement
    db.insert_tables(wh, {"metrics": [{**r, "run_id": run_id} for r in rows],
                          "ppl_histograms": hist_rows, "ngram_top": top_rows})
    return plots.write_run_plots(plots.run_folder(root, run_id), corpora, pairs, tables)


def share_rows(cfg: Config, scores: Mapping[str, Sequence[Path]],
               pairs: Mapping[str, str], unestimated: dict[str, str] | None = None) -> list[dict]:
    """The ``synthetic_share`` row (with its bootstrap CI) of every candidate of ``pairs``
    whose corpus names a ``synthetic_reference``: its mixture share between its reference
    (human) and that corpus (``quality.share``), over all its scored documents."""
    from semisynth.quality import share

    rows = []
    for candidate, reference in pairs.items():
        synthetic = cfg.corpora[candidate].synthetic_reference
        if synthetic is None:
            continue
        missing = [n for n in (candidate, reference, synthetic) if n not in scores]
        if missing:
            raise InputError(f"{candidate}: the synthetic share needs the scores of {missing}")
        docs = [share.read_scored_docs(scores[n]) for n in (candidate, reference, synthetic)]
        try:
            estimate = share.estimate_share(*docs, bootstrap=cfg.metrics.bootstrap, seed=cfg.seed)
        except InputError as exc:  # e.g. a reference left with too few documents
            # no row: the gate's synthetic_share expectation then fails as "missing", so
            # a candidate whose share cannot be estimated is not released
            log.warning("%s: no synthetic share estimate: %s", candidate, exc)
            if unestimated is not None:
                unestimated[candidate] = str(exc)
            continue
        rows.append({**estimate.metric_row(), "corpus": candidate, "reference": reference,
                     "comparison": "vs_reference"})
    return rows


@dataclass
class MeasuredRun:
    """A run's measurement: its metric rows (stored), the budget, each candidate's values
    against its reference, and the plots written to the run folder."""

    rows: list[dict]
    budget: int
    values: dict[str, dict[str, float]]
    plots: list[Path]
    unestimated: dict[str, str] = field(default_factory=dict)  # candidate -> why no share


def measure_run(cfg: Config, wh: Path, run_id: str, scores: Mapping[str, Sequence[Path]],
                pairs: Mapping[str, str], budget: int | None = None, client=None) -> MeasuredRun:
    """The metrics stage: every candidate of ``pairs`` (candidate -> reference) against its
    reference, and each reference's yardstick, on one token budget; stored in the warehouse
    with the run's plots. ``scores``: each corpus's score files (a candidate edited from
    another corpus also needs that corpus's, for its edit rate). With a Dask ``client`` the
    n-gram counts of the budget samples are map-reduced over the score files on its
    workers (``ngrams.count_sample``); the rows are the same either way."""
    edited = {n: cfg.corpora[n].edited_from for n in pairs if cfg.corpora[n].edited_from}
    needed = [n for n in scores if n in {*pairs, *pairs.values(), *edited.values()}]
    loaded = {name: load_scores(scores[name]) for name in needed}
    rows, used = measure(loaded, pairs, cfg.metrics, cfg.seed, budget, edited_from=edited,
                         client=client)
    values: dict[str, dict[str, float]] = {}
    unestimated: dict[str, str] = {}
    rows += share_rows(cfg, scores, pairs, unestimated)
    for r in rows:
        if r["comparison"] == "vs_reference":
            values.setdefault(r["corpus"], {})[r["metric"]] = r["value"]
    shown = {n: c for n, c in loaded.items() if n in {*pairs, *pairs.values()}}
    pngs = store(wh, cfg.root, run_id, rows, shown, pairs, cfg.metrics.ngram_orders)
    return MeasuredRun(rows, used, values, pngs, unestimated)
