"""Copies of a release where corpora live: ``DEST/<name>/<version>/`` on any fsspec
filesystem (a local folder, ``s3://...``, ``hf://datasets/...``, ``memory://...``).

Only a release that verifies is copied. A local copy is written into a temporary folder
and renamed into place, read-only, as releases are. Object stores have no rename, so a copy
there cannot appear whole at once; instead ``manifest.json`` is written last, and a folder
without it is an unfinished copy: a later push of the same release completes it, keeping the files
that already match. After the copy every file is read back through fsspec and checked
against the manifest; only then is the push done (and recorded by the caller).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

from semisynth.documents import atomic_path
from semisynth.errors import DestinationTaken, VerificationFailed
from semisynth.progress import Progress
from semisynth.tasks.release import (
    MANIFEST,
    READ_CHUNK,
    _fs_sha256,
    location,
    verify_release,
)
from semisynth.warehouse import db


@dataclass
class Pushed:
    name: str
    version: str
    destination: str  # the copy's URL
    files: int  # manifest.json included
    bytes: int
    manifest_sha256: str
    copied: bool  # False: the destination already held this very copy

    def row(self, run_id: str | None = None) -> dict:
        """The ``pushes`` row of this push."""
        return {"name": self.name, "version": self.version, "destination": self.destination,
                "files": self.files, "bytes": self.bytes,
                "manifest_sha256": self.manifest_sha256, "pushed_at": db.now(),
                "copied": self.copied, "run_id": run_id}


def _existing(fs, target: str, files: dict, manifest_raw: bytes) -> bool:
    """Whether ``target`` already holds this very copy (True) or nothing of another one
    (False); raises DestinationTaken when it holds something else."""
    if not fs.exists(target):
        return False
    url = fs.unstrip_protocol(target)
    if fs.isfile(f"{target}/{MANIFEST}"):
        if fs.cat_file(f"{target}/{MANIFEST}") != manifest_raw:
            raise DestinationTaken(f"{url} holds another copy (its {MANIFEST} differs): "
                                   "not overwritten; push to another destination or remove it")
        return True
    for file in fs.find(target):  # an unfinished copy: each file must be one of ours
        rel = file[len(target) + 1:]
        if rel not in files or _fs_sha256(fs, file) != files[rel]["sha256"]:
            raise DestinationTaken(f"{url} holds {rel!r}, which is not this release's: "
                                   "not overwritten; push to another destination or remove it")
    return False


def _copy_file(source: Path, fs, dest: str, progress: Progress) -> None:
    fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
    with open(source, "rb") as src, fs.open(dest, "wb") as out:
        while chunk := src.read(READ_CHUNK):
            out.write(chunk)
            progress.advance(len(chunk))


def _copy_all(path: Path, files: dict, fs, target: str, progress: Progress) -> None:
    for rel in sorted(files):
        dest = f"{target}/{rel}"
        if fs.isfile(dest) and fs.size(dest) == files[rel]["bytes"] and \
                _fs_sha256(fs, dest) == files[rel]["sha256"]:
            progress.advance(files[rel]["bytes"])  # left by an unfinished push of this release
            continue
        _copy_file(path / rel, fs, dest, progress)
    _copy_file(path / MANIFEST, fs, f"{target}/{MANIFEST}", progress)  # last: now whole


class _Silent:
    """A Progress that shows nothing."""

    def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None:
        pass


@dataclass
class PushPlan:
    """A verified release and where its copy goes (``plan_push``); ``run`` pushes it."""

    path: Path
    manifest_raw: bytes
    files: dict
    fs: fsspec.AbstractFileSystem
    target: str
    present: bool  # the destination already holds this very copy

    @property
    def bytes(self) -> int:
        """What the copy holds, manifest included."""
        return sum(f["bytes"] for f in self.files.values()) + len(self.manifest_raw)

    @property
    def url(self) -> str:
        return self.fs.unstrip_protocol(self.target)

    def run(self) -> Pushed:
        """``copy``, then ``check``."""
        self.copy()
        return self.check()

    def copy(self, progress: Progress | None = None) -> None:
        """Write the copy, unless it is there already; ``progress.advance(bytes)`` as it goes."""
        progress = progress or _Silent()
        if self.present:
            progress.advance(self.bytes)
        elif isinstance(self.fs, LocalFileSystem):  # a folder can appear whole: renamed
            with atomic_path(Path(self.target)) as tmp:
                _copy_all(self.path, self.files, self.fs, tmp.as_posix(), progress)
                for file in tmp.rglob("*"):
                    if file.is_file():
                        file.chmod(0o444)  # as immutable as the release
        else:
            _copy_all(self.path, self.files, self.fs, self.target, progress)

    def check(self, progress: Progress | None = None) -> Pushed:
        """Read every file of the copy back and check it against the release's manifest
        (``progress.advance(bytes)`` as it goes): VerificationFailed if it differs; else the
        push."""
        sha = hashlib.sha256(self.manifest_raw).hexdigest()
        problems = verify_release(self.url, manifest_sha256=sha, progress=progress)
        if progress:
            progress.advance(len(self.manifest_raw))
        if problems:
            raise VerificationFailed(f"the copy at {self.url} differs from the release", problems)
        return Pushed(self.path.parent.name, self.path.name, self.url, len(self.files) + 1,
                      self.bytes, sha, copied=not self.present)


def plan_push(path: Path, destination: str, warehouse: Path | None = None) -> PushPlan:
    """The push of the release at ``path`` to ``destination``/<name>/<version>/ (any fsspec
    URL or folder), once the release verifies (with ``warehouse``, its manifest against the
    warehouse's record too): VerificationFailed if it does not. DestinationTaken if the
    destination holds another copy; a copy of this release there is checked by ``run`` and
    left as it is, an unfinished one completed."""
    path = Path(path)
    problems = verify_release(path, warehouse)
    if problems:
        raise VerificationFailed(f"release {path} fails verification, not pushed", problems)
    manifest_raw = (path / MANIFEST).read_bytes()
    files = json.loads(manifest_raw)["files"]
    fs, root = location(destination)
    target = f"{root}/{path.parent.name}/{path.name}"
    return PushPlan(path, manifest_raw, files, fs, target,
                    _existing(fs, target, files, manifest_raw))


def push_release(path: Path, destination: str, warehouse: Path | None = None) -> Pushed:
    """``plan_push`` and its ``run``, without progress."""
    return plan_push(path, destination, warehouse).run()
