"""Everything issue 17 asks of a lent GPU, measured in one run; a table, then one JSON line.

    python3 benchmarks/gpu.py --prior .gpu-carry/prior --text '.gpu-carry/brown/*.jsonl.gz'
    python3 benchmarks/gpu.py --dry-run --prior DIR     # the same code on a CPU, tiny, seconds

How to get there (the carried wheels, the command): benchmarks/README.md, "gpu.py".

A lent machine has neither the prior's 538 MB of weights nor a network: with only the
prior's config.json and tokenizer files in --prior, the default prior's architecture is built
with random weights (bf16, on the device), saved with the tokenizer to a temporary folder and
loaded with ``load_prior`` like any prior. Random weights cost what trained ones cost: the
engine computes every position's log-normaliser and top-k whatever the probabilities.

Measured, each as a share of the bf16 matmul bound (measured here) in the FLOPs it does
(per token: 2 per weight of each linear layer, attention over half the context; the
body's without the head; training's 3x the forward's):
  engine     ``Scorer`` at batch_tokens 'auto' (compile 'auto'), 512-token documents
  body       the prior's body alone on packed [rows, 512] batches, eager and compiled
  stage      ``score_shard`` on a Parquet shard of the same documents; its rate / the engine's
  llama8b    a Llama-3-8B-shaped prior (random weights) through the Scorer at 2,048 tokens
  train      ``tasks.train.train`` of a 12 x 768 Llama, context 512, batch 32, in model FLOPs
Targets on the H200 (issue 17): engine >= 30% of the bound, llama8b >= 65%, the stage within
15% of the engine, training >= 25%. Compile time is measured apart and never in a rate.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from semisynth.config import EditConfig, LMConfig, PriorConfig
from semisynth.tasks import train as train_mod
from semisynth.tasks.device import width_bucket
from semisynth.tasks.prior import Prior, load_prior
from semisynth.tasks.score import score_shard
from semisynth.tasks.toedit import Scorer

TARGETS = {"engine_share": 0.30, "llama8b_share": 0.65, "stage_vs_engine": 0.85,
           "train_share": 0.25}
LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                 max_position_embeddings=8192, tie_word_embeddings=False)
TRAIN_MODEL = dict(layers=12, hidden=768, heads=12, context=512, batch=32)


@dataclass
class Sizes:
    """What one run measures: the lent GPU's sizes, or the dry run's."""

    matmul_n: int
    doc_tokens: int  # the engine's and the stage's documents (max_tokens)
    docs: int
    body_width: int
    body_reps: int
    llama_tokens: int
    llama_docs: int  # full batches of the 8B shape: a multiple of its rows (min 1)
    llama: dict
    train_model: dict
    train_steps: int
    prior_config: dict | None  # None: the prior folder's own config


GPU = Sizes(matmul_n=8192, doc_tokens=512, docs=4096, body_width=512, body_reps=10,
            llama_tokens=2048, llama_docs=2, llama=LLAMA3_8B, train_model=TRAIN_MODEL,
            train_steps=40, prior_config=None)
DRY = Sizes(matmul_n=256, doc_tokens=64, docs=24, body_width=64, body_reps=2,
            llama_tokens=128, llama_docs=1,
            llama=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                       num_key_value_heads=2, intermediate_size=448, vocab_size=128256,
                       max_position_embeddings=512, tie_word_embeddings=False),
            train_model=dict(layers=2, hidden=64, heads=4, context=64, batch=4), train_steps=6,
            prior_config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, intermediate_size=128, head_dim=16))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, n: int, reps: int = 20) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    for _ in range(3):
        a @ b
    sync(device)
    started = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - started) / 1e12


def forward_flops(model: torch.nn.Module, context: int) -> float:
    """FLOPs per token of a forward pass: 2 per weight of every linear layer of ``model``
    (with the head for a ...ForCausalLM, without it for its ``base_model``) and causal
    attention's QK^T and AV over half the context on average."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    return 2 * linear + 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * context / 2


def prose(paths: str | None, count: int, words_per_doc: int) -> tuple[list[str], str]:
    """``count`` documents of ``words_per_doc`` words: pieces of the texts in the jsonl(.gz)
    files matching ``paths`` (cycled if they hold fewer), else generated sentences."""
    texts = []
    for path in sorted(glob.glob(paths)) if paths else []:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    pieces = []
    for text in texts:
        words = text.split()
        pieces += [" ".join(words[i: i + words_per_doc])
                   for i in range(0, len(words) - words_per_doc + 1, words_per_doc)]
    source = f"{len(texts)} documents of {paths}"
    if not pieces:
        rng = random.Random(0)
        vocab = ("the of and to in a is that for it as was with be by on not he this are or his "
                 "from at which but have an they you were her she there been one all would "
                 "their we him time has more when will who new state year could people "
                 "government water house between system program children public").split()
        sentence = lambda: " ".join(rng.choice(vocab) for _ in range(rng.randint(6, 20))) + "."  # noqa: E731
        pieces = [" ".join(sentence() for _ in range(words_per_doc // 10)).capitalize()
                  for _ in range(count)]
        source = "generated sentences"
    return [pieces[i % len(pieces)] for i in range(count)], source


def random_prior(prior_dir: Path, sizes: Sizes, device: torch.device, folder: Path) -> str:
    """The default prior's architecture (or the dry run's tiny one) with random bf16
    weights, saved with the tokenizer into ``folder``; returns the folder to load."""
    if (prior_dir / "model.safetensors").exists() and sizes.prior_config is None:
        return str(prior_dir)  # the real weights travelled
    config = AutoConfig.from_pretrained(prior_dir)
    for key, value in (sizes.prior_config or {}).items():
        setattr(config, key, value)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(prior_dir).save_pretrained(folder)
    return str(folder)


def timed_score(scorer: Scorer, texts: list[str]) -> tuple[float, int]:
    ids = [f"d{i}" for i in range(len(texts))]
    started = time.perf_counter()
    results = scorer.score(ids, texts)
    sync(scorer.prior.device)
    tokens = sum(r.scored_tokens for r in results)
    return tokens / (time.perf_counter() - started), tokens


@torch.inference_mode()
def body_rate(prior: Prior, rows: int, width: int, reps: int, compiled: bool) -> tuple[float, float]:
    """(tokens/s, seconds of the first call) of the body alone on packed [rows, width]."""
    body = prior.compiled_body if compiled else prior.model.base_model
    x = torch.randint(0, prior.vocab_size, (rows, width), device=prior.device)
    started = time.perf_counter()
    body(input_ids=x, use_cache=False)
    sync(prior.device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(reps):
        body(input_ids=x, use_cache=False)
    sync(prior.device)
    return rows * width * reps / (time.perf_counter() - started), first


def train_rate(sizes: Sizes, vocab: int, compile_: bool | str) -> dict:
    m = LMConfig(**sizes.train_model, epochs=1, lr=6e-4, compile=compile_)
    arith = train_mod.device_arithmetic(m)
    stream = torch.randint(0, vocab, (sizes.train_steps * m.batch * m.context + 1,)).numpy()
    stamps: list[float] = []

    class Stamps:  # a Progress: the time of each step's end
        def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None:
            stamps.append(time.perf_counter())

    _, losses, compile_seconds = train_mod.train(stream, vocab, m, seed=1, progress=Stamps(),
                                                 arith=arith)
    skip = min(3, len(stamps) - 2)  # the first steps compile and warm the allocator
    steps = len(stamps) - 1 - skip
    tokens_per_s = steps * m.batch * m.context / (stamps[-1] - stamps[skip])
    model = train_mod.build_model(vocab, m, 0)
    flops = 3 * forward_flops(model, m.context)  # forward + backward (2x forward)
    return {"tokens_per_s": tokens_per_s, "tflops": tokens_per_s * flops / 1e12,
            "compile_seconds": compile_seconds, "arithmetic": arith.__dict__,
            "final_loss": losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", required=True, type=Path,
                        help="folder with the prior's config.json and tokenizer (weights optional)")
    parser.add_argument("--text", help="jsonl(.gz) files (a glob) with a 'text' field: the prose")
    parser.add_argument("--compile", choices=["auto", "true", "false"], default=None,
                        help="the engine's and training's compile (default: auto; dry run: false)")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny sizes on this machine's device (CPU): checks the code paths")
    args = parser.parse_args()
    sizes = DRY if args.dry_run else GPU
    compile_ = args.compile or ("false" if args.dry_run else "auto")
    compile_setting = {"auto": "auto", "true": True, "false": False}[compile_]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.prior)
    out: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                 "torch": torch.__version__, "dry_run": args.dry_run, "compile": compile_}
    rows: list[tuple[str, float, str, float | None]] = []  # name, value, unit, share

    out["matmul_tflops"] = matmul_tflops(device, sizes.matmul_n)
    bound_flops = out["matmul_tflops"] * 1e12
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = random_prior(args.prior, sizes, device, tmp / "prior")
        prior = load_prior(folder, tmp, "bfloat16", device.type)
        per_token = forward_flops(prior.model, sizes.doc_tokens)
        bound = bound_flops / per_token
        out.update(prior_gflop_per_token=per_token / 1e9, prior_bound_tokens_per_s=bound)
        texts, out["text"] = prose(args.text, sizes.docs, int(sizes.doc_tokens * 0.9))

        scorer = Scorer(prior, EditConfig(), seed=1, max_tokens=sizes.doc_tokens,
                        compile=compile_setting)
        full_rows = scorer.batch_tokens // width_bucket(sizes.doc_tokens, scorer.window)
        timed_score(scorer, texts[: full_rows + 8])  # warm-up: compiles the full batch's shape
        out["engine_tokens_per_s"], out["engine_tokens"] = timed_score(scorer, texts)
        out.update(engine_share=out["engine_tokens_per_s"] / bound,
                   engine_batch_tokens=scorer.batch_tokens,
                   engine_logits_chunk=scorer.logits_chunk,
                   engine_compile_seconds=scorer.compile_seconds)
        rows.append(("engine (Scorer, batch auto)", out["engine_tokens_per_s"], "tokens/s",
                     out["engine_share"]))

        body_rows = max(1, min(512, scorer.batch_tokens // sizes.body_width))
        body_flops = forward_flops(prior.model.base_model, sizes.body_width)  # no head
        for kind in ("eager", "compiled"):
            rate, first = body_rate(prior, body_rows, sizes.body_width, sizes.body_reps,
                                    kind == "compiled")
            share = rate * body_flops / bound_flops
            out[f"body_{kind}_tokens_per_s"], out[f"body_{kind}_share"] = rate, share
            out[f"body_{kind}_first_call_seconds"] = first
            rows.append((f"body {kind} [{body_rows} x {sizes.body_width}]", rate, "tokens/s",
                         share))

        shard, ids = tmp / "shard.parquet", [f"d{i}" for i in range(len(texts))]
        pq.write_table(pa.table({"id": ids, "text": texts, "doc_hash": ids}), shard)
        cfg = PriorConfig(model=folder, precision="bfloat16", max_tokens=sizes.doc_tokens,
                          compile=compile_setting)
        stats = score_shard(shard, tmp / "scores.parquet", tmp, cfg, EditConfig(), seed=1)
        out["stage_tokens_per_s"] = stats.scored_tokens / stats.seconds
        out.update(stage_share=out["stage_tokens_per_s"] / bound,
                   stage_vs_engine=out["stage_tokens_per_s"] / out["engine_tokens_per_s"],
                   stage_compile_seconds=stats.compile_seconds)
        rows.append(("stage (score_shard)", out["stage_tokens_per_s"], "tokens/s",
                     out["stage_share"]))
        del scorer
        vocab = prior.vocab_size

    with torch.device(device):
        big = AutoModelForCausalLM.from_config(LlamaConfig(**sizes.llama), dtype=torch.bfloat16)
    llama = Prior(big.eval(), tokenizer, "llama-3-8b-shaped", sizes.llama["max_position_embeddings"],
                  device)
    per_token = forward_flops(big, sizes.llama_tokens)
    scorer = Scorer(llama, EditConfig(), seed=1, max_tokens=sizes.llama_tokens,
                    compile=compile_setting)
    full_rows = max(1, scorer.batch_tokens // width_bucket(sizes.llama_tokens, scorer.window))
    long_texts, _ = prose(args.text, full_rows * (sizes.llama_docs + 1),
                          int(sizes.llama_tokens * 0.9))
    timed_score(scorer, long_texts[:full_rows])  # warm-up: the compile
    rate, _ = timed_score(scorer, long_texts[full_rows:])
    out.update(llama8b_tokens_per_s=rate, llama8b_share=rate * per_token / bound_flops,
               llama8b_gflop_per_token=per_token / 1e9, llama8b_batch_tokens=scorer.batch_tokens,
               llama8b_compile_seconds=scorer.compile_seconds)
    rows.append((f"Llama-3-8B shape at {sizes.llama_tokens} tokens", rate, "tokens/s",
                 out["llama8b_share"]))
    del scorer, llama, big
    if device.type == "cuda":
        torch.cuda.empty_cache()

    trained = train_rate(sizes, vocab, compile_setting)
    out.update(train_tokens_per_s=trained["tokens_per_s"], train_tflops=trained["tflops"],
               train_share=trained["tflops"] * 1e12 / bound_flops,
               train_compile_seconds=trained["compile_seconds"],
               train_arithmetic=trained["arithmetic"])
    rows.append((f"training {sizes.train_model['layers']} x {sizes.train_model['hidden']}",
                 trained["tokens_per_s"], "tokens/s", out["train_share"]))

    out["targets"] = {k: {"target": t, "value": out[k], "met": out[k] >= t}
                      for k, t in TARGETS.items()}
    print(f"{out['device']}: bf16 matmul {out['matmul_tflops']:.1f} TFLOP/s; prior "
          f"{out['prior_gflop_per_token']:.3f} GFLOP/token, bound {bound:,.0f} tokens/s; "
          f"text: {out['text']}")
    print(f"{'figure':<40}{'value':>14} {'unit':<10}{'of bound':>9}")
    for name, value, unit, share in rows:
        print(f"{name:<40}{value:>14,.0f} {unit:<10}{share:>9.1%}")
    print(f"stage / engine: {out['stage_vs_engine']:.2f}; compile: engine "
          f"{out['engine_compile_seconds']:.1f} s, 8B {out['llama8b_compile_seconds']:.1f} s, "
          f"training {out['train_compile_seconds']:.1f} s")
    for key, t in out["targets"].items():
        verdict = "met" if t["met"] else "NOT met"
        print(f"target {key} >= {t['target']:.2f}: {t['value']:.3f} {verdict}"
              + (" (dry run: sizes too small to mean anything)" if args.dry_run else ""))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
