"""The pipeline's rows in the warehouse: one function per record, used by the flow and the
commands alike (a flow only wires; these are the stage outputs it stores)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from semisynth.warehouse import db

RUN_STATES = ("RUNNING", "COMPLETED", "FAILED", "CRASHED")


@dataclass
class RunHandle:
    """The outcome a tracked run ends with (COMPLETED unless set)."""

    run_id: str
    status: str = "COMPLETED"
    message: str | None = None

    def finish(self, status: str, message: str | None = None) -> None:
        if status not in RUN_STATES:
            raise ValueError(f"unknown run status {status!r}")
        self.status, self.message = status, message


@contextlib.contextmanager
def tracked_run(wh: Path, run_id: str, *, config_name: str, config_json: str, model: str,
                message: str | None = None, flow_run_id: str | None = None
                ) -> Iterator[RunHandle]:
    """The run's ``runs`` row: RUNNING with this process's host and pid while the body runs,
    then the handle's status (COMPLETED by default), or CRASHED with the exception when the
    body raises. A process killed outright leaves RUNNING with a pid that is gone, which
    ``running_but_gone`` finds."""
    db.insert(wh, "runs", [{
        "run_id": run_id, "flow_run_id": flow_run_id, "config_name": config_name,
        "config_json": config_json, "started_at": db.now(), "status": "RUNNING",
        "model": model, "message": message, "host": socket.gethostname(), "pid": os.getpid(),
    }])
    handle = RunHandle(run_id, message=message)
    close_dead_runs(wh)
    try:
        yield handle
    except BaseException as exc:
        _finish(wh, run_id, "CRASHED", f"{type(exc).__name__}: {exc}")
        raise
    _finish(wh, run_id, handle.status, handle.message)


def _finish(wh: Path, run_id: str, status: str, message: str | None) -> None:
    db.execute(wh, "UPDATE runs SET finished_at = ?, status = ?, message = ? WHERE run_id = ?",
               [db.now(), status, message, run_id])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def running_but_gone(wh: Path) -> list[str]:
    """Runs still RUNNING whose process, on this host, no longer exists."""
    frame = db.query(wh, "SELECT run_id, host, pid FROM runs WHERE status = 'RUNNING'",
                     read_only=False)
    here = socket.gethostname()
    return [r.run_id for r in frame.itertuples()
            if r.host == here and r.pid == r.pid and r.pid is not None and not _alive(int(r.pid))]


def close_dead_runs(wh: Path) -> list[str]:
    """Mark CRASHED the runs ``running_but_gone`` finds; returns their ids."""
    gone = running_but_gone(wh)
    for run_id in gone:
        _finish(wh, run_id, "CRASHED", "its process is gone (killed or lost) while RUNNING")
    return gone


def record_new_shards(wh: Path, run_id: str, corpus: str, shards: Sequence) -> set[str]:
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


def record_ingest(wh: Path, run_id: str, result) -> set[str]:
    """An ingest result (``tasks.ingest.IngestResult``): its new shards and its quarantined
    rows; returns the hashes of the shards recorded before."""
    seen = record_new_shards(wh, run_id, result.corpus, result.shards)
    db.insert(wh, "quarantine", [{**q, "run_id": run_id} for q in result.quarantine])
    return seen


_SCORE_COLUMNS = ["id", "doc_hash", "scored_tokens", "nll_sum", "ppl", "revised_tokens",
                  "edited_tokens", "dropped_tokens"]


@dataclass
class CorpusRecord:
    """What the warehouse keeps of one corpus in one run."""

    name: str
    role: str
    reference: str | None
    origin: str  # "files", "edited_from:<corpus>", "mix"
    shards: list[Path]
    scores: list[Path]
    ingest: Mapping[str, int] | None = None  # rows_in, rows_ok, rows_quarantined
    edited_into: Sequence[str] = ()  # corpora edited from this one
    edit: Mapping | None = None  # strategy, threshold, top_k, beta, seed of those edits


def record_corpora(wh: Path, run_id: str, corpora: Sequence[CorpusRecord]) -> None:
    """``corpora`` (one row each; tokens = scored tokens, as ``doc_scores.tokens``),
    ``doc_scores`` (one row per document) and ``edits`` (per document of each corpus that is
    edited into another) from the corpora's score files."""
    rows, doc_frames, edit_frames = [], [], []
    for c in corpora:
        docs = tokens = 0
        for shard, score in zip(c.shards, c.scores, strict=True):
            t = pq.read_table(score, columns=_SCORE_COLUMNS).to_pandas().rename(
                columns={"id": "doc_id", "scored_tokens": "tokens"})
            docs += len(t)
            tokens += int(t["tokens"].sum())
            shard_hash = Path(shard).stem
            doc_frames.append(t[["doc_id", "doc_hash", "tokens", "nll_sum", "ppl"]].assign(
                run_id=run_id, corpus=c.name, shard_hash=shard_hash))
            for target in c.edited_into:
                edit_frames.append(t[["doc_id", "tokens", "revised_tokens", "edited_tokens",
                                      "dropped_tokens"]].assign(
                    run_id=run_id, corpus=target, source_corpus=c.name, shard_hash=shard_hash,
                    **dict(c.edit or {})))
        rows.append({"run_id": run_id, "corpus": c.name, "role": c.role,
                     "reference": c.reference, "origin": c.origin, "documents": docs,
                     "tokens": tokens, "shards": len(c.shards), **dict(c.ingest or {})})
    db.insert(wh, "corpora", rows)
    for table, frames in (("doc_scores", doc_frames), ("edits", edit_frames)):
        if frames:
            db.insert(wh, table, pd.concat(frames, ignore_index=True))


def record_validations(wh: Path, rows: Sequence[dict]) -> int:
    """A gate result's rows (``GateResult.rows``: the columns of ``validations``)."""
    return db.insert(wh, "validations", list(rows))


def record_release(wh: Path, row: dict) -> int:
    return db.insert(wh, "releases", [{**row, "created_at": db.now()}])


def record_experiment(wh: Path, results: Sequence[dict], arms: Sequence[dict]) -> int:
    """A collapse experiment's rows: ``experiment_results`` (one per arm, seed and held-out
    corpus) and ``experiment_arms`` (what each arm's stream is made of); returns the result
    rows written."""
    db.insert(wh, "experiment_arms", list(arms))
    return db.insert(wh, "experiment_results", list(results))
