"""``semisynth edit``'s stage: one document file scored and edited by the prior through
score+edit's own batch loop (``tasks.score.scored_groups``), one output document per good
input row, in order, every field of the row kept.

The file is read twice: once (``survey``) for the count the progress takes its ETA from,
the fields' names and, for Parquet output, their column types; then for the documents
themselves. The first read is cheap next to the model's work.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field

import pyarrow as pa

from semisynth import documents, fields
from semisynth.documents import Record
from semisynth.progress import Progress
from semisynth.tasks.score import READ_DOCS, DocBatch, scored_groups
from semisynth.tasks.toedit import Scorer

EDIT_COLUMNS = ("ppl", "edited_tokens", "dropped_tokens")  # what `edit` adds to a document


@dataclass
class Survey:
    """What the first read of the input found."""

    documents: int  # good rows: the documents to edit
    rejected: list[Record]  # bad rows, with line and reason
    renamed: dict[str, str]  # input fields named as edit's own columns, to their new names
    doc_fields: pa.StructType | None  # the fields' column types (Parquet output only)


@dataclass
class EditedFile:
    """What ``edit_file`` wrote."""

    documents: int = 0
    tokens: int = 0  # scored
    edited: int = 0
    dropped: int = 0
    skipped: list[Record] = field(default_factory=list)  # bad or unwritable rows, by line
    json_fields: list[str] = field(default_factory=list)  # written as JSON text


def survey(input: str, output: str) -> Survey:
    """The first read of ``input``: its good rows counted, its bad ones listed, its fields'
    names and (when ``output`` is Parquet) types."""
    count, rejected, names = 0, [], set()

    def good_fields() -> Iterator[dict]:
        nonlocal count
        for rec in documents.read_records(input):
            if rec.reason is None:
                count += 1
                names.update(rec.meta)
                yield rec.meta
            else:
                rejected.append(rec)

    doc_fields = None
    if documents.file_format(output) == ".parquet":
        doc_fields = fields.rows_type(good_fields(), documents.declared_types(input))
    else:
        for _ in good_fields():  # JSON lines hold every value as it is: only the count
            pass
    return Survey(count, rejected, renamed_fields(names), doc_fields)


def renamed_fields(names: set[str]) -> dict[str, str]:
    """The input fields named as one of edit's own columns, each to ``input_<name>`` (with
    more ``input_`` while that is taken too), as a release renames them: written under its
    own name, the score would overwrite it."""
    taken = {"id", "text", *EDIT_COLUMNS, *names}
    renamed = {}
    for key in sorted(names & set(EDIT_COLUMNS)):
        name = key
        while name in taken:
            name = fields.RENAMED_PREFIX + name
        taken.add(name)
        renamed[key] = name
    return renamed


def output_schema(doc_fields: pa.StructType | None, renamed: dict[str, str]) -> pa.Schema:
    """The columns of ``edit``'s Parquet output: id, text, the input's fields as they are
    typed (``renamed``: the new names of those that edit's own columns take), then the
    scores."""
    ours = [pa.field("ppl", pa.float64()), pa.field("edited_tokens", pa.int64()),
            pa.field("dropped_tokens", pa.int64())]
    kept = [f.with_name(renamed.get(f.name, f.name)) for f in doc_fields or []]
    return pa.schema([pa.field("id", pa.string()), pa.field("text", pa.string()), *kept, *ours])


def _good_batches(path: str, bad: list[Record]) -> Iterator[DocBatch]:
    """The good records of ``path``, READ_DOCS at a time, each carrying its record; the bad
    ones go to ``bad``."""
    batch: list[Record] = []
    for rec in documents.read_records(path):
        if rec.reason is not None:
            bad.append(rec)
            continue
        batch.append(rec)
        if len(batch) == READ_DOCS:
            yield [r.id for r in batch], [r.text for r in batch], batch
            batch = []
    if batch:
        yield [r.id for r in batch], [r.text for r in batch], batch


def edit_file(input: str, output: str, surveyed: Survey, scorer: Scorer,
              decode: Callable[[list[int]], str], progress: Progress | None = None) -> EditedFile:
    """Score and edit every good row of ``input`` (``scored_groups``, which reports to
    ``progress``) into ``output``: id, the edited text, every field of the row (those
    named as edit's own columns renamed), then ppl, edited_tokens and dropped_tokens. A
    row the output cannot hold is skipped with its line and why; the rest are written."""
    result = EditedFile()
    lines = array("q")  # the input line of each document given to the writer, in order
    bad: list[Record] = []  # appended on the planning thread, read when it has ended
    renamed = surveyed.renamed

    def unwritable(n: int, why: str) -> None:
        result.documents -= 1
        result.skipped.append(Record(lines[n], reason=f"not written to {output}: {why}"))

    def edited_docs(groups) -> Iterator[dict]:
        for group, results in groups:
            for rec, res in zip(group.carried, results, strict=True):
                lines.append(rec.line)
                result.documents += 1
                result.tokens += res.scored_tokens
                result.edited += res.edited_tokens
                result.dropped += res.dropped_tokens
                meta = {renamed.get(k, k): v for k, v in rec.meta.items()} if renamed else rec.meta
                yield {"id": rec.id, "text": decode(res.edited_ids.tolist()), **meta,
                       "ppl": res.ppl, "edited_tokens": res.edited_tokens,
                       "dropped_tokens": res.dropped_tokens}

    with closing(scored_groups(scorer, _good_batches(input, bad), progress, "edit")) as groups:
        documents.write_documents(edited_docs(groups), output,
                                  schema=output_schema(surveyed.doc_fields, renamed),
                                  unwritable=unwritable)
    result.skipped = sorted(bad + result.skipped, key=lambda r: r.line or float("inf"))
    result.json_fields = fields.json_keys(surveyed.doc_fields)
    return result
