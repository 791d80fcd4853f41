"""``remote-kernel demo``: four hospitals on one machine, and JupyterLab on the study notebook.

Starts four datasites — cleveland, hungary, switzerland, va-long-beach — on
loopback ports, each with its own heart-disease table: the UCI file when it is
found (``--data-dir``, ``$REMOTE_KERNEL_HEART_DATA``, ``../shared/data/heart-disease``
beside the checkout, or downloaded from the UCI archive and checked against
known SHA-256 sums), otherwise generated heart-shaped data. Each site has a
researcher (alice) and a data owner (bob). The researcher's and the data
owner's connections go into the demo's own connections file, which JupyterLab
and its kernels use (so both sidebars are ready and no token is in a notebook).
JupyterLab's root is the demo's ``notebooks/`` folder, never the datasites'
directories with their private files.

Everything it starts runs in its own process group and is stopped on Ctrl-C or
SIGTERM: JupyterLab first, then each datasite (which stops its kernels). A
datasite that exits by itself is restarted (:class:`Supervisor`: 1, 2, 4 … up to
30 s later, given up after a run of quick failures), saying so in the terminal;
JupyterLab and the other sites go on, so no notebook is lost because a site died.

This module also holds the ``demo`` command's parser, built at every start of the
command line: httpx, urllib.request and the researcher's connections module are
imported only when the demo runs (``datasite serve`` loads no researcher module).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from remote_kernel.cli.common import Subparsers
from remote_kernel.datasite.config import CONFIG_FILE, DatasiteConfig
from remote_kernel.datasite.datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    add_dataset,
    find_uci_heart_dir,
    synthetic_heart,
)
from remote_kernel.datasite.store import Store
from remote_kernel.protocol.models import Role

SITES = ("cleveland", "hungary", "switzerland", "va-long-beach")
HOSPITALS = {
    "cleveland": "Cleveland Clinic Foundation",
    "hungary": "Hungarian Institute of Cardiology, Budapest",
    "switzerland": "University Hospitals of Zurich and Basel",
    "va-long-beach": "V.A. Medical Center, Long Beach",
}
#: SHA-256 of the UCI files (CC BY 4.0), so that a download is used only if it is the real one.
UCI_SHA256 = {
    "processed.cleveland.data": "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8",
    "processed.hungarian.data": "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796",
    "processed.switzerland.data": (
        "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314"
    ),
    "processed.va.data": "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f",
}
UCI_BASE_URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/"
NOTEBOOK = "heart-disease.ipynb"
#: Sandboxed kernels of demo site n run as uids from kernels.sandbox_uid_base + n * this.
SANDBOX_UID_STRIDE = 10000
#: Each demo hospital's output policy (docs/policy.md): ACRO's thresholds, and in the
#: tables a datasite computes itself (rk.query, rk.crosstab) groups too small are left
#: out, other failing cells blanked, and the rest released at once, so the automatic
#: tier shows in the notebook.
#: Without a policy.yaml a datasite uses the stricter default (preset strict: a query
#: with a WHERE clause or a computed group key goes to a person).
DEMO_POLICY = """\
# The remote-kernel demo's output policy (see docs/policy.md in the project).
preset: acro
thresholds:
  failing_cells: suppress
datasets:
  heart:
    # What the DP tier (rk.query(..., epsilon=...)) may assume: declared from clinical
    # knowledge, never read from the private data.
    dp:
      bounds: {age: [20, 80], trestbps: [80, 200], chol: [100, 600], thalach: [60, 210]}
      public_categories: {sex: [0, 1], num: [0, 1, 2, 3, 4]}
"""
#: The researcher's privacy budget on each hospital's heart table (epsilon).
DEMO_BUDGET = 3.0
RESEARCHER, REVIEWER = "alice", "bob"
#: A datasite that exits is restarted after 1, 2, 4 … seconds, never more than this.
MAX_BACKOFF = 30.0
#: A site that exits within this many seconds of its (re)start failed quickly ...
QUICK_FAILURE_SECONDS = 30.0
#: ... and after this many quick failures in a row the demo stops restarting it.
GIVE_UP_AFTER = 6


def add_parser(top: Subparsers) -> None:
    """The ``demo`` command, on the top-level subparsers ``top``."""
    p = top.add_parser(
        "demo", help="four hospital datasites with heart-disease data, and JupyterLab on the study"
    )
    p.add_argument("--dir", default="remote-kernel-demo", help="where the demo's files live")
    p.add_argument(
        "--port", type=int, default=8765, help="first datasite port (the four use PORT..PORT+3)"
    )
    p.add_argument("--data-dir", default=None, help="folder with the UCI heart-disease files")
    p.add_argument("--no-lab", action="store_true", help="do not start JupyterLab")
    p.add_argument("--no-browser", action="store_true", help="print JupyterLab's URL only")
    p.add_argument("--lab-port", type=int, default=8888)
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> None:
    run_demo(
        args.dir,
        args.port,
        args.data_dir,
        lab=not args.no_lab,
        lab_port=args.lab_port,
        open_browser=not args.no_browser,
    )


@dataclass
class DemoSite:
    name: str
    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    #: When the process was (re)started (time.monotonic()).
    started: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def download_uci(target: Path, timeout: float = 10.0) -> Path | None:
    """The four UCI files from the UCI archive into ``target``, or None (offline, changed)."""
    import urllib.request

    target.mkdir(parents=True, exist_ok=True)
    for filename, digest in UCI_SHA256.items():
        path = target / filename
        if path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == digest:
            continue
        try:
            with urllib.request.urlopen(UCI_BASE_URL + filename, timeout=timeout) as response:  # noqa: S310 (a fixed https URL)
                data = response.read()
        except OSError:
            if not any(target.iterdir()):
                target.rmdir()
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            print(f"(the downloaded {filename} does not match its known checksum; not used)")
            return None
        path.write_bytes(data)
    return target


def heart_data(directory: Path, data_dir: str | Path | None) -> tuple[Path | None, str]:
    """Where the UCI files are (found or downloaded), and a note saying which data is used."""
    found = find_uci_heart_dir(data_dir)
    if found is not None:
        return found, f"UCI Heart Disease files from {found}"
    if os.environ.get("REMOTE_KERNEL_DEMO_OFFLINE") != "1":
        downloaded = download_uci(directory / "uci-heart-disease")
        if downloaded is not None:
            return downloaded, "UCI Heart Disease files, downloaded and checksum-verified"
    return None, (
        "generated heart-shaped data (no real patients): the UCI files were not found "
        "(--data-dir) and could not be downloaded"
    )


def prepare_demo(directory: Path, data_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Create (or reuse) the four datasites; return ``{site: {user: token}}``."""
    tokens_file = directory / "demo-tokens.json"
    if tokens_file.exists() and all(
        (directory / "sites" / site / CONFIG_FILE).exists() for site in SITES
    ):
        for site in SITES:  # sites made by an older version: bring their policy up to date
            refresh_policy(directory / "sites" / site)
        return dict(json.loads(tokens_file.read_text()))
    if (directory / "sites").exists():
        shutil.rmtree(directory / "sites")  # half-made by an interrupted earlier run
    directory.mkdir(parents=True, exist_ok=True)
    # Made inside a checkout by default: git should not offer to commit tokens and data.
    if not (directory / ".gitignore").exists():
        (directory / ".gitignore").write_text("# remote-kernel demo files\n*\n")
    uci, note = heart_data(directory, data_dir)
    print(f"data: {note}", flush=True)
    tokens: dict[str, dict[str, str]] = {}
    for number, site in enumerate(SITES):
        config = DatasiteConfig.create(directory / "sites" / site, site)
        # Kernels claim their uids machine-wide whatever the base (kernels.py); a range
        # per site only makes `ps` say which hospital a kernel belongs to.
        config.kernels.sandbox_uid_base += SANDBOX_UID_STRIDE * number
        config.save()
        (config.directory / "policy.yaml").write_text(DEMO_POLICY)
        description = f"Heart disease patients, {HOSPITALS[site]}"
        if uci is not None:
            add_dataset(
                config,
                "heart",
                uci / UCI_HEART_FILES[site],
                columns=HEART_COLUMNS,
                na_values=["?"],
                description=f"{description} (UCI Heart Disease, CC BY 4.0)",
                seed=number,
            )
        else:
            generated = config.directory / "generated-heart.csv"
            synthetic_heart(300, seed=number).to_csv(generated, index=False)
            add_dataset(
                config, "heart", generated, description=f"{description} (generated)", seed=number
            )
        store = Store(config.database_url)
        tokens[site] = {
            RESEARCHER: store.create_user(RESEARCHER, Role.RESEARCHER)[1],
            REVIEWER: store.create_user(REVIEWER, Role.REVIEWER)[1],
        }
        store.set_budget(RESEARCHER, "heart", DEMO_BUDGET, actor="demo")
        store.close()
    tokens_file.write_text(json.dumps(tokens, indent=2))
    os.chmod(tokens_file, 0o600)
    return tokens


def refresh_policy(site: Path) -> None:
    """The demo's current policy, and the researcher's budget if they have none yet."""
    policy = site / "policy.yaml"
    if policy.read_text() != DEMO_POLICY:
        policy.write_text(DEMO_POLICY)
    store = Store(DatasiteConfig.load(site).database_url)
    try:
        if not store.budgets(RESEARCHER, "heart"):
            store.set_budget(RESEARCHER, "heart", DEMO_BUDGET, actor="demo")
    finally:
        store.close()


def example_notebook() -> Path | None:
    """``examples/heart-disease.ipynb`` from the checkout, or the copy inside the wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "examples" / NOTEBOOK, package / "examples" / NOTEBOOK):
        if candidate.exists():
            return candidate
    return None


def write_workspace(directory: Path, sites: list[DemoSite], tokens: dict) -> Path:
    """The demo's connections file and its notebooks folder (JupyterLab's root)."""
    from remote_kernel.researcher.connections import Connection, save_connection

    connections = directory / "connections.json"
    for site in sites:
        researcher = tokens[site.name][RESEARCHER]
        save_connection(
            Connection(site.name, site.url, researcher, RESEARCHER, "researcher"), connections
        )
        save_connection(
            Connection(
                f"{site.name}-owner", site.url, tokens[site.name][REVIEWER], REVIEWER, "reviewer"
            ),
            connections,
        )
    notebooks = directory / "notebooks"
    notebooks.mkdir(exist_ok=True)
    source = example_notebook()
    if source is not None and not (notebooks / NOTEBOOK).exists():
        shutil.copyfile(source, notebooks / NOTEBOOK)
    return connections


def start_site(site: DemoSite, log_dir: Path) -> None:
    log = open(log_dir / f"{site.name}.log", "ab")  # the child keeps writing to it
    site.process = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel.cli", "datasite", "serve", str(site.directory),
         "--host", "127.0.0.1", "--port", str(site.port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    site.started = time.monotonic()


def exit_text(code: int) -> str:
    """``exit code 1``, or ``exit code -9, SIGKILL`` for a process a signal ended."""
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


class Supervisor:
    """Restarts the demo's datasites when they exit by themselves, and says so.

    Polled from the demo's main loop (:func:`watch`), no thread of its own. A site
    that exits is started again after 1, 2, 4 … seconds (at most ``MAX_BACKOFF``);
    the delay grows only while the site keeps failing quickly (within
    ``QUICK_FAILURE_SECONDS`` of its start), and after ``GIVE_UP_AFTER`` quick
    failures in a row it is left stopped. Every step is one line in the terminal
    and in the site's own log. While a site is down the Datasites panel shows it
    unreachable (its health check fails), and healthy again once it answers.
    """

    def __init__(
        self, sites: list[DemoSite], logs: Path, say: Callable[[str], None] | None = None
    ) -> None:
        self.sites = sites
        self.logs = logs
        self.say = say or (lambda line: print(line, flush=True))
        self.failures = {site.name: 0 for site in sites}  # quick failures in a row
        self.restart_at: dict[str, float] = {}  # sites waiting for their restart
        self.coming_back: set[str] = set()  # restarted, not answering yet
        self.given_up: set[str] = set()

    def report_back(self) -> None:
        """Say which restarted sites answer again (without restarting anything)."""
        for site in self.sites:
            self._say_if_back(site)

    def _say_if_back(self, site: DemoSite) -> None:
        if site.name in self.coming_back and answers(site):
            self.coming_back.discard(site.name)
            self.say(f"{site.name} restarted: answering again at {site.url}")

    def poll(self) -> None:
        """Notice exits, restart the sites whose delay has passed, report sites back up."""
        now = time.monotonic()
        for site in self.sites:
            name = site.name
            if name in self.given_up:
                continue
            if name in self.restart_at:
                if now >= self.restart_at[name]:
                    del self.restart_at[name]
                    self._note(site, "restarted by the demo")
                    start_site(site, self.logs)
                    self.coming_back.add(name)
                continue
            if site.process is None:
                continue
            code = site.process.poll()
            if code is None:
                self._say_if_back(site)
                continue
            self._exited(site, code, now)

    def _exited(self, site: DemoSite, code: int, now: float) -> None:
        name = site.name
        self.coming_back.discard(name)
        quick = now - site.started < QUICK_FAILURE_SECONDS
        self.failures[name] = self.failures[name] + 1 if quick else 0
        log = self.logs / f"{name}.log"
        if self.failures[name] >= GIVE_UP_AFTER:
            self.given_up.add(name)
            self.say(
                f"{name} stopped ({exit_text(code)}) {self.failures[name]} times in a row within "
                f"{QUICK_FAILURE_SECONDS:g} s of starting; not restarting it (see {log}). "
                "JupyterLab and the other sites keep running."
            )
            self._note(site, "given up by the demo")
            return
        delay = restart_delay(self.failures[name])
        self.restart_at[name] = now + delay
        self.say(f"{name} stopped ({exit_text(code)}); restarting in {delay:g} s")

    def _note(self, site: DemoSite, what: str) -> None:
        """A line in the site's log, so that the log says where one run ends and the next begins."""
        with open(self.logs / f"{site.name}.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {site.name} {what} ---\n")


def restart_delay(quick_failures: int) -> float:
    """Seconds before a restart: 1 after a site ran a while, then 2, 4, 8 … up to MAX_BACKOFF."""
    return min(MAX_BACKOFF, 2.0**quick_failures)


def answers(site: DemoSite, timeout: float = 0.5) -> bool:
    """Does the site answer ``/api/health`` now?"""
    import httpx

    try:
        return httpx.get(site.url + "/api/health", timeout=timeout).status_code == 200
    except httpx.TransportError:
        return False


def wait_healthy(sites: list[DemoSite], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    waiting = list(sites)
    while waiting and time.monotonic() < deadline:
        for site in list(waiting):
            if site.process is not None and site.process.poll() is not None:
                raise RuntimeError(
                    f"datasite {site.name} exited (port {site.port} busy? try --port); "
                    f"see its log in {site.directory.parent.parent / 'logs'}"
                )
            if answers(site, timeout=1):
                waiting.remove(site)
        time.sleep(0.2)
    if waiting:
        raise TimeoutError(f"datasites not answering: {', '.join(s.name for s in waiting)}")


def start_jupyterlab(
    notebooks: Path, port: int, connections: Path, open_browser: bool, token: str, log_dir: Path
) -> subprocess.Popen[bytes] | None:
    """JupyterLab on the notebooks folder, in its own session so Ctrl-C reaches only us.

    Its log goes to ``logs/jupyterlab.log`` (the terminal keeps the demo's own
    instructions); its token is ours, so that we can print the whole URL, and is
    passed in the environment, not on the command line other users can read.
    """
    if importlib.util.find_spec("jupyterlab") is None:
        print("(JupyterLab is not installed: pip install 'remote_kernel[demo]' to get it)")
        return None
    command = [
        sys.executable, "-m", "jupyterlab", f"--port={port}", "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={notebooks}", f"--LabApp.default_url=/lab/tree/{NOTEBOOK}",
        f"--ServerApp.open_browser={open_browser}",
        "--LabApp.news_url=None",  # no news fetched from the internet
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    # The demo's own JupyterLab settings: no "get notified about Jupyter news?" prompt
    # over the notebook (news_url=None alone does not stop it in JupyterLab 4.6).
    settings = notebooks.parent / "lab-settings"
    apputils = settings / "@jupyterlab" / "apputils-extension"
    notification = apputils / "notification.jupyterlab-settings"
    if not notification.exists():
        notification.parent.mkdir(parents=True, exist_ok=True)
        notification.write_text('{"fetchNews": "false", "checkForUpdates": false}\n')
    env = {
        **os.environ,
        "REMOTE_KERNEL_CONNECTIONS": str(connections),
        "JUPYTER_TOKEN": token,
        "JUPYTERLAB_SETTINGS_DIR": str(settings),
    }
    log = open(log_dir / "jupyterlab.log", "ab")  # the child keeps writing to it
    return subprocess.Popen(
        command, start_new_session=True, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_lab(process: subprocess.Popen[bytes], port: int, token: str, log: Path) -> None:
    """Until JupyterLab answers (so that its URL is printed when it works)."""
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"JupyterLab exited (port {port} busy? try --lab-port); see its log in {log}"
            )
        with contextlib.suppress(httpx.TransportError):
            url = f"http://127.0.0.1:{port}/api/status"
            if httpx.get(url, params={"token": token}, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    print(f"(JupyterLab is slow to start; its log is in {log})", flush=True)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def instructions(sites: list[DemoSite], tokens: dict, lab_url: str | None, directory: Path) -> str:
    rows = "\n".join(f"  {s.name:<14} {s.url:<24} {HOSPITALS[s.name]}" for s in sites)
    first = sites[0]
    lab = (
        f"""JupyterLab, on the study notebook {NOTEBOOK} (open this URL if no browser opened):
    {lab_url}
  Left sidebar: Datasites (you, alice, are connected to all four) and Pending outputs
  (you are also bob, each site's data owner: approve or deny what alice's cells produce).
  Its log: {directory / "logs" / "jupyterlab.log"}"""
        if lab_url
        else "JupyterLab: not started (--no-lab)"
    )
    return f"""
remote_kernel demo — four hospitals on this machine

{rows}

{lab}

Researcher {RESEARCHER} and data owner {REVIEWER} at every site; their connections are in
  {directory / "connections.json"}  (export REMOTE_KERNEL_CONNECTIONS=<that file> to use them
  from another Jupyter; tokens: {directory / "demo-tokens.json"})

Data owner from a terminal, e.g. at {first.name}:
    export REMOTE_KERNEL_URL={first.url} REMOTE_KERNEL_TOKEN={tokens[first.name][REVIEWER]}
    remote-kernel review list
    remote-kernel review approve OUTPUT_ID     # or: deny OUTPUT_ID --comment "why"

A datasite that stops by itself is restarted (said here); Ctrl-C stops everything.
"""


def write_demo_info(
    directory: Path, sites: list[DemoSite], lab_port: int | None, connections: Path
) -> None:
    """``demo.json``: where the running demo's sites, JupyterLab and notebook are."""
    (directory / "demo.json").write_text(
        json.dumps(
            {
                "sites": {s.name: s.url for s in sites},
                # without its token: this file is not private
                "lab": f"http://127.0.0.1:{lab_port}/lab" if lab_port is not None else None,
                "connections": str(connections),
                "notebook": str(directory / "notebooks" / NOTEBOOK),
            },
            indent=2,
        )
    )


def watch(
    stop: threading.Event,
    sites: list[DemoSite],
    lab_process: subprocess.Popen[bytes] | None,
    logs: Path,
) -> None:
    """Until ``stop`` is set, or JupyterLab stops by itself (said, then stop).

    A datasite that stops by itself is restarted (:class:`Supervisor`): it never
    takes JupyterLab or the other sites down with it.
    """
    supervisor = Supervisor(sites, logs)
    while not stop.wait(0.5):
        supervisor.poll()
        if lab_process is not None and lab_process.poll() is not None:
            print(f"JupyterLab stopped unexpectedly; see {logs / 'jupyterlab.log'}", flush=True)
            stop.set()
    supervisor.report_back()  # a site back up since the last poll is said before stopping


def run_demo(
    directory: str | Path,
    port: int = 8765,
    data_dir: str | Path | None = None,
    lab: bool = True,
    lab_port: int = 8888,
    open_browser: bool = True,
) -> None:
    """Run the demo until Ctrl-C or SIGTERM; leaves no server, kernel or JupyterLab behind."""
    directory = Path(directory).resolve()
    tokens = prepare_demo(directory, data_dir)
    sites = [
        DemoSite(name, directory / "sites" / name, port + number)
        for number, name in enumerate(SITES)
    ]
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    lab_process = None
    (directory / "demo.json").unlink(missing_ok=True)
    try:
        for site in sites:
            start_site(site, logs)
        wait_healthy(sites)
        connections = write_workspace(directory, sites, tokens)
        lab_url = None
        if lab:
            token = secrets.token_hex(24)
            lab_process = start_jupyterlab(
                directory / "notebooks", lab_port, connections, open_browser, token, logs
            )
            if lab_process is not None:
                wait_lab(lab_process, lab_port, token, logs / "jupyterlab.log")
                lab_url = f"http://127.0.0.1:{lab_port}/lab/tree/{NOTEBOOK}?token={token}"
        write_demo_info(directory, sites, lab_port if lab_url else None, connections)
        print(instructions(sites, tokens, lab_url, directory), flush=True)
        watch(stop, sites, lab_process, logs)
    finally:
        stop_process(lab_process)
        for site in sites:
            stop_process(site.process, timeout=30)
        (directory / "demo.json").unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("remote_kernel demo stopped", flush=True)
