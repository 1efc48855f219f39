"""`semisynth release push`: a verified release copied to a folder or an fsspec URL, read
back and checked, recorded in the warehouse; `release verify` on the copy."""

import hashlib
import json
import stat
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.cli import main
from semisynth.tasks import release
from semisynth.warehouse import db, records


@pytest.fixture
def data_root(tmp_path):
    """A data root with release demo v0001 (two parts, a card) recorded in its warehouse."""
    root = tmp_path / "data"
    shards = []
    for i in range(2):
        path = tmp_path / "shards" / f"shard{i}.parquet"
        path.parent.mkdir(exist_ok=True)
        ids = [f"d{i}-{j}" for j in range(50)]
        pq.write_table(pa.table({"id": ids, "text": [f"text {d} " * 40 for d in ids]}), path)
        shards.append(path)
    wh = db.init(db.warehouse_path(root))
    released = release.release(root / "releases", "demo", shards, "m", {},
                               {"run_id": "r1", "corpus": "c"})
    records.record_release(wh, released.row)
    return root


def cli(root, *args) -> int:
    return main(["--data-root", str(root), "release", *args])


def pushes(root):
    return db.query(db.warehouse_path(root), "SELECT * FROM pushes ORDER BY pushed_at")


def test_push_to_a_folder(data_root, tmp_path, capsys):
    dest = tmp_path / "share"
    assert cli(data_root, "push", "demo", str(dest)) == 0
    copy = dest / "demo" / "v0001"
    source = data_root / "releases" / "demo" / "v0001"
    names = sorted(p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file())
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == names
    for rel in names:
        assert (copy / rel).read_bytes() == (source / rel).read_bytes()
        assert (copy / rel).stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) == 0
    assert [p.name for p in (dest / "demo").iterdir()] == ["v0001"]  # no temporary left

    [row] = pushes(data_root).to_dict("records")
    manifest_sha = hashlib.sha256((source / "manifest.json").read_bytes()).hexdigest()
    assert row["name"] == "demo" and row["version"] == "v0001" and row["copied"]
    assert row["destination"] == f"file://{copy}"
    assert row["files"] == len(names) and row["manifest_sha256"] == manifest_sha
    assert row["bytes"] == sum((source / n).stat().st_size for n in names)
    lineage = db.query(db.warehouse_path(data_root), "SELECT * FROM release_pushes")
    assert lineage.same_manifest.tolist() == [True] and lineage.corpus.tolist() == ["c"]

    capsys.readouterr()
    assert cli(data_root, "verify", str(copy)) == 0
    assert "the one pushed there" in capsys.readouterr().out
    # the same push again: the copy is checked, nothing is written, the push is recorded
    assert cli(data_root, "push", "demo", str(dest), "--version", "v0001") == 0
    assert "already there" in capsys.readouterr().out
    assert pushes(data_root).copied.tolist() == [True, False]


def test_push_to_memory_and_a_tampered_copy(data_root, capsys):
    dest = f"memory://push-{uuid.uuid4().hex}/corpora"
    assert cli(data_root, "push", "demo", dest) == 0
    url = f"{dest}/demo/v0001"
    [row] = pushes(data_root).to_dict("records")
    assert row["destination"] == release.location_url(url)
    assert release.verify_release(url) == []
    capsys.readouterr()
    assert cli(data_root, "verify", url) == 0
    assert "the one pushed there" in capsys.readouterr().out

    fs, path = release.location(url)
    fs.pipe(f"{path}/attributes-not-listed.txt", b"x")
    part = f"{path}/data/train-00000-of-00002.parquet"
    raw = bytearray(fs.cat_file(part))
    raw[200] ^= 0xFF
    fs.pipe(part, bytes(raw))
    assert cli(data_root, "verify", url) == 1
    out = capsys.readouterr().out
    assert "data/train-00000-of-00002.parquet: sha256 differs from the manifest" in out
    assert "unlisted file attributes-not-listed.txt" in out

    # the file and its manifest entry changed together: the push's record catches it
    fs.rm(f"{path}/attributes-not-listed.txt")
    manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
    manifest["files"]["data/train-00000-of-00002.parquet"]["sha256"] = hashlib.sha256(raw).hexdigest()
    fs.pipe(f"{path}/manifest.json", json.dumps(manifest).encode())
    assert release.verify_release(url) == []  # the copy agrees with itself ...
    assert cli(data_root, "verify", url) == 1  # ... not with what was pushed
    assert "differs from the one recorded for it" in capsys.readouterr().out
    # and a push over it is refused: it is not this release's copy any more
    assert cli(data_root, "push", "demo", dest) == 2
    assert "holds another copy" in capsys.readouterr().err
    assert len(pushes(data_root)) == 1


def test_an_unverified_release_is_not_pushed(data_root, tmp_path, capsys):
    victim = data_root / "releases" / "demo" / "v0001" / "documents" / "part-00001.jsonl.gz"
    victim.chmod(0o644)
    victim.write_bytes(b"not the documents")
    dest = tmp_path / "share"
    assert cli(data_root, "push", "demo", str(dest)) == 1
    err = capsys.readouterr().err
    assert "fails verification, not pushed" in err and "documents/part-00001.jsonl.gz" in err
    assert not dest.exists()
    assert pushes(data_root).empty
    assert cli(data_root, "push", "nope", str(dest)) == 2
    assert "no release 'nope'" in capsys.readouterr().err


def test_an_unfinished_copy_is_completed_and_a_foreign_one_refused(data_root, capsys):
    source = data_root / "releases" / "demo" / "v0001"
    dest = f"memory://push-{uuid.uuid4().hex}"
    fs, root = release.location(dest)
    # a push that died after one file: no manifest yet
    fs.pipe(f"{root}/demo/v0001/data/train-00000-of-00002.parquet",
            (source / "data" / "train-00000-of-00002.parquet").read_bytes())
    assert cli(data_root, "push", "demo", dest) == 0
    assert release.verify_release(f"{dest}/demo/v0001") == []
    assert pushes(data_root).copied.tolist() == [True]

    other = f"memory://push-{uuid.uuid4().hex}"
    fs.pipe(f"{release.location(other)[1]}/demo/v0001/data/train-00000-of-00002.parquet", b"someone else's")
    assert cli(data_root, "push", "demo", other) == 2
    assert "which is not this release's" in capsys.readouterr().err
    assert fs.cat_file(f"{release.location(other)[1]}/demo/v0001/data/train-00000-of-00002.parquet") == \
        b"someone else's"  # left as it was
    assert len(pushes(data_root)) == 1
