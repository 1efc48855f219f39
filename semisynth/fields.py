"""Document fields: everything an input document holds besides its id and text (Dolma's
``source``, ``added``, ``created`` and nested ``metadata``; a Parquet file's other columns).

Shards keep them in one Arrow struct column, ``fields``, a child per input key in the order
first seen: typed as the Parquet file types its columns, or for JSON lines as Arrow infers
over the shard's rows (a key a row lacks is null in that row). A key whose values no single
Arrow type holds (a number in one row and a string in another, an object without keys, an
integer beyond 64 bits) is kept as JSON text instead, its field marked
``semisynth.encoding: json``; writers of JSON lines decode it, so its values come out as
they went in. Where documents of different shards meet (a mixture's shard, a release) each
key takes the type that holds all of its types (``pa.unify_schemas``, permissive: int16
and int32 give int32, structs the union of their keys), or, failing that, JSON text. Every
fallback is said: ``unify`` logs those it makes; ``from_rows`` and ``rows_type`` leave it
to their callers (ingest logs and counts them, ``semisynth edit`` prints them).

A release lays the fields out as top-level columns beside ``id`` and ``text`` (and a
mixture's ``semisynth_component``), one schema for all of its parts (``DocumentLayout``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

FIELDS = "fields"  # the shard column holding the input's other fields
COMPONENT = "component"  # the shard column naming a mixture document's component corpus
RELEASED_COMPONENT = "semisynth_component"  # its name in a release
ENCODING = b"semisynth.encoding"
JSON_ENCODING = {ENCODING: b"json"}
RENAMED_PREFIX = "input_"  # a field whose name a release's own column takes

# What building an Arrow array from Python values raises when no type holds them
_UNTYPEABLE = (pa.ArrowException, TypeError, ValueError, OverflowError)


def is_json(field: pa.Field) -> bool:
    return (field.metadata or {}).get(ENCODING) == b"json"


def json_field(name: str) -> pa.Field:
    return pa.field(name, pa.string(), metadata=JSON_ENCODING)


def json_keys(fields: pa.StructType | None) -> list[str]:
    """The keys of ``fields`` held as JSON text."""
    return [f.name for f in fields or [] if is_json(f)]


def writable(t: pa.DataType) -> bool:
    """Whether Parquet can hold the type: it has no struct without children."""
    if pa.types.is_struct(t):
        return t.num_fields > 0 and all(writable(f.type) for f in t)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return writable(t.value_type)
    if pa.types.is_map(t):
        return writable(t.key_type) and writable(t.item_type)
    return True


def json_text(values: Iterable) -> pa.Array:
    """Values as JSON text; null stays null. ``default=str`` is only for values that came
    from typed columns (datetimes, decimals, bytes): JSON input never needs it."""
    return pa.array([None if v is None else json.dumps(v, ensure_ascii=False, default=str)
                     for v in values], pa.string())


def _column(name: str, values: list, declared: pa.DataType | None) -> tuple[pa.Field, pa.Array]:
    try:
        array = pa.array(values, type=declared) if declared is not None else pa.array(values)
        if writable(array.type):
            return pa.field(name, array.type), array
    except _UNTYPEABLE:
        pass
    return json_field(name), json_text(values)


def from_rows(rows: list[dict], declared: dict[str, pa.DataType] | None = None
              ) -> pa.StructArray | None:
    """The rows' fields as one struct array: a child per key any row has (in the order
    first seen; null where a row lacks it), typed ``declared[key]`` when given, else as
    Arrow infers; JSON text for a key that no type holds. None when no row has a field."""
    keys = dict.fromkeys(declared or {})
    for row in rows:
        keys.update(dict.fromkeys(row))
    if not keys:
        return None
    declared = declared or {}
    built = [_column(k, [row.get(k) for row in rows], declared.get(k)) for k in keys]
    return pa.StructArray.from_arrays([a for _, a in built], fields=[f for f, _ in built])


def unify(types: Iterable[pa.StructType | None], where: str | None) -> pa.StructType | None:
    """The struct type that holds the fields of every one of ``types`` (None: no fields):
    each key's types unified (permissive promotion), else JSON text, logged as happening
    in ``where`` (None: the caller says it); keys in the order first seen. None when none
    has a field."""
    seen: dict[str, list[pa.Field]] = {}
    for t in types:
        for f in t or []:
            seen.setdefault(f.name, []).append(f)
    if not seen:
        return None
    out = []
    for name, fields in seen.items():
        if any(is_json(f) for f in fields):
            out.append(json_field(name))
            continue
        try:
            merged = pa.unify_schemas([pa.schema([f.remove_metadata()]) for f in fields],
                                      promote_options="permissive").field(name)
            if writable(merged.type):
                out.append(merged)
                continue
        except _UNTYPEABLE:
            pass
        if where is not None:
            log.warning("%s: field %r has types no one Arrow type holds (%s): kept as JSON "
                        "text", where, name, ", ".join(sorted({str(f.type) for f in fields})))
        out.append(json_field(name))
    return pa.struct(out)


def _cast(array: pa.Array, target: pa.DataType) -> pa.Array:
    """``array`` as ``target``, a type that holds its type: structs child by child (a
    child it lacks is null), since not every pyarrow casts between structs of different
    keys."""
    if array.type == target:
        return array
    if pa.types.is_struct(target) and pa.types.is_struct(array.type):
        present = {f.name for f in array.type}
        children = [_cast(array.field(f.name), f.type) if f.name in present
                    else pa.nulls(len(array), f.type) for f in target]
        return pa.StructArray.from_arrays(children, fields=list(target), mask=array.is_null())
    return array.cast(target)


def conform(fields: pa.Array | pa.ChunkedArray | None, length: int,
            target: pa.StructType) -> pa.StructArray:
    """``fields`` (a struct array of ``length`` rows, or None: no fields) as ``target``
    (from ``unify`` over its type): missing keys null, other types cast, and the keys
    ``target`` holds as JSON text encoded so."""
    if isinstance(fields, pa.ChunkedArray):
        fields = fields.combine_chunks()
    present = {f.name: f for f in fields.type} if fields is not None else {}
    children = []
    for f in target:
        if f.name not in present:
            children.append(pa.nulls(length, f.type))
        elif is_json(f) and not is_json(present[f.name]):
            children.append(json_text(fields.field(f.name).to_pylist()))
        else:
            children.append(_cast(fields.field(f.name), f.type))
    mask = fields.is_null() if fields is not None else None
    return pa.StructArray.from_arrays(children, fields=list(target), mask=mask)


def shard_fields(table: pa.Table | pa.RecordBatch) -> pa.Array | None:
    """A shard's ``fields`` column, None when its documents have none."""
    if FIELDS not in table.schema.names:
        return None
    column = table.column(FIELDS)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def decoded(row: dict, json_names: Iterable[str]) -> dict:
    """``row`` with its JSON-text values decoded."""
    for name in json_names:
        if row.get(name) is not None:
            row[name] = json.loads(row[name])
    return row


def _released_name(name: str, taken: set[str]) -> str:
    while name in taken:
        name = RENAMED_PREFIX + name
    return name


@dataclass(frozen=True)
class DocumentLayout:
    """The documents of a release: ``id`` and ``text``, then each field of the input as
    its own column (one type across all of the release's shards), then, for a mixture,
    ``semisynth_component``. A field named as one of those columns is released with
    ``input_`` before its name. Shard bookkeeping (doc_hash, source file, line) is not
    released."""

    fields: pa.StructType | None
    component: bool
    schema: pa.Schema

    @classmethod
    def of(cls, shards: list[Path], where: str) -> DocumentLayout:
        """The layout that holds every document of ``shards`` (read from their footers)."""
        schemas = [pq.read_schema(s) for s in shards]
        fields = unify([s.field(FIELDS).type if FIELDS in s.names else None for s in schemas],
                       where)
        component = any(COMPONENT in s.names for s in schemas)
        columns = [pa.field("id", pa.string()), pa.field("text", pa.string())]
        taken = {"id", "text", RELEASED_COMPONENT}
        for f in fields or []:
            name = _released_name(f.name, taken)
            if name != f.name:
                log.warning("%s: field %r released as %r: the release's own column has its name",
                            where, f.name, name)
            taken.add(name)
            columns.append(f.with_name(name))
        if component:
            columns.append(pa.field(RELEASED_COMPONENT, pa.string()))
        return cls(fields, component, pa.schema(columns))

    def table(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        """A batch of shard rows as released documents."""
        n = batch.num_rows
        columns = [batch.column("id"), batch.column("text")]
        if self.fields is not None:
            struct = conform(shard_fields(batch), n, self.fields)
            columns += [struct.field(i) for i in range(self.fields.num_fields)]
        if self.component:
            columns.append(batch.column(COMPONENT) if COMPONENT in batch.schema.names
                           else pa.nulls(n, pa.string()))
        return pa.Table.from_arrays(columns, schema=self.schema)

    def rows(self, table: pa.Table) -> Iterator[dict]:
        """Released documents as JSON objects: JSON-text fields decoded to their values."""
        names = [f.name for f in self.schema if is_json(f)]
        for row in table.to_pylist():
            yield decoded(row, names)


def rows_type(rows: Iterable[dict], declared: dict[str, pa.DataType] | None = None,
              chunk_rows: int = 4096) -> pa.StructType | None:
    """The struct type that holds the fields of every one of ``rows`` (a stream: read
    ``chunk_rows`` at a time, so a whole file's type costs one chunk of memory), typed
    ``declared`` where given; None when no row has a field. The keys it holds as JSON text
    (``json_keys``) are the caller's to report."""
    found: pa.StructType | None = None
    chunk: list[dict] = []

    def fold() -> None:
        nonlocal found
        array = from_rows(chunk, declared)
        if array is not None:
            found = unify([found, array.type], None) if found is not None else array.type

    for row in rows:
        chunk.append(row)
        if len(chunk) == chunk_rows:
            fold()
            chunk = []
    if chunk:
        fold()
    return found
