"""deployments/prefect.yaml against a real local Prefect server: deployments/setup.py creates
the work pools (a Kubernetes one from the shipped base job template, without the
Kubernetes collection), the `gpu` tag limit and the cron variable; `prefect deploy --all`
creates the deployments; the test reads them back."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prefect_helpers import free_port, prefect_client

from semisynth.flows.lifecycle import PrefectServer

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENTS = REPO / "deployments"
PREFECT = Path(sys.executable).with_name("prefect")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server of our own: the `gpu` tag limit set here must not reach other tests' runs."""
    home = tmp_path_factory.mktemp("prefect-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_HOME", str(home))
        srv = PrefectServer(free_port(), home / "server.log")
        srv.start()
        try:
            env = {k: v for k, v in os.environ.items()
                   if k not in ("SEMISYNTH_NIGHTLY_CRON", "SEMISYNTH_GPU_WORKERS")}
            env.update({"PREFECT_API_URL": srv.api_url, "PREFECT_HOME": str(home),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
            yield srv, env
        finally:
            srv.stop()


def _run(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _deploy(env: dict, *names: str) -> str:
    select = [a for n in names for a in ("--name", n)] or ["--all"]
    return _run([str(PREFECT), "--no-prompt", "deploy", *select,
                 "--prefect-file", "deployments/prefect.yaml"], env)



@pytest.fixture(scope="module")
def deployed(server):
    srv, env = server
    setup_out = _run([sys.executable, "deployments/setup.py", "--gpu-workers", "2"], env)
    deploy_out = _deploy(env)
    return srv, env, setup_out, deploy_out


@pytest.mark.slow  # a Prefect server of its own
def test_prefect_deploy_all_creates_the_nightly_deployment(deployed):
    srv, _, setup_out, deploy_out = deployed
    assert "semisynth_nightly_cron: 0 2 * * *" in setup_out
    for name in ("nightly-refresh", "nightly-refresh-gpu", "nightly-refresh-k8s"):
        assert f"nightly_refresh/{name}" in deploy_out
    with prefect_client(srv.api_url) as client:
        d = client.read_deployment_by_name("nightly_refresh/nightly-refresh")
    assert d.entrypoint == "semisynth.flows.nightly:nightly_refresh"
    # what a worker does with it: the entrypoint names the installed module
    from prefect.flows import load_flow_from_entrypoint

    assert load_flow_from_entrypoint(d.entrypoint).name == "nightly_refresh"
    assert [s.schedule.cron for s in d.schedules] == ["0 2 * * *"]
    assert d.schedules[0].schedule.timezone == "UTC"
    assert d.schedules[0].active
    assert d.global_concurrency_limit is not None and d.global_concurrency_limit.limit == 1
    assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert d.parameters == {"config_path": "configs/demo.yaml", "overrides": []}
    assert set(d.parameter_openapi_schema["properties"]) == {"config_path", "overrides"}
    assert d.work_pool_name == "semisynth-cpu"
    assert d.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                             {"directory": str(REPO)}}]


@pytest.mark.slow  # a Prefect server of its own
def test_gpu_deployments_and_work_pools(deployed):
    srv, *_ = deployed
    template = json.loads((DEPLOYMENTS / "k8s-gpu-job-template.json").read_text())
    with prefect_client(srv.api_url) as client:
        pools = {p.name: p for p in client.read_work_pools()}
        gpu = client.read_deployment_by_name("nightly_refresh/nightly-refresh-gpu")
        k8s = client.read_deployment_by_name("nightly_refresh/nightly-refresh-k8s")
        limit = client.read_concurrency_limit_by_tag("gpu")
    assert pools["semisynth-cpu"].type == pools["semisynth-gpu"].type == "process"
    assert pools["semisynth-k8s-gpu"].type == "kubernetes"
    assert pools["semisynth-k8s-gpu"].base_job_template == template
    assert gpu.work_pool_name == "semisynth-gpu"
    assert k8s.work_pool_name == "semisynth-k8s-gpu"
    assert k8s.job_variables["gpu_count"] == 1
    assert k8s.parameters["config_path"] == "/opt/semisynth/configs/demo.yaml"
    # only the nightly deployment is scheduled; each runs one flow run at a time
    assert not gpu.schedules and not k8s.schedules
    assert gpu.global_concurrency_limit.limit == k8s.global_concurrency_limit.limit == 1
    assert limit.tag == "gpu" and limit.concurrency_limit == 2


def test_k8s_template_requests_gpus_through_a_job_variable():
    """What the Kubernetes worker does with the template: fill the job configuration with
    the variables' defaults and the deployment's job variables."""
    from prefect.utilities.templating import apply_values

    template = json.loads((DEPLOYMENTS / "k8s-gpu-job-template.json").read_text())
    props = template["variables"]["properties"]
    defaults = {k: v["default"] for k, v in props.items() if v.get("default") is not None}

    def container(values: dict) -> dict:
        config = apply_values(template["job_configuration"], {**defaults, **values})
        return config["job_manifest"]["spec"]["template"]["spec"]["containers"][0]

    assert container({})["resources"]["limits"]["nvidia.com/gpu"] == 1
    two = container({"gpu_count": 2, "image": "registry.example/semisynth:cuda"})
    assert two["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert two["image"] == "registry.example/semisynth:cuda"
    assert two["env"]["SEMISYNTH_HOME"] == two["volumeMounts"][0]["mountPath"] == "/data"
    assert props["gpu_count"]["type"] == "integer"


@pytest.mark.slow  # a Prefect server of its own
def test_k8s_pool_rejects_a_bad_gpu_count(deployed):
    """The server validates job variables against the template's schema."""
    from prefect.exceptions import PrefectHTTPStatusError

    srv, *_ = deployed
    with prefect_client(srv.api_url) as client:
        k8s = client.read_deployment_by_name("nightly_refresh/nightly-refresh-k8s")
        with pytest.raises(PrefectHTTPStatusError, match="gpu_count"):
            client.create_deployment(flow_id=k8s.flow_id, name="bad-gpu-count",
                                     work_pool_name="semisynth-k8s-gpu",
                                     entrypoint=k8s.entrypoint, job_variables={"gpu_count": "two"})


@pytest.mark.slow  # a Prefect server of its own
def test_cron_is_configurable_through_the_prefect_variable(deployed):
    srv, env, *_ = deployed
    out = _run([sys.executable, "deployments/setup.py", "--cron", "30 1 * * *",
                "--gpu-workers", "2"], env)
    assert "semisynth_nightly_cron: 30 1 * * *" in out
    _deploy(env, "nightly-refresh")
    with prefect_client(srv.api_url) as client:
        d = client.read_deployment_by_name("nightly_refresh/nightly-refresh")
        # setup.py without --cron keeps what is set
        kept = _run([sys.executable, "deployments/setup.py"], env)
        limit = client.read_concurrency_limit_by_tag("gpu")
    assert [(s.schedule.cron, s.schedule.timezone) for s in d.schedules] == [("30 1 * * *", "UTC")]
    assert "semisynth_nightly_cron: 30 1 * * *" in kept
    assert limit.concurrency_limit == 1  # SEMISYNTH_GPU_WORKERS unset: 1


def test_serve_refuses_a_server_that_does_not_answer(monkeypatch, capsys, tmp_path):
    from semisynth.cli import main as cli

    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{free_port()}/api")
    monkeypatch.setenv("SEMISYNTH_HOME", str(tmp_path))
    assert cli(["serve", "--config", str(REPO / "configs" / "demo.yaml")]) == 2
    assert "does not answer" in capsys.readouterr().err


def test_serve_refuses_a_port_in_use(monkeypatch, capsys, tmp_path):
    from semisynth.cli import main as cli

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("SEMISYNTH_HOME", str(tmp_path))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = cli(["serve", "--port", str(port), "--config", str(REPO / "configs" / "demo.yaml")])
    assert code == 2
    assert f"port {port}" in capsys.readouterr().err
