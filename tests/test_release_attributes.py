"""A release's attribute files (Dolma layout) and dataset card, on corpora made by the real
stages (ingest, derive, corpus records into DuckDB) from score files written here in the
score stage's schema: every attribute equals the warehouse's row of the same document."""

import gzip
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from semisynth.config import config_from_tree
from semisynth.tasks import corpora, release
from semisynth.tasks.attributes import AttributeSource, release_edits
from semisynth.tasks.ingest import ingest_columns, ingest_corpus
from semisynth.tasks.score import SCORE_SCHEMA
from semisynth.warehouse import db, records

RUN = "r-attributes"
GATE = {"success": True, "rows": [
    {"run_id": RUN, "corpus": "x", "suite": "coverage", "expectation": "ppl_ks <= 0.31",
     "metric": "ppl_ks", "observed": 0.12, "threshold": "<= 0.31", "success": True},
    {"run_id": RUN, "corpus": "x", "suite": "coverage", "expectation": "distinct_2 >= 0.5",
     "metric": "distinct_2", "observed": 0.74, "threshold": ">= 0.5", "success": True}]}


def write_scores(shard: Path, score_dir: Path, salt: int) -> Path:
    """A score file for ``shard`` as the score stage writes one (its schema, one row per
    document in shard order), with values that differ from document to document; the first
    document of salt 1 is one token long (no perplexity)."""
    docs = pq.read_table(shard, columns=["id", "text", "doc_hash"]).to_pylist()
    rng = np.random.default_rng(salt)
    n = len(docs)
    scored = [int(t) for t in rng.integers(5, 400, n)]
    if salt == 1:
        scored[0] = 0
    nll = [float(t * rng.uniform(1, 5)) for t in scored]
    table = pa.table({
        "id": [d["id"] for d in docs], "doc_hash": [d["doc_hash"] for d in docs],
        "scored_tokens": scored, "nll_sum": nll,
        "ppl": [math.exp(s / t) if t else float("nan") for s, t in zip(nll, scored, strict=True)],
        "revised_tokens": [int(v) for v in rng.integers(0, 40, n)],
        "edited_tokens": [int(v) for v in rng.integers(0, 20, n)],
        "dropped_tokens": [int(v) for v in rng.integers(0, 3, n)],
        "token_ids": [[1, 2, 3]] * n,
        "edited_text": [d["text"].replace(" ", " ~", 1) for d in docs],
        "truncated": [bool(v) for v in rng.integers(0, 2, n)]}, schema=SCORE_SCHEMA)
    out = score_dir / f"{shard.stem}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Corpora brown (files) -> brown_toedit (edited) and mix50 (brown_toedit + synthetic),
    recorded in the warehouse as a run records them, and released."""
    root = tmp_path_factory.mktemp("root")
    for name, n in (("brown", 30), ("synthetic", 21)):
        lines = [json.dumps({"id": f"{name}-{i}", "text": f"{name} dóc {i}: " + "wörd " * i})
                 for i in range(n)]
        (root / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    cfg = config_from_tree({
        "name": "t", "data_root": str(root), "seed": 5, "shard_docs": 8,
        "corpora": {
            "brown": {"role": "reference", "paths": ["brown.jsonl"], "license": "odc-by",
                      "release": True},
            "brown_toedit": {"edited_from": "brown", "reference": "brown", "release": True},
            "synthetic": {"role": "monitored", "paths": ["synthetic.jsonl"], "license": "odc-by",
                          "reference": "brown"},
            "mix50": {"mix": {"brown_toedit": 0.5, "synthetic": 0.5}, "reference": "brown",
                      "release": True}}})
    score_dir = root / "scores" / "k"
    shards, scores, counts = {}, {}, {}
    for salt, name in enumerate(("brown", "synthetic"), start=1):
        result = ingest_corpus(cfg, name)
        shards[name] = [Path(s.path) for s in result.shards]
        scores[name] = [write_scores(s, score_dir, salt * 100 + i)
                        for i, s in enumerate(shards[name])]
        counts[name] = ingest_columns(result)
    shards["brown_toedit"], made = corpora.derive(cfg, "brown_toedit", shards, scores, score_dir)
    assert made is None  # edited shards are scored next, as the flow does
    scores["brown_toedit"] = [write_scores(s, score_dir, 1 + i)
                              for i, s in enumerate(shards["brown_toedit"])]
    shards["mix50"], scores["mix50"] = corpora.derive(cfg, "mix50", shards, scores, score_dir)
    wh = db.init(db.warehouse_path(root))
    records.record_corpora(wh, RUN, corpora.corpus_records(cfg, shards, scores, counts))
    released = {n: release.release_corpus(cfg, RUN, n, shards[n], "prior-x", {"ppl_ks": 0.12},
                                          GATE, scores)
                for n in ("brown", "brown_toedit", "mix50")}
    return cfg, wh, shards, released


def attribute_rows(path: Path, part: int) -> list[dict]:
    with gzip.open(path / "attributes" / "semisynth" / f"part-{part:05d}.jsonl.gz", "rt",
                   encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def value(row: dict, key: str):
    [[start, end, v]] = row["attributes"][f"semisynth__{key}"]
    assert start == 0
    return v


def nan_none(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def test_attribute_files_line_up_with_the_documents(run):
    _, _, shards, released = run
    for corpus, r in released.items():
        manifest = json.loads((r.path / "manifest.json").read_text())
        assert len(shards[corpus]) > 1  # several parts, each with its own attribute file
        for part in range(len(shards[corpus])):
            name = release.parquet_part_name(part, len(shards[corpus]))
            docs = pq.read_table(r.path / "data" / name).to_pylist()
            with gzip.open(r.path / "documents" / f"part-{part:05d}.jsonl.gz", "rt") as f:
                jsonl = [json.loads(line) for line in f]
            rows = attribute_rows(r.path, part)
            assert [a["id"] for a in rows] == [d["id"] for d in docs] == [d["id"] for d in jsonl]
            for a, d in zip(rows, docs, strict=True):
                assert set(a) == {"id", "attributes"}
                assert sorted(a["attributes"]) == sorted(manifest["attributes"]["keys"])
                for span in a["attributes"].values():  # one span over the whole text
                    assert span[0][:2] == [0, len(d["text"])]
            assert f"attributes/semisynth/part-{part:05d}.jsonl.gz" in manifest["files"]
        assert manifest["tokens"] == sum(
            value(a, "scored_tokens") for p in range(len(shards[corpus]))
            for a in attribute_rows(r.path, p))


def test_attributes_equal_the_warehouse_rows(run):
    cfg, wh, shards, released = run
    for corpus, r in released.items():
        for part, shard in enumerate(shards[corpus]):
            rows = attribute_rows(r.path, part)
            got = sorted((a["id"], value(a, "scored_tokens"), value(a, "ppl")) for a in rows)
            want = db.query(wh, "SELECT doc_id, tokens, ppl FROM doc_scores WHERE run_id = ? "
                                "AND corpus = ? AND shard_hash = ?", [RUN, corpus, shard.stem])
            assert got == sorted((i, t, nan_none(p)) for i, t, p in want.itertuples(index=False))

    edits = db.query(wh, "SELECT doc_id, revised_tokens, edited_tokens, dropped_tokens FROM "
                         "edits WHERE run_id = ? AND corpus = 'brown_toedit'", [RUN])
    edit_of = {row[0]: tuple(row[1:]) for row in edits.itertuples(index=False)}
    assert len(edit_of) == len(edits) == 30

    def edit_values(a):
        return tuple(value(a, k) for k in ("revised_tokens", "edited_tokens", "dropped_tokens"))

    toedit = [a for p in range(len(shards["brown_toedit"]))
              for a in attribute_rows(released["brown_toedit"].path, p)]
    assert {a["id"]: edit_values(a) for a in toedit} == edit_of
    assert any(v != (0, 0, 0) for v in edit_of.values())
    # the mixture: an edited component's documents keep their edits, the others had none
    mixed = [a for p in range(len(shards["mix50"]))
             for a in attribute_rows(released["mix50"].path, p)]
    assert {a["id"].split("-")[0] for a in mixed} == {"brown", "synthetic"}
    for a in mixed:
        expected = edit_of[a["id"]] if a["id"].startswith("brown") else (0, 0, 0)
        assert edit_values(a) == expected, a["id"]
    plain = [a for p in range(len(shards["brown"]))
             for a in attribute_rows(released["brown"].path, p)]
    assert {edit_values(a) for a in plain} == {(0, 0, 0)}
    # truncated, from the released shard's score file (not in the warehouse's rows)
    toedit_scores = [pq.read_table(cfg.root / "scores" / "k" / f"{s.stem}.parquet").to_pylist()
                     for s in shards["brown_toedit"]]
    assert [value(a, "truncated") for a in toedit] == [
        int(row["truncated"]) for rows in toedit_scores for row in rows]
    assert None in [value(a, "ppl") for a in toedit]  # the one-token document: JSON null


def test_the_card_is_a_hugging_face_dataset_card(run):
    _, _, _, released = run
    text = (released["brown_toedit"].path / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "odc-by"  # the source's license
    assert meta["size_categories"] == ["n<1K"]
    assert meta["pretty_name"] == "t-brown_toedit v0001"
    assert meta["configs"] == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "data/*.parquet"}]}]
    body = text.split("---\n", 2)[2]
    for expected in ("documents: 30", "`ppl_ks <= 0.31` | 0.12 | `<= 0.31` | yes",
                     "strategy `up_revise`, threshold 0.99", "model `prior-x`",
                     "`brown`: files `brown.jsonl`", "semisynth__edited_tokens"):
        assert expected in body, expected
    mix_meta = yaml.safe_load((released["mix50"].path / "README.md").read_text().split("---\n")[1])
    assert mix_meta["license"] == "odc-by"  # both components' license


def test_load_dataset_reads_the_documents_only(run, tmp_path):
    import datasets  # the dev extra's
    path = run[3]["mix50"].path
    manifest = json.loads((path / "manifest.json").read_text())
    by_dir = datasets.load_dataset("parquet", data_dir=str(path / "data"), split="train",
                                   cache_dir=str(tmp_path / "a"))
    by_card = datasets.load_dataset(str(path), split="train", cache_dir=str(tmp_path / "b"))
    assert by_dir.num_rows == by_card.num_rows == manifest["documents"]
    assert by_card.column_names == by_dir.column_names
    # the documents' own columns and the mixture's component; no bookkeeping of semisynth's
    assert {"id", "text", "semisynth_component"} <= set(by_card.column_names)
    assert not {"doc_hash", "line"} & set(by_card.column_names)
    docs = [pq.read_table(p).to_pylist() for p in sorted((path / "data").glob("*.parquet"))]
    assert sorted(by_card["id"]) == sorted(d["id"] for part in docs for d in part)


def test_verify_refuses_a_tampered_attribute_file_or_card(run, tmp_path):
    import shutil

    copy = tmp_path / "t-brown_toedit" / "v0001"
    shutil.copytree(run[3]["brown_toedit"].path, copy)
    assert release.verify_release(copy) == []
    victim = copy / "attributes" / "semisynth" / "part-00000.jsonl.gz"
    victim.chmod(0o644)
    rows = attribute_rows(copy, 0)
    rows[0]["attributes"]["semisynth__ppl"][0][2] = 1.0
    victim.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    card = copy / "README.md"
    card.chmod(0o644)
    card.write_text(card.read_text().replace("license: odc-by", "license: mit"))
    problems = release.verify_release(copy)
    assert "README.md: sha256 differs from the manifest" in problems
    assert "attributes/semisynth/part-00000.jsonl.gz: sha256 differs from the manifest" in problems
    assert all(p.startswith(("README.md", "attributes/semisynth/part-00000")) for p in problems)


def test_scores_of_other_documents_are_refused(run, tmp_path):
    cfg, _, shards, _ = run
    scores = {n: [cfg.root / "scores" / "k" / f"{s.stem}.parquet" for s in shards[n]]
              for n in shards}
    swapped = dict(scores, brown=list(reversed(scores["brown"])))  # aligned with no shard
    with pytest.raises(ValueError, match="not the scores of these documents"):
        release.release(tmp_path, "x", shards["brown"], "m", {}, {},
                        AttributeSource(swapped["brown"], release_edits(cfg, "brown", swapped)))
    assert not (tmp_path / "x").exists()  # nothing left behind


@pytest.mark.skipif(not os.environ.get("SEMISYNTH_TEST_DOLMA"),
                    reason="SEMISYNTH_TEST_DOLMA names no `dolma` command (the Dolma toolkit "
                           "pins an fsspec this stack cannot share: install it in a venv of "
                           "its own, `pip install dolma==1.2.1`)")
def test_the_dolma_mixer_filters_on_the_attributes(run, tmp_path):
    """The README's mixer config, run by the Dolma toolkit's own mixer over a release: it
    finds each part's attributes (documents/ -> attributes/semisynth/) and keeps exactly
    the documents the filter expressions select."""
    path = run[3]["mix50"].path
    config = {"streams": [{
        "name": "low-ppl", "documents": [str(path / "documents" / "*.jsonl.gz")],
        "attributes": ["semisynth"],
        "output": {"path": str(tmp_path / "out" / "documents"), "max_size_in_bytes": 10**9},
        "filter": {"include": ["$.attributes[?(@.semisynth__ppl[0][2] < 30)]"],
                   "exclude": ["$.attributes[?(@.semisynth__edited_tokens[0][2] > 15)]"]}}],
        "processes": 1}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    subprocess.run([os.environ["SEMISYNTH_TEST_DOLMA"], "-c", str(tmp_path / "mix.yaml"), "mix"],
                   check=True, capture_output=True, timeout=300)
    kept = []
    for out in sorted((tmp_path / "out" / "documents").glob("*.gz")):
        with gzip.open(out, "rt") as f:
            kept += [json.loads(line) for line in f]
    rows = [a for p in range(len(run[2]["mix50"])) for a in attribute_rows(path, p)]
    expected = [a["id"] for a in rows if value(a, "ppl") is not None and value(a, "ppl") < 30
                and not value(a, "edited_tokens") > 15]
    assert 0 < len(expected) < len(rows)
    assert [d["id"] for d in kept] == expected
    assert all(d["attributes"]["semisynth__ppl"][0][2] < 30 for d in kept)
