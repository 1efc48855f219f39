"""N-gram counting: packed keys, count tables, and their map-reduce over score files.

A document is a 1-D int array of token ids (vocab < 2**21). An n-gram (n <= 3) packs exactly
into one non-negative int64 key; n-grams never cross a document boundary. Token work is done
on one concatenated stream with document offsets, never with a Python loop over tokens.

map:    ``count_stream`` / ``count_ngrams`` (documents in memory) and ``count_part`` (a
        ``SamplePart``: some rows of one score file, the last one possibly cut) give an
        ``NgramCounts``. Only the highest order is sorted (one sort per part; a radix sort
        over 16-bit dense token ranks, or one uint32 per n-gram, where they fit): every
        lower-order n-gram is the prefix of an (n+1)-gram except each document's last one,
        so table n is the prefix sums of table n+1 (linear: prefixes of sorted keys are
        sorted) plus those "tails" (one per document).
reduce: ``merge_counts`` / ``CountReducer`` / ``reduce_counts`` give the counts of the union.
        Tables are sorted runs: a stable sort (timsort merges runs) plus a segmented sum,
        done in key-range pieces that fit the cache. A merged table is exactly the table of
        counting all documents at once.
both:   ``count_sample(parts, orders, client=None)`` runs the maps in groups of parts and
        merges them: here, or on a Dask cluster when given a ``distributed.Client``. The
        metrics stage (``comparison.compare``) counts each equal-budget sample of a corpus
        read from score files with it, and ``benchmarks/scale.py`` measures it.
        ``DocumentFiles`` says where a corpus's documents are stored, and turns a sample
        of them into parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOKEN_BITS = 21  # 3 tokens x 21 bits = 63 bits: a trigram packs exactly into a non-negative int64
TOKEN_MASK = (1 << TOKEN_BITS) - 1
MAX_ORDER = 3
EMPTY_TABLE = (np.zeros(0, np.int64), np.zeros(0, np.int64))
MERGE_PIECE = 1 << 18  # rows per piece of a merge: its keys, counts and sort order fit in L2/L3
_U32_SENTINEL = np.uint32(0xFFFFFFFF)
GROUPS_PER_WORKER = 4  # map tasks per worker and sample: enough to balance, few tables to move


def doc_lengths(docs) -> np.ndarray:
    """Tokens per document (int64)."""
    return np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))


# -----------------------------------------------------------------------------
# packed keys

def ngram_keys_and_docs(docs, n):
    """All n-grams within documents (never across a boundary), each packed into one int64,
    and the index of the document each one comes from."""
    if not 1 <= n <= MAX_ORDER:
        raise ValueError(f"n-gram order must be in 1..{MAX_ORDER}, got {n}")
    lengths = doc_lengths(docs)
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


def unpack_ngram(key: int, n: int) -> tuple[int, ...]:
    """The token ids of a packed n-gram key (inverse of the packing in ngram_keys_and_docs)."""
    key = int(key)
    return tuple((key >> (TOKEN_BITS * (n - 1 - k))) & TOKEN_MASK for k in range(n))


def top_of_table(types: np.ndarray, counts: np.ndarray, top: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """The `top` most frequent types of a count table (sorted unique types, their counts),
    most frequent first (ties: smaller key)."""
    order = np.argsort(-np.asarray(counts), kind="stable")[:top]
    return types[order], counts[order]


# -----------------------------------------------------------------------------
# count tables

@dataclass(frozen=True)
class NgramCounts:
    """The n-gram counts of some documents, orders 1..``order``.

    ``top``: the table of order ``order``: (sorted unique packed keys, their int64 counts). ``tails[n]`` (n < order): the same for the last n-gram of each document of
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
    lengths = doc_lengths(docs)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = (np.concatenate([np.asarray(d).ravel() for d in docs]) if lengths.sum()
              else np.zeros(0, np.int64))
    return count_stream(tokens, offsets, orders)


# -----------------------------------------------------------------------------
# the map unit: some rows of one score file

@dataclass(frozen=True, eq=False)
class SamplePart:
    """Part of a corpus sample that one score file holds: its rows ``rows`` (None: all of
    them, in file order), in sample order, and, if the sample's last (cut) document is
    among them, ``last_tokens``: how many tokens of the last row the sample keeps."""

    path: str
    rows: np.ndarray | None = None
    last_tokens: int | None = None


@dataclass(frozen=True, eq=False)
class DocumentFiles:
    """Where a corpus's documents are stored: document i is row ``rows[i]`` of the score
    file ``paths[files[i]]``."""

    paths: tuple[str, ...]
    files: np.ndarray
    rows: np.ndarray

    @classmethod
    def of_files(cls, paths, rows_per_file) -> DocumentFiles:
        """The documents of these files, concatenated in order (as ``read_scores`` does)."""
        counts = np.asarray(rows_per_file, np.int64)
        if len(counts) != len(paths):
            raise ValueError(f"{len(paths)} files but {len(counts)} row counts")
        files = np.repeat(np.arange(len(paths)), counts)
        first_row = np.repeat(np.cumsum(counts) - counts, counts)
        return cls(tuple(str(p) for p in paths), files, np.arange(files.size) - first_row)

    def __len__(self) -> int:
        return self.files.size

    def take(self, indices) -> DocumentFiles:
        """The files of a subset of the documents (document j is document indices[j] here)."""
        indices = np.asarray(indices, np.int64)
        return DocumentFiles(self.paths, self.files[indices], self.rows[indices])

    def sample_parts(self, indices, last_tokens: int) -> list[SamplePart]:
        """A sample (document indices in sample order, the last one cut to ``last_tokens``
        tokens) as one part per score file it reads from."""
        indices = np.asarray(indices, np.int64)
        if indices.size == 0:
            raise ValueError("an empty sample has no parts")
        files, rows = self.files[indices], self.rows[indices]
        by_file = np.argsort(files, kind="stable")  # sample order within each file
        starts = np.flatnonzero(np.r_[True, files[by_file][1:] != files[by_file][:-1]])
        last = len(indices) - 1
        parts = []
        for group in np.split(by_file, starts[1:]):  # a loop over files, not documents
            cut = int(last_tokens) if group[-1] == last else None
            parts.append(SamplePart(self.paths[files[group[0]]], rows[group], cut))
        return parts


def whole_files(paths) -> list[SamplePart]:
    """Every row of each file: a sample that is the whole corpus."""
    return [SamplePart(str(p)) for p in paths]


def count_part(part: SamplePart, orders=(1, 2, 3), column: str = "token_ids") -> NgramCounts:
    """The map step: the counts of one part's documents, read from its file's ``column`` (a
    list column of token ids, as in the score files). A plain function of its arguments:
    Dask (or any executor) can run it anywhere the file can be read."""
    # lazy: pyarrow, loaded only when this runs
    import pyarrow.parquet as pq

    # no reader threads: a map task is one unit of work on one core (Dask runs many at once)
    ids = pq.ParquetFile(part.path).read(columns=[column], use_threads=False).column(column).combine_chunks()
    offsets = ids.offsets.to_numpy().astype(np.int64)
    values = ids.values.to_numpy()
    if part.rows is None:
        if part.last_tokens is not None:
            raise ValueError("last_tokens needs the rows it cuts")
        return count_stream(values[offsets[0] : offsets[-1]], offsets - offsets[0], orders)
    rows = np.asarray(part.rows, np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= offsets.size - 1):
        raise ValueError(f"{part.path} has {offsets.size - 1} rows, asked for row {rows.max()}")
    starts, lengths = offsets[rows], offsets[rows + 1] - offsets[rows]
    if part.last_tokens is not None:
        if not 0 <= part.last_tokens <= lengths[-1]:
            raise ValueError(f"cannot keep {part.last_tokens} tokens of a "
                             f"{lengths[-1]}-token document")
        lengths[-1] = part.last_tokens
    doc_offsets = np.concatenate([[0], np.cumsum(lengths)])
    # each kept token's position in the file's flat buffer: its document's start, plus its
    # place in the document (one gather, no loop over documents)
    positions = np.repeat(starts - doc_offsets[:-1], lengths) + np.arange(doc_offsets[-1])
    return count_stream(values[positions], doc_offsets, orders)


def count_parts(parts, orders=(1, 2, 3), column: str = "token_ids") -> NgramCounts:
    """count_part over several parts, merged where they were counted: on a cluster, a
    group of parts per task means no part's count table travels between workers."""
    return reduce_counts(count_part(part, orders, column) for part in parts)


def count_sample(parts, orders=(1, 2, 3), client=None, column: str = "token_ids",
                 fan_in: int = 4) -> NgramCounts:
    """The counts of a sample given as parts (``DocumentFiles.sample_parts``,
    ``whole_files``), by map-reduce.

    Without ``client``: here, one part at a time, merged as they come. With a
    ``distributed.Client``: the parts in about ``GROUPS_PER_WORKER`` groups per worker, one
    ``count_parts`` task each (the map), a tree of ``merge_counts`` tasks ``fan_in`` at a
    time (the reduce) on the workers; the merged counts come back here. Equal values either
    way: a merged table is the table of counting everything at once."""
    parts, orders = list(parts), tuple(orders)
    if not parts:
        raise ValueError("no parts to count")
    if client is None:
        return count_parts(parts, orders, column)
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    size = -(-len(parts) // (GROUPS_PER_WORKER * workers))  # ceil
    groups = [parts[i : i + size] for i in range(0, len(parts), size)]
    level = client.map(count_parts, groups, orders=orders, column=column, pure=False)
    while len(level) > 1:
        level = [client.submit(merge_counts, level[i : i + fan_in], pure=False)
                 for i in range(0, len(level), fan_in)]
    return level[0].result()


# -----------------------------------------------------------------------------
# the reduce

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
    final table plus one part, however many parts there are."""

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

