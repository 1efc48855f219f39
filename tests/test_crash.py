"""Crashes and concurrency, with real processes: a second writer on a data root, a reader
holding the warehouse, runs and releases killed with SIGKILL part way, and the Prefect
server of a `semisynth run` killed with SIGKILL."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from semisynth.errors import DataRootLocked
from semisynth.tasks import release
from semisynth.warehouse import db, records
from semisynth.warehouse.lock import data_root_lock, holder

RUN = {"config_name": "t", "config_json": "{}", "model": "m"}


def _child(code: str, *args: str) -> subprocess.Popen:
    """A Python process running ``code`` (argv: ``args``), its stdout a pipe."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, text=True)


def _ready(proc: subprocess.Popen) -> str:
    """The child's first line of output: it says it is ready."""
    line = proc.stdout.readline().strip()
    assert line, f"child exited with {proc.wait()} before it was ready"
    return line


HOLD_ROOT = """
    import sys, time
    from semisynth.warehouse.lock import data_root_lock
    with data_root_lock(sys.argv[1], 0, "the holder test"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
"""


def test_lock_second_holder_fails_after_its_wait_then_waits_out_the_first(tmp_path):
    first = _child(HOLD_ROOT, str(tmp_path), "2")
    try:
        _ready(first)
        held_since = started = time.monotonic()
        with pytest.raises(DataRootLocked) as caught, data_root_lock(tmp_path, 0.5, "second"):
            pass
        assert 0.5 <= time.monotonic() - started < 1.5
        message = str(caught.value)
        assert f"in use by the holder test (pid {first.pid} on" in message
        assert "lock_wait_s" in message
        # with a wait longer than the first holder's run, the second runs after it
        with data_root_lock(tmp_path, 30, "second"):
            assert time.monotonic() - held_since >= 1.9  # the first held it for 2 s
            assert holder(tmp_path)["pid"] == os.getpid() and holder(tmp_path)["by"] == "second"
    finally:
        first.kill()
        first.wait()


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    first = _child(HOLD_ROOT, str(tmp_path), "60")
    _ready(first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    with data_root_lock(tmp_path, 0, "next"):  # no stale lock to clean up
        with data_root_lock(tmp_path, 0, "re-entered"):  # the same process: re-entrant
            assert holder(tmp_path)["by"] == "next"


def _config(tmp_path, **extra):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"d{i}", "text": f"Document number {i}."}) + "\n"
                            for i in range(4)))
    config = {"name": "locked", "data_root": str(tmp_path / "root"),
              "corpora": {"ref": {"role": "reference", "paths": [str(docs)]},
                          "cand": {"edited_from": "ref", "reference": "ref"}}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _semisynth(*args: str) -> subprocess.CompletedProcess:
    # a process of its own: an in-process `semisynth run` would leave Prefect's logging
    # and API settings of its temporary server behind in this test session
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.run([sys.executable, "-m", "semisynth.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def test_run_and_metrics_exit_3_while_another_run_holds_the_data_root(tmp_path):
    # a folder (never loaded): a prior that is not there is refused before the lock is tried
    (tmp_path / "no-prior-needed").mkdir()
    path = _config(tmp_path, prior={"model": str(tmp_path / "no-prior-needed")})
    root = tmp_path / "root"
    first = _child(HOLD_ROOT, str(root), "60")
    try:
        _ready(first)
        done = _semisynth("run", str(path), "--set", "lock_wait_s=0.2")
        assert done.returncode == 3, done.stderr
        assert f"the data root {root} is in use by the holder test (pid {first.pid}" in done.stderr
        assert "Traceback" not in done.stderr
        done = _semisynth("--data-root", str(root), "metrics", str(tmp_path / "docs.jsonl"),
                          "--reference", "ref", "--config", str(path), "--set", "lock_wait_s=0")
        assert done.returncode == 3, done.stderr
        assert "is in use by the holder test" in done.stderr
        # neither did any work: no warehouse, no shards, no Prefect server log
        assert sorted(p.name for p in root.iterdir()) == [".lock"]
    finally:
        first.kill()
        first.wait()


HOLD_WAREHOUSE = """
    import sys, time, duckdb
    con = duckdb.connect(sys.argv[1], read_only=True)  # as a long `semisynth query` does
    con.execute("SELECT count(*) FROM runs").fetchall()
    print("reading", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_writer_waits_out_a_reader_then_gives_a_clear_error(tmp_path):
    wh = db.init(tmp_path / "warehouse.duckdb")
    reader = _child(HOLD_WAREHOUSE, str(wh), "1.5")
    try:
        _ready(reader)
        started = time.monotonic()
        db.insert(wh, "runs", [{"run_id": "r1", "status": "COMPLETED"}])
        assert time.monotonic() - started > 0.5  # it waited for the reader to finish
        assert reader.wait(5) == 0
    finally:
        reader.kill()
    reader = _child(HOLD_WAREHOUSE, str(wh), "60")
    try:
        _ready(reader)
        with pytest.raises(db.WarehouseLocked, match=rf"stayed locked .* for 0.3 s .*PID {reader.pid}"):
            with db.connect(wh, wait_s=0.3):
                pass
    finally:
        reader.kill()
        reader.wait()
    assert db.query(wh, "SELECT run_id FROM runs").run_id.tolist() == ["r1"]


def test_rows_of_one_record_call_commit_together(tmp_path):
    wh = db.init(tmp_path / "warehouse.duckdb")
    with pytest.raises(Exception, match="no_such_column"):
        db.insert_tables(wh, {"metrics": [{"run_id": "r", "metric": "m", "value": 1.0}],
                              "validations": [{"run_id": "r", "no_such_column": 1}]})
    assert db.query(wh, "SELECT count(*) AS n FROM metrics").n[0] == 0


KILLED_IN_GATE = """
    import os, signal, sys
    from semisynth.warehouse import db, records
    wh = sys.argv[1]
    with records.tracked_run(wh, "killed", config_name="t", config_json="{}", model="m",
                             flow_run_id=sys.argv[2]):
        db.insert(wh, "metrics", [{"run_id": "killed", "corpus": "c", "comparison": "vs_reference",
                                   "metric": "distinct_2", "value": 0.1}])
        records.record_validations(wh, [{"run_id": "killed", "corpus": "c", "suite": "coverage",
                                         "expectation": "e1", "success": False}])
        os.kill(os.getpid(), signal.SIGKILL)  # killed half way through the gate
"""


def test_killed_run_is_crashed_and_not_shown_as_a_run_by_the_views(tmp_path):
    wh = db.init(tmp_path / "warehouse.duckdb")
    with records.tracked_run(wh, "done", **RUN):
        db.insert(wh, "metrics", [{"run_id": "done", "corpus": "c", "comparison": "vs_reference",
                                   "metric": "distinct_2", "value": 0.9}])
        records.record_validations(wh, [{"run_id": "done", "corpus": "c", "suite": "coverage",
                                         "expectation": "e1", "success": True}])
    flow_run_id = str(uuid.uuid4())
    killed = _child(KILLED_IN_GATE, str(wh), flow_run_id)
    assert killed.wait(60) == -signal.SIGKILL
    status = dict(db.query(wh, "SELECT run_id, status FROM runs").values.tolist())
    assert status == {"done": "COMPLETED", "killed": "RUNNING"}  # as the kill left it

    def shown() -> dict:
        return {view: sorted(db.query(wh, f"SELECT DISTINCT run_id FROM {view}").run_id)
                for view in ("gate_history", "latest_metrics", "metric_trend")}

    assert shown() == dict.fromkeys(("gate_history", "latest_metrics", "metric_trend"), ["done"])
    assert db.query(wh, "SELECT value FROM latest_metrics").value.tolist() == [0.9]
    with records.tracked_run(wh, "next", **RUN) as run:
        assert run.closed == {"killed": flow_run_id}  # for Prefect's flow run (flows.lifecycle)
    status = db.query(wh, "SELECT status, message FROM runs WHERE run_id = 'killed'").iloc[0]
    assert status.status == "CRASHED" and status.message == records.DEAD_RUN_MESSAGE
    assert shown()["gate_history"] == ["done"]
    # its report says so above its partial rows; a finished run's report does not
    from semisynth.quality.report import build_report

    page = build_report(tmp_path, "killed", tmp_path / "killed.html").read_text()
    assert "This run is CRASHED" in page and "may be partial" in page
    assert "may be partial" not in build_report(tmp_path, "done", tmp_path / "done.html").read_text()


KILLED_AFTER_RELEASE = """
    import os, signal, sys
    from semisynth.tasks import release
    released = release.release(sys.argv[1], "demo", [sys.argv[2]], "m", {}, {"run_id": "r1",
                                                                          "corpus": "c"},
                               warehouse=sys.argv[3])
    print(released.path, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # after the rename, before records.record_release
"""


def _release_then_kill(tmp_path, script: str):
    """A two-document shard released to releases/demo/v0001 by a child running ``script``,
    killed once it printed the version's path: (releases root, warehouse, shard, path)."""
    shard = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "text": ["one", "two"]}), shard)
    root, wh = tmp_path / "releases", db.init(tmp_path / "warehouse.duckdb")
    killed = _child(script, str(root), str(shard), str(wh))
    path = root / "demo" / "v0001"
    assert _ready(killed) == str(path)
    assert killed.wait(60) == -signal.SIGKILL
    return root, wh, shard, path


def test_release_without_its_row_after_a_kill_is_recorded_by_the_next_run(tmp_path):
    root, wh, shard, path = _release_then_kill(tmp_path, KILLED_AFTER_RELEASE)
    assert release.verify_release(path) == []  # whole on disk ...
    assert records.recorded_releases(wh) == set()  # ... and unknown to the warehouse
    assert release.release(root, "demo", [shard], "m", {}, {}).new is False  # "unchanged"
    sha = hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()
    # ... but for the intent recorded before the rename
    assert db.query(wh, "SELECT run_id, version, manifest_sha256 FROM release_intents"
                    ).values.tolist() == [["r1", "v0001", sha]]

    rows = release.restore_rows(root, wh)
    assert [(r["name"], r["version"], r["run_id"], r["corpus"], r["documents"], r["manifest_sha256"])
            for r in rows] == [("demo", "v0001", "r1", "c", 2, sha)]
    assert release.verify_release(path, warehouse=wh) == []
    assert release.restore_rows(root, wh) == []  # once only
    assert len(db.query(wh, "SELECT * FROM releases")) == 1


KILLED_RUN_AFTER_RELEASE = """
    import os, signal, sys
    from semisynth.tasks import release
    from semisynth.warehouse import records
    with records.tracked_run(sys.argv[3], "r1", config_name="t", config_json="{}", model="m"):
        released = release.release(sys.argv[1], "demo", [sys.argv[2]], "m", {},
                                   {"run_id": "r1", "corpus": "c"}, warehouse=sys.argv[3])
        print(released.path, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # the run RUNNING, the release without its row
"""


def test_a_killed_runs_release_is_recorded_only_once_its_run_is_crashed_and_as_intended(
        tmp_path, caplog):
    root, wh, shard, path = _release_then_kill(tmp_path, KILLED_RUN_AFTER_RELEASE)

    def recover() -> tuple[list[dict], str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="semisynth.tasks.release"):
            rows = release.restore_rows(root, wh)
        return rows, caplog.text

    # r1 is RUNNING as the kill left it: a run that is not known to be dead is left to record
    # its own releases
    rows, warned = recover()
    assert rows == [] and f"{path} has no warehouse row" in warned
    assert "its run r1 is RUNNING" in warned
    # the manifest changed after the kill is not the one intended
    manifest = path / "manifest.json"
    intended = manifest.read_bytes()
    manifest.chmod(0o644)
    manifest.write_bytes(intended.replace(b'"corpus": "c"', b'"corpus": "x"'))
    with records.tracked_run(wh, "next", **RUN) as run:  # as a run starts: r1 is CRASHED now
        assert run.closed == {"r1": None}
        rows, warned = recover()
        assert rows == [] and "no run recorded the intent to release demo v0001" in warned
        manifest.write_bytes(intended)
        rows, warned = recover()
    assert [(r["name"], r["version"], r["run_id"], r["corpus"]) for r in rows] == [
        ("demo", "v0001", "r1", "c")]
    assert warned == "" and records.recorded_releases(wh) == {("demo", "v0001")}
    assert release.verify_release(path, warehouse=wh) == []


@pytest.mark.slow
def test_temporary_server_marks_a_killed_runs_flow_run_crashed(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from semisynth.flows import lifecycle

    @flow(name="killed-run")
    def killed_run():
        pass

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))  # the server's own database
    before = {p.pid for p in psutil.Process().children()}  # the session's shared server, say
    # no API configured, as in a first run (the session's server sets one in its context)
    with temporary_settings(restore_defaults={PREFECT_API_URL}), \
            lifecycle.temporary_server(tmp_path / "logs") as api_url:
        assert os.environ["PREFECT_API_URL"] == api_url
        server = [p for p in psutil.Process().children()
                  if p.pid not in before and "server" in p.cmdline()]
        assert len(server) == 1
        with get_client(sync_client=True) as client:
            run = client.create_flow_run(killed_run, state=Running())
            marked = lifecycle.mark_crashed([str(run.id), None, str(uuid.uuid4())], "killed")
            assert marked == [str(run.id)]
            state = client.read_flow_run(run.id).state
            assert state.is_crashed() and state.message == "killed"
            assert lifecycle.mark_crashed([str(run.id)], "again") == []  # final: left alone
    assert "PREFECT_API_URL" not in os.environ
    assert not server[0].is_running()


def _prefect_servers(procs) -> list:
    """The Prefect servers among ``procs``: Prefect's own temporary ones (uvicorn) or
    `prefect server start`."""
    servers = []
    for p in procs:
        try:
            line = " ".join(p.cmdline())
        except psutil.NoSuchProcess:
            continue
        if "server" in line and ("uvicorn" in line or "prefect" in line):
            servers.append(p)
    return servers


@pytest.mark.slow
def test_sigkill_of_semisynth_run_leaves_no_process_behind(tmp_path, prior_folder, brown_shards):
    config = {"name": "killed", "data_root": str(tmp_path / "root"),
              "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 32},
              "corpora": {"brown": {"role": "reference", "paths": [str(brown_shards[0])],
                                    "limit_docs": 8},
                          "edited": {"edited_from": "brown", "reference": "brown"}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")  # a database of its own: slow to create
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
    log = tmp_path / "cli.log"
    with open(log, "wb") as out:
        cli_proc = subprocess.Popen([sys.executable, "-m", "semisynth.cli", "run", str(path)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
    cli_ps = psutil.Process(cli_proc.pid)
    descendants = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and cli_proc.poll() is None:
            # a score+edit task runs on the Dask worker (a spawned child process)
            if "Task run 'score-edit" in log.read_text(errors="replace"):
                break
            time.sleep(1)
        else:
            pytest.fail(f"the run ended or never scored:\n{log.read_text()[-3000:]}")
        descendants = cli_ps.children(recursive=True)
        assert any("spawn_main" in " ".join(p.cmdline()) for p in descendants)
        # one server, the run's own: the worker's tasks report to it too
        servers = _prefect_servers(descendants)
        assert len(servers) == 1 and servers[0].ppid() == cli_proc.pid, \
            [p.cmdline() for p in descendants]
        cli_proc.send_signal(signal.SIGKILL)
        cli_proc.wait()
        started = time.monotonic()
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert alive == [], [p.cmdline() for p in alive]
        print(f"every process of the killed run gone {time.monotonic() - started:.1f} s after "
              f"the kill: {len(descendants)} processes")
    finally:
        for p in [cli_ps, *descendants]:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
