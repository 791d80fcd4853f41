"""Start what the UI tests run against: two real datasites and a real JupyterLab.

Playwright starts this as its ``webServer``. Nothing is faked: the datasites
are made the way an admin makes them (``tests.conftest.make_datasite``) and
served by ``remote-kernel datasite serve``; JupyterLab runs with the
remote_kernel server extension and labextension installed by pip.

* ``cleveland``: one review releases; alice has a privacy budget there (ε 1,
  no DP metadata: the budget is only shown). Reviewer ``bob`` is connected in advance
  (connection ``cleveland-bob``); the researcher connects in the test, through
  the Datasites panel.
* ``hungary``: policy ``required_reviews: 2``, the DP tier on ``heart`` and
  alice's privacy budget there (ε 3, set with ``datasite budget``). Researcher ``alice``
  (``hungary``) and reviewers ``bob`` and ``dave`` (``hungary-bob``,
  ``hungary-dave``) are connected in advance.

Tokens for the tests are written to ``.servers/tokens.json`` (a temporary
directory of this checkout, git-ignored). So that nothing is ever killed by a
stale or foreign process id, ``.servers/pids.json`` names this run
(``$REMOTE_KERNEL_UI_RUN``, set by ``tests/test_ui.py``) and each process's id
*and start time*; the pytest wrapper stops only processes that match both.

``.servers`` is shared by every run in this checkout, so one run at a time: a
second run waits for the first (a lock next to the system's temp files), rather
than deleting the first run's datasites under it.

``tests/sites.spec.ts`` kills a datasite on purpose and starts it again, as a
crash and the demo's restart would: it writes ``.servers/control/<site>.kill``
(SIGKILL to the server alone, its kernels left as orphans) or ``<site>.start``
(the same site on the same port), and this script answers with
``<site>.<action>.done`` once it is done (``{"ok": …, "message": …}``). A site
killed this way is not an unexpected exit.

If a server exits while the tests run (it should not), a watchdog writes
``.servers/exits.json`` (exit status or signal, time, the end of its log) and a
snapshot of the machine's processes at that moment (``exit-<name>-ps.txt``), and
says so on stderr; ``tests/test_ui.py`` prints them and fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STATE = HERE / ".servers"
PORT = int(os.environ.get("REMOTE_KERNEL_UI_PORT", "8891"))
RUN = os.environ.get("REMOTE_KERNEL_UI_RUN", f"manual-{os.getpid()}")
LOCK_WAIT = float(os.environ.get("REMOTE_KERNEL_UI_LOCK_WAIT", "420"))
JUPYTER_TOKEN = "rk-ui-test-token"  # noqa: S105 - a throwaway token of a loopback test server

sys.path.insert(0, str(ROOT))

from remote_kernel.protocol.models import Role  # noqa: E402
from remote_kernel.researcher.connections import Connection, save_connection  # noqa: E402
from tests.conftest import RunningDatasite, make_datasite  # noqa: E402


def say(message: str) -> None:
    print(f"[servers.py {datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    if code == 0:
        # `datasite serve` and JupyterLab stop cleanly, and silently, on SIGTERM or SIGINT.
        return "exit status 0 (a clean stop: SIGTERM or SIGINT from some process)"
    return f"exit status {code}"


def process_table() -> str:
    """Every process now (pid, parent, group, command): who was around when a server died."""
    rows = []
    for entry in sorted(Path("/proc").iterdir(), key=lambda p: (len(p.name), p.name)):
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        rows.append(f"{entry.name:>7} {fields[1]:>7} {fields[2]:>7}  {command[:300]}")
    return "    pid    ppid    pgid  command\n" + "\n".join(rows) + "\n"


def log_tail(path: Path | None, lines: int = 30) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class Watchdog(threading.Thread):
    """Notices a server that exits while the tests run, and records how and when."""

    def __init__(self, servers: dict[str, tuple[subprocess.Popen[Any], Path | None]]) -> None:
        super().__init__(name="servers-watchdog", daemon=True)
        self.servers = servers
        self.stopping = threading.Event()
        self.exits: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        #: Servers killed on purpose (``control``): their exit is not recorded as unexpected.
        self.paused: set[str] = set()

    def record(self, name: str, expected: bool) -> None:
        process, log = self.servers[name]
        code = process.poll()
        with self._lock:
            if code is None or any(e["name"] == name for e in self.exits):
                return
            if not expected and name in self.paused:
                return  # killed on purpose by a test (control)
            if not expected and self.stopping.is_set():
                return  # stop() is stopping it, and records it itself
            entry = {
                "run": RUN,
                "name": name,
                "pid": process.pid,
                "returncode": code,
                "reason": "stopped by servers.py" if expected and code == 0 else exit_reason(code),
                "expected": expected,
                "noticed_at": datetime.now().isoformat(timespec="milliseconds"),
                "log": str(log) if log else None,
            }
            if not expected:
                snapshot = STATE / f"exit-{name}-ps.txt"
                snapshot.write_text(process_table())
                entry["processes"] = str(snapshot)
                entry["log_tail"] = log_tail(log)
                say(
                    f"{name} (pid {process.pid}) EXITED WHILE THE TESTS RAN: {entry['reason']}; "
                    f"processes at that moment: {snapshot}; its log: {log}"
                )
            self.exits.append(entry)
            (STATE / "exits.json").write_text(json.dumps(self.exits, indent=1))

    def run(self) -> None:
        while not self.stopping.wait(0.25):
            for name in self.servers:
                self.record(name, expected=False)


def lock_path() -> Path:
    """The lock of this checkout's UI runs (``tests/test_ui.py`` computes the same path)."""
    digest = hashlib.sha256(str(HERE).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"remote-kernel-ui-{digest}.lock"


def take_lock(asked: threading.Event) -> IO[str] | None:
    """One UI run per checkout at a time (they share ``.servers``); wait for the other.

    ``tests/test_ui.py`` holds the lock itself for the whole run (so that the next
    run cannot remove ``.servers`` before it has read it) and says so.
    """
    if os.environ.get("REMOTE_KERNEL_UI_LOCK_HELD") == RUN:
        return None
    handle = open(lock_path(), "a+")
    deadline = time.monotonic() + LOCK_WAIT
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not announced:
                handle.seek(0)
                say(f"waiting for another UI run in {HERE} ({handle.read().strip()}) to finish")
                announced = True
            if time.monotonic() > deadline:
                sys.exit(f"servers.py: another UI run in {HERE} still holds the lock")
            if asked.wait(1):
                sys.exit(0)
    handle.seek(0)
    handle.truncate()
    handle.write(f"run {RUN}, servers.py pid {os.getpid()}")
    handle.flush()
    return handle


CONTROL = STATE / "control"


def control(
    asked: threading.Event,
    sites: dict[str, RunningDatasite],
    servers: dict[str, tuple[subprocess.Popen[Any], Path | None]],
    watchdog: Watchdog,
) -> None:
    """Kill a datasite or start it again when a spec asks (see the module's docstring)."""
    CONTROL.mkdir(exist_ok=True)
    while not asked.wait(0.2):
        for ask in sorted(CONTROL.glob("*.kill")) + sorted(CONTROL.glob("*.start")):
            name, action = ask.stem, ask.suffix[1:]
            ask.unlink()
            site = sites.get(name)
            try:
                if site is None:
                    raise LookupError(f"no datasite {name!r} (there are {', '.join(sites)})")
                if action == "kill":
                    watchdog.paused.add(name)  # before the kill: its exit is expected
                    site.kill_server_only()
                    message = f"killed {name} (SIGKILL)"
                else:
                    site.start()
                    assert site.process is not None
                    servers[name] = (site.process, site.log_path)
                    write_pids(servers)
                    watchdog.paused.discard(name)
                    message = f"started {name} again (pid {site.process.pid}) at {site.url}"
                answer = {"ok": True, "message": message}
            except Exception as exc:  # the spec reads it, and fails with it
                answer = {"ok": False, "message": f"{action} {name}: {exc}"}
            say(answer["message"])
            (CONTROL / f"{name}.{action}.done").write_text(json.dumps(answer))


def write_pids(servers: dict[str, tuple[subprocess.Popen[Any], Path | None]]) -> None:
    """``pids.json``: this run's servers, by pid and start time (see the module's docstring)."""
    (STATE / "pids.json").write_text(
        json.dumps(
            {
                "run": RUN,
                "processes": [
                    {"name": name, "pid": p.pid, "start": start_time(p.pid)}
                    for name, (p, _) in servers.items()
                ],
            },
            indent=1,
        )
    )


#: Two reviewers per release, and the DP tier on heart (declared as the demo does).
HUNGARY_POLICY = """\
required_reviews: 2
datasets:
  heart:
    dp:
      bounds: {age: [20, 80], trestbps: [80, 200], chol: [100, 600], thalach: [60, 210]}
      public_categories: {sex: [0, 1], num: [0, 1, 2, 3, 4]}
"""
#: Alice's privacy budgets on heart (epsilon), shown in the Datasites panel and reviews.
HUNGARY_BUDGET = 3.0
CLEVELAND_BUDGET = 1.0


def give_budget(site: RunningDatasite, user: str, dataset: str, epsilon: float) -> None:
    """As ``remote-kernel datasite budget DIR USER DATASET --epsilon E`` does."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_kernel.cli",
            "datasite",
            "budget",
            str(site.directory),
            user,
            dataset,
            "--epsilon",
            str(epsilon),
        ],
        check=True,
        capture_output=True,
    )


def add_reviewer(site: RunningDatasite, name: str) -> None:
    store = site.store()
    _, site.tokens[name] = store.create_user(name, Role.REVIEWER)
    store.close()


def main() -> None:
    # The handlers only ask; the stopping happens at the end of main(), outside any
    # wait() on a child (a Popen.wait() interrupted by a handler that waits on the same
    # child deadlocks). A request during start-up stops everything once it is started.
    asked = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signum, _frame: asked.set())
    lock = take_lock(asked)  # held (open) until this process exits
    shutil.rmtree(STATE, ignore_errors=True)
    (STATE / "notebooks").mkdir(parents=True)
    os.environ["REMOTE_KERNEL_CONNECTIONS"] = str(STATE / "connections.json")
    os.environ["XDG_CACHE_HOME"] = str(STATE / "cache")
    os.environ["JUPYTER_CONFIG_DIR"] = str(STATE / "jupyter-config")
    os.environ["JUPYTERLAB_SETTINGS_DIR"] = str(STATE / "lab-settings")
    os.environ["JUPYTERLAB_WORKSPACES_DIR"] = str(STATE / "lab-workspaces")

    cleveland = make_datasite(STATE, "cleveland")
    hungary = make_datasite(STATE, "hungary")
    (hungary.directory / "policy.yaml").write_text(HUNGARY_POLICY)
    add_reviewer(hungary, "dave")
    give_budget(hungary, "alice", "heart", HUNGARY_BUDGET)
    give_budget(cleveland, "alice", "heart", CLEVELAND_BUDGET)
    sites = [cleveland, hungary]
    try:
        for site in sites:
            site.start()
    except BaseException:
        for site in sites:
            site.stop()
        raise

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
    servers: dict[str, tuple[subprocess.Popen[Any], Path | None]] = {
        "jupyterlab": (lab, None),
        **{s.name: (s.process, s.log_path) for s in sites if s.process is not None},
    }
    write_pids(servers)
    watchdog = Watchdog(servers)
    watchdog.start()
    threading.Thread(
        target=control,
        args=(asked, {s.name: s for s in sites}, servers, watchdog),
        name="servers-control",
        daemon=True,
    ).start()

    while not asked.wait(0.25) and lab.poll() is None:
        pass
    if not asked.is_set():
        watchdog.record("jupyterlab", expected=False)  # it ended by itself

    watchdog.stopping.set()
    # All at once: Playwright waits only so long (gracefulShutdown) before SIGKILL.
    for name, (process, _) in servers.items():
        if process.poll() is None:
            if name == "jupyterlab":
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    for name, (process, _) in servers.items():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        watchdog.record(name, expected=True)
    for site in sites:
        site.process = None
    if lock is not None:
        lock.close()


if __name__ == "__main__":
    main()
