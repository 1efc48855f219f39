"""N-gram metrics of a candidate corpus against a reference, from their count tables.

See README.md, "Metrics". For each order n: ``distinct_n`` (types / n-grams),
``top1pct_mass_n`` (the share of occurrences held by the most frequent 1% of types),
``ref_coverage_n`` (the share of the reference's types seen at least twice that the candidate
has) and ``js_n`` (the Jensen-Shannon divergence, base 2, of the two n-gram distributions
hashed into a fixed number of buckets). ``metrics_of_counts`` computes them from two
``ngrams.NgramCounts``; ``ngram_metrics`` counts documents in memory first,
``shard_ngram_metrics`` whole score files (by ``ngrams.count_sample``: here, or on a Dask
cluster). All give identical values.
"""

from __future__ import annotations

import numpy as np

from semisynth.quality.ngrams import NgramCounts, count_ngrams, count_sample, whole_files

NGRAM_METRICS = ("distinct", "top1pct_mass", "ref_coverage", "js")
HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant (2**64 / golden ratio)


def distinct_of_table(types: np.ndarray, counts: np.ndarray) -> float:
    """Types / n-grams of a count table (0.0 for an empty one)."""
    total = counts.sum()
    return float(types.size / total) if total else 0.0


def top1pct_mass(counts: np.ndarray) -> float:
    """Share of occurrences held by the ceil(1% of types) most frequent types."""
    counts = np.asarray(counts)
    if counts.size == 0:
        return 0.0
    k = -(-counts.size // 100)  # integer ceil, no float rounding
    top = np.partition(counts, counts.size - k)[counts.size - k :]
    return float(top.sum() / counts.sum())


def frequent_ref_types(types: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The reference types that ref_coverage asks the candidate for: those seen twice or more."""
    # types seen once are mostly sampling noise, a candidate can't be asked to hit them
    return types[counts >= 2]


def coverage_of_types(cand_types: np.ndarray, frequent_ref_types: np.ndarray) -> float:
    """Share of ``frequent_ref_types`` among ``cand_types`` (both sorted, unique; NaN if
    there are no frequent reference types)."""
    # in their merged order a reference type that the candidate has sits right next to its
    # twin (a stable sort of two sorted runs is one linear merge)
    if frequent_ref_types.size == 0:
        return float("nan")
    merged = np.sort(np.concatenate([frequent_ref_types, cand_types]), kind="stable")
    return np.count_nonzero(merged[1:] == merged[:-1]) / frequent_ref_types.size


def hash_buckets(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Fixed multiplicative hash of keys into [0, buckets), for any buckets <= 2**32."""
    if not 1 <= buckets <= 2**32:
        raise ValueError(f"buckets must be in 1..2**32, got {buckets}")
    mixed = np.asarray(keys).astype(np.uint64) * HASH_MULT  # wraps mod 2**64, as intended
    # the high 32 bits are the well-mixed ones; multiply-shift maps them onto [0, buckets)
    return ((mixed >> np.uint64(32)) * np.uint64(buckets) >> np.uint64(32)).astype(np.int64)


def js_of_tables(cand_types, cand_counts, ref_types, ref_counts, buckets: int) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of two count tables' distributions,
    each hashed into ``buckets`` buckets (NaN if either table is empty)."""
    # imported here, not with the module: loading a config imports this module (through
    # the metrics' declarations, builtin_metrics) and scipy's import takes most of a second
    # lazy: scipy, loaded only when this runs
    from scipy.spatial.distance import jensenshannon

    if cand_types.size == 0 or ref_types.size == 0:
        return float("nan")
    # hashing types weighted by counts equals hashing every occurrence, with far fewer items
    p = np.bincount(hash_buckets(cand_types, buckets), cand_counts, buckets)
    q = np.bincount(hash_buckets(ref_types, buckets), ref_counts, buckets)
    # scipy normalises p and q and returns the distance, the divergence's square root; for
    # (nearly) identical distributions rounding can leave the divergence a hair below 0,
    # whose root is NaN: that divergence is 0
    with np.errstate(invalid="ignore"):
        distance = jensenshannon(p, q, base=2)
    return float(np.clip(distance * distance, 0.0, 1.0)) if np.isfinite(distance) else 0.0


def metrics_of_counts(cand: NgramCounts, ref: NgramCounts, orders=(1, 2, 3),
                      buckets: int = 2**20) -> dict[str, float]:
    """distinct_n, top1pct_mass_n, ref_coverage_n, js_n for each order n, from the counts of
    the candidate and of the reference."""
    cand_tables, ref_tables = cand.tables(orders), ref.tables(orders)
    out = {}
    for n in orders:
        (cand_types, cand_counts), (ref_types, ref_counts) = cand_tables[n], ref_tables[n]
        out[f"distinct_{n}"] = distinct_of_table(cand_types, cand_counts)
        out[f"top1pct_mass_{n}"] = top1pct_mass(cand_counts)
        out[f"ref_coverage_{n}"] = coverage_of_types(cand_types,
                                                     frequent_ref_types(ref_types, ref_counts))
        out[f"js_{n}"] = js_of_tables(cand_types, cand_counts, ref_types, ref_counts, buckets)
    return out


def ngram_metrics(cand_docs, ref_docs, orders=(1, 2, 3), buckets: int = 2**20) -> dict[str, float]:
    """metrics_of_counts of two corpora in memory (lists of token id arrays), each counted once."""
    return metrics_of_counts(count_ngrams(cand_docs, orders), count_ngrams(ref_docs, orders),
                             orders, buckets)


def shard_ngram_metrics(cand_paths, ref_paths, orders=(1, 2, 3), buckets: int = 2**20,
                        column: str = "token_ids", client=None) -> dict[str, float]:
    """metrics_of_counts of two corpora stored as Parquet files (every row of each), each
    counted by ``count_sample``: here, one file at a time, or on the Dask cluster of
    ``client``."""
    orders = tuple(orders)
    return metrics_of_counts(count_sample(whole_files(cand_paths), orders, client, column),
                             count_sample(whole_files(ref_paths), orders, client, column),
                             orders, buckets)
