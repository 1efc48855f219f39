"""The flow on a real Dask cluster reached through SEMISYNTH_DASK_ADDRESS: GPU-resource
routing of the score tasks, the incremental nightly refresh, and a worker killed mid-scoring.

Everything is real (a distributed Scheduler with Nanny-managed worker processes, the
prior, the Prefect server, DuckDB, the gate) on a few short documents.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from semisynth.warehouse import db

pytestmark = pytest.mark.slow


def _brown_texts(path: Path, count: int, chars: int = 300) -> list[str]:
    texts = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"][:chars])
            if len(texts) == count:
                break
    return texts


def _write_jsonl(path: Path, prefix: str, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": f"{prefix}-{i}", "text": text}) + "\n")
    return path


def _config(home: Path, prior_folder: Path, corpora: dict, max_tokens: int, shard_docs: int = 1000) -> Path:
    config = {
        "name": "dask",
        "data_root": str(home),
        "seed": 5,
        "shard_docs": shard_docs,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": max_tokens},
        "corpora": corpora,
        "metrics": {"bootstrap": 10},
    }
    path = home / "dask.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _placement_plugin():
    from distributed.diagnostics.plugin import SchedulerPlugin

    class ScoreTaskPlacement(SchedulerPlugin):
        """The worker each score task finished on: [(key, worker address)]."""

        name = "score-task-placement"

        def __init__(self):
            self.finished: list[tuple[str, str]] = []

        def transition(self, key, start, finish, *args, stimulus_id=None, **kwargs):
            if finish == "memory" and str(key).startswith("score_task"):
                self.finished.append((str(key), kwargs.get("worker")))

    return ScoreTaskPlacement()


@contextlib.contextmanager
def dask_cluster(workers: dict[str, dict]):
    """A real cluster: the scheduler in this process, each worker its own process under a
    Nanny (which restarts it if it dies), one thread each. SEMISYNTH_DASK_ADDRESS points
    the flow at it."""
    from distributed import Client, Nanny, Scheduler, SpecCluster

    spec = {name: {"cls": Nanny, "options": {"nthreads": 1, "name": name, **opts}}
            for name, opts in workers.items()}
    with (
        SpecCluster(workers=spec, scheduler={"cls": Scheduler, "options": {"dashboard": False}},
                    name="semisynth-test") as cluster,
        Client(cluster, set_as_default=False) as client,
        pytest.MonkeyPatch.context() as mp,
    ):
        client.wait_for_workers(len(spec), timeout=120)
        mp.setenv("SEMISYNTH_DASK_ADDRESS", cluster.scheduler_address)
        mp.delenv("SEMISYNTH_DASK_GPU", raising=False)
        yield cluster, client


def _workers_by_name(client) -> dict[str, str]:
    return {w["name"]: addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}


def _busy_workers(scheduler) -> list[str]:
    """Workers running a score task now (read from the scheduler's thread-owned state)."""
    try:
        return [addr for addr, ws in list(scheduler.workers.items())
                if any(str(ts.key).startswith("score_task") for ts in list(ws.processing))]
    except RuntimeError:  # changed while we looked: look again next time
        return []


def _loaded_priors(client) -> dict[str, int]:
    def count() -> int:
        from semisynth.tasks import prior

        return len(prior._LOADED)

    return client.run(count)


# ---------------------------------------------------------------------------------------
# GPU routing + incremental refresh: one cluster, two nightly runs


@pytest.fixture(scope="module")
def two_runs(prefect_server, tmp_path_factory, prior_folder, brown_shards):
    """Run 1 over two human source files (one shard each) and a monitored corpus; then a
    third human file is added and run 2 goes over all of it. The cluster has one worker
    that advertises {"GPU": 1} and one that does not."""
    from semisynth.flows.nightly import run

    home = tmp_path_factory.mktemp("dask-home")
    src = home / "sources"
    texts = _brown_texts(brown_shards[0], 12, chars=500)
    _write_jsonl(src / "human" / "a.jsonl", "a", texts[0:4])
    _write_jsonl(src / "human" / "b.jsonl", "b", texts[4:8])
    _write_jsonl(src / "other.jsonl", "o", _brown_texts(brown_shards[1], 4, chars=500))
    path = _config(home, prior_folder, {
        "human": {"role": "reference", "paths": [str(src / "human" / "*.jsonl")]},
        "other": {"role": "monitored", "paths": [str(src / "other.jsonl")], "reference": "human"},
    }, max_tokens=64)
    placement = _placement_plugin()
    with dask_cluster({"gpu": {"resources": {"GPU": 1}}, "cpu": {}}) as (cluster, client):
        cluster.scheduler.add_plugin(placement)
        started = time.perf_counter()
        first = run(str(path))
        seconds_1 = time.perf_counter() - started
        placed_1 = list(placement.finished)
        _write_jsonl(src / "human" / "c.jsonl", "c", texts[8:12])
        second = run(str(path))
        workers = _workers_by_name(client)
        loaded = _loaded_priors(client)
    return {"home": home, "first": first, "second": second, "placed_1": placed_1,
            "placed": list(placement.finished), "workers": workers, "loaded": loaded,
            "seconds_1": seconds_1, "documents": 12}


def test_score_tasks_run_only_on_the_gpu_resource_worker(two_runs):
    """The 'gpu' worker is an ordinary CPU process started with resources {"GPU": 1}: it is
    the only double in this test (there is no GPU here). Every score task of both runs
    must have run on it, none on the worker without the resource; and that worker loaded
    the prior once for all its tasks, while the other never loaded it."""
    gpu, cpu = two_runs["workers"]["gpu"], two_runs["workers"]["cpu"]
    placed = two_runs["placed"]
    # run 1: 3 shards (a, b, other); run 2: 4 (a, b, c, other; cached but still tasks)
    assert len(two_runs["placed_1"]) == 3
    assert len(placed) == 7
    assert {worker for _, worker in placed} == {gpu}
    assert two_runs["loaded"] == {gpu: 1, cpu: 0}


def test_second_run_scores_only_the_new_shard(two_runs):
    home, first, second = two_runs["home"], two_runs["first"], two_runs["second"]
    wh = db.warehouse_path(home)
    new = db.query(wh, "SELECT corpus, shard_hash FROM shards WHERE first_seen_run = ?", [second["run_id"]])
    assert list(new.corpus) == ["human"]  # exactly one new shard: the added file
    score_files = list((home / "scores").glob("*/*.parquet"))
    new_file = [p for p in score_files if p.stem == new.shard_hash[0]]
    assert len(new_file) == 1
    new_tokens = int(pq.read_table(new_file[0], columns=["scored_tokens"]).column(0).to_numpy().sum())
    assert new_tokens > 0
    assert second["model_work_tokens"] == new_tokens
    all_tokens = sum(int(pq.read_table(p, columns=["scored_tokens"]).column(0).to_numpy().sum())
                     for p in score_files)
    assert first["model_work_tokens"] == all_tokens - new_tokens


def test_second_run_measures_and_gates_the_whole_corpus(two_runs):
    home, first, second = two_runs["home"], two_runs["first"], two_runs["second"]
    wh = db.warehouse_path(home)
    docs = two_runs["documents"]
    corpora = db.query(wh, "SELECT run_id, documents, shards FROM corpora WHERE corpus = 'human'")
    by_run = corpora.set_index("run_id")
    assert by_run.loc[first["run_id"], "documents"] == 8
    assert by_run.loc[second["run_id"], "documents"] == docs
    assert by_run.loc[second["run_id"], "shards"] == 3
    scored = db.query(wh, "SELECT count(DISTINCT doc_id) FROM doc_scores WHERE run_id = ? AND corpus = 'human'",
                      [second["run_id"]]).iloc[0, 0]
    assert scored == docs
    # the metrics stage read every document of the corpus, old and new
    hist = db.query(wh, "SELECT sum(documents) FROM ppl_histograms WHERE run_id = ? AND corpus = 'human'",
                    [second["run_id"]]).iloc[0, 0]
    assert hist == docs
    split = db.query(wh, "SELECT count(*) FROM metrics WHERE run_id = ? AND corpus = 'human' "
                         "AND comparison = 'split_half'", [second["run_id"]]).iloc[0, 0]
    assert split > 0
    gate = db.query(wh, "SELECT count(*) FROM validations WHERE run_id = ? AND corpus = 'other'",
                    [second["run_id"]]).iloc[0, 0]
    assert gate > 0
    assert set(second["gates"]) == {"other"}


# ---------------------------------------------------------------------------------------
# worker loss


def test_worker_killed_mid_scoring_loses_no_finished_shard(prefect_server, tmp_path, prior_folder, brown_shards):
    """Two worker processes (no GPU resource: the tasks run on both). Once at least one
    shard's score file exists and others are still pending, one worker that is running a
    score task is killed with SIGKILL. Dask reschedules its tasks (its Nanny starts a
    fresh process); the run completes; every shard has exactly one score file; and every
    file that existed at the kill is the very same file afterwards (same inode and mtime:
    never scored or written again; a rerun of a finished shard reuses its file)."""
    from semisynth.flows.nightly import run

    home = tmp_path / "home"
    shards = 8
    texts = _brown_texts(brown_shards[2], 2 * shards + 8, chars=400)
    _write_jsonl(home / "sources" / "human.jsonl", "h", texts[:-8])
    _write_jsonl(home / "sources" / "other.jsonl", "o", texts[-8:])
    path = _config(home, prior_folder, {
        "human": {"role": "reference", "paths": [str(home / "sources" / "human.jsonl")]},
        "other": {"role": "monitored", "paths": [str(home / "sources" / "other.jsonl")], "reference": "human"},
    }, max_tokens=32, shard_docs=2)
    scores = home / "scores"
    result: dict = {}
    killed: dict = {}

    # two processes on one host: each gets its share of the cores for torch, as the
    # LocalCluster would give them
    share = {"env": {"SEMISYNTH_TORCH_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}}
    with dask_cluster({"w1": share, "w2": share}) as (cluster, client):
        pids = client.run(os.getpid)

        def flow() -> None:
            try:
                result.update(run(str(path)))
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                result["error"] = exc

        thread = threading.Thread(target=flow)
        thread.start()
        deadline = time.monotonic() + 300
        while thread.is_alive() and time.monotonic() < deadline:
            done = list(scores.glob("*/*.parquet"))
            busy = _busy_workers(cluster.scheduler)
            if done and busy:
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed["worker"] = busy[0]
                killed["files"] = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
                                   for p in scores.glob("*/*.parquet")}
                break
            time.sleep(0.01)
        thread.join(timeout=300)
        assert not thread.is_alive(), "the flow did not finish"
        if killed:
            assert killed["worker"] not in cluster.scheduler.workers  # Dask saw it die

    assert "error" not in result, result.get("error")
    assert killed, "no score file appeared while a worker was busy: nothing was killed"
    total = shards + 4  # and the monitored corpus's four
    assert 1 <= len(killed["files"]) < total, "the kill came too late to leave shards pending"
    assert result["state"] in ("COMPLETED", "FAILED")  # FAILED: a gate verdict, not a crash
    wh = db.warehouse_path(home)
    hashes = set(db.query(wh, "SELECT shard_hash FROM shards").shard_hash)
    assert len(hashes) == total
    files = list(scores.glob("*/*.parquet"))
    assert sorted(p.stem for p in files) == sorted(hashes)  # exactly one score file a shard
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    for name, ident in killed["files"].items():
        assert after[name] == ident, f"{name} was written again after the kill"
    assert db.query(wh, "SELECT documents FROM corpora WHERE run_id = ? AND corpus = 'human'",
                    [result["run_id"]]).iloc[0, 0] == 2 * shards


def test_local_cluster_workers_split_the_cores(monkeypatch):
    """Two LocalCluster workers on one host: each gets its share of the cores for torch
    (the Scorer would otherwise give every process all of them)."""
    from distributed import Client, LocalCluster

    from semisynth.config import Config
    from semisynth.flows.runner import task_runner

    monkeypatch.delenv("SEMISYNTH_DASK_ADDRESS", raising=False)
    cfg = Config(dask_workers=2, corpora={"r": {"role": "reference", "paths": ["x.jsonl"]}})
    kwargs = task_runner(cfg).cluster_kwargs
    share = str(max(1, (os.cpu_count() or 1) // 2))
    assert kwargs["env"] == {"SEMISYNTH_TORCH_THREADS": share}
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        seen = client.run(lambda: os.environ.get("SEMISYNTH_TORCH_THREADS"))
    assert list(seen.values()) == [share, share]
    one = task_runner(Config(corpora=cfg.corpora)).cluster_kwargs
    assert "env" not in one  # one worker: torch keeps every core
