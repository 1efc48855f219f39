"""The ingest step: document files or a Hugging Face dataset in, normalized
content-addressed Parquet shards out.

One job, in the style of a DataTrove block: read every row, keep the good documents as
`{id, text, doc_hash, source, line, fields}` rows in shards named by the hash of their
content (`fields`: every other key or column of the input document, see
`semisynth.fields`; left out when no document has one), and put every bad row in the quarantine list with file, line and reason; no row is ever
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
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from semisynth import fields, hf
from semisynth.documents import (
    EXCERPT_CHARS,
    Record,
    atomic_path,
    declared_types,
    excerpt_of,
    expand_paths,
    read_records,
    source_names,
)
from semisynth.progress import Progress

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
    # field -> shards that hold it as JSON text (its values had no one Arrow type there)
    json_fields: dict[str, int] = field(default_factory=dict)
    # a dataset's dataset_path, dataset_name, dataset_split, dataset_revision (semisynth.hf)
    dataset: dict | None = None


def doc_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# The bookkeeping columns every shard has; then `component` (a mixture's documents) and
# `fields` (the input's other fields) where there are any.
SHARD_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("doc_hash", pa.string()),
                          ("source", pa.string()), ("line", pa.int64())])
# What a shard holds beside id and text that its hash covers: source and line say where
# the rows were read, and doc_hash follows from the text.
CONTENT_COLUMNS = (fields.COMPONENT, fields.FIELDS)


def shard_table(rows: list[dict], doc_fields: pa.Array | None = None) -> pa.Table:
    """A shard of ``rows`` (the bookkeeping columns, SHARD_SCHEMA) and their fields."""
    table = pa.table({f.name: pa.array([r[f.name] for r in rows], f.type)
                      for f in SHARD_SCHEMA}, schema=SHARD_SCHEMA)
    return table if doc_fields is None else table.append_column(fields.FIELDS, doc_fields)


def _canonical(value) -> str:
    # sorted keys: the struct type (hashed apart) fixes the order; default=str renders the
    # datetimes, decimals and bytes of typed columns the same way every time
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str,
                      separators=(",", ":"))


def shard_hash(table: pa.Table) -> str:
    """Hash of the shard's content, row by row in order: id and text, and where the shard
    has them, its component and fields, with their types (a changed type or value is a
    new shard). Each string is length-prefixed so no two different shards serialize to
    the same bytes; a shard of ids and texts alone hashes as it did before fields were
    kept."""
    h = hashlib.sha256()

    def put(value: str) -> None:
        data = value.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    extra = [c for c in CONTENT_COLUMNS if c in table.column_names]
    if extra:
        types = {c: str(table.schema.field(c).type) for c in extra}
        put("semisynth shard columns " + _canonical(
            {"types": types, "json": fields.json_keys(table.schema.field(fields.FIELDS).type
                                                      if fields.FIELDS in extra else None)}))
    columns = [table.column(c).to_pylist() for c in ("id", "text", *extra)]
    for doc_id, text, *rest in zip(*columns, strict=True):
        put(doc_id)
        put(text)
        if extra:
            put(_canonical(rest))
    return h.hexdigest()[:16]


def write_shard(table: pa.Table, out_dir: Path, source: str) -> ShardInfo:
    """Write one shard unless a file with its content hash exists (then it is the same
    content, and rewriting it would only disturb readers and caches keyed on it)."""
    digest = shard_hash(table)
    path = Path(out_dir) / f"{digest}.parquet"
    if not path.exists():
        with atomic_path(path, keep_existing=True) as tmp:
            pq.write_table(table, tmp)
    return ShardInfo(digest, str(path), table.num_rows, source)


# One source of rows: its name (the quarantine rows' file, the shards' source), its rows, and
# the types it declares for its fields (a Parquet file's columns; None: inferred from values)
Source = tuple[str, Iterable[Record], "dict[str, pa.DataType] | None"]


def file_sources(paths: list[str], text_field: str = "text", id_field: str = "id"
                 ) -> Iterator[Source]:
    """Every file the patterns name (sorted), each read when its turn comes."""
    files = expand_paths(paths)
    names = source_names(paths, files)  # what default ids call each file
    for path in files:
        yield (path, read_records(path, text_field, id_field, names[path]),
               declared_types(path, text_field, id_field))


def ingest(
    paths: list[str],
    out_dir: Path,
    corpus: str,
    text_field: str = "text",
    id_field: str = "id",
    shard_docs: int = 1000,
    limit_docs: int | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Read every file the patterns name (sorted) into shards of at most `shard_docs`
    documents under `out_dir`; stop after `limit_docs` good documents if given.
    `progress.advance(1)` after each row read (good or quarantined)."""
    return ingest_sources(file_sources(paths, text_field, id_field), out_dir, corpus,
                          shard_docs=shard_docs, limit_docs=limit_docs, progress=progress)


def ingest_sources(
    sources: Iterable[Source],
    out_dir: Path,
    corpus: str,
    shard_docs: int = 1000,
    limit_docs: int | None = None,
    progress: Progress | None = None,
) -> IngestResult:
    """Read the sources' rows, in order, into shards of at most `shard_docs` documents
    under `out_dir` (a shard never mixes sources); bad rows and ids met before go to the
    quarantine list; stop after `limit_docs` good documents if given.
    `progress.advance(1)` after each row read (good or quarantined)."""
    if shard_docs < 1:
        raise ValueError(f"shard_docs must be at least 1, got {shard_docs}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = IngestResult(corpus)
    seen_ids: set[str] = set()  # downstream joins on id: it must be unique in a corpus

    def limit_reached() -> bool:
        return limit_docs is not None and result.rows_ok >= limit_docs

    def flush(rows: list[dict], metas: list[dict], source: str,
              declared: dict[str, pa.DataType] | None) -> None:
        doc_fields = fields.from_rows(metas, declared)
        shard = write_shard(shard_table(rows, doc_fields), out_dir, source)
        result.shards.append(shard)
        for key in fields.json_keys(doc_fields.type if doc_fields is not None else None):
            result.json_fields[key] = result.json_fields.get(key, 0) + 1
            log.warning("ingest %s: field %r of %s (lines %d-%d) has values of different "
                        "types: shard %s holds it as JSON text", corpus, key, source,
                        rows[0]["line"], rows[-1]["line"], shard.shard_hash)

    for source, records, declared in sources:
        if limit_reached():
            break
        stats = result.per_file[source] = {"rows_in": 0, "rows_ok": 0, "rows_quarantined": 0}
        # the shard being filled: bookkeeping and fields; shards never mix sources
        rows: list[dict] = []
        metas: list[dict] = []
        for rec in records:
            stats["rows_in"] += 1
            if progress:
                progress.advance(1)
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
            metas.append(rec.meta)
            if len(rows) == shard_docs:
                flush(rows, metas, source, declared)
                rows, metas = [], []
            if limit_reached():
                break  # rows after this one are not read, so not counted
        if rows:
            flush(rows, metas, source, declared)
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


def ingest_corpus(cfg, name: str, progress: Progress | None = None) -> IngestResult:
    """The ingest stage for a corpus of ``cfg`` (a ``semisynth.config.Config``) read from
    files (its paths, relative ones from the data root) or from a Hugging Face dataset
    (``hf``), into shards under ``cfg.shard_dir``."""
    c = cfg.corpora[name]
    dataset = None
    if c.hf is not None:
        dataset = hf.open_dataset(c.hf, cfg.resolve)
        # a dataset's field types are inferred from its rows' values, as for JSON lines
        sources = [(dataset.spec, hf.read_dataset(dataset, c.text_field, c.id_field), None)]
    else:
        sources = file_sources([cfg.resolve(p) for p in c.paths], c.text_field, c.id_field)
    result = ingest_sources(sources, cfg.shard_dir(name), name, shard_docs=cfg.shard_docs,
                            limit_docs=c.limit_docs, progress=progress)
    result.dataset = dataset.columns if dataset is not None else None
    return result


def json_fields_message(result: IngestResult) -> str:
    """What ingest kept as JSON text, for the run's log."""
    held = ", ".join(f"{key!r} in {n} shard{'s' if n > 1 else ''}"
                     for key, n in result.json_fields.items())
    return f"fields whose values have different types, kept as JSON text: {held}"


def ingest_columns(result: IngestResult) -> dict:
    """What ingest adds to the corpus's row in ``corpora``: its row counts, and for a
    dataset its path, configuration, split and revision."""
    return {"rows_in": result.rows_in, "rows_ok": result.rows_ok,
            "rows_quarantined": result.rows_quarantined, **(result.dataset or {})}
