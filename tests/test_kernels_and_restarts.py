"""Kernel state, kernel death, interrupt, and a datasite that restarts or crashes."""

from __future__ import annotations

import os
import time

import httpx

from remote_kernel.researcher.client import Datasite, RemoteRequest

from .conftest import RunningDatasite


def approve_all(site: RunningDatasite, request: RemoteRequest) -> None:
    headers = site.headers("bob")
    request.wait(60, until="finished")
    for output in request.outputs:
        if output.state == "pending":
            response = httpx.post(
                f"{site.url}/api/outputs/{output.id}/review",
                json={"decision": "approve"},
                headers=headers,
            )
            assert response.status_code == 200, response.text
    request.wait(30)


def released_text(site: RunningDatasite, client: Datasite, code: str) -> str:
    request = client.run(code)
    approve_all(site, request)
    return "".join(o.text for o in request.outputs)


def test_state_persists_and_a_dead_kernel_is_replaced(datasite: RunningDatasite) -> None:
    client = Datasite(datasite.url, datasite.tokens["alice"])
    first = client.run("x = 41")
    first.wait(60, until="finished")
    assert first.status == "completed" and first.outputs == []
    assert released_text(datasite, client, "print(x + 1)") == "42\n"

    dying = client.run("import os\nos._exit(1)")
    dying.wait(60, until="finished")
    assert dying.status == "failed"
    assert "died" in dying.message and "new kernel" in dying.message
    assert httpx.get(datasite.url + "/api/health").status_code == 200

    fresh = released_text(datasite, client, "print('x' in dir())")
    assert fresh == "False\n"  # a new kernel: the old state is gone, as the message said
    client.close()


def test_interrupt_reaches_the_remote_kernel(datasite: RunningDatasite) -> None:
    client = Datasite(datasite.url, datasite.tokens["alice"])
    request = client.run("import time\nfor _ in range(600):\n    time.sleep(0.1)")
    deadline = time.monotonic() + 30
    while request.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    client.interrupt()
    request.wait(30, until="finished")
    assert request.status == "error"  # KeyboardInterrupt, held for review like any output
    kernel, note = request.outputs  # and the datasite's own note, released at once
    assert kernel.msg_type == "error" and kernel.state != "released"
    assert note.state == "released" and note.text.startswith("KeyboardInterrupt in your cell")
    assert released_text(datasite, client, "print('alive')") == "alive\n"

    client.run("z = 1").wait(60, until="finished")
    client.restart()  # a restart reaches the remote kernel: its state is gone
    assert released_text(datasite, client, "print('z' in dir())") == "False\n"
    client.close()


def test_restart_keeps_pending_decisions_and_released_outputs(datasite: RunningDatasite) -> None:
    client = Datasite(datasite.url, datasite.tokens["alice"])
    request = client.run("from IPython.display import display\ndisplay('one')\ndisplay('two')")
    request.wait(60, until="finished")
    outputs = request.outputs
    assert len(outputs) == 2 and all(o.state == "pending" for o in outputs)
    approved = outputs[0]
    httpx.post(
        f"{datasite.url}/api/outputs/{approved.id}/review",
        json={"decision": "approve"},
        headers=datasite.headers("bob"),
    )
    client.close()

    datasite.kill_server_only()  # kill -9: no chance to clean up
    datasite.start()

    after = Datasite(datasite.url, datasite.tokens["alice"]).request(request.id)
    states = {o.id: o.state for o in after.outputs}
    assert states[approved.id] == "released"
    assert after.outputs[0].text == approved_text(after, approved.id)
    assert all(states[o.id] == "pending" for o in outputs[1:])
    queue = httpx.get(datasite.url + "/api/reviews", headers=datasite.headers("bob")).json()
    assert {item["id"] for item in queue} >= {o.id for o in outputs[1:]}

    store = datasite.store()
    assert store.verify_audit() == []
    store.close()


def approved_text(request: RemoteRequest, output_id: int) -> str:
    (output,) = [o for o in request.outputs if o.id == output_id]
    assert output.content is not None
    return output.text


def test_a_crash_mid_run_marks_the_request_interrupted(datasite: RunningDatasite) -> None:
    client = Datasite(datasite.url, datasite.tokens["alice"])
    request = client.run("import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)")
    deadline = time.monotonic() + 60
    while not request.outputs and time.monotonic() < deadline:
        time.sleep(0.05)
    session = client.session_id
    client.close()
    store = datasite.store()
    (kernel_pid,) = [s.kernel_pid for s in store.open_sessions_with_kernels() if s.id == session]
    store.close()

    datasite.kill_server_only()
    datasite.start()

    after = Datasite(datasite.url, datasite.tokens["alice"]).request(request.id)
    assert after.status == "interrupted"
    assert "server stopped" in after.message
    # The orphaned kernel (it holds private data in memory) is gone.
    deadline = time.monotonic() + 10
    while _alive(kernel_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(kernel_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except OSError:
        return False


def test_idle_kernels_are_culled(tmp_path) -> None:
    from remote_kernel.datasite.config import DatasiteConfig

    from .conftest import make_datasite

    site = make_datasite(tmp_path)
    config = DatasiteConfig.load(site.directory)
    config.kernels.cull_idle_seconds = 1.0
    config.kernels.cull_interval_seconds = 0.5
    config.save()
    site.start()
    try:
        client = Datasite(site.url, site.tokens["alice"])
        client.run("y = 1").wait(60, until="finished")
        url = f"{site.url}/api/sessions/{client.session_id}"
        headers = site.headers("alice")
        assert httpx.get(url, headers=headers).json()["kernel"] == "idle"
        deadline = time.monotonic() + 15
        while httpx.get(url, headers=headers).json()["kernel"] != "not started":
            assert time.monotonic() < deadline, "idle kernel was not culled"
            time.sleep(0.2)
        # The session still works: the next request gets a new kernel.
        assert released_text(site, client, "print('y' in dir())") == "False\n"
        client.close()
    finally:
        site.stop()


def test_closing_a_session_interrupts_its_queue_and_refuses_new_cells(
    datasite: RunningDatasite,
) -> None:
    client = Datasite(datasite.url, datasite.tokens["alice"])
    running = client.run("import time\ntime.sleep(30)")
    queued = [client.run(f"print({n})") for n in range(2)]
    deadline = time.monotonic() + 30
    while running.status != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    session = client.session_id
    headers = datasite.headers("alice")
    assert (
        httpx.delete(f"{datasite.url}/api/sessions/{session}", headers=headers).status_code == 204
    )
    for request in [running, *queued]:
        assert client.request(request.id).status == "interrupted"
    assert "closed" in client.request(queued[0].id).message
    refused = httpx.post(
        f"{datasite.url}/api/sessions/{session}/requests", headers=headers, json={"code": "1"}
    )
    assert refused.status_code == 400 and "closed" in refused.json()["error"]["message"]
    client.close()
