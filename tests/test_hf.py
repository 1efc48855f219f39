"""Hugging Face datasets as a corpus source (``hf:``) and fsspec URLs in ``paths``: local
datasets built here (save_to_disk folders, folders of Parquet and JSON lines files) read
through the config with the real ``datasets``, their bad rows quarantined as a file's are,
their spec recorded in DuckDB; ``memory://`` and ``hf://`` paths through fsspec. Nothing
here reaches the Hub."""

import json
import os
import subprocess
import sys

import datasets
import duckdb
import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.cli import main as cli
from semisynth.config import HfSource, config_from_tree
from semisynth.errors import InputError
from semisynth.hf import locate, open_dataset, read_dataset
from semisynth.tasks.corpora import CorpusRecord, origin
from semisynth.tasks.ingest import ingest_columns, ingest_corpus, read_shard
from semisynth.warehouse import db, records

# A dataset's rows with every kind of bad row a typed dataset can hold; (row, reason or None)
ROWS = [
    ({"id": "a", "text": "first good", "lang": "en"}, None),
    ({"id": "b", "text": None, "lang": "en"}, "text field 'text' is null"),
    ({"id": "c", "text": "", "lang": "fr"}, "empty text"),
    ({"id": "d", "text": " \n\t ", "lang": "fr"}, "empty text (whitespace only)"),
    ({"id": "a", "text": "same id again", "lang": "en"}, "duplicate id 'a'"),
    ({"id": None, "text": "no id", "lang": "de"}, None),
    ({"id": "e", "text": "last good", "lang": "en"}, None),
]


def columns(rows):
    return {k: [r[k] for r in rows] for k in rows[0]}


def config(root, **corpora):
    return config_from_tree({"name": "hf", "data_root": str(root), "shard_docs": 2,
                             "corpora": {n: {"role": "reference", **c} for n, c in corpora.items()}})


def bad_rows(result):
    return [(q["file"], q["line"], q["reason"]) for q in result.quarantine]


@pytest.fixture
def saved(tmp_path):
    """A Dataset written by save_to_disk under the data root."""
    datasets.Dataset.from_dict(columns([r for r, _ in ROWS])).save_to_disk(tmp_path / "saved")
    return tmp_path


def test_a_save_to_disk_dataset_is_ingested_with_a_files_quarantine_rules(saved):
    cfg = config(saved, web={"hf": {"path": "saved"}})
    result = ingest_corpus(cfg, "web")
    spec = "hf:saved/train"
    assert bad_rows(result) == [(spec, line, reason) for line, (_, reason)
                                in enumerate(ROWS, start=1) if reason]
    assert result.rows_in == len(ROWS) and result.rows_ok == 3
    assert json.loads(result.quarantine[0]["excerpt"]) == ROWS[1][0]  # the row as read
    docs = [d for s in result.shards for d in read_shard(s.path).to_dict("records")]
    # a row without an id is named by the spec (without a revision) and its row number
    assert [(d["id"], d["text"], d["line"]) for d in docs] == [
        ("a", "first good", 1), (f"{spec}:6", "no id", 6), ("e", "last good", 7)]
    assert {s.source for s in result.shards} == {spec} and [s.documents for s in result.shards] == [2, 1]
    assert ingest_columns(result) == {
        "rows_in": 7, "rows_ok": 3, "rows_quarantined": 4, "dataset_path": "saved",
        "dataset_name": None, "dataset_split": "train", "dataset_revision": None}
    # the cache key is the content: the same rows from a folder of Parquet files (its
    # own spec, the same ids) make shards with the same hashes
    (saved / "pq").mkdir()
    pq.write_table(pa.table(columns([r for r, _ in ROWS])), saved / "pq" / "train.parquet")
    again = ingest_corpus(config(saved, web={"hf": {"path": str(saved / "pq")}}), "web")
    assert [s.shard_hash for s in again.shards][1:] == [s.shard_hash for s in result.shards][1:]
    assert again.shards[0].shard_hash != result.shards[0].shard_hash  # its default id differs


def test_a_dataset_dict_gives_the_split_asked_for_and_names_its_splits_else(tmp_path):
    good = [{"id": f"t{i}", "text": f"train {i}"} for i in range(3)]
    test = [{"id": "x", "text": "held out"}, {"id": "y", "text": ""}]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(good),
                          "test": datasets.Dataset.from_list(test)}).save_to_disk(tmp_path / "dd")
    result = ingest_corpus(config(tmp_path, t={"hf": {"path": "dd", "split": "test"}}), "t")
    assert result.rows_ok == 1 and bad_rows(result) == [("hf:dd/test", 2, "empty text")]
    assert ingest_columns(result)["dataset_split"] == "test"
    with pytest.raises(InputError, match=r"no split 'validation'; its splits: train, test"):
        open_dataset(HfSource(path="dd", split="validation"), lambda p: str(tmp_path / p))


def test_a_folder_of_data_files_with_configs_in_its_readme(tmp_path):
    """A folder as a Hub repository lays it out: JSON lines per configuration, named in the
    README's YAML header. JSON lines declare no types: a number as text is caught per row."""
    folder = tmp_path / "corpus"
    for name, rows in {"en": ['{"doc": "e1", "body": "hello"}', '{"doc": "e2", "body": 42}',
                              '{"doc": "e3"}', '{"doc": "e1", "body": "again"}'],
                       "fr": ['{"doc": "f1", "body": "bonjour"}']}.items():
        (folder / name).mkdir(parents=True)
        (folder / name / "train.jsonl").write_text("\n".join(rows) + "\n")
    (folder / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {n}\n  data_files:\n  - split: train\n    path: {n}/*.jsonl\n"
        for n in ("en", "fr")) + "---\n")
    cfg = config(tmp_path, en={"hf": {"path": "corpus", "name": "en", "text_field": "body"},
                               "id_field": "doc"})
    assert cfg.corpora["en"].text_field == "body"  # hf.text_field is the corpus's own
    result = ingest_corpus(cfg, "en")
    spec = "hf:corpus/en/train"
    assert bad_rows(result) == [(spec, 2, "text field 'body' is not a string (int)"),
                                (spec, 3, "text field 'body' is null"),
                                (spec, 4, "duplicate id 'e1'")]
    assert ingest_columns(result)["dataset_name"] == "en"
    with pytest.raises(InputError, match=r"BuilderConfig 'de' not found. Available: \['en', 'fr'\]"):
        open_dataset(HfSource(path=str(folder), name="de"))
    with pytest.raises(InputError, match="no split 'validation'; its splits: train"):
        open_dataset(HfSource(path=str(folder), name="fr", split="validation"))


@pytest.mark.parametrize("hf, message", [
    ({"path": "saved", "revision": "main"}, "revision applies to Hub datasets only"),
    ({"path": "saved", "name": "en"}, "name applies to Hub datasets only"),
    ({"path": "/nowhere/at/all"}, "no such folder"),
    ({"path": "./missing"}, "no such folder"),
    ({"path": "saved/state.json"}, "state.json is a file, not a dataset folder"),
    ({"path": "saved", "text_field": "body"}, "has no column 'body' (its columns: id, text, lang)"),
])
def test_a_bad_dataset_spec_is_an_input_error(saved, hf, message):
    cfg = config(saved, web={"hf": hf})
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ingest_corpus(cfg, "web")


def test_a_bad_dataset_spec_exits_2_before_any_work(saved, capsys):
    """`semisynth metrics` names the corpus and the splits that exist; no run is started (a
    prior that does not exist would fail any that did)."""
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(
        saved / "dd")
    (saved / "cfg.yaml").write_text(json.dumps({
        "name": "hf", "prior": {"model": str(saved / "no-prior")},
        "corpora": {"ref": {"role": "reference", "hf": {"path": "saved"}},
                    "web": {"reference": "ref", "hf": {"path": "dd", "split": "validation"}}}}))
    args = ["--data-root", str(saved), "metrics", "web", "--reference", "ref",
            "--config", str(saved / "cfg.yaml")]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert "error: corpus 'web': hf dataset 'dd' has no split 'validation'; its splits: train" in err
    assert not db.warehouse_path(saved).exists()


def test_a_damaged_data_file_ends_the_read_with_one_quarantine_row(tmp_path):
    """datasets cannot read past a damaged Parquet file: the rows before it are kept and one
    whole-dataset row (line 0) says where the read stopped."""
    folder = tmp_path / "damaged"
    folder.mkdir()
    pq.write_table(pa.table({"text": ["a one", "a two"]}), folder / "a.parquet")
    texts = [os.urandom(64).hex() for _ in range(400)]
    pq.write_table(pa.table({"text": texts}), folder / "b.parquet", row_group_size=100,
                   compression="none")
    data = bytearray((folder / "b.parquet").read_bytes())
    middle = len(data) // 2  # inside the row groups' pages, far from the footer
    data[middle:middle + 512] = b"\xff" * 512
    (folder / "b.parquet").write_bytes(bytes(data))
    result = ingest_corpus(config(tmp_path, d={"hf": {"path": "damaged"}}), "d")
    *_, last = result.quarantine
    assert (last["file"], last["line"]) == ("hf:damaged/train", 0)
    assert last["reason"].startswith(f"unreadable dataset after row {result.rows_ok}: ")
    assert 2 <= result.rows_ok < 402 and result.rows_in == result.rows_ok + result.rows_quarantined


def test_streaming_false_prepares_the_split_first(saved, tmp_path):
    opened = open_dataset(HfSource(path=str(_parquet_folder(tmp_path)), streaming=False),
                          cache_dir=str(tmp_path / "cache"))
    assert [r.text for r in read_dataset(opened)] == ["one", "two"]
    assert list((tmp_path / "cache").rglob("*.arrow"))  # read from datasets' prepared copy


def _parquet_folder(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["one", "two"]}), folder / "x.parquet")
    return folder


def test_where_a_dataset_comes_from(saved, tmp_path, monkeypatch):
    resolve = lambda p: str(saved / p)  # noqa: E731 (the data root)
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(
        saved / "dd")
    _parquet_folder(saved)
    assert locate(HfSource(path="saved"), resolve) == ("saved", str(saved / "saved"))
    assert locate(HfSource(path="dd"), resolve) == ("dict", str(saved / "dd"))
    assert locate(HfSource(path="plain"), resolve) == ("folder", str(saved / "plain"))
    # no such folder under the data root: a Hub id (nothing is resolved until it is opened)
    assert locate(HfSource(path="allenai/c4"), resolve) == ("hub", "allenai/c4")
    assert locate(HfSource(path="hf://datasets/allenai/c4"), resolve)[0] == "hub"
    # "~" is the user's home, not a folder of the data root
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    datasets.Dataset.from_dict({"text": ["x"]}).save_to_disk(tmp_path / "home" / "mine")
    assert locate(HfSource(path="~/mine"), resolve) == ("saved", str(tmp_path / "home" / "mine"))
    with pytest.raises(InputError, match="no such folder"):
        locate(HfSource(path="~/saved"), resolve)


def test_one_origin_and_one_text_field(tmp_path):
    with pytest.raises(ValueError, match="exactly one of: paths, hf, edited_from, mix"):
        config(tmp_path, web={"hf": {"path": "x"}, "paths": ["a.jsonl"]})
    with pytest.raises(ValueError, match=r"text_field is given twice, 'content' and hf.text_field 'body'"):
        config(tmp_path, web={"hf": {"path": "x", "text_field": "body"}, "text_field": "content"})
    cfg = config(tmp_path, web={"hf": {"path": "x", "text_field": "body", "id_field": "url"}})
    assert (cfg.corpora["web"].text_field, cfg.corpora["web"].id_field) == ("body", "url")
    assert origin(cfg, "web") == "hf" and cfg.corpora["web"].ingested
    # the dump (how commands narrow a config) validates again to the same corpus
    again = config_from_tree(cfg.model_dump())
    assert again.corpora["web"] == cfg.corpora["web"]


def test_the_dataset_spec_is_recorded_and_old_warehouses_gain_its_columns(saved, tmp_path):
    wh = tmp_path / "old.duckdb"
    with duckdb.connect(str(wh)) as con:  # the corpora table as it shipped before
        con.execute("CREATE TABLE corpora (run_id VARCHAR, corpus VARCHAR, role VARCHAR, "
                    "reference VARCHAR, origin VARCHAR, documents BIGINT, tokens BIGINT, "
                    "shards INTEGER, rows_in BIGINT, rows_ok BIGINT, rows_quarantined BIGINT)")
        con.execute("INSERT INTO corpora (run_id, corpus) VALUES ('old', 'brown')")
    db.init(wh)
    cfg = config(saved, web={"hf": {"path": "saved"}})
    result = ingest_corpus(cfg, "web")
    records.record_corpora(wh, "r1", [
        CorpusRecord("web", "reference", None, origin(cfg, "web"), [], [],
                     ingest=ingest_columns(result)),
        CorpusRecord("brown", "reference", None, "files", [], [],
                     ingest={"rows_in": 1, "rows_ok": 1, "rows_quarantined": 0})])
    rows = db.query(wh, "SELECT run_id, corpus, origin, rows_in, dataset_path, dataset_name, "
                        "dataset_split, dataset_revision FROM corpora ORDER BY run_id, corpus")
    assert rows.isna().iloc[0][["dataset_path", "dataset_split"]].all()  # the old row: NULL
    web = rows[rows.corpus == "web"].iloc[0]
    assert (web.origin, web.rows_in, web.dataset_path, web.dataset_split) == ("hf", 7, "saved", "train")
    assert pd.isna(web.dataset_name) and pd.isna(web.dataset_revision)
    assert records.recorded_datasets(wh, "r1", ["web", "brown"]) == {
        "web": {"path": "saved", "name": None, "split": "train", "revision": None}}


def test_memory_urls_in_paths_are_globbed_and_read_through_fsspec(tmp_path):
    """The generic fsspec path (what s3:// and hf:// take too): globbing, default ids named
    relative to the patterns' folder, quarantine rows naming the URL."""
    fs = fsspec.filesystem("memory")
    base = f"semisynth-test-{os.getpid()}"
    try:
        fs.pipe(f"/{base}/2024-01/part.jsonl", b'{"text": "one"}\n{"text": ""}\n')
        fs.pipe(f"/{base}/2024-02/part.jsonl", b'{"text": "two"}\n')
        with fs.open(f"/{base}/2024-02/rows.parquet", "wb") as f:
            pq.write_table(pa.table({"id": ["p1"], "text": ["three"]}), f)
        cfg = config(tmp_path, m={"paths": [f"memory://{base}/*/*"]})
        result = ingest_corpus(cfg, "m")
        assert bad_rows(result) == [(f"memory:///{base}/2024-01/part.jsonl", 2, "empty text")]
        docs = [d for s in result.shards for d in read_shard(s.path).to_dict("records")]
        assert [(d["id"], d["text"]) for d in docs] == [
            ("2024-01/part.jsonl:1", "one"), ("2024-02/part.jsonl:1", "two"), ("p1", "three")]
    finally:
        fs.rm(f"/{base}", recursive=True)


OFFLINE_CHECK = """
import fsspec, huggingface_hub, sys
from semisynth.config import HfSource
from semisynth.documents import expand_paths, source_names
from semisynth.hf import open_dataset
fs, root = fsspec.core.url_to_fs("hf://datasets/allenai/c4@main/en/*.jsonl.gz")
assert isinstance(fs, huggingface_hub.HfFileSystem), type(fs)
assert root == "datasets/allenai/c4@main/en/*.jsonl.gz", root
files = ["hf://datasets/org/name/data/a.jsonl.gz", "hf://datasets/org/name/data/b.jsonl.gz"]
assert source_names(["hf://datasets/org/name/data/*.jsonl.gz"], files) == {
    files[0]: "a.jsonl.gz", files[1]: "b.jsonl.gz"}
try:  # the glob is huggingface_hub's: offline, it refuses to call the Hub
    expand_paths(["hf://datasets/org/name/data/*.jsonl.gz"])
except huggingface_hub.errors.OfflineModeIsEnabled as e:
    print("hub refused:", e)
for path in sys.argv[1:]:  # local datasets resolve with the Hub unreachable
    opened = open_dataset(HfSource(path=path))
    print(opened.spec, sum(1 for _ in opened.rows()))
"""


def test_hf_urls_go_to_huggingface_hubs_filesystem_and_local_datasets_need_no_hub(saved):
    """Run offline (HF_HUB_OFFLINE, and an endpoint nobody answers): ``hf://`` resolves to
    huggingface_hub's HfFileSystem without a call, and its glob is that filesystem's (it
    refuses, offline, to call the Hub); local datasets open and read."""
    folder = _parquet_folder(saved)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-c", OFFLINE_CHECK, str(saved / "saved"), str(folder)],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "hub refused: " in out.stdout and "/api/datasets/org/name: offline mode" in out.stdout
    assert f"hf:{saved / 'saved'}/train 7" in out.stdout and f"hf:{folder}/train 2" in out.stdout
