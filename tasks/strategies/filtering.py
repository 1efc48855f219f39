"""filtering: only drop the tokens the prior finds least likely; nothing is redrawn."""

from semisynth.strategy_registry import register
from semisynth.tasks.strategies._toedit import ToEditStrategy


@register
class Filtering(ToEditStrategy):
    """Drop a token where p < low_threshold."""

    name = "filtering"
    revises, drops = False, True
    default_beta = 1.0
