"""Derived corpora and corpus records stream: a mixture is written shard by shard with its
scores carried over row for row, and the warehouse's per-corpus totals and per-document rows
come from aggregates over the score files (DuckDB reads them), never from a frame of every
row in this process."""

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth import fields
from semisynth.tasks.corpora import edited_shard, mix_selection, mixed_shards
from semisynth.tasks.ingest import doc_hash, shard_table, write_shard
from semisynth.tasks.score import SCORE_SCHEMA
from semisynth.warehouse import db, records


def scored_component(folder, name, sizes, doc_fields=None):
    """Shards of a component (documents ``<name>-<i>``) and their score files, aligned;
    ``doc_fields(i)``: the fields of document i (typed as ``fields.from_rows`` infers),
    or none."""
    shards, scores, i = [], [], 0
    for size in sizes:
        rows = [{"id": f"{name}-{i + k}", "text": f"text of {name} {i + k}",
                 "doc_hash": doc_hash(f"text of {name} {i + k}"), "source": name, "line": k + 1}
                for k in range(size)]
        struct = fields.from_rows([doc_fields(i + k) for k in range(size)]) if doc_fields else None
        shard = write_shard(shard_table(rows, struct), folder / "shards" / name, name)
        n = len(rows)
        table = pa.table({
            "id": [r["id"] for r in rows], "doc_hash": [r["doc_hash"] for r in rows],
            "scored_tokens": [10 + k for k in range(n)], "nll_sum": [5.0] * n,
            "ppl": [2.0 + k for k in range(n)], "revised_tokens": [2] * n,
            "edited_tokens": [1] * n, "dropped_tokens": [0] * n,
            "token_ids": [[k, k + 1] for k in range(n)], "edited_text": ["e"] * n,
            "truncated": [False] * n}, schema=SCORE_SCHEMA)
        score = folder / "scores" / f"{shard.shard_hash}.parquet"
        score.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, score)
        shards.append(shard.path)
        scores.append(score)
        i += size
    return [str(s) for s in shards], scores


def test_a_mixture_is_written_in_shards_with_its_scores_row_for_row(tmp_path):
    components = {"human": scored_component(tmp_path, "human", [40, 7, 33]),
                  "synthetic": scored_component(tmp_path, "synthetic", [25, 25])}
    shares = {"human": 0.5, "synthetic": 0.5}
    shards, scores = mixed_shards(components, shares, 3, tmp_path / "mix", tmp_path / "mixs", 16)
    picks = mix_selection({"human": 80, "synthetic": 50}, shares, 3)
    expected = [f"{name}-{i}" for name in sorted(picks) for i in picks[name]]
    docs = pa.concat_tables(pq.read_table(s) for s in shards)
    got_scores = pa.concat_tables(pq.read_table(s) for s in scores)
    assert docs.column("id").to_pylist() == expected == got_scores.column("id").to_pylist()
    assert [pq.read_metadata(s).num_rows for s in shards] == [16] * 6 + [len(expected) - 96]
    assert docs.column("line").to_pylist() == list(range(1, len(expected) + 1))
    assert set(docs.column("source").to_pylist()) == {"mix:human", "mix:synthetic"}
    # each score file is named by its shard, and holds that shard's documents' scores
    for shard, score in zip(shards, scores, strict=True):
        assert score.stem == shard.stem
    by_id = {doc_id: 2.0 + k for _, score_files in components.values() for f in score_files
             for k, doc_id in enumerate(pq.read_table(f).column("id").to_pylist())}
    assert got_scores.column("ppl").to_pylist() == [by_id[i] for i in expected]
    # the same inputs give the same shards (content-keyed)
    assert mixed_shards(components, shares, 3, tmp_path / "mix", tmp_path / "mixs", 16)[0] == shards


def without_nulls(value):
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    return value


def test_a_mixtures_documents_keep_their_fields_and_name_their_component(tmp_path):
    components = {
        "human": scored_component(tmp_path, "human", [6, 6], lambda i: {
            "year": 1961, "meta": {"genre": "news"}, "tags": ["a"] if i % 2 else None}),
        # a component whose own fields differ: one more nested key, and `year` as text
        "web": scored_component(tmp_path, "web", [5], lambda i: {
            "year": f"'{i}", "meta": {"genre": "web", "url": f"u{i}"}})}
    shards, _ = mixed_shards(components, {"human": 0.5, "web": 0.5}, 1, tmp_path / "mix",
                             tmp_path / "mixs", 4)
    # the shards' field types differ: each shard's rows decoded by its own
    docs = [(d, fields.json_keys(pq.read_schema(s).field("fields").type)) for s in shards
            for d in pq.read_table(s).to_pylist()]
    assert len(docs) == 10
    for doc, json_keys in docs:
        name, i = doc["id"].split("-")
        assert doc["component"] == name
        # a key a document lacks is null where other documents of its shard have it
        got = without_nulls(fields.decoded(doc["fields"], json_keys))
        if name == "human":
            assert got == {"year": 1961, "meta": {"genre": "news"}} | (
                {"tags": ["a"]} if int(i) % 2 else {})
        else:
            assert got == {"year": f"'{i}", "meta": {"genre": "web", "url": f"u{i}"}}
    # `year` meets as a number and as text in some shard: JSON text there, typed elsewhere
    types = [pq.read_schema(s).field("fields").type for s in shards]
    assert any(fields.json_keys(t) == ["year"] for t in types)
    assert {str(t.field("meta").type) for t in types} <= {
        "struct<genre: string, url: string>", "struct<genre: string>"}

    # a mixture of that mixture: its documents say both components
    shards2, _ = mixed_shards({"mix": (shards, _)}, {"mix": 1.0}, 2, tmp_path / "mix2",
                              tmp_path / "mixs2", 4)
    again = [d for s in shards2 for d in pq.read_table(s).to_pylist()]
    assert sorted(d["component"] for d in again) == sorted(f"mix/{d['component']}"
                                                           for d, _ in docs)


def test_an_edited_shard_keeps_its_documents_fields(tmp_path):
    [shard], [score] = scored_component(tmp_path, "human", [3], lambda i: {
        "n": i, "meta": {"url": f"u{i}"}})
    out = edited_shard(score, Path(shard), tmp_path / "edited")
    source, edited = pq.read_table(shard), pq.read_table(out)
    assert edited.column("text").to_pylist() == ["e"] * 3  # the score files' edited text
    assert edited.column("doc_hash").to_pylist() == [doc_hash("e")] * 3
    assert edited.column("id").equals(source.column("id"))
    assert edited.column("fields").equals(source.column("fields"))
    assert edited.schema.field("fields").type == source.schema.field("fields").type


def test_a_score_file_that_is_not_its_shards_is_refused(tmp_path):
    human = scored_component(tmp_path, "human", [10, 10])
    swapped = (human[0], human[1][::-1])
    with pytest.raises(ValueError, match="ids differ"):
        mixed_shards({"human": swapped}, {"human": 1.0}, 0, tmp_path / "m", tmp_path / "ms", 8)


def test_corpus_records_are_aggregates_over_the_score_files(tmp_path):
    shards, scores = scored_component(tmp_path, "human", [12, 5])
    wh = db.init(tmp_path / "warehouse.duckdb")
    edit = {"strategy": "up_revise", "seed": 4, "params": {
        "threshold": 0.99, "top_k": 8, "beta": 1.5, "low_threshold": 0.001}}
    records.record_corpora(wh, "run", [
        records.CorpusRecord("human", "reference", None, "files", [tmp_path / s for s in shards],
                             scores, {"rows_in": 18, "rows_ok": 17, "rows_quarantined": 1},
                             edited_into=["human_toedit"], edit=edit),
        records.CorpusRecord("empty", "candidate", "human", "mix", [], [])])
    corpora = db.query(wh, "SELECT * FROM corpora ORDER BY corpus").set_index("corpus")
    tokens = sum(10 + k for k in range(12)) + sum(10 + k for k in range(5))
    assert corpora.loc["human", ["documents", "tokens", "shards", "rows_in"]].tolist() == [
        17, tokens, 2, 18]
    assert corpora.loc["empty", ["documents", "tokens", "shards"]].tolist() == [0, 0, 0]
    doc_rows = db.query(wh, "SELECT shard_hash, count(*) AS n, sum(tokens) AS t FROM doc_scores "
                            "GROUP BY ALL ORDER BY n DESC")
    assert doc_rows.shard_hash.tolist() == [Path(s).stem for s in shards]
    assert doc_rows.n.tolist() == [12, 5] and int(doc_rows.t.sum()) == tokens
    edits = db.query(wh, "SELECT * FROM edits")
    assert len(edits) == 17 and set(edits.corpus) == {"human_toedit"}
    assert set(edits.source_corpus) == {"human"} and set(edits.seed) == {4}
    # the strategy's parameters as JSON, and the older columns of those it has
    assert set(edits.params) == {'{"beta": 1.5, "low_threshold": 0.001, "threshold": 0.99, '
                                 '"top_k": 8}'}
    assert (set(edits.threshold), set(edits.top_k), set(edits.beta)) == ({0.99}, {8}, {1.5})
    assert int(edits.revised_tokens.sum()) == 34 and int(edits.edited_tokens.sum()) == 17
