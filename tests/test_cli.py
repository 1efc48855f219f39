"""The `semisynth` command on small inputs, with the real prior."""

import json

import pandas as pd
import pytest

from semisynth import documents
from semisynth.cli import main as cli
from semisynth.tasks.prior import default_prior_folder

pytestmark = pytest.mark.slow

DOCS = [
    {"id": "a", "text": "The jury said the election was conducted fairly and the city was thanked."},
    {"id": "b", "text": "One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve."},
    {"id": "c", "text": "Water boils at one hundred degrees Celsius at sea level."},
]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl.gz", ".jsonl"])
def test_edit_writes_one_document_per_input_in_order(tmp_path, prior_folder, suffix, capsys):
    src = tmp_path / "in.jsonl"
    lines = [json.dumps(DOCS[0]), "{broken", json.dumps(DOCS[1]), json.dumps(DOCS[2])]
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / f"out{suffix}"
    code = cli(["edit", str(src), str(out), "--model", str(prior_folder),
                "--precision", "float32", "--max-tokens", "8", "--beta", "8", "--seed", "3"])
    assert code == 0
    got = [r for r in documents.read_records(str(out))]
    assert [r.id for r in got] == ["a", "b", "c"]
    # --max-tokens 8 keeps each document's first 8 tokens, as the official code does
    assert all(len(r.text.split()) <= 8 for r in got)
    captured = capsys.readouterr()
    assert f"{src}:2" in captured.err and "invalid json" in captured.err
    assert "3 documents" in captured.out


def test_edit_is_reproducible_with_the_seed(tmp_path, prior_folder):
    src = tmp_path / "in.jsonl"
    documents.write_documents([{"id": d["id"], "text": d["text"] + " " + d["text"]} for d in DOCS], src)
    outs = []
    for i in range(2):
        out = tmp_path / f"o{i}.parquet"
        assert cli(["edit", str(src), str(out), "--model", str(prior_folder),
                    "--precision", "float32", "--beta", "8", "--seed", "9"]) == 0
        outs.append(pd.read_parquet(out))
    assert outs[0]["text"].tolist() == outs[1]["text"].tolist()
    assert outs[0]["edited_tokens"].sum() > 0


def test_prior_fetch_prints_the_folder_last(assets_root, capsys):
    assert cli(["--data-root", str(assets_root), "prior", "fetch"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == str(default_prior_folder(assets_root))
    assert (default_prior_folder(assets_root) / "model.safetensors").exists()


def test_query_without_a_warehouse_is_a_clear_error(tmp_path, capsys):
    assert cli(["--data-root", str(tmp_path), "query", "SELECT 1"]) == 2
    assert "no warehouse" in capsys.readouterr().err
