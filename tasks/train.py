"""Train a small causal LM from scratch on one arm's token stream; measure its perplexity.

In the spirit of nanoGPT, with the model from a transformers config:

- model: ``LlamaConfig`` (or ``GPT2Config``) of ``LMConfig``'s size over the experiment's
  remapped vocabulary (``tasks.vocabulary.remap``), input and output embeddings tied,
  weights drawn after ``torch.manual_seed(seed)``;
- data: the stream as sequences of ``context`` tokens whose targets are the stream shifted
  by one; the last sequence is shorter and its missing targets are ignored, so every token
  is read and every token after the first is predicted exactly once per epoch;
- schedule: ``epochs * ceil(sequences / batch)`` AdamW steps (betas 0.9, 0.95; weight decay
  on matrices only), linear warmup then cosine (or linear) decay to ``min_lr_ratio * lr``,
  gradient clipping; each epoch visits the sequences in a seeded order. Every arm's stream
  has ``train_tokens`` tokens, so every arm gets the same schedule;
- evaluation: a held-out stream cut the same way, perplexity = exp(NLL / predicted tokens);
- arithmetic (``Arithmetic``): float32, or bf16 autocast (float32 weights and optimizer
  state) where ``LMConfig.precision`` asks for it or, by 'auto', on a GPU that computes bf16
  natively; SDPA attention; on CUDA a fused AdamW and (``LMConfig.compile``) torch.compile.

A run is deterministic for a seed on a CPU with one torch thread count. On CUDA it is not
guaranteed bit for bit (some backward kernels may add in a varying order unless torch's
process-wide deterministic mode is on, which this module leaves alone). Its result is a small JSON file
under ``experiments/results/``, named by a hash of everything it depends on (the stream,
the vocabulary, the held-out streams, the model config, the schedule, the seed, the
arithmetic): a re-run of an unchanged (arm, seed) reads it and trains nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semisynth.config import LMConfig
from semisynth.documents import atomic_path
from semisynth.progress import Progress
from semisynth.settings import read_settings
from semisynth.tasks.prior import resolve_precision
from semisynth.tasks.vocabulary import remap

# Bump when a change here changes what a run computes: old results then miss.
TRAIN_VERSION = 1
IGNORE = -100  # targets that are not predicted (cross_entropy's ignore_index)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Arithmetic:
    """How a run computes: what its result key names, so that results of different
    arithmetic never share a cache entry."""

    device: str  # "cpu" or "cuda"
    dtype: str  # "float32", or "bfloat16": autocast over float32 weights
    compile: bool
    fused_adamw: bool


# What every run computed before these choices existed; its results keep their keys.
LEGACY = Arithmetic("cpu", "float32", False, False)


def arithmetic(m: LMConfig, device_type: str, native_bf16: bool) -> Arithmetic:
    """The arithmetic of ``m`` on a device of this type. 'auto' precision: bf16 autocast on
    a GPU that computes bf16 natively (an H200: 131k against 47k tokens/s for a 125M Llama);
    float32 on a CPU, also with AVX512-BF16: for the demo's 2-layer model autocast gained
    3-12% there, less than the host's run-to-run noise, and would have re-trained every
    cached result (benchmarks/README.md). 'auto' compile: on CUDA only. AdamW is fused on
    CUDA, where it saves a kernel launch per parameter and step."""
    cuda = device_type == "cuda"
    if m.precision == "auto":
        dtype = "bfloat16" if cuda and native_bf16 else "float32"
    else:
        dtype = m.precision
    compile_ = cuda if m.compile == "auto" else bool(m.compile)
    return Arithmetic(device_type, dtype, compile_, fused_adamw=cuda)


def device_arithmetic(m: LMConfig) -> Arithmetic:
    """``arithmetic`` for this process's device."""
    dev = device().type
    return arithmetic(m, dev, resolve_precision("auto", dev) == "bfloat16")


def autocast(arith: Arithmetic):
    if arith.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(arith.device, dtype=getattr(torch, arith.dtype))


def use_worker_threads() -> None:
    """On the CPU, this worker's share of the cores (``SEMISYNTH_TORCH_THREADS``, which the
    LocalCluster sets per worker), else every core: oversubscribed threads slow them all."""
    torch.set_num_threads(read_settings().torch_threads or os.cpu_count() or 1)


def build_model(vocab_size: int, m: LMConfig, seed: int) -> torch.nn.Module:
    """A randomly initialized causal LM of ``m``'s size (weights from ``seed``)."""
    # lazy: transformers and huggingface_hub, loaded only when this runs
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    inner = m.intermediate or 4 * m.hidden
    if m.architecture == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_positions=m.context, n_embd=m.hidden,
                            n_layer=m.layers, n_head=m.heads, n_inner=inner, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=True,
                            bos_token_id=None, eos_token_id=None, attn_implementation="sdpa")
        return GPT2LMHeadModel(config)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=m.hidden, intermediate_size=inner,
                         num_hidden_layers=m.layers, num_attention_heads=m.heads,
                         num_key_value_heads=m.heads, max_position_embeddings=m.context,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                         pad_token_id=None, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def sequences(stream: np.ndarray, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), each [n, context]: the stream and the stream shifted by one, cut
    into sequences; the last one padded (input 0, target ignored)."""
    inputs, targets = stream[:-1], stream[1:]
    n = math.ceil(len(targets) / context)
    pad = n * context - len(targets)
    x = np.concatenate([inputs, np.zeros(pad, np.int64)]).reshape(n, context)
    y = np.concatenate([targets, np.full(pad, IGNORE, np.int64)]).reshape(n, context)
    return torch.from_numpy(x), torch.from_numpy(y)


def steps_for(train_tokens: int, m: LMConfig) -> int:
    """Optimizer steps of a run over ``train_tokens`` tokens."""
    return m.epochs * math.ceil(math.ceil((train_tokens - 1) / m.context) / m.batch)


def learning_rate(step: int, steps: int, m: LMConfig) -> float:
    """Linear warmup over the first ``warmup`` share of the steps, then cosine or linear
    decay from ``lr`` to ``min_lr_ratio * lr`` at the last step."""
    warm = int(m.warmup * steps)
    if step < warm:
        return m.lr * (step + 1) / warm
    progress = (step - warm) / max(steps - warm - 1, 1)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if m.schedule == "cosine" else 1 - progress
    return m.lr * (m.min_lr_ratio + (1 - m.min_lr_ratio) * shape)


def optimizer(model: torch.nn.Module, m: LMConfig, fused: bool = False) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": m.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=m.lr, betas=(0.9, 0.95), fused=fused or None)


def next_token_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                    reduction: str = "mean") -> torch.Tensor:
    logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE,
                           reduction=reduction)


def train(stream: np.ndarray, vocab_size: int, m: LMConfig, seed: int,
          progress: Progress | None = None,
          arith: Arithmetic | None = None) -> tuple[torch.nn.Module, list[float], float]:
    """Train a fresh model on a remapped stream; returns it, the loss of every step and the
    seconds of the first step when the model is compiled (the compile: ``train_seconds``
    includes them). ``progress.advance(1, detail="loss ...")`` after each step."""
    arith = arith or device_arithmetic(m)
    dev = torch.device(arith.device)
    model = build_model(vocab_size, m, seed).to(dev)
    model.train()
    opt = optimizer(model, m, fused=arith.fused_adamw)
    step_model = torch.compile(model) if arith.compile else model
    x, y = sequences(stream, m.context)
    order = np.random.default_rng(seed)
    steps, losses, compile_seconds = steps_for(len(stream), m), [], 0.0
    for _ in range(m.epochs):
        perm = torch.from_numpy(order.permutation(len(x)))
        for lo in range(0, len(x), m.batch):
            started = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = learning_rate(len(losses), steps, m)
            batch = perm[lo: lo + m.batch]
            with autocast(arith):
                loss = next_token_loss(step_model, x[batch].to(dev), y[batch].to(dev))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), m.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if arith.compile and len(losses) == 1:
                compile_seconds = time.perf_counter() - started
            if progress:
                progress.advance(1, detail=f"loss {losses[-1]:.3f}")
    return model, losses, compile_seconds


@torch.inference_mode()
def perplexity(model: torch.nn.Module, stream: np.ndarray, m: LMConfig,
               arith: Arithmetic = LEGACY) -> tuple[float, int]:
    """(per-token perplexity, predicted tokens) of the model on a remapped stream, in the
    arithmetic it was trained in (not compiled: evaluation is a few batches)."""
    model.eval()
    dev = next(model.parameters()).device
    x, y = sequences(stream, m.context)
    nll, tokens = 0.0, int((y != IGNORE).sum())
    for lo in range(0, len(x), m.eval_batch):
        with autocast(arith):
            nll += float(next_token_loss(model, x[lo: lo + m.eval_batch].to(dev),
                                         y[lo: lo + m.eval_batch].to(dev), reduction="sum"))
    return math.exp(nll / tokens), tokens


def result_key(stream: Path, vocab: Path, evals: Mapping[str, Path], m: LMConfig, seed: int,
               arith: Arithmetic = LEGACY) -> str:
    """Everything a run's result depends on, hashed; the files are content-keyed
    (``tasks.experiment.save_array``), so their names stand for their content. The
    arithmetic is named unless it is LEGACY's, whose results were cached before it was."""
    params = {"version": TRAIN_VERSION, "stream": Path(stream).stem, "vocab": Path(vocab).stem,
              "evals": {name: Path(p).stem for name, p in sorted(evals.items())},
              "model": m.model_dump(exclude={"precision", "compile"}), "seed": seed}
    if arith != LEGACY:
        params["arithmetic"] = asdict(arith)
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def train_and_evaluate(stream_path: Path, vocab_path: Path, evals: Mapping[str, Path],
                       m: LMConfig, seed: int, results_dir: Path,
                       progress: Progress | None = None) -> dict:
    """One (arm, seed): train on the stream, evaluate on each held-out stream, keep the
    result as ``results_dir/<key>.json``; when that file exists, read it instead (``cached``
    says which)."""

    arith = device_arithmetic(m)
    key = result_key(stream_path, vocab_path, evals, m, seed, arith)
    path = Path(results_dir) / f"{key}.json"
    if path.exists():
        return {**json.loads(path.read_text()), "cached": True}
    if arith.device == "cpu":
        use_worker_threads()
    started = time.perf_counter()
    vocab = np.load(vocab_path)
    model, losses, compile_seconds = train(remap(np.load(stream_path), vocab), len(vocab), m,
                                           seed, progress, arith)
    seconds = time.perf_counter() - started
    scores = {}
    for name, eval_path in evals.items():
        ppl, tokens = perplexity(model, remap(np.load(eval_path), vocab), m, arith)
        scores[name] = {"ppl": ppl, "tokens": tokens}
    result = {"key": key, "seed": seed, "steps": len(losses), "losses": losses,
              "parameters": sum(p.numel() for p in model.parameters()),
              "vocab_size": len(vocab), "train_seconds": seconds,
              "compile_seconds": compile_seconds, "device": arith.device,
              "arithmetic": asdict(arith), "threads": torch.get_num_threads(), "evals": scores}
    with atomic_path(path, keep_existing=True) as tmp:
        tmp.write_text(json.dumps(result))
    return {**result, "cached": False}
