"""Measuring corpora: score files in, metric rows out, in memory bounded by the budget.

``measure`` is the one computation behind both the flow's metrics task and the ``semisynth
metrics`` / ``validate`` / ``estimate`` commands. Each corpus is read once, in batches
(``sample.ScoreFiles.scan``), and keeps only its samples: the documents of each stream it
is measured in (candidate, reference, the reference's split halves) up to
``metrics.budget_tokens`` tokens, chosen by seeded keys (``quality.sample``). Every
candidate is compared with its reference, and each reference's split-half yardstick is
measured, on one equal token budget: the cap, or less where a corpus is smaller. The
n-grams of each sample are counted by map-reduce over the score files it reads
(``ngrams.count_sample``): on a Dask cluster when ``measure`` is given a client, here
otherwise, with the same values. Totals (documents, tokens, edit counts) are sums over
the batches, never a frame of every document.

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

from semisynth.config import Config, MetricsConfig
from semisynth.errors import InputError
from semisynth.quality import plots, share
from semisynth.quality.comparison import compare, sample_counts, yardstick
from semisynth.quality.ngrams import top_of_table, unpack_ngram
from semisynth.quality.plots import rank_frequency_curve
from semisynth.quality.ppl_metrics import log_bins, ppl_histogram, scored
from semisynth.quality.sample import CorpusScan, InMemory, Sample, ScoreFiles, comparison_streams
from semisynth.warehouse import db

log = logging.getLogger(__name__)

TOP_NGRAMS = 20  # rows of ngram_top per corpus and order

# the sources measure() reads: score files, or documents in memory (tests, benchmarks)
Scored = InMemory
__all__ = ["InputError", "Measurement", "MeasuredRun", "Scored", "ScoreFiles", "measure",
           "measure_run"]


@dataclass
class Shown:
    """What the run's tables and plots keep of one measured corpus: the perplexities of its
    sample (up to the cap; its documents too short to have one left out) and, per n-gram
    order, its most frequent n-grams and its rank-frequency curve."""

    ppl: np.ndarray
    documents: int  # in the sample
    top: dict[int, tuple[np.ndarray, np.ndarray, int]]  # n -> (types, counts, total)
    curves: dict[int, tuple[np.ndarray, np.ndarray]]  # n -> (ranks, shares)


@dataclass
class Measurement:
    """Metric rows, the equal budget they were measured on, what the plots show of each
    measured corpus, and the candidates without a synthetic share (and why)."""

    rows: list[dict]
    budget: int
    shown: dict[str, Shown]
    unestimated: dict[str, str] = field(default_factory=dict)


def _streams(pairs: Mapping[str, str], synthetic: Mapping[str, str],
             edited_from: Mapping[str, str], seed: int) -> dict[str, dict]:
    """The streams each corpus is read in: every candidate in its candidate stream, every
    reference (human or synthetic) in its reference stream and the human ones in their
    halves; an edit's source only for its totals."""
    streams = comparison_streams(seed)
    wanted: dict[str, dict] = {}
    for name, ref in pairs.items():
        wanted.setdefault(name, {})["candidate"] = streams["candidate"]
        wanted.setdefault(ref, {}).update(
            {k: streams[k] for k in ("reference", "half_a", "half_b")})
    for syn in synthetic.values():
        wanted.setdefault(syn, {})["reference"] = streams["reference"]
    for source in edited_from.values():
        wanted.setdefault(source, {})
    return wanted


def largest_budget(scans: Mapping[str, CorpusScan], pairs: Mapping[str, str]) -> int:
    """The largest budget every comparison can meet: the smaller split half of each
    reference, the whole of each candidate."""
    refs = sorted(set(pairs.values()))
    return min([min(scans[r].samples[h].stream_tokens for h in ("half_a", "half_b"))
                for r in refs] + [scans[c].samples["candidate"].stream_tokens for c in pairs])


def measure(corpora: Mapping[str, InMemory | ScoreFiles], pairs: Mapping[str, str],
            cfg: MetricsConfig, seed: int, budget: int | None = None,
            edited_from: Mapping[str, str] | None = None, client=None,
            synthetic: Mapping[str, str] | None = None) -> Measurement:
    """Metric rows of every candidate of ``pairs`` (candidate -> reference) against its
    reference, and each reference's split-half yardstick, all on one token budget:
    ``budget`` exactly, else the smaller of ``cfg.budget_tokens`` and the largest budget
    every comparison can meet (``largest_budget``).

    Rows: {corpus, reference, comparison ("split_half" / "vs_reference"), metric, n, budget,
    value, ci_low, ci_high}. A candidate in ``edited_from`` (candidate -> the corpus it was
    edited from) also gets ``edit_rate``: edited / scored tokens of all of that source's
    scores. A candidate in ``synthetic`` (candidate -> its synthetic reference) gets
    ``synthetic_share`` (``share_rows``). ``client``: a ``distributed.Client`` whose workers
    count the samples' n-grams (every corpus must then be score files); the rows are the
    same without one."""
    edited_from, synthetic = dict(edited_from or {}), dict(synthetic or {})
    for name in {*pairs, *pairs.values(), *synthetic.values(), *edited_from.values()}:
        if name not in corpora:
            raise InputError(f"no scores for corpus {name!r}")
    if budget is not None and budget <= 0:
        raise InputError(f"the token budget must be positive, got {budget}")
    cap = cfg.budget_tokens
    if budget is not None and cap is not None:
        cap = max(cap, budget)  # an exact budget above the cap is read in full
    scans = {name: corpora[name].scan(streams, cap)
             for name, streams in _streams(pairs, synthetic, edited_from, seed).items()}
    for name in {*pairs, *pairs.values(), *synthetic.values()}:
        if scans[name].documents == 0:
            raise InputError(f"corpus {name!r} has no documents")
    if budget is None:
        largest = largest_budget(scans, pairs)
        budget = largest if cfg.budget_tokens is None else min(cfg.budget_tokens, largest)
        if budget <= 0:
            raise InputError(f"no token budget every comparison can meet (the largest is "
                             f"{largest} tokens): a reference half or a candidate is empty")
    kwargs = {"orders": tuple(cfg.ngram_orders), "buckets": cfg.js_buckets,
              "bootstrap": cfg.bootstrap, "client": client}
    rows = []
    for ref in sorted(set(pairs.values())):
        halves = scans[ref].samples
        for r in yardstick(halves["half_a"], halves["half_b"], budget, seed, **kwargs):
            rows.append({**r, "corpus": ref, "reference": ref, "comparison": "split_half"})
    for name, ref in pairs.items():
        corpus_rows = compare(scans[name].samples["candidate"], scans[ref].samples["reference"],
                              budget, seed, names=(f"corpus {name!r}", f"reference {ref!r}"),
                              **kwargs)
        source = edited_from.get(name)
        if source is not None:
            src = scans[source]
            corpus_rows.append({"metric": "edit_rate", "n": None, "budget": src.scored_tokens,
                                "value": src.edited_tokens / max(src.scored_tokens, 1),
                                "ci_low": None, "ci_high": None})
        rows += [{**r, "corpus": name, "reference": ref, "comparison": "vs_reference"}
                 for r in corpus_rows]
    unestimated: dict[str, str] = {}
    rows += share_rows(scans, pairs, synthetic, cfg.bootstrap, seed, cfg.share_documents,
                       unestimated)
    shown = {name: shown_of(scans[name].samples["candidate" if name in pairs else "reference"],
                            tuple(cfg.ngram_orders), client)
             for name in corpora if name in {*pairs, *pairs.values()}}
    return Measurement(rows, budget, shown, unestimated)


def shown_of(sample: Sample, orders: tuple[int, ...], client=None) -> Shown:
    """What the tables and plots keep of a corpus's sample: its perplexities, and per order
    the top n-grams and the rank-frequency curve of its counts (counted on ``client``'s
    cluster when given)."""
    last = int(sample.lengths[-1]) if len(sample) else 0
    tables = sample_counts(sample, last, orders, client).tables(orders) if len(sample) else {}
    top, curves = {}, {}
    for n, (types, counts) in tables.items():
        best_types, best_counts = top_of_table(types, counts, TOP_NGRAMS)
        top[n] = (best_types, best_counts, int(counts.sum()))
        curves[n] = rank_frequency_curve(counts)
    return Shown(scored(sample.ppl), len(sample), top, curves)


def share_rows(scans: Mapping[str, CorpusScan], pairs: Mapping[str, str],
               synthetic: Mapping[str, str], bootstrap: int, seed: int, documents: int,
               unestimated: dict[str, str] | None = None) -> list[dict]:
    """The ``synthetic_share`` row (with its bootstrap CI) of every candidate of ``synthetic``
    (candidate -> synthetic reference): its mixture share between its reference (human) and
    that corpus (``quality.share``), over the first ``documents`` of each one's sample (up
    to the cap), taken in corpus order."""
    rows = []
    for candidate, syn in synthetic.items():
        reference = pairs[candidate]
        samples = [scans[candidate].samples["candidate"], scans[reference].samples["reference"],
                   scans[syn].samples["reference"]]
        docs = [share.scored_docs(s.take(np.arange(min(len(s), documents))).in_corpus_order())
                for s in samples]
        try:
            estimate = share.estimate_share(*docs, bootstrap=bootstrap, seed=seed)
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


def distribution_rows(run_id: str, shown: Mapping[str, Shown]) -> tuple[list[dict], list[dict]]:
    """Rows of ``ppl_histograms`` (shared log bins over all corpora) and ``ngram_top``."""
    bins = log_bins(np.concatenate([s.ppl for s in shown.values()]))
    hist_rows, top_rows = [], []
    for name, s in shown.items():
        hist_rows += [{"run_id": run_id, "corpus": name, **row} for row in ppl_histogram(s.ppl, bins)]
        for n, (types, counts, total) in s.top.items():
            for rank, (key, count) in enumerate(zip(types, counts, strict=True), start=1):
                top_rows.append({"run_id": run_id, "corpus": name, "n": n, "rank": rank,
                                 "ngram": json.dumps(list(unpack_ngram(int(key), n))),
                                 "count": int(count), "share": float(count) / max(total, 1)})
    return hist_rows, top_rows


def store(wh: Path, root: Path, run_id: str, measured: Measurement,
          pairs: Mapping[str, str]) -> list[Path]:
    """A measurement's rows in the warehouse (``metrics``, ``ppl_histograms``,
    ``ngram_top``) and its plots in the run folder; returns the PNGs."""
    hist_rows, top_rows = distribution_rows(run_id, measured.shown)
    # one transaction: a kill between the tables leaves none of them, not a half measurement
    db.insert_tables(wh, {"metrics": [{**r, "run_id": run_id} for r in measured.rows],
                          "ppl_histograms": hist_rows, "ngram_top": top_rows})
    return plots.write_run_plots(plots.run_folder(root, run_id),
                                 {n: s.ppl for n, s in measured.shown.items()}, pairs,
                                 {n: s.curves for n, s in measured.shown.items()})


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
    reference, each reference's yardstick, and the synthetic share of each candidate that
    names a ``synthetic_reference``, on one token budget; stored in the warehouse with the
    run's plots. ``scores``: each corpus's score files (a candidate edited from another
    corpus also needs that corpus's, for its edit rate). With a Dask ``client`` the n-gram
    counts of the samples are map-reduced over the score files on its workers
    (``ngrams.count_sample``); the rows are the same either way."""
    edited = {n: cfg.corpora[n].edited_from for n in pairs if cfg.corpora[n].edited_from}
    synthetic = {n: cfg.corpora[n].synthetic_reference for n in pairs
                 if cfg.corpora[n].synthetic_reference}
    measured = measure({name: ScoreFiles(paths) for name, paths in scores.items()}, pairs,
                       cfg.metrics, cfg.seed, budget, edited_from=edited, client=client,
                       synthetic=synthetic)
    values: dict[str, dict[str, float]] = {}
    for r in measured.rows:
        if r["comparison"] == "vs_reference":
            values.setdefault(r["corpus"], {})[r["metric"]] = r["value"]
    pngs = store(wh, cfg.root, run_id, measured, pairs)
    return MeasuredRun(measured.rows, measured.budget, values, pngs, measured.unestimated)
