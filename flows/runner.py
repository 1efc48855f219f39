"""Where the flow's tasks run: an existing Dask cluster, or a LocalCluster.

``SEMISYNTH_DASK_ADDRESS`` names the scheduler of an existing cluster (``tcp://host:8786``);
without it the flow starts a LocalCluster of ``dask_workers`` processes for the run.

The score+edit stage is the only accelerator stage. Workers on GPU machines are started
with ``--resources GPU=1``; when any worker of the cluster advertises that resource, the
score tasks are submitted under ``dask.annotate(resources={"GPU": 1})`` and the scheduler
runs them only there (one at a time per GPU). A cluster without such workers runs them
anywhere. ``SEMISYNTH_DASK_GPU`` overrides the detection: ``auto`` (the default),
``require`` (always annotate: for clusters whose GPU workers join after the flow starts)
or ``off`` (never annotate).

On the CPU, torch takes every core of the machine; when several worker processes share a
host, start each with ``SEMISYNTH_TORCH_THREADS`` = its share of the cores (the
LocalCluster does this itself when ``dask_workers`` > 1).

These variables are read through ``semisynth.settings``: the functions here take a
``Settings`` and read the environment themselves only when given none (a Prefect worker
that loads the flow from its entrypoint has no command line to build one).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from semisynth.config import Config
from semisynth.settings import GpuMode, Settings, env_name, read_settings

GPU_RESOURCE = "GPU"
GPU_TAG = "gpu"  # the Prefect tag of score+edit tasks; its concurrency limit = GPU workers


def task_runner(cfg: Config | None = None, settings: Settings | None = None):
    """The cluster at ``settings.dask_address``, else a LocalCluster of ``cfg.dask_workers``
    (without a config, e.g. when a Prefect worker loads the flow from its entrypoint:
    ``settings.dask_workers``) worker processes. Without ``settings``: the environment's."""
    # lazy: prefect, distributed and dask, loaded only when this runs
    from prefect_dask import DaskTaskRunner

    settings = settings or read_settings()
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    workers = cfg.dask_workers if cfg is not None else settings.dask_workers
    # One worker process holds the prior once and uses every core through torch's own
    # threads; more workers on a small machine would only split the same cores, so each
    # then gets its share of them for torch.
    cluster_kwargs = {
        "n_workers": workers,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
    }
    if workers > 1:
        # a process boundary: the worker processes read it back through their Settings
        share = max(1, (os.cpu_count() or 1) // workers)
        cluster_kwargs["env"] = {env_name("torch_threads"): str(share)}
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs)


def gpu_workers(client) -> list[str]:
    """Addresses of the cluster's workers that advertise the GPU resource."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return sorted(a for a, w in workers.items() if (w.get("resources") or {}).get(GPU_RESOURCE, 0) > 0)


def flow_dask_client():
    """The Dask client of the running flow's task runner, or None (not on Dask)."""
    # lazy: prefect, distributed and dask, loaded only when this runs
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx else None
    if not isinstance(runner, DaskTaskRunner):
        return None
    return runner.client


@contextlib.contextmanager
def score_placement(mode: GpuMode | None = None) -> Iterator[dict | None]:
    """Submit the score tasks inside this block: on a cluster with GPU workers they are
    annotated to need one GPU each, so only those workers run them. Yields the resources
    asked for (None: run anywhere). ``mode``: auto, require or off; without it, the
    environment's ``SEMISYNTH_DASK_GPU``."""
    # lazy: dask, loaded only when this runs
    import dask

    mode = mode or read_settings().dask_gpu
    client = flow_dask_client() if mode != "off" else None
    if client is None:
        yield None
        return
    # lazy: prefect, loaded only when this runs
    from prefect.logging import get_run_logger

    log = get_run_logger()  # a client exists only inside a flow run
    gpus = gpu_workers(client)
    if not gpus and mode == "auto":
        log.info("no Dask worker advertises a %s resource: score tasks run on any worker", GPU_RESOURCE)
        yield None
        return
    resources = {GPU_RESOURCE: 1}
    if gpus:
        log.info("score tasks need resources %s (%d GPU workers now: %s)", resources, len(gpus), gpus)
    else:
        log.warning("score tasks need resources %s and no worker has them yet: they wait for "
                    "GPU workers to join (%s=require)", resources, env_name("dask_gpu"))
    with dask.annotate(resources=resources):
        yield resources
