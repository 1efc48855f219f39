"""Collapse metrics of a candidate corpus C against a reference corpus R.

See DESIGN.md, "Signals of collapse".

A corpus is a list of 1-D int arrays (token ids per document, vocab < 2**21) plus a 1-D float
array of per-document perplexities. Everything here is pure numpy: token work is done on one
concatenated stream with document offsets, never with a Python loop over tokens.
"""

import numpy as np
from scipy import stats

TOKEN_BITS = 21  # 3 tokens x 21 bits = 63 bits: a trigram packs exactly into a non-negative int64
TOKEN_MASK = (1 << TOKEN_BITS) - 1
MAX_ORDER = 3
HASH_MULT = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing constant (2**64 / golden ratio)
PPL_QUANTILES = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99)
NGRAM_METRICS = ("distinct", "top1pct_mass", "ref_coverage", "js")


# -----------------------------------------------------------------------------
# equal token budgets (n-gram statistics depend on sample size)

def _lengths(docs):
    return np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))


def sample_to_budget(docs: list[np.ndarray], budget: int, seed: int) -> list[int]:
    """Indices of documents, in a seeded random order, taken until their tokens reach `budget`."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    order = np.random.default_rng(seed).permutation(len(docs))
    cum = np.cumsum(_lengths(docs)[order])
    total = int(cum[-1]) if len(cum) else 0
    if total < budget:
        raise ValueError(f"corpus has {total} tokens, fewer than the budget of {budget}")
    last = int(np.searchsorted(cum, budget))  # first position whose running total reaches budget
    return order[: last + 1].tolist()


def truncate_to_budget(docs: list[np.ndarray], indices, budget: int) -> list[np.ndarray]:
    """The documents at `indices`, in that order, holding exactly `budget` tokens (last one cut)."""
    if budget <= 0:
        raise ValueError(f"budget must be positive, got {budget}")
    chosen = [docs[i] for i in indices]
    cum = np.cumsum(_lengths(chosen))
    total = int(cum[-1]) if len(cum) else 0
    if total < budget:
        raise ValueError(f"documents hold {total} tokens, fewer than the budget of {budget}")
    last = int(np.searchsorted(cum, budget))
    before = int(cum[last - 1]) if last > 0 else 0
    return chosen[:last] + [chosen[last][: budget - before]]


def split_half(n_docs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random partition of range(n_docs) into two halves (B gets the odd one out), each sorted."""
    order = np.random.default_rng(seed).permutation(n_docs)
    return np.sort(order[: n_docs // 2]), np.sort(order[n_docs // 2:])


# -----------------------------------------------------------------------------
# n-grams, packed exactly into int64 keys

def _ngram_keys_and_docs(docs, n):
    """Packed n-gram keys and the index of the document each one comes from."""
    if not 1 <= n <= MAX_ORDER:
        raise ValueError(f"n-gram order must be in 1..{MAX_ORDER}, got {n}")
    lengths = _lengths(docs)
    if lengths.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = np.concatenate([np.asarray(d).ravel() for d in docs]).astype(np.int64)
    if tokens.min() < 0 or tokens.max() > TOKEN_MASK:
        raise ValueError(f"token ids must lie in [0, 2**{TOKEN_BITS}), "
                         f"got {tokens.min()}..{tokens.max()}")
    starts = len(tokens) - n + 1
    if starts <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.zeros(starts, np.int64)
    for k in range(n):  # loop over the order (<= 3), not over tokens
        keys = (keys << TOKEN_BITS) | tokens[k : k + starts]
    doc_of_token = np.repeat(np.arange(len(docs)), lengths)
    # an n-gram is kept only if its first and last token lie in the same document
    inside = doc_of_token[:starts] == doc_of_token[n - 1 :]
    return keys[inside], doc_of_token[:starts][inside]


def ngram_keys(docs: list[np.ndarray], n: int) -> np.ndarray:
    """All n-grams within documents (never across a boundary), each packed into one int64."""
    return _ngram_keys_and_docs(docs, n)[0]


def unpack_ngram(key: int, n: int) -> tuple[int, ...]:
    """The token ids of a packed n-gram key (inverse of the packing in ngram_keys)."""
    key = int(key)
    return tuple((key >> (TOKEN_BITS * (n - 1 - k))) & TOKEN_MASK for k in range(n))


def ngram_counts(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys and their counts. (With return_counts numpy sorts; without it,
    numpy 2.x takes a hash path that is ~10x slower on a million distinct int64 keys.)"""
    return np.unique(keys, return_counts=True)


def distinct_n(keys: np.ndarray) -> float:
    """Unique n-grams / total n-grams (0.0 for no n-grams)."""
    return ngram_counts(keys)[0].size / keys.size if keys.size else 0.0


def top1pct_mass(counts: np.ndarray) -> float:
    """Share of occurrences held by the ceil(1% of types) most frequent types."""
    counts = np.asarray(counts)
    if counts.size == 0:
        return 0.0
    k = -(-counts.size // 100)  # integer ceil, no float rounding
    top = np.partition(counts, counts.size - k)[counts.size - k :]
    return float(top.sum() / counts.sum())


def _frequent_ref_types(ref_keys):
    # count >= 2: types seen once are mostly sampling noise, a candidate can't be asked to hit them
    types, counts = ngram_counts(ref_keys)
    return types[counts >= 2]


def _coverage_of_types(cand_types, frequent_ref_types):
    if frequent_ref_types.size == 0:
        return float("nan")
    return float(np.isin(frequent_ref_types, cand_types, assume_unique=True).mean())


def ref_coverage(cand_keys: np.ndarray, ref_keys: np.ndarray) -> float:
    """Share of the reference's n-gram types (count >= 2) found in the candidate (NaN if none)."""
    return _coverage_of_types(ngram_counts(cand_keys)[0], _frequent_ref_types(ref_keys))


def hash_buckets(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Fixed multiplicative hash of keys into [0, buckets), for any buckets <= 2**32."""
    if not 1 <= buckets <= 2**32:
        raise ValueError(f"buckets must be in 1..2**32, got {buckets}")
    mixed = np.asarray(keys).astype(np.uint64) * HASH_MULT  # wraps mod 2**64, as intended
    # the high 32 bits are the well-mixed ones; multiply-shift maps them onto [0, buckets)
    return ((mixed >> np.uint64(32)) * np.uint64(buckets) >> np.uint64(32)).astype(np.int64)


def js_divergence(cand_keys: np.ndarray, ref_keys: np.ndarray, buckets: int = 2**20) -> float:
    """Jensen-Shannon divergence (base 2, in [0, 1]) of the hashed n-gram distributions."""
    return _js_of_counts(*ngram_counts(cand_keys), *ngram_counts(ref_keys), buckets)


def _js_of_counts(cand_types, cand_counts, ref_types, ref_counts, buckets):
    # hashing types weighted by counts equals hashing every occurrence, with far fewer items
    if cand_types.size == 0 or ref_types.size == 0:
        return float("nan")
    p = np.bincount(hash_buckets(cand_types, buckets), cand_counts, buckets) / cand_counts.sum()
    q = np.bincount(hash_buckets(ref_types, buckets), ref_counts, buckets) / ref_counts.sum()
    m = 0.5 * (p + q)

    def kl_to_m(x):
        seen = x > 0  # 0 * log 0 = 0; m > 0 wherever x > 0
        return np.sum(x[seen] * np.log2(x[seen] / m[seen]))

    return float(np.clip(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0, 1.0))


def ngram_metrics(cand_docs, ref_docs, orders=(1, 2, 3), buckets: int = 2**20) -> dict[str, float]:
    """distinct_n, top1pct_mass_n, ref_coverage_n, js_n for each order n (same as the functions
    above, but each corpus is counted once per order)."""
    out = {}
    for n in orders:
        cand_types, cand_counts = ngram_counts(ngram_keys(cand_docs, n))
        ref_types, ref_counts = ngram_counts(ngram_keys(ref_docs, n))
        total = cand_counts.sum()
        out[f"distinct_{n}"] = float(cand_types.size / total) if total else 0.0
        out[f"top1pct_mass_{n}"] = top1pct_mass(cand_counts)
        out[f"ref_coverage_{n}"] = _coverage_of_types(cand_types, ref_types[ref_counts >= 2])
        out[f"js_{n}"] = _js_of_counts(cand_types, cand_counts, ref_types, ref_counts, buckets)
    return out


def rank_frequency(keys: np.ndarray, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The `top` most frequent n-gram keys and counts, most frequent first (ties: smaller key)."""
    types, counts = ngram_counts(keys)
    order = np.argsort(-counts, kind="stable")[:top]
    return types[order], counts[order]


# -----------------------------------------------------------------------------
# perplexity distribution

def ppl_low_frac(cand_ppl, ref_ppl) -> float:
    """Share of candidate documents with PPL <= the reference's 25th percentile (human: ~0.25)."""
    return float(np.mean(np.asarray(cand_ppl) <= np.quantile(ref_ppl, 0.25)))


def ppl_tail_frac(cand_ppl, ref_ppl) -> float:
    """Share of candidate documents with PPL >= the reference's 90th percentile (human: ~0.10)."""
    return float(np.mean(np.asarray(cand_ppl) >= np.quantile(ref_ppl, 0.90)))


def ppl_metrics(cand_ppl, ref_ppl) -> dict[str, float]:
    cand_ppl, ref_ppl = np.asarray(cand_ppl, float), np.asarray(ref_ppl, float)
    out = {f"ppl_q{round(q * 100):02d}": float(v)
           for q, v in zip(PPL_QUANTILES, np.quantile(cand_ppl, PPL_QUANTILES), strict=True)}
    out["ppl_low_frac"] = ppl_low_frac(cand_ppl, ref_ppl)
    out["ppl_tail_frac"] = ppl_tail_frac(cand_ppl, ref_ppl)
    # on log scale: PPL is multiplicative, and the tail would otherwise dominate W1
    log_cand, log_ref = np.log(cand_ppl), np.log(ref_ppl)
    out["ppl_ks"] = float(stats.ks_2samp(log_cand, log_ref).statistic)
    out["ppl_w1"] = float(stats.wasserstein_distance(log_cand, log_ref))
    return out


def log_bins(all_ppl, num: int = 40) -> np.ndarray:
    """num log-spaced bins (num + 1 edges) spanning every finite positive PPL of all corpora."""
    ppl = np.asarray(all_ppl, float)
    ppl = ppl[np.isfinite(ppl) & (ppl > 0)]
    if ppl.size == 0:
        raise ValueError("no finite positive perplexities to bin")
    low, high = ppl.min(), ppl.max()
    if low == high:  # one distinct value: widen so the bins have width
        low, high = low / 1.01, high * 1.01
    return np.geomspace(low, high, num + 1)


def ppl_histogram(ppl, bins) -> list[dict]:
    """Rows {bin_low, bin_high, documents} (as np.histogram: last bin closed, outside dropped)."""
    counts, edges = np.histogram(np.asarray(ppl, float), bins=bins)
    return [{"bin_low": float(lo), "bin_high": float(hi), "documents": int(c)}
            for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)]


# -----------------------------------------------------------------------------
# uncertainty and the full comparison

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


def _covered_types_by_doc(cand_docs, ref_docs, n):
    """Per candidate document, the indices of the frequent reference types it contains.

    Coverage of a resample depends only on which documents it holds, so the bootstrap can work
    on these small per-document sets instead of re-counting n-grams in every replicate.
    """
    ref_types = _frequent_ref_types(ngram_keys(ref_docs, n))
    keys, doc = _ngram_keys_and_docs(cand_docs, n)
    pos = np.searchsorted(ref_types, keys)
    hit = pos < ref_types.size
    hit[hit] = ref_types[pos[hit]] == keys[hit]
    pairs = ngram_counts(doc[hit] * max(ref_types.size, 1) + pos[hit])[0]  # dedupe (doc, type)
    pair_doc, pair_type = np.divmod(pairs, max(ref_types.size, 1))
    per_doc = np.split(pair_type, np.searchsorted(pair_doc, np.arange(1, len(cand_docs))))
    return per_doc, ref_types.size


def _coverage_of_covered(per_doc, n_types):
    if n_types == 0:
        return float("nan")
    return np.count_nonzero(np.bincount(np.concatenate(per_doc), minlength=n_types)) / n_types


def compare(cand_docs, cand_ppl, ref_docs, ref_ppl, budget: int, seed: int,
            orders=(1, 2, 3), buckets: int = 2**20, bootstrap: int = 200) -> list[dict]:
    """All metrics of candidate vs reference, both sampled to exactly `budget` tokens.

    Rows {metric, n, budget, value, ci_low, ci_high}; n is None for PPL metrics, ci is None where
    not bootstrapped (only ppl_low_frac, ppl_tail_frac and ref_coverage_2 are; bootstrap=0: none).
    The coverage CI is median-shifted (see bootstrap_ci): plain percentiles would sit below it.
    """
    for name, docs, ppl in (("candidate", cand_docs, cand_ppl), ("reference", ref_docs, ref_ppl)):
        if len(docs) != len(ppl):
            raise ValueError(f"{name} has {len(docs)} documents but {len(ppl)} perplexities")
    # independent streams: when C is an edit of R (doc i <-> doc i), one shared permutation
    # would pick paired documents and make C look closer to R than an independent sample is
    cand_seed, ref_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    cand_idx = sample_to_budget(cand_docs, budget, cand_seed)
    ref_idx = sample_to_budget(ref_docs, budget, ref_seed)
    cand_toks = truncate_to_budget(cand_docs, cand_idx, budget)
    ref_toks = truncate_to_budget(ref_docs, ref_idx, budget)
    cand_ppl = np.asarray(cand_ppl, float)[cand_idx]
    ref_ppl = np.asarray(ref_ppl, float)[ref_idx]

    values = ppl_metrics(cand_ppl, ref_ppl) | ngram_metrics(cand_toks, ref_toks, orders, buckets)
    cis = {}
    if bootstrap:
        cis["ppl_low_frac"] = bootstrap_ci(ppl_low_frac, cand_ppl, ref_ppl, bootstrap, seed)
        cis["ppl_tail_frac"] = bootstrap_ci(ppl_tail_frac, cand_ppl, ref_ppl, bootstrap, seed)
        if 2 in orders:
            per_doc, n_types = _covered_types_by_doc(cand_toks, ref_toks, 2)
            cis["ref_coverage_2"] = bootstrap_ci(_coverage_of_covered, per_doc, n_types,
                                                 bootstrap, seed, debias=True)

    rows = []
    for metric, value in values.items():
        n = int(metric.rsplit("_", 1)[1]) if metric.startswith(NGRAM_METRICS) else None
        low, high = cis.get(metric, (None, None))
        rows.append({"metric": metric, "n": n, "budget": budget, "value": value,
                     "ci_low": low, "ci_high": high})
    return rows


def split_half_yardstick(ref_docs, ref_ppl, budget: int, seed: int, orders=(1, 2, 3),
                         buckets: int = 2**20, bootstrap: int = 200) -> list[dict]:
    """compare(R half A, R half B): how far apart two samples of the same human source are."""
    half_a, half_b = split_half(len(ref_docs), seed)
    lengths, ref_ppl = _lengths(ref_docs), np.asarray(ref_ppl, float)
    for name, half in (("A", half_a), ("B", half_b)):
        tokens = int(lengths[half].sum())
        if tokens < budget:
            raise ValueError(f"reference half {name} has {tokens} tokens, "
                             f"fewer than the budget of {budget}")
    return compare([ref_docs[i] for i in half_a], ref_ppl[half_a],
                   [ref_docs[i] for i in half_b], ref_ppl[half_b],
                   budget, seed, orders, buckets, bootstrap)
