"""Immutable releases: written whole or not at all, read-only, verifiable."""

import gzip
import hashlib
import json
import stat

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.tasks import release
from semisynth.warehouse import db, records


@pytest.fixture
def shards(tmp_path):
    paths = []
    for i in range(2):
        path = tmp_path / "shards" / f"shard{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        ids = [f"d{i}-{j}" for j in range(3)]
        pq.write_table(pa.table({"text": [f"doc {d} – ünïcode" for d in ids], "id": ids,
                                 "source": ["brown"] * 3}), path)
        paths.append(path)
    return paths


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
    assert sorted(manifest["files"]) == ["README.md", "data/part-00000.parquet",
                                         "data/part-00001.parquet",
                                         "documents/part-00000.jsonl.gz",
                                         "documents/part-00001.jsonl.gz"]  # no scores: no attributes
    for file in [path / "manifest.json", path / "README.md", *(path / "data").iterdir(),
                 *(path / "documents").iterdir()]:
        assert file.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0

    with gzip.open(path / "documents" / "part-00001.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    assert [list(d)[:2] for d in docs] == [["id", "text"]] * 3  # Dolma: id, text, then the rest
    assert docs[0] == {"id": "d1-0", "text": "doc d1-0 – ünïcode", "source": "brown"}
    assert pq.read_table(path / "data" / "part-00000.parquet").equals(pq.read_table(shards[0]))

    assert release.list_releases(root) == [{
        "name": "demo", "version": "v0001", "path": str(path), "documents": 6,
        "created_at": manifest["created_at"]}]


def test_verify_reports_tampering(tmp_path, shards):
    path = release.write_release(tmp_path, "demo", "v0001", shards, {}, formats=("parquet",))
    assert sorted(p.name for p in (path / "data").iterdir()) == ["part-00000.parquet",
                                                                 "part-00001.parquet"]
    victim = path / "data" / "part-00000.parquet"
    victim.chmod(0o644)
    raw = bytearray(victim.read_bytes())
    raw[100] ^= 0xFF  # one byte, same size
    victim.write_bytes(bytes(raw))
    assert release.verify_release(path) == ["data/part-00000.parquet: sha256 differs from the manifest"]

    (path / "data" / "part-00001.parquet").unlink()
    (path / "data" / "part-00009.parquet").write_bytes(b"x")
    problems = release.verify_release(path)
    assert "missing file data/part-00001.parquet" in problems
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
