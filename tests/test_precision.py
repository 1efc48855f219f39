"""bf16 scoring against float32 on the same documents: the same edit decisions."""

import numpy as np
import pytest

from semisynth import documents
from semisynth.config import EditConfig
from semisynth.tasks.prior import load_prior
from semisynth.tasks.toedit import Scorer

pytestmark = pytest.mark.slow


def test_bf16_decisions_match_float32(assets_root, brown_shards):
    recs = [r for r in documents.read_records(str(brown_shards[3])) if r.reason is None][:12]
    ids, texts = [r.id for r in recs], [r.text for r in recs]
    runs = {}
    for precision in ("float32", "bfloat16"):
        prior = load_prior("default", assets_root, precision)
        runs[precision] = Scorer(prior, EditConfig(), seed=1, max_tokens=256).score(ids, texts)
    differ = total = 0
    ppl_rel = []
    for a, b in zip(runs["float32"], runs["bfloat16"], strict=True):
        assert np.array_equal(a.token_ids, b.token_ids)
        # position by position: did each precision choose to redraw (the method's decision)
        differ += int((a.revised_mask != b.revised_mask).sum())
        total += a.scored_tokens
        ppl_rel.append(abs(b.ppl - a.ppl) / a.ppl)
    assert sum(a.revised_tokens for a in runs["float32"]) > 0
    assert differ / total <= 0.005, f"{differ}/{total} decisions differ"
    assert np.median(ppl_rel) <= 0.01, f"median PPL difference {np.median(ppl_rel):.4f}"


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it_natively(monkeypatch):
    from semisynth.config import config_from_tree
    from semisynth.tasks import prior as prior_mod

    monkeypatch.setattr(prior_mod, "_cpu_flags", lambda: {"avx2", "fma"})
    assert prior_mod.resolve_precision("auto", "cpu") == "float32"
    cfg = prior_mod.pin_precision(config_from_tree({"corpora": {}}))
    assert cfg.prior.precision == "float32"  # the score cache key then names float32
    monkeypatch.setattr(prior_mod, "_cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert prior_mod.resolve_precision("auto", "cpu") == "bfloat16"
    # an explicit choice is kept whatever the hardware
    monkeypatch.setattr(prior_mod, "_cpu_flags", lambda: set())
    assert prior_mod.resolve_precision("bfloat16", "cpu") == "bfloat16"
