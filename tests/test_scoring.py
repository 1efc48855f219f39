"""The score+edit engine with the real prior (SmolLM2-135M, float32 on the CPU)."""

import numpy as np
import pytest

from semisynth.config import EditConfig
from semisynth.tasks.toedit import Scorer

pytestmark = pytest.mark.slow

TEXTS = [
    "The Fulton County Grand Jury said Friday an investigation of Atlanta's recent primary "
    "election produced no evidence that any irregularities took place.",
    "Once upon a time, there was a little girl who lived in a village near the forest. "
    "Whenever she went out, the little girl wore a red riding cloak.",
    "import numpy as np\nfor i in range(10):\n    print(i)\n",
]


def test_windowed_document_scores_every_token_once(prior_f32):
    import torch

    from semisynth.tasks.toedit import plan_segments

    long_text = " ".join(TEXTS * 6)
    whole = Scorer(prior_f32, None, batch_tokens=100000).score(["d"], [long_text])[0]
    windowed = Scorer(prior_f32, None, window=48, batch_tokens=256).score(["d"], [long_text])[0]
    ids = torch.tensor(whole.token_ids)
    assert len(ids) > 3 * 48
    assert windowed.scored_tokens == whole.scored_tokens == len(ids) - 1
    # the same windows by hand: a plain forward each, targets summed once
    expected = 0.0
    for seg in plan_segments([len(ids)], 48, 12):
        window = ids[seg.start : seg.stop][None]
        with torch.no_grad():
            logp = torch.log_softmax(prior_f32.model(window).logits[0].float(), -1)
        rows = torch.arange(seg.first - 1 - seg.start, seg.stop - 1 - seg.start)
        expected -= logp[rows, ids[seg.first : seg.stop]].sum().item()
    assert windowed.nll_sum == pytest.approx(expected, rel=1e-4)
    # repeated text is predictable only with the whole document in view
    assert windowed.ppl > whole.ppl


def test_edits_do_not_depend_on_batching(prior_f32):
    edit = EditConfig(beta=8.0)  # a flat draw, so that many redraws change the token
    # a repeated passage is predictable (p > 0.99) the second time round
    texts = [f"{t}\n\n{t}" for t in TEXTS]
    a = Scorer(prior_f32, edit, seed=5, batch_tokens=64).score(["a", "b", "c"], texts)
    b = Scorer(prior_f32, edit, seed=5, batch_tokens=100000).score(["a", "b", "c"], texts)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.edited_ids, y.edited_ids)
        assert x.nll_sum == pytest.approx(y.nll_sum, rel=1e-4)
    assert sum(x.edited_tokens for x in a) > 0
    assert all(x.revised_tokens >= x.edited_tokens for x in a)


def test_perplexity_matches_a_plain_forward(prior_f32):
    import torch

    res = Scorer(prior_f32, None).score(["a"], TEXTS[:1])[0]
    ids = torch.tensor(res.token_ids)[None]
    with torch.no_grad():
        logits = prior_f32.model(ids).logits[0, :-1].float()
    nll = -torch.log_softmax(logits, -1).gather(1, ids[0, 1:, None]).sum().item()
    assert res.nll_sum == pytest.approx(nll, rel=1e-4)
    assert 5 < res.ppl < 200


def test_max_tokens_truncates(prior_f32):
    res = Scorer(prior_f32, EditConfig(), max_tokens=10).score(["a"], TEXTS[:1])[0]
    assert len(res.token_ids) == 10 and res.scored_tokens == 9


def test_a_one_token_document_has_no_perplexity(prior_f32):
    """No position of it is scored: its perplexity is None (null in a score file), where it
    was NaN, which reached the metrics, the gate and `edit`'s JSON."""
    short, other = Scorer(prior_f32, EditConfig()).score(["short", "other"], ["Hello", TEXTS[0]])
    assert len(short.token_ids) == 1 and short.scored_tokens == 0
    assert short.ppl is None and short.edited_tokens == 0
    assert 5 < other.ppl < 200
