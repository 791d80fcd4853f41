"""A real PostgreSQL server for the tests: a throwaway cluster on a free loopback port.

``initdb`` makes a cluster in a fresh temporary directory, ``pg_ctl`` starts it
listening on 127.0.0.1 only (no Unix socket), and every test gets a database of its
own (``CREATE DATABASE``), so tests never see each other's rows. PostgreSQL refuses
to run as root: as root the cluster belongs to, and runs as, the ``postgres`` user
(Debian's package creates it) or ``nobody``.

The binaries are looked up on PATH, then in Debian's ``/usr/lib/postgresql/*/bin``;
without them :func:`find_bin_dir` returns None and the PostgreSQL tests skip, saying
why. CI installs Debian's ``postgresql`` package, so there they run.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SKIP_REASON = (
    "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin: "
    "install Debian's postgresql package to run the PostgreSQL half of these tests"
)
SUPERUSER = "rk"


def find_bin_dir() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for directory in candidates:
        if all((directory / name).exists() for name in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresCluster:
    """One ``initdb``-made cluster, started with :meth:`start`, removed by :meth:`stop`."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = _free_port()
        # Not under pytest's tmp_path: that is root-only (0700), and the server runs as
        # another user when we are root.
        self.base = Path(tempfile.mkdtemp(prefix="rk-postgres-"))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self._names = itertools.count()
        self._owner = self._unprivileged_user() if os.geteuid() == 0 else None

    @staticmethod
    def _unprivileged_user() -> pwd.struct_passwd:
        for name in ("postgres", "nobody"):
            try:
                return pwd.getpwnam(name)
            except KeyError:
                continue
        raise RuntimeError("running as root, and neither a 'postgres' nor a 'nobody' user exists")

    def _run(self, *args: str) -> None:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr}{result.stdout}{log}")

    def start(self) -> None:
        if self._owner is not None:
            os.chown(self.base, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")  # fmt: skip
        self._start()

    def _start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=200 -c fsync=on -c synchronous_commit=on"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "60", "start")  # fmt: skip

    def crash_and_restart(self) -> None:
        """Stop the server as a crash would (``-m immediate``: no checkpoint, so the next
        start replays the WAL), then start it again on the same port."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self._start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) for ``database`` on this cluster."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"test_{os.getpid()}_{next(self._names)}_{int(time.time() * 1000) % 100000}"
        import psycopg  # the test extra's; imported here so conftest loads without it

        dsn = f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)
