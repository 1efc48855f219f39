"""Bootstrap confidence intervals of a metric, resampling candidate documents.

``bootstrap_ci`` is the percentile bootstrap (optionally median-shifted) of any
``fn(cand, ref)``. ``covered_types_by_doc`` and ``coverage_of_covered`` let it resample
ref_coverage without re-counting n-grams in every replicate.

Why not ``scipy.stats.bootstrap(method="percentile")``: with the same generator it draws the
same resamples, but it takes its percentiles with ``scipy.stats.quantile`` at
``(1 - confidence_level) / 2`` (0.025000000000000022 for 0.95, not 0.025), and on random
inputs about half of its intervals differ from ``np.quantile``'s in the last digits; and it
refuses a sample of one document, which an equal-budget sample of long documents can be.
The interval here is the textbook one, in a few lines.
"""

import numpy as np

from semisynth.quality.ngrams import ngram_keys_and_docs


# ours, not scipy.stats.bootstrap: see the module docstring
def bootstrap_ci(fn, cand, ref, reps: int = 200, seed: int = 0, alpha: float = 0.05,
                 debias: bool = False) -> tuple[float, float]:
    """Percentile bootstrap CI of fn(cand, ref), resampling candidate documents with replacement.

    cand is an array (one value per document, e.g. PPL) or a list (one item per document, e.g.
    token arrays); the reference stays fixed. debias=True shifts the interval by
    fn(cand, ref) - median(replicates): needed for type-counting statistics (coverage), where a
    resample holds only ~63% distinct documents, duplicates add no new types, and the replicates
    sit systematically below the estimate.
    """
    n = len(cand)
    draws = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    if isinstance(cand, np.ndarray):
        samples = cand[draws]  # all resamples in one gather
    else:
        samples = ([cand[i] for i in row] for row in draws)
    values = np.array([fn(sample, ref) for sample in samples], float)
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    if debias:
        shift = fn(cand, ref) - np.median(values)
        low, high = low + shift, high + shift
    return float(low), float(high)


def covered_types_by_doc(cand_docs, ref_types, n) -> tuple[list[np.ndarray], int]:
    """Per candidate document, the indices of the reference types (sorted unique n-gram keys,
    e.g. ``ngram_metrics.frequent_ref_types``) it contains; and how many types there are.

    Coverage of a resample depends only on which documents it holds, so the bootstrap can work
    on these small per-document sets instead of re-counting n-grams in every replicate.
    """
    keys, doc = ngram_keys_and_docs(cand_docs, n)
    pos = np.searchsorted(ref_types, keys)
    hit = pos < ref_types.size
    hit[hit] = ref_types[pos[hit]] == keys[hit]
    # dedupe (doc, type) pairs. With return_counts numpy sorts; without it, numpy 2.x takes a
    # hash path that is ~10x slower on a million distinct int64 keys
    pairs = np.unique(doc[hit] * max(ref_types.size, 1) + pos[hit], return_counts=True)[0]
    pair_doc, pair_type = np.divmod(pairs, max(ref_types.size, 1))
    per_doc = np.split(pair_type, np.searchsorted(pair_doc, np.arange(1, len(cand_docs))))
    return per_doc, ref_types.size


def coverage_of_covered(per_doc, n_types) -> float:
    """ref_coverage of the documents whose covered_types_by_doc are ``per_doc`` (NaN if
    ``n_types`` is 0)."""
    if n_types == 0:
        return float("nan")
    return np.count_nonzero(np.bincount(np.concatenate(per_doc), minlength=n_types)) / n_types
