"""Generation of the synthetic corpora: plain ``model.generate`` one prompt at a time
against ``semisynth.tasks.assets.generate`` (left-padded batches, attention mask, KV cache).

Run with the project's venv:
    .venv/bin/python benchmarks/generate.py [--prompts 16 --new-tokens 128 --repeat 3]
    [--precision bfloat16] [--batch-sizes 16 8] [--threads 1] [--compile]

The prompts are the demo's: the first 12 words of Brown documents. Both paths sample with
the same options (``assets.sampling_options``: temperature 0.8, top-p 0.95, at least half
of ``--new-tokens``, stop at EOS); tokens/s counts the tokens written (padding after an
EOS not counted). The machine is shared: each repeat runs every path once, in an order
that alternates between repeats, and the speed-up is the median of the repeats' ratios.
``--compile``: also the batched path with a static cache and transformers' automatic
``torch.compile`` of the forward (``compile_config``), its first call (the compile) timed
apart. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from transformers import CompileConfig

from semisynth.config import data_root
from semisynth.tasks import assets
from semisynth.tasks.prior import load_prior

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


def batched(prior, prompts: list[str], new_tokens: int, seed: int, batch_size: int) -> int:
    """semisynth's path; tokens written, as its progress callback reports them."""
    written = 0

    def count(_docs: int, tokens: int) -> None:
        nonlocal written
        written += tokens

    assets.generate(prior, prompts, new_tokens, seed, TEMPERATURE, TOP_P, batch_size, count)
    return written


@torch.inference_mode()
def compiled(prior, prompts: list[str], new_tokens: int, seed: int, batch_size: int) -> int:
    """The batched path with a static KV cache and transformers' automatic torch.compile of
    the decoding forward. On a CPU transformers compiles only when the compile config says
    so (``_compile_all_devices``, the flag its CompileConfig documents for that)."""
    config = CompileConfig(mode="default", dynamic=False)
    config._compile_all_devices = True
    options = assets.sampling_options(prior.tokenizer, new_tokens, TEMPERATURE, TOP_P)
    written = 0
    for k, lo in enumerate(range(0, len(prompts), batch_size)):
        enc = assets.left_padded(prior.tokenizer, prompts[lo : lo + batch_size], prior.device)
        torch.manual_seed(assets.batch_seed(seed, k))
        out = prior.model.generate(**enc, **options, cache_implementation="static",
                                   compile_config=config)
        written += int((out[:, enc["input_ids"].shape[1] :] != options["pad_token_id"]).sum())
    return written


def timed(fn, *args) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds of this process)."""
    start, cpu = time.perf_counter(), time.process_time()
    tokens = fn(*args)
    return tokens, time.perf_counter() - start, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--precision", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[assets.GENERATE_BATCH],
                        help="batched path at each; the speed-up is the first one's")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no-plain", action="store_true", help="batch sizes only")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's own); on a crowded machine 1 "
                        "avoids threads waiting on one another")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-root", default=None,
                        help="default: $SEMISYNTH_TEST_ASSETS if set, else the data root")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.data_root or os.environ.get("SEMISYNTH_TEST_ASSETS") or data_root())

    prior = load_prior("default", root, args.precision, "cpu")
    prompts = [p for _, p in assets.seed_prompts(assets.fetch_brown(root), args.prompts, 12)]
    load_before = os.getloadavg()
    print(f"{date.today()} {platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.precision}, {len(prompts)} prompts x "
          f"{args.new_tokens} new tokens, load {load_before[0]:.1f}", flush=True)

    paths = {f"batched B={b}": (batched, b) for b in args.batch_sizes}
    if not args.no_plain:
        paths = {"plain": (plain, None), **paths}
    if args.compile:
        b = args.batch_sizes[0]
        _, first, _ = timed(compiled, prior, prompts, args.new_tokens, args.seed, b)
        print(f"compiled B={b}: first call (compiles) {first:.1f} s", flush=True)
        paths[f"compiled B={b}"] = (compiled, b)
    batched(prior, prompts[:2], 8, args.seed, 2)  # warm-up: first-call costs out of the runs

    # per path: tokens per wall second and per CPU second of the runs (on a crowded
    # machine the CPU figure is the steadier one: it leaves out the time other processes ran)
    wall: dict[str, list[float]] = {name: [] for name in paths}
    cpu: dict[str, list[float]] = {name: [] for name in paths}
    for r in range(args.repeat):
        order = list(paths) if r % 2 == 0 else list(reversed(paths))
        for name in order:
            fn, b = paths[name]
            extra = () if b is None else (b,)
            tokens, seconds, cpu_s = timed(fn, prior, prompts, args.new_tokens, args.seed, *extra)
            wall[name].append(tokens / seconds)
            cpu[name].append(tokens / cpu_s)
            print(f"  repeat {r + 1} {name}: {tokens} tokens in {seconds:.1f} s "
                  f"({cpu_s:.1f} CPU s) = {tokens / seconds:.1f} tokens/s, "
                  f"{tokens / cpu_s:.1f} per CPU s", flush=True)

    med = lambda xs: round(statistics.median(xs), 1)  # noqa: E731
    print("\n| path | tokens/s (median) | tokens per CPU s (median) | tokens/s of the runs |")
    print("|---|---:|---:|---|")
    for name in paths:
        print(f"| {name} | {med(wall[name])} | {med(cpu[name])} | "
              f"{', '.join(f'{x:.1f}' for x in wall[name])} |")
    first = f"batched B={args.batch_sizes[0]}"
    summary = {
        "date": str(date.today()), "precision": args.precision, "prompts": len(prompts),
        "new_tokens": args.new_tokens, "repeat": args.repeat, "threads": torch.get_num_threads(),
        "load_before": round(load_before[0], 2), "load_after": round(os.getloadavg()[0], 2),
        "batch_size": args.batch_sizes[0],
        "batched_tokens_per_s": med(wall[first]), "batched_tokens_per_cpu_s": med(cpu[first]),
        "tokens_per_s": {name: med(rates) for name, rates in wall.items()},
        "tokens_per_cpu_s": {name: med(rates) for name, rates in cpu.items()},
    }
    if "plain" in paths:
        ratios = [b / p for b, p in zip(wall[first], wall["plain"], strict=True)]
        cpu_ratios = [b / p for b, p in zip(cpu[first], cpu["plain"], strict=True)]
        summary.update(plain_tokens_per_s=med(wall["plain"]), plain_tokens_per_cpu_s=med(cpu["plain"]),
                       speedup=round(statistics.median(ratios), 2),
                       speedup_cpu=round(statistics.median(cpu_ratios), 2))
        print(f"\nspeed-up of {first} over plain, median of the repeats: {summary['speedup']:.2f}x "
              f"in tokens/s ({', '.join(f'{x:.2f}' for x in ratios)}), "
              f"{summary['speedup_cpu']:.2f}x per CPU s ({', '.join(f'{x:.2f}' for x in cpu_ratios)})")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
