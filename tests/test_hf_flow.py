"""A local Hugging Face dataset through the nightly flow: ingested (bad rows quarantined),
scored, edited, measured, gated and released, its spec in the warehouse and the release
manifest; the release read back with ``datasets.load_dataset``. Real prior, Prefect server,
Dask, DuckDB and Great Expectations; kept small (about a minute on 2 cores)."""

import gzip
import json
from pathlib import Path

import datasets
import pytest
import yaml

from semisynth.tasks.release import verify_release
from semisynth.warehouse import db

pytestmark = pytest.mark.slow

DOCS = 32


@pytest.fixture(scope="module")
def hf_flow(prefect_server, tmp_path_factory, prior_folder, brown_shards):
    """32 Brown documents with a genre column, a null text and a repeated id, saved with
    save_to_disk as a DatasetDict; the reference is its train split, the release candidate
    that ToEdit-edited."""
    home = tmp_path_factory.mktemp("hf-home")
    with gzip.open(brown_shards[0], "rt") as f:
        docs = [json.loads(line) for line in f][:DOCS]
    rows = [{"id": d["id"], "text": d["text"], "genre": d["id"][:2]} for d in docs]
    rows.insert(5, {"id": "null-text", "text": None, "genre": "x"})
    rows.insert(9, {"id": docs[0]["id"], "text": "a repeated id", "genre": "x"})
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(home / "brown-hf")
    config = {
        "name": "hfslice", "data_root": str(home), "seed": 5, "shard_docs": 16,
        "prior": {"model": str(prior_folder), "precision": "float32", "max_tokens": 64},
        "corpora": {
            "brown": {"role": "reference", "hf": {"path": "brown-hf", "split": "train"}},
            "brown_toedit": {"edited_from": "brown", "reference": "brown", "release": True},
        },
        "metrics": {"bootstrap": 20},
        # ToEdit redraws about 0.03% of tokens: on 2k tokens that may be none at all, and
        # this test is about where the documents come from, not how many were edited
        "gate": {"edit_rate_min": 0},
    }
    path = home / "hf.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.flows.nightly import run

    return home, run(str(path)), docs


def test_a_local_dataset_is_ingested_measured_and_released(hf_flow):
    home, result, docs = hf_flow
    assert result["state"] == "COMPLETED", result.get("failures")
    wh = db.warehouse_path(home)
    spec = "hf:brown-hf/train"
    bad = db.query(wh, "SELECT file, line, reason FROM quarantine ORDER BY line")
    assert bad.values.tolist() == [[spec, 6, "text field 'text' is null"],
                                   [spec, 10, f"duplicate id {docs[0]['id']!r}"]]
    brown = db.query(wh, "SELECT * FROM corpora WHERE corpus = 'brown'").iloc[0]
    assert (brown.origin, brown.rows_in, brown.rows_ok, brown.documents) == ("hf", DOCS + 2, DOCS, DOCS)
    assert (brown.dataset_path, brown.dataset_split) == ("brown-hf", "train")
    sources = set(db.query(wh, "SELECT DISTINCT source FROM shards WHERE corpus = 'brown'").source)
    assert sources == {spec}
    measured = db.query(wh, "SELECT DISTINCT corpus, comparison FROM metrics")
    assert {("brown_toedit", "vs_reference"), ("brown", "split_half")} <= set(
        map(tuple, measured.values.tolist()))
    release = Path(result["releases"]["brown_toedit"])
    assert verify_release(release) == []
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["sources"]["datasets"] == {
        "brown": {"path": "brown-hf", "name": None, "split": "train", "revision": None}}
    # the card names the dataset among the sources, as the manifest's lineage records it
    assert manifest["lineage"]["brown"]["hf"]["path"] == "brown-hf"
    assert "- `brown`: Hugging Face dataset `brown-hf/train`" in (release / "README.md").read_text()


def test_the_release_loads_back_with_datasets(hf_flow):
    home, result, docs = hf_flow
    release = Path(result["releases"]["brown_toedit"])
    loaded = datasets.load_dataset("parquet", data_files=str(release / "data" / "*.parquet"),
                                   split="train", cache_dir=str(home / "hf-cache"))
    assert loaded["id"] == [d["id"] for d in docs]  # the dataset's documents, in its order
    released = []  # the same documents as the release's Dolma-layout copy holds them
    for part in sorted((release / "documents").glob("*.jsonl.gz")):
        with gzip.open(part, "rt") as f:
            released += [json.loads(line) for line in f]
    assert [{"id": i, "text": t} for i, t in zip(loaded["id"], loaded["text"], strict=True)] == [
        {"id": d["id"], "text": d["text"]} for d in released]


def test_the_release_loads_with_its_metadata_columns(hf_flow):
    home, result, docs = hf_flow
    release = Path(result["releases"]["brown_toedit"])
    loaded = datasets.load_dataset("parquet", data_dir=str(release), split="train",
                                   cache_dir=str(home / "hf-cache"))
    assert loaded["genre"] == [d["id"][:2] for d in docs]


def test_a_bad_dataset_spec_fails_the_flow_with_exit_2(prefect_server, prior_folder, tmp_path,
                                                        capsys):
    """`semisynth run` on a config whose dataset lacks the split: the flow's ingest refuses
    it, naming the splits there are."""
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(
        tmp_path / "dd")
    config = {"name": "hfbad", "data_root": str(tmp_path),
              "prior": {"model": str(prior_folder), "precision": "float32"},
              "corpora": {"ref": {"role": "reference", "hf": {"path": "dd", "split": "test"}}}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    from semisynth.cli import main as cli

    assert cli(["run", str(path)]) == 2
    assert "error: hf dataset 'dd' has no split 'test'; its splits: train" in capsys.readouterr().err
