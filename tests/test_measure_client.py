"""measure() on a Dask cluster: the flow's metrics stage counts each equal-budget sample's
n-grams by map-reduce over the score files on the workers, with the same metric rows as
without a cluster and as counting in memory."""

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, LocalCluster, get_task_stream

from semisynth.config import MetricsConfig
from semisynth.quality import measure
from semisynth.tasks.score import SCORE_SCHEMA


def write_scores(path, rng, n_docs, vocab, a):
    """A score file as score_shard writes it (its schema), of synthetic documents."""
    docs = [rng.zipf(a, int(rng.integers(0, 300))) % vocab for _ in range(n_docs)]
    lengths = [len(d) for d in docs]
    nll = rng.gamma(2.0, 1.5, n_docs) * np.maximum(lengths, 1)
    columns = {
        "id": [f"{path.stem}-{i}" for i in range(n_docs)],
        "doc_hash": [f"{path.stem}{i:04d}" for i in range(n_docs)],
        "scored_tokens": lengths, "nll_sum": nll, "ppl": np.exp(nll / np.maximum(lengths, 1)),
        "revised_tokens": [0] * n_docs, "edited_tokens": rng.integers(0, 4, n_docs),
        "dropped_tokens": [0] * n_docs, "token_ids": [d.tolist() for d in docs],
        "edited_text": [""] * n_docs, "truncated": [False] * n_docs,
    }
    pq.write_table(pa.table(columns, schema=SCORE_SCHEMA), path)
    return path


@pytest.fixture(scope="module")
def score_files(tmp_path_factory):
    folder, rng = tmp_path_factory.mktemp("scores"), np.random.default_rng(17)
    return {"ref": [write_scores(folder / f"ref{i}.parquet", rng, 60, 2000, 1.3) for i in range(4)],
            "ed": [write_scores(folder / f"ed{i}.parquet", rng, 45, 2000, 1.25) for i in range(3)],
            "syn": [write_scores(folder / f"syn{i}.parquet", rng, 70, 300, 1.5) for i in range(2)]}


def in_memory(paths):
    """The documents of score files, read whole into memory."""
    table = pa.concat_tables(pq.read_table(p) for p in paths)
    return measure.Scored([np.asarray(t, np.int64) for t in table.column("token_ids").to_pylist()],
                          table.column("ppl").to_numpy(),
                          int(pa.compute.sum(table.column("scored_tokens")).as_py()),
                          int(pa.compute.sum(table.column("edited_tokens")).as_py()),
                          hashes=np.asarray(table.column("doc_hash").to_pylist(), dtype=object))


def test_measure_on_a_dask_cluster_gives_the_same_rows(score_files):
    corpora = {name: measure.ScoreFiles(paths) for name, paths in score_files.items()}
    memory_corpora = {name: in_memory(paths) for name, paths in score_files.items()}
    pairs, edited = {"ed": "ref", "syn": "ref"}, {"ed": "ref"}
    cfg = MetricsConfig(bootstrap=30)
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                       dashboard_address=":0") as cluster,
          Client(cluster) as client):
        for seed, budget in ((1, None), (4, 120)):  # the largest budget, and a few documents
            local = measure.measure(corpora, pairs, cfg, seed, budget, edited)
            memory = measure.measure(memory_corpora, pairs, cfg, seed, budget, edited)
            with get_task_stream(client) as stream:
                remote = measure.measure(corpora, pairs, cfg, seed, budget, edited, client=client)
            ran = [str(t["key"]) for t in stream.data]
            # one yardstick and two comparisons, two samples each: their maps and merges
            assert sum("count_parts" in k for k in ran) >= 6
            assert any("merge_counts" in k for k in ran)
            assert not any(isinstance(r["value"], float) and math.isnan(r["value"])
                           for r in local.rows)
            assert len(local.rows) == 3 * 25 + 1  # 25 metrics per comparison, plus edit_rate
            assert remote.budget == local.budget == memory.budget
            assert remote.rows == local.rows
            assert memory.rows == local.rows
            for name, shown in local.shown.items():  # what the tables and plots show
                assert shown.ppl.tolist() == remote.shown[name].ppl.tolist()
                for n, (types, counts, total) in shown.top.items():
                    assert types.tolist() == memory.shown[name].top[n][0].tolist()
                    assert (counts.tolist(), total) == (remote.shown[name].top[n][1].tolist(),
                                                        remote.shown[name].top[n][2])
        with pytest.raises(ValueError, match="score files"):
            measure.measure(memory_corpora, pairs, cfg, 1, client=client)
