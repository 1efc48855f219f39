"""Ingest: every bad row quarantined with file, line and reason; good rows in
content-addressed shards; counts add up; document files round-trip atomically."""

import gzip
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth import fields
from semisynth.documents import expand_paths, read_records, source_names, write_documents
from semisynth.errors import InputError
from semisynth.tasks.ingest import (
    doc_hash,
    ingest,
    iter_shard_batches,
    read_shard,
    shard_hash,
    shard_table,
)

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


def check_counts(res):
    assert res.rows_in == res.rows_ok + res.rows_quarantined == len(res.quarantine) + res.rows_ok
    for stats in res.per_file.values():
        assert stats["rows_in"] == stats["rows_ok"] + stats["rows_quarantined"]


def test_default_ids_unique_across_folders(tmp_path):
    # Dolma-style layout: one file name in many folders, rows without ids
    for month in ["2024-01", "2024-02"]:
        write_documents([{"id": "", "text": f"{month} doc {i}"} for i in range(3)],
                        tmp_path / "dolma" / month / "part.jsonl")
    for patterns in ([str(tmp_path / "dolma" / "*" / "part.jsonl")],
                     [str(tmp_path / "dolma" / m / "*.jsonl") for m in ["2024-01", "2024-02"]]):
        res = ingest(patterns, tmp_path / "shards", "c1")
        assert res.quarantine == [] and res.rows_ok == 6
        ids = [i for s in res.shards for i in read_shard(s.path)["id"]]
        assert ids == [f"{m}/part.jsonl:{line}" for m in ["2024-01", "2024-02"]
                       for line in (1, 2, 3)]
    # ids depend on the patterns only: one month alone keeps its ids by its base name
    alone = ingest([str(tmp_path / "dolma" / "2024-02" / "part.jsonl")], tmp_path / "s2", "c1")
    assert list(read_shard(alone.shards[0].path)["id"]) == [f"part.jsonl:{i}" for i in (1, 2, 3)]


def test_source_names_are_relative_to_the_shared_folder(tmp_path):
    files = [str(tmp_path / "a" / "x.jsonl"), str(tmp_path / "b" / "c" / "x.jsonl")]
    patterns = [str(tmp_path / "a" / "*.jsonl"), str(tmp_path / "b" / "c" / "x.jsonl")]
    assert source_names(patterns, files) == {files[0]: "a/x.jsonl", files[1]: "b/c/x.jsonl"}
    assert source_names([str(tmp_path / "**" / "*.jsonl")], files) == {
        files[0]: "a/x.jsonl", files[1]: "b/c/x.jsonl"}
    # different filesystems share no folder: full names
    mixed = ["memory://bucket/x.jsonl", files[0]]
    assert source_names(mixed, mixed) == {m: m for m in mixed}


def gzip_rows(n: int) -> bytes:
    return gzip.compress(b"".join(b'{"id": "r%d", "text": "row number %d"}\n' % (i, i)
                                  for i in range(n)))


def test_truncated_gzip_keeps_the_rows_before_the_damage(tmp_path):
    data = gzip_rows(5000)
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    res = ingest([str(path)], tmp_path / "shards", "c1", shard_docs=1000)
    check_counts(res)
    [whole_file] = res.quarantine
    assert (whole_file["file"], whole_file["line"]) == (str(path), 0)
    assert whole_file["reason"].startswith(f"unreadable .jsonl.gz file after line {res.rows_ok}: EOFError")
    assert 1000 < res.rows_ok < 5000  # the rows before the cut, bar a partial last line
    ids = [i for s in res.shards for i in read_shard(s.path)["id"]]
    assert ids == [f"r{i}" for i in range(res.rows_ok)]


def test_corrupt_gzip_and_not_gzip_are_whole_file_rows(tmp_path):
    data = bytearray(gzip_rows(5000))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # a damaged deflate block
    corrupt = tmp_path / "corrupt.jsonl.gz"
    corrupt.write_bytes(bytes(data))
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(b'{"text": "not gzip"}\n')
    res = ingest([str(tmp_path / "*.jsonl.gz")], tmp_path / "shards", "c1")
    check_counts(res)
    whole = [q for q in res.quarantine if q["line"] == 0]
    assert [(q["file"], q["reason"].split(":")[0]) for q in whole] == [
        (str(corrupt), f"unreadable .jsonl.gz file after line {res.per_file[str(corrupt)]['rows_in'] - 1}"),
        (str(fake), "unreadable .jsonl.gz file"),
    ]
    assert "BadGzipFile" in whole[1]["reason"]
    assert res.per_file[str(fake)] == {"rows_in": 1, "rows_ok": 0, "rows_quarantined": 1}
    assert res.per_file[str(corrupt)]["rows_ok"] >= 1000


def test_wrong_encoding_is_one_whole_file_row(tmp_path):
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes('{"id": "a", "text": "café"}\n{"id": "b", "text": "thé"}\n'.encode("utf-16"))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"id": "c", "text": "plain"}\n{"id": "d", "text": "café"}\n'.encode("latin-1"))
    res = ingest([str(utf16), str(latin1)], tmp_path / "shards", "c1")
    check_counts(res)
    assert [(q["file"], q["line"], q["reason"].split(":")[0]) for q in res.quarantine] == [
        (str(latin1), 2, "invalid utf-8"),  # only the row that is not ASCII
        (str(utf16), 0, "unreadable .jsonl file"),
    ]
    assert "not UTF-8" in res.quarantine[1]["reason"]
    assert [i for s in res.shards for i in read_shard(s.path)["id"]] == ["c"]


def ingest_lines(tmp_path, lines: list[bytes], end: bytes = b"\n"):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\n".join(lines) + end)
    res = ingest([str(path)], tmp_path / "shards", "c1")
    check_counts(res)
    ids = [i for s in res.shards for i in read_shard(s.path)["id"]]
    return res, [(q["line"], q["reason"]) for q in res.quarantine], ids


def nested(levels: int) -> bytes:
    """A row whose field nests so that the row is ``levels`` deep (the row is level 1)."""
    return b'{"id": "d%d", "text": "t", "meta": ' % levels + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def test_a_row_nested_too_deep_is_quarantined_not_a_crash(tmp_path):
    # 1,000 levels crashed Python's JSON parser (RecursionError) and with it the run; 50
    # made a shard no Parquet reader opens
    rows = [b'{"id": "a", "text": "before"}', nested(1001), nested(50), nested(33), nested(32),
            b'{"id": "s", "text": "' + b"[{" * 600 + b'"}',  # brackets in a string do not nest
            b'{"id": "b", "text": "after"}']
    res, bad, ids = ingest_lines(tmp_path, rows)
    assert bad == [(2, "nested 1,001 levels deep (at most 32)"),
                   (3, "nested 50 levels deep (at most 32)"),
                   (4, "nested 33 levels deep (at most 32)")]
    assert ids == ["a", "d32", "s", "b"]
    [shard] = res.shards
    meta = pq.read_table(shard.path).column("fields").to_pylist()[1]["meta"]
    depth = 2  # the row, and the field's outermost list
    while meta:  # the row at the bound is kept whole, read back: its 31 levels of lists
        meta, depth = meta[0], depth + 1
    assert depth == 32


def test_numbers_json_cannot_hold_quarantine_their_row(tmp_path):
    # 5,000 digits aborted the whole command with Python's int-limit message
    rows = [b'{"id": "a", "text": "t", "n": ' + b"9" * 5000 + b"}",
            b'{"id": "b", "text": "t", "n": -' + b"9" * 1000 + b"}",  # at the bound: kept
            b'{"id": "c", "text": "t", "x": NaN}',
            b'{"id": "d", "text": "t", "x": -Infinity}',
            b'{"id": "e", "text": "t", "x": 1e999}',
            b'{"id": "f", "text": "t", "x": 1.5e300}']
    res, bad, ids = ingest_lines(tmp_path, rows)
    assert bad == [(1, "an integer of 5,000 digits (at most 1,000)"),
                   (3, "invalid json: NaN is not a JSON value"),
                   (4, "invalid json: -Infinity is not a JSON value"),
                   (5, "a number beyond a float's range (1e999)")]
    assert ids == ["b", "f"]
    stored = pq.read_table(res.shards[0].path).column("fields")
    assert fields.decoded(stored.to_pylist()[0], ["n"])["n"] == -int("9" * 1000)


def test_a_lone_surrogate_in_a_field_quarantines_its_row(tmp_path):
    # it crashed ingest (and edit) where the field was written: no UTF-8 holds it
    rows = [b'{"id": "a", "text": "t", "x": "\\ud800"}',
            b'{"id": "b", "text": "t", "meta": {"\\udfff": 1}}',
            b'{"id": "c", "text": "t", "x": "\\ud83d\\ude00 \\\\ud800"}']  # a pair, a backslash
    res, bad, ids = ingest_lines(tmp_path, rows)
    assert bad == [(1, "invalid utf-8: a lone surrogate '\\ud800' (an unpaired \\u escape), "
                       "which UTF-8 cannot hold"),
                   (2, "invalid utf-8: a lone surrogate '\\udfff' (an unpaired \\u escape), "
                       "which UTF-8 cannot hold")]
    assert ids == ["c"]
    assert pq.read_table(res.shards[0].path).column("fields").to_pylist() == [
        {"x": "\U0001f600 \\ud800"}]


def test_a_nul_byte_costs_only_its_row_on_any_line(tmp_path):
    # on line 1 it lost the whole file as "UTF-16?"; on a later line only that row
    res, bad, ids = ingest_lines(tmp_path, [
        b'{"id": "a", "text": "x\x00y"}', b'{"id": "b", "text": "fine"}', b"\x00",
        b'{"id": "c", "text": "fine too"}'])
    assert bad == [(1, "invalid json: a NUL byte, which JSON text never holds"),
                   (3, "invalid json: a NUL byte, which JSON text never holds")]
    assert res.quarantine[0]["excerpt"] == '{"id": "a", "text": "x\\x00y"}'
    assert ids == ["b", "c"]


def test_encoding_is_decided_line_by_line(tmp_path):
    def utf8(doc_id):
        return json.dumps({"id": doc_id, "text": "café"}, ensure_ascii=False).encode() + b"\n"

    wide = '{"id": "b", "text": "thé"}\n{"id": "c", "text": "tea"}\n'
    files = {"then-utf16.jsonl": utf8("u1") + wide.encode("utf-16-le"),  # no byte order mark
             "utf16be.jsonl": wide.encode("utf-16-be"), "utf32.jsonl": wide.encode("utf-32"),
             "then-bom.jsonl": utf8("u2") + wide.encode("utf-16")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    res = ingest([str(tmp_path / n) for n in files], tmp_path / "shards", "c1")
    check_counts(res)
    assert {(os.path.basename(q["file"]), q["line"], q["reason"].split(": ")[0])
            for q in res.quarantine} == {
        ("then-utf16.jsonl", 0, "unreadable .jsonl file after line 1"),
        ("then-bom.jsonl", 0, "unreadable .jsonl file after line 1"),
        ("utf16be.jsonl", 0, "unreadable .jsonl file"), ("utf32.jsonl", 0, "unreadable .jsonl file")}
    assert all("WrongEncoding: not UTF-8 from line" in q["reason"] for q in res.quarantine)
    # the UTF-8 rows before the change of encoding are kept
    assert sorted(i for s in res.shards for i in read_shard(s.path)["id"]) == ["u1", "u2"]


MAX_LINE_BYTES = 32 * 2**20  # README's bound of a JSON line (documents.MAX_LINE_BYTES)


def test_a_line_past_the_length_bound_is_quarantined_unparsed(tmp_path):
    long = b'{"id": "long", "text": "' + b"x" * MAX_LINE_BYTES + b'"}'
    unended = b'{"id": "c", "text": "' + b"y" * (MAX_LINE_BYTES + 10)  # the file's end, no newline
    at_bound = b'{"id": "at", "text": "' + b"z" * (MAX_LINE_BYTES - 24) + b'"}'
    res, bad, ids = ingest_lines(tmp_path, [b'{"id": "a", "text": "one"}', long, at_bound,
                                            b'{"id": "b", "text": "two"}', unended], end=b"")
    assert len(at_bound) == MAX_LINE_BYTES  # its newline beyond: kept
    assert bad == [(2, f"line of {len(long):,} bytes (at most {MAX_LINE_BYTES:,})"),
                   (5, f"line of {len(unended):,} bytes (at most {MAX_LINE_BYTES:,})")]
    assert res.quarantine[0]["excerpt"] == '{"id": "long", "text": "' + "x" * 176
    assert ids == ["a", "at", "b"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_inputs_that_are_not_regular_files_are_refused_before_reading(tmp_path, kind):
    folder = tmp_path / "in"
    folder.mkdir()
    write_documents([{"id": "a", "text": "fine"}], folder / "a.jsonl")
    bad = folder / "b.jsonl"
    if kind == "fifo":
        os.mkfifo(bad)  # reading it would wait for a writer forever
    else:
        bad.symlink_to("/dev/zero")  # reading it would never end
    what = "a FIFO" if kind == "fifo" else "a character device"
    message = re.escape(f"{bad}: not a regular file ({what})")
    # a glob matching it among files: refused, not left out unsaid
    for patterns in ([str(folder / "*.jsonl")], [str(bad)]):
        with pytest.raises(InputError, match=message):
            ingest(patterns, tmp_path / "shards", "c1")
    assert not (tmp_path / "shards").exists() or not any((tmp_path / "shards").iterdir())


def corrupt_row_group(path, group: int) -> None:
    """Overwrite the middle of one row group's text column chunk (compressed data)."""
    chunk = pq.ParquetFile(path).metadata.row_group(group).column(1)
    raw = bytearray(path.read_bytes())
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    raw[middle : middle + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))


def test_corrupt_parquet_keeps_the_row_groups_before_the_damage(tmp_path):
    path = tmp_path / "cosmo.parquet"
    texts = [f"synthetic textbook page {i} " * 20 for i in range(300)]
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(300)], "text": texts}), path,
                   row_group_size=100, compression="snappy", use_dictionary=False)
    corrupt_row_group(path, 2)
    res = ingest([str(path)], tmp_path / "shards", "c1")
    check_counts(res)
    assert res.rows_ok == 200  # both row groups before the damaged one, whole
    [whole_file] = res.quarantine
    assert whole_file["line"] == 0
    assert whole_file["reason"].startswith("unreadable .parquet file after row 200: ")
    not_parquet = tmp_path / "fake.parquet"
    not_parquet.write_bytes(b"not parquet")
    [rec] = read_records(str(not_parquet))
    assert (rec.line, rec.reason.split(":")[:2]) == (0, ["unreadable .parquet file", " ArrowInvalid"])


def test_parquet_row_with_invalid_utf8_is_its_own_row(tmp_path):
    # Arrow trusts the strings other writers stored; one bad row must not cost the rest
    offsets = pa.array([0, 3, 5, 9], type=pa.int32()).buffers()[1]
    text = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"one\xff\xfefour")])
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": text}), path)
    recs = list(read_records(str(path)))
    assert [(r.line, r.id, r.text) for r in recs if r.reason is None] == [(1, "a", "one"), (3, "c", "four")]
    [bad] = [r for r in recs if r.reason]
    assert bad.line == 2 and bad.reason.startswith("invalid utf-8") and '"id": "b"' in bad.excerpt


def test_missing_file_still_raises_naming_it(tmp_path):
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


# Dolma's layout: its own `source`, and a nested `metadata` whose keys differ by row
DOLMA = [
    {"id": "w1", "text": "first page", "source": "common-crawl", "added": "2024-01-02",
     "created": "2019-05-06", "metadata": {"url": "https://a.example", "language": "en",
                                           "scores": [0.5, 0.25]}},
    {"id": "w2", "text": "second page", "source": "wiki", "added": "2024-01-03",
     "metadata": {"url": "https://b.example", "license": {"name": "CC-BY", "version": 4}}},
    {"id": "w3", "text": "third page", "source": "wiki", "extra": True},
]


def without_nulls(value):
    """A document as it went in: fields keep a key for every key of their shard, null
    where a document lacked it."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_every_field_of_a_dolma_document_is_kept_in_its_shard(tmp_path):
    write_documents(DOLMA, tmp_path / "dolma.jsonl.gz")
    res = ingest([str(tmp_path / "dolma.jsonl.gz")], tmp_path / "shards", "web")
    assert res.rows_quarantined == 0 and res.json_fields == {}
    [shard] = res.shards
    table = pq.read_table(shard.path)
    # the shard's bookkeeping (source file, line) beside the input's own `source` field
    assert table.column("source").to_pylist() == [str(tmp_path / "dolma.jsonl.gz")] * 3
    assert [without_nulls(f) for f in table.column("fields").to_pylist()] == [
        {k: v for k, v in d.items() if k not in ("id", "text")} for d in DOLMA]
    meta = table.schema.field("fields").type.field("metadata").type
    assert meta.field("license").type == pa.struct([("name", pa.string()),
                                                    ("version", pa.int64())])


def test_parquet_columns_keep_their_arrow_types(tmp_path):
    types = {"n": pa.int16(), "when": pa.timestamp("us", tz="UTC"), "tags": pa.list_(pa.string()),
             "info": pa.struct([("lang", pa.string()), ("score", pa.float32())])}
    import datetime as dt

    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    pq.write_table(pa.table({
        "id": ["p1", "p2"], "text": ["one", "two"], "n": pa.array([1, -3], types["n"]),
        "when": pa.array([when, None], types["when"]),
        "tags": pa.array([["a", "b"], []], types["tags"]),
        "info": pa.array([{"lang": "en", "score": 0.5}, None], types["info"])}),
        tmp_path / "typed.parquet")
    res = ingest([str(tmp_path / "typed.parquet")], tmp_path / "shards", "typed")
    table = pq.read_table(res.shards[0].path)
    stored = table.schema.field("fields").type
    assert {f.name: f.type for f in stored} == {
        f.name: f.type for f in pq.read_schema(tmp_path / "typed.parquet")
        if f.name not in ("id", "text")}
    assert table.column("fields").to_pylist() == [
        {"n": 1, "when": when, "tags": ["a", "b"], "info": {"lang": "en", "score": 0.5}},
        {"n": -3, "when": None, "tags": [], "info": None}]


def test_a_field_of_conflicting_types_is_kept_as_json_text_not_quarantined(tmp_path, caplog):
    docs = [{"id": "a", "text": "x", "year": 1961, "meta": {}},
            {"id": "b", "text": "y", "year": "nineteen", "meta": {}},
            {"id": "c", "text": "z", "year": [1, 2], "big": 2 ** 70}]
    write_documents(docs, tmp_path / "mixed.jsonl")
    res = ingest([str(tmp_path / "mixed.jsonl")], tmp_path / "shards", "c1")
    assert res.rows_ok == 3 and res.rows_quarantined == 0
    # `meta` is only ever {}: a struct without keys, which Parquet cannot hold
    assert res.json_fields == {"year": 1, "meta": 1, "big": 1}
    assert "field 'year'" in caplog.text and "JSON text" in caplog.text
    stored = pq.read_table(res.shards[0].path).column("fields")
    assert fields.json_keys(stored.type) == ["year", "meta", "big"]
    assert [fields.decoded(r, ["year", "meta", "big"]) for r in stored.to_pylist()] == [
        {"year": 1961, "meta": {}, "big": None}, {"year": "nineteen", "meta": {}, "big": None},
        {"year": [1, 2], "meta": None, "big": 2 ** 70}]


def shard_of(docs):
    rows = [{"id": d["id"], "text": d["text"], "doc_hash": doc_hash(d["text"]),
             "source": "f", "line": n} for n, d in enumerate(docs, start=1)]
    meta = [{k: v for k, v in d.items() if k not in ("id", "text")} for d in docs]
    return shard_table(rows, fields.from_rows(meta))


def test_the_shard_hash_covers_every_field_value_and_type():
    base = shard_hash(shard_of(DOLMA))
    assert shard_hash(shard_of(DOLMA)) == base
    changed = [dict(d) for d in DOLMA]
    changed[1] = {**changed[1], "metadata": {**changed[1]["metadata"], "url": "https://c.example"}}
    assert shard_hash(shard_of(changed)) != base
    changed = [dict(d) for d in DOLMA]
    del changed[2]["extra"]
    assert shard_hash(shard_of(changed)) != base
    # the same values in another type
    as_int16 = shard_table(shard_of(DOLMA[:1]).drop_columns(["fields"]).to_pylist(),
                           fields.from_rows([{"n": 1}], {"n": pa.int16()}))
    as_int64 = shard_table(shard_of(DOLMA[:1]).drop_columns(["fields"]).to_pylist(),
                           fields.from_rows([{"n": 1}]))
    assert shard_hash(as_int16) != shard_hash(as_int64)
    # moved bookkeeping (another file or line) is the same content
    moved = shard_of(DOLMA).set_column(3, "source", pa.array(["g"] * 3))
    assert shard_hash(moved) == base


def test_a_shard_without_fields_hashes_as_before_fields_were_kept():
    """Ids and texts only: the hash of earlier releases, so their cached scores still hit."""
    import hashlib

    docs = [{"id": "a", "text": "one"}, {"id": "b", "text": "twö"}]
    h = hashlib.sha256()
    for d in docs:
        for value in (d["id"], d["text"]):
            data = value.encode("utf-8")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    table = shard_of(docs)
    assert "fields" not in table.column_names
    assert shard_hash(table) == h.hexdigest()[:16]


def test_reingest_of_changed_metadata_is_a_new_shard(tmp_path):
    path = tmp_path / "dolma.jsonl"
    write_documents(DOLMA, path)
    first = ingest([str(path)], tmp_path / "shards", "web")
    changed = [dict(d) for d in DOLMA]
    changed[0] = {**changed[0], "added": "2024-02-01"}
    write_documents(changed, path)
    second = ingest([str(path)], tmp_path / "shards", "web")
    assert first.shards[0].shard_hash != second.shards[0].shard_hash
    assert pq.read_table(second.shards[0].path).column("fields")[0]["added"].as_py() == "2024-02-01"


def test_write_documents_to_parquet_never_drops_a_key(tmp_path):
    docs = [{"id": "a", "text": "x"}, {"id": "b", "text": "y", "late": 1}]
    with pytest.raises(ValueError, match=r"document 1 has key\(s\) \['late'\]"):
        write_documents(docs, tmp_path / "inferred.parquet", batch_rows=1)
    # with the columns given: their types, JSON text where a field is marked so
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("late", pa.int16()),
                        fields.json_field("any")])
    docs[0]["any"], docs[1]["any"] = [1], "one"
    assert write_documents(docs, tmp_path / "typed.parquet", batch_rows=1, schema=schema) == 2
    table = pq.read_table(tmp_path / "typed.parquet")
    assert table.schema.field("late").type == pa.int16()
    assert table.to_pylist() == [{"id": "a", "text": "x", "late": None, "any": "[1]"},
                                 {"id": "b", "text": "y", "late": 1, "any": '"one"'}]
    assert not (tmp_path / "inferred.parquet").exists()


def test_write_documents_names_a_document_its_columns_cannot_hold(tmp_path):
    schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("n", pa.int16())])
    docs = [{"id": "a", "text": "x", "n": 1}, {"id": "b", "text": "y", "n": 10**6},
            {"id": "c", "text": "z", "n": 2}]
    with pytest.raises(ValueError, match=r"^document 1: field 'n' does not fit its column \(int16\)"):
        write_documents(docs, tmp_path / "strict.parquet", schema=schema)
    assert not (tmp_path / "strict.parquet").exists()
    # with a callback (`semisynth edit` names the row's line): that document left out, said
    lost = []
    assert write_documents(docs, tmp_path / "out.parquet", schema=schema,
                           unwritable=lambda n, why: lost.append((n, why))) == 2
    assert [n for n, _ in lost] == [1] and lost[0][1].startswith("field 'n' does not fit")
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ["a", "c"]


@pytest.mark.parametrize("ext", [".jsonl", ".jsonl.gz"])
def test_write_documents_writes_json_lines_that_are_json(tmp_path, ext):
    """A NaN or infinite float (a typed column's, a score's) is null: NaN is not JSON."""
    path = tmp_path / f"out{ext}"
    docs = [{"id": "a", "text": "x", "score": float("nan"), "m": {"v": [float("inf"), 1.5]}},
            {"id": "b", "text": "y", "score": 0.5}]
    write_documents(docs, path)

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    text = (gzip.decompress(path.read_bytes()) if ext == ".jsonl.gz" else path.read_bytes()).decode()
    assert [json.loads(line, parse_constant=refuse) for line in text.splitlines()] == [
        {"id": "a", "text": "x", "score": None, "m": {"v": [None, 1.5]}},
        {"id": "b", "text": "y", "score": 0.5}]
