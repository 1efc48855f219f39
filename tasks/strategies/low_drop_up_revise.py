"""low_drop_up_revise: up_revise, and drop the tokens the prior finds least likely."""

from pydantic import model_validator

from semisynth.strategy_registry import register
from semisynth.tasks.strategies._toedit import ToEditParams, ToEditStrategy


class LowDropParams(ToEditParams):
    @model_validator(mode="after")
    def _thresholds_ordered(self):
        if self.low_threshold >= self.threshold:
            raise ValueError(f"low_threshold ({self.low_threshold}) must be below threshold "
                             f"({self.threshold}): a token cannot be both redrawn and dropped")
        return self


@register
class LowDropUpRevise(ToEditStrategy):
    """Redraw a token where p > threshold (as up_revise) and drop one where
    p < low_threshold."""

    name = "low_drop_up_revise"
    Params = LowDropParams
    revises, drops = True, True
    default_beta = 1.0
