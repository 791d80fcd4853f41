"""Kernels through a real Jupyter Enterprise Gateway (``kernels.provider: gateway``).

Enterprise Gateway 3.3 pins ``jupyter_server<2``, so it lives in a virtualenv of its
own (``.ci/run`` makes it; ``REMOTE_KERNEL_TEST_EG`` names its
``jupyter-enterprisegateway``). The gateway starts real ipykernels of this Python;
the datasite drives them over the gateway's REST API and websocket, and the kernels
reach the datasite's kernel API over TLS with their own tokens -- no Unix socket, no
datasite files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from remote_kernel.datasite.config import ConfigError, DatasiteConfig
from remote_kernel.datasite.gateway import GATEWAY_KERNEL_ENV
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, free_port, make_datasite
from .test_tokens_and_tls import make_certificate

EG_ENV = "REMOTE_KERNEL_TEST_EG"
EG_DEFAULT = "/opt/remote-kernel-eg/bin/jupyter-enterprisegateway"
EG_TOKEN = "eg-test-token"


def gateway_binary() -> str:
    path = os.environ.get(EG_ENV) or EG_DEFAULT
    if not Path(path).exists():
        pytest.skip(f"no Jupyter Enterprise Gateway at {path} (.ci/run installs one; set {EG_ENV})")
    return path


def start_gateway(home: Path, client_envs: str) -> tuple[subprocess.Popen[bytes], str]:
    """An Enterprise Gateway whose only kernel spec is an ipykernel of this Python."""
    binary = gateway_binary()
    spec = home / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "Python 3",
                                                  "language": "python"}))  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "JUPYTER_PATH": str(home),
        "JUPYTER_DATA_DIR": str(home),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "EG_CLIENT_ENVS": client_envs,
    }
    log = open(home / "eg.log", "wb")
    process = subprocess.Popen(
        [binary, "--ip=127.0.0.1", f"--port={port}",
         f"--EnterpriseGatewayApp.auth_token={EG_TOKEN}",
         "--EnterpriseGatewayApp.allowed_kernels=['python3']",
         "--EnterpriseGatewayApp.list_kernels=True"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/api/kernelspecs", headers=auth(), timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.2)
    process.kill()
    raise TimeoutError(f"the gateway did not start: {(home / 'eg.log').read_text()}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # What the datasite sends its kernels besides KERNEL_*: the gateway passes on these.
    process, url = start_gateway(tmp_path_factory.mktemp("eg"), ",".join(GATEWAY_KERNEL_ENV))
    yield url
    process.terminate()
    process.wait(20)


def gateway_site(tmp: Path, gateway_url: str) -> RunningDatasite:
    """A datasite whose kernels are the gateway's, with its kernel API on TLS."""
    site = make_datasite(tmp)
    cert, key = make_certificate(tmp)
    config = DatasiteConfig.load(site.directory)
    api_port = free_port()
    kernels = config.kernels
    kernels.provider, kernels.gateway_url = "gateway", gateway_url
    kernels.api_listen, kernels.api_url = f"127.0.0.1:{api_port}", f"https://127.0.0.1:{api_port}"
    kernels.api_certfile, kernels.api_keyfile = str(cert), str(key)
    config.save()
    os.environ[kernels.gateway_token_env] = EG_TOKEN  # the server reads it from its environment
    return site


def auth() -> dict[str, str]:
    return {"Authorization": f"token {EG_TOKEN}"}


def gateway_kernels(url: str) -> list[dict]:
    return httpx.get(f"{url}/api/kernels", headers=auth(), timeout=10).json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[RunningDatasite]:
    site = gateway_site(tmp_path_factory.mktemp("gw-site"), gateway)
    site.start()
    yield site
    site.stop()


def test_a_cell_runs_on_a_gateway_kernel_on_the_private_data(
    site: RunningDatasite, gateway: str
) -> None:
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request = client.run('df = rk.data("heart")\nprint(len(df), df.age.sum())')
        request.wait(120, until="finished")
        assert request.status == "completed", request
        # The kernel is the gateway's: it is in the gateway's list while the session lives.
        assert len(gateway_kernels(gateway)) == 1
        output_id = request.outputs[0].id
        shown = httpx.get(f"{site.url}/api/outputs/{output_id}", headers=site.headers("bob"))
        private = pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")
        assert shown.json()["content"]["text"] == f"{len(private)} {private.age.sum()}\n"
        # rk.query over the TCP kernel API: an exact aggregate the policy releases itself.
        query = client.run('rk.query("SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex")')
        query.wait(120, until="finished")
        assert query.status == "completed", query
        assert query.outputs and query.outputs[-1].state == "released", query.outputs
    finally:
        client.close()


def test_pushed_objects_reach_a_gateway_kernel_through_the_kernel_api(
    site: RunningDatasite,
) -> None:
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request = client.run("print(sorted(limits.items()))", push={"limits": {"age": 40}})
        request.wait(120, until="finished")
        assert request.status == "completed", request.message
        shown = httpx.get(
            f"{site.url}/api/outputs/{request.outputs[0].id}", headers=site.headers("bob")
        ).json()
        assert shown["content"]["text"] == "[('age', 40)]\n"
    finally:
        client.close()


def test_a_kernel_cannot_fetch_another_sessions_push(site: RunningDatasite) -> None:
    """A kernel's token reaches its own session's pushes only (the kernel API's check)."""
    alice = Datasite(site.url, site.tokens["alice"])
    carol = Datasite(site.url, site.tokens["carol"])
    try:
        pushed = alice.run("secret['x']", push={"secret": {"x": 41}})
        pushed.wait(120, until="finished")
        assert pushed.status == "completed", pushed.message
        probe = carol.run(
            "from remote_kernel.researcher.kernel_api import kernel_api_client\n"
            "with kernel_api_client() as http:\n"
            f"    print(http.get('/kernel/pushes/{pushed.id}/secret').status_code)"
        )
        probe.wait(120, until="finished")
        shown = httpx.get(
            f"{site.url}/api/outputs/{probe.outputs[0].id}", headers=site.headers("bob")
        ).json()
        assert shown["content"]["text"] == "404\n"
    finally:
        alice.close()
        carol.close()


def test_the_kernel_api_over_tcp_wants_tls_and_a_kernel_token(site: RunningDatasite) -> None:
    settings = DatasiteConfig.load(site.directory).kernels
    cert = settings.api_certfile
    with httpx.Client(base_url=settings.api_url, verify=cert, timeout=10) as http:
        assert http.get("/kernel/datasets/heart").status_code == 401
        bad = {"Authorization": "Bearer not-a-kernel-token"}
        assert http.get("/kernel/datasets/heart", headers=bad).status_code == 401
        assert http.post("/kernel/query", headers=bad, json={"sql": "SELECT 1"}).status_code == 401
        assert http.get("/kernel/pushes/1/limits", headers=bad).status_code == 401
    plain = settings.api_url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/kernel/datasets/heart", timeout=5)
    # A researcher's token is not a kernel token, and the researcher port has no tables.
    alice = {"Authorization": f"Bearer {site.tokens['alice']}"}
    with httpx.Client(base_url=settings.api_url, verify=cert, timeout=10) as http:
        assert http.get("/kernel/datasets/heart", headers=alice).status_code == 401
    assert httpx.get(f"{site.url}/kernel/datasets/heart", headers=alice).status_code == 404


def test_a_gateway_site_without_its_tls_listener_is_refused_at_load(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    config = DatasiteConfig.load(site.directory)
    config.kernels.provider, config.kernels.gateway_url = "gateway", "http://127.0.0.1:9"
    config.save()
    with pytest.raises(ConfigError, match=r"kernels\.api_listen, kernels\.api_url"):
        DatasiteConfig.load(site.directory)


def test_an_unreachable_gateway_fails_the_cell_with_a_clear_message(tmp_path: Path) -> None:
    site = gateway_site(tmp_path, f"http://127.0.0.1:{free_port()}")
    site.start()
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request = client.run("1 + 1")
        request.wait(60, until="finished")
        assert request.status == "failed"
        assert "cannot reach the kernel gateway" in request.message, request.message
    finally:
        client.close()
        site.stop()


def test_interrupt_restart_and_close_reach_the_gateway_kernel(
    site: RunningDatasite, gateway: str
) -> None:
    before = {k["id"] for k in gateway_kernels(gateway)}  # the other tests' sessions

    def carols() -> set[str]:
        return {k["id"] for k in gateway_kernels(gateway)} - before

    client = Datasite(site.url, site.tokens["carol"])
    try:
        request = client.run("import time\nfor _ in range(600):\n    time.sleep(0.1)")
        deadline = time.monotonic() + 60
        while request.status != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        client.interrupt()
        request.wait(30, until="finished")
        assert request.status == "error", request  # KeyboardInterrupt, through the gateway
        client.run("z = 1").wait(60, until="finished")
        client.restart()
        check = client.run("print('z' in dir())")
        check.wait(60, until="finished")
        shown = httpx.get(
            f"{site.url}/api/outputs/{check.outputs[0].id}", headers=site.headers("bob")
        ).json()
        assert shown["content"]["text"] == "False\n"  # the restart reached the kernel
        assert len(carols()) == 1
    finally:
        client.close(end_session=True)

    deadline = time.monotonic() + 30
    while carols() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert carols() == set()  # ending the session shut its gateway kernel down


def test_a_gateway_that_drops_our_variables_is_named_with_the_fix(tmp_path: Path) -> None:
    process, url = start_gateway(tmp_path / "eg", client_envs="")
    site = gateway_site(tmp_path, url)
    site.start()
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request = client.run("1 + 1")
        request.wait(60, until="finished")
        assert request.status == "failed"
        assert "did not pass REMOTE_KERNEL_SITE, REMOTE_KERNEL_API_URL" in request.message
        assert "EG_CLIENT_ENVS" in request.message
        assert gateway_kernels(url) == []  # the kernel it could not use was shut down
    finally:
        client.close()
        site.stop()
        process.terminate()
        process.wait(20)


def test_the_kubernetes_manifests_agree_with_the_datasite_config(tmp_path: Path) -> None:
    """deploy/kubernetes: the ConfigMap's datasite.yaml is a valid gateway config, and the
    kernels' NetworkPolicy lets them reach its kernel API port and nothing but DNS/EG."""
    import yaml

    deploy = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"
    documents = list(yaml.safe_load_all((deploy / "datasite.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    raw = yaml.safe_load(config_map["data"]["datasite.yaml"])
    from remote_kernel.datasite.config import KernelSettings

    kernels = KernelSettings(**raw["kernels"])
    kernels.check(tmp_path / "datasite.yaml")  # raises on a missing or unknown key
    api_port = int(kernels.api_listen.rpartition(":")[2])
    service = next(
        d for d in documents if d["kind"] == "Service" and d["metadata"]["name"] in
        kernels.api_url
    )  # fmt: skip
    assert service["spec"]["ports"][0]["port"] == api_port

    policies = list(yaml.safe_load_all((deploy / "networkpolicy.yaml").read_text()))
    kernel_policy = next(p for p in policies if p["spec"]["podSelector"]["matchLabels"].get(
        "component") == "kernel")  # fmt: skip
    assert set(kernel_policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    allowed = {(port["protocol"], port["port"]) for rule in kernel_policy["spec"]["egress"]
               for port in rule["ports"]}  # fmt: skip
    assert allowed == {("TCP", api_port), ("UDP", 53), ("TCP", 53), ("TCP", 8877)}
