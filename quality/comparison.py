"""The full comparison of a candidate corpus with a reference, and the reference's yardstick.

``compare`` samples both corpora to one equal token budget (``budget``), counts each
sample's n-grams (``ngrams.count_sample`` over the score files the documents came from,
here or on a Dask cluster; in memory for corpora given without files), and gives every
n-gram metric (``ngram_metrics``) and perplexity metric (``ppl_metrics``) as rows, with
bootstrap CIs (``bootstrap``) for ppl_low_frac, ppl_tail_frac and ref_coverage_2.
``split_half_yardstick`` is compare(R half A, R half B): how far apart two samples of the
same human source are.
"""

from __future__ import annotations

import numpy as np

from semisynth.quality.bootstrap import bootstrap_ci, coverage_of_covered, covered_types_by_doc
from semisynth.quality.budget import doc_lengths, sample_to_budget, split_half, truncate_to_budget
from semisynth.quality.ngram_metrics import NGRAM_METRICS, frequent_ref_types, metrics_of_counts
from semisynth.quality.ngrams import DocumentFiles, NgramCounts, count_ngrams, count_sample
from semisynth.quality.ppl_metrics import ppl_low_frac, ppl_metrics, ppl_tail_frac


def sample_counts(sample: list[np.ndarray], indices, files: DocumentFiles | None, orders,
                  client=None) -> NgramCounts:
    """The n-gram counts of a sample (``truncate_to_budget(docs, indices, budget)``): from
    the score files ``files`` locates its documents in, by map-reduce (on ``client``'s
    cluster when given); without files, of the documents in memory."""
    if files is None:
        if client is not None:
            raise ValueError("counting on a Dask cluster needs the corpus's score files")
        return count_ngrams(sample, orders)
    return count_sample(files.sample_parts(indices[: len(sample)], len(sample[-1])), orders,
                        client)


def compare(cand_docs, cand_ppl, ref_docs, ref_ppl, budget: int, seed: int,
            orders=(1, 2, 3), buckets: int = 2**20, bootstrap: int = 200, *,
            cand_files: DocumentFiles | None = None, ref_files: DocumentFiles | None = None,
            client=None) -> list[dict]:
    """All metrics of candidate vs reference, both sampled to exactly `budget` tokens.

    Rows {metric, n, budget, value, ci_low, ci_high}; n is None for PPL metrics, ci is None where
    not bootstrapped (only ppl_low_frac, ppl_tail_frac and ref_coverage_2 are; bootstrap=0: none).
    The coverage CI is median-shifted (see bootstrap_ci): plain percentiles would sit below it.
    ``cand_files`` / ``ref_files``: where each side's documents are stored (the same values,
    counted from the files); ``client``: a ``distributed.Client`` to count them on.
    """
    for name, docs, ppl, files in (("candidate", cand_docs, cand_ppl, cand_files),
                                   ("reference", ref_docs, ref_ppl, ref_files)):
        if len(docs) != len(ppl):
            raise ValueError(f"{name} has {len(docs)} documents but {len(ppl)} perplexities")
        if files is not None and len(files) != len(docs):
            raise ValueError(f"{name} has {len(docs)} documents but {len(files)} in its files")
    # independent streams: when C is an edit of R (doc i <-> doc i), one shared permutation
    # would pick paired documents and make C look closer to R than an independent sample is
    cand_seed, ref_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    cand_idx = sample_to_budget(cand_docs, budget, cand_seed)
    ref_idx = sample_to_budget(ref_docs, budget, ref_seed)
    cand_toks = truncate_to_budget(cand_docs, cand_idx, budget)
    ref_toks = truncate_to_budget(ref_docs, ref_idx, budget)
    cand_ppl = np.asarray(cand_ppl, float)[cand_idx]
    ref_ppl = np.asarray(ref_ppl, float)[ref_idx]

    # each sample counted once: the reference's counts serve the metrics and the coverage CI
    ref_counts = sample_counts(ref_toks, ref_idx, ref_files, orders, client)
    cand_counts = sample_counts(cand_toks, cand_idx, cand_files, orders, client)
    values = ppl_metrics(cand_ppl, ref_ppl) | metrics_of_counts(cand_counts, ref_counts, orders,
                                                                buckets)
    cis = {}
    if bootstrap:
        cis["ppl_low_frac"] = bootstrap_ci(ppl_low_frac, cand_ppl, ref_ppl, bootstrap, seed)
        cis["ppl_tail_frac"] = bootstrap_ci(ppl_tail_frac, cand_ppl, ref_ppl, bootstrap, seed)
        if 2 in orders:  # per document, in memory: a resample is a multiset of documents
            ref_types = frequent_ref_types(*ref_counts.table(2))
            per_doc, n_types = covered_types_by_doc(cand_toks, ref_types, 2)
            cis["ref_coverage_2"] = bootstrap_ci(coverage_of_covered, per_doc, n_types,
                                                 bootstrap, seed, debias=True)

    rows = []
    for metric, value in values.items():
        n = int(metric.rsplit("_", 1)[1]) if metric.startswith(NGRAM_METRICS) else None
        low, high = cis.get(metric, (None, None))
        rows.append({"metric": metric, "n": n, "budget": budget, "value": value,
                     "ci_low": low, "ci_high": high})
    return rows


def split_half_yardstick(ref_docs, ref_ppl, budget: int, seed: int, orders=(1, 2, 3),
                         buckets: int = 2**20, bootstrap: int = 200, *,
                         files: DocumentFiles | None = None, client=None) -> list[dict]:
    """compare(R half A, R half B): how far apart two samples of the same human source are.
    ``files`` / ``client``: as compare's (``files`` locates the documents of R)."""
    half_a, half_b = split_half(len(ref_docs), seed)
    lengths, ref_ppl = doc_lengths(ref_docs), np.asarray(ref_ppl, float)
    for name, half in (("A", half_a), ("B", half_b)):
        tokens = int(lengths[half].sum())
        if tokens < budget:
            raise ValueError(f"reference half {name} has {tokens} tokens, "
                             f"fewer than the budget of {budget}")
    halves = (None, None) if files is None else (files.take(half_a), files.take(half_b))
    return compare([ref_docs[i] for i in half_a], ref_ppl[half_a],
                   [ref_docs[i] for i in half_b], ref_ppl[half_b],
                   budget, seed, orders, buckets, bootstrap,
                   cand_files=halves[0], ref_files=halves[1], client=client)
