"""Immutable releases: ``releases/<name>/<version>/`` holding ``data/part-NNNNN.*`` and
``manifest.json`` (sha256 and size of every data file).

A release is written into a temporary sibling folder and renamed into place, so it either
exists complete or not at all; its files are read-only and ``verify_release`` re-checks
them against the manifest.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import secrets
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FORMATS = ("parquet", "jsonl.gz")
MANIFEST = "manifest.json"
_SAFE_PART = re.compile(r"[\w][\w.-]*")  # a name or version: one path component, not hidden


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def next_version(releases_root: Path, name: str) -> str:
    """'v0001' for a new name, else one more than the highest existing version."""
    folder = Path(releases_root) / name
    numbers = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
               if (m := re.fullmatch(r"v(\d+)", p.name))]
    return f"v{max(numbers, default=0) + 1:04d}"


def _write_jsonl_gz(table: pa.Table, path: Path) -> None:
    """Dolma layout: one JSON object a line, id and text first."""
    order = ["id", "text"] + [c for c in table.column_names if c not in ("id", "text")]
    # mtime=0 and no file name in the gzip header: the same documents give the same bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        for batch in table.select(order).to_batches():
            for row in batch.to_pylist():
                out.write((json.dumps(row, ensure_ascii=False, default=str) + "\n").encode())


def write_release(releases_root: Path, name: str, version: str, shard_paths: list[Path],
                  manifest: dict, formats: tuple[str, ...] = FORMATS) -> Path:
    """Write the shards' documents as release ``name``/``version``; returns its folder.

    Raises FileExistsError if that version exists (releases are immutable). On any error
    nothing is left behind."""
    for part in (name, version):
        if not _SAFE_PART.fullmatch(part):
            raise ValueError(f"release name and version must be plain folder names, got {part!r}")
    if not formats or set(formats) - set(FORMATS):
        raise ValueError(f"formats must be some of {FORMATS}, got {formats!r}")
    if not shard_paths:
        raise ValueError("a release needs at least one shard")
    folder = Path(releases_root) / name
    final = folder / version
    if final.exists():
        raise FileExistsError(f"release {name} {version} already exists at {final}: "
                              "releases are immutable, write a new version")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".tmp-{version}-{secrets.token_hex(4)}"
    data = tmp / "data"
    data.mkdir(parents=True)
    try:
        documents = 0
        for i, shard in enumerate(shard_paths):
            table = pq.read_table(shard)
            missing = {"id", "text"} - set(table.column_names)
            if missing:
                raise ValueError(f"shard {shard} lacks column(s) {sorted(missing)}")
            documents += table.num_rows
            if "parquet" in formats:
                pq.write_table(table, data / f"part-{i:05d}.parquet")
            if "jsonl.gz" in formats:
                _write_jsonl_gz(table, data / f"part-{i:05d}.jsonl.gz")
        files = {p.relative_to(tmp).as_posix(): {"sha256": _sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(data.iterdir())}
        full = {**manifest, "name": name, "version": version,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "documents": documents, "files": files}
        # default=str: datetimes (e.g. validated_at in the gate's rows) become ISO text.
        (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str) + "\n")
        for path in [*data.iterdir(), tmp / MANIFEST]:
            path.chmod(0o444)
        if final.exists():  # another writer got there first
            raise FileExistsError(f"release {name} {version} appeared at {final} while writing")
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # read-only files go: the folder is writable
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty, i.e. this failed release was its only content
        raise
    return final


def verify_release(path: Path) -> list[str]:
    """Problems with the release at ``path`` (missing, resized, altered or unlisted files);
    an empty list means every file matches its manifest entry."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return [f"no {MANIFEST} in {path}"]
    try:
        files = json.loads((path / MANIFEST).read_text())["files"]
    except (ValueError, KeyError) as e:
        return [f"{MANIFEST} is unreadable: {e!r}"]
    problems = []
    for rel, expected in sorted(files.items()):
        file = path / rel
        if not file.is_file():
            problems.append(f"missing file {rel}")
            continue
        size = file.stat().st_size
        if size != expected["bytes"]:
            problems.append(f"{rel}: {size} bytes, manifest says {expected['bytes']}")
        if _sha256(file) != expected["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = file.relative_to(path).as_posix()
        if rel != MANIFEST and rel not in files:
            problems.append(f"unlisted file {rel}")
    return problems


def list_releases(releases_root: Path) -> list[dict]:
    """Every release under ``releases_root`` from its manifest, by name and version."""
    releases = []
    for manifest_path in sorted(Path(releases_root).glob(f"*/*/{MANIFEST}")):
        folder = manifest_path.parent
        if folder.name.startswith("."):  # a release being written
            continue
        try:
            manifest = json.loads(manifest_path.read_text())
        except ValueError:
            manifest = {}  # listed anyway; verify_release says what is wrong
        releases.append({"name": folder.parent.name, "version": folder.name, "path": str(folder),
                         "documents": manifest.get("documents"),
                         "created_at": manifest.get("created_at")})
    return releases
