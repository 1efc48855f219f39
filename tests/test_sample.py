"""The metrics' samples (semisynth.quality.sample): documents in seeded key order until a
token budget, chosen in memory bounded by a cap, the same from score files as in memory."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.quality.sample import (
    HALVES_HOLD,
    InMemory,
    ScoreFiles,
    Selection,
    Stream,
    comparison_streams,
    order_keys,
)
from semisynth.tasks.score import SCORE_SCHEMA


def docs(*lists):
    return [np.array(x, dtype=np.int64) for x in lists]


def random_corpus(seed, n_docs=300, longest=40):
    rng = np.random.default_rng(seed)
    corpus = [rng.integers(0, 500, rng.integers(0, longest)) for _ in range(n_docs)]
    return corpus, rng.lognormal(3, 0.5, n_docs)


def write_scores(path, corpus, ppl, first=0):
    n = len(corpus)
    lengths = [len(d) for d in corpus]
    table = pa.table({
        "id": [f"d{first + i}" for i in range(n)], "doc_hash": [f"h{first + i}" for i in range(n)],
        "scored_tokens": [max(k - 1, 0) for k in lengths], "nll_sum": np.log(ppl) * lengths,
        "ppl": ppl, "revised_tokens": [0] * n, "edited_tokens": [1] * n,
        "dropped_tokens": [0] * n, "token_ids": [d.tolist() for d in corpus],
        "edited_text": [""] * n, "truncated": [False] * n}, schema=SCORE_SCHEMA)
    pq.write_table(table, path, row_group_size=7)
    return path


def test_a_sample_takes_documents_in_key_order_until_the_budget():
    corpus = docs([1, 2, 3], [4, 5, 6, 7, 8], [9, 10], [11])
    sample = InMemory(corpus, np.ones(4)).scan({"s": Stream(7)}, None).samples["s"]
    # by hand: walk the documents in the order of their keys until the budget is reached
    order = np.argsort(order_keys(7, np.arange(4))).tolist()
    assert sample.index.tolist() == order
    expected, total = [], 0
    for i in order:
        expected.append(i)
        total += len(corpus[i])
        if total >= 6:
            break
    chosen, last = sample.to_budget(6)
    assert chosen.index.tolist() == expected
    assert last == 6 - (total - len(corpus[expected[-1]]))  # the last document is cut
    tokens = chosen.token_arrays(last)
    assert sum(map(len, tokens)) == 6
    assert tokens[-1].tolist() == corpus[expected[-1]][:last].tolist()


@pytest.mark.parametrize("budget", [1, 7, 50, 123, 499, 500])
def test_budgets_are_exact_and_take_no_document_beyond_need(budget):
    corpus, ppl = random_corpus(0, n_docs=60, longest=20)
    assert sum(map(len, corpus)) >= 500
    sample = InMemory(corpus, ppl).scan({"s": Stream(3)}, None).samples["s"]
    chosen, last = sample.to_budget(budget)
    assert chosen.lengths[:-1].sum() + last == budget
    assert chosen.lengths[:-1].sum() < budget
    assert chosen.ppl.tolist() == ppl[chosen.index].tolist()  # PPLs line up with documents


def test_a_budget_larger_than_the_corpus_names_both_numbers():
    sample = InMemory(docs([1, 2, 3], [4, 5]), np.ones(2)).scan({"s": Stream(0)}, None).samples["s"]
    with pytest.raises(ValueError, match=r"corpus 'x' has 5 tokens, fewer than the budget of 6"):
        sample.to_budget(6, "corpus 'x'")


@pytest.mark.parametrize("cap", [1, 30, 400, 2500])
def test_a_capped_selection_streamed_in_batches_is_the_prefix_of_the_whole_order(cap):
    corpus, ppl = random_corpus(1)
    whole = InMemory(corpus, ppl).scan({"s": Stream(5)}, None).samples["s"]
    selection = Selection(cap)
    lengths = np.array([len(d) for d in corpus])
    for lo in range(0, len(corpus), 17):  # in batches, as a scan of score files feeds it
        index = np.arange(lo, min(lo + 17, len(corpus)))
        selection.add(order_keys(5, index), lengths[index], index=index)
        # what it holds is bounded by the cap, not by what it has seen
        assert selection.held_tokens <= 2 * cap + lengths[index].sum()
    kept = selection.result()["index"]
    assert kept.tolist() == whole.index[: len(kept)].tolist()
    assert lengths[kept[:-1]].sum() < cap <= lengths[kept].sum() or len(kept) == len(corpus)
    assert selection.stream_tokens == lengths.sum()


def test_score_files_give_the_samples_and_totals_of_the_documents_in_memory(tmp_path):
    corpus, ppl = random_corpus(2)
    paths = [write_scores(tmp_path / f"s{i}.parquet", corpus[lo:hi], ppl[lo:hi], lo)
             for i, (lo, hi) in enumerate([(0, 120), (120, 121), (121, 300)])]
    streams = comparison_streams(11)
    for cap in (None, 50, 2000):
        files = ScoreFiles(paths).scan(streams, cap)
        memory = InMemory(corpus, ppl, scored_tokens=files.scored_tokens).scan(streams, cap)
        assert (files.documents, files.tokens) == (300, sum(map(len, corpus)))
        assert files.edited_tokens == 300
        for name in streams:
            a, b = files.samples[name], memory.samples[name]
            assert a.index.tolist() == b.index.tolist()
            assert a.ppl.tolist() == b.ppl.tolist()
            assert a.stream_tokens == b.stream_tokens
            assert a.hashes.tolist() == [f"h{i}" for i in a.index]
            assert [t.tolist() for t in a.token_arrays()] == [t.tolist() for t in b.token_arrays()]


def test_split_halves_partition_the_corpus_evenly_and_are_reproducible():
    corpus, ppl = random_corpus(3, n_docs=301)
    halves = InMemory(corpus, ppl).scan(comparison_streams(4), None).samples
    got_a, got_b = set(halves["half_a"].index), set(halves["half_b"].index)
    assert not got_a & got_b and got_a | got_b == set(range(len(corpus)))
    # dealt out alternately: 301 documents split 151 / 150, whatever the seed
    assert (len(got_a), len(got_b)) == (151, 150)
    again = InMemory(corpus, ppl).scan(comparison_streams(4), None).samples
    assert again["half_a"].index.tolist() == halves["half_a"].index.tolist()
    other = InMemory(corpus, ppl).scan(comparison_streams(5), None).samples
    assert 0.35 < len(got_a & set(other["half_a"].index)) / len(got_a) < 0.65  # another split


def test_a_capped_half_is_the_same_documents_as_the_whole_halfs_first_ones():
    """A half read under a cap holds the first documents of the half the whole corpus deals
    out, at least ``cap`` tokens of them, in memory bounded by the cap."""
    corpus, ppl = random_corpus(5, n_docs=3000)
    streams = comparison_streams(6)
    whole = InMemory(corpus, ppl).scan(streams, None).samples
    cap = 2000
    for half in ("half_a", "half_b"):
        selection = streams[half].selection(cap)
        lengths = np.array([len(d) for d in corpus])
        index = np.arange(len(corpus))
        for lo in range(0, len(corpus), 97):  # fed in batches, as a scan does
            selection.add(order_keys(streams[half].seed, index[lo:lo + 97]), lengths[lo:lo + 97],
                          index=index[lo:lo + 97])
            assert selection.held_tokens <= 2 * HALVES_HOLD * cap + 97 * lengths.max()
        kept = selection.result()
        assert lengths[kept["index"]].sum() >= cap
        n = len(kept["index"])
        assert kept["index"].tolist() == whole[half].index[:n].tolist()


def test_the_two_sides_of_a_comparison_are_not_sampled_in_step():
    """An edited corpus's document i is its reference's document i: one order for both
    would pick the same documents on both sides."""
    corpus, ppl = random_corpus(4, n_docs=2000)
    samples = InMemory(corpus, ppl).scan(comparison_streams(9), None).samples
    first = 200
    shared = set(samples["candidate"].index[:first]) & set(samples["reference"].index[:first])
    # independent draws of 200 of 2000 documents share about 20 of them
    assert len(shared) < 45
