"""The full comparison of a candidate corpus with a reference, and the reference's yardstick.

``compare`` takes each side's sample (``quality.sample``: documents in their stream's key
order) to one equal token budget, counts each sample's n-grams (``ngrams.count_sample`` over
the score files the documents came from, here or on a Dask cluster; in memory for a sample
held in memory), and gives every n-gram metric (``ngram_metrics``) and perplexity metric
(``ppl_metrics``) as rows, with bootstrap CIs (``bootstrap``) for ppl_low_frac,
ppl_tail_frac and ref_coverage_2. ``yardstick`` is compare(R half A, R half B): how far
apart two samples of the same human source are. ``compare_corpora`` and
``split_half_yardstick`` draw the samples of whole corpora first (tests, benchmarks).
"""

from __future__ import annotations

import numpy as np

from semisynth.quality.bootstrap import bootstrap_ci, coverage_of_covered, covered_types_by_doc
from semisynth.quality.ngram_metrics import NGRAM_METRICS, frequent_ref_types, metrics_of_counts
from semisynth.quality.ngrams import NgramCounts, count_ngrams, count_sample
from semisynth.quality.ppl_metrics import ppl_low_frac, ppl_metrics, ppl_tail_frac, scored
from semisynth.quality.sample import Sample, comparison_streams


def sample_counts(sample: Sample, last_tokens: int, orders, client=None) -> NgramCounts:
    """The n-gram counts of a sample cut to a budget (its last document to ``last_tokens``):
    from the score files it locates its documents in, by map-reduce (on ``client``'s
    cluster when given); without files, of the documents in memory."""
    if sample.where is None:
        if client is not None:
            raise ValueError("counting on a Dask cluster needs the corpus's score files")
        return count_ngrams(sample.token_arrays(last_tokens), orders)
    return count_sample(sample.where.sample_parts(np.arange(len(sample)), last_tokens), orders,
                        client)


def compare(cand: Sample, ref: Sample, budget: int, seed: int, orders=(1, 2, 3),
            buckets: int = 2**20, bootstrap: int = 200, *, client=None,
            names: tuple[str, str] = ("candidate", "reference")) -> list[dict]:
    """All metrics of candidate vs reference, both samples taken to exactly ``budget`` tokens.

    Rows {metric, n, budget, value, ci_low, ci_high}; n is None for PPL metrics, ci is None where
    not bootstrapped (only ppl_low_frac, ppl_tail_frac and ref_coverage_2 are; bootstrap=0: none).
    The coverage CI is median-shifted (see bootstrap_ci): plain percentiles would sit below it.
    ``client``: a ``distributed.Client`` to count the samples' n-grams on. ``names`` name the
    two sides in the error of a sample shorter than the budget.
    """
    cand, cand_last = cand.to_budget(budget, names[0])
    ref, ref_last = ref.to_budget(budget, names[1])
    # each sample counted once: the reference's counts serve the metrics and the coverage CI
    ref_counts = sample_counts(ref, ref_last, orders, client)
    cand_counts = sample_counts(cand, cand_last, orders, client)
    # a document too short to score (fewer than 2 tokens) counts for the n-grams, not here
    cand_ppl, ref_ppl = scored(cand.ppl), scored(ref.ppl)
    values = ppl_metrics(cand_ppl, ref_ppl) | metrics_of_counts(cand_counts, ref_counts, orders,
                                                                buckets)
    cis = {}
    if bootstrap:
        if "ppl_low_frac" in values:
            cis["ppl_low_frac"] = bootstrap_ci(ppl_low_frac, cand_ppl, ref_ppl, bootstrap, seed)
            cis["ppl_tail_frac"] = bootstrap_ci(ppl_tail_frac, cand_ppl, ref_ppl, bootstrap, seed)
        if 2 in orders:  # per document, in memory (the budget's tokens): a resample is a
            # multiset of documents
            ref_types = frequent_ref_types(*ref_counts.table(2))
            per_doc, n_types = covered_types_by_doc(cand.token_arrays(cand_last), ref_types, 2)
            cis["ref_coverage_2"] = bootstrap_ci(coverage_of_covered, per_doc, n_types,
                                                 bootstrap, seed, debias=True)

    rows = []
    for metric, value in values.items():
        n = int(metric.rsplit("_", 1)[1]) if metric.startswith(NGRAM_METRICS) else None
        low, high = cis.get(metric, (None, None))
        rows.append({"metric": metric, "n": n, "budget": budget, "value": value,
                     "ci_low": low, "ci_high": high})
    return rows


def yardstick(half_a: Sample, half_b: Sample, budget: int, seed: int, orders=(1, 2, 3),
              buckets: int = 2**20, bootstrap: int = 200, *, client=None) -> list[dict]:
    """compare(R half A, R half B): how far apart two samples of the same human source are
    (the samples of ``comparison_streams``' ``half_a`` and ``half_b``)."""
    return compare(half_a, half_b, budget, seed, orders, buckets, bootstrap, client=client,
                   names=("reference half A", "reference half B"))


def compare_corpora(cand, ref, budget: int, seed: int, orders=(1, 2, 3), buckets: int = 2**20,
                    bootstrap: int = 200, *, client=None) -> list[dict]:
    """``compare`` of two whole corpora (``sample.InMemory`` or ``sample.ScoreFiles``), each
    drawn in its side's stream."""
    streams = comparison_streams(seed)
    cand_sample = cand.scan({"candidate": streams["candidate"]}, None).samples["candidate"]
    ref_sample = ref.scan({"reference": streams["reference"]}, None).samples["reference"]
    return compare(cand_sample, ref_sample, budget, seed, orders, buckets, bootstrap,
                   client=client)


def split_half_yardstick(ref, budget: int, seed: int, orders=(1, 2, 3), buckets: int = 2**20,
                         bootstrap: int = 200, *, client=None) -> list[dict]:
    """``yardstick`` of a whole corpus (``sample.InMemory`` or ``sample.ScoreFiles``)."""
    streams = comparison_streams(seed)
    halves = ref.scan({h: streams[h] for h in ("half_a", "half_b")}, None).samples
    return yardstick(halves["half_a"], halves["half_b"], budget, seed, orders, buckets,
                     bootstrap, client=client)
