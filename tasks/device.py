"""What the score+edit engine decides from its device: batch sizes, compile or not, shapes.

Every decision is a pure function of the device's properties (its type, its free memory)
and the model's shape, so that the GPU's choices are tested on a machine without one; the
Scorer (``tasks.toedit``) asks the device once, where it is built, and passes the answers in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

CPU_BATCH_TOKENS = 4096  # on 2 cores one 512-token document already runs the matmuls at peak
CPU_LOGITS_CHUNK = 1024
# oneDNN's bf16 matmuls keep heap memory for every new shape they meet: a worker scoring
# flow_scale's shards at each batch's own width and each chunk's own row count grew from
# 641 to 847 MB RSS over 40 shards; with both rounded up to a multiple of 64, 582 to 615 MB,
# at the same speed (issue 17's note). float32 (MKL) did not grow either way.
CPU_SHAPE_STEP = 64
# Columns of the vocabulary per head matmul on a CPU: 1024 rows x 8192 columns of float32
# logits (32 MB) are reduced before the next chunk is computed. On 2 cores, 8 x 512
# positions of the default prior (49,152 tokens): head and log-normaliser 0.54 s in chunks
# of 8192 columns, 0.70 s in chunks of 4096 columns for 4096 rows, 0.86 s unchunked.
CPU_VOCAB_CHUNK = 8192
# On a CPU, compile 'auto' compiles the body once this process has spent as many seconds in
# eager forward passes as the compile is expected to take (the ski-rental rule: whatever the
# run's length, it then takes at most about twice the time of the better choice made with
# hindsight, and a short run, one document, never waits for a compile). The expectation is
# the last compile's measured time on this host (``Prior.expected_compile_seconds``: a warm
# cache under the data root makes it short, 4 s for the default prior on 2 cores), else this:
# a first compile of the default prior's decoder layers on a 2-core host (19 s measured,
# ``Prior.dynamic_body``).
CPU_COLD_COMPILE_SECONDS = 20.0
# Where the caller knows how much work the process has left (`semisynth edit` knows its
# file's documents), 'auto' compiles only if the eager seconds the compiled body would save
# on it exceed the expected compile time, at this speedup of the compiled engine over the
# eager one: 1.51x against 1.31x of the official shape, bf16, 2 cores (benchmarks/README,
# 2026-12-06). The ski-rental rule alone compiles in a 1-minute run, at a cold cache's cost.
CPU_COMPILED_SPEEDUP = 1.15
MAX_BATCH_TOKENS = 262_144  # beyond it an H200 gained little (295k tokens/s at 64k, 328k at 256k)
MIN_BATCH_TOKENS = 1024
MIN_LOGITS_CHUNK = 256
# Share of the free memory the engine plans to use; the rest is the caching allocator's
# fragmentation and the kernels' workspaces. Half of it for the body's activations, half for
# the head's logits: the two peaks come one after the other, but blocks freed by the body
# are not always the sizes the head asks for.
MEMORY_SHARE = 0.8
# A decoder layer's live tensors, counted below, are what the model holds; the temporaries of
# the kernels (rotary embeddings, RMSNorm's float32 upcast, SiLU) come on top: about as much.
ACTIVATION_SAFETY = 2
MIN_BUCKET = 64  # the narrowest compiled width: shorter segments are padded to it


@dataclass(frozen=True)
class EngineChoices:
    """How the Scorer runs on a device.

    compile: the body and the head go through torch.compile (the body only for full batches
      of a bucketed width: few static shapes);
    dense: ToEdit's redraw is computed for every position and kept where it applies
      (``torch.where``), with no data-dependent host sync; the sparse path computes the
      top-k only for the positions to redraw, which is cheaper where a sync is free (CPU);
    depth: forward batches in flight before the host reads the oldest back (0: one at a
      time; 1: the device runs batch k+1 while the host unpacks batch k);
    shape_step: an eager batch's width and a head chunk's rows are rounded up to a multiple
      of it (1: not rounded), so the matmuls see a set of shapes bounded by the batch and
      chunk sizes, not one new shape per batch;
    vocab_chunk: the sparse path's head runs over this many vocabulary columns at a time,
      reducing each to its logsumexp at once (``toedit.vocab_chunked_log_probs``); None:
      the whole vocabulary's logits at once;
    dynamic: the body is compiled once for any batch shape (``Prior.dynamic_body``) and every
      batch of two rows or more goes through it, padded only to shape_step: no width buckets,
      no padding to them (CPU);
    compile_after: with ``dynamic``, the seconds of eager forward passes this process runs
      before it compiles (None: from the first batch; see CPU_COLD_COMPILE_SECONDS), or,
      where the Scorer knows its work (``expected_documents``), the compile time the eager
      seconds it would save must exceed (CPU_COMPILED_SPEEDUP).
    """

    compile: bool
    dense: bool
    depth: int
    shape_step: int = 1
    vocab_chunk: int | None = None
    dynamic: bool = False
    compile_after: float | None = None


def engine_choices(device_type: str, compile_setting: bool | str = "auto") -> EngineChoices:
    """The engine's choices on a device of this type: on CUDA the device must never wait for
    the host (dense decisions, one batch in flight ahead), and compile pays back its first
    minute on a corpus: static shapes, from the first full batch. On a CPU every call is
    synchronous anyway; the body is compiled for dynamic shapes (one compile, no padding to
    buckets), and 'auto' compiles it only once the process has run as long eagerly as the
    compile is expected to take (CPU_COLD_COMPILE_SECONDS); ``compile=True`` compiles from
    the first batch."""
    cuda = device_type == "cuda"
    compile_ = True if compile_setting == "auto" else bool(compile_setting)
    if cuda:
        return EngineChoices(compile=compile_, dense=True, depth=1)
    return EngineChoices(compile=compile_, dense=False, depth=0, shape_step=CPU_SHAPE_STEP,
                         vocab_chunk=CPU_VOCAB_CHUNK, dynamic=compile_,
                         compile_after=CPU_COLD_COMPILE_SECONDS if compile_setting == "auto" else None)


def round_up(size: int, step: int) -> int:
    return -(-size // step) * step


@dataclass(frozen=True)
class ModelShape:
    """What a forward pass's memory depends on, from a transformers config."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, config) -> ModelShape:
        hidden = int(config.hidden_size)
        heads = int(config.num_attention_heads)
        return cls(
            hidden=hidden,
            intermediate=int(getattr(config, "intermediate_size", None)
                             or getattr(config, "n_inner", None) or 4 * hidden),
            heads=heads,
            kv_heads=int(getattr(config, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(config, "head_dim", None) or hidden // heads),
            vocab=int(config.vocab_size),
        )

    def activation_bytes(self, dtype_bytes: int) -> int:
        """Bytes per token of one decoder layer's live tensors in inference: the residual
        stream and its norm, q, k and v, the attention output and its projection, the MLP's
        gate, up and their product. Without a KV cache (the engine asks for none) each layer's
        tensors are freed before the next layer runs, so the number of layers does not enter."""
        attention = self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim
        return dtype_bytes * (3 * self.hidden + attention + self.hidden + 3 * self.intermediate)

    def logits_bytes(self, dtype_bytes: int) -> int:
        """Bytes per row of the head: logits in the model's dtype, their float32 copy and
        logsumexp's float32 temporary."""
        return self.vocab * (dtype_bytes + 4 + 4)


@dataclass(frozen=True)
class BatchPlan:
    batch_tokens: int
    logits_chunk: int


def plan_batches(device_type: str, free_bytes: int, shape: ModelShape | None, dtype_bytes: int,
                 batch_tokens: int | str = "auto", cap: int = MAX_BATCH_TOKENS) -> BatchPlan:
    """Forward batch size (tokens, padding included) and head chunk (rows of logits) for a
    device with ``free_bytes`` free after the model's weights are loaded. 'auto' on a CPU is
    4096 tokens; on CUDA, what half the usable memory holds of the body's activations,
    capped at ``cap`` and rounded down to a multiple of 1024. The head's chunk is what the
    other half holds of logits rows, at most the batch. Neither goes below MIN_BATCH_TOKENS
    and MIN_LOGITS_CHUNK (a device that full cannot score at all). A number given is kept."""
    if device_type != "cuda":
        tokens = CPU_BATCH_TOKENS if batch_tokens == "auto" else int(batch_tokens)
        return BatchPlan(tokens, CPU_LOGITS_CHUNK)
    half = free_bytes * MEMORY_SHARE / 2
    if batch_tokens == "auto":
        fits = int(half // (ACTIVATION_SAFETY * shape.activation_bytes(dtype_bytes)))
        tokens = max(MIN_BATCH_TOKENS, min(cap, fits) // 1024 * 1024)
    else:
        tokens = int(batch_tokens)
    rows = int(half // shape.logits_bytes(dtype_bytes))
    return BatchPlan(tokens, max(MIN_LOGITS_CHUNK, min(tokens, rows)))


def width_bucket(width: int, window: int) -> int:
    """The compiled width a segment of ``width`` tokens is padded to: the next power of two
    (at least MIN_BUCKET), at most the window. A window of 8192 gives 8 widths (64..8192), so
    torch.compile(dynamic=False) sees at most that many shapes: one per width, since a full
    batch of a width has batch_tokens // width rows."""
    bucket = max(MIN_BUCKET, 1 << max(width - 1, 0).bit_length())
    return min(bucket, window)


def cuda_free_bytes(device: torch.device) -> int:
    """Memory a new allocation can get on a CUDA device: the driver's free memory plus what
    this process's caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
