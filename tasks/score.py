"""The score+edit stage over shards: streaming, cached by (shard, model, parameters).

A shard's scores land in ``scores/<score_key>/<shard_hash>.parquet`` under the data root;
the file's existence is the cache, so a re-run (or a retry after a lost worker) does no
model work for a shard that was already scored with the same prior and parameters.
The file is written under a unique temporary name and renamed into place, so it is either
complete or absent: a worker killed mid-shard leaves only a hidden ``.*.tmp`` file, and
the shard is scored again from the start by whichever worker Dask reschedules it to.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semisynth.config import EditConfig, PriorConfig
from semisynth.documents import atomic_path
from semisynth.overlap import Ahead, Behind
from semisynth.progress import Progress
from semisynth.tasks.prior import load_prior, resolve_precision
from semisynth.tasks.toedit import DocResult, Planned, Scorer

SCORE_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("doc_hash", pa.string()),
        ("scored_tokens", pa.int64()),
        ("nll_sum", pa.float64()),
        ("ppl", pa.float64()),
        ("revised_tokens", pa.int64()),
        ("edited_tokens", pa.int64()),
        ("dropped_tokens", pa.int64()),
        ("token_ids", pa.list_(pa.int32())),
        ("edited_text", pa.string()),
        ("truncated", pa.bool_()),  # cut to prior.max_doc_tokens: its rest is not scored
    ]
)


# Bump when a change to the engine changes what it writes: old caches then miss.
ENGINE_VERSION = 4  # 2: the truncated column, prior.max_doc_tokens; 3: CPU shapes rounded to 64;
# 4: the CPU head in vocabulary chunks (log-normalisers differ in their last bits)


def score_key(model_id: str, prior: PriorConfig, edit: EditConfig, seed: int) -> str:
    """Everything that changes a shard's scores or edits, hashed."""
    params = {
        "engine": ENGINE_VERSION,
        "model": model_id,
        "precision": resolve_precision(prior.precision),
        "max_tokens": prior.max_tokens,
        "window": prior.window,
        "max_doc_tokens": prior.max_doc_tokens,
        # the strategy and every parameter of it (its params model's fields), and the
        # redraw temperature it resolves from them (None for a strategy without one): the
        # same dict as before strategies were plug-ins, so earlier caches stay valid
        "edit": edit.model_dump(),
        "beta": edit.effective_beta,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class ScoreStats:
    shard_hash: str
    path: str
    documents: int
    scored_tokens: int
    model_work: bool  # False when the cached scores were reused
    seconds: float
    truncated_docs: int = 0  # documents cut to prior.max_doc_tokens
    compile_seconds: float = 0.0  # of ``seconds``: first batches of new compiled shapes


READ_DOCS = 64  # documents read from the shard (and tokenized) at a time
# Forward batches' worth of tokens handed to the Scorer at once: whole documents, so the
# last batch of each call may be part-filled; with four full ones before it, that costs
# little. (Today's 16 documents a call capped a GPU batch at about 8k tokens.)
GROUP_BATCHES = 4


@dataclass
class Group:
    """Documents in order, planned for the device (``Scorer.plan``), with what the caller
    carries along for each (a shard's doc hashes; ``edit``'s input records)."""

    planned: Planned
    carried: list


DocBatch = tuple[list[str], list[str], list]  # ids, texts, what each document carries


def _groups(batches: Iterable[DocBatch], scorer: Scorer) -> Iterator[Group]:
    """The documents in order, tokenized and planned, in groups of whole documents holding
    at least GROUP_BATCHES batches' worth of tokens (the last: the rest)."""
    ids: list[str] = []
    carried: list = []
    tokens: list[np.ndarray] = []
    cut: list[bool] = []
    size = 0
    for batch_ids, texts, batch_carried in batches:
        token_ids, truncated = scorer.tokenize(texts)
        for doc_id, doc_carried, doc_tokens, doc_cut in zip(batch_ids, batch_carried, token_ids,
                                                            truncated, strict=True):
            ids.append(doc_id)
            carried.append(doc_carried)
            tokens.append(doc_tokens)
            cut.append(doc_cut)
            size += len(doc_tokens)
            if size >= GROUP_BATCHES * scorer.batch_tokens:
                yield Group(scorer.plan(ids, tokens, cut), carried)
                ids, carried, tokens, cut, size = [], [], [], [], 0
    if ids:
        yield Group(scorer.plan(ids, tokens, cut), carried)


def scored_groups(scorer: Scorer, batches: Iterable[DocBatch], progress: Progress | None = None,
                  name: str = "score") -> Iterator[tuple[Group, list[DocResult]]]:
    """score+edit's batch loop, for every caller (``score_shard``, ``semisynth edit``): the
    documents of ``batches`` (READ_DOCS at a time, say) through the prior, group by group,
    in order. A thread reads, tokenizes and plans the next group (``semisynth.overlap``)
    while this one drives the device. ``progress.advance(0, also=tokens)`` after each
    forward batch (a long document moves it too), ``progress.advance(documents)`` after each
    group. Close it (``contextlib.closing``) when stopping early: that stops the thread."""
    with Ahead(_groups(batches, scorer), size=2, name=f"plan-{name}") as groups:
        for group in groups:
            results = scorer.run(group.planned, progress=progress)
            if progress:
                progress.advance(len(results))
            yield group, results


def _shard_batches(shard: pq.ParquetFile) -> Iterator[DocBatch]:
    for batch in shard.iter_batches(batch_size=READ_DOCS, columns=["id", "text", "doc_hash"]):
        yield (batch.column("id").to_pylist(), batch.column("text").to_pylist(),
               batch.column("doc_hash").to_pylist())


def _score_table(decode: Callable, group: Group, results: list[DocResult]) -> pa.Table:
    return pa.table(
        {
            "id": group.planned.doc_ids,
            "doc_hash": group.carried,
            "scored_tokens": [r.scored_tokens for r in results],
            "nll_sum": [r.nll_sum for r in results],
            "ppl": [r.ppl for r in results],
            "revised_tokens": [r.revised_tokens for r in results],
            "edited_tokens": [r.edited_tokens for r in results],
            "dropped_tokens": [r.dropped_tokens for r in results],
            "token_ids": [r.token_ids.astype(np.int32) for r in results],
            "edited_text": [decode(r.edited_ids.tolist()) for r in results],
            "truncated": [r.truncated for r in results],
        },
        schema=SCORE_SCHEMA,
    )


def score_shard(
    shard_path: Path,
    out_path: Path,
    root: Path,
    prior_cfg: PriorConfig,
    edit_cfg: EditConfig,
    seed: int,
    progress: Progress | None = None,
) -> ScoreStats:
    """Score and edit one shard unless its scores exist, appending the documents' rows (in
    the shard's order) to the output, renamed into place at the end. Three things run at
    once: a thread reads and tokenizes the next documents and assembles their batches, this
    thread drives the device (the prior) through the current ones (``scored_groups``), and
    a thread decodes and writes the last ones; each at most two groups apart
    (``semisynth.overlap``), so a worker holds one shard's groups at a time. ``progress``
    as ``scored_groups`` reports it, on this thread; a shard whose scores exist reports
    nothing."""
    shard_path, out_path = Path(shard_path), Path(out_path)
    shard_hash = shard_path.stem
    if out_path.exists():
        return _cached(shard_hash, out_path)
    started = time.perf_counter()
    prior = load_prior(prior_cfg.model, root, prior_cfg.precision)
    scorer = Scorer.from_config(prior, prior_cfg, edit_cfg, seed)
    shard = pq.ParquetFile(shard_path)
    documents = scored = truncated = 0
    # keep_existing: another attempt (a task Dask thought lost, still running) may finish
    # first; its file stays, the scores are the same (deterministic), readers keep theirs
    with atomic_path(out_path, keep_existing=True) as tmp:
        with pq.ParquetWriter(tmp, SCORE_SCHEMA) as writer:

            def write(item: tuple[Group, list[DocResult]]) -> None:
                writer.write_table(_score_table(prior.tokenizer.decode, *item))

            groups = scored_groups(scorer, _shard_batches(shard), progress, shard_hash)
            with closing(groups), Behind(write, size=2, name=f"write-{shard_hash}") as written:
                for group, results in groups:
                    written.put((group, results))
                    documents += len(results)
                    scored += sum(r.scored_tokens for r in results)
                    truncated += sum(r.truncated for r in results)
                written.finish()
    return_freed_memory()
    return ScoreStats(shard_hash, str(out_path), documents, scored, True,
                      time.perf_counter() - started, truncated, scorer.compile_seconds)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl and macOS have none
    except (AttributeError, OSError):
        return None


def return_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``; nothing where
    the C library has none). glibc keeps freed blocks in its arenas: scoring 36 shards of
    flow_scale's 4x corpus in one process peaked at 1,355 MB without this and 1,162 MB with
    it, although one shard is held at a time. It does not stop the growth: the heap still
    grows with the widest batches (issue 17's note)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _cached(shard_hash: str, out_path: Path) -> ScoreStats:
    table = pq.read_table(out_path, columns=["scored_tokens", "truncated"])
    tokens = table.column("scored_tokens").to_numpy().sum()
    truncated = table.column("truncated").to_numpy(zero_copy_only=False).sum()
    return ScoreStats(shard_hash, str(out_path), table.num_rows, int(tokens), False, 0.0,
                      int(truncated))


def read_scores(paths: list[Path], columns: list[str] | None = None) -> pa.Table:
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables) if tables else SCORE_SCHEMA.empty_table()


def token_arrays(table: pa.Table) -> list[np.ndarray]:
    """Each document's token ids as a numpy view, straight from Arrow's flat buffer."""
    column = table.column("token_ids").combine_chunks()
    if len(column) == 0:
        return []
    values = column.values.to_numpy().astype(np.int64)
    offsets = column.offsets.to_numpy()
    return np.split(values[offsets[0] : offsets[-1]], offsets[1:-1] - offsets[0])
