"""The ingest step: document files or a Hugging Face dataset in, normalized
content-addressed Parquet shards out.

One job, in the style of a DataTrove block: read every row, keep the good documents as
`{id, text, doc_hash, source, line}` rows in shards named by the hash of their content,
and put every bad row in the quarantine list with file, line and reason; no row is ever
dropped silently, so `rows_in == rows_ok + rows_quarantined` always holds. A file that
breaks off (truncated gzip, corrupt Parquet) keeps the rows read before the damage and adds
one quarantine row for the rest, line 0, which counts as one row in. Default ids (rows
without one) are `<file>:<line>` with the file's path relative to the folder the patterns
share, so that same-named files of different folders do not collide.

Each source of rows (one file, or one split of a dataset: ``semisynth.hf``) comes as its
name and its ``Record``s; `ingest_sources` treats them all alike. A dataset's name is its
spec, ``hf:<path>[/<name>]/<split>[@<revision>]``, and its line the row number."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from semisynth import hf
from semisynth.documents import (
    EXCERPT_CHARS,
    Record,
    excerpt_of,
    expand_paths,
    read_records,
    source_names,
    write_documents,
)

log = logging.getLogger(__name__)


@dataclass
class ShardInfo:
    shard_hash: str
    path: str
    documents: int
    source: str


@dataclass
class IngestResult:
    corpus: str
    shards: list[ShardInfo] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)  # corpus, file, line, reason, excerpt
    rows_in: int = 0
    rows_ok: int = 0
    rows_quarantined: int = 0
    per_file: dict[str, dict[str, int]] = field(default_factory=dict)
    # a dataset's dataset_path, dataset_name, dataset_split, dataset_revision (semisynth.hf)
    dataset: dict | None = None


def doc_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def shard_hash(rows: list[dict]) -> str:
    """Hash of the shard's (id, text) rows in order; each string is length-prefixed so no
    two different shards can serialize to the same bytes."""
    h = hashlib.sha256()
    for row in rows:
        for value in (row["id"], row["text"]):
            data = value.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()[:16]


def write_shard(rows: list[dict], out_dir: Path, source: str) -> ShardInfo:
    """Write one shard unless a file with its content hash exists (then it is the same
    content, and rewriting it would only disturb readers and caches keyed on it)."""
    digest = shard_hash(rows)
    path = out_dir / f"{digest}.parquet"
    if not path.exists():
        write_documents(rows, path)
    return ShardInfo(digest, str(path), len(rows), source)


# One source of rows: its name (the quarantine rows' file, the shards' source) and its rows
Source = tuple[str, Iterable[Record]]


def file_sources(paths: list[str], text_field: str = "text", id_field: str = "id"
                 ) -> Iterator[Source]:
    """Every file the patterns name (sorted), each read when its turn comes."""
    files = expand_paths(paths)
    names = source_names(paths, files)  # what default ids call each file
    for path in files:
        yield path, read_records(path, text_field, id_field, names[path])


def ingest(
    paths: list[str],
    out_dir: Path,
    corpus: str,
    text_field: str = "text",
    id_field: str = "id",
    shard_docs: int = 1000,
    limit_docs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Read every file the patterns name (sorted) into shards of at most `shard_docs`
    documents under `out_dir`; stop after `limit_docs` good documents if given.
    `progress(1)` after each row read (good or quarantined)."""
    return ingest_sources(file_sources(paths, text_field, id_field), out_dir, corpus,
                          shard_docs=shard_docs, limit_docs=limit_docs, progress=progress)


def ingest_sources(
    sources: Iterable[Source],
    out_dir: Path,
    corpus: str,
    shard_docs: int = 1000,
    limit_docs: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> IngestResult:
    """Read the sources' rows, in order, into shards of at most `shard_docs` documents
    under `out_dir` (a shard never mixes sources); bad rows and ids met before go to the
    quarantine list; stop after `limit_docs` good documents if given. `progress(1)` after
    each row read (good or quarantined)."""
    if shard_docs < 1:
        raise ValueError(f"shard_docs must be at least 1, got {shard_docs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = IngestResult(corpus)
    seen_ids: set[str] = set()  # downstream joins on id: it must be unique in a corpus

    def limit_reached() -> bool:
        return limit_docs is not None and result.rows_ok >= limit_docs

    for source, records in sources:
        if limit_reached():
            break
        stats = result.per_file[source] = {"rows_in": 0, "rows_ok": 0, "rows_quarantined": 0}
        rows: list[dict] = []  # the shard being filled; shards never mix sources
        for rec in records:
            stats["rows_in"] += 1
            if progress:
                progress(1)
            reason, excerpt = rec.reason, rec.excerpt
            if reason is None and rec.id in seen_ids:
                reason = f"duplicate id {rec.id!r}"
                excerpt = excerpt_of({"id": rec.id, "text": rec.text[:EXCERPT_CHARS]})
            if reason is not None:
                stats["rows_quarantined"] += 1
                result.rows_quarantined += 1
                result.quarantine.append(
                    {
                        "corpus": corpus,
                        "file": source,
                        "line": rec.line,
                        "reason": reason,
                        "excerpt": excerpt,
                    }
                )
                continue
            seen_ids.add(rec.id)
            stats["rows_ok"] += 1
            result.rows_ok += 1
            rows.append(
                {
                    "id": rec.id,
                    "text": rec.text,
                    "doc_hash": doc_hash(rec.text),
                    "source": source,
                    "line": rec.line,
                }
            )
            if len(rows) == shard_docs:
                result.shards.append(write_shard(rows, out_dir, source))
                rows = []
            if limit_reached():
                break  # rows after this one are not read, so not counted
        if rows:
            result.shards.append(write_shard(rows, out_dir, source))
        result.rows_in += stats["rows_in"]

    assert result.rows_in == result.rows_ok + result.rows_quarantined, (
        f"rows_in {result.rows_in} != ok {result.rows_ok} + quarantined {result.rows_quarantined}"
    )
    log.info(
        "ingest %s: %d rows in, %d ok, %d quarantined, %d shards from %d files",
        corpus,
        result.rows_in,
        result.rows_ok,
        result.rows_quarantined,
        len(result.shards),
        len(result.per_file),
    )
    return result


def read_shard(path: str | Path) -> pd.DataFrame:
    return pd.read_parquet(str(path))


def iter_shard_batches(
    path: str | Path, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pd.DataFrame]:
    """A shard as DataFrames of at most `batch_rows` rows, one at a time."""
    with fsspec.open(str(path), "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns):
            yield batch.to_pandas()


def ingest_corpus(cfg, name: str, progress: Callable[[int], None] | None = None) -> IngestResult:
    """The ingest stage for a corpus of ``cfg`` (a ``semisynth.config.Config``) read from
    files (its paths, relative ones from the data root) or from a Hugging Face dataset
    (``hf``), into shards under ``cfg.shard_dir``."""
    c = cfg.corpora[name]
    dataset = None
    if c.hf is not None:
        dataset = hf.open_dataset(c.hf, cfg.resolve)
        sources = [(dataset.spec, hf.read_dataset(dataset, c.text_field, c.id_field))]
    else:
        sources = file_sources([cfg.resolve(p) for p in c.paths], c.text_field, c.id_field)
    result = ingest_sources(sources, cfg.shard_dir(name), name, shard_docs=cfg.shard_docs,
                            limit_docs=c.limit_docs, progress=progress)
    result.dataset = dataset.columns if dataset is not None else None
    return result


def ingest_columns(result: IngestResult) -> dict:
    """What ingest adds to the corpus's row in ``corpora``: its row counts, and for a
    dataset its path, configuration, split and revision."""
    return {"rows_in": result.rows_in, "rows_ok": result.rows_ok,
            "rows_quarantined": result.rows_quarantined, **(result.dataset or {})}
