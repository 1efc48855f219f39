"""The `semisynth` command: its help, usage errors, global options and settings, and edit,
prior fetch and query on small inputs with the real prior (those marked slow)."""

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from semisynth import documents
from semisynth.cli import Invocation
from semisynth.cli import main as cli
from semisynth.config import Config, EditConfig, PriorConfig, load_config
from semisynth.settings import read_settings
from semisynth.strategy_registry import strategy_class
from semisynth.tasks.prior import default_prior_folder

REPO = Path(__file__).resolve().parents[1]
SEMISYNTH = Path(sys.executable).with_name("semisynth")
COMMANDS = ["run", "experiment", "demo", "edit", "query", "metrics", "validate", "estimate",
            "report", "serve", "prior", "release"]
LEAVES = ["run", "experiment", "demo", "edit", "query", "metrics", "validate", "estimate",
          "report", "serve",
          "prior fetch", "release list", "release verify", "release push"]
VARIABLES = {  # every SEMISYNTH_* variable: (value in the environment, value in Settings)
    "SEMISYNTH_HOME": ("/srv/semisynth", Path("/srv/semisynth")),
    "SEMISYNTH_DASK_ADDRESS": ("tcp://scheduler:8786", "tcp://scheduler:8786"),
    "SEMISYNTH_DASK_GPU": ("Require", "require"),
    "SEMISYNTH_DASK_WORKERS": ("3", 3),
    "SEMISYNTH_TORCH_THREADS": ("2", 2),
    "SEMISYNTH_NIGHTLY_CRON": ("30 1 * * *", "30 1 * * *"),
    "SEMISYNTH_GPU_WORKERS": ("4", 4),
}

DOCS = [
    {"id": "a", "text": "The jury said the election was conducted fairly and the city was thanked."},
    {"id": "b", "text": "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve."},
    {"id": "c", "text": "Water boils at one hundred degrees Celsius at sea level."},
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _help(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli([*args, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_help_lists_every_command(capsys):
    out = _help(capsys)
    listed = re.findall(r"^  (\w+)  ", out.split("Commands:")[1], flags=re.MULTILINE)
    assert listed == COMMANDS
    assert "--data-root DIR" in out and "-v, --verbose" in out
    codes = _flat(out.split("Exit codes:")[1].split("Options:")[0])
    for code in ("0 pass", "1 a release candidate failed", "2 a usage", "3 a crash",
                 "4 partial input", "130 Ctrl-C", "2, 3 and 130 win over 1, and 1 over 4"):
        assert code in codes, code


@pytest.mark.parametrize("command", ["edit", "metrics", "validate", "estimate"])
def test_every_command_that_reads_input_files_takes_allow_partial(capsys, command):
    assert "--allow-partial" in _help(capsys, command)


@pytest.mark.parametrize("command", LEAVES + ["prior", "release"])
def test_every_help_has_an_example(capsys, command):
    out = _help(capsys, *command.split())
    examples = out.split("Example:")[1]
    assert re.search(rf"^    semisynth (--data-root \S+ )?{command}\b", examples, re.MULTILINE), out


def test_edit_options_come_from_the_config_models(capsys):
    out = _flat(_help(capsys, "edit"))
    toedit = strategy_class("up_revise").Params
    options = {"--model": (PriorConfig, "model"), "--precision": (PriorConfig, "precision"),
               "--threshold": (toedit, "threshold"), "--top-k": (toedit, "top_k"),
               "--beta": (toedit, "beta"), "--low-threshold": (toedit, "low_threshold"),
               "--strategy": (EditConfig, "strategy"),
               "--seed": (Config, "seed"), "--max-tokens": (PriorConfig, "max_tokens"),
               "--batch-tokens": (PriorConfig, "batch_tokens")}
    for option, (model, name) in options.items():
        field = model.model_fields[name]
        assert field.description, f"{model.__name__}.{name} has no description"
        shown = out.split(f" {option} ", 1)[1]
        assert shown.split(" --")[0].find(_flat(field.description)) >= 0, option
        if field.default is not None:
            assert f"[default: {field.default}]" in shown.split(" --")[0], option
    assert "<auto|float32|bfloat16|float16>" in out
    # the default first, then the other built-in strategies
    assert "<up_revise|filtering|low_drop_up_revise>" in out


@pytest.mark.parametrize("args, message", [
    (["query", "SELECT 1", "--bogus"], "No such option: --bogus"),
    (["edit", "in.jsonl", "out.jsonl", "--precision", "float8"], "float8"),
    (["edit", "in.jsonl", "out.jsonl", "--top-k", "many"], "Invalid value for '--top-k'"),
    (["release", "verify"], "Missing argument 'NAME'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["release", "list", "-v"], "No such option: -v"),  # global options come first
])
def test_usage_errors_exit_2_with_a_message(capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        cli(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Usage: semisynth" in err


def test_data_root_reaches_its_command_and_no_later_one(tmp_path, clean_env, capsys):
    clean_env.setenv("SEMISYNTH_HOME", str(tmp_path / "env"))
    assert cli(["--data-root", str(tmp_path / "opt"), "-v", "release", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no releases under {tmp_path / 'opt' / 'releases'}"
    assert cli(["release", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no releases under {tmp_path / 'env' / 'releases'}"
    assert os.environ["SEMISYNTH_HOME"] == str(tmp_path / "env")
    clean_env.delenv("SEMISYNTH_HOME")
    clean_env.chdir(tmp_path)
    assert cli(["release", "list"]) == 0
    assert capsys.readouterr().out.strip() == f"no releases under {tmp_path / 'var' / 'releases'}"


def test_data_root_on_the_command_line_wins_over_the_config_and_the_environment(tmp_path, clean_env):
    """--data-root reaches the flow (it loads the config from its path and overrides) as an
    override, and beats a config's own data_root: what the user typed is what happens."""
    plain, rooted = tmp_path / "plain.yaml", tmp_path / "rooted.yaml"
    corpora = {"brown": {"role": "reference", "paths": ["brown.jsonl"]}}
    plain.write_text(json.dumps({"corpora": corpora}))
    rooted.write_text(json.dumps({"data_root": str(tmp_path / "own"), "corpora": corpora}))
    invocation = Invocation(data_root=tmp_path / "opt")
    sets = ["seed=7"]
    overrides = invocation.overrides(sets)
    assert overrides[0] == "seed=7"
    assert load_config(plain, overrides).root == tmp_path / "opt"
    assert load_config(rooted, overrides).root == tmp_path / "opt"
    assert load_config(rooted, sets).root == tmp_path / "own"
    assert Invocation().overrides(sets) == sets
    clean_env.setenv("SEMISYNTH_HOME", str(tmp_path / "env"))
    assert load_config(plain).root == tmp_path / "env"
    assert load_config(rooted).root == tmp_path / "own"


def test_a_config_command_uses_data_root(tmp_path, clean_env, capsys):
    """`metrics` (its config from configs/demo.yaml) looks for the reference under the
    data root it was given, and the next call under $SEMISYNTH_HOME again."""
    clean_env.setenv("SEMISYNTH_HOME", str(tmp_path / "env"))
    clean_env.chdir(REPO)
    args = ["metrics", str(tmp_path / "none.jsonl"), "--reference", "brown"]
    assert cli(["--data-root", str(tmp_path / "opt"), *args]) == 2
    assert f"no document files match {tmp_path / 'opt' / 'assets' / 'brown'}" in capsys.readouterr().err
    assert cli(args) == 2
    assert f"no document files match {tmp_path / 'env' / 'assets' / 'brown'}" in capsys.readouterr().err


def test_settings_read_every_variable(clean_env):
    defaults = read_settings()
    assert (defaults.home, defaults.dask_address, defaults.dask_gpu, defaults.dask_workers,
            defaults.torch_threads, defaults.nightly_cron, defaults.gpu_workers) == (
        Path("var"), None, "auto", 1, None, None, None)
    for name, (raw, _) in VARIABLES.items():
        clean_env.setenv(name, raw)
    settings = read_settings()
    for name, (_, value) in VARIABLES.items():
        assert getattr(settings, name.removeprefix("SEMISYNTH_").lower()) == value, name
    assert read_settings(home=Path("/elsewhere"), gpu_workers=None).home == Path("/elsewhere")


@pytest.mark.parametrize("name, value", [("SEMISYNTH_DASK_GPU", "sometimes"),
                                         ("SEMISYNTH_DASK_WORKERS", "0"),
                                         ("SEMISYNTH_TORCH_THREADS", "lots")])
def test_a_bad_variable_is_an_input_error(clean_env, capsys, name, value):
    clean_env.setenv(name, value)
    assert cli(["release", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bad environment:") and f"{name}={value!r}" in err


def test_the_console_script_reads_the_environment(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMISYNTH_")}
    env["SEMISYNTH_HOME"] = str(tmp_path)
    proc = subprocess.run([str(SEMISYNTH), "release", "list"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"no releases under {tmp_path / 'releases'}"


def test_task_runner_of_a_worker_started_run_reads_the_environment(clean_env):
    from semisynth.flows.runner import task_runner

    clean_env.setenv("SEMISYNTH_DASK_WORKERS", "3")
    local = task_runner()  # no config: a Prefect worker loaded the flow from its entrypoint
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3
    share = str(max(1, (os.cpu_count() or 1) // 3))
    assert local.cluster_kwargs["env"] == {"SEMISYNTH_TORCH_THREADS": share}
    remote = task_runner(settings=read_settings(dask_address="tcp://127.0.0.1:8786"))
    assert remote.address == "tcp://127.0.0.1:8786"


def test_gpu_slots_come_from_the_settings(clean_env):
    from semisynth.serve import gpu_slots

    cfg = Config(dask_workers=2, corpora={"r": {"role": "reference", "paths": ["x.jsonl"]}})
    assert gpu_slots(cfg, read_settings()) == 2
    clean_env.setenv("SEMISYNTH_GPU_WORKERS", "5")
    assert gpu_slots(cfg, read_settings()) == 5
    assert gpu_slots(cfg, read_settings(), explicit=3) == 3


@pytest.mark.slow
def test_the_scorer_takes_its_torch_threads_from_the_environment(prior_f32, clean_env):
    import torch

    from semisynth.tasks.toedit import Scorer

    before = torch.get_num_threads()
    try:
        clean_env.setenv("SEMISYNTH_TORCH_THREADS", "1")
        Scorer(prior_f32, None)
        assert torch.get_num_threads() == 1
        clean_env.delenv("SEMISYNTH_TORCH_THREADS")
        Scorer(prior_f32, None)
        assert torch.get_num_threads() == os.cpu_count()
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".parquet", ".jsonl.gz", ".jsonl"])
def test_edit_writes_one_document_per_input_in_order(tmp_path, prior_folder, suffix, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(DOCS[0]), "{broken", json.dumps(DOCS[1]), json.dumps(DOCS[2])]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"out{suffix}"
    code = cli(["edit", str(src), str(out), "--model", str(prior_folder),
                "--precision", "float32", "--max-tokens", "8", "--beta", "8", "--seed", "3"])
    assert code == 4  # partial: a row of the input was lost
    got = [r for r in documents.read_records(str(out))]
    assert [r.id for r in got] == ["a", "b", "c"]
    # --max-tokens 8 keeps each document's first 8 tokens, as the official code does
    assert all(len(r.text.split()) <= 8 for r in got)
    captured = capsys.readouterr()
    assert f"{src}:2" in captured.err and "invalid json" in captured.err
    assert f"partial input: 1 row(s) of {src} skipped, 3 documents written; exit 4" in captured.err
    assert "3 documents" in captured.out
    # stderr is no terminal here: the progress is plain lines, the last with the totals
    done = [line for line in captured.err.splitlines() if line.startswith("edited: ")][-1]
    assert done.startswith("edited: 3/3 documents, ")
    assert "documents/s; 21 tokens, " in done and "tokens/s, done in " in done


@pytest.mark.slow
def test_edit_of_a_truncated_file_keeps_the_rows_before_the_damage_and_exits_4(
        tmp_path, prior_folder, capsys):
    """`edit in out && upload out` must not ship a shorter corpus as if it were whole."""
    words = "the jury said city election water boils at sea level north river market".split()
    docs = [{"id": f"d{i}", "text": " ".join(words[(i + k) % len(words)] for k in range(40)) + f" {i}"}
            for i in range(40)]
    whole = gzip.compress("".join(json.dumps(d) + "\n" for d in docs).encode())
    src = tmp_path / "in.jsonl.gz"
    src.write_bytes(whole[: len(whole) * 2 // 3])  # a copy that broke off
    args = ["edit", str(src), "OUT", "--model", str(prior_folder), "--precision", "float32",
            "--max-tokens", "4"]
    for extra, code in (([], 4), (["--allow-partial"], 0)):
        out = tmp_path / f"out{code}.jsonl"
        assert cli([str(out) if a == "OUT" else a for a in args] + extra) == code
        ids = [r.id for r in documents.read_records(str(out))]
        assert 0 < len(ids) < len(docs) and ids == [d["id"] for d in docs[: len(ids)]]
        err = capsys.readouterr().err
        assert re.search(rf"skipped {re.escape(str(src))}:0: unreadable \.jsonl\.gz file after "
                         rf"line {len(ids)}: EOFError", err)
        assert (f"partial input: 1 row(s) of {src} skipped (line 0: the unreadable rest of the "
                f"file), {len(ids)} documents written") in err
        assert ("accepted (--allow-partial)" in err) == (code == 0)


@pytest.mark.slow
def test_edit_is_reproducible_with_the_seed(tmp_path, prior_folder):
    src = tmp_path / "in.jsonl"
    documents.write_documents([{"id": d["id"], "text": d["text"] + " " + d["text"]} for d in DOCS], src)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.parquet"
        assert cli(["edit", str(src), str(out), "--model", str(prior_folder),
                    "--precision", "float32", "--beta", "8", "--seed", "9"]) == 0
        outs.append(pd.read_parquet(out))
    assert outs[0]["text"].tolist() == outs[1]["text"].tolist()
    assert outs[0]["edited_tokens"].sum() > 0


@pytest.mark.slow
def test_prior_fetch_prints_the_folder_last(assets_root, capsys):
    assert cli(["--data-root", str(assets_root), "prior", "fetch"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(default_prior_folder(assets_root))
    assert (default_prior_folder(assets_root) / "model.safetensors").exists()


def test_query_without_a_warehouse_is_a_clear_error(tmp_path, capsys):
    assert cli(["--data-root", str(tmp_path), "query", "SELECT 1"]) == 2
    assert "no warehouse" in capsys.readouterr().err


def test_edit_keeps_every_input_field(tmp_path, prior_folder):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({**d, "url": f"https://x/{d['id']}", "lang": "en"})
                             for d in DOCS) + "\n")
    out = tmp_path / "out.parquet"
    assert cli(["edit", str(src), str(out), "--model", str(prior_folder), "--precision",
                "float32", "--max-tokens", "8"]) == 0
    got = pd.read_parquet(out)
    assert list(got.url) == [f"https://x/{d['id']}" for d in DOCS] and set(got.lang) == {"en"}


def test_edit_keeps_nested_fields_and_parquet_types(tmp_path, prior_folder, capsys):
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    opts = ["--model", str(prior_folder), "--precision", "float32", "--max-tokens", "8"]
    # Dolma rows whose keys differ, and a field whose type differs from row to row
    dolma = [{**d, "source": "web", "metadata": {"url": f"u/{d['id']}"} if i else
              {"url": "u/a", "license": {"name": "CC0"}}, "year": [1961, "1962", None][i]}
             for i, d in enumerate(DOCS)]
    src = tmp_path / "dolma.jsonl"
    documents.write_documents(dolma, src)
    out = tmp_path / "dolma-out.jsonl"
    assert cli(["edit", str(src), str(out), *opts]) == 0
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [{k: v for k, v in g.items() if k not in ("text", "ppl", "edited_tokens",
                                                      "dropped_tokens")} for g in got] == [
        {k: v for k, v in d.items() if k != "text"} for d in dolma]
    out = tmp_path / "dolma-out.parquet"
    assert cli(["edit", str(src), str(out), *opts]) == 0
    assert "field 'year'" in capsys.readouterr().err  # said, not silent
    table = pq.read_table(out)
    assert table.schema.names == ["id", "text", "source", "metadata", "year", "ppl",
                                  "edited_tokens", "dropped_tokens"]
    assert table.column("metadata").to_pylist() == [
        {"url": "u/a", "license": {"name": "CC0"}}, {"url": "u/b", "license": None},
        {"url": "u/c", "license": None}]
    assert table.column("year").to_pylist() == ["1961", '"1962"', None]  # JSON text

    typed = {"n": pa.int16(), "when": pa.timestamp("ms", tz="UTC"), "tags": pa.list_(pa.string())}
    when = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    src = tmp_path / "typed.parquet"
    pq.write_table(pa.table({"id": [d["id"] for d in DOCS], "text": [d["text"] for d in DOCS],
                             "n": pa.array([1, 2, 3], typed["n"]),
                             "when": pa.array([when, None, when], typed["when"]),
                             "tags": pa.array([["x"], [], None], typed["tags"])}), src)
    out = tmp_path / "typed-out.parquet"
    assert cli(["edit", str(src), str(out), *opts]) == 0
    table = pq.read_table(out)
    source = pq.read_table(src)
    for name in typed:
        assert table.schema.field(name).type == source.schema.field(name).type
        assert table.column(name).equals(source.column(name))


def test_edit_skips_each_row_the_parser_refuses_naming_it(tmp_path, prior_folder, capsys):
    """Each of these crashed `edit` (a traceback, or Python's int-limit message naming no
    row) or lost the whole file ("UTF-16?" for a NUL on line 1); now each costs its row."""
    rows = [b'{"id": "nul", "text": "x\x00"}', json.dumps(DOCS[0]).encode(),
            b'{"id": "deep", "text": "t", "m": ' + b"[" * 1000 + b"]" * 1000 + b"}",
            b'{"id": "big", "text": "t", "n": ' + b"9" * 5000 + b"}",
            b'{"id": "sur", "text": "t", "x": "\\ud800"}', json.dumps(DOCS[1]).encode()]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(rows) + b"\n")
    for suffix in (".jsonl", ".parquet"):
        out = tmp_path / f"out{suffix}"
        assert cli(["edit", str(src), str(out), "--model", str(prior_folder), "--precision",
                    "float32", "--max-tokens", "8"]) == 4
        err = capsys.readouterr().err
        for line, reason in [(1, "invalid json: a NUL byte"), (3, "nested 1,001 levels deep"),
                             (4, "an integer of 5,000 digits"),
                             (5, "invalid utf-8: a lone surrogate '\\ud800'")]:
            assert f"skipped {src}:{line}: {reason}" in err
        assert f"partial input: 4 row(s) of {src} skipped, 2 documents written; exit 4" in err
        assert [r.id for r in documents.read_records(str(out))] == ["a", "b"]


def test_edit_to_parquet_keeps_every_field_and_names_a_row_it_cannot_write(
        tmp_path, prior_folder, capsys):
    """Every field of every row reaches the Parquet output: one first seen after row 1,000,
    one whose type changes (JSON text), one named as edit's own `ppl` column (which
    overwrote it); a row whose field no Parquet column can hold (a lone surrogate, which
    failed the whole command) is skipped and named with its line."""
    import pyarrow.parquet as pq

    rows = [{"id": f"r{i}", "text": "One two three.", "year": 1961} for i in range(1100)]
    for i in range(1000, 1100):
        rows[i] |= {"late": {"k": i}, "year": str(i)}
    rows[5]["ppl"] = "hand-rated"
    lines = [json.dumps(r).encode() for r in rows]
    lines[7] = b'{"id": "r7", "text": "One two three.", "x": "\\ud800"}'
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.parquet"
    # one token a document: nothing for the model to score, so 1,100 rows cost seconds
    assert cli(["edit", str(src), str(out), "--model", str(prior_folder), "--precision",
                "float32", "--max-tokens", "1"]) == 4
    err = capsys.readouterr().err
    assert f"skipped {src}:8: invalid utf-8: a lone surrogate '\\ud800'" in err
    assert f"field 'ppl' written to {out} as 'input_ppl': edit's own column has its name" in err
    assert "field 'year': its values have different types" in err
    table = pq.read_table(out)
    assert table.schema.names == ["id", "text", "year", "input_ppl", "late", "ppl",
                                  "edited_tokens", "dropped_tokens"]
    got = table.to_pylist()
    kept = [r for i, r in enumerate(rows) if i != 7]
    assert [g["id"] for g in got] == [r["id"] for r in kept]
    assert [g["late"] for g in got] == [r.get("late") for r in kept]
    assert [json.loads(g["year"]) for g in got] == [r["year"] for r in kept]
    assert [g["input_ppl"] for g in got[:6]] == [None] * 5 + ["hand-rated"]
    assert all(g["ppl"] is None and g["edited_tokens"] == 0 for g in got)


def _strict_json(line: str):
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_edit_writes_a_document_too_short_to_score_with_a_null_ppl(tmp_path, prior_folder):
    """A one-token document has no position to score: its ppl is null, never NaN (which
    `edit` wrote, and which is not JSON)."""
    src = tmp_path / "in.jsonl"
    documents.write_documents([DOCS[0], {"id": "short", "text": "Hello"}], src)
    opts = ["--model", str(prior_folder), "--precision", "float32"]
    assert cli(["edit", str(src), str(tmp_path / "out.jsonl"), *opts]) == 0
    got = [_strict_json(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(g["id"], g["ppl"] is None) for g in got] == [("a", False), ("short", True)]
    assert got[1]["text"] == "Hello" and got[1]["edited_tokens"] == 0 and got[0]["ppl"] > 1
    assert cli(["edit", str(src), str(tmp_path / "out.parquet"), *opts]) == 0
    assert pd.read_parquet(tmp_path / "out.parquet").ppl.isna().tolist() == [False, True]


def _limited_memory():
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (4 * 2**30, 4 * 2**30))


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_edit_refuses_an_input_that_is_not_a_regular_file(tmp_path, kind):
    """Read, a FIFO hung `edit` and /dev/zero grew it without bound: refused before either
    is opened. (Run in a process of its own, bounded in time and memory.)"""
    src = tmp_path / "in.jsonl"
    if kind == "fifo":
        os.mkfifo(src)
    else:
        src.symlink_to("/dev/zero")
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([str(SEMISYNTH), "edit", str(src), str(out)], capture_output=True,
                          text=True, timeout=120, preexec_fn=_limited_memory)
    what = "a FIFO" if kind == "fifo" else "a character device"
    assert proc.returncode == 2, proc.stderr
    assert f"error: {src}: not a regular file ({what}); document files only" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("content", ["a,b,c\n1,2,3\n", "", '{"id": "x"}\n'])
def test_edit_with_nothing_usable_exits_2_and_writes_nothing(tmp_path, capsys, content):
    src = tmp_path / "in.jsonl"  # a CSV renamed .jsonl, an empty file, rows without text
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    assert cli(["edit", str(src), str(out)]) == 2
    assert "no usable documents" in capsys.readouterr().err
    assert not out.exists()


def test_an_unexpected_error_exits_3_with_its_traceback_not_the_gates_1(tmp_path, clean_env, capsys):
    from semisynth.warehouse import db

    wh = db.warehouse_path(tmp_path)
    wh.parent.mkdir(parents=True, exist_ok=True)
    wh.write_bytes(b"not a DuckDB file" * 100)  # a warehouse clobbered by something else
    assert cli(["--data-root", str(tmp_path), "report", "some-run"]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "error: semisynth crashed:" in err


def test_the_demo_prints_every_verdict_release_and_block(capsys):
    """What `semisynth demo` prints after its flow run (the flow itself is tested in test_flow)."""
    from semisynth.cli import _print_outcome

    result = {"run_id": "r1", "flow_run_id": "f1", "state": "FAILED", "warehouse": "/w.duckdb",
              "gates": {"brown_toedit": True, "mix50": False},
              "failures": {"mix50": [{"metric": "ppl_low_frac", "observed": 0.61,
                                      "threshold": "<= 0.4", "run_id": "r1"}]},
              "releases": {"brown_toedit": "/releases/semisynth-brown_toedit/v0001"},
              "blocked": ["mix50"], "quarantined_rows": 12,
              "quarantined": [{"corpus": "synthetic", "file": "/d/batch.jsonl", "line": 3,
                               "reason": "empty text (whitespace only)"}]}
    _print_outcome(result)
    out = capsys.readouterr().out
    assert "quarantined: 12 input rows, the first 1 (all: semisynth query" in out
    assert "- synthetic: /d/batch.jsonl line 3: empty text (whitespace only)" in out
    assert "gate coverage on brown_toedit: PASSED" in out
    assert "gate coverage on mix50: FAILED" in out and "ppl_low_frac: observed 0.61, want <= 0.4" in out
    assert "released brown_toedit: /releases/semisynth-brown_toedit/v0001" in out
    assert "not released mix50: blocked by the gate" in out


def test_demo_budget_counts_only_the_work_left():
    from semisynth.cli import demo_budget

    cold = demo_budget(prior_cached=False, brown_cached=False, documents_to_write=128, new_tokens=384)
    warm = demo_budget(prior_cached=True, brown_cached=True, documents_to_write=0, new_tokens=384)
    assert cold.startswith("Time budget: about ") and "\n" not in cold
    assert all(stage in cold for stage in ("prior", "Brown Corpus", "generation", "flow"))
    assert "flow" in warm and not any(stage in warm for stage in ("prior", "Brown", "generation"))
