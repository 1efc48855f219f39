"""The full comparison of a candidate corpus with a reference, and the reference's yardstick.

``compare`` takes each side's sample (``quality.sample``: documents in their stream's key
order) to one equal token budget, counts each sample's n-grams (``ngrams.count_sample`` over
the score files the documents came from, here or on a Dask cluster; in memory for a sample
held in memory), and gives every registered metric (``metric_registry``: the built-in
perplexity and n-gram metrics of ``builtin_metrics``, then the plug-ins) as rows, with the
bootstrap CIs the metrics declare (built-in: ppl_low_frac, ppl_tail_frac, ref_coverage_2). ``yardstick`` is compare(R half A, R half B): how far
apart two samples of the same human source are. ``compare_corpora`` and
``split_half_yardstick`` draw the samples of whole corpora first (tests, benchmarks).
"""

from __future__ import annotations

import numpy as np

from semisynth import metric_registry
from semisynth.metric_registry import MetricInputs
from semisynth.quality.ngrams import NgramCounts, count_ngrams, count_sample
from semisynth.quality.ppl_metrics import scored
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
    """Every registered metric (``metric_registry.computed``) of candidate vs reference, both
    samples taken to exactly ``budget`` tokens.

    Rows {metric, n, budget, value, ci_low, ci_high}; n is the order of a per-order metric
    (None for the others), ci is None where the metric declares no bootstrap interval
    (built-in: only ppl_low_frac, ppl_tail_frac and ref_coverage_2; bootstrap=0: none). A
    metric that reads perplexities is left out when a side has no document with one.
    ``client``: a ``distributed.Client`` to count the samples' n-grams on. ``names`` name the
    two sides in the error of a sample shorter than the budget.
    """
    cand, cand_last = cand.to_budget(budget, names[0])
    ref, ref_last = ref.to_budget(budget, names[1])
    orders = tuple(orders)
    # each sample counted once: the reference's counts serve every metric and the coverage CI
    counts = {"reference": sample_counts(ref, ref_last, orders, client),
              "candidate": sample_counts(cand, cand_last, orders, client)}
    # a document too short to score (fewer than 2 tokens) counts for the n-grams, not here
    cand_ppl, ref_ppl = scored(cand.ppl), scored(ref.ppl)
    inputs = MetricInputs(cand_ppl, ref_ppl, orders, buckets, bootstrap, seed,
                          lambda side: counts[side].tables(orders),
                          lambda: cand.token_arrays(cand_last))
    has_ppl = bool(len(cand_ppl) and len(ref_ppl))
    rows = []
    for metric, n in metric_registry.computed(orders):
        if metric.reads == "perplexity" and not has_ppl:
            continue  # none to measure: no row, which the gate fails as missing
        low = high = None
        if bootstrap and metric.ci is not None and (metric.ci_orders is None
                                                    or n in metric.ci_orders):
            low, high = metric.ci(inputs, n)
        rows.append({"metric": metric.metric_name(n), "n": n, "budget": budget,
                     "value": float(metric.compute(inputs, n)), "ci_low": low, "ci_high": high})
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
