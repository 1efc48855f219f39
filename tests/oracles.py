"""Test oracles: the n-gram metrics written out plainly over flat arrays of n-gram keys.

Straightforward implementations (one document at a time, per-occurrence hashing, np.isin)
of what ``semisynth.quality.ngrams`` and ``ngram_metrics`` compute from count tables; the
tests check the package against them. Keys are packed as the package packs them (its
``TOKEN_BITS``), and the JS buckets are the package's ``hash_buckets``: both are part of
the metrics' definition.
"""

import numpy as np

from semisynth.quality.ngram_metrics import hash_buckets
from semisynth.quality.ngrams import MAX_ORDER, TOKEN_BITS


def ngram_keys(docs: list[np.ndarray], n: int) -> np.ndarray:
    """All n-grams within documents (never across a boundary), each packed into one int64."""
    if not 1 <= n <= MAX_ORDER:
        raise ValueError(f"n-gram order must be in 1..{MAX_ORDER}, got {n}")
    keys = [np.zeros(0, np.int64)]
    for doc in docs:
        doc = np.asarray(doc).ravel().astype(np.int64)
        if doc.size and (doc.min() < 0 or doc.max() >= 1 << TOKEN_BITS):
            raise ValueError(f"token ids must lie in [0, 2**{TOKEN_BITS})")
        if doc.size < n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(doc, n)
        packed = np.zeros(len(windows), np.int64)
        for k in range(n):
            packed = (packed << TOKEN_BITS) | windows[:, k]
        keys.append(packed)
    return np.concatenate(keys)


def ngram_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and their counts."""
    return np.unique(keys, return_counts=True)


def distinct_n(keys: np.ndarray) -> float:
    """Unique n-grams / total n-grams (0.0 for no n-grams)."""
    return np.unique(keys).size / keys.size if keys.size else 0.0


def ref_coverage(cand_keys: np.ndarray, ref_keys: np.ndarray) -> float:
    """Share of the reference's n-gram types (count >= 2) found in the candidate (NaN if none)."""
    types, counts = np.unique(ref_keys, return_counts=True)
    frequent = types[counts >= 2]
    return float(np.isin(frequent, cand_keys).mean()) if frequent.size else float("nan")


def js_divergence(cand_keys: np.ndarray, ref_keys: np.ndarray, buckets: int = 2**20) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of the hashed n-gram distributions,
    hashing every occurrence."""
    if cand_keys.size == 0 or ref_keys.size == 0:
        return float("nan")
    p = np.bincount(hash_buckets(cand_keys, buckets), minlength=buckets) / cand_keys.size
    q = np.bincount(hash_buckets(ref_keys, buckets), minlength=buckets) / ref_keys.size
    m = 0.5 * (p + q)
    total = sum(0.5 * np.sum(x[x > 0] * np.log2(x[x > 0] / m[x > 0])) for x in (p, q))
    return float(np.clip(total, 0.0, 1.0))


def rank_frequency(keys: np.ndarray, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The `top` most frequent n-gram keys and counts, most frequent first (ties: smaller key)."""
    types, counts = np.unique(keys, return_counts=True)
    order = sorted(range(types.size), key=lambda i: (-counts[i], types[i]))[:top]
    return types[order], counts[order]
