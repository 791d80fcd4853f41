"""Many datasites, one notebook: fan-out, gather, push, reconnect, errors (issue 4).

Four real datasites (cleveland, hungary, switzerland, va-long-beach) on loopback
ports, each with its own heart-disease table: the UCI file when
../shared/data/heart-disease is there, generated heart-shaped data otherwise.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pandas as pd
import pytest

import remote_kernel as rk
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset
from remote_kernel.protocol.errors import NoValue
from remote_kernel.protocol.values import VALUE_MIME
from remote_kernel.researcher.client import Datasite
from remote_kernel.researcher.values import PickledValue, decode_value
from tests.conftest import RunningDatasite, make_datasite
from tests.test_end_to_end import LocalKernel, texts

SITES = ("cleveland", "hungary", "switzerland", "va-long-beach")


@pytest.fixture(scope="module")
def four_sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningDatasite]]:
    sites = {name: make_datasite(tmp_path_factory.mktemp(name), name) for name in SITES}
    # A dataset only cleveland and switzerland have, with different columns at each.
    root = tmp_path_factory.mktemp("extra")
    pd.DataFrame({"id": range(40), "value": [i % 7 for i in range(40)]}).to_csv(
        root / "a.csv", index=False
    )
    pd.DataFrame({"id": range(40), "score": [i % 5 for i in range(40)]}).to_csv(
        root / "b.csv", index=False
    )
    add_dataset(DatasiteConfig.load(sites["cleveland"].directory), "extra", root / "a.csv")
    add_dataset(DatasiteConfig.load(sites["switzerland"].directory), "extra", root / "b.csv")
    for site in sites.values():
        site.start()
    yield sites
    for site in sites.values():
        site.stop()


def private(site: RunningDatasite) -> pd.DataFrame:
    return pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")


def researcher(site: RunningDatasite, user: str = "alice") -> Datasite:
    return Datasite(site.url, site.tokens[user], site.name)


def approve_all(site: RunningDatasite, request_id: int, timeout: float = 60) -> list[dict]:
    """The reviewer approves every pending output of ``request_id`` once it has finished."""
    reviewer = Datasite(site.url, site.tokens["bob"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = reviewer.request_json(request_id)
        if view["status"] in ("completed", "error", "failed", "interrupted"):
            break
        time.sleep(0.1)
    approved = []
    for output in reviewer.request_json(request_id)["outputs"]:
        if output["state"] == "pending":
            approved.append(output)
            reviewer.approve(output["id"])
    reviewer.close()
    return approved


@pytest.fixture
def saved_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "connections.json"
    monkeypatch.setenv("REMOTE_KERNEL_CONNECTIONS", str(path))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter-data"))
    return path


# --- fan-out and gather ---------------------------------------------------------------------------
def test_fan_out_to_all_four_in_a_real_kernel(
    four_sites: dict[str, RunningDatasite], tmp_path: Path
) -> None:
    kernel = LocalKernel({**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        connect = "".join(
            f"rk.connect({s.url!r}, token={s.tokens['alice']!r}, name={s.name!r})\n"
            for s in four_sites.values()
        )
        kernel.run("%load_ext remote_kernel\nimport remote_kernel as rk\n" + connect)
        cell = (
            "%%remote --all\n"
            "df = rk.data('heart')\n"
            "df.groupby(['sex', 'num']).size().rename('n').reset_index()"
        )
        messages = kernel.run(cell)
        shown = texts(messages)
        # One status row per site, as a widget with a text/HTML fallback.
        status = [
            m
            for m in messages
            if m["msg_type"] == "display_data"
            and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]
        ]
        assert len(status) == 1, [m["msg_type"] for m in messages]
        for name in SITES:
            assert name in status[0]["content"]["data"]["text/plain"]
        requests = status[0]["content"]["metadata"]["remote_kernel"]["requests"]
        assert sorted(requests) == sorted(SITES)  # for frontends: each site's request id
        pending = {
            m["content"]["metadata"]["remote_kernel"]["site"]
            for m in messages
            if m["msg_type"] == "display_data"
            and m["content"]["metadata"].get("remote_kernel", {}).get("state") == "pending"
        }
        assert pending == set(SITES)
        assert "differs from the mock" not in shown  # int64 here, float64 there: no warning

        # Nothing released yet: the gathered values are empty, and say why.
        empty = kernel.run("print(rk.last().values(), sorted(rk.last().missing()))")
        assert "{} ['cleveland', 'hungary', 'switzerland', 'va-long-beach']" in texts(empty)

        request_ids = kernel.run("print({s: r.id for s, r in rk.last().requests.items()})")
        ids = eval(texts(request_ids).split('"text": "')[1].split("\\n")[0])
        threads = [
            threading.Thread(target=approve_all, args=(four_sites[name], ids[name]))
            for name in SITES
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        gathered = kernel.run(
            "values = rk.last().values(wait=True, timeout=60)\n"
            "for site, value in sorted(values.items()):\n"
            "    print(site, type(value).__name__, value.to_json(orient='records'))"
        )
        out = texts(gathered)
        for name, site in four_sites.items():
            expected = (
                private(site).groupby(["sex", "num"]).size().rename("n").reset_index()
            ).to_json(orient="records")
            assert f"{name} DataFrame {expected}".replace('"', '\\"') in out, out
    finally:
        kernel.close()


def test_released_dataframe_equals_what_the_reviewer_approved(
    four_sites: dict[str, RunningDatasite],
) -> None:
    site = four_sites["hungary"]
    client = researcher(site)
    try:
        request = client.run(
            "df = rk.data('heart')\n"
            "df.groupby('sex').agg(age=('age', 'mean'), chol=('chol', 'median'))"
        )
        (approved,) = approve_all(site, request.id)
        request.wait(timeout=60)
        value = request.value()
        seen_by_reviewer = decode_value(approved["content"]["data"][VALUE_MIME])
        pd.testing.assert_frame_equal(value, seen_by_reviewer)
        truth = private(site).groupby("sex").agg(age=("age", "mean"), chol=("chol", "median"))
        pd.testing.assert_frame_equal(value, truth)
        # The researcher holds exactly the bytes that were reviewed.
        (released,) = request.outputs
        assert released.released and released.content == approved["content"]
    finally:
        client.close()


def test_values_of_every_safe_kind_come_back_as_objects(
    four_sites: dict[str, RunningDatasite],
) -> None:
    site = four_sites["switzerland"]
    client = researcher(site)
    cells = {
        "3 * 7": 21,
        "{'a': [1, 2.5, None], 'b': 'text'}": {"a": [1, 2.5, None], "b": "text"},
        "import numpy as np\nnp.arange(6).reshape(2, 3)": [[0, 1, 2], [3, 4, 5]],
        "import pandas as pd\npd.Series([1.5, 2.5], name='x')": [1.5, 2.5],
    }
    try:
        for code, expected in cells.items():
            request = client.run(code)
            approve_all(site, request.id)
            value = request.wait(timeout=60).value()
            got = value.tolist() if hasattr(value, "tolist") else value
            assert got == expected, code
        # A cell ending in a datasite query: its table is released by policy, no reviewer.
        cleveland = researcher(four_sites["cleveland"])
        request = cleveland.run("rk.query('SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex')")
        table = request.wait(timeout=60).value()
        cleveland.close()
        truth = private(four_sites["cleveland"]).groupby("sex").size()
        assert dict(zip(table["sex"], table["n"], strict=True)) == truth.to_dict()
    finally:
        client.close()


def test_a_pickled_value_is_held_and_loads_only_with_trust(
    four_sites: dict[str, RunningDatasite], tmp_path: Path
) -> None:
    site = four_sites["cleveland"]
    marker = tmp_path / "unpickled-by"
    client = researcher(site)
    try:
        # An object whose unpickling leaves a mark (the pid of whoever unpickles it).
        request = client.run(
            "import os\n"
            "def _mark(path):\n"
            "    open(path, 'w').write(str(os.getpid()))\n"
            "    return 'loaded'\n"
            "class Model:\n"
            "    coef = [0.5, -1.25]\n"
            f"    def __reduce__(self): return (_mark, ({str(marker)!r},))\n"
            "Model()"
        )
        request.wait(timeout=60, until="finished")
        reviewer = Datasite(site.url, site.tokens["bob"])
        (pending,) = [o for o in reviewer.request_json(request.id)["outputs"]]
        checks = {f["check"]: f["verdict"] for f in pending["findings"]}
        assert checks["pickled-value"] == "review"
        assert pending["state"] == "pending"
        assert not marker.exists()  # the filter and the server never unpickled it
        reviewer.approve(pending["id"])
        reviewer.close()
        value = request.wait(timeout=60).value()
        assert isinstance(value, PickledValue)
        assert not marker.exists()
        with pytest.raises(PermissionError, match="trust=True"):
            value.load()
        assert value.load(trust=True) == "loaded"
        assert marker.read_text() == str(os.getpid())  # unpickled here, by the researcher
    finally:
        client.close()


def test_pickles_are_held_even_under_the_release_everything_benchmark_policy(
    tmp_path: Path,
) -> None:
    site = make_datasite(tmp_path, extra_args=["--insecure-release-all"])
    site.start()
    client = researcher(site)
    try:
        plain = client.run("41 + 1").wait(timeout=60)
        assert plain.value() == 42
        model = client.run("class M:\n    pass\nM()").wait(timeout=60, until="finished")
        assert [o.state for o in model.outputs] == ["pending"]
        with pytest.raises(NoValue, match="pending review"):
            model.value()
    finally:
        client.close()
        site.stop()


# --- push ----------------------------------------------------------------------------------------
class Threshold:
    def __init__(self, cut: int) -> None:
        self.cut = cut


def _record_pid(path: str) -> Threshold:
    with open(path, "w") as handle:
        handle.write(str(os.getpid()))
    return Threshold(55)


class Recorder:
    """Unpickling this writes the unpickling process's pid to ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record_pid, (self.path,))


def test_push_reaches_only_the_remote_kernel(
    four_sites: dict[str, RunningDatasite], tmp_path: Path
) -> None:
    site = four_sites["va-long-beach"]
    # A sandboxed kernel runs as a user of its own, cannot enter tmp_path (0700) and has
    # a /tmp of its own: give it a directory it may write the marker to, in the project
    # (which it reaches, as its Python's import path).
    shared = Path(tempfile.mkdtemp(prefix="rk-push-marker-", dir=Path(__file__).parent))
    shared.chmod(0o777)
    marker = shared / "push-unpickled-by"
    client = researcher(site)
    # By value: the kernel cannot import this module (diffprivlib installs a top-level
    # ``tests`` package that shadows ours), and a researcher's own classes travel so too.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        request = client.run(
            "df = rk.data('heart')\n"
            "print(type(limit).__name__, limit.cut, settings['group'])\n"
            "int((df.age > limit.cut).sum())",
            push={"limit": Recorder(str(marker)), "settings": {"group": "sex"}},
        )
        request.wait(timeout=60, until="finished")
        assert request.status == "completed", request.message
        # Unpickled by the kernel at the datasite, not the server (invariant 3).
        store = four_sites["va-long-beach"].store()
        kernel_pid = store.get_session(client.session_id).kernel_pid
        store.close()
        assert marker.read_text() == str(kernel_pid)
        assert int(marker.read_text()) != site.process.pid  # type: ignore[union-attr]

        # Reviewers see what was pushed: names, types, sizes, hashes; never the bytes.
        reviewer = Datasite(site.url, site.tokens["bob"])
        view = reviewer.request_json(request.id)
        pushes = {p["name"]: p for p in view["pushes"]}
        assert set(pushes) == {"limit", "settings"}
        assert pushes["settings"]["type"] == "dict"
        assert "data" not in pushes["limit"]
        queue = reviewer.review_queue()
        assert any(item["request"].get("pushes") for item in queue)
        reviewer.close()
        approve_all(site, request.id)
        assert request.wait(timeout=60).value() == int((private(site).age > 55).sum())
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        client.close()
        shutil.rmtree(shared, ignore_errors=True)


def test_bad_pushes_are_refused_and_change_nothing(four_sites: dict[str, RunningDatasite]) -> None:
    site = four_sites["hungary"]
    headers = site.headers("alice")
    session = httpx.post(site.url + "/api/sessions", headers=headers).json()["id"]
    before = len(httpx.get(site.url + "/api/requests", headers=headers).json())
    for push, message in (
        ([{"name": "not a name", "data": ""}], "not a Python variable name"),
        ([{"name": "class", "data": ""}], "not a Python variable name"),
        ([{"name": "x", "data": "%%%"}], "not valid base64"),
        ([{"name": "x", "data": ""}, {"name": "x", "data": ""}], "appears twice"),
        ("x", "must be a list"),
    ):
        response = httpx.post(
            f"{site.url}/api/sessions/{session}/requests",
            headers=headers,
            json={"code": "1", "push": push},
        )
        assert response.status_code == 400, push
        assert message in response.json()["error"]["message"]
    assert len(httpx.get(site.url + "/api/requests", headers=headers).json()) == before


def test_a_push_the_remote_kernel_cannot_load_stops_the_cell(
    four_sites: dict[str, RunningDatasite],
) -> None:
    site = four_sites["cleveland"]
    headers = site.headers("alice")
    session = httpx.post(site.url + "/api/sessions", headers=headers).json()["id"]
    import base64

    garbage = base64.b64encode(pickle.dumps(1)[:-3]).decode()
    response = httpx.post(
        f"{site.url}/api/sessions/{session}/requests",
        headers=headers,
        json={"code": "print('should not run')", "push": [{"name": "x", "data": garbage}]},
    )
    assert response.status_code == 201
    request_id = response.json()["id"]
    from tests.conftest import wait_finished

    view = wait_finished(
        lambda path: httpx.get(site.url + path, headers=headers).json(), request_id
    )
    assert view["status"] == "error"
    assert "could not load the pushed objects (x)" in view["message"]
    reviewer = Datasite(site.url, site.tokens["bob"])
    outputs = reviewer.request_json(request_id)["outputs"]
    reviewer.close()
    assert all("should not run" not in str(o["content"]) for o in outputs)


# --- failures a researcher can act on ------------------------------------------------------------
def test_one_site_down_the_others_still_run(tmp_path: Path) -> None:
    names = ("cleveland", "hungary", "switzerland")
    sites = []
    for name in names:
        (tmp_path / f"down-{name}").mkdir()
        sites.append(make_datasite(tmp_path / f"down-{name}", name))
        sites[-1].start()
    clients = [researcher(s) for s in sites]
    try:
        # Down before the cell is sent: reported in its row, the others run.
        sites[0].stop()
        result = rk.run_everywhere("1 + 1", clients)
        assert result.runs["cleveland"].request is None
        assert "cannot reach" in result.runs["cleveland"].error
        assert result.runs["cleveland"].state == "not sent"
        result.wait(timeout=60, until="finished")
        assert {n: result.runs[n].request.status for n in ("hungary", "switzerland")} == {  # type: ignore[union-attr]
            "hungary": "completed",
            "switzerland": "completed",
        }

        # Killed while the cell runs: its row says the connection was lost.
        result = rk.run_everywhere("import time\ntime.sleep(2)\n'done'", clients[1:])
        time.sleep(0.5)
        sites[1].stop(kill=True)
        result.runs["switzerland"].request.wait(timeout=60, until="finished")  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while result.runs["hungary"].state != "connection lost" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result.runs["hungary"].state == "connection lost"
        assert result.runs["switzerland"].state == "pending review"

        # Back up: the request that was running is marked interrupted, with a message.
        sites[1].start()
        (request,) = [r for r in clients[1].requests() if r.id == result.runs["hungary"].request.id]  # type: ignore[union-attr]
        assert request.status == "interrupted" and "stopped" in request.message
        assert result.runs["hungary"].state == "interrupted"
    finally:
        for client in clients:
            client.close()
        for site in sites:
            site.stop()


def test_missing_dataset_schema_difference_and_bad_token(
    four_sites: dict[str, RunningDatasite],
) -> None:
    clients = {n: researcher(four_sites[n]) for n in ("cleveland", "hungary", "switzerland")}
    bad = Datasite(
        four_sites["va-long-beach"].url,
        "rk_not-a-token",
        "va-long-beach",
        known_identity=("alice", "researcher"),
    )
    try:
        mock_schema = [{"name": "id", "dtype": "int64"}, {"name": "value", "dtype": "int64"}]
        result = rk.run_everywhere(
            "rk.data('extra').shape",
            [*clients.values(), bad],
            mock_schemas={"extra": mock_schema},
        )
        assert "hungary has no dataset 'extra'" in result.runs["hungary"].error
        assert result.runs["hungary"].request is None
        assert "rejected the token" in result.runs["va-long-beach"].error
        assert result.runs["cleveland"].warnings == []
        (warning,) = result.runs["switzerland"].warnings
        assert "missing columns ['value']" in warning and "extra columns ['score']" in warning
        assert result.runs["switzerland"].request is not None
        html = result._repr_html_()
        assert "rejected the token" in html and "hungary" in html
    finally:
        for client in [*clients.values(), bad]:
            client.close()


# --- reconnect -----------------------------------------------------------------------------------
def test_reconnect_after_a_local_kernel_restart(
    four_sites: dict[str, RunningDatasite], tmp_path: Path, saved_connections: Path
) -> None:
    from remote_kernel.cli import main

    site = four_sites["switzerland"]
    assert main(["connect", site.url, "--token", site.tokens["carol"]]) == 0
    assert oct(saved_connections.stat().st_mode & 0o777) == "0o600"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    kernel = LocalKernel(env)
    try:
        # No token in the notebook: the saved connection is found by name.
        kernel.run("%load_ext remote_kernel")
        messages = kernel.run("%%remote --site switzerland --no-local\nprint('hello again')")
        assert "pending review at switzerland" in texts(messages), texts(messages)

        kernel.km.restart_kernel(now=True)
        kernel.kc.wait_for_ready(timeout=60)
        messages = kernel.run("import remote_kernel as rk\n_ = rk.requests(status='completed')")
        shown = texts(messages)
        assert "pending review at switzerland" in shown, shown
        placeholder = next(
            m
            for m in messages
            if m["msg_type"] == "display_data"
            and "pending review" in m["content"]["data"]["text/plain"]
        )
        display_id = placeholder["content"]["transient"]["display_id"]
        request_id = placeholder["content"]["metadata"]["remote_kernel"]["request_id"]
        approve_all(site, request_id)
        update = kernel.wait_for_update(display_id, "released by bob")
        assert "hello again" in update["content"]["data"]["text/plain"]
    finally:
        kernel.close()


# --- the proxy kernel "Remote: <site>" -----------------------------------------------------------
def reviewer_loop(site: RunningDatasite, stop: threading.Event) -> None:
    """A reviewer who approves whatever appears in the queue until told to stop."""
    reviewer = Datasite(site.url, site.tokens["bob"])
    try:
        while not stop.is_set():
            for item in reviewer.review_queue():
                reviewer.approve(item["id"], "fine")
            time.sleep(0.2)
    finally:
        reviewer.close()


def test_nbclient_runs_a_notebook_on_the_proxy_kernel(
    four_sites: dict[str, RunningDatasite], saved_connections: Path
) -> None:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    from remote_kernel.cli import main

    site = four_sites["cleveland"]
    assert main(["connect", site.url, "--token", site.tokens["carol"], "--name", "cleveland"]) == 0
    spec = KernelSpecManager().get_kernel_spec("remote-cleveland")
    assert spec.display_name == "Remote: cleveland"
    assert site.tokens["carol"] not in Path(spec.resource_dir, "kernel.json").read_text()

    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "remote-cleveland", "display_name": "x"}
    notebook.cells = [
        nbformat.v4.new_code_cell("%rk review-wait 60"),
        nbformat.v4.new_code_cell("df = rk.data('heart')\nx = 1"),
        nbformat.v4.new_code_cell("df.groupby('sex').size().rename('n')"),
        nbformat.v4.new_code_cell("print(x + 1)"),
    ]
    stop = threading.Event()
    reviewer = threading.Thread(target=reviewer_loop, args=(site, stop))
    reviewer.start()
    try:
        NotebookClient(notebook, timeout=120, kernel_name="remote-cleveland").execute()
    finally:
        stop.set()
        reviewer.join()
    counts = notebook.cells[2].outputs
    plain = "\n".join(o.get("data", {}).get("text/plain", "") for o in counts)
    expected = private(site).groupby("sex").size()
    assert "released by bob" in plain
    for value in expected.tolist():
        assert str(value) in plain
    assert "2" in "".join(
        o.get("data", {}).get("text/plain", "") for o in notebook.cells[3].outputs
    )

    # The saved connection is listed without its token; disconnect removes both.
    assert main(["connections", "--json"]) == 0
    assert main(["disconnect", "cleveland"]) == 0
    assert "remote-cleveland" not in KernelSpecManager().find_kernel_specs()


def test_proxy_kernel_interrupt_and_restart_reach_the_remote_kernel(
    four_sites: dict[str, RunningDatasite], saved_connections: Path
) -> None:
    from jupyter_client.manager import KernelManager

    from remote_kernel.cli import main

    site = four_sites["hungary"]
    assert main(["connect", site.url, "--token", site.tokens["carol"], "--name", "hungary"]) == 0
    km = KernelManager(kernel_name="remote-hungary")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("import time\nn = 41", timeout=60)
        assert reply["content"]["status"] == "ok"
        started = time.monotonic()
        msg_id = kc.execute("time.sleep(60)")
        time.sleep(3)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert time.monotonic() - started < 30
        carol = Datasite(site.url, site.tokens["carol"])
        latest = carol.requests()[0]
        assert latest.status == "error" and "KeyboardInterrupt" in latest.message
        # State survives an interrupt; a restart ends the remote kernel (a fresh one next).
        reply = kc.execute_interactive("n + 1", timeout=60)
        assert reply["content"]["status"] == "ok"
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("n", timeout=60)
        assert reply["content"]["status"] == "error"  # NameError at the fresh remote kernel
        carol.close()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


# --- invariant 3 in the code itself --------------------------------------------------------------
#: Every module of the packages the datasite server runs (the trust boundary's inside).
SERVER_PACKAGES = ("datasite", "checks", "protocol", "mocks")
FORBIDDEN_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib"}
FORBIDDEN_CALLS = {"eval", "exec", "__import__", "import_module"}


def test_the_server_side_never_unpickles_evals_or_imports_researcher_input() -> None:
    """Invariant 3, checked on the source: the modules the datasite server runs cannot
    unpickle, eval or import anything (the researcher's kernel is the only place)."""
    import ast

    import remote_kernel

    root = Path(remote_kernel.__file__).parent
    modules = [
        str(path.relative_to(root))
        for name in SERVER_PACKAGES
        for path in (root / name).rglob("*.py")
    ]
    assert len(modules) >= 20
    problems = []
    for relative in modules:
        tree = ast.parse((root / relative).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                bad = {n.split(".")[0] for n in names} & FORBIDDEN_MODULES
                if bad:
                    problems.append(f"{relative}:{node.lineno} imports {bad}")
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
                owner = (
                    func.value.id
                    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                    else ""
                )
                if name in FORBIDDEN_CALLS or owner in FORBIDDEN_MODULES:
                    problems.append(f"{relative}:{node.lineno} calls {owner}.{name}")
    # The filter decodes values with these functions only: no pickle inside them.
    values = ast.parse((root / "protocol" / "values.py").read_text())
    for node in values.body:
        if isinstance(node, ast.FunctionDef) and node.name in {
            "read_table",
            "describe",
            "check_payload",
        }:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Name) and inner.id in FORBIDDEN_MODULES:
                    problems.append(f"values.{node.name} uses {inner.id}")
                if (
                    isinstance(inner, ast.Import)
                    and {a.name.split(".")[0] for a in inner.names} & FORBIDDEN_MODULES
                ):
                    problems.append(f"values.{node.name} imports a pickle module")
    assert problems == []
