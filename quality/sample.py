"""Which documents of a corpus the metrics read, chosen in memory bounded by a token cap.

Every document of a corpus has an order key: a 64-bit hash of a seed and the document's
index (its place in the corpus: the score files' rows, in order). A *stream* is the
corpus's documents in increasing key order; a sample of a stream at a token budget is its
first documents until their tokens reach the budget, the last one cut so that the sample
holds the budget exactly. A random split into halves deals that order out alternately
(ranks 0, 2, 4, ... to half A, 1, 3, 5, ... to half B), so the halves differ by at most
one document, as a split by a shuffled index does; an independent coin per document would
leave the smaller half of 48 documents with about 21 of them, and a smaller budget.

Why keys and not a permutation: a permutation of n documents needs all n in memory; a key
is known document by document. ``Selection`` reads a corpus once, in batches, and keeps
only the documents with the smallest keys that hold ``cap`` tokens (documents above the
cut cannot enter any sample of at most ``cap`` tokens), so the metrics hold the budget,
never the corpus. Keys from different seeds are independent: a corpus and an edit of it
(document i <-> document i) sampled with different seeds do not pick paired documents.
A document's key does not depend on the documents after it, so appending shards to a
corpus leaves its old documents' keys as they were.

Sources: ``ScoreFiles`` (score files of ``tasks.score``, read in batches of rows) and
``InMemory`` (token arrays and perplexities, for tests and benchmarks); both give the same
``Sample`` for the same documents, which ``Sample.token_arrays`` and ``Sample.where`` turn
into tokens (from memory, or from the files one at a time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from semisynth.quality.ngrams import DocumentFiles, doc_lengths

SCAN_BATCH_ROWS = 1024  # score-file rows read at a time (a batch's token ids, then dropped)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
# A half's selection holds this many times the cap, both halves' documents together:
# dealt out alternately, each half gets about half of it, and random document lengths
# leave each above the cap (below it only when one half's documents are far longer than
# the other's; the budget is then that half's tokens, never more).
HALVES_HOLD = 2.2


def _salt(*entropy: int) -> np.uint64:
    return np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0]


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise; uint64 arithmetic wraps."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def order_keys(seed: int, index) -> np.ndarray:
    """The order keys (uint64) of the documents at ``index`` under ``seed``."""
    index = np.asarray(index, np.uint64)
    return _splitmix(index * _GOLDEN + _salt(seed))


@dataclass(frozen=True)
class Stream:
    """A corpus's documents in the order of ``seed``'s keys; with ``half`` ("A" or "B"),
    only that half of the random split the same order deals out."""

    seed: int
    half: str | None = None

    def __post_init__(self):
        if self.half not in (None, "A", "B"):
            raise ValueError(f"half must be 'A', 'B' or None, got {self.half!r}")

    def selection(self, cap: int | None) -> Selection:
        if self.half is None:
            return Selection(cap)
        return Selection(None if cap is None else int(np.ceil(HALVES_HOLD * cap)),
                         parity=0 if self.half == "A" else 1)


def side_seeds(seed: int) -> tuple[int, int]:
    """The order seeds of a comparison's candidate and reference sides: independent
    streams, so that a candidate edited from its reference (document i <-> document i) is
    not sampled in step with it."""
    cand, ref, _ = _comparison_seeds(seed)
    return cand, ref


def _comparison_seeds(seed: int) -> tuple[int, int, int]:
    cand, ref, split = np.random.SeedSequence(seed).generate_state(3)
    return int(cand), int(ref), int(split)


def comparison_streams(seed: int) -> dict[str, Stream]:
    """The streams of a comparison: ``candidate`` and ``reference`` (every document), and
    the reference's split halves ``half_a`` / ``half_b`` for its yardstick, which compares
    them as a candidate and a reference."""
    cand, ref, split = _comparison_seeds(seed)
    return {"candidate": Stream(cand), "reference": Stream(ref),
            "half_a": Stream(split, "A"), "half_b": Stream(split, "B")}


@dataclass(frozen=True, eq=False)
class Sample:
    """Documents in the order a sample takes them: each one's index in its corpus, tokens,
    perplexity and content hash, and where its tokens are (``docs`` in memory, else the
    score files ``where``). ``stream_tokens``: the tokens of the whole stream it was drawn
    from (more than ``tokens`` when a cap cut it)."""

    index: np.ndarray
    lengths: np.ndarray
    ppl: np.ndarray
    hashes: np.ndarray
    stream_tokens: int
    where: DocumentFiles | None = None
    docs: Sequence[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def tokens(self) -> int:
        return int(self.lengths.sum())

    def take(self, rows) -> Sample:
        rows = np.asarray(rows, np.int64)
        return Sample(self.index[rows], self.lengths[rows], self.ppl[rows], self.hashes[rows],
                      self.stream_tokens, self.where.take(rows) if self.where is not None else None,
                      [self.docs[i] for i in rows] if self.docs is not None else None)

    def to_budget(self, budget: int, name: str = "corpus") -> tuple[Sample, int]:
        """The first documents whose tokens reach ``budget``, and how many tokens of the last
        one the budget keeps; a ValueError naming both numbers when the stream is short."""
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        cum = np.cumsum(self.lengths)
        if not len(cum) or cum[-1] < budget:
            raise ValueError(f"{name} has {self.stream_tokens} tokens, fewer than the budget "
                             f"of {budget}")
        last = int(np.searchsorted(cum, budget))  # the first document that reaches it
        before = int(cum[last - 1]) if last else 0
        return self.take(np.arange(last + 1)), budget - before

    def in_corpus_order(self) -> Sample:
        return self.take(np.argsort(self.index, kind="stable"))

    def token_arrays(self, last_tokens: int | None = None) -> list[np.ndarray]:
        """Each document's token ids, in sample order (the last cut to ``last_tokens``): from
        memory, or read from the score files one file at a time."""
        if self.docs is not None:
            arrays = [np.asarray(d) for d in self.docs]
        elif self.where is not None:
            arrays = read_token_arrays(self.where)
        else:
            raise ValueError("a sample without documents or files has no tokens")
        if last_tokens is not None and arrays:
            arrays[-1] = arrays[-1][:last_tokens]
        return arrays


def read_token_arrays(where: DocumentFiles, column: str = "token_ids") -> list[np.ndarray]:
    """The token ids of the documents ``where`` locates, in its order; each file is read
    once, and only its documents of the sample are kept."""
    # lazy: pyarrow, loaded only when this runs
    import pyarrow.parquet as pq

    out: list[np.ndarray | None] = [None] * len(where)
    for f in np.unique(where.files):
        mine = np.flatnonzero(where.files == f)
        ids = pq.ParquetFile(where.paths[f]).read(columns=[column], use_threads=False)
        ids = ids.column(column).combine_chunks()
        offsets = ids.offsets.to_numpy()
        values = ids.values.to_numpy()
        for i in mine:
            row = where.rows[i]
            out[i] = values[offsets[row]:offsets[row + 1]].astype(np.int64)
    return out


class Selection:
    """The documents of one stream with the smallest keys that hold ``cap`` tokens (every
    document when ``cap`` is None), fed batch by batch. Held: at most about twice the cap
    in documents, whatever the corpus. With ``parity`` (0 or 1) the result is the kept
    documents of even (odd) rank in key order: one half of a split dealt out alternately.

    ``stream_tokens``: the tokens of every document fed; of a half, the tokens of its
    documents among those kept (its whole half when nothing was cut)."""

    def __init__(self, cap: int | None, parity: int | None = None):
        self.cap = cap
        self.parity = parity
        self.stream_tokens = 0
        self._parts: list[dict[str, np.ndarray]] = []
        self._held = 0

    @property
    def held_tokens(self) -> int:
        """The tokens of the documents held now."""
        return self._held

    def add(self, keys: np.ndarray, lengths: np.ndarray, **columns: np.ndarray) -> None:
        tokens = int(lengths.sum())
        self.stream_tokens += tokens
        self._held += tokens
        self._parts.append({"key": keys, "length": lengths, **columns})
        if self.cap is not None and self._held > 2 * self.cap:
            self._prune()

    def _prune(self) -> dict[str, np.ndarray]:
        if not self._parts:
            return {}
        merged = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        order = np.argsort(merged["key"], kind="stable")
        if self.cap is not None:
            cum = np.cumsum(merged["length"][order])
            order = order[: int(np.searchsorted(cum, self.cap)) + 1]
        merged = {k: v[order] for k, v in merged.items()}
        self._parts, self._held = [merged], int(merged["length"].sum())
        return merged

    def result(self) -> dict[str, np.ndarray]:
        """The kept documents' columns, in key order (of a half: its documents of them)."""
        kept = self._prune()
        if self.parity is not None and kept:
            kept = {k: v[self.parity::2] for k, v in kept.items()}
            self.stream_tokens = int(kept["length"].sum())
        return kept


@dataclass
class CorpusScan:
    """One read of a corpus: its totals and a sample of each stream asked for."""

    documents: int = 0
    tokens: int = 0
    scored_tokens: int = 0
    edited_tokens: int = 0
    samples: dict[str, Sample] = field(default_factory=dict)


def _feed(selections: Mapping[str, Selection], streams: Mapping[str, Stream],
          index: np.ndarray, lengths: np.ndarray, **columns: np.ndarray) -> None:
    for name, stream in streams.items():
        selections[name].add(order_keys(stream.seed, index), lengths, index=index, **columns)


@dataclass(frozen=True, eq=False)
class ScoreFiles:
    """A corpus's score files (``scores/<key>/<shard>.parquet``), its documents in file
    order."""

    paths: tuple[str, ...]

    def __init__(self, paths):
        object.__setattr__(self, "paths", tuple(str(p) for p in paths))

    def scan(self, streams: Mapping[str, Stream], cap: int | None) -> CorpusScan:
        """Totals and a sample of each stream (at most ``cap`` tokens a stream), reading
        ``SCAN_BATCH_ROWS`` rows at a time; the token ids are read only for their lengths,
        and only when a stream is asked for."""
        # lazy: pyarrow, loaded only when this runs
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        selections = {name: stream.selection(cap) for name, stream in streams.items()}
        scan = CorpusScan()
        columns = ["scored_tokens", "edited_tokens"] + (
            ["token_ids", "ppl", "doc_hash"] if streams else [])
        for f, path in enumerate(self.paths):
            row = 0
            for batch in pq.ParquetFile(path).iter_batches(
                    batch_size=SCAN_BATCH_ROWS, columns=columns, use_threads=False):
                n = batch.num_rows
                scan.documents += n
                scan.scored_tokens += int(pc.sum(batch.column("scored_tokens")).as_py() or 0)
                scan.edited_tokens += int(pc.sum(batch.column("edited_tokens")).as_py() or 0)
                if streams:
                    lengths = pc.list_value_length(batch.column("token_ids")).fill_null(0)
                    lengths = lengths.to_numpy().astype(np.int64)
                    scan.tokens += int(lengths.sum())
                    _feed(selections, streams, np.arange(scan.documents - n, scan.documents),
                          lengths, ppl=batch.column("ppl").to_numpy(zero_copy_only=False)
                          .astype(float), hash=np.asarray(batch.column("doc_hash").to_pylist(),
                                                          dtype=object),
                          file=np.full(n, f, np.int64), row=np.arange(row, row + n))
                row += n
        for name, selection in selections.items():
            kept = selection.result()
            where = DocumentFiles(self.paths, kept["file"], kept["row"])
            scan.samples[name] = Sample(kept["index"], kept["length"], kept["ppl"], kept["hash"],
                                        selection.stream_tokens, where=where)
        return scan


@dataclass(eq=False)
class InMemory:
    """A corpus held in memory: token arrays and perplexities per document, its edit
    counts, and optionally the score files its documents are rows of (``files``; then
    the metrics count n-grams from the files, as for ``ScoreFiles``)."""

    docs: Sequence[np.ndarray]
    ppl: np.ndarray
    scored_tokens: int = 0
    edited_tokens: int = 0
    files: DocumentFiles | None = None
    hashes: np.ndarray | None = None

    def __post_init__(self):
        self.ppl = np.asarray(self.ppl, float)
        if len(self.docs) != len(self.ppl):
            raise ValueError(f"{len(self.docs)} documents but {len(self.ppl)} perplexities")
        if self.files is not None and len(self.files) != len(self.docs):
            raise ValueError(f"{len(self.docs)} documents but {len(self.files)} in its files")
        if self.hashes is None:
            self.hashes = np.asarray([f"#{i}" for i in range(len(self.docs))], dtype=object)

    @property
    def tokens(self) -> int:
        return int(doc_lengths(self.docs).sum())

    def scan(self, streams: Mapping[str, Stream], cap: int | None) -> CorpusScan:
        selections = {name: stream.selection(cap) for name, stream in streams.items()}
        lengths = doc_lengths(self.docs)
        index = np.arange(len(self.docs))
        _feed(selections, streams, index, lengths, ppl=self.ppl, hash=self.hashes)
        scan = CorpusScan(len(self.docs), int(lengths.sum()), self.scored_tokens,
                          self.edited_tokens)
        for name, selection in selections.items():
            kept = selection.result()
            where = self.files.take(kept["index"]) if self.files is not None else None
            scan.samples[name] = Sample(kept["index"], kept["length"], kept["ppl"], kept["hash"],
                                        selection.stream_tokens, where=where,
                                        docs=[self.docs[i] for i in kept["index"]])
        return scan
