"""Known-answer tests for the metrics of semisynth.quality (ngrams, ngram_metrics,
ppl_metrics, bootstrap, comparison); expected values computed by hand, or by the plain
implementations of tests/oracles.py."""

import math
import time

import numpy as np
import pytest
from oracles import (
    distinct_n,
    js_divergence,
    ngram_counts,
    ngram_keys,
    rank_frequency,
    ref_coverage,
)

from semisynth.quality import ngrams
from semisynth.quality.bootstrap import bootstrap_ci, coverage_of_covered, covered_types_by_doc
from semisynth.quality.comparison import compare_corpora, split_half_yardstick
from semisynth.quality.ngram_metrics import (
    NGRAM_METRICS,
    frequent_ref_types,
    hash_buckets,
    metrics_of_counts,
    ngram_metrics,
    shard_ngram_metrics,
    top1pct_mass,
)
from semisynth.quality.ngrams import (
    CountReducer,
    DocumentFiles,
    SamplePart,
    count_ngrams,
    count_part,
    count_sample,
    count_stream,
    merge_counts,
    reduce_counts,
    top_of_table,
    unpack_ngram,
    whole_files,
)
from semisynth.quality.ppl_metrics import log_bins, ppl_histogram, ppl_low_frac, ppl_metrics
from semisynth.quality.sample import InMemory, Stream


def docs(*lists):
    return [np.array(x, dtype=np.int64) for x in lists]


def key(*tokens):
    k = 0
    for t in tokens:
        k = (k << 21) | t
    return k


# --- n-grams ------------------------------------------------------------------

def test_ngram_keys_never_cross_documents():
    corpus = docs([1, 2, 3], [4, 5])
    assert ngram_keys(corpus, 1).tolist() == [1, 2, 3, 4, 5]
    assert ngram_keys(corpus, 2).tolist() == [key(1, 2), key(2, 3), key(4, 5)]  # no (3, 4)
    assert ngram_keys(corpus, 3).tolist() == [key(1, 2, 3)]
    assert ngram_keys(docs([1, 2], [3], [], [4, 5, 6]), 3).tolist() == [key(4, 5, 6)]
    assert ngram_keys(docs([1], [2]), 2).size == 0
    assert ngram_keys([], 2).size == 0


def test_ngram_keys_match_per_document_counting():
    rng = np.random.default_rng(1)
    corpus = [rng.integers(0, 2**21, rng.integers(0, 8)) for _ in range(50)]
    for n in (1, 2, 3):
        per_doc = [key(*d[i : i + n]) for d in corpus for i in range(len(d) - n + 1)]
        keys = ngram_keys(corpus, n)
        assert keys.dtype == np.int64
        assert keys.tolist() == per_doc


def test_packing_is_exact_and_unpack_inverts_it():
    top = 2**21 - 1
    grams = [(0,), (top,), (top, 0), (5, top), (top, top, top), (1, 0, 2), (0, 0, 1)]
    for g in grams:
        k = ngram_keys([np.array(g)], len(g))
        assert k.tolist() == [key(*g)] and k[0] >= 0
        assert unpack_ngram(k[0], len(g)) == g
    with pytest.raises(ValueError):
        ngram_keys([np.array([2**21])], 1)
    with pytest.raises(ValueError):
        ngram_keys([np.array([1, 2, 3, 4])], 4)


def test_distinct_n_and_counts():
    keys = ngram_keys(docs([1, 2, 2, 3]), 1)
    assert distinct_n(keys) == 3 / 4
    uniq, counts = ngram_counts(keys)
    assert uniq.tolist() == [1, 2, 3] and counts.tolist() == [1, 2, 1]
    # bigrams of [1,2,1,2] + [1,2]: (1,2) (2,1) (1,2) (1,2) -> 2 types / 4
    assert distinct_n(ngram_keys(docs([1, 2, 1, 2], [1, 2]), 2)) == 2 / 4
    assert distinct_n(np.zeros(0, np.int64)) == 0.0


def test_top1pct_mass():
    # 150 types -> ceil(1.5) = 2 top types: (50 + 30) / (50 + 30 + 148 * 1)
    counts = np.array([1] * 70 + [50] + [1] * 78 + [30])
    assert top1pct_mass(counts) == pytest.approx(80 / 228)
    assert top1pct_mass(np.array([4] + [1] * 99)) == pytest.approx(4 / 103)  # 100 types -> 1
    assert top1pct_mass(np.array([4, 3] + [1] * 99)) == pytest.approx(7 / 106)  # 101 -> 2
    assert top1pct_mass(np.array([3, 1])) == pytest.approx(3 / 4)
    assert top1pct_mass(np.array([], dtype=np.int64)) == 0.0


def test_ref_coverage():
    ref = np.array([1, 1, 2, 2, 3, 4, 4])  # types with count >= 2: {1, 2, 4}
    assert ref_coverage(np.array([2, 3, 5, 2]), ref) == pytest.approx(1 / 3)
    assert ref_coverage(np.array([4, 1, 2]), ref) == 1.0
    assert ref_coverage(np.array([], dtype=np.int64), ref) == 0.0
    assert math.isnan(ref_coverage(np.array([1]), np.array([1, 2, 3])))  # no type twice


def test_js_divergence_known_answers():
    a, b = key(1, 2), key(3, 4)
    assert hash_buckets(np.array([a]), 2**20)[0] != hash_buckets(np.array([b]), 2**20)[0]
    same = np.array([a, a, b])
    assert js_divergence(same, same[::-1].copy()) == 0.0
    assert js_divergence(np.array([a, a]), np.array([b])) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2), m = (3/4, 1/4)
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5 * math.log2(2))
    assert js_divergence(np.array([a]), np.array([a, b])) == pytest.approx(expected)
    assert math.isnan(js_divergence(np.array([], dtype=np.int64), np.array([a])))


def test_hash_buckets_in_range_and_fixed():
    keys = np.arange(0, 2**63 - 1, 2**50, dtype=np.int64)
    for buckets in (1, 7, 2**20, 2**32):
        h = hash_buckets(keys, buckets)
        assert h.min() >= 0 and h.max() < buckets
    assert hash_buckets(keys, 1000).tolist() == hash_buckets(keys.copy(), 1000).tolist()


def test_rank_frequency():
    keys = np.array([5, 9, 5, 3, 7, 3, 9, 5])  # 5:3, 3:2, 9:2, 7:1; ties by smaller key
    top, counts = rank_frequency(keys)
    assert top.tolist() == [5, 3, 9, 7] and counts.tolist() == [3, 2, 2, 1]
    top, counts = rank_frequency(keys, top=2)
    assert top.tolist() == [5, 3] and counts.tolist() == [3, 2]


def test_top_of_table_is_the_rank_frequency_of_the_keys():
    keys = np.random.default_rng(6).zipf(1.3, 5000) % 300
    for top in (1, 20, 1000):
        got, want = top_of_table(*ngram_counts(keys), top), rank_frequency(keys, top)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()


def test_ngram_metrics_known_answers():
    cand = docs([1, 2, 1, 2])
    ref = docs([1, 2, 3], [1, 2, 3])
    out = ngram_metrics(cand, ref, orders=(1, 2))
    assert out["distinct_1"] == 2 / 4
    assert out["distinct_2"] == 2 / 3  # (1,2) (2,1) (1,2)
    assert out["top1pct_mass_1"] == 2 / 4  # 2 types -> top 1 type holds 2 of 4
    assert out["top1pct_mass_2"] == 2 / 3
    assert out["ref_coverage_1"] == pytest.approx(2 / 3)  # ref {1,2,3} twice each; cand has 1,2
    assert out["ref_coverage_2"] == pytest.approx(1 / 2)  # ref {(1,2),(2,3)}; cand has (1,2)
    assert 0.0 < out["js_1"] < 1.0 and 0.0 < out["js_2"] < 1.0
    assert set(out) == {f"{m}_{n}" for m in NGRAM_METRICS for n in (1, 2)}


def test_ngram_metrics_agree_with_the_single_metric_functions():
    rng = np.random.default_rng(5)
    cand = [rng.zipf(1.5, rng.integers(1, 50)) % 100 for _ in range(60)]
    ref = [rng.zipf(1.5, rng.integers(1, 50)) % 100 for _ in range(60)]
    out = ngram_metrics(cand, ref, buckets=1024)
    for n in (1, 2, 3):
        ck, rk = ngram_keys(cand, n), ngram_keys(ref, n)
        assert out[f"distinct_{n}"] == pytest.approx(distinct_n(ck))
        assert out[f"top1pct_mass_{n}"] == pytest.approx(top1pct_mass(ngram_counts(ck)[1]))
        assert out[f"ref_coverage_{n}"] == pytest.approx(ref_coverage(ck, rk))
        # per-occurrence hashing, written out, gives the same divergence
        p = np.bincount(hash_buckets(ck, 1024), minlength=1024) / ck.size
        q = np.bincount(hash_buckets(rk, 1024), minlength=1024) / rk.size
        m = (p + q) / 2
        js = sum(0.5 * x * math.log2(x / y) for d in (p, q) for x, y in zip(d, m, strict=True) if x > 0)
        assert out[f"js_{n}"] == pytest.approx(js)
        assert js_divergence(ck, rk, 1024) == pytest.approx(js)
        assert abs(out[f"js_{n}"] - js_divergence(ck, rk, 1024)) <= 1e-12  # scipy's, squared


def test_js_of_proportional_corpora_is_zero_not_nan():
    # the same distribution at three times the counts: rounding leaves the divergence
    # within a hair of 0, on either side; it must come out 0, never NaN
    rng = np.random.default_rng(11)
    ref = [rng.zipf(1.3, rng.integers(1, 60)) % 2000 for _ in range(300)]
    out = ngram_metrics(ref * 3, ref, buckets=4096)
    for n in (1, 2, 3):
        assert 0.0 <= out[f"js_{n}"] <= 1e-12


def test_ngram_metrics_on_a_million_tokens_runs():
    rng = np.random.default_rng(0)
    tokens = rng.zipf(1.2, 1_000_000) % 50_000  # zipfy, like text
    corpus = np.split(tokens, np.arange(1000, 1_000_000, 1000))
    ref = np.split(rng.zipf(1.2, 1_000_000) % 50_000, np.arange(1000, 1_000_000, 1000))
    start = time.perf_counter()
    out = ngram_metrics(corpus, ref)
    print(f"ngram_metrics, 1e6 + 1e6 tokens, n=1..3: {time.perf_counter() - start:.2f}s")
    assert len(out) == 12


# --- count tables, map-reduce over shards ----------------------------------------

def as_dict(tbl, n):
    types, counts = tbl
    return {unpack_ngram(int(t), n): int(c) for t, c in zip(types, counts, strict=True)}


def test_count_tables_known_answers():
    counts = count_ngrams(docs([1, 2, 3, 1, 2], [1, 2]))
    assert (counts.order, counts.tokens, counts.documents) == (3, 7, 2)
    assert as_dict(counts.top, 3) == {(1, 2, 3): 1, (2, 3, 1): 1, (3, 1, 2): 1}
    # each document's last n-gram: the only ones that are not the prefix of an (n+1)-gram
    assert as_dict(counts.tails[1], 1) == {(2,): 2}
    assert as_dict(counts.tails[2], 2) == {(1, 2): 2}
    assert as_dict(counts.table(2), 2) == {(1, 2): 3, (2, 3): 1, (3, 1): 1}
    assert as_dict(counts.table(1), 1) == {(1,): 3, (2,): 3, (3,): 1}
    tables = counts.tables()
    assert sorted(tables) == [1, 2, 3] and as_dict(tables[3], 3) == as_dict(counts.top, 3)
    for n in (1, 2, 3):
        assert tables[n][0].dtype == np.int64 and tables[n][1].dtype == np.int64
        assert np.all(np.diff(tables[n][0]) > 0)  # sorted, unique
    # documents shorter than the order give none of it, and never a tail of it
    short = count_ngrams(docs([5], [], [6, 7]))
    assert as_dict(short.table(3), 3) == {} and as_dict(short.table(2), 2) == {(6, 7): 1}
    assert as_dict(short.table(1), 1) == {(5,): 1, (6,): 1, (7,): 1}
    assert count_ngrams(docs([1, 2]), orders=(1, 2)).order == 2
    assert count_ngrams([], orders=(1, 2, 3)).table(1)[0].size == 0


def test_merged_shards_equal_the_one_pass_counts():
    a, b = docs([1, 2, 3, 1, 2]), docs([1, 2], [3, 1, 2, 3])
    merged = merge_counts([count_ngrams(a), count_ngrams(b)])
    one = count_ngrams(a + b)
    # by hand: trigrams (1,2,3) x2, (2,3,1), (3,1,2) x2; bigrams (1,2) x4, (2,3) x2, (3,1) x2
    assert as_dict(merged.table(3), 3) == {(1, 2, 3): 2, (2, 3, 1): 1, (3, 1, 2): 2}
    assert as_dict(merged.table(2), 2) == {(1, 2): 4, (2, 3): 2, (3, 1): 2}
    assert as_dict(merged.table(1), 1) == {(1,): 4, (2,): 4, (3,): 3}
    assert (merged.tokens, merged.documents) == (11, 3)
    for n in (1, 2, 3):
        assert as_dict(merged.table(n), n) == as_dict(one.table(n), n)


@pytest.mark.parametrize("vocab", [3, 1000, 30_000, 2**21])  # dense uint32, LSD radix, int64 paths
def test_count_tables_equal_np_unique_of_the_keys(vocab):
    rng = np.random.default_rng(vocab)
    corpus = [rng.integers(0, vocab, rng.integers(0, 300)).astype(rng.choice([np.int32, np.int64, np.uint64]))
              for _ in range(1200 if vocab == 2**21 else 400)]
    counts = count_ngrams(corpus)
    if vocab == 2**21:
        assert counts.table(1)[0].size >= 2**16  # too many distinct tokens for the short keys
    for n in (1, 2, 3):
        types, freq = np.unique(ngram_keys(corpus, n), return_counts=True)
        assert counts.table(n)[0].tolist() == types.tolist()
        assert counts.table(n)[1].tolist() == freq.tolist()


def test_reduce_of_random_shards_equals_one_pass(monkeypatch):
    monkeypatch.setattr(ngrams, "MERGE_PIECE", 64)  # make every merge cut the key space in pieces
    rng = np.random.default_rng(3)
    corpus = [rng.zipf(1.3, rng.integers(0, 60)) % 500 for _ in range(300)]
    one = count_ngrams(corpus)
    cuts = np.sort(rng.integers(0, len(corpus) + 1, 12))  # some shards empty
    shards = [corpus[lo:hi] for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(corpus)], strict=True)]
    parts = [count_ngrams(s) for s in shards]
    reducer = CountReducer()
    for part in parts:
        reducer.add(part)
        waiting = sum(p.entries for p in reducer._waiting)
        assert waiting <= max(reducer._total.entries, part.entries)  # memory stays bounded
    for merged in (merge_counts(parts), reducer.result(), reduce_counts(iter(parts))):
        assert (merged.tokens, merged.documents) == (one.tokens, one.documents)
        for n in (1, 2, 3):
            assert merged.table(n)[0].tolist() == one.table(n)[0].tolist()
            assert merged.table(n)[1].tolist() == one.table(n)[1].tolist()
    assert 1 < reducer.merges < len(parts)
    ref = [rng.zipf(1.3, rng.integers(0, 60)) % 500 for _ in range(300)]
    assert metrics_of_counts(reducer.result(), count_ngrams(ref)) == ngram_metrics(corpus, ref)


def test_metrics_of_counts_known_answers():
    cand = count_ngrams(docs([1, 2, 3, 1, 2], [1, 2]))
    ref = count_ngrams(docs([1, 2, 3], [2, 3, 4], [4, 4]))
    out = metrics_of_counts(cand, ref)
    assert out["distinct_1"] == 3 / 7 and out["distinct_2"] == 3 / 5 and out["distinct_3"] == 1.0
    # at most 100 types: the top 1% is the single most frequent type
    assert out["top1pct_mass_1"] == 3 / 7 and out["top1pct_mass_2"] == 3 / 5
    assert out["top1pct_mass_3"] == 1 / 3
    assert out["ref_coverage_1"] == 2 / 3  # ref types twice or more: 2, 3, 4; cand lacks 4
    assert out["ref_coverage_2"] == 1.0  # only (2,3) is frequent in ref
    assert math.isnan(out["ref_coverage_3"])  # no ref trigram occurs twice
    assert len(set(hash_buckets(np.array([1, 2, 3, 4]), 2**20).tolist())) == 4  # no collisions
    p, q = [3 / 7, 3 / 7, 1 / 7, 0], [1 / 8, 2 / 8, 2 / 8, 3 / 8]  # tokens 1..4
    expected = sum(0.5 * x * math.log2(2 * x / (x + y)) for a, b in ((p, q), (q, p))
                   for x, y in zip(a, b, strict=True) if x > 0)
    assert out["js_1"] == pytest.approx(expected, abs=1e-12)
    again = ngram_metrics(docs([1, 2, 3, 1, 2], [1, 2]), docs([1, 2, 3], [2, 3, 4], [4, 4]))
    assert {k: v for k, v in out.items() if k != "ref_coverage_3"} == {
        k: v for k, v in again.items() if k != "ref_coverage_3"}


def write_score_file(path, corpus, row_group_size=None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = pa.array([np.asarray(d).tolist() for d in corpus], pa.list_(pa.int32()))
    pq.write_table(pa.table({"id": [str(i) for i in range(len(corpus))], "token_ids": ids}), path,
                   row_group_size=row_group_size)
    return path


def test_count_part_reads_a_score_file(tmp_path):
    corpus = docs([1, 2, 3, 1, 2], [], [7], [1, 2, 3, 4, 5, 6])
    path = write_score_file(tmp_path / "s.parquet", corpus, row_group_size=2)  # two chunks
    got, want = count_part(SamplePart(str(path))), count_ngrams(corpus)
    assert (got.tokens, got.documents) == (12, 4)
    for n in (1, 2, 3):
        assert got.table(n)[0].tolist() == want.table(n)[0].tolist()
        assert got.table(n)[1].tolist() == want.table(n)[1].tolist()
    assert count_part(SamplePart(str(path)), orders=(1, 2)).order == 2


def test_shard_ngram_metrics_equal_ngram_metrics(tmp_path):
    rng = np.random.default_rng(8)
    cand = [rng.zipf(1.4, rng.integers(1, 80)) % 3000 for _ in range(200)]
    ref = [rng.zipf(1.4, rng.integers(1, 80)) % 3000 for _ in range(200)]
    cand_paths = [write_score_file(tmp_path / f"c{i}.parquet", cand[i::3]) for i in range(3)]
    ref_paths = [write_score_file(tmp_path / f"r{i}.parquet", ref[i * 50 : (i + 1) * 50]) for i in range(4)]
    # exactly equal: the merged tables are the one-pass tables
    assert shard_ngram_metrics(cand_paths, ref_paths, buckets=4096) == ngram_metrics(cand, ref, buckets=4096)
    assert (shard_ngram_metrics(cand_paths, ref_paths, orders=(2,))
            == ngram_metrics(cand, ref, orders=(2,)))


def test_shard_ngram_metrics_on_a_dask_cluster_equal_local(tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    rng = np.random.default_rng(9)
    cand = [rng.zipf(1.4, rng.integers(1, 80)) % 3000 for _ in range(120)]
    ref = [rng.zipf(1.4, rng.integers(1, 80)) % 3000 for _ in range(120)]
    cand_paths = [write_score_file(tmp_path / f"c{i}.parquet", cand[i::5]) for i in range(5)]
    ref_paths = [write_score_file(tmp_path / f"r{i}.parquet", ref[i::3]) for i in range(3)]
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster,
          Client(cluster) as client, get_task_stream(client) as stream):
        got = shard_ngram_metrics(cand_paths, ref_paths, buckets=4096, client=client)
        tree = count_sample(whole_files(cand_paths), client=client, fan_in=2)  # a deeper tree
    ran = [str(t["key"]) for t in stream.data]  # the map and the reduce ran on the workers
    assert any("count_parts" in k for k in ran) and any("merge_counts" in k for k in ran)
    assert got == shard_ngram_metrics(cand_paths, ref_paths, buckets=4096)
    assert list(got) == list(ngram_metrics(cand, ref, buckets=4096))
    one = count_ngrams(cand)
    for n in (1, 2, 3):
        assert tree.table(n)[0].tolist() == one.table(n)[0].tolist()
        assert tree.table(n)[1].tolist() == one.table(n)[1].tolist()


def test_sample_parts_count_the_truncated_sample(tmp_path):
    rng = np.random.default_rng(12)
    files = [[rng.integers(0, 40, rng.integers(0, 30)) for _ in range(k)] for k in (7, 0, 11, 5)]
    paths = [write_score_file(tmp_path / f"s{i}.parquet", f) for i, f in enumerate(files)]
    corpus = [d for f in files for d in f]
    where = DocumentFiles.of_files(paths, [len(f) for f in files])
    assert where.files.tolist() == [0] * 7 + [2] * 11 + [3] * 5
    assert where.rows.tolist() == list(range(7)) + list(range(11)) + list(range(5))
    for budget, seed in ((1, 0), (60, 1), (200, 2), (sum(map(len, corpus)), 3)):
        drawn = InMemory(corpus, np.ones(len(corpus))).scan({"s": Stream(seed)}, None).samples["s"]
        chosen, last = drawn.to_budget(budget)
        idx = chosen.index
        sample = [corpus[i] for i in idx[:-1]] + [corpus[idx[-1]][:last]]
        parts = where.sample_parts(idx, last)
        assert sum(p.last_tokens is not None for p in parts) == 1
        per_file = np.unique(where.files[idx], return_counts=True)[1]
        assert sorted(len(p.rows) for p in parts) == sorted(per_file.tolist())  # a part per file
        got, want = count_sample(parts), count_ngrams(sample)
        assert (got.tokens, got.documents) == (budget, len(idx))
        for n in (1, 2, 3):
            assert got.table(n)[0].tolist() == want.table(n)[0].tolist()
            assert got.table(n)[1].tolist() == want.table(n)[1].tolist()
    # a subset keeps each document's place: document j of the subset is document idx[j]
    sub = where.take([20, 3, 9])
    assert sub.files.tolist() == [3, 0, 2] and sub.rows.tolist() == [2, 3, 2]
    with pytest.raises(ValueError, match="tokens"):
        count_part(SamplePart(str(paths[0]), np.array([0]), len(files[0][0]) + 1))
    with pytest.raises(ValueError, match="rows"):
        count_part(SamplePart(str(paths[0]), np.array([7])))
    with pytest.raises(ValueError, match="no parts"):
        count_sample([])


def test_compare_counts_from_files_as_in_memory(tmp_path):
    cand_docs, cand_ppl = corpus(20, n_docs=60)
    ref_docs, ref_ppl = corpus(21, n_docs=70)
    cand_paths = [write_score_file(tmp_path / f"c{i}.parquet", cand_docs[i * 20 : (i + 1) * 20]) for i in range(3)]
    ref_paths = [write_score_file(tmp_path / f"r{i}.parquet", ref_docs[i * 35 : (i + 1) * 35]) for i in range(2)]
    cand_files = DocumentFiles.of_files(cand_paths, [20] * 3)
    ref_files = DocumentFiles.of_files(ref_paths, [35] * 2)
    cand, ref = InMemory(cand_docs, cand_ppl), InMemory(ref_docs, ref_ppl)
    cand_f = InMemory(cand_docs, cand_ppl, files=cand_files)
    ref_f = InMemory(ref_docs, ref_ppl, files=ref_files)
    for budget in (40, 1500):
        memory = compare_corpora(cand, ref, budget, seed=4, bootstrap=20)
        assert compare_corpora(cand_f, ref_f, budget, seed=4, bootstrap=20) == memory
    half = split_half_yardstick(ref, 1000, seed=2, bootstrap=20)
    assert split_half_yardstick(ref_f, 1000, seed=2, bootstrap=20) == half
    with pytest.raises(ValueError, match="score files"):
        compare_corpora(cand, ref, 100, seed=0, client=object())
    with pytest.raises(ValueError, match="in its files"):
        InMemory(cand_docs, cand_ppl, files=ref_files)


def test_count_tables_reject_bad_input():
    with pytest.raises(ValueError, match="orders"):
        count_ngrams(docs([1, 2]), orders=(4,))
    with pytest.raises(ValueError):
        count_ngrams(docs([2**21]))
    with pytest.raises(ValueError, match="offsets"):
        count_stream(np.array([1, 2, 3]), np.array([0, 2]))
    with pytest.raises(ValueError, match="orders"):
        merge_counts([count_ngrams(docs([1, 2])), count_ngrams(docs([1, 2]), orders=(1, 2))])
    with pytest.raises(ValueError, match="orders"):
        count_ngrams(docs([1, 2]), orders=(1, 2)).table(3)


# --- perplexity ---------------------------------------------------------------

def test_ppl_metrics_known_answers():
    cand = np.arange(1, 102, dtype=float)  # 101 values: quantile q sits at index 100 q exactly
    ref = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    out = ppl_metrics(cand, ref)
    expected_q = {"ppl_q01": 2, "ppl_q05": 6, "ppl_q10": 11, "ppl_q25": 26, "ppl_q50": 51,
                  "ppl_q75": 76, "ppl_q90": 91, "ppl_q95": 96, "ppl_q99": 100}
    for name, value in expected_q.items():
        assert out[name] == pytest.approx(value)
    assert out["ppl_low_frac"] == pytest.approx(2 / 101)  # ref q25 = 2: candidates 1, 2
    assert out["ppl_tail_frac"] == pytest.approx(97 / 101)  # ref q90 = 4.6: candidates 5..101
    small = ppl_metrics(np.array([1.0, 2.0, 3.0, 10.0]), ref)
    assert small["ppl_low_frac"] == 2 / 4 and small["ppl_tail_frac"] == 1 / 4


def test_ppl_ks_and_w1_known_answers():
    e = math.e
    out = ppl_metrics(np.array([1.0, e]), np.array([e, e**2]))  # logs [0,1] vs [1,2]
    assert out["ppl_w1"] == pytest.approx(1.0)
    assert out["ppl_ks"] == pytest.approx(0.5)
    out = ppl_metrics(np.array([1.0, 2.0]), np.array([10.0, 20.0]))
    assert out["ppl_ks"] == pytest.approx(1.0)
    assert out["ppl_w1"] == pytest.approx(math.log(10))


def test_ppl_of_reference_against_itself():
    ref = np.random.default_rng(0).lognormal(3.0, 0.5, 10_001)
    out = ppl_metrics(ref, ref)
    assert out["ppl_low_frac"] == pytest.approx(0.25, abs=1e-3)
    assert out["ppl_tail_frac"] == pytest.approx(0.10, abs=1e-3)
    assert out["ppl_ks"] == 0.0 and out["ppl_w1"] == 0.0


def test_log_bins_and_histogram():
    bins = log_bins([10.0, 1.0, 100.0, np.inf, 0.0], num=2)
    assert bins.tolist() == pytest.approx([1.0, 10.0, 100.0])
    rows = ppl_histogram([2.0, 5.0, 50.0, 100.0], bins)
    assert [r["documents"] for r in rows] == [2, 2]  # last bin closed: 100 counts
    assert [r["bin_low"] for r in rows] == pytest.approx([1.0, 10.0])
    assert [r["bin_high"] for r in rows] == pytest.approx([10.0, 100.0])
    assert len(log_bins(np.full(5, 7.0), num=40)) == 41  # one value still gives 40 bins


# --- bootstrap and comparison -----------------------------------------------

def test_bootstrap_ci_contains_estimate_and_is_reproducible():
    rng = np.random.default_rng(0)
    ref, cand = rng.lognormal(3, 0.5, 400), rng.lognormal(2.8, 0.5, 300)
    point = ppl_low_frac(cand, ref)
    low, high = bootstrap_ci(ppl_low_frac, cand, ref, reps=200, seed=5)
    assert low <= point <= high and low < high
    assert bootstrap_ci(ppl_low_frac, cand, ref, reps=200, seed=5) == (low, high)
    assert bootstrap_ci(ppl_low_frac, cand, ref, reps=200, seed=6) != (low, high)


def test_bootstrap_ci_known_answer_is_the_binomial_interval():
    # 30 of 100 candidate documents lie below the reference's 25th percentile: a resample's
    # ppl_low_frac is Binomial(100, 0.3) / 100, whose 2.5% and 97.5% quantiles are 21 and 39
    ref = np.arange(1, 101, dtype=float)
    cand = np.concatenate([np.full(30, 10.0), np.full(70, 50.0)])
    assert ppl_low_frac(cand, ref) == 0.3
    low, high = bootstrap_ci(ppl_low_frac, cand, ref, reps=20_000, seed=0)
    assert (low, high) == pytest.approx((0.21, 0.39), abs=0.005)
    # debias shifts the interval by the estimate minus the replicates' median (0.30 - 0.30)
    assert bootstrap_ci(ppl_low_frac, cand, ref, reps=20_000, seed=0, debias=True) == \
        pytest.approx((low, high), abs=0.005)


def test_bootstrap_ci_of_a_constant_is_that_constant():
    low, high = bootstrap_ci(lambda c, r: float(np.mean(c)), np.full(10, 3.0), None)
    assert (low, high) == (3.0, 3.0)


def test_fast_coverage_bootstrap_equals_the_direct_one():
    rng = np.random.default_rng(2)
    cand = [rng.integers(0, 30, rng.integers(1, 40)) for _ in range(40)]
    ref = [rng.integers(0, 30, rng.integers(1, 40)) for _ in range(40)]
    ref_keys = ngram_keys(ref, 2)

    def direct(sample, _):
        return ref_coverage(ngram_keys(sample, 2), ref_keys)

    per_doc, n_types = covered_types_by_doc(cand, frequent_ref_types(*ngram_counts(ref_keys)), 2)
    assert coverage_of_covered(per_doc, n_types) == pytest.approx(direct(cand, None))
    point = direct(cand, None)
    for debias in (False, True):
        slow = bootstrap_ci(direct, cand, None, reps=50, seed=1, debias=debias)
        fast = bootstrap_ci(coverage_of_covered, per_doc, n_types, reps=50, seed=1,
                              debias=debias)
        assert fast == pytest.approx(slow)
    # why compare() debiases coverage: resamples repeat documents, repeats add no types,
    # so the plain percentile interval lies wholly below the estimate
    assert bootstrap_ci(direct, cand, None, reps=50, seed=1)[1] < point
    low, high = bootstrap_ci(direct, cand, None, reps=50, seed=1, debias=True)
    assert low <= point <= high and low < high


def corpus(seed, n_docs=80, vocab=200):
    rng = np.random.default_rng(seed)
    toks = [rng.zipf(1.5, rng.integers(20, 60)) % vocab for _ in range(n_docs)]
    return toks, rng.lognormal(3, 0.5, n_docs)


EXPECTED_NAMES = (
    [f"ppl_q{q:02d}" for q in (1, 5, 10, 25, 50, 75, 90, 95, 99)]
    + ["ppl_low_frac", "ppl_tail_frac", "ppl_ks", "ppl_w1"]
    + [f"{m}_{n}" for n in (1, 2, 3) for m in ("distinct", "top1pct_mass", "ref_coverage", "js")]
)


def test_a_document_too_short_to_score_is_left_out_of_the_ppl_metrics_only():
    """A one-token document has no perplexity (null in its score file, NaN in a sample):
    it made ppl_ks and ppl_w1 NaN, which the gate read as missing."""
    cand_docs, cand_ppl = corpus(0)
    ref_docs, ref_ppl = corpus(1, n_docs=300)
    cand = InMemory([*cand_docs, np.array([7])], np.append(cand_ppl, np.nan))
    # the budget of the whole candidate: the short document is in its sample
    with_short = compare_corpora(cand, InMemory(ref_docs, ref_ppl), budget=cand.tokens, seed=0,
                                 bootstrap=50)
    assert sorted(r["metric"] for r in with_short) == sorted(EXPECTED_NAMES)
    for r in with_short:
        assert all(math.isfinite(r[k]) for k in ("value", "ci_low", "ci_high")
                   if r[k] is not None), r
    # the perplexity metrics are those of the scored documents alone
    assert ppl_metrics(np.append(cand_ppl, np.nan), np.insert(ref_ppl, 3, np.nan)) == \
        ppl_metrics(cand_ppl, ref_ppl)
    assert ppl_metrics(np.array([np.nan]), ref_ppl) == {}  # none to measure: none, not NaN


def test_compare_returns_every_metric_with_the_budget():
    cand_docs, cand_ppl = corpus(0)
    ref_docs, ref_ppl = corpus(1)
    cand, ref = InMemory(cand_docs, cand_ppl), InMemory(ref_docs, ref_ppl)
    rows = compare_corpora(cand, ref, budget=1000, seed=0, bootstrap=50)
    assert sorted(r["metric"] for r in rows) == sorted(EXPECTED_NAMES)
    by_name = {r["metric"]: r for r in rows}
    for r in rows:
        assert r["budget"] == 1000
        assert set(r) == {"metric", "n", "budget", "value", "ci_low", "ci_high"}
        assert r["n"] == (int(r["metric"][-1]) if not r["metric"].startswith("ppl") else None)
        if r["metric"] in ("ppl_low_frac", "ppl_tail_frac", "ref_coverage_2"):
            assert r["ci_low"] <= r["value"] <= r["ci_high"]
        else:
            assert r["ci_low"] is None and r["ci_high"] is None
    # reproducible with the seed
    again = compare_corpora(cand, ref, budget=1000, seed=0, bootstrap=50)
    assert again == rows
    assert 0.0 <= by_name["js_2"]["value"] <= 1.0
    plain = compare_corpora(cand, ref, 1000, 0, orders=(1,), bootstrap=0)
    assert all(r["ci_low"] is None for r in plain)
    assert not any(r["metric"].endswith("_2") for r in plain)


def test_compare_of_a_corpus_with_itself_is_close():
    docs_, ppl = corpus(3, n_docs=200)
    by_name = {r["metric"]: r["value"]
               for r in compare_corpora(InMemory(docs_, ppl), InMemory(docs_, ppl), budget=3000,
                                         seed=1, bootstrap=0)}
    assert 0.1 < by_name["ppl_low_frac"] < 0.4  # independent samples of the same corpus
    assert by_name["js_1"] < 0.2


def test_a_corpus_with_mismatched_ppl_is_refused():
    docs_, ppl = corpus(0)
    with pytest.raises(ValueError, match="perplexities"):
        InMemory(docs_, ppl[:-1])


def test_split_half_yardstick():
    ref_docs, ref_ppl = corpus(4, n_docs=100)
    rows = split_half_yardstick(InMemory(ref_docs, ref_ppl), budget=1000, seed=0, bootstrap=20)
    assert sorted(r["metric"] for r in rows) == sorted(EXPECTED_NAMES)
    assert all(r["budget"] == 1000 for r in rows)
    half_tokens = sum(map(len, ref_docs)) // 2
    with pytest.raises(ValueError, match="half"):
        split_half_yardstick(InMemory(ref_docs, ref_ppl), budget=half_tokens + 100, seed=0)
