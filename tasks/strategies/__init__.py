"""Edit strategies as plug-ins: the interface and registry in ``base``, one strategy a
file beside it (README, "Adding an edit strategy")."""

from semisynth.tasks.strategies.base import (
    ENTRY_POINT_GROUP,
    EditStrategy,
    StrategyParams,
    register,
    strategies,
    strategy_class,
)

__all__ = ["ENTRY_POINT_GROUP", "EditStrategy", "StrategyParams", "register", "strategies",
           "strategy_class"]
