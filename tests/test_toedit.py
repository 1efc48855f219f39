"""ToEdit on hand-built distributions, and windowing that scores every token once."""

import math

import numpy as np
import pytest
import torch

from semisynth.config import EditConfig
from semisynth.tasks.toedit import (
    batches_by_budget,
    doc_key,
    plan_segments,
    position_uniforms,
    toedit_decisions,
)

VOCAB = 32


def confident_rows(n: int, p_top: float, top_token: int = 0) -> torch.Tensor:
    """n rows of log-probs: `top_token` has p_top, the rest share 1 - p_top unevenly,
    so the top-k is well defined (token 1 next, then 2, ...)."""
    rest = torch.arange(VOCAB - 1, 0, -1, dtype=torch.float64)
    rest = rest / rest.sum() * (1 - p_top)
    probs = torch.empty(VOCAB, dtype=torch.float64)
    others = [t for t in range(VOCAB) if t != top_token]
    probs[others] = rest
    probs[top_token] = p_top
    return probs.log().float().expand(n, VOCAB).clone()


def keys_for(doc_id: str, n: int, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n,), doc_key(seed, doc_id), dtype=torch.long), torch.arange(1, n + 1)


def test_threshold_is_strictly_greater():
    # a token with p exactly at the threshold is kept, one just above it is redrawn
    logp = torch.log_softmax(torch.zeros(1, 2), dim=-1)  # p = 0.5 exactly
    assert logp.exp()[0, 0].item() == 0.5
    keys, pos = keys_for("a", 1)
    cfg = EditConfig(threshold=0.5, top_k=2)
    _, revised, _ = toedit_decisions(logp, torch.tensor([0]), keys, pos, cfg)
    assert not revised.any()
    above = torch.log(torch.tensor([[0.5001, 0.4999]]))
    _, revised, _ = toedit_decisions(above, torch.tensor([0]), keys, pos, cfg)
    assert revised.all()


def test_only_confident_positions_are_revised_and_draws_come_from_top_k():
    n = 4000
    logp = torch.cat([confident_rows(n, 0.995), confident_rows(n, 0.98)])
    targets = torch.zeros(2 * n, dtype=torch.long)
    keys, pos = keys_for("doc", 2 * n)
    cfg = EditConfig(top_k=8, beta=20.0)  # a high beta spreads the draw over the top-k
    chosen, revised, dropped = toedit_decisions(logp, targets, keys, pos, cfg)
    assert revised[:n].all() and not revised[n:].any()
    assert (chosen[n:] == 0).all()
    assert not dropped.any()
    top8 = set(logp[0].topk(8).indices.tolist())
    assert set(chosen[:n].tolist()) <= top8
    assert len(set(chosen[:n].tolist())) == 8  # every top-k slot is reachable
    assert (chosen[:n] == 0).any()  # the original token can be drawn again


def test_draw_follows_softmax_of_logp_over_beta():
    n, beta = 20000, 1.5
    logp = confident_rows(n, 0.992)
    keys, pos = keys_for("freq", n)
    chosen, _, _ = toedit_decisions(logp, torch.zeros(n, dtype=torch.long), keys, pos,
                                    EditConfig(beta=beta))
    top_logp, top_idx = logp[0].topk(8)
    expected = torch.softmax(top_logp.double() / beta, dim=-1)
    observed = torch.tensor([(chosen == t).float().mean().item() for t in top_idx.tolist()])
    # the top token keeps ~96% of draws; the rest follow their weights within noise
    assert torch.allclose(observed.double(), expected, atol=4 * math.sqrt(0.25 / n))


def test_same_seed_and_id_give_the_same_edit():
    n = 2000
    logp = confident_rows(n, 0.995)
    cfg = EditConfig(beta=10.0)
    targets = torch.zeros(n, dtype=torch.long)
    a = toedit_decisions(logp, targets, *keys_for("doc-1", n, seed=1), cfg)[0]
    b = toedit_decisions(logp, targets, *keys_for("doc-1", n, seed=1), cfg)[0]
    c = toedit_decisions(logp, targets, *keys_for("doc-2", n, seed=1), cfg)[0]
    d = toedit_decisions(logp, targets, *keys_for("doc-1", n, seed=2), cfg)[0]
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)


def test_uniforms_are_uniform_and_independent_of_batch_layout():
    keys = torch.full((100000,), doc_key(3, "x"), dtype=torch.long)
    u = position_uniforms(keys, torch.arange(100000))
    assert 0 <= u.min() and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    # a position's number depends on (key, position) only, not on its neighbours
    assert position_uniforms(keys[:1], torch.tensor([500])).item() == u[500].item()


@pytest.mark.parametrize(
    "strategy, revised_expected, dropped_expected",
    [("up_revise", [True, False, False], [False, False, False]),
     ("low_drop_up_revise", [True, False, False], [False, False, True]),
     ("filtering", [False, False, False], [False, False, True])],
)
def test_strategies(strategy, revised_expected, dropped_expected):
    # row 0: target has p 0.995 (confident); row 1: p 0.5; row 2: target has p 0.0005
    logp = torch.stack([confident_rows(1, 0.995)[0], confident_rows(1, 0.5)[0],
                        confident_rows(1, 0.9995, top_token=0)[0]])
    targets = torch.tensor([0, 0, VOCAB - 1])
    assert logp[2, VOCAB - 1].exp() < 0.001
    keys, pos = keys_for("s", 3)
    _, revised, dropped = toedit_decisions(logp, targets, keys, pos, EditConfig(strategy=strategy))
    assert revised.tolist() == revised_expected
    assert dropped.tolist() == dropped_expected


def test_beta_defaults_follow_the_official_code():
    assert EditConfig().effective_beta == 1.5
    assert EditConfig(strategy="low_drop_up_revise").effective_beta == 1.0
    assert EditConfig(strategy="low_drop_up_revise", beta=2.0).effective_beta == 2.0


@pytest.mark.parametrize("length", [1, 2, 5, 63, 64, 65, 200, 1001])
@pytest.mark.parametrize("window, overlap", [(64, 16), (8, 1), (2, 1)])
def test_every_position_is_a_target_exactly_once(length, window, overlap):
    segments = plan_segments([length], window, overlap)
    hits = np.zeros(length, dtype=int)
    for s in segments:
        assert s.stop - s.start <= window
        assert s.start < s.first  # every target has its preceding token as context
        hits[s.first : s.stop] += 1
    assert hits[0] == 0 and (hits[1:] == 1).all()


def test_batches_respect_the_token_budget_and_keep_every_segment():
    segments = plan_segments([500, 30, 30, 200, 7, 64], window=128, overlap=32)
    batches = batches_by_budget(segments, batch_tokens=256)
    flat = [s for b in batches for s in b]
    assert sorted(map(id, flat)) == sorted(map(id, segments))
    for b in batches:
        width = max(s.stop - s.start for s in b)
        assert width * len(b) <= 256 or len(b) == 1


def test_token_arrays_match_the_stored_lists():
    import pyarrow as pa

    from semisynth.tasks.score import token_arrays

    lists = [[1, 2, 3], [], [4, 5], [6]]
    table = pa.table({"token_ids": pa.array(lists, type=pa.list_(pa.int32()))})
    for t in (table, table.slice(1), pa.concat_tables([table, table.slice(2)])):
        expected = t.column("token_ids").to_pylist()
        assert [a.tolist() for a in token_arrays(t)] == expected
