"""Every field of an input document survives the nightly flow: Dolma-layout JSON lines
(nested ``metadata``, keys that differ from row to row, a field whose type differs) and a
Parquet file with typed columns go through ingest, score+edit, an edited corpus and a
mixture into releases, on the real prior, a real Prefect server and Dask cluster."""

import datetime as dt
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from semisynth import documents, fields
from semisynth.warehouse import db

pytestmark = pytest.mark.slow

TYPES = {"n": pa.int16(), "when": pa.timestamp("us", tz="UTC"), "tags": pa.list_(pa.string()),
         "info": pa.struct([("lang", pa.string()), ("score", pa.float32())])}
# the gate is not under test here: bounds no corpus fails, so that both corpora release
OPEN_GATE = {"ppl_low_frac_max_excess": 1.0, "ppl_tail_frac_max_deficit": 1.0,
             "ppl_ks_max_excess": 1.0, "ppl_w1_max_excess": 100.0, "distinct_min_ratio": 0.0,
             "top1pct_mass_max_ratio": 100.0, "ref_coverage_min_ratio": 0.0,
             "js_max_excess": 1.0, "edit_rate_min": 0.0, "edit_rate_max": 1.0}


def brown_texts(brown_shards, n):
    texts = []
    for path in brown_shards:
        for rec in documents.read_records(str(path)):
            texts.append(" ".join(rec.text.split()[:80]))
            if len(texts) == n:
                return texts
    raise AssertionError(f"fewer than {n} Brown documents")


def input_documents(folder: Path, texts: list[str]) -> dict[str, dict]:
    """The inputs, written to ``folder``; returns every input document by id."""
    dolma = [
        [{"id": f"w{i}", "text": texts[i], "source": "common-crawl", "added": "2024-01-02",
          "created": f"2019-05-{i + 1:02d}", "metadata": {"url": f"https://a.example/{i}",
                                                            "language": "en",
                                                            "scores": [0.5, i / 8]}}
         for i in range(8)],
        # another file: other keys in metadata, and `extra` of a different type each row
        [{"id": f"w{i}", "text": texts[i], "source": "wiki", "added": "2024-01-03",
          "metadata": {"url": f"https://b.example/{i}", "license": {"name": "CC-BY",
                                                                     "version": i}},
          "extra": [i, str(i), [i], {"i": i}][i % 4]}
         for i in range(8, 16)]]
    for k, docs in enumerate(dolma):
        documents.write_documents(docs, folder / "dolma" / f"part-{k}.jsonl.gz")
    when = dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC)
    typed = {"id": [f"p{i}" for i in range(8)], "text": texts[16:24],
             "n": pa.array(list(range(-4, 4)), TYPES["n"]),
             "when": pa.array([when + dt.timedelta(hours=i) if i % 3 else None for i in range(8)],
                              TYPES["when"]),
             "tags": pa.array([["a", str(i)] if i % 2 else [] for i in range(8)], TYPES["tags"]),
             "info": pa.array([{"lang": "en", "score": i / 4} if i != 5 else None
                               for i in range(8)], TYPES["info"])}
    pq.write_table(pa.table(typed), folder / "typed.parquet")
    other = [{"id": f"o{i}", "text": texts[24 + i], "genre": "news", "year": 1961 + i}
             for i in range(12)]
    documents.write_documents(other, folder / "other.jsonl")
    by_id = {d["id"]: d for docs in [*dolma, other] for d in docs}
    by_id.update({r["id"]: r for r in pq.read_table(folder / "typed.parquet").to_pylist()})
    return by_id


@pytest.fixture(scope="module")
def fields_run(prefect_server, tmp_path_factory, prior_folder, brown_shards):
    home = tmp_path_factory.mktemp("fields")
    inputs = input_documents(home, brown_texts(brown_shards, 36))
    config = {
        "name": "fields", "data_root": str(home), "seed": 3, "shard_docs": 4,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 48},
        "edit": {"beta": 8.0},
        "corpora": {
            "human": {"role": "reference",
                      "paths": [str(home / "dolma" / "*.jsonl.gz"), str(home / "typed.parquet")]},
            "human_toedit": {"edited_from": "human", "reference": "human", "release": True},
            "other": {"role": "monitored", "paths": [str(home / "other.jsonl")],
                      "reference": "human"},
            "mixed": {"mix": {"human": 0.5, "other": 0.5}, "reference": "human",
                      "release": True},
        },
        "metrics": {"bootstrap": 20},
        "gate": OPEN_GATE,
    }
    path = home / "fields.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.flows.nightly import run

    result = run(str(path))
    assert result["state"] == "COMPLETED", result.get("failures")
    return home, inputs, result


def release_parts(folder: Path) -> tuple[list[pa.Table], list[dict]]:
    """(each Parquet part, every JSON lines document) of the release at ``folder``."""
    tables = [pq.read_table(p) for p in sorted((folder / "data").glob("*.parquet"))]
    docs = []
    for part in sorted((folder / "documents").glob("*.jsonl.gz")):
        with gzip.open(part, "rt", encoding="utf-8") as f:
            docs += [json.loads(line) for line in f]
    return tables, docs


def assert_same(released, given, where):
    """``released`` holds ``given``: equal, but for keys a document lacked and other
    documents of the release have, which are null."""
    if isinstance(given, dict):
        assert isinstance(released, dict), where
        for key, value in released.items():
            if key not in given:
                assert value is None, f"{where}.{key}: {value!r} where the input had none"
        for key, value in given.items():
            assert key in released, f"{where}: key {key!r} lost"
            assert_same(released[key], value, f"{where}.{key}")
    else:
        assert released == given, where


BOOKKEEPING = {"doc_hash", "line", "semisynth_source_file", "semisynth_line"}


def test_the_edited_release_keeps_every_input_field(fields_run):
    home, inputs, result = fields_run
    tables, docs = release_parts(Path(result["releases"]["human_toedit"]))
    schema = tables[0].schema
    assert all(t.schema == schema for t in tables)  # one schema across the parts
    assert not BOOKKEEPING & set(schema.names)
    assert sorted(d["id"] for d in docs) == sorted(i for i in inputs if not i.startswith("o"))
    edited = {}  # the edited text of each document: the human shards' score files
    for shard in (home / "shards" / "human").glob("*.parquet"):
        [score] = (home / "scores").glob(f"*/{shard.name}")
        edited.update(zip(*pq.read_table(score, columns=["id", "edited_text"]).to_pydict()
                          .values(), strict=True))
    for doc in docs:  # JSON lines: every key and value as it went in, nested ones too
        given = inputs[doc["id"]]
        assert doc["text"] == edited[doc["id"]] != given["text"]
        assert_same({k: v for k, v in doc.items() if k != "text"},
                    {k: (v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v)
                     for k, v in given.items() if k != "text"}, doc["id"])
    # Dolma's own `source` is the input's, not where the row was read
    assert {d["source"] for d in docs if d["id"].startswith("w")} == {"common-crawl", "wiki"}
    # Parquet: the typed columns keep their Arrow types, every value equal
    for name, t in TYPES.items():
        assert schema.field(name).type == t, name
    rows = {r["id"]: r for t in tables for r in t.to_pylist()}
    for doc_id, given in inputs.items():
        if doc_id.startswith("p"):
            assert_same({k: v for k, v in rows[doc_id].items() if k != "text"},
                        {k: v for k, v in given.items() if k != "text"}, doc_id)
    # `extra` had four types: JSON text in Parquet (marked so), its values in JSON lines
    assert fields.is_json(schema.field("extra"))
    assert {json.loads(rows[f"w{i}"]["extra"]) == inputs[f"w{i}"]["extra"]
            for i in range(8, 16)} == {True}
    assert schema.field("metadata").type.field("license").type == pa.struct(
        [("name", pa.string()), ("version", pa.int64())])


def test_the_mixtures_documents_keep_their_fields_and_say_their_component(fields_run):
    home, inputs, result = fields_run
    tables, docs = release_parts(Path(result["releases"]["mixed"]))
    assert all(t.schema == tables[0].schema for t in tables)
    assert not BOOKKEEPING & set(tables[0].schema.names)
    components = {d["semisynth_component"] for d in docs}
    assert components == {"human", "other"}
    for doc in docs:
        given = inputs[doc["id"]]
        assert doc["semisynth_component"] == ("other" if doc["id"].startswith("o") else "human")
        assert_same({k: v for k, v in doc.items() if k != "semisynth_component"},
                    {k: (v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v)
                     for k, v in given.items()}, doc["id"])
    for name, t in TYPES.items():
        assert tables[0].schema.field(name).type == t, name


def test_nothing_was_quarantined_for_its_fields(fields_run):
    home, _, result = fields_run
    quarantined = db.query(db.warehouse_path(home), "SELECT count(*) AS n FROM quarantine "
                           "WHERE run_id = ?", [result["run_id"]])
    assert int(quarantined.n.iloc[0]) == 0
