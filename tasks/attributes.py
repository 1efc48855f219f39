"""Per-document attributes of a release, in Dolma's attribute layout.

For each document part (``documents/part-NNNNN.jsonl.gz``, ``data/train-NNNNN-of-MMMMM.parquet``) a
release holds ``attributes/semisynth/part-NNNNN.jsonl.gz``: Dolma's layout, the documents'
relative path under ``attributes/<attribute set>/`` instead of ``documents/``. One JSON line
per document of that part, in the same order, ``{"id": ..., "attributes": {"semisynth__ppl": [[0, len(text), value]],
...}}``. Each attribute is one span over the whole text (Dolma's document-level form,
offsets in characters), so the Dolma mixer can filter on ``semisynth__ppl[0][2]``.

What the values are (``release_edits`` traces where the edit counts come from):

- ``ppl``, ``scored_tokens``, ``truncated``: the released text as the prior scored it, from
  the score file of the released shard (the rows of ``doc_scores`` of the released corpus;
  ``truncated``: only its first ``prior.max_doc_tokens`` tokens were scored). For an edited
  corpus that is the edited text, scored again.
- ``revised_tokens``, ``edited_tokens``, ``dropped_tokens``: the ToEdit pass that made the
  released text. An edited corpus: its source's score rows, row for row (the rows of
  ``edits`` of the edited corpus). A corpus read from files: 0, no token of it was edited.
  A mixture: each document's values in the corpus it was drawn from (so an edited
  component's documents keep their edit counts; the mixing itself changes no token).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from semisynth.tasks.corpora import mix_selection

ATTRIBUTE_SET = "semisynth"
PREFIX = f"{ATTRIBUTE_SET}__"
ATTRIBUTES = ("ppl", "scored_tokens", "revised_tokens", "edited_tokens", "dropped_tokens",
              "truncated")
READ_ROWS = 1000  # rows read from a shard or score file at a time


@dataclass(frozen=True)
class EditCounts:
    """The ToEdit pass that made one released document's text."""

    id: str
    revised_tokens: int
    edited_tokens: int
    dropped_tokens: int


def attributes_path(part: int) -> str:
    """The attribute file of document part ``part``, relative to the release folder."""
    return f"attributes/{ATTRIBUTE_SET}/part-{part:05d}.jsonl.gz"


def _rows(path: Path, columns: list[str]) -> Iterator[dict]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
        yield from batch.to_pylist()


def _row_count(paths: list[Path]) -> int:
    return sum(pq.read_metadata(p).num_rows for p in paths)


def release_edits(cfg, corpus: str, scores: dict[str, list[Path]]) -> Iterator[EditCounts]:
    """The edit counts of every document of ``corpus`` (of ``cfg``), in the corpus's order,
    from the run's score files (corpus -> its score files, as the flow made them): one
    stream over the corpus, read a batch of rows at a time."""
    c = cfg.corpora[corpus]
    if c.edited_from:
        for paths in scores[c.edited_from]:
            for r in _rows(paths, ["id", "revised_tokens", "edited_tokens", "dropped_tokens"]):
                yield EditCounts(r["id"], r["revised_tokens"], r["edited_tokens"],
                                 r["dropped_tokens"])
    elif c.mix:
        # the mixture's rows are its components' picked rows, component by component, in
        # the order ``tasks.corpora.mixed_shards`` wrote them (the same seeded draw)
        picks = mix_selection({m: _row_count(scores[m]) for m in c.mix}, c.mix, cfg.seed)
        for component, rows in picks.items():
            wanted = iter(rows.tolist())
            want = next(wanted, None)
            for i, counts in enumerate(release_edits(cfg, component, scores)):
                if want is None:
                    break
                if i == want:
                    yield counts
                    want = next(wanted, None)
    else:
        for paths in scores[corpus]:
            for r in _rows(paths, ["id"]):
                yield EditCounts(r["id"], 0, 0, 0)


def _span(length: int, value: float | int | None) -> list:
    return [[0, length, value]]


def _finite(value: float | None) -> float | None:
    """JSON has no NaN: a document the prior scored no token of (one token long) has no
    perplexity, written as null."""
    return value if value is not None and math.isfinite(value) else None


def write_attributes(shard: Path, score_file: Path, edits: Iterator[EditCounts],
                     out: Path) -> tuple[int, int]:
    """The attribute file of one released shard (its documents, their score file row for
    row, and as many rows of ``edits`` as it has documents), a batch of rows at a time;
    returns (documents, scored tokens). Raises ValueError when the three disagree on a
    document's id or on how many documents there are."""
    documents = tokens = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        docs = _rows(shard, ["id", "text"])
        scored = _rows(score_file, ["id", "scored_tokens", "ppl", "truncated"])
        for doc in docs:
            score, edit = next(scored, None), next(edits, None)
            if score is None or edit is None or not score["id"] == edit.id == doc["id"]:
                raise ValueError(
                    f"{shard} row {documents + 1} is document {doc['id']!r}, but its score "
                    f"row in {score_file} is {score and score['id']!r} and its edit counts "
                    f"are of {edit and edit.id!r}: these are not the scores of these documents")
            n = len(doc["text"])
            values = {"ppl": _finite(score["ppl"]), "scored_tokens": score["scored_tokens"],
                      "revised_tokens": edit.revised_tokens,
                      "edited_tokens": edit.edited_tokens,
                      "dropped_tokens": edit.dropped_tokens,
                      "truncated": int(bool(score["truncated"]))}
            line = {"id": doc["id"],
                    "attributes": {PREFIX + k: _span(n, values[k]) for k in ATTRIBUTES}}
            f.write((json.dumps(line, ensure_ascii=False) + "\n").encode())
            documents += 1
            tokens += score["scored_tokens"]
        if next(scored, None) is not None:
            raise ValueError(f"{score_file} holds more rows than {shard} has documents: "
                             "these are not the scores of these documents")
    return documents, tokens


@dataclass
class AttributeSource:
    """What a release's attribute files are made of: the score file of each released shard
    (in the shards' order) and the edit counts of the corpus's documents, in order
    (``release_edits``)."""

    scores: list[Path]
    edits: Iterator[EditCounts]
    meaning: str = ""  # what the edit counts are for this corpus (its card says it)
