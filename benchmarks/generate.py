"""Generation of the synthetic corpora: semisynth's decode loop (``tasks.generation``:
static KV cache, continuous batching, top-p over the top-64) against ``model.generate``,
one prompt at a time (the plain loop) and in left-padded batches (semisynth's path before
issue 20).

Run with the project's venv:
    .venv/bin/python benchmarks/generate.py [--prompts 32 --new-tokens 128 --repeat 1]
    [--precision auto] [--slots 32 64] [--batch 16] [--threads 2]

The prompts are the demo's: the first 12 words of Brown documents. Every path samples with
the same options (temperature 0.8, top-p 0.95, at least half of ``--new-tokens``, stop at
EOS) from the same seed; tokens/s counts the tokens written. The machine is shared: each
repeat runs every path once, in an order that alternates between repeats, and a speed-up
is the median of the repeats' ratios. The bound is the precision's matmul GFLOP/s,
measured in the same run, over the prior's FLOPs per token at the mean context. Prints a
table and one JSON line (``speedup_vs_plain_generate``: the first ``--slots`` against the
plain loop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from semisynth.config import data_root
from semisynth.tasks import assets, generation
from semisynth.tasks.prior import DTYPES, load_prior, resolve_precision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_edit import flops_per_token, matmul_gflops, official_prior  # noqa: E402

TEMPERATURE, TOP_P = 0.8, 0.95


@torch.inference_mode()
def plain(prior, prompts: list[str], new_tokens: int, seed: int) -> int:
    """The baseline: one prompt per ``model.generate`` call, no padding. Tokens written."""
    tok = prior.tokenizer
    options = assets.sampling_options(tok, new_tokens, TEMPERATURE, TOP_P)
    torch.manual_seed(seed)
    written = 0
    for prompt in prompts:
        enc = tok(prompt, add_special_tokens=False, return_tensors="pt").to(prior.device)
        out = prior.model.generate(**enc, **options)
        written += int((out[0, enc["input_ids"].shape[1] :] != options["pad_token_id"]).sum())
    return written


@torch.inference_mode()
def batched_generate(prior, prompts: list[str], new_tokens: int, seed: int, batch: int) -> int:
    """``model.generate`` on left-padded batches of ``batch`` prompts (padding after an EOS
    not counted)."""
    options = assets.sampling_options(prior.tokenizer, new_tokens, TEMPERATURE, TOP_P)
    written = 0
    for k, lo in enumerate(range(0, len(prompts), batch)):
        enc = assets.left_padded(prior.tokenizer, prompts[lo : lo + batch], prior.device)
        torch.manual_seed(assets.batch_seed(seed, k))
        out = prior.model.generate(**enc, **options)
        written += int((out[:, enc["input_ids"].shape[1] :] != options["pad_token_id"]).sum())
    return written


def decoded(prior, prompts: list[str], new_tokens: int, seed: int, slots: int) -> int:
    """semisynth's path (``assets.generate``); tokens written, as its progress reports them."""

    class Count:
        written = 0

        def advance(self, n: int = 1, also: int = 0, detail: str | None = None) -> None:
            self.written += also

    count = Count()
    assets.generate(prior, prompts, new_tokens, seed, TEMPERATURE, TOP_P, slots, count)
    return count.written


def timed(fn, *args) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = fn(*args)
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precision", default="auto", choices=["auto", "bfloat16", "float32"])
    parser.add_argument("--slots", type=int, nargs="+", default=[generation.SLOTS],
                        help="the decode loop at each; the speed-up is the first one's")
    parser.add_argument("--batch", type=int, default=16, help="model.generate's batch")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-plain", action="store_true", help="leave the plain loop out")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None,
                        help="default: $SEMISYNTH_TEST_ASSETS if set, else the data root")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root or os.environ.get("SEMISYNTH_TEST_ASSETS") or data_root())
    precision = resolve_precision(args.precision, "cpu")
    prior = load_prior("default", root, precision, "cpu")
    official = official_prior(root, precision)  # transformers' model: model.generate
    prompts = [p for _, p in assets.seed_prompts(assets.fetch_brown(root), args.prompts, 12)]
    load_before = os.getloadavg()
    print(f"{date.today()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {precision} ({args.precision}), {len(prompts)} "
          f"prompts x {args.new_tokens} new tokens, load {load_before[0]:.1f}", flush=True)

    paths = {f"decode slots={s}": (decoded, s) for s in args.slots}
    paths[f"model.generate B={args.batch}"] = (batched_generate, args.batch)
    if not args.no_plain:
        paths = {"plain": (plain, None), **paths}
    decoded(prior, prompts[:2], 8, args.seed, 2)  # warm-up: first-call costs out of the runs

    # per path: tokens per wall second and per CPU second of the runs (on a crowded
    # machine the CPU figure is the steadier one: it leaves out the time other processes ran)
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.repeat):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            fn, b = paths[name]
            extra = () if b is None else (b,)
            model = prior if fn is decoded else official
            tokens, seconds, cpu_s = timed(fn, model, prompts, args.new_tokens, args.seed, *extra)
            wall[name].append(tokens / seconds)
            cpu[name].append(tokens / cpu_s)
            print(f"  repeat {r + 1} {name}: {tokens} tokens in {seconds:.1f} s "
                  f"({cpu_s:.1f} CPU s) = {tokens / seconds:.1f} tokens/s, "
                  f"{tokens / cpu_s:.1f} per CPU s", flush=True)

    gflops = matmul_gflops(DTYPES[precision])
    mean_context = len(prior.tokenizer(prompts[0])["input_ids"]) + args.new_tokens * 3 // 4
    bound = gflops * 1e9 / flops_per_token(prior.model, mean_context)
    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    print("\n| path | tokens/s (median) | tokens per CPU s (median) | share of bound | tokens/s of the runs |")
    print("|---|---:|---:|---:|---|")
    for name in paths:
        print(f"| {name} | {med(wall[name])} | {med(cpu[name])} | {med(wall[name]) / bound:.1%} | "
              f"{', '.join(f'{x:.1f}' for x in wall[name])} |")
    first = f"decode slots={args.slots[0]}"
    hf = f"model.generate B={args.batch}"

    def speedup(other: str) -> float:
        return round(statistics.median(a / b for a, b in zip(wall[first], wall[other], strict=True)), 2)

    summary = {
        "date": str(date.today()), "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "precision": precision, "prompts": len(prompts),
        "new_tokens": args.new_tokens, "repeat": args.repeat, "threads": torch.get_num_threads(),
        "load_before": round(load_before[0], 2), "load_after": round(os.getloadavg()[0], 2),
        "slots": args.slots[0], "batch": args.batch,
        "decode_tokens_per_s": med(wall[first]), "decode_tokens_per_cpu_s": med(cpu[first]),
        "tokens_per_s": {name: med(rates) for name, rates in wall.items()},
        "tokens_per_cpu_s": {name: med(rates) for name, rates in cpu.items()},
        "matmul_gflops": round(gflops, 1), "bound_tokens_per_s": round(bound, 1),
        "share_of_bound": round(med(wall[first]) / bound, 4),
        "speedup_vs_batched_generate": speedup(hf),
    }
    if "plain" in paths:
        summary.update(plain_tokens_per_s=med(wall["plain"]),
                       speedup_vs_plain_generate=speedup("plain"))
        print(f"\nspeed-up of {first}: {summary['speedup_vs_plain_generate']:.2f}x over the plain "
              f"loop, {summary['speedup_vs_batched_generate']:.2f}x over {hf}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
