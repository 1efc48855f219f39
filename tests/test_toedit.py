"""ToEdit on hand-built distributions, and windowing that scores every token once."""

import math

import numpy as np
import pytest
import torch
from recorded import Recorded
from terminal import sigint_raises_keyboard_interrupt

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


# The Scorer with the real prior (SmolLM2-135M, float32): tiny documents, few tokens.

SENTENCE = ("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
            "primary election produced no evidence that any irregularities took place. ")
# what tokenizers split differently: tabs, newlines, runs of spaces, digits, accents, CJK
MIXED = (SENTENCE + "import numpy as np\nfor i in range(10):\n\tprint(i)  # done\n\n"
         + "x" + " " * 40 + "y 1234567890 12.5% naïve café 東京タワー 'quoted' don't\n")
SPARSE = ("word" + " " * 60 + "\n") * 300  # many characters a token: the prefix must grow


def whole_ids(prior, text: str) -> list[int]:
    return prior.tokenizer([text], add_special_tokens=False)["input_ids"][0]


@pytest.mark.parametrize("text", [MIXED * 40, SPARSE])
def test_a_long_text_is_tokenized_from_a_prefix_with_the_same_tokens(prior_f32, text):
    from semisynth.tasks.toedit import Scorer

    whole = whole_ids(prior_f32, text)
    for limit in (1, 7, 100, 1000, len(whole) - 1, len(whole), len(whole) + 5):
        ids, cut = Scorer(prior_f32, None, max_tokens=limit).tokenize([text])
        assert ids[0].tolist() == whole[:limit]
        assert cut == [False]  # max_tokens is the method's own truncation: not flagged
        ids, cut = Scorer(prior_f32, None, max_tokens=None, max_doc_tokens=limit).tokenize([text])
        assert ids[0].tolist() == whole[:limit]
        assert cut == [len(whole) > limit]


def test_a_huge_document_is_bounded_and_named(prior_f32, caplog):
    from semisynth.tasks.toedit import Scorer

    huge = SENTENCE * 70_000  # 10 MB: tokenized whole, it alone took 26 s of native code
    scorer = Scorer(prior_f32, EditConfig(), max_doc_tokens=40)
    with caplog.at_level("WARNING", logger="semisynth.tasks.toedit"):
        big, small = scorer.score(["huge-doc", "small-doc"], [huge, SENTENCE])
    assert big.truncated and not small.truncated
    assert big.token_ids.tolist() == whole_ids(prior_f32, SENTENCE * 4)[:40]
    assert big.scored_tokens == 39
    [warning] = caplog.records
    assert "'huge-doc'" in warning.getMessage() and "first 40" in warning.getMessage()
    # a cut by max_tokens is the method's, not flagged (so not warned about either)
    ids, cut = Scorer(prior_f32, None, max_tokens=20, max_doc_tokens=40).tokenize([huge])
    assert len(ids[0]) == 20 and cut == [False]
    assert Scorer(prior_f32, None).max_doc_tokens == 100_000


def test_top_k_beyond_the_vocabulary_is_refused(prior_f32):
    from semisynth.tasks.toedit import Scorer

    with pytest.raises(ValueError, match=f"top_k {prior_f32.vocab_size + 1} is larger"):
        Scorer(prior_f32, EditConfig(top_k=prior_f32.vocab_size + 1))


@pytest.fixture
def long_shard(tmp_path):
    from semisynth.documents import write_documents
    from semisynth.tasks.ingest import ingest

    source = tmp_path / "docs.jsonl"
    write_documents([{"id": "long", "text": SENTENCE * 4}, {"id": "short", "text": SENTENCE}],
                    source)
    [shard] = ingest([str(source)], tmp_path / "shards", "c").shards
    return shard.path


def test_score_shard_reports_window_progress_and_counts_truncation(prior_f32, assets_root,
                                                                   long_shard, tmp_path):
    import pyarrow.parquet as pq

    from semisynth.config import PriorConfig
    from semisynth.tasks.score import score_shard

    # 16-token windows one at a time: the 60 scored tokens of the long document are
    # several forward batches, each reported
    cfg = PriorConfig(precision="float32", window=16, batch_tokens=16, max_doc_tokens=60)
    reported = Recorded()
    out = tmp_path / "scores" / "s.parquet"
    stats = score_shard(long_shard, out, assets_root, cfg, EditConfig(), seed=1,
                        progress=reported)
    windows = reported.also
    assert len(windows) > 5 and sum(windows) == stats.scored_tokens
    assert reported.done == stats.documents == 2
    assert stats.truncated_docs == 1
    table = pq.read_table(out, columns=["id", "scored_tokens", "truncated"]).to_pylist()
    assert [(r["id"], r["truncated"]) for r in table] == [("long", True), ("short", False)]
    assert table[0]["scored_tokens"] == 59
    cached = score_shard(long_shard, out, assets_root, cfg, EditConfig(), seed=1)
    assert (cached.model_work, cached.truncated_docs) == (False, 1)


def test_ctrl_c_stops_a_long_document_between_windows(prior_f32, assets_root, long_shard,
                                                      tmp_path):
    import os
    import signal

    from semisynth.config import PriorConfig
    from semisynth.tasks.score import score_shard

    cfg = PriorConfig(precision="float32", window=16, batch_tokens=16)

    def interrupt_at_the_second_window(reported: Recorded) -> None:
        if len(reported.also) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends

    reported = Recorded(interrupt_at_the_second_window)
    out = tmp_path / "scores" / "s.parquet"
    with sigint_raises_keyboard_interrupt(), pytest.raises(KeyboardInterrupt):
        score_shard(long_shard, out, assets_root, cfg, EditConfig(), seed=1, progress=reported)
    assert len(reported.also) == 2  # no further window was scored
    assert list(out.parent.iterdir()) == []  # neither a score file nor its temporary


def test_score_shard_writes_what_the_scorer_gives_in_the_shards_order(prior_f32, assets_root,
                                                                     tmp_path):
    """The stage's threads and groups change neither rows, nor their order, nor values:
    against one call of the Scorer on every document (batched otherwise)."""
    import pyarrow.parquet as pq

    from semisynth.config import PriorConfig
    from semisynth.documents import write_documents
    from semisynth.tasks import score as score_mod
    from semisynth.tasks.ingest import ingest
    from semisynth.tasks.score import score_shard
    from semisynth.tasks.toedit import Scorer

    words = SENTENCE.split()
    # short documents (few tokens to score on 2 cores), every 16th long: several windows
    docs = [{"id": f"d{i}", "text": SENTENCE * 2 if i % 16 == 0 else " ".join(words[i % 7:][:8])}
            for i in range(40)]
    source = tmp_path / "docs.jsonl"
    write_documents(docs, source)
    [shard] = ingest([str(source)], tmp_path / "shards", "c").shards
    cfg = PriorConfig(precision="float32", window=32, batch_tokens=64)
    edit = EditConfig(beta=8.0)
    reported = Recorded()
    out = tmp_path / "scores" / "s.parquet"
    stats = score_shard(shard.path, out, assets_root, cfg, edit, seed=4, progress=reported)
    rows = pq.read_table(out).to_pylist()
    texts = pq.read_table(shard.path, columns=["id", "text", "doc_hash"]).to_pylist()
    assert [r["id"] for r in rows] == [t["id"] for t in texts] == [d["id"] for d in docs]
    assert [r["doc_hash"] for r in rows] == [t["doc_hash"] for t in texts]
    # several groups of whole documents went through, each reported once
    groups = [n for n, _, _ in reported.calls if n]
    assert len(groups) >= 3 and sum(groups) == 40
    assert sum(reported.also) == stats.scored_tokens == sum(r["scored_tokens"] for r in rows)
    at_once = Scorer.from_config(prior_f32, cfg.model_copy(update={"batch_tokens": 512}),
                                 edit, seed=4).score([t["id"] for t in texts],
                                                     [t["text"] for t in texts])
    for row, alone in zip(rows, at_once, strict=True):
        assert row["token_ids"] == alone.token_ids.tolist()
        assert row["edited_text"] == prior_f32.tokenizer.decode(alone.edited_ids.tolist())
        assert (row["revised_tokens"], row["edited_tokens"], row["dropped_tokens"]) == (
            alone.revised_tokens, alone.edited_tokens, alone.dropped_tokens)
        assert row["nll_sum"] == pytest.approx(alone.nll_sum, rel=1e-5)
    assert sum(r["edited_tokens"] for r in rows) > 0
    assert score_mod.GROUP_BATCHES * cfg.batch_tokens < stats.scored_tokens


def test_an_error_while_reading_a_shard_is_raised_and_leaves_no_file(assets_root, prior_folder,
                                                                     tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from semisynth.config import PriorConfig
    from semisynth.tasks.score import READ_DOCS, score_shard

    # the first rows are fine; a text of the second read is not text: the tokenizer fails
    texts = [SENTENCE] * READ_DOCS + [None] + [SENTENCE] * 3
    shard = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts,
                             "doc_hash": [str(i) for i in range(len(texts))]}), shard)
    out = tmp_path / "scores" / "s.parquet"
    with pytest.raises((TypeError, ValueError)):
        score_shard(shard, out, assets_root, PriorConfig(precision="float32", batch_tokens=64),
                    EditConfig(), seed=1)
    assert list(out.parent.iterdir()) == []
