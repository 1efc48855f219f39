"""An edit strategy from outside semisynth, in one file: what tests/test_strategy_plugin.py
installs (an entry point in the group ``semisynth.edit_strategies``) to see a strategy
added without touching semisynth. A copy of this file under tasks/strategies/
would be a built-in one.

second_choice: where the prior is surer of a token than ``threshold``, write its second
choice instead (deterministic: the most probable token other than the one there); drop a
token it finds less likely than ``drop_below``."""

from pydantic import Field

from semisynth.strategy_registry import EditStrategy, StrategyParams, register


class SecondChoiceParams(StrategyParams):
    # the same name, type and meaning as ToEdit's threshold: one --threshold serves both
    threshold: float = Field(0.9, gt=0.5, le=1, description=(
        "Redraw a token where its probability under the prior is strictly greater."))
    drop_below: float = Field(0.0, ge=0, lt=0.5, description=(
        "Drop a token where its probability is strictly smaller (0: none)."))


@register
class SecondChoice(EditStrategy):
    """The prior's second choice where it is sure of the first; drop the unlikely tokens."""

    name = "second_choice"
    Params = SecondChoiceParams

    @property
    def top_k(self) -> int:
        return 2  # the token there (the first choice, as p > threshold > 0.5) and the next

    def select(self, token_logp):
        prob = token_logp.exp()
        return prob > self.params.threshold, prob < self.params.drop_below

    def draw(self, top_logits, top_idx, targets, uniforms):
        first_is_there = top_idx[:, 0] == targets
        return top_idx[:, 1].where(first_is_there, top_idx[:, 0])
