"""`semisynth serve`: the nightly refresh on its schedule, with a Prefect server and UI.

Starts a Prefect server on 127.0.0.1 (``prefect server start`` as a subprocess, its UI
pointed at its own API), or uses the server at ``PREFECT_API_URL`` when that is set, and
serves the deployment ``nightly_refresh/nightly-refresh`` on its cron schedule (UTC) with
the flow exactly as ``semisynth run`` runs it: the Dask task runner of
``semisynth.flows.runner`` (the settings' ``dask_address``, else a LocalCluster of the
config's ``dask_workers``). Runs triggered from the UI or with ``prefect deployment run`` are
executed here too. At most one run at a time (deployment concurrency limit 1, further runs
wait); the tag concurrency limit ``gpu`` is set to the number of workers that run the
score+edit tasks. Ctrl-C or SIGTERM stops the runner (its schedule is paused while nobody
serves it) and then the server it started.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from semisynth.config import load_config
from semisynth.flows import runner
from semisynth.flows.lifecycle import PrefectServer, healthy
from semisynth.flows.nightly import flow_for
from semisynth.flows.runner import GPU_TAG
from semisynth.settings import Settings

DEPLOYMENT = "nightly-refresh"
FLOW = "nightly_refresh"
DEFAULT_CRON = "0 2 * * *"


class _Stop(Exception):
    """SIGTERM before the runner took over its own signal handling."""


def _raise_stop(signum, frame):  # noqa: ARG001
    raise _Stop()


def _say(message: str) -> None:
    print(message, flush=True)


def gpu_slots(cfg, settings: Settings, explicit: int | None = None) -> int:
    """How many score+edit tasks may run at once: the workers that run them.

    --gpu-workers, else ``settings.gpu_workers``, else: on the Dask cluster at
    ``settings.dask_address`` its workers with the GPU resource (all its workers when none
    has it), on the LocalCluster its ``dask_workers``."""
    if explicit is not None:
        return max(1, explicit)
    if settings.gpu_workers is not None:
        return settings.gpu_workers
    address = settings.dask_address
    if not address:
        return max(1, cfg.dask_workers)
    try:
        # lazy: distributed and dask, loaded only when this runs
        from distributed import Client

        with Client(address, timeout=10) as client:
            gpus = runner.gpu_workers(client)
            return max(1, len(gpus) or len(client.scheduler_info(n_workers=-1)["workers"]))
    except Exception as exc:  # the cluster may come up later
        _say(f"could not count the workers of {address} ({exc}); tag limit {GPU_TAG!r} = 1")
        return 1


def set_gpu_limit(slots: int) -> None:
    # lazy: prefect, loaded only when this runs
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=slots)  # an upsert


def deployment_options(config_path: str, overrides: list[str], cron: str) -> dict:
    # lazy: prefect, loaded only when this runs
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    return {
        "name": DEPLOYMENT,
        "description": ("Nightly corpus refresh (served by `semisynth serve`): ingest -> "
                        "score+edit -> metrics -> gate -> release"),
        "schedules": [Cron(cron, timezone="UTC")],
        "parameters": {"config_path": config_path, "overrides": list(overrides)},
        "concurrency_limit": ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        "tags": ["semisynth", "nightly"],
    }


def serve(config_path: str, settings: Settings, overrides: list[str] | None = None,
          port: int = 4200, cron: str | None = None, gpu_workers: int | None = None) -> int:
    """Serve until Ctrl-C or SIGTERM; ``cron`` and ``gpu_workers`` (the command's options)
    take precedence over ``settings``."""
    overrides = list(overrides or [])
    config_path = str(Path(config_path).resolve())
    cfg = load_config(config_path, overrides)  # fail early on a bad config
    cron = cron or settings.nightly_cron or DEFAULT_CRON
    previous_term = signal.signal(signal.SIGTERM, _raise_stop)
    server = None
    try:
        api_url = os.environ.get("PREFECT_API_URL")
        if api_url:
            if not healthy(api_url, timeout=10):
                raise ValueError(f"PREFECT_API_URL={api_url} does not answer {api_url}/health")
            ui_url = os.environ.get("PREFECT_UI_URL") or api_url.rstrip("/").removesuffix("/api")
            _say(f"using the Prefect server at {api_url}")
        else:
            server = PrefectServer(port, cfg.root / "logs" / f"prefect-server-{port}.log")
            _say(f"starting a Prefect server on 127.0.0.1:{port} (log: {server.log_path}) ...")
            server.start()
            api_url, ui_url = server.api_url, server.ui_url
            # flow runs start in subprocesses: they read the server from the environment
            os.environ["PREFECT_API_URL"] = api_url
        # lazy: prefect, loaded only when this runs
        from prefect.exceptions import TerminationSignal
        from prefect.runner import Runner
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            slots = gpu_slots(cfg, settings, gpu_workers)
            set_gpu_limit(slots)
            prefect_runner = Runner(name="semisynth-serve", pause_on_shutdown=True)
            deployment_id = prefect_runner.add_flow(flow_for(cfg),
                                            **deployment_options(config_path, overrides, cron))
            _say(f"Prefect UI: {ui_url}\n"
                 f"serving {FLOW}/{DEPLOYMENT}: cron '{cron}' (UTC), config {config_path}"
                 f"{' --set ' + ' --set '.join(overrides) if overrides else ''}; one run at a time; "
                 f"tag limit {GPU_TAG!r} = {slots}\n"
                 f"  deployment: {ui_url}/deployments/deployment/{deployment_id}\n"
                 f"  runs:       {ui_url}/runs\n"
                 f"  run now:    PREFECT_API_URL={api_url} prefect deployment run "
                 f"'{FLOW}/{DEPLOYMENT}'  (or the Run button in the UI)\n"
                 f"Ctrl-C stops it.")
            # the runner installs its own SIGTERM handler: it pauses the schedule, stops
            # the runs in flight and returns
            try:
                asyncio.run(prefect_runner.start())
            except TerminationSignal:
                pass
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        # a second Ctrl-C or SIGTERM must not cut the cleanup short (it is bounded: the
        # server gets 20 s after SIGTERM, then SIGKILL)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None and server.process is not None:
            _say("stopping the Prefect server ...")
            server.stop()
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)
    _say("semisynth serve stopped")
    return 0
