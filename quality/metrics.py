"""Collapse metrics of a candidate corpus C against a reference corpus R.

See DESIGN.md, "Signals of collapse".

A corpus is a list of 1-D int arrays (token ids per document, vocab < 2**21) plus a 1-D float
array of per-document perplexities. Everything here is pure numpy: token work is done on one
concatenated stream with document offsets, never with a Python loop over tokens.

The n-gram statistics come from count tables (NgramCounts), which map-reduce over shards:
``count_shard(path)`` counts one Parquet shard of token ids (the map), ``merge_counts`` /
``CountReducer`` merge tables (the reduce, in bounded memory), ``metrics_of_counts`` turns
the merged tables of a candidate and a reference into the metrics. ``ngram_metrics`` (and so
``compare``) runs the same code on documents in memory; ``shard_ngram_metrics`` runs it over
shard files here, ``dask_ngram_metrics`` on a Dask cluster. All give identical values.
"""

from dataclasses import dataclass
from functools import partial

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
    _check_tokens(tokens)
    starts = len(tokens) - n + 1
    if starts <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = _packed_all(tokens, n, starts)
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


def _frequent_ref_types(types, counts):
    # count >= 2: types seen once are mostly sampling noise, a candidate can't be asked to hit them
    return types[counts >= 2]


def _coverage_of_types(cand_types, frequent_ref_types):
    # both sorted and unique: in their merged order a reference type that the candidate has
    # sits right next to its twin (a stable sort of two sorted runs is one linear merge)
    if frequent_ref_types.size == 0:
        return float("nan")
    merged = np.sort(np.concatenate([frequent_ref_types, cand_types]), kind="stable")
    return np.count_nonzero(merged[1:] == merged[:-1]) / frequent_ref_types.size


def ref_coverage(cand_keys: np.ndarray, ref_keys: np.ndarray) -> float:
    """Share of the reference's n-gram types (count >= 2) found in the candidate (NaN if none)."""
    return _coverage_of_types(ngram_counts(cand_keys)[0], _frequent_ref_types(*ngram_counts(ref_keys)))


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
        x = x[seen]
        terms = np.divide(x, m[seen])  # in place from here: x * log2(x / m), no temporaries
        np.log2(terms, out=terms)
        np.multiply(x, terms, out=terms)
        return np.sum(terms)

    return float(np.clip(0.5 * kl_to_m(p) + 0.5 * kl_to_m(q), 0.0, 1.0))


def ngram_metrics(cand_docs, ref_docs, orders=(1, 2, 3), buckets: int = 2**20) -> dict[str, float]:
    """distinct_n, top1pct_mass_n, ref_coverage_n, js_n for each order n (same values as the
    single-metric functions above): each corpus is counted once, into a count table."""
    return metrics_of_counts(count_ngrams(cand_docs, orders), count_ngrams(ref_docs, orders),
                             orders, buckets)


def rank_frequency(keys: np.ndarray, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The `top` most frequent n-gram keys and counts, most frequent first (ties: smaller key)."""
    return top_of_table(*ngram_counts(keys), top)


def top_of_table(types: np.ndarray, counts: np.ndarray, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """rank_frequency of a count table (sorted unique types and their counts)."""
    order = np.argsort(-np.asarray(counts), kind="stable")[:top]
    return types[order], counts[order]


# -----------------------------------------------------------------------------
# count tables, map-reduce over shards
#
# map:    count_shard(path) / count_ngrams(docs) -> NgramCounts. Only the highest order is
#         sorted (one sort per shard, no Python loop over tokens; a radix sort over 16-bit
#         dense token ranks, or one uint32 per n-gram, where they fit): every lower-order n-gram is
#         the prefix of an (n+1)-gram except each document's last one, so table n is the
#         prefix sums of table n+1 (linear: prefixes of sorted keys are sorted) plus those
#         "tails" (one per document)
# reduce: merge_counts([...]) / CountReducer -> NgramCounts of the union. Tables are sorted
#         runs: a stable sort (timsort merges runs) plus a segmented sum, done in key-range
#         pieces that fit the cache
# then:   metrics_of_counts(candidate, reference) -> the metrics of ngram_metrics, identical
#         values (a merged table is exactly the table of counting all documents at once)

EMPTY_TABLE = (np.zeros(0, np.int64), np.zeros(0, np.int64))
MERGE_PIECE = 1 << 18  # rows per piece of a merge: its keys, counts and sort order fit in L2/L3
_U32_SENTINEL = np.uint32(0xFFFFFFFF)


@dataclass(frozen=True)
class NgramCounts:
    """The n-gram counts of some documents, orders 1..``order``.

    ``top``: the table of order ``order``: (sorted unique packed keys as in ngram_keys, their
    int64 counts). ``tails[n]`` (n < order): the same for the last n-gram of each document of
    at least n tokens. ``table(n)`` / ``tables(orders)`` give the full table of any order.
    What a map task returns and the reduce merges: its size grows with the distinct n-grams,
    not with the tokens, and it pickles as a few numpy arrays."""

    order: int
    top: tuple[np.ndarray, np.ndarray]
    tails: dict[int, tuple[np.ndarray, np.ndarray]]
    tokens: int = 0
    documents: int = 0

    @property
    def entries(self) -> int:
        """Rows stored (what merge work and memory scale with)."""
        return self.top[0].size + sum(t.size for t, _ in self.tails.values())

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes + c.nbytes for t, c in (self.top, *self.tails.values()))

    def tables(self, orders=None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """{n: (sorted unique keys of order n, counts)} for the given orders (default: all)."""
        orders = tuple(orders or range(1, self.order + 1))
        if any(not 1 <= n <= self.order for n in orders):
            raise ValueError(f"orders {orders} not in 1..{self.order}")
        out, table = {}, self.top
        for n in range(self.order, min(orders) - 1, -1):
            if n < self.order:  # prefixes of the (n+1)-grams, plus the documents' last n-grams
                types, run = _run_lengths(table[0] >> TOKEN_BITS)
                prefix = (types, np.add.reduceat(table[1], np.cumsum(run) - run) if run.size
                          else EMPTY_TABLE[1])
                table = _merge_tables([prefix, self.tails[n]])
            if n in orders:
                out[n] = table
        return {n: out[n] for n in orders}

    def table(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        return self.tables((n,))[n]


def _run_lengths(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values of a sorted array and how often each occurs (np.unique without its sort)."""
    size = sorted_keys.size
    if size == 0:
        return sorted_keys[:0], np.zeros(0, np.int64)
    first = np.empty(size, bool)
    first[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    counts = np.empty(starts.size, np.int64)
    np.subtract(starts[1:], starts[:-1], out=counts[:-1])
    counts[-1] = size - starts[-1]
    return sorted_keys[starts], counts


def _check_tokens(tokens: np.ndarray) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() > TOKEN_MASK):
        raise ValueError(f"token ids must lie in [0, 2**{TOKEN_BITS}), "
                         f"got {tokens.min()}..{tokens.max()}")


def _check_orders(orders) -> int:
    orders = tuple(orders)
    if not orders or any(not 1 <= n <= MAX_ORDER for n in orders):
        raise ValueError(f"n-gram orders must be in 1..{MAX_ORDER}, got {orders}")
    return max(orders)


def _packed_at(tokens: np.ndarray, starts: np.ndarray, n: int) -> np.ndarray:
    keys = np.zeros(starts.size, np.int64)
    for k in range(n):  # loop over the order (<= 3), not over tokens
        keys = (keys << TOKEN_BITS) | tokens[starts + k]
    return keys


def _count_order(tokens: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The count table of the n-grams within documents: one sort of all of them."""
    size = tokens.size
    starts = size - n + 1
    if starts <= 0:
        return EMPTY_TABLE
    if n == 1:
        counts = np.bincount(tokens)
        types = np.flatnonzero(counts)
        return types.astype(np.int64), counts[types].astype(np.int64)
    # start positions whose n-gram would span a document boundary
    cross = (offsets[1:-1, None] - np.arange(1, n)[None, :]).ravel()
    cross = np.unique(cross[(cross >= 0) & (cross < starts)])
    # dense ranks of the tokens present (rank order is token order, so sorting n-grams of
    # ranks sorts them in packed-key order): short keys sort faster than packed int64 keys
    present = np.flatnonzero(np.bincount(tokens))
    width = present.size
    if width**n < 2**32:  # one uint32 per n-gram, sorted
        rank = np.zeros(present[-1] + 1, np.uint32)
        rank[present] = np.arange(width, dtype=np.uint32)
        dense = rank[tokens]
        keys = dense[:starts].copy()
        for k in range(1, n):
            keys *= np.uint32(width)
            keys += dense[k : k + starts]
        keys[cross] = _U32_SENTINEL  # sorts last, cut off
        keys.sort()
        types, counts = _run_lengths(keys[: starts - cross.size])
        packed = np.zeros(types.size, np.int64)
        for k in range(n):  # dense ranks back to packed token ids, last token first
            types, digit = np.divmod(types, np.uint32(width)) if k < n - 1 else (None, types)
            packed |= present[digit].astype(np.int64) << (TOKEN_BITS * k)
        return packed, counts
    if width < 2**16:  # LSD radix sort: one stable pass per token, numpy's radix sort on uint16
        rank = np.zeros(present[-1] + 1, np.uint16)
        rank[present] = np.arange(width, dtype=np.uint16)
        dense = rank[tokens]
        first = dense[:starts].copy()
        first[cross] = 0xFFFF  # no token has this rank: they sort last, cut off
        order = np.argsort(dense[n - 1 : n - 1 + starts], kind="stable")
        for k in range(n - 2, 0, -1):
            order = order[np.argsort(dense[k : k + starts][order], kind="stable")]
        order = order[np.argsort(first[order], kind="stable")]
        return _run_lengths(_packed_all(tokens, n, starts)[order[: starts - cross.size]])
    keys = _packed_all(tokens, n, starts)
    keys[cross] = -1  # sorts first, cut off
    keys.sort()
    return _run_lengths(keys[cross.size :])


def _packed_all(tokens: np.ndarray, n: int, starts: int) -> np.ndarray:
    wide = tokens.astype(np.int64, copy=False)
    keys = wide[:starts].copy()
    for k in range(1, n):
        keys <<= TOKEN_BITS
        keys |= wide[k : k + starts]
    return keys


def count_stream(tokens: np.ndarray, offsets: np.ndarray, orders=(1, 2, 3)) -> NgramCounts:
    """Counts of documents given as one token stream and document offsets (document i is
    ``tokens[offsets[i]:offsets[i + 1]]``; offsets[0] == 0, offsets[-1] == len(tokens))."""
    top = _check_orders(orders)
    tokens = np.asarray(tokens).ravel()
    if tokens.dtype.kind not in "iu":
        tokens = tokens.astype(np.int64)
    offsets = np.asarray(offsets, np.int64).ravel()
    if offsets.size == 0 or offsets[0] != 0 or offsets[-1] != tokens.size or np.any(np.diff(offsets) < 0):
        raise ValueError("offsets must rise from 0 to the number of tokens")
    _check_tokens(tokens)
    if tokens.dtype == np.uint64:  # numpy will not index or bincount with it
        tokens = tokens.astype(np.int64)
    ends, lengths = offsets[1:], np.diff(offsets)
    tails = {}
    for n in range(1, top):
        keys = _packed_at(tokens, ends[lengths >= n] - n, n)
        tails[n] = np.unique(keys, return_counts=True)
    return NgramCounts(top, _count_order(tokens, offsets, top), tails,
                       tokens=int(tokens.size), documents=int(offsets.size - 1))


def count_ngrams(docs: list[np.ndarray], orders=(1, 2, 3)) -> NgramCounts:
    """Counts of a list of documents (token id arrays): the map step on documents in memory."""
    lengths = _lengths(docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = (np.concatenate([np.asarray(d).ravel() for d in docs]) if lengths.sum()
              else np.zeros(0, np.int64))
    return count_stream(tokens, offsets, orders)


def count_shard(path, orders=(1, 2, 3), column: str = "token_ids") -> NgramCounts:
    """The map step: the counts of one Parquet shard whose ``column`` holds each document's
    token ids (a list column, as in the score files). A plain function of a path: submit it
    to Dask (``client.map(count_shard, paths)``) or any executor."""
    import pyarrow.parquet as pq

    # no reader threads: a map task is one unit of work on one core (Dask runs many at once)
    ids = pq.ParquetFile(path).read(columns=[column], use_threads=False).column(column).combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    tokens = ids.values.to_numpy()[offsets[0] : offsets[-1]]
    return count_stream(tokens, offsets - offsets[0], orders)


def _merge_small(tables):
    keys = np.concatenate([t for t, _ in tables])
    counts = np.concatenate([c for _, c in tables])
    order = np.argsort(keys, kind="stable")  # timsort: merges the sorted runs, ~linear
    types, run = _run_lengths(keys[order])
    return types, np.add.reduceat(counts[order], np.cumsum(run) - run)


def _merge_tables(tables: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The sum of count tables (each sorted by key, keys unique)."""
    tables = [t for t in tables if t[0].size]
    if len(tables) <= 1:
        return tables[0] if tables else EMPTY_TABLE
    total = sum(t.size for t, _ in tables)
    if total <= MERGE_PIECE:
        return _merge_small(tables)
    # cut the key space at quantiles of the largest table; each piece merges on its own
    largest = max((t for t, _ in tables), key=len)
    pieces = -(-total // MERGE_PIECE)
    bounds = np.unique(largest[np.arange(1, pieces) * largest.size // pieces])
    cuts = [np.concatenate([[0], np.searchsorted(t, bounds), [t.size]]) for t, _ in tables]
    merged = [_merge_small([(t[c[i] : c[i + 1]], n[c[i] : c[i + 1]])
                            for (t, n), c in zip(tables, cuts, strict=True)])
              for i in range(bounds.size + 1)]
    return np.concatenate([t for t, _ in merged]), np.concatenate([c for _, c in merged])


def merge_counts(parts) -> NgramCounts:
    """The reduce step: the counts of the union of the parts' documents (equal to counting them
    all at once). Parts must be of the same order."""
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("nothing to merge")
    order = parts[0].order
    if any(p.order != order for p in parts):
        raise ValueError(f"counts of different orders: {sorted({p.order for p in parts})}")
    return NgramCounts(order, _merge_tables([p.top for p in parts]),
                       {n: _merge_tables([p.tails[n] for p in parts]) for n in range(1, order)},
                       tokens=sum(p.tokens for p in parts),
                       documents=sum(p.documents for p in parts))


class CountReducer:
    """Merges counts as they arrive, in bounded memory: parts wait until they hold as many rows
    as the running total (or ``fan_in`` of them wait), then all are merged at once. The merge
    work stays within twice that of one merge of everything, and memory within about twice the
    final table plus one part, however many shards there are."""

    def __init__(self, fan_in: int = 16):
        self.fan_in = fan_in
        self._total: NgramCounts | None = None
        self._waiting: list[NgramCounts] = []
        self.merges = 0

    def add(self, part: NgramCounts) -> None:
        self._waiting.append(part)
        waiting = sum(p.entries for p in self._waiting)
        if (self._total is None or waiting >= self._total.entries
                or len(self._waiting) >= self.fan_in):
            self._merge()

    def _merge(self) -> None:
        parts = ([self._total] if self._total is not None else []) + self._waiting
        self._total, self._waiting = merge_counts(parts), []
        self.merges += 1

    def result(self) -> NgramCounts:
        if self._waiting:
            self._merge()
        if self._total is None:
            raise ValueError("no counts were added")
        return self._total


def reduce_counts(parts) -> NgramCounts:
    """Merge an iterable of counts (e.g. map results as they complete) with a CountReducer."""
    reducer = CountReducer()
    for part in parts:
        reducer.add(part)
    return reducer.result()


def metrics_of_counts(cand: NgramCounts, ref: NgramCounts, orders=(1, 2, 3),
                      buckets: int = 2**20) -> dict[str, float]:
    """distinct_n, top1pct_mass_n, ref_coverage_n, js_n from the counts of the candidate and
    of the reference (the same values as ngram_metrics on their documents)."""
    cand_tables, ref_tables = cand.tables(orders), ref.tables(orders)
    out = {}
    for n in orders:
        (cand_types, cand_counts), (ref_types, ref_counts) = cand_tables[n], ref_tables[n]
        total = cand_counts.sum()
        out[f"distinct_{n}"] = float(cand_types.size / total) if total else 0.0
        out[f"top1pct_mass_{n}"] = top1pct_mass(cand_counts)
        out[f"ref_coverage_{n}"] = _coverage_of_types(cand_types, _frequent_ref_types(ref_types, ref_counts))
        out[f"js_{n}"] = _js_of_counts(cand_types, cand_counts, ref_types, ref_counts, buckets)
    return out


def count_shards(paths, orders=(1, 2, 3), column: str = "token_ids") -> NgramCounts:
    """count_shard over several shards, merged where they were counted: on a cluster, a
    group of shards per task means no shard's count table travels between workers."""
    return reduce_counts(count_shard(path, orders, column) for path in paths)


def shard_ngram_metrics(cand_paths, ref_paths, orders=(1, 2, 3), buckets: int = 2**20,
                        column: str = "token_ids", map_fn=map) -> dict[str, float]:
    """ngram_metrics of two corpora stored as Parquet shards, by map-reduce: ``map_fn(f, paths)``
    runs the map step (builtin ``map``: here, one shard at a time; an executor's map: there)
    and its results are merged as they come."""
    count = partial(count_shard, orders=tuple(orders), column=column)
    return metrics_of_counts(reduce_counts(map_fn(count, cand_paths)),
                             reduce_counts(map_fn(count, ref_paths)), orders, buckets)


def dask_ngram_metrics(client, cand_paths, ref_paths, orders=(1, 2, 3), buckets: int = 2**20,
                       column: str = "token_ids", fan_in: int = 4) -> dict[str, float]:
    """shard_ngram_metrics on a Dask cluster (``client``: a ``distributed.Client``): the map
    step (``count_shards`` over about four groups of shards per worker, so count tables move
    between workers only once per group), the merges (``fan_in`` at a time, a tree per
    corpus) and each order's metrics are tasks on the workers; only the metric values come
    back here."""
    orders = tuple(orders)
    groups_per_corpus = 4 * max(1, len(client.scheduler_info(n_workers=-1)["workers"]))

    def tree(paths):
        paths = list(paths)
        size = -(-len(paths) // groups_per_corpus)  # ceil
        groups = [paths[i : i + size] for i in range(0, len(paths), size)]
        level = client.map(count_shards, groups, orders=orders, column=column, pure=False)
        while len(level) > 1:
            level = [client.submit(merge_counts, level[i : i + fan_in], pure=False)
                     for i in range(0, len(level), fan_in)]
        return level[0]

    cand, ref = tree(cand_paths), tree(ref_paths)
    futures = [client.submit(metrics_of_counts, cand, ref, (n,), buckets, pure=False) for n in orders]
    out = {}
    for values in client.gather(futures):
        out |= values
    return out


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


def _covered_types_by_doc(cand_docs, ref_types, n):
    """Per candidate document, the indices of the frequent reference types (sorted n-gram
    keys, ``_frequent_ref_types``) it contains.

    Coverage of a resample depends only on which documents it holds, so the bootstrap can work
    on these small per-document sets instead of re-counting n-grams in every replicate.
    """
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

    ref_counts = count_ngrams(ref_toks, orders)  # counted once: the metrics and the coverage CI
    values = ppl_metrics(cand_ppl, ref_ppl) | metrics_of_counts(
        count_ngrams(cand_toks, orders), ref_counts, orders, buckets)
    cis = {}
    if bootstrap:
        cis["ppl_low_frac"] = bootstrap_ci(ppl_low_frac, cand_ppl, ref_ppl, bootstrap, seed)
        cis["ppl_tail_frac"] = bootstrap_ci(ppl_tail_frac, cand_ppl, ref_ppl, bootstrap, seed)
        if 2 in orders:
            ref_types = _frequent_ref_types(*ref_counts.table(2))
            per_doc, n_types = _covered_types_by_doc(cand_toks, ref_types, 2)
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
