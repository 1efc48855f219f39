"""Derived corpora: ToEdit-edited shards from a scored corpus, and seeded mixtures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def content_hash(ids: list[str], texts: list[str]) -> str:
    """The shard key: its documents (id, text) in order."""
    h = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        h.update(doc_id.encode("utf-8") + b"\x00" + text.encode("utf-8") + b"\x01")
    return h.hexdigest()[:16]


def write_table_atomic(table: pa.Table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # content-addressed: same name, same content
        return path
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def edited_shard(score_path: Path, source_shard: Path, out_dir: Path) -> Path:
    """The edited documents of one scored shard, as a shard of the edited corpus."""
    scores = pq.read_table(score_path, columns=["id", "edited_text"])
    ids = scores.column("id").to_pylist()
    texts = scores.column("edited_text").to_pylist()
    table = pa.table(
        {
            "id": ids,
            "text": texts,
            "doc_hash": [text_hash(t) for t in texts],
            "source": [f"toedit:{Path(source_shard).name}"] * len(ids),
            "line": list(range(1, len(ids) + 1)),
        }
    )
    return write_table_atomic(table, Path(out_dir) / f"{content_hash(ids, texts)}.parquet")


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


def mixed_shard(
    components: dict[str, tuple[list[Path], list[Path]]],
    shares: dict[str, float],
    seed: int,
    shard_dir: Path,
    score_dir: Path,
) -> tuple[Path, Path]:
    """Mix components (name -> (shard paths, score paths)) into one shard, and carry
    their scores over: a mixture's documents were already scored in their components."""
    docs, scores = {}, {}
    for name, (shard_paths, score_paths) in components.items():
        docs[name] = pa.concat_tables(pq.read_table(p, columns=["id", "text", "doc_hash"]) for p in shard_paths)
        scores[name] = pa.concat_tables(pq.read_table(p) for p in score_paths)
    picks = mix_selection({n: t.num_rows for n, t in docs.items()}, shares, seed)
    doc_parts, score_parts = [], []
    for name, rows in picks.items():
        picked = docs[name].take(pa.array(rows))
        doc_parts.append(picked.append_column("source", pa.array([f"mix:{name}"] * len(rows))))
        # scores are keyed by id; join so the two tables stay aligned row for row
        index = pc.index_in(picked.column("id"), value_set=scores[name].column("id"))
        score_parts.append(scores[name].take(index))
    mixed_docs = pa.concat_tables(doc_parts)
    mixed_docs = mixed_docs.append_column("line", pa.array(range(1, mixed_docs.num_rows + 1)))
    key = content_hash(mixed_docs.column("id").to_pylist(), mixed_docs.column("text").to_pylist())
    shard = write_table_atomic(mixed_docs, Path(shard_dir) / f"{key}.parquet")
    score = write_table_atomic(pa.concat_tables(score_parts), Path(score_dir) / f"{key}.parquet")
    return shard, score
