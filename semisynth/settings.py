"""Every ``SEMISYNTH_*`` environment variable, typed, in one object.

The entry points (the ``semisynth`` command, ``deployments/setup.py``) build one
``Settings`` with ``read_settings()`` and hand it, or its values, to the functions that
need them. Where a process starts with no command line, the code there reads its own:
the flow's task runner and score placement (``flows.runner``, when a Prefect worker loads
the flow from its entrypoint), a flow run's data root (``config.data_root``: the pod's or
host's ``SEMISYNTH_HOME``) and a Dask worker's torch threads (``tasks.toedit``: the
LocalCluster passes ``SEMISYNTH_TORCH_THREADS`` to each worker process).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "SEMISYNTH_"

GpuMode = Literal["auto", "require", "off"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True)

    home: Path = Field(Path("var"), description=(
        "The data root (warehouse, shards, scores, releases), when the config names none; "
        "`--data-root` sets it for one command."))
    dask_address: str | None = Field(None, description=(
        "Scheduler of an existing Dask cluster (tcp://host:8786); unset: the flow starts a "
        "LocalCluster for the run."))
    dask_gpu: GpuMode = Field("auto", description=(
        "Placement of the score tasks: auto (on the workers with a GPU resource when any "
        "has one), require (always ask for one: GPU workers join later) or off (anywhere)."))
    dask_workers: int = Field(1, ge=1, description=(
        "LocalCluster workers of a flow loaded without a config (a Prefect worker's run); "
        "with a config, its dask_workers."))
    torch_threads: int | None = Field(None, ge=1, description=(
        "Torch threads of this process on the CPU; unset: every core. The LocalCluster sets "
        "it per worker when several share the host."))
    nightly_cron: str | None = Field(None, description=(
        "Cron (UTC) of the nightly run for `semisynth serve` and deployments/setup.py."))
    gpu_workers: int | None = Field(None, ge=1, description=(
        "The tag concurrency limit `gpu`: score+edit tasks allowed at once."))

    @field_validator("home", mode="before")
    @classmethod
    def _a_folder(cls, value: object) -> object:
        problem = data_root_problem(value) if isinstance(value, str | Path) else None
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("dask_gpu", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def data_root(self) -> Path:
        return self.home.expanduser().resolve()


def data_root_problem(value: str | Path) -> str | None:
    """Why ``value`` cannot be a data root, or None. A data root is created when missing,
    so only an empty value (which would quietly make the current folder the data root) and
    a path that is, or lies under, something other than a folder (a file) are refused."""
    if not str(value).strip():  # Path("") is ".": look before it becomes one
        return "is empty; name a folder (it is created when missing)"
    path = Path(value).expanduser().absolute()
    try:
        for place in (path, *path.parents):
            if place.is_dir():
                return None
            if place.exists():
                what = "is" if place == path else f"lies under {place}, which is"
                return f"{str(value)!r} {what} not a folder (a file?)"
    except OSError:  # a folder on the way we may not look into: writing there says so
        return None
    return None


def env_name(field: str) -> str:
    """The environment variable of a Settings field: ``torch_threads`` -> SEMISYNTH_TORCH_THREADS."""
    return ENV_PREFIX + field.upper()


def read_settings(**explicit: object) -> Settings:
    """The environment's settings, with ``explicit`` values (a command-line option; None:
    not given) taking precedence. A bad value raises ValueError naming its variable."""
    try:
        return Settings(**{name: value for name, value in explicit.items() if value is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(e['loc'][0]))}={e['input']!r}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"bad environment: {problems}") from None
