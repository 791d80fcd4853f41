"""Start what the UI tests run against: two real datasites and a real JupyterLab.

Playwright starts this as its ``webServer``. Nothing is faked: the datasites
are made the way an admin makes them (``tests.conftest.make_datasite``) and
served by ``remote-kernel datasite serve``; JupyterLab runs with the
remote_kernel server extension and labextension installed by pip.

* ``cleveland``: one review releases. Reviewer ``bob`` is connected in advance
  (connection ``cleveland-bob``); the researcher connects in the test, through
  the Datasites panel.
* ``hungary``: policy ``required_reviews: 2``. Researcher ``alice``
  (``hungary``) and reviewers ``bob`` and ``dave`` (``hungary-bob``,
  ``hungary-dave``) are connected in advance.

Tokens for the tests are written to ``.servers/tokens.json`` (a temporary
directory of this checkout, git-ignored); process ids to ``.servers/pids.json``
so that the pytest wrapper can stop everything even if Playwright could not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE = HERE / ".servers"
PORT = int(os.environ.get("REMOTE_KERNEL_UI_PORT", "8891"))
JUPYTER_TOKEN = "rk-ui-test-token"  # noqa: S105 - a throwaway token of a loopback test server

sys.path.insert(0, str(ROOT))

from remote_kernel.connections import Connection, save_connection  # noqa: E402
from remote_kernel.models import Role  # noqa: E402
from tests.conftest import RunningDatasite, make_datasite  # noqa: E402


def add_reviewer(site: RunningDatasite, name: str) -> None:
    store = site.store()
    _, site.tokens[name] = store.create_user(name, Role.REVIEWER)
    store.close()


def main() -> None:
    shutil.rmtree(STATE, ignore_errors=True)
    (STATE / "notebooks").mkdir(parents=True)
    os.environ["REMOTE_KERNEL_CONNECTIONS"] = str(STATE / "connections.json")
    os.environ["XDG_CACHE_HOME"] = str(STATE / "cache")
    os.environ["JUPYTER_CONFIG_DIR"] = str(STATE / "jupyter-config")
    os.environ["JUPYTERLAB_SETTINGS_DIR"] = str(STATE / "lab-settings")
    os.environ["JUPYTERLAB_WORKSPACES_DIR"] = str(STATE / "lab-workspaces")

    cleveland = make_datasite(STATE, "cleveland")
    hungary = make_datasite(STATE, "hungary")
    (hungary.directory / "policy.yaml").write_text("required_reviews: 2\n")
    add_reviewer(hungary, "dave")
    sites = [cleveland, hungary]
    for site in sites:
        site.start()

    for name, site, user, role in (
        ("cleveland-bob", cleveland, "bob", "reviewer"),
        ("hungary", hungary, "alice", "researcher"),
        ("hungary-bob", hungary, "bob", "reviewer"),
        ("hungary-dave", hungary, "dave", "reviewer"),
    ):
        save_connection(Connection(name, site.url, site.tokens[user], user, role))
    (STATE / "tokens.json").write_text(
        json.dumps({s.name: {"url": s.url, **s.tokens} for s in sites}, indent=1)
    )

    import jupyterlab

    galata = Path(jupyterlab.__file__).parent / "galata"
    lab = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            f"--port={PORT}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.token={JUPYTER_TOKEN}",
            f"--ServerApp.root_dir={STATE / 'notebooks'}",
            "--LabApp.expose_app_in_browser=True",
            f"--LabServerApp.extra_labextensions_path={galata}",
            "--LanguageServerManager.autodetect=False",
        ],
        start_new_session=True,
    )
    pids = [lab.pid] + [s.process.pid for s in sites if s.process is not None]
    (STATE / "pids.json").write_text(json.dumps(pids))

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if lab.poll() is None:
            os.killpg(lab.pid, signal.SIGTERM)
        for site in sites:
            site.stop()
        try:
            lab.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(lab.pid, signal.SIGKILL)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    lab.wait()
    for site in sites:
        site.stop()


if __name__ == "__main__":
    main()
