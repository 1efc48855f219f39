"""The collapse experiment's training step: the prior's whole vocabulary against the
experiment's remapped one (``tasks.vocabulary.remap``).

Times optimizer steps of the demo's model (configs/experiment-demo.yaml) on random tokens
at both output sizes, one torch thread (as each of the demo's two Dask workers), and prints
wall and CPU milliseconds per step (CPU time is steadier on a shared machine) and the
projected training time of the demo's 40 models.

    .venv/bin/python benchmarks/train_vocab.py --vocab 17000
    .venv/bin/python benchmarks/train_vocab.py --vocab-file var/experiments/vocab/<hash>.npy
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from semisynth.config import load_experiment_config
from semisynth.tasks import train

PRIOR_VOCAB = 49_152


def time_steps(vocab: int, m, steps: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of one optimizer step at this output size."""
    model = train.build_model(vocab, m, seed=0)
    opt = train.optimizer(model, m)
    stream = np.random.default_rng(0).integers(0, vocab, m.batch * m.context + 1)
    x, y = train.sequences(stream, m.context)
    walls, cpus = [], []
    for _ in range(steps + 1):  # the first step warms up
        w, c = time.perf_counter(), time.process_time()
        train.next_token_loss(model, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls[1:])), float(np.median(cpus[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/experiment-demo.yaml")
    ap.add_argument("--vocab", type=int, help="the remapped vocabulary's size")
    ap.add_argument("--vocab-file", help="a vocabulary the experiment wrote (its size is used)")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    cfg = load_experiment_config(args.config)
    vocab = len(np.load(args.vocab_file)) if args.vocab_file else args.vocab
    torch.set_num_threads(1)
    m = cfg.model
    runs = len(cfg.arms) * len(cfg.seeds)
    steps = train.steps_for(cfg.train_tokens, m)
    print(f"model: {m.layers} layers, hidden {m.hidden}, context {m.context}, batch {m.batch}; "
          f"{steps} steps per model, {runs} models")
    results = {}
    for size in (PRIOR_VOCAB, vocab):
        wall, cpu = time_steps(size, m, args.steps)
        results[size] = cpu
        print(f"vocabulary {size:>6}: {wall * 1000:7.0f} ms/step wall, {cpu * 1000:7.0f} ms/step CPU, "
              f"{m.batch * m.context / cpu:6.0f} tokens per CPU second; all models: "
              f"{runs * steps * cpu / 60:5.1f} CPU minutes")
    print(f"remapped vocabulary: {results[PRIOR_VOCAB] / results[vocab]:.2f}x fewer CPU seconds per step")


if __name__ == "__main__":
    main()
