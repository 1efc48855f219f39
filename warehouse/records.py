"""The pipeline's rows in the warehouse: one function per record, used by the flow and the
commands alike (a flow only wires; these are the stage outputs it stores)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from semisynth.errors import REFUSALS
from semisynth.warehouse import db

# REFUSED: the run stopped on its input (errors.REFUSALS: a file with no usable document, a
# missing source), which the user fixes; CRASHED is semisynth's failure or a killed process.
# Neither is a result: the views show COMPLETED and FAILED runs only.
RUN_STATES = ("RUNNING", "COMPLETED", "FAILED", "CRASHED", "REFUSED")
DEAD_RUN_MESSAGE = "its process is gone (killed or lost) while RUNNING"


@dataclass
class RunHandle:
    """The outcome a tracked run ends with (COMPLETED unless set), and the dead runs it
    found and marked CRASHED when it started (run id -> Prefect flow run id or None)."""

    run_id: str
    status: str = "COMPLETED"
    message: str | None = None
    closed: dict[str, str | None] = field(default_factory=dict)

    def finish(self, status: str, message: str | None = None) -> None:
        if status not in RUN_STATES:
            raise ValueError(f"unknown run status {status!r}")
        self.status, self.message = status, message


@contextlib.contextmanager
def tracked_run(wh: Path, run_id: str, *, config_name: str, config_json: str, model: str,
                message: str | None = None, flow_run_id: str | None = None
                ) -> Iterator[RunHandle]:
    """The run's ``runs`` row: RUNNING with this process's host and pid while the body runs,
    then the handle's status (COMPLETED by default), or when the body raises: REFUSED with
    the error for one of ``errors.REFUSALS``, else CRASHED with the exception. A process
    killed outright leaves RUNNING with a pid that is gone: the next tracked run marks it
    CRASHED (``close_dead_runs``; the handle's ``closed``)."""
    db.insert(wh, "runs", [{
        "run_id": run_id, "flow_run_id": flow_run_id, "config_name": config_name,
        "config_json": config_json, "started_at": db.now(), "status": "RUNNING",
        "model": model, "message": message, "host": socket.gethostname(), "pid": os.getpid(),
    }])
    handle = RunHandle(run_id, message=message, closed=close_dead_runs(wh))
    try:
        yield handle
    except REFUSALS as exc:
        _finish(wh, run_id, "REFUSED", f"input refused: {exc}")
        raise
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


def running_but_gone(wh: Path) -> dict[str, str | None]:
    """Runs still RUNNING whose process, on this host, no longer exists: run id -> its
    Prefect flow run id (None for a command's run)."""
    frame = db.query(wh, "SELECT run_id, flow_run_id, host, pid FROM runs WHERE status = 'RUNNING'",
                     read_only=False)
    here = socket.gethostname()
    return {r.run_id: r.flow_run_id if isinstance(r.flow_run_id, str) and r.flow_run_id else None
            for r in frame.itertuples()
            if r.host == here and r.pid == r.pid and r.pid is not None and not _alive(int(r.pid))}


def close_dead_runs(wh: Path) -> dict[str, str | None]:
    """Mark CRASHED the runs ``running_but_gone`` finds; returns them as it does."""
    gone = running_but_gone(wh)
    for run_id in gone:
        _finish(wh, run_id, "CRASHED", DEAD_RUN_MESSAGE)
    return gone


def _new_shard_rows(wh: Path, run_id: str, corpus: str, shards: Sequence) -> tuple[set[str], list[dict]]:
    """The hashes of the corpus's shards recorded before, and rows for the others."""
    seen = set(db.query(wh, "SELECT shard_hash FROM shards WHERE corpus = ?", [corpus],
                        read_only=False)["shard_hash"])
    return seen, [
        {"shard_hash": s.shard_hash, "corpus": corpus, "source": s.source, "path": str(s.path),
         "documents": s.documents, "first_seen_run": run_id}
        for s in shards if s.shard_hash not in seen
    ]


def record_new_shards(wh: Path, run_id: str, corpus: str, shards: Sequence) -> set[str]:
    """Add the corpus's shards (``ingest.ShardInfo``) not recorded before; returns the
    hashes recorded before."""
    seen, rows = _new_shard_rows(wh, run_id, corpus, shards)
    db.insert(wh, "shards", rows)
    return seen


def record_ingest(wh: Path, run_id: str, result) -> set[str]:
    """An ingest result (``tasks.ingest.IngestResult``): its new shards and its quarantined
    rows, in one transaction; returns the hashes of the shards recorded before."""
    seen, rows = _new_shard_rows(wh, run_id, result.corpus, result.shards)
    db.insert_tables(wh, {"shards": rows,
                          "quarantine": [{**q, "run_id": run_id} for q in result.quarantine]})
    return seen


@dataclass
class CorpusRecord:
    """What the warehouse keeps of one corpus in one run."""

    name: str
    role: str
    reference: str | None
    origin: str  # "files", "hf", "edited_from:<corpus>", "mix"
    shards: list[Path]
    scores: list[Path]
    # rows_in, rows_ok, rows_quarantined; for a dataset also dataset_path, dataset_name,
    # dataset_split, dataset_revision (``tasks.ingest.ingest_columns``)
    ingest: Mapping[str, int | str | None] | None = None
    edited_into: Sequence[str] = ()  # corpora edited from this one
    # strategy, params (the strategy's resolved parameters: ``EditStrategy.resolved``) and
    # seed of those edits
    edit: Mapping | None = None


# Each score file's rows, with the hash of the shard it scores (``score_files``, joined on
# the file name): DuckDB reads the Parquet files itself, a row group at a time, so the
# rows never pass through this process.
_SCORED = ("FROM read_parquet($paths, filename = true) AS s "
           "JOIN score_files AS f ON s.filename = f.path")
# ppl: NULL for a document too short to score (older score files hold NaN for it)
_DOC_SCORES = (f"INSERT INTO doc_scores (run_id, corpus, shard_hash, doc_id, doc_hash, tokens, "
               f"nll_sum, ppl) SELECT $run_id, $corpus, f.shard_hash, s.id, s.doc_hash, "
               f"s.scored_tokens, s.nll_sum, CASE WHEN isfinite(s.ppl) THEN s.ppl END {_SCORED}")
_EDITS = (f"INSERT INTO edits (run_id, corpus, source_corpus, shard_hash, doc_id, tokens, "
          f"revised_tokens, edited_tokens, dropped_tokens, strategy, params, threshold, top_k, "
          f"beta, seed) SELECT $run_id, $corpus, $source, f.shard_hash, s.id, s.scored_tokens, "
          f"s.revised_tokens, s.edited_tokens, s.dropped_tokens, $strategy, $params, $threshold, "
          f"$top_k, $beta, $seed {_SCORED}")
_TOTALS = "SELECT count(*), coalesce(sum(scored_tokens), 0) FROM read_parquet($paths)"


def record_corpora(wh: Path, run_id: str, corpora: Sequence[CorpusRecord]) -> None:
    """``corpora`` (one row each; tokens = scored tokens, as ``doc_scores.tokens``; totals
    aggregated over the score files), ``doc_scores`` (one row per document) and ``edits``
    (per document of each corpus that is edited into another) from the corpora's score
    files, in one transaction."""
    with db.transaction(wh) as con:
        rows = []
        for c in corpora:
            docs = tokens = 0
            if c.scores:
                paths = [str(Path(p).resolve()) for p in c.scores]
                con.register("score_files", pd.DataFrame(
                    {"path": paths, "shard_hash": [Path(s).stem for s in c.shards]}))
                try:
                    docs, tokens = con.execute(_TOTALS, {"paths": paths}).fetchone()
                    con.execute(_DOC_SCORES, {"paths": paths, "run_id": run_id, "corpus": c.name})
                    for target in c.edited_into:
                        con.execute(_EDITS, {"paths": paths, "run_id": run_id, "corpus": target,
                                             "source": c.name, **_edit_params(c.edit)})
                finally:
                    con.unregister("score_files")
            rows.append({"run_id": run_id, "corpus": c.name, "role": c.role,
                         "reference": c.reference, "origin": c.origin, "documents": int(docs),
                         "tokens": int(tokens), "shards": len(c.shards), **dict(c.ingest or {})})
        db.append_frame(con, "corpora", pd.DataFrame(rows))


def recorded_datasets(wh: Path, run_id: str, corpora: Sequence[str]) -> dict[str, dict]:
    """The datasets that ``corpora`` were read from in run ``run_id``: corpus -> its path,
    name (configuration), split and revision, as ``record_corpora`` stored them."""
    frame = db.query(wh, "SELECT corpus, dataset_path, dataset_name, dataset_split, "
                         "dataset_revision FROM corpora WHERE run_id = ? AND "
                         "dataset_path IS NOT NULL ORDER BY corpus", [run_id], read_only=False)
    return {r.corpus: {"path": r.dataset_path, "name": r.dataset_name, "split": r.dataset_split,
                       "revision": r.dataset_revision}
            for r in frame.itertuples() if r.corpus in corpora}


# Columns of ``edits`` older than its ``params``: each holds the parameter of its name where
# the strategy has one (ToEdit's do), else NULL, so that queries written for them still work.
_PARAM_COLUMNS = ("threshold", "top_k", "beta")


def _edit_params(edit: Mapping | None) -> dict:
    edit = dict(edit or {})
    params = edit.get("params")
    return {"strategy": edit.get("strategy"), "seed": edit.get("seed"),
            "params": None if params is None else json.dumps(params, sort_keys=True),
            **{k: (params or {}).get(k) for k in _PARAM_COLUMNS}}


def record_validations(wh: Path, rows: Sequence[dict]) -> int:
    """A gate result's rows (``GateResult.rows``: the columns of ``validations``)."""
    return db.insert(wh, "validations", list(rows))


def record_release(wh: Path, row: dict) -> int:
    """A release's row (``tasks.release.release_row``)."""
    return db.insert(wh, "releases", [{**row, "created_at": db.now()}])


def record_release_intent(wh: Path, row: dict) -> int:
    """The intent to rename a release into place (name, version, run_id, corpus, path,
    manifest_sha256), recorded before the rename."""
    return db.insert(wh, "release_intents", [{**row, "recorded_at": db.now()}])


def release_intent(wh: Path, name: str, version: str, manifest_sha256: str) -> dict | None:
    """The latest intent to release ``name`` ``version`` with exactly this manifest, with
    the status of its run (``run_status``: None when the run has no ``runs`` row), or None."""
    with db.connect(wh) as con:
        row = con.execute("SELECT i.*, r.status AS run_status FROM release_intents i "
                          "LEFT JOIN runs r USING (run_id) WHERE i.name = ? AND i.version = ? "
                          "AND i.manifest_sha256 = ? ORDER BY i.recorded_at DESC LIMIT 1",
                          [name, version, manifest_sha256]).fetchone()
        columns = [d[0] for d in con.description]
    return None if row is None else dict(zip(columns, row, strict=True))


def recorded_manifests(wh: Path, name: str) -> dict[str, str]:
    """version -> the manifest sha256 first recorded for it, for every recorded version of
    release ``name``."""
    frame = db.query(wh, "SELECT version, arg_min(manifest_sha256, created_at) AS sha "
                         "FROM releases WHERE name = ? GROUP BY version", [name], read_only=False)
    return dict(zip(frame["version"], frame["sha"], strict=True))


def recorded_releases(wh: Path) -> set[tuple[str, str]]:
    """(name, version) of every release the warehouse has a row for."""
    frame = db.query(wh, "SELECT DISTINCT name, version FROM releases", read_only=False)
    return set(zip(frame["name"], frame["version"], strict=True))


def recorded_release(wh: Path, name: str, version: str) -> dict | None:
    """The warehouse's row of release ``name`` ``version`` (read-only), or None."""
    frame = db.query(wh, "SELECT * FROM releases WHERE name = ? AND version = ? "
                         "ORDER BY created_at LIMIT 1", [name, version])
    return None if frame.empty else frame.iloc[0].to_dict()


def record_push(wh: Path, row: dict) -> int:
    """A push's row (``tasks.push.Pushed.row``), with this host."""
    return db.insert(wh, "pushes", [{**row, "host": socket.gethostname()}])


def recorded_push(wh: Path, destination: str) -> dict | None:
    """The latest row of a push to ``destination`` (a copy's URL, read-only), or None."""
    if not Path(wh).exists():
        return None
    try:
        frame = db.query(wh, "SELECT * FROM pushes WHERE destination = ? "
                             "ORDER BY pushed_at DESC LIMIT 1", [destination])
    except duckdb.CatalogException:  # a warehouse from before pushes were recorded
        return None
    return None if frame.empty else frame.iloc[0].to_dict()


def record_experiment(wh: Path, results: Sequence[dict], arms: Sequence[dict]) -> int:
    """A collapse experiment's rows: ``experiment_results`` (one per arm, seed and held-out
    corpus) and ``experiment_arms`` (what each arm's stream is made of); returns the result
    rows written."""
    added = db.insert_tables(wh, {"experiment_arms": list(arms),
                                  "experiment_results": list(results)})
    return added.get("experiment_results", 0)
