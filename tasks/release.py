"""Immutable releases: ``releases/<name>/<version>/`` holding the documents as Parquet
``data/train-NNNNN-of-MMMMM.parquet`` and as Dolma JSON lines ``documents/part-NNNNN.jsonl.gz``, their
attributes ``attributes/semisynth/part-NNNNN.jsonl.gz`` (``tasks.attributes``), a dataset
card ``README.md`` (``tasks.card``) and ``manifest.json`` (sha256 and size of every other
file).

Each format has its folder because each reader globs one: ``datasets.load_dataset("parquet",
data_dir=<release>/data)`` reads every file of ``data/``, and the Dolma mixer finds a
document file's attributes by replacing ``/documents/`` in its path with
``/attributes/<set>/``.

A release is written into a temporary sibling folder and renamed into place, so it either
exists complete or not at all; its files and folders are read-only and ``verify_release``
re-checks them against the manifest, and the manifest against the warehouse's record of it
(its sha256 in ``releases``), so that a file edited together with its manifest entry is
caught.

Two phases: before the rename the warehouse records the intent (``release_intents``: run,
name, version, the manifest's sha256), after it the release (``releases``). A run killed
between the rename and the insert leaves a release without a row: the next run records it
(``restore_rows``) only if its manifest is the one of an intent for that version and its
run ended without recording it. Any other folder without a row (a copy or an edit of a
release, a symbolic link) is reported and left alone, never recorded as released.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import fsspec
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from semisynth.documents import atomic_path, json_line
from semisynth.fields import DocumentLayout
from semisynth.names import check_name
from semisynth.progress import Progress
from semisynth.tasks import card
from semisynth.tasks.attributes import (
    ATTRIBUTE_SET,
    ATTRIBUTES,
    PREFIX,
    AttributeSource,
    attributes_path,
    release_edits,
    write_attributes,
)
from semisynth.warehouse import db, records

log = logging.getLogger(__name__)

FORMATS = ("parquet", "jsonl.gz")
PART_FOLDERS = {"parquet": "data", "jsonl.gz": "documents"}  # the folder of each format
MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def link_under(releases_root: Path, folder: Path | str) -> Path | None:
    """The first symbolic link on the way from ``releases_root`` down to ``folder`` (its name
    folder, its version folder), or None; None too for a folder outside ``releases_root``.
    A release under the root is a folder there: a link could make a folder anywhere pass
    for one of its versions."""
    folder = Path(os.path.abspath(folder))
    for base in (Path(os.path.abspath(releases_root)), Path(releases_root).resolve()):
        if folder.is_relative_to(base):
            step = base
            for part in folder.relative_to(base).parts:
                step = step / part
                if step.is_symlink():
                    return step
    return None


def link_message(link: Path) -> str:
    return f"{link} is a symbolic link (to {os.readlink(link)}), not a release folder"


def next_version(releases_root: Path, name: str) -> str:
    """'v0001' for a new name, else one more than the highest existing version."""
    folder = Path(releases_root) / name
    numbers = [int(m.group(1)) for p in (folder.iterdir() if folder.is_dir() else [])
               if (m := re.fullmatch(r"v(\d+)", p.name))]
    return f"v{max(numbers, default=0) + 1:04d}"


RELEASE_BATCH_ROWS = 1000  # rows read from a shard and written at a time


def parquet_part_name(part: int, parts: int) -> str:
    """The Hugging Face Hub's shard naming: ``load_dataset("parquet", data_dir=<release>)``
    takes these files as the train split and leaves the release's other files alone."""
    return f"train-{part:05d}-of-{parts:05d}.parquet"


def _write_part(shard: Path, release: Path, part: int, formats: tuple[str, ...],
                layout: DocumentLayout, parts: int = 1) -> int:
    """One shard as the release's part ``part`` in each format's folder (``PART_FOLDERS``
    under ``release``), in one read of the shard, a batch of rows at a time, its documents
    laid out as ``layout`` (the release's one schema); returns its documents."""
    source = pq.ParquetFile(shard)
    missing = {"id", "text"} - set(source.schema_arrow.names)
    if missing:
        raise ValueError(f"shard {shard} lacks column(s) {sorted(missing)}")
    documents = 0
    with contextlib.ExitStack() as stack:
        parquet = (stack.enter_context(pq.ParquetWriter(
                       release / PART_FOLDERS["parquet"] / parquet_part_name(part, parts),
                       layout.schema))
                   if "parquet" in formats else None)
        jsonl = None
        if "jsonl.gz" in formats:
            raw = stack.enter_context(
                open(release / PART_FOLDERS["jsonl.gz"] / f"part-{part:05d}.jsonl.gz", "wb"))
            # mtime=0 and no file name in the gzip header: the same documents, the same bytes
            jsonl = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", mtime=0))
        for batch in source.iter_batches(batch_size=RELEASE_BATCH_ROWS):
            documents += batch.num_rows
            table = layout.table(batch)
            if parquet is not None:
                parquet.write_table(table)
            if jsonl is not None:
                # Dolma layout: one JSON object a line, id and text first (as
                # ``DocumentLayout`` orders the columns); a field's NaN or infinite float
                # is written null, as edit writes it: JSON has no such number
                jsonl.writelines(json_line(row) for row in layout.rows(table))
    return documents


def write_release(releases_root: Path, name: str, version: str, shard_paths: list[Path],
                  manifest: dict, formats: tuple[str, ...] = FORMATS,
                  attributes: AttributeSource | None = None,
                  warehouse: Path | None = None) -> Path:
    """Write the shards' documents as release ``name``/``version``, with their attribute
    files when ``attributes`` says where they come from (one score file per shard), and the
    dataset card; returns its folder, read-only. With ``warehouse``, the intent to release
    it (``manifest``'s run_id and corpus, the version, the sha256 of the manifest written)
    is recorded there before the folder is renamed into place: without that record a run
    killed after the rename could not have its release told from a forged one.

    Raises FileExistsError if that version exists (releases are immutable), ValueError if
    the name's folder is a symbolic link. On any error nothing is left behind."""
    check_name(name, "release name")
    check_name(version, "release version")
    if not formats or set(formats) - set(FORMATS):
        raise ValueError(f"formats must be some of {FORMATS}, got {formats!r}")
    if not shard_paths:
        raise ValueError("a release needs at least one shard")
    if attributes is not None and len(attributes.scores) != len(shard_paths):
        raise ValueError(f"{len(shard_paths)} shards but {len(attributes.scores)} score files: "
                         "attributes need the score file of every released shard")
    folder = Path(releases_root) / name
    final = folder / version
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"release {name} {version} already exists at {final}: "
                              "releases are immutable, write a new version")
    if folder.is_symlink():  # mkdir below would follow it, and the release land elsewhere
        raise ValueError(f"{link_message(folder)}: no release is written through it")
    folder.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        with atomic_path(final) as tmp:
            _write_release_folder(tmp, name, version, shard_paths, manifest, formats,
                                  attributes)
            if warehouse is not None:
                records.record_release_intent(warehouse, {
                    "name": name, "version": version, "run_id": manifest.get("run_id"),
                    "corpus": manifest.get("corpus"), "path": str(final),
                    "manifest_sha256": _sha256(tmp / MANIFEST)})
            _set_folders_mode(tmp, 0o555)
    except BaseException:
        if tmp is not None and tmp.is_dir():  # sealed, then the rename failed: atomic_path
            _set_folders_mode(tmp, 0o755)     # cannot empty a read-only folder
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only if empty, i.e. this failed release was its only content
        raise
    return final


def _set_folders_mode(folder: Path, mode: int) -> None:
    """``folder`` and every folder in it to ``mode``: 0o555 makes a release's file list as
    fixed as its files (no file added, removed or renamed)."""
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink())]:
        path.chmod(mode)


def _write_attribute_files(tmp: Path, shard_paths: list[Path], documents: list[int],
                           source: AttributeSource) -> int:
    """Each part's attribute file, part by part; returns the scored tokens of the release."""
    tokens = 0
    for i, (shard, score_file) in enumerate(zip(shard_paths, source.scores, strict=True)):
        rows, part_tokens = write_attributes(Path(shard), Path(score_file), source.edits,
                                             tmp / attributes_path(i))
        if rows != documents[i]:  # write_attributes reads the shard itself: a changed shard
            raise ValueError(f"{shard}: {documents[i]} documents released, {rows} attribute rows")
        tokens += part_tokens
    extra = next(source.edits, None)
    if extra is not None:
        raise ValueError(f"edit counts left over after the last released document (next: "
                         f"{extra.id!r}): they are not the edits of these documents")
    return tokens


def _write_parts(tmp: Path, shard_paths: list[Path], formats: tuple[str, ...],
                 layout: DocumentLayout) -> list[int]:
    """Every shard as a part in each format's folder; returns the documents of each part."""
    for fmt in formats:
        (tmp / PART_FOLDERS[fmt]).mkdir(parents=True)
    return [_write_part(Path(shard), tmp, i, formats, layout, len(shard_paths))
            for i, shard in enumerate(shard_paths)]


def _write_release_folder(tmp: Path, name: str, version: str, shard_paths: list[Path],
                          manifest: dict, formats: tuple[str, ...],
                          attributes: AttributeSource | None = None) -> None:
    layout = DocumentLayout.of([Path(s) for s in shard_paths], f"release {name} {version}")
    documents = _write_parts(tmp, shard_paths, formats, layout)
    full = {**manifest, "name": name, "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "documents": sum(documents), "parts": len(documents), "formats": list(formats),
            "tokens": None}
    if attributes is not None:
        full["tokens"] = _write_attribute_files(tmp, shard_paths, documents, attributes)
        full["attributes"] = {"set": ATTRIBUTE_SET,
                              "files": f"attributes/{ATTRIBUTE_SET}/part-NNNNN.jsonl.gz",
                              "keys": [PREFIX + k for k in ATTRIBUTES],
                              "meaning": attributes.meaning}
    (tmp / card.CARD).write_text(card.render(full))
    written = sorted(p for p in tmp.rglob("*") if p.is_file())
    full["files"] = {p.relative_to(tmp).as_posix(): {"sha256": _sha256(p),
                                                     "bytes": p.stat().st_size}
                     for p in written}
    # default=str: datetimes (e.g. validated_at in the gate's rows) become ISO text.
    (tmp / MANIFEST).write_text(json.dumps(full, indent=2, default=str) + "\n")
    for path in [*written, tmp / MANIFEST]:
        path.chmod(0o444)


def _relative(rel: str) -> bool:
    """Whether manifest entry ``rel`` is a relative path without '..'."""
    pure = PurePosixPath(rel)
    return not (pure.is_absolute() or ".." in pure.parts or "\\" in rel or not pure.parts)


def _inside(folder: Path, rel: str) -> bool:
    """Whether manifest entry ``rel`` names a file inside ``folder``: a relative path
    without '..', that no symbolic link leads out of."""
    return _relative(rel) and (folder / rel).resolve().is_relative_to(folder.resolve())


def _read_manifest(path: Path) -> tuple[dict | None, list[str]]:
    """The release's manifest, or None and why it cannot be used."""
    if not (path / MANIFEST).is_file():
        return None, [f"no {MANIFEST} in {path}"]
    return _parse_manifest((path / MANIFEST).read_bytes())


def _parse_manifest(raw: bytes) -> tuple[dict | None, list[str]]:
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as e:
        return None, [f"{MANIFEST} is unreadable: {e!r}"]
    if not isinstance(files, dict) or not all(
            isinstance(v, dict) and {"sha256", "bytes"} <= set(v) for v in files.values()):
        return None, [f"{MANIFEST} is unreadable: 'files' is not a map of sha256 and bytes"]
    return manifest, []


def _check_files(path: Path, files: dict, progress: Progress | None = None) -> list[str]:
    problems = []
    for rel, expected in sorted(files.items()):
        if progress:
            progress.advance(expected["bytes"])
        if not _inside(path, rel):
            problems.append(f"{MANIFEST} lists {rel!r}, outside the release folder: not read")
            continue
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


def _check_record(path: Path, warehouse: Path) -> list[str]:
    """The manifest against the warehouse's row of this release (by folder name/version)."""
    name, version = path.parent.name, path.name
    try:
        row = records.recorded_release(warehouse, name, version)
    except FileNotFoundError as e:
        return [str(e)]
    if row is None:
        return [f"no record of release {name} {version} in the warehouse {warehouse}"]
    actual = _sha256(path / MANIFEST)
    if actual != row["manifest_sha256"]:
        return [f"{MANIFEST} differs from the one recorded in the warehouse (sha256 "
                f"{actual[:16]}..., recorded {str(row['manifest_sha256'])[:16]}...)"]
    return []


def location(path: Path | str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a release folder or of a copy, and its path there: a local folder
    or any fsspec URL (``s3://...``, ``hf://datasets/...``, ``memory://...``)."""
    fs, root = fsspec.core.url_to_fs(str(path))
    return fs, root.rstrip("/")


def location_url(path: Path | str) -> str:
    """The URL that names a release folder or copy, the same however it was written
    (``file:///abs/path`` for a local folder): the ``pushes`` table's destination."""
    fs, root = location(path)
    return fs.unstrip_protocol(root)


def _fs_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


READ_CHUNK = 8 << 20  # bytes read at a time from a copy


def _check_copy(fs: fsspec.AbstractFileSystem, root: str, files: dict,
                progress: Progress | None = None) -> list[str]:
    """``_check_files`` for a copy on any fsspec filesystem, every file read back through it."""
    problems = []
    for rel, expected in sorted(files.items()):
        if progress:
            progress.advance(expected["bytes"])
        if not _relative(rel):
            problems.append(f"{MANIFEST} lists {rel!r}, outside the release folder: not read")
            continue
        file = f"{root}/{rel}"
        if not fs.isfile(file):
            problems.append(f"missing file {rel}")
            continue
        size = fs.size(file)
        if size != expected["bytes"]:
            problems.append(f"{rel}: {size} bytes, manifest says {expected['bytes']}")
        if _fs_sha256(fs, file) != expected["sha256"]:
            problems.append(f"{rel}: sha256 differs from the manifest")
    for file in sorted(fs.find(root)):
        rel = file[len(root) + 1:]
        if rel != MANIFEST and rel not in files:
            problems.append(f"unlisted file {rel}")
    return problems


def verify_release(path: Path | str, warehouse: Path | None = None,
                   manifest_sha256: str | None = None,
                   progress: Progress | None = None) -> list[str]:
    """Problems with the release at ``path`` (a folder, or a copy at any fsspec URL, read
    back through fsspec): missing, resized, altered or unlisted files, manifest entries
    outside the folder (refused, never read), with ``warehouse`` a manifest other than the
    one recorded there for its name and version, and with ``manifest_sha256`` a manifest
    other than that one (a copy's push record). An empty list means every file matches its
    manifest entry (and the manifest its record). ``progress.advance(bytes)`` as each file
    is read."""
    fs, root = location(path)
    local = isinstance(fs, LocalFileSystem)
    if local:
        manifest, problems = _read_manifest(Path(root))
    elif not fs.isfile(f"{root}/{MANIFEST}"):
        return [f"no {MANIFEST} in {fs.unstrip_protocol(root)}"]
    else:
        manifest, problems = _parse_manifest(fs.cat_file(f"{root}/{MANIFEST}"))
    if manifest is None:
        return problems
    problems = (_check_files(Path(root), manifest["files"], progress) if local
                else _check_copy(fs, root, manifest["files"], progress))
    if warehouse is not None:
        problems += _check_record(Path(root), Path(warehouse))
    if manifest_sha256 is not None:
        actual = hashlib.sha256(fs.cat_file(f"{root}/{MANIFEST}")).hexdigest()
        if actual != manifest_sha256:
            problems.append(f"{MANIFEST} differs from the one recorded for it (sha256 "
                            f"{actual[:16]}..., recorded {manifest_sha256[:16]}...)")
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


# What a release folder holds besides its documents. 2: attribute files and a dataset card;
# a release of layout 1 (documents only) is not reused for the same content.
RELEASE_LAYOUT = 2


def content_key(shards: list[Path], model_id: str, parameters: dict) -> str:
    """What a release is made of: the same shards made with the same prior and parameters
    (into the same layout) are the same release, so a nightly run over unchanged inputs
    must not pile up identical versions."""
    return hashlib.sha256(json.dumps([[Path(s).stem for s in shards], model_id, parameters,
                                      RELEASE_LAYOUT], sort_keys=True).encode()).hexdigest()


def latest_with_key(releases_root: Path, name: str, key: str,
                    warehouse: Path | None = None) -> Path | None:
    """The latest version of ``name`` if its manifest has ``key``, else None. With
    ``warehouse``, the latest version recorded there, if its manifest is still the one
    recorded: a folder the warehouse has no row of (a copy or an edit of a release, a link)
    is never taken for the release."""
    existing = [r for r in list_releases(releases_root) if r["name"] == name]
    if warehouse is not None:
        recorded = records.recorded_manifests(warehouse, name)
        existing = [r for r in existing if r["version"] in recorded]
    if not existing:
        return None
    latest = Path(existing[-1]["path"])
    if warehouse is not None and (link_under(releases_root, latest) is not None or
                                  _sha256(latest / MANIFEST) != recorded[latest.name]):
        return None
    try:
        manifest = json.loads((latest / MANIFEST).read_text())
    except ValueError:
        return None
    return latest if manifest.get("content_key") == key else None


@dataclass
class Released:
    path: Path
    new: bool  # False: the content was unchanged and the latest version is reused
    row: dict | None = None  # the ``releases`` row of a new version


def release(releases_root: Path, name: str, shards: list[Path], model_id: str,
            parameters: dict, manifest: dict, attributes: AttributeSource | None = None,
            warehouse: Path | None = None) -> Released:
    """Release ``shards`` as the next version of ``name`` (manifest: ``manifest`` plus the
    content key, the files and their checksums; attribute files from ``attributes``),
    verified after writing; or reuse the latest version when its content key is the same
    (with ``warehouse``: the latest version recorded there, see ``latest_with_key``). With
    ``warehouse`` the intent is recorded there before the rename (``write_release``); the
    caller records the returned row."""
    key = content_key(shards, model_id, parameters)
    unchanged = latest_with_key(releases_root, name, key, warehouse)
    if unchanged is not None:
        return Released(unchanged, new=False)
    version = next_version(releases_root, name)
    path = write_release(releases_root, name, version, [Path(s) for s in shards],
                         {"content_key": key, **manifest, "model": model_id,
                          "parameters": parameters}, attributes=attributes,
                         warehouse=warehouse)
    problems = verify_release(path)
    if problems:
        raise RuntimeError(f"release {path} failed verification: {problems}")
    return Released(path, new=True, row=release_row(path))


def release_row(path: Path) -> dict:
    """The ``releases`` row of the release at ``path``, from its manifest."""
    path = Path(path)
    manifest = json.loads((path / MANIFEST).read_text())
    return {"name": path.parent.name, "version": path.name, "corpus": manifest.get("corpus"),
            "run_id": manifest.get("run_id"), "path": str(path),
            "manifest_sha256": _sha256(path / MANIFEST), "documents": manifest.get("documents"),
            "tokens": manifest.get("tokens")}


# A run in these states has recorded every release it renamed into place, or is still at it.
_RECORDS_ITS_OWN = ("RUNNING", "COMPLETED", "FAILED")


def _adoptable(folder: Path, warehouse: Path) -> str | None:
    """None if ``folder`` (a version folder without a ``releases`` row) is the release of a
    run killed after its rename; else why it is not."""
    name, version = folder.parent.name, folder.name
    manifest, problems = _read_manifest(folder)
    if manifest is None:
        return problems[0]
    sha = _sha256(folder / MANIFEST)
    intent = records.release_intent(warehouse, name, version, sha)
    if intent is None:
        return (f"no run recorded the intent to release {name} {version} with this "
                f"{MANIFEST} (sha256 {sha[:16]}...)")
    if intent["run_status"] in _RECORDS_ITS_OWN:
        return (f"its run {intent['run_id']} is {intent['run_status']}: such a run records "
                "its releases itself")
    problems = verify_release(folder)
    if problems:
        return "it fails verification: " + "; ".join(problems[:3])
    return None


def restore_rows(releases_root: Path, warehouse: Path,
                 warn: Callable[[str], None] | None = None) -> list[dict]:
    """Record the releases under ``releases_root`` that have no row in ``warehouse`` and
    whose run was killed between their rename and their insert: a version folder whose
    manifest is the one of an intent recorded for that name and version
    (``write_release``), whose run is CRASHED or has no ``runs`` row, and whose files match
    the manifest. Every other folder without a row, and every symbolic link, is left alone
    and named to ``warn`` (default: this module's logger) with the reason. Returns the rows
    added."""
    warn = warn or log.warning
    root = Path(releases_root)
    recorded = records.recorded_releases(warehouse)
    rows = []
    for name_folder in sorted(root.iterdir()) if root.is_dir() else []:
        if name_folder.is_symlink():
            warn(f"{link_message(name_folder)}: not recorded as a release, left as it is")
            continue
        if not name_folder.is_dir():
            continue
        for folder in sorted(name_folder.iterdir()):
            if folder.name.startswith(".") or (name_folder.name, folder.name) in recorded:
                continue  # a release being written (or left half-written by a kill)
            if folder.is_symlink():
                warn(f"{link_message(folder)}: not recorded as a release, left as it is")
                continue
            if not folder.is_dir():
                continue
            why = _adoptable(folder, warehouse)
            if why is not None:
                warn(f"{folder} has no warehouse row and is not recorded as a release: {why}; "
                     "left as it is")
                continue
            rows.append(release_row(folder))
            records.record_release(warehouse, rows[-1])
    return rows


_EDIT_MEANING = {
    "edited": ("The released texts are ToEdit's output: revised, edited and dropped tokens "
               "are those of the edit that made each text, from its source `{source}`'s "
               "scores (the warehouse's `edits` rows of `{corpus}`); perplexity, scored tokens "
               "and truncated are the edited text's own, scored again (its `doc_scores` rows)."),
    "mix": ("A mixture's documents are its components' documents, unchanged by the mixing: "
            "each carries the values it has in its component (edit counts of an edited "
            "component's documents are those of its edit, 0 for documents read from files); "
            "perplexity and scored tokens are the mixture's `doc_scores` rows."),
    "files": ("These documents were not edited: revised, edited and dropped tokens are 0; "
              "perplexity and scored tokens are the corpus's `doc_scores` rows."),
}


def lineage(cfg, corpus: str) -> dict[str, dict]:
    """How ``corpus`` of ``cfg`` is made, down to the corpora read from files or datasets:
    corpus -> its paths, its dataset, its edited source or its mixture shares (and its
    license, if named)."""
    made: dict[str, dict] = {}

    def visit(name: str) -> None:
        if name in made:
            return
        c = cfg.corpora[name]
        made[name] = ({"edited_from": c.edited_from} if c.edited_from else
                      {"mix": dict(c.mix)} if c.mix else
                      {"hf": c.hf.model_dump(exclude_none=True)} if c.hf else
                      {"paths": list(c.paths)})
        if c.license:
            made[name]["license"] = c.license
        for source in [c.edited_from] if c.edited_from else list(c.mix or {}):
            visit(source)

    visit(corpus)
    return made


def release_license(cfg, corpus: str) -> str | None:
    """The corpus's license: its own, else its source's, else the one license every
    component of a mixture has; None when unknown."""
    c = cfg.corpora[corpus]
    if c.license or not (c.edited_from or c.mix):
        return c.license
    if c.edited_from:
        return release_license(cfg, c.edited_from)
    licenses = {release_license(cfg, m) for m, share in c.mix.items() if share > 0}
    return licenses.pop() if len(licenses) == 1 else None


def release_corpus(cfg, run_id: str, corpus: str, shards: list[Path], model_id: str,
                   metric_values: dict, validation: dict,
                   scores: dict[str, list[Path]]) -> Released:
    """The release stage for a corpus of ``cfg`` (a ``semisynth.config.Config``) that passed
    the gate: ``releases/<config name>-<corpus>/vNNNN/`` with its sources, prior, parameters,
    metric snapshot and validation result in the manifest, the dataset card, and the
    attributes of its documents from the run's score files (``scores``: corpus -> score
    files, one per shard, as the flow made them)."""
    c = cfg.corpora[corpus]
    parameters = {"prior": cfg.prior.model_dump(), "edit": cfg.edit.model_dump(),
                  "beta": cfg.edit.effective_beta, "seed": cfg.seed}
    manifest = {
        "run_id": run_id, "corpus": corpus, "config": cfg.name,
        "license": release_license(cfg, corpus),
        "sources": {"shards": [{"shard_hash": Path(s).stem, "path": str(s)} for s in shards],
                    "reference": c.reference, "edited_from": c.edited_from, "mix": c.mix,
                    # the Hugging Face datasets its documents come from, as this run read them
                    "datasets": records.recorded_datasets(db.warehouse_path(cfg.root), run_id,
                                                          list(lineage(cfg, corpus)))},
        "lineage": lineage(cfg, corpus),
        "metrics": metric_values,
        "validation": {"suite": cfg.gate.suite, "success": validation["success"],
                       "expectations": validation["rows"]},
    }
    kind = "edited" if c.edited_from else "mix" if c.mix else "files"
    attributes = AttributeSource(
        scores[corpus], release_edits(cfg, corpus, scores),
        _EDIT_MEANING[kind].format(source=c.edited_from, corpus=corpus))
    return release(cfg.root / "releases", cfg.release_name(corpus), shards, model_id, parameters,
                   manifest, attributes, warehouse=db.warehouse_path(cfg.root))
