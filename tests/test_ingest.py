"""Ingest: every bad row quarantined with file, line and reason; good rows in
content-addressed shards; counts add up; document files round-trip atomically."""

import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.documents import expand_paths, read_records, write_documents
from semisynth.tasks.ingest import ingest, iter_shard_batches, read_shard

# (raw line, expected reason prefix or None for a good row); line numbers count from 1
# and the blank line is skipped but still counted.
JSONL_ROWS = [
    (b'{"id": "a", "text": "first good", "lang": "en"}', None),
    (b'{"id": "b", "text": "second', "invalid json"),
    (b'{"id": "c", "text": "bad \xff\xfe bytes"}', "invalid utf-8"),
    (b"", "blank"),
    (b'["id", "text"]', "not a JSON object (list)"),
    (b'{"id": "d", "body": "no text here"}', "missing text field 'text'"),
    (b'{"id": "e", "text": 42}', "text field 'text' is not a string (int)"),
    (b'{"id": "f", "text": ""}', "empty text"),
    (b'{"id": "g", "text": "  \\n\\t "}', "empty text (whitespace only)"),
    (b'{"id": "a", "text": "same id again"}', "duplicate id 'a'"),
    (b'{"id": 7, "text": "numeric id"}', None),
    (b'{"text": "no id at all"}', None),
]
GOOD_IDS = ["a", "7", "docs.jsonl:12"]
GOOD_TEXTS = ["first good", "numeric id", "no id at all"]


def jsonl_bytes():
    return b"\n".join(raw for raw, _ in JSONL_ROWS) + b"\n"


def expected_bad(file):
    return [
        (file, line, reason)
        for line, (_, reason) in enumerate(JSONL_ROWS, start=1)
        if reason not in (None, "blank")
    ]


def check_quarantine(quarantine, expected):
    assert len(quarantine) == len(expected)
    for q, (file, line, reason) in zip(quarantine, expected, strict=True):
        assert (q["file"], q["line"]) == (file, line)
        assert q["reason"].startswith(reason), (q, reason)
        assert q["corpus"] == "c1"
        assert 0 < len(q["excerpt"]) <= 200


@pytest.fixture
def jsonl(tmp_path):
    path = tmp_path / "in" / "docs.jsonl"
    path.parent.mkdir()
    path.write_bytes(jsonl_bytes())
    return path


def test_jsonl_bad_rows_quarantined_good_rows_sharded(jsonl, tmp_path):
    res = ingest([str(jsonl)], tmp_path / "shards", "c1")
    check_quarantine(res.quarantine, expected_bad(str(jsonl)))
    assert (res.rows_in, res.rows_ok, res.rows_quarantined) == (11, 3, 8)
    assert res.per_file == {str(jsonl): {"rows_in": 11, "rows_ok": 3, "rows_quarantined": 8}}
    [shard] = res.shards
    df = read_shard(shard.path)
    assert list(df["id"]) == GOOD_IDS
    assert list(df["text"]) == GOOD_TEXTS
    assert list(df["line"]) == [1, 11, 12]
    assert set(df["source"]) == {str(jsonl)} and shard.source == str(jsonl)
    assert all(len(h) == 16 for h in df["doc_hash"])
    assert shard.documents == 3 and shard.path.endswith(f"{shard.shard_hash}.parquet")


def test_jsonl_gz_same_as_jsonl(jsonl, tmp_path):
    gz = tmp_path / "in" / "docs.jsonl.gz"
    gz.write_bytes(gzip.compress(jsonl_bytes()))
    plain = ingest([str(jsonl)], tmp_path / "a", "c1")
    zipped = ingest([str(gz)], tmp_path / "b", "c1")
    check_quarantine(zipped.quarantine, expected_bad(str(gz)))
    # the default id names the file, so only that row's hash differs
    df = read_shard(zipped.shards[0].path)
    assert list(df["id"]) == ["a", "7", "docs.jsonl.gz:12"]
    assert list(df["text"]) == GOOD_TEXTS
    assert (zipped.rows_in, zipped.rows_ok) == (plain.rows_in, plain.rows_ok)


def test_parquet_null_and_empty_text(tmp_path):
    path = tmp_path / "cosmo.parquet"
    table = pa.table({"id": ["p1", "p2", "p3", None], "text": ["one", None, "", "four"]})
    pq.write_table(table, path, row_group_size=2)  # rows span row groups
    res = ingest([str(path)], tmp_path / "shards", "c1")
    reasons = [(q["line"], q["reason"]) for q in res.quarantine]
    assert reasons == [(2, "text field 'text' is null"), (3, "empty text")]
    df = read_shard(res.shards[0].path)
    assert list(df["id"]) == ["p1", "cosmo.parquet:4"]
    assert list(df["line"]) == [1, 4]
    assert res.rows_in == 4 == res.rows_ok + res.rows_quarantined


def test_duplicate_ids_across_files_and_glob_order(tmp_path):
    for name, ids in [("b.jsonl", ["x", "y"]), ("a.jsonl", ["y", "z"])]:
        write_documents([{"id": i, "text": f"{name} {i}"} for i in ids], tmp_path / name)
    res = ingest([str(tmp_path / "*.jsonl")], tmp_path / "shards", "c1")
    # sorted path order: a.jsonl first, so b.jsonl's "y" is the duplicate
    assert [(os.path.basename(q["file"]), q["line"]) for q in res.quarantine] == [("b.jsonl", 2)]
    assert [os.path.basename(s.source) for s in res.shards] == ["a.jsonl", "b.jsonl"]


def test_reingest_same_hashes_without_rewrite(jsonl, tmp_path):
    out = tmp_path / "shards"
    first = ingest([str(jsonl)], out, "c1", shard_docs=2)
    mtimes = {s.path: os.stat(s.path).st_mtime_ns for s in first.shards}
    second = ingest([str(jsonl)], out, "c1", shard_docs=2)
    assert [s.shard_hash for s in second.shards] == [s.shard_hash for s in first.shards]
    assert {s.path: os.stat(s.path).st_mtime_ns for s in second.shards} == mtimes
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s.shard_hash}.parquet" for s in first.shards
    )


def test_shard_splitting_never_mixes_files(tmp_path):
    for name, n in [("a.jsonl", 5), ("b.jsonl", 2)]:
        write_documents([{"id": f"{name}{i}", "text": f"t{i}"} for i in range(n)], tmp_path / name)
    res = ingest([str(tmp_path / "*.jsonl")], tmp_path / "shards", "c1", shard_docs=2)
    assert [(os.path.basename(s.source), s.documents) for s in res.shards] == [
        ("a.jsonl", 2),
        ("a.jsonl", 2),
        ("a.jsonl", 1),
        ("b.jsonl", 2),
    ]
    assert len({s.shard_hash for s in res.shards}) == 4
    ids = [i for s in res.shards for i in read_shard(s.path)["id"]]
    assert ids == [f"a.jsonl{i}" for i in range(5)] + ["b.jsonl0", "b.jsonl1"]
    batches = list(iter_shard_batches(res.shards[0].path, batch_rows=1))
    assert [len(b) for b in batches] == [1, 1]


def test_limit_docs_counts_only_rows_read(jsonl, tmp_path):
    res = ingest([str(jsonl)], tmp_path / "shards", "c1", limit_docs=2)
    assert res.rows_ok == 2
    # read up to line 11, the second good row; line 12 is never read
    assert res.rows_in == 10 == res.rows_ok + res.rows_quarantined
    assert list(read_shard(res.shards[0].path)["id"]) == ["a", "7"]
    assert ingest([str(jsonl)], tmp_path / "none", "c1", limit_docs=0).rows_in == 0


def test_glob_matching_nothing_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        expand_paths([str(tmp_path / "nothing-here" / "*.jsonl")])
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        ingest([str(tmp_path / "nothing-here*.parquet")], tmp_path / "shards", "c1")


def test_unreadable_files_raise_naming_file(tmp_path):
    fake_gz = tmp_path / "fake.jsonl.gz"
    fake_gz.write_bytes(b'{"text": "not gzip"}\n')
    fake_pq = tmp_path / "fake.parquet"
    fake_pq.write_bytes(b"not parquet")
    for path in [fake_gz, fake_pq]:
        with pytest.raises(OSError, match="fake"):
            list(read_records(str(path)))
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        list(read_records(str(tmp_path / "missing.jsonl")))


@pytest.mark.parametrize("ext", [".jsonl", ".jsonl.gz", ".parquet"])
def test_write_documents_round_trip_atomic(tmp_path, ext):
    docs = [{"id": f"d{i}", "text": f"text {i} ünïcode", "genre": "news"} for i in range(5)]
    path = tmp_path / "out" / f"docs{ext}"
    assert write_documents(iter(docs), path, batch_rows=2) == 5
    recs = list(read_records(str(path)))
    assert [(r.id, r.text, r.meta, r.reason) for r in recs] == [
        (d["id"], d["text"], {"genre": "news"}, None) for d in docs
    ]
    assert [r.line for r in recs] == [1, 2, 3, 4, 5]
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind
    # rewriting replaces the file whole
    assert write_documents([{"id": "z", "text": "only"}], path) == 1
    assert [r.id for r in read_records(str(path))] == ["z"]
    assert os.listdir(path.parent) == [path.name]


def test_write_documents_failure_leaves_nothing(tmp_path):
    def docs():
        yield {"id": "a", "text": "fine"}
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        write_documents(docs(), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="no 'id'"):
        write_documents([{"text": "no id"}], tmp_path / "x.jsonl")
    assert os.listdir(tmp_path) == []


def test_unknown_extension_raises(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl\.gz, \.jsonl, \.parquet"):
        write_documents([{"id": "a", "text": "t"}], tmp_path / "docs.csv")
    assert os.listdir(tmp_path) == []
