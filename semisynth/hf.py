"""Hugging Face datasets as document sources: a corpus's ``hf:`` origin
(``semisynth.config.HfSource``), read a row at a time as ``documents.Record``s with the
same checks as a document file's rows, so that ingest shards and quarantines them alike.

Where a dataset comes from, decided in this order (README, "Hugging Face datasets"):

- a local folder holding ``state.json`` (beside ``dataset_info.json``): one ``Dataset``
  written by ``save_to_disk``, opened with ``datasets.load_from_disk``;
- a local folder holding ``dataset_dict.json``: a ``DatasetDict`` written by
  ``save_to_disk``, one subfolder per split; the split's subfolder is opened;
- any other local folder: its data files as ``datasets.load_dataset(<folder>)`` reads them
  (Parquet, JSON lines, CSV, ...; configs from a YAML header in its README.md);
- otherwise a dataset on the Hugging Face Hub (``org/name``, or ``hf://datasets/...``).

Only the last one reaches the network. ``load_dataset(..., streaming=True)`` is
``load_dataset_builder`` then ``as_streaming_dataset``; the two calls are made here so that
the builder's splits can be checked first and its hash, which for a Hub dataset is the
commit the requested revision resolved to, recorded. ``datasets`` is imported on first use:
importing it takes about a second, which every command would otherwise pay.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from semisynth.config import HfSource
from semisynth.documents import UNREADABLE, WHOLE_FILE, Record, _record
from semisynth.errors import InputError

SAVED_DATASET = "state.json"  # save_to_disk of one Dataset (with dataset_info.json)
SAVED_DATASET_DICT = "dataset_dict.json"  # save_to_disk of a DatasetDict: {"splits": [...]}
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class OpenedDataset:
    """One split of a dataset, resolved and checked, its rows not read yet."""

    spec: str  # hf:<path>[/<name>]/<split>[@<revision>]: quarantine's file, the shards' source
    # the spec without the revision: default ids are ``<id_name>:<row>``, so that a new commit
    # with the same rows gives the same ids, hence the same (content-keyed) shards
    id_name: str
    columns: dict  # the corpus row's dataset_path, dataset_name, dataset_split, dataset_revision
    rows: Callable[[], Iterable[dict]]  # opens the stream (an IterableDataset) when reading starts


def _spec(hf: HfSource, split: str, revision: str | None = None) -> str:
    name = f"/{hf.name}" if hf.name else ""
    return f"hf:{hf.path}{name}/{split}" + (f"@{revision}" if revision else "")


def locate(hf: HfSource, resolve: Callable[[str], str] = str) -> tuple[str, str]:
    """(kind, where): ("saved", folder), ("dict", folder), ("folder", folder) or ("hub",
    dataset id). ``resolve`` makes a relative path absolute (the config's data root)."""
    if hf.path.startswith("hf://"):
        return "hub", hf.path
    given = os.path.expanduser(hf.path)  # before resolve: "~/x" is not data-root relative
    local = Path(resolve(given))
    if local.is_dir():
        if (local / SAVED_DATASET).is_file():
            return "saved", str(local)
        if (local / SAVED_DATASET_DICT).is_file():
            return "dict", str(local)
        return "folder", str(local)
    if local.exists():
        raise InputError(f"hf dataset {hf.path!r}: {local} is a file, not a dataset folder")
    if os.path.isabs(given) or given.startswith("."):
        raise InputError(f"hf dataset {hf.path!r}: no such folder ({local})")
    return "hub", hf.path


def _refuse(hf: HfSource, kind: str, keys: tuple[str, ...]) -> None:
    """A key that means nothing for this kind of dataset is an error, not ignored: a
    revision nobody checked would be recorded as the data's version."""
    given = [k for k in keys if getattr(hf, k) is not None]
    if given:
        what = {"saved": "a save_to_disk folder", "dict": "a save_to_disk folder",
                "folder": "a local folder"}[kind]
        raise InputError(f"hf dataset {hf.path!r} is {what}: {', '.join(given)} "
                         f"{'applies' if len(given) == 1 else 'apply'} to Hub datasets only")


def _no_split(hf: HfSource, splits: Iterable[str]) -> InputError:
    return InputError(f"hf dataset {hf.path!r}{f' ({hf.name})' if hf.name else ''} has no split "
                      f"{hf.split!r}; its splits: {', '.join(map(str, splits)) or 'none'}")


def open_dataset(hf: HfSource, resolve: Callable[[str], str] = str,
                 cache_dir: str | None = None) -> OpenedDataset:
    """The dataset ``hf`` names, checked (it exists, has the split and the configuration);
    an InputError says what is wrong. ``cache_dir``: where ``streaming: false`` prepares
    the split (default: datasets' own cache)."""
    kind, where = locate(hf, resolve)
    if kind in ("saved", "dict"):
        _refuse(hf, kind, ("name", "revision", "data_files"))
        return _open_saved(hf, kind, Path(where))
    if kind == "folder":
        _refuse(hf, kind, ("revision",))
    return _open_builder(hf, kind, where, cache_dir)


def _open_saved(hf: HfSource, kind: str, folder: Path) -> OpenedDataset:
    # lazy: datasets, huggingface_hub and pandas, loaded only when this runs
    import datasets

    if kind == "dict":
        splits = json.loads((folder / SAVED_DATASET_DICT).read_text()).get("splits", [])
        if hf.split not in splits:
            raise _no_split(hf, splits)
        folder = folder / hf.split
    dataset = datasets.load_from_disk(str(folder))  # memory-mapped: nothing is read yet
    if kind == "saved" and dataset.split is not None and str(dataset.split) != hf.split:
        raise _no_split(hf, [dataset.split])  # a Dataset that knows its split holds only it
    return OpenedDataset(
        _spec(hf, hf.split), _spec(hf, hf.split),
        {"dataset_path": hf.path, "dataset_name": None, "dataset_split": hf.split,
         "dataset_revision": None},
        dataset.to_iterable_dataset)


def _open_builder(hf: HfSource, kind: str, where: str, cache_dir: str | None) -> OpenedDataset:
    # lazy: datasets, huggingface_hub and pandas, loaded only when this runs
    import datasets

    try:
        builder = datasets.load_dataset_builder(where, hf.name, data_files=hf.data_files,
                                                revision=hf.revision, cache_dir=cache_dir)
    except (FileNotFoundError, ValueError, ConnectionError) as exc:
        # not found (locally or on the Hub), no data files, an unknown or missing config
        # name (datasets lists the configs), a revision the Hub does not have
        raise InputError(f"hf dataset {hf.path!r}: {exc}") from exc
    splits = list(builder.config.data_files or builder.info.splits or [])
    if splits and hf.split not in splits:
        raise _no_split(hf, splits)
    revision = hf.revision
    if kind == "hub" and _COMMIT.fullmatch(str(builder.hash or "")):
        revision = builder.hash

    def rows() -> Iterable[dict]:
        if hf.streaming:
            return builder.as_streaming_dataset(split=hf.split)
        builder.download_and_prepare()
        return builder.as_dataset(split=hf.split).to_iterable_dataset()

    return OpenedDataset(
        _spec(hf, hf.split, revision), _spec(hf, hf.split),
        # the configuration read: the one named, or the dataset's only one ("default")
        {"dataset_path": hf.path, "dataset_name": builder.config.name,
         "dataset_split": hf.split, "dataset_revision": revision},
        rows)


def read_dataset(opened: OpenedDataset, text_field: str = "text",
                 id_field: str = "id") -> Iterator[Record]:
    """The dataset's rows as Records, checked as a document file's rows are (``line`` is the
    row number, from 1; a row without an id gets ``<id_name>:<row>``). Where datasets cannot
    read on (a damaged Parquet file, a JSON file that does not parse: datasets cannot skip
    past either), one whole-dataset Record, line 0, ends the rows read before it. A dataset
    whose declared columns lack ``text_field`` is an InputError, not a quarantine row for
    every row."""
    line = 0
    rows: Iterator[dict] | None = None
    while True:
        # only reading is guarded: what the caller raises at the yield stays its own
        try:
            if rows is None:
                stream = opened.rows()
                _check_text_column(opened, stream, text_field)
                rows = iter(stream)
            row = next(rows)
        except StopIteration:
            return
        except _unreadable() as exc:
            where = f" after row {line}" if line else ""
            yield Record(WHOLE_FILE, reason=f"unreadable dataset{where}: {type(exc).__name__}: {exc}")
            return
        line += 1
        yield _record(row, row, line, f"{opened.id_name}:{line}", text_field, id_field)


def _check_text_column(opened: OpenedDataset, stream, text_field: str) -> None:
    # a Parquet folder's columns are known once its stream is open (datasets reads the first
    # file's schema then); JSON lines declare none, and their rows are checked one by one
    features = getattr(stream, "features", None)
    if features is not None and text_field not in features:
        raise InputError(f"{opened.spec} has no column {text_field!r} (its columns: "
                         f"{', '.join(features)}): set text_field")


def _unreadable() -> tuple[type[BaseException], ...]:
    # lazy: datasets, huggingface_hub and pandas, loaded only when this runs
    from datasets.exceptions import DatasetsError

    return (*UNREADABLE, DatasetsError)
