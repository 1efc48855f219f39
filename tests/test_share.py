"""The synthetic-share estimate on corpora drawn from two known generating distributions:
a "human" one and a "synthetic" one, differing in log-perplexity (overlapping) and in
the frequencies of some token types, so that the right answer is known."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semisynth.errors import InputError
from semisynth.quality.share import (
    ReferenceFit,
    ScoredDocs,
    estimate_share,
    mixture_mle,
    read_scored_docs,
    reference_types,
)
from semisynth.tasks.score import SCORE_SCHEMA

TYPES = 800
LENGTH = 160
BOOTSTRAP = 60


def type_probabilities():
    zipf = 1 / np.arange(1, TYPES + 1) ** 1.1
    human = zipf / zipf.sum()
    # the synthetic source uses types 10..69 at each other's frequencies (reversed)
    order = np.arange(TYPES)
    order[10:70] = order[10:70][::-1]
    synthetic = zipf[order] / zipf[order].sum()
    return {"human": human, "synthetic": synthetic}


LOG_PPL = {"human": (3.3, 0.3), "synthetic": (2.6, 0.25)}  # overlapping, as in the demo


def draw(rng, probs, kind: str, n: int, tag: str) -> ScoredDocs:
    mean, sd = LOG_PPL[kind]
    return ScoredDocs(ppl=np.exp(rng.normal(mean, sd, n)),
                      tokens=list(rng.choice(TYPES, size=(n, LENGTH), p=probs[kind])),
                      hashes=np.array([f"{tag}-{i}" for i in range(n)], dtype=object))


def concat(*parts: ScoredDocs) -> ScoredDocs:
    return ScoredDocs(np.concatenate([p.ppl for p in parts]),
                      [t for p in parts for t in p.tokens],
                      np.concatenate([p.hashes for p in parts]))


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(20261201)
    probs = type_probabilities()
    return {"rng": rng, "probs": probs,
            "human": draw(rng, probs, "human", 120, "human-ref"),
            "synthetic": draw(rng, probs, "synthetic", 120, "synthetic-ref")}


def candidate(world, humans: int, synthetics: int, tag: str = "cand") -> ScoredDocs:
    rng, probs = world["rng"], world["probs"]
    return concat(draw(rng, probs, "human", humans, f"{tag}-h"),
                  draw(rng, probs, "synthetic", synthetics, f"{tag}-s"))


def estimate(world, cand, **kwargs):
    return estimate_share(cand, world["human"], world["synthetic"],
                          **{"bootstrap": BOOTSTRAP, **kwargs})


def test_a_human_only_candidate_estimates_near_zero(world):
    result = estimate(world, candidate(world, 80, 0))
    assert result.synthetic_share <= 0.05
    assert result.ci_low == 0.0
    assert result.ci_high < 0.2
    assert result.documents == 80


def test_a_synthetic_only_candidate_estimates_near_one(world):
    result = estimate(world, candidate(world, 0, 80))
    assert result.synthetic_share >= 0.95
    assert result.ci_high == 1.0
    assert result.ci_low > 0.8


def test_an_exact_half_is_within_the_interval(world):
    result = estimate(world, candidate(world, 50, 50))
    assert result.ci_low <= 0.5 <= result.ci_high
    assert abs(result.synthetic_share - 0.5) < 0.1
    assert result.ci_low < result.synthetic_share < result.ci_high


def test_each_feature_alone_estimates_a_known_share(world):
    cand = candidate(world, 70, 30)
    for features in (("log_ppl",), ("token_occurrence",)):
        result = estimate(world, cand, features=features)
        assert result.features == features
        assert abs(result.synthetic_share - 0.3) < 0.15
    # perplexity alone overlaps between the two sources: the interval is wider
    ppl_only = estimate(world, cand, features=("log_ppl",))
    both = estimate(world, cand)
    assert both.ci_high - both.ci_low < ppl_only.ci_high - ppl_only.ci_low


def test_candidate_documents_in_a_reference_are_left_out_of_its_fit(world):
    human, synthetic = world["human"], world["synthetic"]
    cand = concat(candidate(world, 20, 20), human.take(np.arange(10)), synthetic.take(np.arange(4)))
    result = estimate(world, cand)
    assert result.documents_left_out == {"human": 10, "synthetic": 4}
    assert result.reference_documents == {"human": 110, "synthetic": 116}
    assert result.documents == 54  # the candidate itself keeps every document
    model = result.model
    assert not set(model.human_hashes) & set(cand.hashes)
    assert not set(model.synthetic_hashes) & set(cand.hashes)
    assert len(model.human_hashes) == 110 and len(model.synthetic_hashes) == 116
    # the fit is the references' without those documents, and nothing else
    alone = ReferenceFit(human.take(np.arange(10, 120)), synthetic.take(np.arange(4, 120))).fit()
    probe = candidate(world, 5, 5, tag="probe")
    for got, want in zip(model.log_likelihoods(probe), alone.log_likelihoods(probe), strict=True):
        np.testing.assert_array_equal(got, want)


def test_changing_only_the_candidate_never_changes_the_densities(world):
    first = estimate(world, candidate(world, 40, 10, tag="first"), bootstrap=0)
    # other documents, more of them, and token types the references never saw
    other = candidate(world, 10, 60, tag="second")
    other = ScoredDocs(other.ppl, [t + TYPES for t in other.tokens[:5]] + other.tokens[5:],
                       other.hashes)
    second = estimate(world, other, bootstrap=0)
    assert first.synthetic_share != second.synthetic_share
    probe = candidate(world, 6, 6, tag="probe")
    for got, want in zip(first.model.log_likelihoods(probe), second.model.log_likelihoods(probe),
                         strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(first.model.types, second.model.types)
    np.testing.assert_array_equal(first.model.types,
                                  reference_types([world["human"], world["synthetic"]], 256))


def test_the_estimate_is_reproducible_and_the_seed_moves_only_the_interval(world):
    cand = candidate(world, 30, 30)
    a, b = estimate(world, cand, seed=3), estimate(world, cand, seed=3)
    assert (a.synthetic_share, a.ci_low, a.ci_high) == (b.synthetic_share, b.ci_low, b.ci_high)
    row = a.metric_row()
    assert row["metric"] == "synthetic_share" and row["value"] == a.synthetic_share
    assert (row["ci_low"], row["ci_high"]) == (a.ci_low, a.ci_high)


def test_mixture_mle_known_answers():
    certain = np.array([40.0] * 3 + [-40.0] * 7)
    assert mixture_mle(certain)[0] == pytest.approx(0.3, abs=1e-9)
    # weights count documents: doubling the synthetic ones gives 6 of 13
    weights = np.array([2.0] * 3 + [1.0] * 7)
    assert mixture_mle(certain, weights)[0] == pytest.approx(6 / 13, abs=1e-9)
    # every document likelier human / synthetic: the bounds
    assert mixture_mle(np.full(5, -0.1))[0] == 0.0
    assert mixture_mle(np.full(5, 0.1))[0] == 1.0
    # two documents with r = 3 and r = 1/3: the likelihood (1+2a)(1-2a/3) peaks at a = 1/2
    assert mixture_mle(np.log([3.0, 1 / 3]))[0] == pytest.approx(0.5, abs=1e-9)
    rows = mixture_mle(np.vstack([certain, -certain]))
    np.testing.assert_allclose(rows, [0.3, 0.7], atol=1e-9)


def test_too_small_a_reference_after_the_leave_out_is_an_input_error(world):
    # the demo's mix50 is made of brown and synthetic documents: with those corpora as
    # the references, little of a reference can be left after the leave-out
    cand = concat(candidate(world, 5, 5), world["synthetic"].take(np.arange(115)))
    with pytest.raises(InputError, match="synthetic reference has 5 usable documents"):
        estimate(world, cand)


def test_unscored_documents_are_skipped(world):
    cand = candidate(world, 20, 0)
    cand = ScoredDocs(np.concatenate([cand.ppl, [np.nan]]), cand.tokens + [np.array([7])],
                      np.concatenate([cand.hashes, ["one-token"]]))
    result = estimate(world, cand, bootstrap=0)
    assert (result.documents, result.documents_unscored) == (20, 1)


def test_read_scored_docs_reads_the_score_files(tmp_path, world):
    docs = world["human"].take(np.arange(3))
    table = pa.table({
        "id": ["a", "b", "c"], "doc_hash": list(docs.hashes), "scored_tokens": [LENGTH - 1] * 3,
        "nll_sum": list(np.log(docs.ppl) * (LENGTH - 1)), "ppl": list(docs.ppl),
        "revised_tokens": [0] * 3, "edited_tokens": [0] * 3, "dropped_tokens": [0] * 3,
        "token_ids": [t.astype(np.int32) for t in docs.tokens], "edited_text": [""] * 3,
        "truncated": [False] * 3,
    }, schema=SCORE_SCHEMA)
    pq.write_table(table.slice(0, 2), tmp_path / "one.parquet")
    pq.write_table(table.slice(2), tmp_path / "two.parquet")
    read = read_scored_docs([tmp_path / "one.parquet", tmp_path / "two.parquet"])
    assert list(read.hashes) == list(docs.hashes)
    np.testing.assert_array_equal(read.ppl, docs.ppl)
    for got, want in zip(read.tokens, docs.tokens, strict=True):
        np.testing.assert_array_equal(got, want)
