"""Derived corpora: ToEdit-edited shards from a scored corpus, and seeded mixtures.

Their documents keep the fields of the documents they come from (``semisynth.fields``):
an edited document is its source document with the edited text; a mixture's document is
its component's, with the component named in the shard's ``component`` column."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semisynth import fields
from semisynth.documents import atomic_path
from semisynth.tasks.ingest import SHARD_SCHEMA, ShardInfo, doc_hash, write_shard
from semisynth.warehouse.records import CorpusRecord


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    if path.exists():  # content-addressed: same name, same content
        return path
    with atomic_path(path, keep_existing=True) as tmp:
        pq.write_table(table, tmp)
    return path


def edited_shard(score_path: Path, source_shard: Path, out_dir: Path) -> Path:
    """The edited documents of one scored shard, as a shard of the edited corpus: the
    source shard's documents, fields and component, with the edited text."""
    scores = pq.read_table(score_path, columns=["id", "edited_text"])
    docs = pq.read_table(source_shard)
    if docs.column("id") != scores.column("id"):
        raise ValueError(f"{score_path} does not hold the scores of {source_shard} row for "
                         "row: its ids differ")
    texts = scores.column("edited_text").to_pylist()
    source = f"toedit:{Path(source_shard).name}"
    edited = {"text": texts, "doc_hash": [doc_hash(t) for t in texts],
              "source": [source] * len(texts), "line": range(1, len(texts) + 1)}
    for name, values in edited.items():
        docs = docs.set_column(docs.schema.get_field_index(name), SHARD_SCHEMA.field(name),
                               pa.array(values, SHARD_SCHEMA.field(name).type))
    return Path(write_shard(docs, Path(out_dir), source).path)


def mix_selection(doc_counts: dict[str, int], shares: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Which documents of each component a mixture takes: the largest mixture the
    components allow at the given document shares, drawn without replacement."""
    total = min(int(doc_counts[name] / share) for name, share in shares.items() if share > 0)
    rng = np.random.default_rng(seed)
    picks = {}
    for name in sorted(shares):
        take = int(round(total * shares[name]))
        picks[name] = np.sort(rng.choice(doc_counts[name], size=min(take, doc_counts[name]), replace=False))
    return picks


def mixed_shards(
    components: dict[str, tuple[list[Path], list[Path]]],
    shares: dict[str, float],
    seed: int,
    shard_dir: Path,
    score_dir: Path,
    shard_docs: int,
) -> tuple[list[Path], list[Path]]:
    """Mix components (name -> (shard paths, score paths)) into shards, and carry their
    scores over: a mixture's documents were already scored in their components."""
    counts = {name: sum(pq.read_metadata(p).num_rows for p in shard_paths)
              for name, (shard_paths, _) in components.items()}
    picks = mix_selection(counts, shares, seed)
    return picked_shards(components, picks, shard_dir, score_dir, "mix", shard_docs)


def _picked_rows(components: dict[str, tuple[list[Path], list[Path]]],
                 picks: dict[str, np.ndarray], origin: str) -> Iterator[tuple[pa.Table, pa.Table]]:
    """(documents, their scores) of the picked rows, one component shard at a time."""
    for name, rows in picks.items():
        shard_paths, score_paths = components[name]
        rows, first = np.asarray(rows, np.int64), 0
        for shard_path, score_path in zip(shard_paths, score_paths, strict=True):
            size = pq.read_metadata(shard_path).num_rows
            here = rows[(rows >= first) & (rows < first + size)] - first
            first += size
            if not here.size:
                continue
            taken = pa.array(here)
            docs = pq.read_table(shard_path).take(taken)
            scores = pq.read_table(score_path).take(taken)
            if docs.column("id") != scores.column("id"):
                raise ValueError(f"{score_path} does not hold the scores of {shard_path} row "
                                 "for row: its ids differ")
            yield _as_component(docs, name, origin), scores


def _as_component(docs: pa.Table, name: str, origin: str) -> pa.Table:
    """A component's documents as rows of a mixture (``<origin>:<name>`` their source):
    their fields, and ``name`` as their component; a component that is itself a mixture
    gives ``name/<its component>``, so that no document forgets where it came from."""
    n = docs.num_rows
    inner = (docs.column(fields.COMPONENT).to_pylist() if fields.COMPONENT in docs.column_names
             else [None] * n)
    columns = {"id": docs.column("id"), "text": docs.column("text"),
               "doc_hash": docs.column("doc_hash"),
               "source": pa.array([f"{origin}:{name}"] * n, pa.string()),
               fields.COMPONENT: pa.array([name if c is None else f"{name}/{c}" for c in inner],
                                          pa.string())}
    if (doc_fields := fields.shard_fields(docs)) is not None:
        columns[fields.FIELDS] = doc_fields
    return pa.table(columns)


def _mixture_table(pieces: list[pa.Table], where: str) -> pa.Table:
    """Pieces of components as one table: their fields as one struct type."""
    target = fields.unify([p.schema.field(fields.FIELDS).type if fields.FIELDS in p.column_names
                           else None for p in pieces], where)
    if target is None:
        return pa.concat_tables(pieces)
    return pa.concat_tables([
        p.drop_columns([c for c in [fields.FIELDS] if c in p.column_names]).append_column(
            pa.field(fields.FIELDS, target),
            fields.conform(fields.shard_fields(p), p.num_rows, target))
        for p in pieces])


def picked_shards(
    components: dict[str, tuple[list[Path], list[Path]]],
    picks: dict[str, np.ndarray],
    shard_dir: Path,
    score_dir: Path,
    origin: str,
    shard_docs: int,
) -> tuple[list[Path], list[Path]]:
    """Shards of at most ``shard_docs`` of the documents ``picks`` names (component -> row
    numbers in its shards, concatenated in order), each with its score file, the scores
    carried over from the components (name -> (shard paths, score paths)); each row keeps
    its fields, its ``component`` names its component, its ``source`` is
    ``<origin>:<component>``, its ``line`` its place in the whole. Reads one component
    shard at a time and holds at most one output shard."""
    shards, score_files = [], []
    docs_buffer: list[pa.Table] = []
    score_buffer: list[pa.Table] = []
    written = 0

    def flush(rows: int) -> None:
        nonlocal docs_buffer, score_buffer, written
        docs = _mixture_table(docs_buffer, f"mixture shard in {shard_dir}")
        scores = pa.concat_tables(score_buffer)
        out_docs, out_scores = docs.slice(0, rows), scores.slice(0, rows)
        docs_buffer, score_buffer = [docs.slice(rows)], [scores.slice(rows)]
        lines = pa.array(range(written + 1, written + rows + 1), pa.int64())
        out_docs = out_docs.add_column(out_docs.schema.get_field_index("source") + 1, "line",
                                       lines)
        shard = write_shard(out_docs, Path(shard_dir), origin)
        shards.append(Path(shard.path))
        score_files.append(write_table_atomic(out_scores,
                                              Path(score_dir) / f"{shard.shard_hash}.parquet"))
        written += rows

    for docs, scores in _picked_rows(components, picks, origin):
        docs_buffer.append(docs)
        score_buffer.append(scores)
        while sum(t.num_rows for t in docs_buffer) >= shard_docs:
            flush(shard_docs)
    left = sum(t.num_rows for t in docs_buffer)
    if left:
        flush(left)
    return shards, score_files


def derive(cfg, name: str, shards: dict[str, list[Path]], scores: dict[str, list[Path]],
           score_dir: Path) -> tuple[list[Path], list[Path] | None]:
    """The shards of a derived corpus of ``cfg``, from its sources' shards and scores:
    an edited corpus's shards (to be scored: returns (shards, None)), or a mixture's one
    shard with the scores carried over from its components (returns (shards, scores))."""
    c = cfg.corpora[name]
    if c.edited_from:
        return [edited_shard(sc, sh, cfg.shard_dir(name))
                for sh, sc in zip(shards[c.edited_from], scores[c.edited_from], strict=True)], None
    if c.mix:
        return mixed_shards({m: (shards[m], scores[m]) for m in c.mix}, c.mix, cfg.seed,
                            cfg.shard_dir(name), score_dir, cfg.shard_docs)
    raise ValueError(f"corpus {name!r} is read from files, not derived")


def origin(cfg, name: str) -> str:
    """How a corpus of ``cfg`` is made, as the warehouse records it."""
    c = cfg.corpora[name]
    if c.ingested:
        return "hf" if c.hf is not None else "files"
    return f"edited_from:{c.edited_from}" if c.edited_from else "mix"


def shard_infos(shards: list[Path], source: str) -> list[ShardInfo]:
    """The ``shards`` rows of shards that were made, not ingested."""
    return [ShardInfo(p.stem, str(p), pq.read_metadata(p).num_rows, source) for p in shards]


def derived_shard_infos(cfg, name: str, shards: list[Path]) -> list[ShardInfo]:
    """The ``shards`` rows of a derived corpus's shards."""
    c = cfg.corpora[name]
    return shard_infos(shards, f"toedit:{c.edited_from}" if c.edited_from else "mix")


def corpus_records(cfg, shards: dict[str, list[Path]], scores: dict[str, list[Path]],
                   ingest_counts: dict[str, dict]) -> list[CorpusRecord]:
    """What the warehouse records of each corpus of ``cfg`` that was built."""
    edit = {"strategy": cfg.edit.strategy, "params": cfg.edit.build().resolved(),
            "seed": cfg.seed}
    return [CorpusRecord(
        name=n, role=c.role, reference=c.reference, origin=origin(cfg, n), shards=shards[n],
        scores=scores[n], ingest=ingest_counts.get(n),
        edited_into=[m for m, mc in cfg.corpora.items() if mc.edited_from == n], edit=edit)
        for n, c in cfg.corpora.items() if n in shards]
