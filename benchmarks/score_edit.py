"""The score+edit stage against a reference-equivalent of the official ToEdit code.

Run with the project's venv:  .venv/bin/python benchmarks/score_edit.py [--docs 16]

On the same documents (512-token documents of the demo human corpus) and the same prior:
  (a) the official code's shape: per document a forward pass, top-8 log-probs, then a
      per-token Python loop that redraws tokens with p > 0.99 from softmax(logp / 1.5);
      in float32 and in bf16;
  (b) semisynth's engine (token-budget batches, ToEdit on the tensors), with its body
      compiled as ``--compile`` says (default true: the compile, timed in a warm-up on two
      documents, is reported apart as compile_seconds and left out of the rate; a second
      run finds it in the cache under the data root), and eagerly;
  (c) the stage itself, ``score_shard`` over a Parquet shard of the same documents (reading,
      tokenizing and writing overlapped with the prior), and its rate over (b)'s.
``--precision`` (default auto: what ``resolve_precision("auto")`` picks on this host) is
the engine's; the official shape runs in float32, in it, and in the auto precision.
Prints tokens/s, ratios, the machine's bound (measured matmul GFLOP/s divided by the
prior's FLOPs per token: bf16's, and the auto precision's own) and the share of it (b)
reaches, edit rates, and the peak resident memory of the stage (score_shard over a shard)
at 1x and 4x the documents.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import torch

from semisynth import documents
from semisynth.config import EditConfig, PriorConfig, data_root
from semisynth.tasks.assets import fetch_brown
from semisynth.tasks.prior import fetch_default_prior, load_prior, resolve_precision
from semisynth.tasks.toedit import Scorer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ngrams import peak_rss_mb  # noqa: E402  (VmHWM: ru_maxrss would carry the parent's peak)


def official_prior(root: Path, precision: str, device: str = "cpu") -> SimpleNamespace:
    """The default prior as the official code loads it: transformers' model and tokenizer
    (semisynth's own ``load_prior`` builds a Llama prior without transformers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = fetch_default_prior(root)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, precision))
    return SimpleNamespace(model=model.to(device).eval(), tokenizer=AutoTokenizer.from_pretrained(folder),
                           device=torch.device(device))


def human_documents(root: Path, count: int, tokens: int, tokenizer) -> tuple[list[str], list[str]]:
    ids, texts = [], []
    for shard in fetch_brown(root):
        for rec in documents.read_records(str(shard)):
            enc = tokenizer(rec.text, add_special_tokens=False)["input_ids"]
            if rec.reason is None and len(enc) >= tokens:
                ids.append(rec.id)
                texts.append(tokenizer.decode(enc[:tokens]))
            if len(ids) == count:
                return ids, texts
    raise SystemExit(f"only {len(ids)} documents of {tokens} tokens found")


@torch.inference_mode()
def official_style(prior, texts: list[str], max_tokens: int, seed: int,
                   outputs: list[list[int]] | None = None) -> tuple[int, int]:
    """A reference-equivalent of the official code: per-document forward, top-8
    log-probs, per-token Python resampling loop. Returns (scored tokens, edited); each
    document's edited tokens are appended to ``outputs`` if given."""
    rng = np.random.default_rng(seed)
    scored = edited = 0
    for text in texts:
        ids = prior.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :max_tokens]
        logp = torch.log_softmax(prior.model(ids).logits[0, :-1].float(), dim=-1)
        top_logp, top_idx = logp.topk(8, dim=-1)
        token_logp = logp.gather(1, ids[0, 1:, None]).squeeze(1)
        tokens = ids[0].tolist()
        for i in range(1, len(tokens)):
            if float(np.exp(token_logp[i - 1].item())) > 0.99:
                weights = torch.softmax(top_logp[i - 1] / 1.5, dim=-1).numpy()
                new = int(top_idx[i - 1][rng.choice(8, p=weights / weights.sum())])
                edited += new != tokens[i]
                tokens[i] = new
        scored += len(tokens) - 1
        if outputs is not None:
            outputs.append(tokens)
    return scored, edited


def compile_setting(args) -> bool | str:
    return {"true": True, "false": False}.get(args.compile, "auto")


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def matmul_gflops(dtype=torch.bfloat16, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def flops_per_token(model, context: int) -> float:
    """2 FLOPs per weight of every linear layer (the tied output head included), plus
    causal attention's QK^T and AV over half the context on average."""
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    attention = 2 * 2 * cfg.num_hidden_layers * cfg.hidden_size * context / 2
    return 2 * linear + attention


def stage_rate(args, root: Path, ids: list[str], texts: list[str], tmp: Path) -> dict:
    """(c): score_shard over a shard of the documents, the prior already loaded."""
    from semisynth.tasks.score import score_shard

    shard = tmp / "shard.parquet"
    documents.write_documents([{"id": i, "text": t, "doc_hash": i} for i, t in zip(ids, texts, strict=True)],
                              shard)
    cfg = PriorConfig(precision=args.precision, max_tokens=args.tokens, batch_tokens=args.batch_tokens,
                      compile=compile_setting(args))
    stats = score_shard(shard, tmp / "scores.parquet", root, cfg, EditConfig(), seed=1)
    table = pq.read_table(tmp / "scores.parquet", columns=["scored_tokens", "edited_tokens"])
    edited = sum(table.column("edited_tokens").to_pylist())
    return {"tokens_per_s": stats.scored_tokens / stats.seconds,
            "edit_rate": edited / stats.scored_tokens, "seconds": stats.seconds,
            "compile_seconds": stats.compile_seconds}


def peak_rss_child(args) -> None:
    """Child mode: score one shard of N documents through the real stage; print peak RSS."""
    from semisynth.tasks.score import score_shard

    root = Path(args.data_root)
    prior = load_prior("default", root, args.precision)
    ids, texts = human_documents(root, args.docs, args.tokens, prior.tokenizer)
    reps = args.rss_child // len(ids) + 1
    rows = [{"id": f"{i}-{r}", "text": t, "doc_hash": f"{i}-{r}"}
            for r in range(reps) for i, t in zip(ids, texts, strict=True)][: args.rss_child]
    with tempfile.TemporaryDirectory() as tmp:
        shard = Path(tmp) / "shard.parquet"
        documents.write_documents(rows, shard)
        cfg = PriorConfig(precision=args.precision, max_tokens=args.tokens, batch_tokens=args.batch_tokens,
                          compile=compile_setting(args))
        score_shard(shard, Path(tmp) / "scores.parquet", root, cfg, EditConfig(), seed=1)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def peak_rss(args, docs: int) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(docs), "--docs", str(args.docs),
         "--tokens", str(args.tokens), "--data-root", args.data_root,
         "--precision", args.precision, "--batch-tokens", str(args.batch_tokens),
         "--compile", args.compile],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def engine_rate(prior, ids, texts, args, compile_: bool | str) -> dict:
    """(b): the Scorer over the documents after a warm-up on two of them, which holds the
    compile when there is one (its seconds are reported, not counted in the rate)."""
    scorer = Scorer(prior, EditConfig(), seed=1, max_tokens=args.tokens, batch_tokens=args.batch_tokens,
                    compile=compile_)
    scorer.score(ids[:2], texts[:2])  # warm-up
    compile_seconds = scorer.compile_seconds
    results, secs = timed(scorer.score, ids, texts)
    scored = sum(r.scored_tokens for r in results)
    return {"tokens_per_s": scored / secs, "edit_rate": sum(r.edited_tokens for r in results) / scored,
            "seconds": secs, "compile_seconds": compile_seconds + scorer.compile_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", choices=["true", "false", "auto"], default="true",
                        help="the engine's and the stage's prior.compile (default true)")
    parser.add_argument("--batch-tokens", type=int, default=4096)
    parser.add_argument("--data-root", default=str(data_root()))
    parser.add_argument("--rss-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.precision = resolve_precision(args.precision)
    if args.rss_child:
        return peak_rss_child(args)
    root = Path(args.data_root)
    torch.set_num_threads(os.cpu_count() or 1)  # the engine's Scorer uses every core: so do (a)
    auto = resolve_precision("auto")
    officials = {p: official_prior(root, p) for p in dict.fromkeys(["float32", args.precision, auto])}
    fast = load_prior("default", root, args.precision)
    ids, texts = human_documents(root, args.docs, args.tokens, fast.tokenizer)

    rows = {}
    for precision, prior in officials.items():
        official_style(prior, texts[:2], args.tokens, 0)  # warm-up
        (scored, edited), secs = timed(official_style, prior, texts, args.tokens, 1)
        rows[f"official_{precision}"] = {"tokens_per_s": scored / secs, "edit_rate": edited / scored,
                                         "seconds": secs}
    name = f"semisynth_{args.precision}"
    rows[f"{name}_eager"] = engine_rate(fast, ids, texts, args, False)
    rows[name] = engine_rate(fast, ids, texts, args, compile_setting(args))
    with tempfile.TemporaryDirectory() as tmp:
        rows["stage_score_shard"] = stage_rate(args, root, ids, texts, Path(tmp))
    gflops = matmul_gflops(torch.bfloat16)
    auto_gflops = gflops if auto == "bfloat16" else matmul_gflops(getattr(torch, auto))
    per_token = flops_per_token(fast.model, args.tokens)
    bound, auto_bound = gflops * 1e9 / per_token, auto_gflops * 1e9 / per_token
    engine = rows[name]["tokens_per_s"]
    rss_1x, rss_4x = peak_rss(args, args.docs), peak_rss(args, 4 * args.docs)
    summary = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "docs": args.docs, "tokens_per_doc": args.tokens,
        "precision": args.precision, "auto_precision": auto, "compile": args.compile,
        "batch_tokens": args.batch_tokens, "results": rows,
        "speedup_vs_official_float32": engine / rows["official_float32"]["tokens_per_s"],
        f"speedup_vs_official_{args.precision}": engine / rows[f"official_{args.precision}"]["tokens_per_s"],
        "speedup_vs_official_auto": engine / rows[f"official_{auto}"]["tokens_per_s"],
        "eager_speedup_vs_official_auto": rows[f"{name}_eager"]["tokens_per_s"]
        / rows[f"official_{auto}"]["tokens_per_s"],
        "compile_seconds": rows[name]["compile_seconds"],
        "stage_vs_engine": rows["stage_score_shard"]["tokens_per_s"] / engine,
        "bf16_matmul_gflops": gflops, "gflop_per_token": per_token / 1e9,
        "bound_tokens_per_s": bound, "share_of_bound": engine / bound,
        "auto_matmul_gflops": auto_gflops, "share_of_bound_auto": engine / auto_bound,
        "peak_rss_mb_1x": rss_1x, "peak_rss_mb_4x": rss_4x, "rss_growth_4x": rss_4x / rss_1x - 1,
    }
    print(f"{'implementation':<34}{'tokens/s':>10}{'edit rate':>11}{'seconds':>9}")
    for key, r in rows.items():
        print(f"{key:<34}{r['tokens_per_s']:>10.0f}{r['edit_rate']:>11.4%}{r['seconds']:>9.1f}")
    print(f"compile (not in the rates): {summary['compile_seconds']:.1f} s")
    print(f"speed-up vs official float32: {summary['speedup_vs_official_float32']:.2f}x; "
          f"vs official {args.precision}: {summary[f'speedup_vs_official_{args.precision}']:.2f}x; "
          f"vs official auto ({auto}): {summary['speedup_vs_official_auto']:.2f}x "
          f"(eager engine {summary['eager_speedup_vs_official_auto']:.2f}x)")
    print(f"stage (score_shard) / engine: {summary['stage_vs_engine']:.2f}")
    print(f"bound: {gflops:.0f} GFLOP/s bf16 matmul / {per_token / 1e9:.3f} GFLOP per token = "
          f"{bound:.0f} tokens/s; the engine reaches {engine / bound:.0%}; of the auto precision's "
          f"({auto_gflops:.0f} GFLOP/s) {summary['share_of_bound_auto']:.0%}")
    print(f"peak RSS of the stage: {rss_1x:.0f} MB at {args.docs} docs, {rss_4x:.0f} MB at "
          f"{4 * args.docs} docs ({summary['rss_growth_4x']:+.1%})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
