"""Immutable releases: written whole or not at all, read-only, verifiable."""

import gzip
import hashlib
import json
import os
import shutil
import stat

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth import fields
from semisynth.tasks import release
from semisynth.tasks.ingest import doc_hash, shard_table, write_shard
from semisynth.warehouse import db, records


def make_shard(folder, docs: list[dict], component: str | None = None,
               declared: dict | None = None):
    """A shard as ingest writes one: ``docs`` are input documents (id, text, fields)."""
    rows = [{"id": d["id"], "text": d["text"], "doc_hash": doc_hash(d["text"]),
             "source": "in.jsonl", "line": n} for n, d in enumerate(docs, start=1)]
    struct = fields.from_rows([{k: v for k, v in d.items() if k not in ("id", "text")}
                              for d in docs], declared)
    table = shard_table(rows, struct)
    if component is not None:
        table = table.add_column(5, fields.COMPONENT, pa.array([component] * len(docs)))
    return write_shard(table, folder, "in.jsonl").path


@pytest.fixture
def shards(tmp_path):
    return [make_shard(tmp_path / "shards", [
        {"id": f"d{i}-{j}", "text": f"doc d{i}-{j} – ünïcode", "source": "brown"}
        for j in range(3)]) for i in range(2)]


def test_write_verify_list(tmp_path, shards):
    root = tmp_path / "releases"
    assert release.next_version(root, "demo") == "v0001"
    path = release.write_release(root, "demo", "v0001", shards, {"run_id": "r1", "model": "m"})
    assert path == root / "demo" / "v0001"
    assert release.verify_release(path) == []
    assert release.next_version(root, "demo") == "v0002"
    assert [p.name for p in (root / "demo").iterdir()] == ["v0001"]  # no temporary left

    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["run_id"] == "r1" and manifest["name"] == "demo"
    assert manifest["version"] == "v0001" and manifest["documents"] == 6
    assert sorted(manifest["files"]) == ["README.md", "data/train-00000-of-00002.parquet",
                                         "data/train-00001-of-00002.parquet",
                                         "documents/part-00000.jsonl.gz",
                                         "documents/part-00001.jsonl.gz"]  # no scores: no attributes
    for file in [path / "manifest.json", path / "README.md", *(path / "data").iterdir(),
                 *(path / "documents").iterdir()]:
        assert file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0

    with gzip.open(path / "documents" / "part-00001.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    assert [list(d)[:2] for d in docs] == [["id", "text"]] * 3  # Dolma: id, text, then the rest
    # the input's own `source` field, not the shard's bookkeeping (file, line, doc_hash)
    assert docs[0] == {"id": "d1-0", "text": "doc d1-0 – ünïcode", "source": "brown"}
    assert pq.read_table(path / "data" / "train-00000-of-00002.parquet").to_pylist() == [
        {"id": f"d0-{j}", "text": f"doc d0-{j} – ünïcode", "source": "brown"} for j in range(3)]

    assert release.list_releases(root) == [{
        "name": "demo", "version": "v0001", "path": str(path), "documents": 6,
        "created_at": manifest["created_at"]}]


def released(path):
    """(Parquet tables, JSON lines documents) of each part of the release at ``path``."""
    parts = sorted((path / "data").glob("*.parquet"))
    jsonl = []
    for part in parts:
        number = int(part.name.split("-")[1])  # train-NNNNN-of-MMMMM.parquet
        with gzip.open(path / "documents" / f"part-{number:05d}.jsonl.gz", "rt") as f:
            jsonl.append([json.loads(line) for line in f])
    return [pq.read_table(p) for p in parts], jsonl


def test_a_release_has_one_schema_with_every_field_at_top_level(tmp_path):
    folder = tmp_path / "shards"
    shards = [
        # typed as a Parquet file types them: int16 and a timestamp
        make_shard(folder, [{"id": "a", "text": "A", "n": 1, "when": None, "meta": {"url": "u"},
                             "mixed": 1}],
                   declared={"n": pa.int16(), "when": pa.timestamp("ms", tz="UTC")}),
        # n is int32 here, meta has one more key, mixed is text, `text` is a field (the
        # input's text was another key): every key keeps its values
        make_shard(folder, [{"id": "b", "text": "B", "n": 70000, "meta": {"lang": "en"},
                             "mixed": "one", "semisynth_component": "old"}],
                   component="web", declared={"n": pa.int32()}),
        make_shard(folder, [{"id": "c", "text": "C"}]),  # no fields at all
    ]
    path = release.write_release(tmp_path / "releases", "demo", "v0001", shards, {})
    assert release.verify_release(path) == []
    tables, jsonl = released(path)
    schema = tables[0].schema
    assert all(t.schema == schema for t in tables)  # one schema across the parts
    assert schema.names == ["id", "text", "n", "when", "meta", "mixed",
                            "input_semisynth_component", "semisynth_component"]
    assert schema.field("n").type == pa.int32()  # int16 and int32: int32 holds both
    assert schema.field("when").type == pa.timestamp("ms", tz="UTC")
    assert fields.is_json(schema.field("mixed")) and schema.field("mixed").type == pa.string()
    assert [t.to_pylist() for t in tables] == [
        [{"id": "a", "text": "A", "n": 1, "when": None, "meta": {"url": "u", "lang": None},
          "mixed": "1", "input_semisynth_component": None, "semisynth_component": None}],
        [{"id": "b", "text": "B", "n": 70000, "when": None, "meta": {"url": None, "lang": "en"},
          "mixed": '"one"', "input_semisynth_component": "old", "semisynth_component": "web"}],
        [{"id": "c", "text": "C", "n": None, "when": None, "meta": None, "mixed": None,
          "input_semisynth_component": None, "semisynth_component": None}]]
    # JSON lines: the same keys, a JSON-text field as the values that went in
    assert [[d["mixed"] for d in part] for part in jsonl] == [[1], ["one"], [None]]
    assert [[list(d) for d in part] for part in jsonl] == [[schema.names]] * 3


def test_a_fields_nan_is_released_as_json_null(tmp_path):
    # a Parquet input's float column may hold NaN or an infinity: JSON has no such number
    shard = make_shard(tmp_path / "shards", [
        {"id": "a", "text": "A", "score": float("nan")},
        {"id": "b", "text": "B", "score": float("-inf")},
        {"id": "c", "text": "C", "score": 0.5, "nested": {"x": [float("inf"), 1.0]}}])
    path = release.write_release(tmp_path / "releases", "demo", "v0001", [shard], {})
    assert release.verify_release(path) == []

    def strict(name):
        raise ValueError(f"{name} is not JSON")

    with gzip.open(path / "documents" / "part-00000.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line, parse_constant=strict) for line in f]
    assert [d["score"] for d in docs] == [None, None, 0.5]
    assert docs[2]["nested"] == {"x": [None, 1.0]}
    # Parquet holds the float as it was
    scores = pq.read_table(path / "data" / "train-00000-of-00001.parquet")["score"].to_pylist()
    assert scores[0] != scores[0] and scores[1] == float("-inf") and scores[2] == 0.5


def test_verify_reports_tampering(tmp_path, shards):
    path = release.write_release(tmp_path, "demo", "v0001", shards, {}, formats=("parquet",))
    assert sorted(p.name for p in (path / "data").iterdir()) == ["train-00000-of-00002.parquet",
                                                                 "train-00001-of-00002.parquet"]
    victim = path / "data" / "train-00000-of-00002.parquet"
    victim.chmod(0o644)
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF  # one byte, same size
    victim.write_bytes(bytes(raw))
    assert release.verify_release(path) == ["data/train-00000-of-00002.parquet: sha256 differs from the manifest"]

    (path / "data").chmod(0o755)  # a released folder is read-only too
    (path / "data" / "train-00001-of-00002.parquet").unlink()
    (path / "data" / "part-00009.parquet").write_bytes(b"x")
    problems = release.verify_release(path)
    assert "missing file data/train-00001-of-00002.parquet" in problems
    assert "unlisted file data/part-00009.parquet" in problems


def test_existing_version_raises(tmp_path, shards):
    release.write_release(tmp_path, "demo", "v0001", shards, {})
    before = (tmp_path / "demo" / "v0001" / "manifest.json").read_bytes()
    with pytest.raises(FileExistsError, match="immutable"):
        release.write_release(tmp_path, "demo", "v0001", shards[:1], {})
    assert (tmp_path / "demo" / "v0001" / "manifest.json").read_bytes() == before
    assert release.verify_release(tmp_path / "demo" / "v0001") == []


def test_failure_mid_write_leaves_nothing(tmp_path, shards):
    root = tmp_path / "releases"
    with pytest.raises(FileNotFoundError):
        release.write_release(root, "demo", "v0001", [shards[0], tmp_path / "no-such.parquet"], {})
    assert not (root / "demo").exists()  # neither the version nor its temporary folder
    assert release.list_releases(root) == []
    # With an earlier release in place, a failed one leaves that release untouched.
    release.write_release(root, "demo", "v0001", shards, {})
    with pytest.raises(ValueError, match="lacks column"):
        bad = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"id": ["x"]}), bad)
        release.write_release(root, "demo", "v0002", [bad], {})
    assert [p.name for p in (root / "demo").iterdir()] == ["v0001"]


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rewrite_manifest(path, change) -> None:
    manifest_path = path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(manifest["files"])
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest))


def test_verify_checks_the_manifest_against_the_warehouse_record(tmp_path, shards):
    root, wh = tmp_path / "releases", db.init(tmp_path / "warehouse.duckdb")
    released = release.release(root, "demo", shards, "m", {}, {"run_id": "r1", "corpus": "c"})
    path = released.path
    assert release.verify_release(path, warehouse=wh) == [
        f"no record of release demo v0001 in the warehouse {wh}"]
    records.record_release(wh, released.row)
    assert release.verify_release(path, warehouse=wh) == []

    # edit a data file, then rewrite its checksum and size in the manifest
    victim = path / "documents" / "part-00000.jsonl.gz"
    victim.chmod(0o644)
    victim.write_bytes(gzip.compress(b'{"id": "d0-0", "text": "replaced"}\n'))
    _rewrite_manifest(path, lambda files: files.update({"documents/part-00000.jsonl.gz": {
        "sha256": _sha(victim), "bytes": victim.stat().st_size}}))
    assert release.verify_release(path) == []  # the folder agrees with itself ...
    [problem] = release.verify_release(path, warehouse=wh)  # ... not with the warehouse
    assert problem.startswith("manifest.json differs from the one recorded in the warehouse")
    assert released.row["manifest_sha256"][:16] in problem


def test_verify_refuses_manifest_paths_outside_the_release(tmp_path, shards):
    path = release.write_release(tmp_path / "releases", "demo", "v0001", shards[:1], {},
                                 formats=("parquet",))
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of any release")
    (path / "data").chmod(0o755)
    (path / "data" / "link.parquet").symlink_to(secret)
    entry = {"sha256": _sha(secret), "bytes": secret.stat().st_size}
    crafted = ["../../../secret.txt", str(secret), "data/link.parquet", "data/../../../../secret.txt"]
    _rewrite_manifest(path, lambda files: files.update(dict.fromkeys(crafted, entry)))
    assert sorted(release.verify_release(path)) == sorted(
        f"manifest.json lists {rel!r}, outside the release folder: not read" for rel in crafted)


def test_release_verify_command_compares_with_the_warehouse(tmp_path, shards, capsys):
    from semisynth.cli import main

    root = tmp_path / "data"
    wh = db.init(db.warehouse_path(root))
    released = release.release(root / "releases", "demo", shards, "m", {},
                               {"run_id": "r1", "corpus": "c"})
    records.record_release(wh, released.row)
    assert main(["--data-root", str(root), "release", "verify", "demo"]) == 0
    victim = released.path / "documents" / "part-00000.jsonl.gz"
    victim.chmod(0o644)
    victim.write_bytes(gzip.compress(b'{"id": "d0-0", "text": "replaced"}\n'))
    _rewrite_manifest(released.path, lambda files: files.update({"documents/part-00000.jsonl.gz": {
        "sha256": _sha(victim), "bytes": victim.stat().st_size}}))
    capsys.readouterr()
    assert main(["--data-root", str(root), "release", "verify", "demo"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "differs from the one recorded in the warehouse" in out


WRITE = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def test_released_folders_are_read_only_as_their_files(tmp_path, shards):
    root = tmp_path / "releases"
    path = release.write_release(root, "demo", "v0001", shards, {})
    folders = [path, *(p for p in path.rglob("*") if p.is_dir())]
    assert sorted(p.relative_to(path).as_posix() for p in folders) == [".", "data", "documents"]
    for entry in [*folders, *(p for p in path.rglob("*") if p.is_file())]:
        assert entry.stat().st_mode & WRITE == 0, entry
    if os.geteuid() != 0:  # root writes whatever the modes say
        with pytest.raises(PermissionError):
            (path / "data" / "extra.parquet").write_bytes(b"x")
    # the name's folder stays writable: the next version goes there
    assert (root / "demo").stat().st_mode & stat.S_IWUSR
    assert release.write_release(root, "demo", "v0002", shards, {}).stat().st_mode & WRITE == 0


def test_a_release_is_renamed_into_place_only_after_its_intent_is_recorded(tmp_path, shards):
    root, wh = tmp_path / "releases", db.init(tmp_path / "warehouse.duckdb")
    released = release.release(root, "demo", shards, "m", {}, {"run_id": "r1", "corpus": "c"},
                               warehouse=wh)
    [intent] = db.query(wh, "SELECT * FROM release_intents").to_dict("records")
    assert {k: intent[k] for k in ("name", "version", "run_id", "corpus", "path",
                                   "manifest_sha256")} == {
        "name": "demo", "version": "v0001", "run_id": "r1", "corpus": "c",
        "path": str(released.path), "manifest_sha256": _sha(released.path / "manifest.json")}
    assert released.row["manifest_sha256"] == intent["manifest_sha256"]

    # a warehouse that cannot take the intent (from before the table existed): no release
    old = db.init(tmp_path / "old.duckdb")
    db.execute(old, "DROP TABLE release_intents")
    with pytest.raises(duckdb.CatalogException, match="release_intents"):
        release.write_release(root, "demo", "v0002", shards, {"run_id": "r2"}, warehouse=old)
    assert [p.name for p in (root / "demo").iterdir()] == ["v0001"]  # no temporary left


def _forge(path, into):
    """The issue's forgery: release ``path`` copied to the version folder ``into``, a
    document edited, its checksum and size rewritten in the manifest, and the manifest's
    version made the folder's."""
    shutil.copytree(path, into)
    victim = into / "documents" / "part-00000.jsonl.gz"
    victim.chmod(0o644)
    victim.write_bytes(gzip.compress(b'{"id": "d0-0", "text": "forged"}\n'))
    manifest_path = into / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["version"] = into.name
    manifest["files"]["documents/part-00000.jsonl.gz"] = {"sha256": _sha(victim),
                                                          "bytes": victim.stat().st_size}
    manifest_path.chmod(0o644)
    manifest_path.write_text(json.dumps(manifest))


def test_a_forged_version_folder_is_left_alone_and_never_taken_for_the_release(
        tmp_path, shards, caplog, capsys):
    from semisynth.cli import main

    data = tmp_path / "data"
    root, wh = data / "releases", db.init(db.warehouse_path(data))
    released = release.release(root, "demo", shards, "m", {}, {"run_id": "r1", "corpus": "c"})
    records.record_release(wh, released.row)
    forged = root / "demo" / "v0002"
    _forge(released.path, forged)
    assert release.verify_release(forged) == []  # it agrees with itself

    with caplog.at_level("WARNING", logger="semisynth.tasks.release"):
        assert release.restore_rows(root, wh) == []  # what a run's recovery does first
    assert records.recorded_releases(wh) == {("demo", "v0001")}
    [warning] = [r.getMessage() for r in caplog.records]
    assert warning.startswith(f"{forged} has no warehouse row and is not recorded as a release: "
                              "no run recorded the intent to release demo v0002")
    assert main(["--data-root", str(data), "release", "verify", "demo"]) == 1
    out = capsys.readouterr().out
    assert f"{forged}: FAILED" in out and "no record of release demo v0002" in out
    # the same content released again: the recorded version is the release, not the forgery
    again = release.release(root, "demo", shards, "m", {}, {"run_id": "r2", "corpus": "c"},
                            warehouse=wh)
    assert again.new is False and again.path == released.path
    assert main(["--data-root", str(data), "release", "verify", "demo", "--version", "v0001"]) == 0


def test_symlinked_release_folders_are_refused(tmp_path, shards, caplog, capsys):
    from semisynth.cli import main

    data = tmp_path / "data"
    root, wh = data / "releases", db.init(db.warehouse_path(data))
    released = release.release(root, "demo", shards, "m", {}, {"run_id": "r1", "corpus": "c"})
    records.record_release(wh, released.row)
    # a whole, self-consistent release outside the data root, linked in as a version of
    # demo and as the folder of a release name of its own
    outside = tmp_path / "outside"
    shutil.copytree(released.path, outside / "v0002")
    (root / "demo" / "v0002").symlink_to(outside / "v0002", target_is_directory=True)
    (root / "linked").symlink_to(outside, target_is_directory=True)
    dest = tmp_path / "share"
    for args, link in [(["verify", "demo"], root / "demo" / "v0002"),
                       (["verify", "demo", "--version", "v0002"], root / "demo" / "v0002"),
                       (["verify", str(root / "demo" / "v0002")], root / "demo" / "v0002"),
                       (["verify", "linked"], root / "linked"),
                       (["push", "demo", str(dest)], root / "demo" / "v0002"),
                       (["push", "linked", str(dest)], root / "linked")]:
        assert main(["--data-root", str(data), "release", *args]) == 2, args
        captured = capsys.readouterr()
        assert f"error: {link} is a symbolic link (to {outside}" in captured.err, args
        assert "refused" in captured.err and "OK" not in captured.out, args
    assert not dest.exists()
    assert main(["--data-root", str(data), "release", "verify", "demo", "--version", "v0001"]) == 0

    with caplog.at_level("WARNING", logger="semisynth.tasks.release"):
        assert release.restore_rows(root, wh) == []
    assert records.recorded_releases(wh) == {("demo", "v0001")}
    assert sorted(r.getMessage().split(" is a symbolic link")[0] for r in caplog.records) == [
        str(root / "demo" / "v0002"), str(root / "linked")]
    # nothing is written through a linked name folder
    with pytest.raises(ValueError, match=f"{root / 'linked'} is a symbolic link"):
        release.write_release(root, "linked", "v0003", shards, {})
    assert sorted(p.name for p in outside.iterdir()) == ["v0002"]
