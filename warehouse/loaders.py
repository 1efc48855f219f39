"""Loading rows that several writers (the flow, the commands) record the same way."""

from __future__ import annotations

from pathlib import Path

from semisynth.warehouse import db


def record_new_shards(wh: Path, run_id: str, corpus: str, shards: list) -> set[str]:
    """Add the corpus's shards (``ingest.ShardInfo``) not recorded before; returns the
    hashes recorded before."""
    seen = set(db.query(wh, "SELECT shard_hash FROM shards WHERE corpus = ?", [corpus],
                        read_only=False)["shard_hash"])
    db.insert(wh, "shards", [
        {"shard_hash": s.shard_hash, "corpus": corpus, "source": s.source, "path": str(s.path),
         "documents": s.documents, "first_seen_run": run_id}
        for s in shards if s.shard_hash not in seen
    ])
    return seen
