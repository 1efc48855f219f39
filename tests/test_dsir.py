"""DSIR (semisynth.quality.dsir): the features against the authors' package, the weights
against the formula worked by hand, the draw against the probabilities importance
resampling without replacement gives, and the token budget."""

import itertools
import math

import numpy as np
import pytest

from semisynth.quality.dsir import (
    BucketHasher,
    dsir_select,
    feature_counts,
    log_importance_weights,
)

B = 10_000


def test_features_are_the_official_hashed_ngram_counts():
    # the authors' featurizer (PyPI data-selection, a dev dependency); nltk is slow to import
    from data_selection.hashed_ngram_dsir import get_ngram_counts

    texts = [
        "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
        "primary election produced \"no evidence\" that any irregularities took place.",
        "Don't stop -- the café's rate rose 3.5% (again)!! Naïve façades, ÜBER-loud...",
        "one",
        "",
    ]
    for text in texts:
        np.testing.assert_array_equal(feature_counts(text, B), get_ngram_counts(text, n=2, num_buckets=B))


def small_case():
    target = ["red fish red fish"]
    pool = ["red fish", "blue cat", "blue cat blue cat"]
    grams = ["red", "fish", "red fish", "fish red", "blue", "cat", "blue cat", "cat blue"]
    hasher = BucketHasher(B)
    assert len(set(hasher(grams).tolist())) == len(grams), "the hand computation assumes no collision"
    return target, pool


def test_log_weights_follow_the_formula_worked_by_hand():
    target, pool = small_case()
    # target: red 2, fish 2, "red fish" 2, "fish red" 1 (N = 7); pool: red 1, fish 1,
    # "red fish" 1, blue 3, cat 3, "blue cat" 3, "cat blue" 1 (N = 13); add-one smoothing
    t = lambda n: math.log((n + 1) / (7 + B))  # noqa: E731
    p = lambda n: math.log((n + 1) / (13 + B))  # noqa: E731
    expected = [
        3 * (t(2) - p(1)),  # red, fish, "red fish"
        3 * (t(0) - p(3)),  # blue, cat, "blue cat"
        6 * (t(0) - p(3)) + (t(0) - p(1)),  # blue x2, cat x2, "blue cat" x2, "cat blue"
    ]
    np.testing.assert_allclose(log_importance_weights(target, pool, B), expected, rtol=1e-12)


def test_top_weighted_documents_come_first():
    target, pool = small_case()
    # weights about e^1.2, e^-4.2, e^-9.0: the seed's noise does not reorder them
    assert dsir_select(target, pool, [2, 2, 4], budget_tokens=8, seed=0).tolist() == [0, 1, 2]
    assert dsir_select(target, pool, [2, 2, 4], budget_tokens=1, seed=0).tolist() == [0]


def test_draws_follow_sampling_without_replacement_by_weight():
    target = ["red fish red"]
    pool = ["red", "fish", "blue"]
    w = np.exp(log_importance_weights(target, pool, B))
    w /= w.sum()
    seeds = 6000
    seen = {perm: 0 for perm in itertools.permutations(range(3))}
    for seed in range(seeds):
        seen[tuple(dsir_select(target, pool, [1, 1, 1], 3, seed).tolist())] += 1
    for (i, j, _), count in seen.items():
        prob = w[i] * w[j] / (1 - w[i])
        assert abs(count / seeds - prob) < 4 * math.sqrt(prob * (1 - prob) / seeds), (i, j, count)


def test_same_seed_same_selection_other_seed_other_order():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30)]
    pool = [" ".join(rng.choice(vocab, 20)) for _ in range(50)]
    target = [" ".join(rng.choice(vocab[:15], 200))]
    tokens = [20] * 50
    first = dsir_select(target, pool, tokens, 500, seed=3)
    np.testing.assert_array_equal(first, dsir_select(target, pool, tokens, 500, seed=3))
    assert first.tolist() != dsir_select(target, pool, tokens, 500, seed=4).tolist()


def mixed_documents(rng, share_a, n_docs, n_words, vocab_a, vocab_b):
    docs = []
    for _ in range(n_docs):
        from_a = rng.random(n_words) < share_a
        words = np.where(from_a, rng.choice(vocab_a, n_words), rng.choice(vocab_b, n_words))
        docs.append(" ".join(words))
    return docs


def test_resembling_half_of_the_pool_is_taken_first():
    rng = np.random.default_rng(11)
    vocab_a = [f"a{i}" for i in range(100)]
    vocab_b = [f"b{i}" for i in range(100)]
    target = mixed_documents(rng, 0.75, 100, 100, vocab_a, vocab_b)
    like = mixed_documents(rng, 0.75, 40, 40, vocab_a, vocab_b)
    unlike = mixed_documents(rng, 0.25, 40, 40, vocab_a, vocab_b)
    pool = [d for pair in zip(like, unlike, strict=True) for d in pair]  # even: like
    chosen = dsir_select(target, pool, [40] * 80, budget_tokens=40 * 40, seed=5)
    assert len(chosen) == 40
    # a selection blind to the target takes 0.5; over seeds 0-7 this one took 0.92 to 1.0
    resembling = np.mean(chosen % 2 == 0)
    assert resembling >= 0.85, resembling


def test_selection_is_the_shortest_prefix_reaching_the_budget():
    rng = np.random.default_rng(2)
    pool = [" ".join(rng.choice(["x", "y", "z"], 10)) for _ in range(40)]
    tokens = rng.integers(5, 50, size=40)
    for budget in (1, 37, 300, 999, int(tokens.sum())):
        chosen = dsir_select(["x y x"], pool, tokens, budget, seed=1)
        assert len(set(chosen.tolist())) == len(chosen)
        assert tokens[chosen].sum() >= budget > tokens[chosen[:-1]].sum()
    assert len(dsir_select(["x y x"], pool, tokens, int(tokens.sum()), seed=1)) == 40
    assert len(dsir_select(["x y x"], pool, tokens, 0, seed=1)) == 0


def test_budget_beyond_the_pool_or_mismatched_counts_raise():
    pool = ["a b", "c d"]
    with pytest.raises(ValueError, match="fewer than the budget"):
        dsir_select(["a"], pool, [2, 2], budget_tokens=5, seed=0)
    with pytest.raises(ValueError, match="token counts"):
        dsir_select(["a"], pool, [2], budget_tokens=1, seed=0)
