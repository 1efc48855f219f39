"""up_revise: redraw the tokens the prior is surest of (ToEdit's main strategy)."""

from semisynth.strategy_registry import register
from semisynth.tasks.strategies._toedit import ToEditStrategy


@register
class UpRevise(ToEditStrategy):
    """Redraw a token where p > threshold, from the top-k at softmax(logp / beta)."""

    name = "up_revise"
    revises, drops = True, False
    default_beta = 1.5
