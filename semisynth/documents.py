"""Document files: jsonl, jsonl.gz (Dolma layout: one JSON object a line) and Parquet
(Cosmopedia layout), local or any fsspec URL; the format is named by the extension.

Reading streams and never raises on bad data: each row comes back as a `Record`, good
(`reason is None`) or bad (`reason` says why, `excerpt` shows the raw row), so the caller
can quarantine it; a file that breaks off (truncated or corrupt gzip, a damaged Parquet row
group, not gzip or Parquet at all, a jsonl file that turns out to be UTF-16 or UTF-32) ends
with one whole-file Record (line 0) after the rows read before the damage. A JSON line is
parsed within bounds (MAX_LINE_BYTES, MAX_DEPTH, MAX_INT_DIGITS; finite numbers, strings
UTF-8 can hold): a row beyond them is a bad Record, never an exception. A row without an id
gets `<name>:<line>`, where the name is the file's path relative to the folder its patterns
share (`source_names`), so files of the same name in different folders never share ids.
Only regular files are read: a FIFO or a device is refused before it is opened. Writing
streams too and is atomic (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import posixpath
import re
import shutil
import stat
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractBufferedFile

from semisynth import fields
from semisynth.errors import InputError, WrongEncoding

FORMATS = (".jsonl.gz", ".jsonl", ".parquet")  # longest first: ".jsonl.gz" ends in neither other
EXCERPT_CHARS = 200
PARQUET_BATCH_ROWS = 1024
GLOB_CHARS = "*?["
WHOLE_FILE = 0  # the line of a Record that stands for the rest of an unreadable file
# The bounds of one JSON line. A longer line is skipped unread (its memory stays bounded,
# even for a file without newlines); 32 MiB holds the longest documents the prior is given
# (prior.max_doc_tokens cuts them, a 10 MB one included) with room for their fields.
MAX_LINE_BYTES = 32 * 2**20
# Near 1,000 levels Python's JSON parser crashes (how near depends on the caller's stack);
# from 50 on, a shard can be written that no Parquet reader opens again (they refuse a
# schema deeper than 100, and a list takes two of its levels). 32 leaves room for the
# columns around a row's fields, and is far deeper than any real layout (Dolma's: 3).
MAX_DEPTH = 32
# Beyond 64 bits an integer is kept as JSON text, but Python refuses to turn one of more
# than 4,300 digits into text at all: 1,000 digits is far past any numeric type.
MAX_INT_DIGITS = 1000


class _Refused(ValueError):
    """A value the JSON parser met that a row may not hold (``_parse_row``)."""


# What a damaged file raises while it is read: gzip (BadGzipFile is an OSError; a truncated
# stream raises EOFError, a corrupt deflate block zlib.error), Arrow (corrupt pages raise
# OSError, a bad footer ArrowInvalid) and a jsonl file in another encoding.
UNREADABLE = (OSError, EOFError, zlib.error, pa.ArrowException, WrongEncoding)


@dataclass(slots=True)
class Record:
    """One row of a document file: a document when `reason` is None, else a bad row."""

    line: int  # 1-based line (jsonl) or row (parquet) number
    id: str = ""
    text: str = ""
    meta: dict = field(default_factory=dict)
    reason: str | None = None
    excerpt: str = ""


def file_format(path: str) -> str:
    for ext in FORMATS:
        if str(path).endswith(ext):
            return ext
    raise ValueError(f"{path}: unknown document format, expected one of {', '.join(FORMATS)}")


def temporary_name(name: str) -> str:
    """A hidden name beside ``name`` to write to and then rename into place; unique across
    the processes and machines that share a data root."""
    return f".{name}.{uuid.uuid4().hex}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """Write-then-rename, the one way semisynth publishes a file or folder: yields a hidden
    temporary path beside ``path`` (nothing is created there); when the block ends without
    error it is renamed onto ``path``, so readers see the old content or the whole new one.
    On error, or when ``keep_existing`` and ``path`` appeared meanwhile (a content-keyed
    file another writer finished first), the temporary one is removed instead.
    A folder is never renamed over an existing one: that raises FileExistsError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        yield tmp
        if keep_existing and path.exists():
            return
        if tmp.is_dir():
            if path.exists():
                raise FileExistsError(f"{path} appeared while it was being written")
            os.rename(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)  # read-only files go: the folder is writable
        else:
            tmp.unlink(missing_ok=True)


def excerpt_of(raw: bytes | str | dict) -> str:
    if isinstance(raw, dict):
        raw = json.dumps(raw, ensure_ascii=False, default=str)
    elif isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw.rstrip("\r\n")[:EXCERPT_CHARS]


def _record(row: dict, raw, line: int, default_id: str, text_field: str, id_field: str) -> Record:
    """Check one parsed row; `raw` (the row as read) only becomes an excerpt if it is bad."""
    text = row.get(text_field)
    if text_field not in row:
        reason = f"missing text field {text_field!r}"
    elif text is None:
        reason = f"text field {text_field!r} is null"
    elif not isinstance(text, str):
        reason = f"text field {text_field!r} is not a string ({type(text).__name__})"
    elif not text:
        reason = "empty text"
    elif not text.strip():
        reason = "empty text (whitespace only)"
    else:
        reason = None
    raw_id = row.get(id_field)
    doc_id = default_id if raw_id is None or raw_id == "" else str(raw_id)
    if reason is None:
        # JSON "\ud800" escapes parse fine but cannot be encoded, and would crash hashing
        # and Parquet writing downstream.
        try:
            text.encode("utf-8")
            doc_id.encode("utf-8")
        except UnicodeEncodeError as e:
            reason = f"invalid utf-8: {e}"
    if reason is not None:
        return Record(line, reason=reason, excerpt=excerpt_of(raw))
    meta = {k: v for k, v in row.items() if k not in (text_field, id_field)}
    return Record(line, id=doc_id, text=text, meta=meta)


_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 LE, BE (UTF-32 LE too), UTF-32 BE


def _wide_encoding(raw: bytes) -> bool:
    """Whether a line that holds NUL bytes or starts with a byte order mark is UTF-16 or
    UTF-32 text rather than a UTF-8 row with a stray NUL: those encodings put NULs beside
    every ASCII character, so beside (nearly) every quote of a JSON line."""
    if raw.startswith(_WIDE_BOMS):
        return True
    quotes = raw.count(b'"')
    return quotes >= 2 and 2 * (raw.count(b'"\x00') + raw.count(b'\x00"')) >= quotes


def _lines(f) -> Iterator[tuple[bytes, int]]:
    """(line, its length in bytes without the newline) for each line of ``f``; a line
    longer than MAX_LINE_BYTES comes back as its first bytes only, the rest read past in
    pieces, so that no line costs more memory than the bound."""
    while raw := f.readline(MAX_LINE_BYTES + 1):
        if raw.endswith(b"\n") or len(raw) <= MAX_LINE_BYTES:
            yield raw, len(raw) - raw.endswith(b"\n")
            continue
        size = len(raw)
        while rest := f.readline(2**20):
            size += len(rest)
            if rest.endswith(b"\n"):
                size -= 1
                break
        yield raw[: EXCERPT_CHARS * 4], size  # enough bytes for the excerpt's characters


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_A_BRACKET = bytes(sorted(set(range(256)) - set(b"[]{}")))
# A \u escape of a UTF-16 surrogate: only such an escape can put a lone surrogate (which
# no UTF-8 text holds) into a parsed string
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _depth(raw: bytes) -> int:
    """How deep the arrays and objects of a JSON line nest (brackets inside strings left
    out), or 0 for a line with too few brackets to nest past MAX_DEPTH; counted without
    parsing, which is what a too deep row would crash."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return 0  # cannot be deeper than the bound: not worth counting
    brackets = np.frombuffer(_JSON_STRING.sub(b"", raw).translate(None, _NOT_A_BRACKET), np.uint8)
    # "[" and "{" end in 0xB, "]" and "}" in 0xD
    return int(np.cumsum(np.where(brackets & 0x0F == 0x0B, 1, -1)).max(initial=0))


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise _Refused(f"an integer of {len(digits.lstrip('-')):,} digits (at most "
                       f"{MAX_INT_DIGITS:,})")
    return int(digits)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # JSON has no infinity to write it back as
        raise _Refused(f"a number beyond a float's range ({text[:40]})")
    return value


def _no_constant(name: str):
    raise _Refused(f"invalid json: {name} is not a JSON value")


def _parse_row(raw: bytes, s: str) -> tuple[object, str | None]:
    """A JSON line parsed within the bounds: (the value, None), or (None, why not)."""
    if (depth := _depth(raw)) > MAX_DEPTH:
        return None, f"nested {depth:,} levels deep (at most {MAX_DEPTH})"
    try:
        row = json.loads(s, parse_int=_bounded_int, parse_float=_finite_float,
                         parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        return None, f"invalid json: {e}"
    except _Refused as e:
        return None, str(e)
    except RecursionError:  # only if _depth misjudged a line that is not JSON
        return None, f"nested more than {MAX_DEPTH} levels deep"
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            return None, (f"invalid utf-8: a lone surrogate {e.object[e.start]!r} (an unpaired "
                          "\\u escape), which UTF-8 cannot hold")
    return row, None


def _read_jsonl(f, name: str, text_field: str, id_field: str) -> Iterator[Record]:
    # AbstractBufferedFile (s3://, hf://) reads a line whole, whatever its length: a
    # buffered reader bounds it
    f = io.BufferedReader(f) if isinstance(f, AbstractBufferedFile) else f
    for line, (raw, size) in enumerate(_lines(f), start=1):
        if size > MAX_LINE_BYTES:
            yield Record(line, reason=f"line of {size:,} bytes (at most {MAX_LINE_BYTES:,})",
                         excerpt=excerpt_of(raw))
            continue
        # decided line by line: a stray NUL costs its row, UTF-16 or UTF-32 text the rest
        # of the file (from a byte order mark on, or from line 1: the whole file)
        if b"\x00" in raw or raw.startswith(_WIDE_BOMS):
            if _wide_encoding(raw):
                raise WrongEncoding(f"not UTF-8 from line {line} on: a byte order mark or NUL "
                                    "bytes beside its quotes (UTF-16 or UTF-32 text?)")
            yield Record(line, reason="invalid json: a NUL byte, which JSON text never holds",
                         excerpt=excerpt_of(raw.replace(b"\x00", b"\\x00")))
            continue
        if not raw.strip():
            continue  # blank lines are layout, not rows
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Record(line, reason=f"invalid utf-8: {e}", excerpt=excerpt_of(raw))
            continue
        if line == 1:
            s = s.removeprefix("\ufeff")  # a BOM some editors write
        row, reason = _parse_row(raw, s)
        if reason is not None:
            yield Record(line, reason=reason, excerpt=excerpt_of(s))
            continue
        if not isinstance(row, dict):
            yield Record(
                line, reason=f"not a JSON object ({type(row).__name__})", excerpt=excerpt_of(s)
            )
            continue
        yield _record(row, s, line, f"{name}:{line}", text_field, id_field)


def _batch_rows(batch: pa.RecordBatch) -> list[dict | UnicodeDecodeError]:
    """The batch's rows as dicts; a row whose strings are not valid UTF-8 (Arrow trusts what
    other writers stored) as the error decoding it, so that only that row is lost."""
    try:
        return batch.to_pylist()
    except UnicodeDecodeError:
        rows: list[dict | UnicodeDecodeError] = []
        for i in range(batch.num_rows):
            try:
                rows.append(batch.slice(i, 1).to_pylist()[0])
            except UnicodeDecodeError as e:
                rows.append(e)
        return rows


def _raw_row(batch: pa.RecordBatch, i: int) -> dict:
    """Row i with its strings as the bytes stored, for the excerpt of a row that does not
    decode."""
    row = batch.slice(i, 1)
    raw = {}
    for name, column in zip(row.schema.names, row.columns, strict=True):
        if pa.types.is_string(column.type):
            raw[name] = column.view(pa.binary())[0].as_py().decode("utf-8", errors="replace")
        else:
            raw[name] = column[0].as_py()
    return raw


def _read_parquet(f, name: str, text_field: str, id_field: str) -> Iterator[Record]:
    parquet = pq.ParquetFile(f)
    line = 0
    # one row group at a time: a damaged group then costs only its own rows, not also
    # those of the group before it that a batch spanning both would take with it
    for group in range(parquet.num_row_groups):
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]):
            for i, row in enumerate(_batch_rows(batch)):
                line += 1
                if isinstance(row, UnicodeDecodeError):
                    raw = excerpt_of(_raw_row(batch, i))
                    yield Record(line, reason=f"invalid utf-8: {row}", excerpt=raw)
                else:
                    yield _record(row, row, line, f"{name}:{line}", text_field, id_field)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISDIR, "a folder"))


def check_regular(path: str) -> None:
    """Refuse a local path that is not a regular file (InputError naming it), before it is
    opened: a FIFO would hang its reader, a device such as /dev/zero never end. A missing
    file raises FileNotFoundError; fsspec URLs of other filesystems are not checked."""
    fs, local = fsspec.core.url_to_fs(str(path))
    if not isinstance(fs, LocalFileSystem):
        return
    try:
        mode = os.stat(local).st_mode
    except FileNotFoundError as e:
        link = " (a link to nothing)" if os.path.islink(local) else ""
        raise FileNotFoundError(f"no such document file: {path}{link}") from e
    if not stat.S_ISREG(mode):
        kind = next((k for test, k in _KINDS if test(mode)), "not a file")
        raise InputError(f"{path}: not a regular file ({kind}); document files only")


def _read_rows(path: str, fmt: str, name: str, text_field: str, id_field: str) -> Iterator[Record]:
    compression = "gzip" if fmt == ".jsonl.gz" else None
    with fsspec.open(path, "rb", compression=compression) as f:
        if fmt == ".parquet":
            yield from _read_parquet(f, name, text_field, id_field)
        else:
            yield from _read_jsonl(f, name, text_field, id_field)


def unreadable_record(fmt: str, last_line: int, error: BaseException) -> Record:
    """The whole-file Record of a file that broke off after ``last_line``."""
    where = f" after {'row' if fmt == '.parquet' else 'line'} {last_line}" if last_line else ""
    reason = f"unreadable {fmt} file{where}: {type(error).__name__}: {error}"
    return Record(WHOLE_FILE, reason=reason, excerpt="")


def declared_types(path: str, text_field: str = "text", id_field: str = "id"
                   ) -> dict[str, pa.DataType] | None:
    """The types a document file gives its fields (every column but the text and id): a
    Parquet file's column types, None for JSON lines (whose types are the values') and for
    a file whose schema cannot be read (``read_records`` quarantines it)."""
    path = str(path)
    if file_format(path) != ".parquet":
        return None
    check_regular(path)
    try:
        with fsspec.open(path, "rb") as f:
            schema = pq.read_schema(f)
    except UNREADABLE:
        return None
    return {f.name: f.type for f in schema if f.name not in (text_field, id_field)}


def read_records(
    path: str, text_field: str = "text", id_field: str = "id", name: str | None = None
) -> Iterator[Record]:
    """Stream the rows of one document file. A bad row is a Record with a reason; a file
    that breaks off (or cannot be read at all) ends with one whole-file Record, line 0,
    after the good rows before the damage; only a missing file (FileNotFoundError) and one
    that is not a regular file (InputError, ``check_regular``) raise, before any row. A row
    without an id gets ``<name>:<line>``, ``name`` defaulting to the file's base name."""
    path = str(path)
    fmt = file_format(path)
    name = name or posixpath.basename(path.rstrip("/"))
    check_regular(path)
    last_line = 0
    with contextlib.closing(_read_rows(path, fmt, name, text_field, id_field)) as rows:
        while True:
            # only reading is guarded: what the caller raises at the yield stays its own
            try:
                rec = next(rows)
            except StopIteration:
                return
            except FileNotFoundError as e:
                raise FileNotFoundError(f"no such document file: {path}") from e
            except UNREADABLE as e:
                yield unreadable_record(fmt, last_line, e)
                return
            last_line = rec.line
            yield rec


def _checked(docs: Iterable[dict]) -> Iterator[dict]:
    for n, doc in enumerate(docs):
        if "id" not in doc or "text" not in doc:
            raise ValueError(f"document {n} has no 'id' or no 'text' (keys: {sorted(doc)})")
        yield doc


def _without_nan(value):
    """``value`` with every NaN or infinite float as None: JSON has no such number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nan(v) for v in value]
    return value


def json_line(doc: dict) -> bytes:
    """A document as one line of JSON: a NaN or infinite float (a typed column's, say)
    becomes null, since writing it as NaN would not be JSON."""
    try:
        text = json.dumps(doc, ensure_ascii=False, default=str, allow_nan=False)
    except ValueError:
        text = json.dumps(_without_nan(doc), ensure_ascii=False, default=str, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _write_jsonl(docs: Iterator[dict], f, gzipped: bool) -> int:
    # mtime=0 and no file name in the gzip header: the same documents give the same bytes,
    # so release checksums are reproducible.
    out = gzip.GzipFile(fileobj=f, mode="wb", filename="", mtime=0) if gzipped else f
    n = 0
    for doc in docs:
        out.write(json_line(doc))
        n += 1
    if gzipped:
        out.close()  # writes the gzip trailer; f stays open
    return n


# What building a column of given type raises for a value it cannot hold (UnicodeEncodeError,
# a lone surrogate, is a ValueError)
_UNFIT = (pa.ArrowException, TypeError, ValueError, OverflowError)
# Called with a document's number (0-based, in the order given) and why it cannot be written
Unwritable = Callable[[int, str], None]


def _columns(batch: list[dict], schema: pa.Schema) -> list[pa.Array]:
    return [fields.json_text(doc.get(f.name) for doc in batch) if fields.is_json(f)
            else pa.array([doc.get(f.name) for doc in batch], type=f.type) for f in schema]


def _unfit_field(doc: dict, schema: pa.Schema) -> str:
    """Why ``doc`` does not fit ``schema``: the first of its fields that does not."""
    for f in schema:
        try:
            _columns([doc], pa.schema([f]))
        except _UNFIT as e:
            return f"field {f.name!r} does not fit its column ({f.type}): {type(e).__name__}: {e}"
    return "its values do not fit the columns"


def _parquet_batch(batch: list[dict], schema: pa.Schema | None, first: int,
                   unwritable: Unwritable | None = None) -> pa.Table:
    """Documents as a table of ``schema`` (JSON-text fields encoded); without one, of the
    types Arrow infers. A key the schema lacks is an error: dropping it would lose it. A
    document with a value its column cannot hold is an error naming it and the field, or
    with ``unwritable``, is passed to it and left out."""
    if schema is None:
        return pa.Table.from_pylist(batch)
    names = set(schema.names)
    for n, doc in enumerate(batch, start=first):
        if extra := [k for k in doc if k not in names]:
            raise ValueError(f"document {n} has key(s) {extra} that the file's columns "
                             f"({', '.join(schema.names)}) lack")
    try:
        return pa.Table.from_arrays(_columns(batch, schema), schema=schema)
    except _UNFIT:
        pass
    kept = []  # the rare failing batch, one document at a time: only the unfit ones go
    for n, doc in enumerate(batch, start=first):
        try:
            _columns([doc], schema)
        except _UNFIT:
            why = _unfit_field(doc, schema)
            if unwritable is None:
                raise ValueError(f"document {n}: {why}") from None
            unwritable(n, why)
            continue
        kept.append(doc)
    return pa.Table.from_arrays(_columns(kept, schema), schema=schema)


def _write_parquet(docs: Iterator[dict], f, batch_rows: int, schema: pa.Schema | None,
                   unwritable: Unwritable | None = None) -> int:
    writer, n, written = None, 0, 0
    try:
        while batch := list(islice(docs, batch_rows)):
            # without a schema the first batch fixes it; later batches must fit it
            table = _parquet_batch(batch, schema or (writer.schema if writer else None), n,
                                   unwritable)
            writer = writer or pq.ParquetWriter(f, table.schema)
            writer.write_table(table)
            n += len(batch)
            written += table.num_rows
    except BaseException:
        if writer is not None:  # closed now, not by the collector after f is gone
            with contextlib.suppress(Exception):
                writer.close()
        raise
    if writer is None:  # no documents: still a valid Parquet file
        writer = pq.ParquetWriter(
            f, schema or pa.schema([("id", pa.string()), ("text", pa.string())]))
    writer.close()
    return written


def write_documents(docs: Iterable[dict], path, batch_rows: int = 1000,
                    schema: pa.Schema | None = None, unwritable: Unwritable | None = None) -> int:
    """Write documents (dicts with at least `id` and `text`; other keys are kept) in the
    format the extension names; atomic: readers see the old file or the whole new one.
    JSON lines write a NaN or infinite float as null. Parquet's columns are ``schema``'s
    (a field marked as JSON text holds its values encoded), else the types Arrow infers
    from the first ``batch_rows`` documents; a document with a key the columns lack raises
    ValueError, and so does one with a value its column cannot hold, unless
    ``unwritable`` is given: it is then called with the document's number and why, and
    the document is left out. Returns the number of documents written."""
    path = str(path)
    fmt = file_format(path)
    fs, target = fsspec.core.url_to_fs(path)

    def write(f) -> int:
        if fmt == ".parquet":
            return _write_parquet(_checked(docs), f, batch_rows, schema, unwritable)
        return _write_jsonl(_checked(docs), f, gzipped=fmt == ".jsonl.gz")

    if not isinstance(fs, LocalFileSystem):  # object stores publish a file whole, on close
        with fs.open(target, "wb") as f:
            return write(f)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        return write(f)


def expand_paths(patterns: list[str]) -> list[str]:
    """Globs (local or fsspec URLs, `**` included) to a sorted list of files; a pattern
    that matches no file raises, since a silently empty input is almost always a typo, and
    so does one that matches something other than a file or folder (a FIFO, a device:
    ``check_regular``), rather than leave it out unsaid."""
    if isinstance(patterns, str):
        patterns = [patterns]
    files = set()
    for pattern in patterns:
        fs, root = fsspec.core.url_to_fs(str(pattern))
        matched = fs.glob(root, detail=True)
        local = isinstance(fs, LocalFileSystem)
        for p, info in matched.items():
            if local and info["type"] not in ("file", "directory"):
                check_regular(p)
        found = [p for p, info in matched.items() if info["type"] == "file"]
        if not found:
            raise FileNotFoundError(f"no document files match {pattern}")
        files.update(p if local else fs.unstrip_protocol(p) for p in found)
    return sorted(files)


def _pattern_root(pattern: str) -> tuple[str, str]:
    """(protocol, folder) of a pattern: the folder its part before the first glob
    character names, as ``expand_paths`` spells the files under it."""
    fs, stripped = fsspec.core.url_to_fs(str(pattern))
    fixed = stripped[: min((stripped.find(c) for c in GLOB_CHARS if c in stripped),
                           default=len(stripped))]
    return fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol, posixpath.dirname(fixed)


def source_names(patterns: list[str], files: list[str]) -> dict[str, str]:
    """Each file's name in default ids: its path relative to the folder the patterns share
    (``data/*/part.jsonl`` gives ``2024-01/part.jsonl`` and ``2024-02/part.jsonl``; one file
    its base name). Distinct files get distinct names, and a name depends only on the
    patterns, not on which other files they match. Patterns on different filesystems
    share no folder: their files keep their full URLs."""
    if isinstance(patterns, str):
        patterns = [patterns]
    roots = {_pattern_root(p) for p in patterns}
    protocols = {protocol for protocol, _ in roots}
    common = posixpath.commonpath([root for _, root in roots]) if len(protocols) == 1 else None
    names = {}
    for path in files:
        _, stripped = fsspec.core.url_to_fs(path)
        relative = posixpath.relpath(stripped, common) if common else None
        outside = relative is None or relative == ".." or relative.startswith("../")
        names[path] = path if outside else relative
    return names
