"""Where the flow's tasks run: an existing Dask cluster, or a LocalCluster."""

from __future__ import annotations

import os

from semisynth.config import Config


def task_runner(cfg: Config):
    from prefect_dask import DaskTaskRunner

    address = os.environ.get("SEMISYNTH_DASK_ADDRESS")
    if address:
        return DaskTaskRunner(address=address)
    # One worker process holds the prior once and uses every core through torch's own
    # threads; more workers on a small machine would only split the same cores.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": cfg.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
