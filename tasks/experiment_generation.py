"""The collapse experiment's generated sources: the prior writes each ``generate`` entry's
file (tasks/experiment_plan.py lists the missing ones), and its tokenizer is the one the
experiment's models use."""

from __future__ import annotations

import hashlib
from pathlib import Path

from semisynth.config import Config
from semisynth.documents import expand_paths
from semisynth.progress import Progress
from semisynth.tasks import assets
from semisynth.tasks.prior import load_prior, load_tokenizer, resolve_model
from semisynth.tasks.train import use_worker_threads


def generate_source(pcfg: Config, gen, seed: int, progress: Progress | None = None) -> Path:
    """Write one ``generate`` entry's file with the prior (``tasks.assets.synthesize``,
    which reports to ``progress``), seeded by the experiment's seed and the file's name."""
    prior = load_prior(pcfg.prior.model, pcfg.root, pcfg.prior.precision)
    if prior.device.type == "cpu":
        use_worker_threads()  # two workers with every core each would thrash them
    seed_docs = [Path(p) for p in expand_paths([pcfg.resolve(s) for s in gen.seeded_by])]
    file_seed = int.from_bytes(hashlib.sha256(f"{seed}\x00{gen.out}".encode()).digest()[:4], "little")
    return assets.synthesize(prior, seed_docs, Path(pcfg.resolve(gen.out)), gen.documents,
                             gen.max_new_tokens, seed=file_seed, prompt_words=gen.prompt_words,
                             progress=progress)


def prior_tokenizer(pcfg: Config):
    """The prior's tokenizer (the experiment's models use its token ids, remapped)."""
    folder, _ = resolve_model(pcfg.prior.model, pcfg.root)
    return load_tokenizer(folder)
