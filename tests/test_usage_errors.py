"""Plain user errors (issue 19): each exits 2 with a message naming the path or key it is
about, at once and without a traceback; a run stopped by its input is recorded REFUSED.
The commands run for real: in this process through ``main`` where nothing else is needed,
as the console script where the exit, the time, the memory or the user it runs as is the
point."""

import ctypes
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from semisynth.cli import main as cli
from semisynth.warehouse import db, records

REPO = Path(__file__).resolve().parents[1]
SEMISYNTH = Path(sys.executable).with_name("semisynth")
DOC = {"id": "a", "text": "The jury said the election was conducted fairly and the city thanked."}
# The classic "billion laughs": 342 bytes whose aliases expand to 9^9 (387 million) strings
BOMB = "\n".join(['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
                 + [f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]"
                    for p, c in zip("abcdefgh", "bcdefghi", strict=True)]) + "\n"


@pytest.fixture
def clean_env(monkeypatch):
    for name in [n for n in os.environ if n.startswith("SEMISYNTH_")]:
        monkeypatch.delenv(name)
    return monkeypatch


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMISYNTH_")}
    return {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", **extra}


def _semisynth(*args, timeout: float = 120, **popen) -> tuple[subprocess.CompletedProcess, float]:
    """The console script, from the repository (configs/demo.yaml is found there): its
    result and how long it took."""
    popen.setdefault("env", _env())
    started = time.monotonic()
    proc = subprocess.run([str(SEMISYNTH), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **popen)
    return proc, time.monotonic() - started


def _error(stderr: str) -> str:
    """The command's error line (libraries may warn before it)."""
    return next((line for line in stderr.splitlines() if line.startswith("error: ")), stderr)


def _docs(folder: Path) -> tuple[Path, Path]:
    """Two small document files: a candidate and a reference."""
    folder.mkdir(parents=True, exist_ok=True)
    a, b = folder / "a.jsonl", folder / "b.jsonl"
    a.write_text(json.dumps(DOC) + "\n")
    b.write_text(json.dumps({**DOC, "id": "b"}) + "\n")
    return a, b


def _a_recorded_run(root: Path, run_id: str = "r1") -> str:
    """A data root whose warehouse holds one finished run (what `report` reads)."""
    wh = db.init(db.warehouse_path(root))
    with records.tracked_run(wh, run_id, config_name="t", config_json="{}", model="m"):
        pass
    return run_id


def test_a_data_root_that_is_a_file_is_refused_naming_where_it_was_given(tmp_path, clean_env,
                                                                         capsys):
    file = tmp_path / "file"
    file.write_text("not a folder")
    a, b = _docs(tmp_path / "docs")
    for root, said in ((file, "is not a folder"), (file / "under", f"lies under {file}")):
        assert cli(["--data-root", str(root), "validate", str(a), "--reference", str(b)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --data-root: '{root}' {said}"), err
        assert "Traceback" not in err
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"data_root": str(file), "corpora": {}}))
    assert cli(["validate", str(a), "--reference", str(b), "--config", str(config)]) == 2
    assert f"{config}: data_root: " in capsys.readouterr().err
    clean_env.setenv("SEMISYNTH_HOME", str(file))
    assert cli(["release", "list"]) == 2
    assert f"SEMISYNTH_HOME='{file}'" in capsys.readouterr().err


def test_an_empty_data_root_is_refused_not_taken_as_the_current_folder(tmp_path, clean_env,
                                                                       capsys):
    clean_env.chdir(tmp_path)
    assert cli(["--data-root", "", "release", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data-root: is empty"), err
    a, b = _docs(tmp_path / "docs")
    config = REPO / "configs" / "demo.yaml"
    assert cli(["metrics", str(a), "--reference", str(b), "--config", str(config),
                "--set", 'data_root=""']) == 2
    assert f"{config}: data_root: Value error, is empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs"]  # nothing written here


# Linux capabilities (linux/capability.h, linux/prctl.h) that let root write where a
# file's mode forbids it
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER = 1, 2, 3


def _as_an_ordinary_user() -> None:
    """In a child before exec: drop from the bounding set the capabilities that let root
    bypass file modes, so the program exec'd has none of them (root's owner bits still
    apply: its interpreter may live under /root)."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def read_only_root(tmp_path):
    """A data root with a recorded run that commands may not write (mode 0o555; as root,
    the commands run without the capabilities that ignore it). Yields (root, the documents'
    folder, a writable folder, the run's id, subprocess arguments)."""
    root, docs, free = tmp_path / "root", tmp_path / "docs", tmp_path / "free"
    run_id = _a_recorded_run(root)
    _docs(docs)
    free.mkdir()
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    popen = {"preexec_fn": _as_an_ordinary_user} if os.geteuid() == 0 else {}
    try:
        yield root, docs, free, run_id, popen
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(stat.S_IRWXU)


def test_a_read_only_data_root_is_refused_by_validate_and_report(read_only_root):
    root, docs, free, run_id, popen = read_only_root
    proc, _ = _semisynth("--data-root", root, "validate", docs / "a.jsonl", "--reference",
                         docs / "b.jsonl", **popen)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr).startswith(f"error: the data root {root} is not writable "
                                          "(Permission denied"), proc.stderr
    assert "--data-root DIR" in proc.stderr and "Traceback" not in proc.stderr
    proc, _ = _semisynth("--data-root", root, "report", run_id, **popen)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr).startswith(
        f"error: the report's folder {root / 'runs' / run_id} is not writable"), proc.stderr
    assert "--out FILE" in proc.stderr and "Traceback" not in proc.stderr
    # what the message says to do works: the run is read from the read-only root
    proc, _ = _semisynth("--data-root", root, "report", run_id, "--out", free / "r.html", **popen)
    assert proc.returncode == 0, proc.stderr
    assert run_id in (free / "r.html").read_text()


def test_report_out_an_existing_folder_is_refused(tmp_path, capsys):
    run_id = _a_recorded_run(tmp_path / "root")
    folder = tmp_path / "reports"
    folder.mkdir()
    assert cli(["--data-root", str(tmp_path / "root"), "report", run_id, "--out",
                str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: {folder} is a folder; name the report's file, e.g. "
                          f"{folder / 'report.html'}"), err
    assert list(folder.iterdir()) == []
    assert cli(["--data-root", str(tmp_path / "root"), "report", run_id, "--out",
                str(folder / "report.html")]) == 0


def test_a_model_that_is_not_on_disk_is_refused_at_once_without_the_hub(tmp_path):
    """A Hugging Face id not in the local cache is refused before any work, naming the key
    and the model: the Hub is never asked (here it is an address nothing answers, where a
    request would wait for its timeout)."""
    a, b = _docs(tmp_path / "docs")
    env = _env(HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_ENDPOINT="http://10.255.255.1")
    env.pop("HF_HUB_OFFLINE", None)
    proc, took = _semisynth("--data-root", tmp_path / "root", "validate", a, "--reference", b,
                            "--set", "prior.model=nonexistent/model", env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr).startswith("error: prior.model: 'nonexistent/model' is neither a "
                                          "folder nor a model in the local Hugging Face cache")
    assert "hf download nonexistent/model" in proc.stderr and "Traceback" not in proc.stderr
    assert took < 30, took
    out = tmp_path / "out.jsonl"
    proc, took = _semisynth("edit", a, out, "--model", "nonexistent/model", env=env, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr).startswith("error: --model: 'nonexistent/model' is neither")
    assert not out.exists() and took < 30, took
    proc, _ = _semisynth("--data-root", tmp_path / "root", "validate", a, "--reference", b,
                         "--set", f"prior.model={tmp_path / 'no' / 'folder'}", env=env)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr) == ("error: prior.model: prior model folder not found: "
                                   f"'{tmp_path / 'no' / 'folder'}'")


def test_a_model_id_in_the_local_hugging_face_cache_is_loaded_from_there(tmp_path):
    """What ``hf download ORG/NAME`` leaves in the cache (refs/main naming a snapshot) is
    where the prior is loaded from; the recorded model id stays the Hub's."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-cache" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    code = ("from semisynth.tasks.prior import resolve_model\n"
            f"print(resolve_model('org/tiny', {str(tmp_path)!r}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=_env(HF_HUB_CACHE=str(tmp_path / "hf-cache")))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str((str(snapshot), "org/tiny"))


def test_an_unknown_gate_suite_is_refused_before_the_run_starts(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "suite", "prior": {"model": str(model)},
                                      "corpora": {"ref": {"role": "reference",
                                                          "paths": ["ref/*.jsonl"]}}}))
    root = tmp_path / "root"
    proc, _ = _semisynth("--data-root", root, "run", config, "--set", "gate.suite=a/b")
    assert proc.returncode == 2, proc.stderr
    assert f"{config}: gate.suite: Input should be 'coverage' (got 'a/b')" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not db.warehouse_path(root).exists()  # refused before the flow started


def _peak(*args: str, timeout: float) -> tuple[subprocess.CompletedProcess, float, float]:
    """``semisynth ARGS`` through ``main`` in a process of its own: its result, seconds,
    and the process's peak resident memory in MB. That is VmHWM, the peak of its own memory
    map: getrusage's ru_maxrss outlives exec, so it would report a large parent's (pytest's,
    after the prior was loaded) peak."""
    code = ("import re, sys\nfrom pathlib import Path\nfrom semisynth.cli import main\n"
            f"rc = main({list(args)!r})\n"
            "status = Path('/proc/self/status').read_text()\n"
            "print('peak-rss-kb=' + re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1), "
            "file=sys.stderr)\nsys.exit(rc)")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=_env())
    took = time.monotonic() - started
    peak = next(int(line.split("=")[1]) for line in proc.stderr.splitlines()
                if line.startswith("peak-rss-kb="))
    return proc, took, peak / 1024


def test_a_yaml_alias_bomb_is_refused_at_once_in_bounded_memory(tmp_path):
    """The 342-byte billion laughs took 43 s and 3.2 GB before its exit 2, building the
    repr of 9^9 strings for its error message; its aliases are now counted before any
    value is built."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    a, b = _docs(tmp_path / "docs")
    proc, took, peak_mb = _peak("validate", str(a), "--reference", str(b), "--config", str(bomb),
                                timeout=30)
    assert proc.returncode == 2, proc.stderr
    error = _error(proc.stderr)
    assert error == (f"error: {bomb}:6:4: its aliases expand this value to more than 100,000 "
                     "values (an alias bomb?); a config is refused past that"), error
    assert took < 20 and peak_mb < 1000, (took, peak_mb)
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text("name: t\ncorpora: &c {x: *c}\n")
    proc, _, _ = _peak("validate", str(a), "--reference", str(b), "--config", str(cycle),
                       timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert _error(proc.stderr) == (f"error: {cycle}:2:10: an alias refers to a value that "
                                   "holds it (a cycle)")


def test_config_errors_quote_at_most_80_characters_of_a_value(tmp_path, capsys):
    a, b = _docs(tmp_path / "docs")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"corpora": {"ref": {"role": "reference",
                                                          "paths": [str(b)]}}}))
    args = ["validate", str(a), "--reference", str(b), "--config", str(config)]
    shares = json.dumps({f"c{i}": 2.0 for i in range(5000)})
    for bad in ["name=" + "x" * 100_000, f"corpora.m.mix={shares}",
                f"edit.top_k=[{','.join(['1'] * 100_000)}]", "x" * 100_000,
                f"corpora.{'x' * 100_000}.paths=[{b}]"]:
        assert cli([*args, "--set", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err) < 600, (len(err), err[:600])
        assert "..." in err


def test_a_flow_run_refused_for_its_input_says_so_in_the_warehouse_and_in_prefect(
        prefect_server, tmp_path, capsys):
    from prefect.client.orchestration import get_client

    model = tmp_path / "model"
    model.mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"name": "refused", "prior": {"model": str(model)},
                                      "corpora": {"ref": {"role": "reference",
                                                          "paths": ["nowhere/*.jsonl"]}}}))
    root = tmp_path / "root"
    assert cli(["--data-root", str(root), "run", str(config)]) == 2
    assert f"no document files match {root / 'nowhere'}" in capsys.readouterr().err
    wh = db.warehouse_path(root)
    run = db.query(wh, "SELECT flow_run_id, status, message FROM runs").iloc[0]
    assert run.status == "REFUSED", run
    assert run.message.startswith(f"input refused: no document files match {root / 'nowhere'}")
    assert db.query(wh, "SELECT count(*) AS n FROM finished_runs").n[0] == 0
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(run.flow_run_id)).state
    assert (state.type.value, state.name) == ("FAILED", "Refused")
    assert state.message.startswith("input refused: no document files match")
