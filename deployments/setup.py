"""Create on the Prefect server at PREFECT_API_URL what deployments/prefect.yaml needs.

    python deployments/setup.py [--gpu-workers N] [--cron "0 2 * * *"]
    prefect deploy --all --prefect-file deployments/prefect.yaml

- work pools `semisynth-cpu` and `semisynth-gpu` (process) and `semisynth-k8s-gpu`
  (kubernetes, base job template deployments/k8s-gpu-job-template.json: its job variable
  `gpu_count` becomes resources.limits["nvidia.com/gpu"]; the Kubernetes collection need
  not be installed where this runs, only where its worker runs);
- the tag concurrency limit `gpu` = the number of GPU workers (--gpu-workers, else
  $SEMISYNTH_GPU_WORKERS, else 1): at most that many score+edit tasks (tagged `gpu`) run
  at once, across all flow runs;
- the Prefect variable `semisynth_nightly_cron`, the cron string of the nightly schedule
  (timezone UTC): --cron, else $SEMISYNTH_NIGHTLY_CRON, else kept when it exists, else
  "0 2 * * *".

Idempotent: existing process pools are kept, the Kubernetes pool's template is replaced
by the file's, the limit is set to the given value. The equivalent Prefect CLI commands:

    prefect work-pool create semisynth-cpu --type process
    prefect work-pool create semisynth-gpu --type process
    prefect work-pool create semisynth-k8s-gpu --type kubernetes \\
        --base-job-template deployments/k8s-gpu-job-template.json
    prefect concurrency-limit create gpu 1
    prefect variable set semisynth_nightly_cron "0 2 * * *"
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from semisynth.flows.runner import GPU_TAG
from semisynth.serve import DEFAULT_CRON
from semisynth.settings import env_name, read_settings

HERE = Path(__file__).resolve().parent
K8S_TEMPLATE = HERE / "k8s-gpu-job-template.json"
PROCESS_POOLS = ("semisynth-cpu", "semisynth-gpu")
K8S_POOL = "semisynth-k8s-gpu"
CRON_VARIABLE = "semisynth_nightly_cron"


def setup(gpu_workers: int, cron: str | None) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import (
        VariableCreate,
        VariableUpdate,
        WorkPoolCreate,
        WorkPoolUpdate,
    )
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    k8s_template = json.loads(K8S_TEMPLATE.read_text())
    done = {}
    with get_client(sync_client=True) as client:
        for name in PROCESS_POOLS:
            try:
                client.read_work_pool(name)
                done[name] = "kept"
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(
                    name=name, type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template()))
                done[name] = "created"
        try:
            client.read_work_pool(K8S_POOL)
            client.update_work_pool(K8S_POOL, WorkPoolUpdate(base_job_template=k8s_template))
            done[K8S_POOL] = "template updated"
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=K8S_POOL, type="kubernetes", base_job_template=k8s_template))
            done[K8S_POOL] = "created"
        client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=gpu_workers)  # upsert
        done[f"tag limit {GPU_TAG}"] = gpu_workers
        current = client.read_variable_by_name(CRON_VARIABLE)
        if current is None:
            client.create_variable(VariableCreate(name=CRON_VARIABLE, value=cron or DEFAULT_CRON))
        elif cron:
            client.update_variable(VariableUpdate(name=CRON_VARIABLE, value=cron))
        done[CRON_VARIABLE] = client.read_variable_by_name(CRON_VARIABLE).value
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    try:
        settings = read_settings()
    except ValueError as exc:
        parser.error(str(exc))
    parser.add_argument("--gpu-workers", type=int, default=settings.gpu_workers or 1,
                        help="score+edit tasks allowed at once "
                             f"(default ${env_name('gpu_workers')} or 1)")
    parser.add_argument("--cron", default=settings.nightly_cron,
                        help=f"nightly cron, UTC (default ${env_name('nightly_cron')}, else the "
                             f"existing variable, else {DEFAULT_CRON!r})")
    args = parser.parse_args(argv)
    if args.gpu_workers < 1:
        parser.error("--gpu-workers must be at least 1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for what, state in setup(args.gpu_workers, args.cron).items():
        print(f"{what}: {state}")
    print("next: prefect deploy --all --prefect-file deployments/prefect.yaml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
