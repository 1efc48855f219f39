"""What the three strategies of the ToEdit paper (arXiv 2412.14689) share: one set of
parameters and the redraw from the top-k at softmax(logp / beta). Not a strategy itself
(no ``name``, not registered); up_revise.py, low_drop_up_revise.py and filtering.py are."""

from __future__ import annotations

from pydantic import Field

from semisynth.strategy_registry import EditStrategy, StrategyParams


class ToEditParams(StrategyParams):
    """The parameters of every ToEdit strategy, each taking those it uses. One model for the
    three: a config valid for one stays valid when only its strategy changes (as before
    strategies were plug-ins), and the score cache key of each is what it was then."""

    threshold: float = Field(0.99, gt=0, le=1, description=(
        "Redraw a token where its probability under the prior is strictly greater."))
    top_k: int = Field(8, ge=1, description=(
        "Redraw from the prior's k most probable tokens (at most its vocabulary)."))
    beta: float | None = Field(None, gt=0, description=(
        "Temperature of the redraw, softmax(logp / beta); unset: 1.5 for up_revise, "
        "else 1.0 (the official code)."))
    low_threshold: float = Field(0.001, ge=0, lt=1, description=(
        "Drop a token where its probability is strictly smaller."))


class ToEditStrategy(EditStrategy):
    """A ToEdit strategy: ``revises`` (p > threshold: redrawn from the top-k) and/or
    ``drops`` (p < low_threshold)."""

    Params = ToEditParams
    revises: bool
    drops: bool
    default_beta: float  # beta when the config leaves it unset

    @property
    def top_k(self) -> int:
        # the dense (GPU) head computes the top-k of every row whatever the strategy, as it
        # did before strategies were plug-ins: one compiled head graph for all three
        return self.params.top_k

    @property
    def beta(self) -> float:
        return self.params.beta if self.params.beta is not None else self.default_beta

    def select(self, token_logp):
        prob = token_logp.exp()
        no = prob.new_zeros(prob.shape, dtype=bool)
        revise = prob > self.params.threshold if self.revises else no
        drop = prob < self.params.low_threshold if self.drops else no
        return revise, drop
