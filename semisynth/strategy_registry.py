"""The edit-strategy interface and the registry of strategies by name.

A strategy decides, for a block of N scored positions at once, which tokens are redrawn
and which are dropped, and draws the new tokens:

  select(token_logp)                       -> (revise [N] bool, drop [N] bool)
  draw(top_logits, top_idx, targets, u)    -> new token ids of the revised rows

``token_logp`` is each position's log p(target | prefix) under the prior. The engine
(``semisynth.tasks.toedit``) calls ``select`` first and computes the prior's top
``top_k`` candidates only where it needs them (on the CPU: the revised rows only, so the
full-vocabulary logits of the other rows are never made), then ``draw`` with
``u``, one uniform number in [0, 1) per row hashed from (seed, document, position): an
edit depends on neither batching nor the device. A row both revised and dropped is
dropped. Everything works on whole tensors; a strategy never loops over tokens.

A strategy is a subclass of ``EditStrategy`` with a ``name`` and a pydantic ``Params``
model (its parameters: what the config's ``edit`` section, the ``edit`` command's options,
the score cache key and the warehouse's ``edits.params`` take), registered with
``@register``. The built-in ones are the modules of ``tasks/strategies/`` (BUILTINS),
found by importing each; another package adds its own through the entry point group ``ENTRY_POINT_GROUP``
(``semisynth.edit_strategies``), each entry naming a module that registers strategies.

Strategy modules import no torch at import time (tensor methods only, torch inside functions
where needed): the registry is read by ``semisynth edit --help``, which must answer at
once.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import types
import typing
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
# the package of the built-in strategies, one a file; imported by name: it is a floor up
BUILTINS = "semisynth.tasks.strategies"

ENTRY_POINT_GROUP = "semisynth.edit_strategies"


class StrategyParams(BaseModel):
    """A strategy's parameters: each field's description is the help of its `edit` option."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


class EditStrategy:
    """One edit strategy with its validated parameters (``params``)."""

    name: ClassVar[str]
    Params: ClassVar[type[StrategyParams]]

    def __init__(self, params: StrategyParams):
        self.params = params

    @property
    def top_k(self) -> int:
        """How many of the prior's most probable tokens ``draw`` chooses from; 0: the
        strategy never redraws (``select`` marks no row for revision, ``draw`` is never
        called and no top-k is computed)."""
        return 0

    @property
    def beta(self) -> float | None:
        """The temperature of the default ``draw``, softmax(top_logits / beta); None for a
        strategy whose draw has none."""
        return None

    def select(self, token_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(revise, drop): boolean masks of the positions whose token is redrawn and of
        those whose token is dropped, from each target's log-probability [N]."""
        raise NotImplementedError(f"strategy {self.name!r} defines no select")

    def draw(self, top_logits: torch.Tensor, top_idx: torch.Tensor, targets: torch.Tensor,
             uniforms: torch.Tensor) -> torch.Tensor:
        """One new token per row [M] from its top_k candidates (``top_logits``, their token
        ids ``top_idx``: [M, top_k], most probable first; logits or log-probs, since the
        default is shift-invariant), ``targets`` the tokens there now, ``uniforms`` [M]
        float64 in [0, 1). The default draws with probabilities softmax(top_logits /
        beta), by inverse CDF at the row's uniform number."""
        weights = (top_logits.double() / self.beta).softmax(dim=-1)
        # the first top-k slot whose cumulative weight exceeds u
        slot = (weights.cumsum(-1) <= uniforms.unsqueeze(1)).sum(-1).clamp(max=self.top_k - 1)
        return top_idx.gather(1, slot.unsqueeze(1)).squeeze(1)

    def resolved(self) -> dict:
        """The parameters as the strategy applies them, JSON-ready: its params, and the
        temperature ``beta`` resolved where the strategy has one. What the warehouse's
        ``edits.params`` holds."""
        values = self.params.model_dump(mode="json")
        if self.beta is not None:
            values["beta"] = self.beta
        return values


_REGISTRY: dict[str, type[EditStrategy]] = {}
_builtins_loaded = False


def register(cls: type[EditStrategy]) -> type[EditStrategy]:
    """Class decorator: make ``cls`` the strategy of its ``name``. A name is taken once;
    each parameter name means one thing for every strategy (one `edit` option,
    ``--param-name``, serves all of them), so a parameter whose type differs from another
    strategy's parameter of the same name is refused."""
    name = getattr(cls, "name", None)
    if not (isinstance(name, str) and name.isidentifier()):
        raise TypeError(f"{cls.__qualname__}.name must be an identifier, got {name!r}")
    params = getattr(cls, "Params", None)
    if not (isinstance(params, type) and issubclass(params, StrategyParams)):
        raise TypeError(f"strategy {name!r}: Params must be a StrategyParams subclass")
    if "strategy" in params.model_fields:
        raise TypeError(f"strategy {name!r}: 'strategy' cannot be a parameter (it names one)")
    taken = _REGISTRY.get(name)
    if taken is not None and _qualified(taken) != _qualified(cls):
        raise ValueError(f"edit strategy {name!r} is registered twice: by {_qualified(taken)} "
                         f"and {_qualified(cls)}")
    for other in _REGISTRY.values():
        if other.name == name:
            continue
        for field, info in params.model_fields.items():
            mine = other.Params.model_fields.get(field)
            if mine is not None and _optional_stripped(mine.annotation) != _optional_stripped(
                    info.annotation):
                raise TypeError(
                    f"strategy {name!r}: parameter {field!r} is {info.annotation}, but strategy "
                    f"{other.name!r} has it as {mine.annotation}; one `edit` option serves both: "
                    "give it another name")
    _REGISTRY[name] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _optional_stripped(annotation: object) -> object:
    """``float | None`` -> ``float``: an option left out is None for every strategy."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(annotation) if a is not type(None))
        return args[0] if len(args) == 1 else typing.Union[args]  # noqa: UP007 - a runtime tuple
    return annotation


def _load_builtins() -> None:
    """Import every module of BUILTINS (a new file there is a new strategy), once."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    for module in pkgutil.iter_modules(importlib.import_module(BUILTINS).__path__):
        importlib.import_module(f"{BUILTINS}.{module.name}")
    _builtins_loaded = True


def _load_entry_points() -> None:
    """Import the modules that installed packages name in ENTRY_POINT_GROUP; each registers
    its strategies. Read again on every call: a package installed into a running process
    (or put on sys.path) is found by its next lookup."""
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry.load()
        if isinstance(loaded, type) and issubclass(loaded, EditStrategy):
            register(loaded)


def strategies() -> dict[str, type[EditStrategy]]:
    """Every registered strategy by name: the built-in ones first (in their files' order),
    then those of entry points."""
    _load_builtins()
    _load_entry_points()
    return dict(_REGISTRY)


def strategy_class(name: str) -> type[EditStrategy]:
    """The strategy registered as ``name``; a KeyError naming the registered ones when
    there is none."""
    _load_builtins()
    if name not in _REGISTRY:
        _load_entry_points()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no edit strategy {name!r}; registered: "
                       f"{', '.join(_REGISTRY)}") from None
