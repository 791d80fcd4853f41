"""The researcher kernel's sandbox: what it may reach, and the launcher that sets it up.

A datasite kernel runs researcher code next to private data, so it is started as

    unshare --net  python sandbox.py [limits, datasets, user]  --  python -m ipykernel_launcher

- ``unshare --net`` (a Linux network namespace): the kernel has only a loopback
  interface that is down, so it cannot reach the datasite's own port, another
  machine, or DNS. It talks to the server over jupyter_client's ``ipc`` transport
  (Unix sockets in its own directory) and asks for aggregate queries over the
  kernel API's Unix socket; Unix sockets on the file system are not namespaced.
- This launcher (still root, inside the namespace) sets resource limits
  (RLIMIT_AS for memory, RLIMIT_CPU for CPU time), opens the site's private
  tables read-only and hands the open files to the kernel (it never gets their
  paths), gives the kernel its connection file, then drops to a uid/gid of the
  kernel's own (no supplementary groups, no new privileges) and execs the kernel.
  The datasite directory stays ``0700`` root, so the kernel cannot open the
  database, ``datasite.yaml``, ``policy.yaml``, any dataset's files or another
  datasite's directory; its working directory is a fresh ``0700`` directory of
  its own outside the datasite directory.

This file runs as a script (``python path/to/sandbox.py``) before the kernel
starts, so it imports only the standard library: importing the package would
cost a second of kernel start-up.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

#: JSON ``{"name": fd}``: the kernel's open private tables (read by ``rk.data``). The same
#: name as :data:`remote_kernel.protocol.kernel_env.DATASET_FDS_ENV`, spelled out because
#: this script imports only the standard library.
DATASET_FDS_ENV = "REMOTE_KERNEL_DATASET_FDS"
PR_SET_NO_NEW_PRIVS = 38


@dataclass
class SandboxStatus:
    """What the sandbox of this datasite's kernels actually is (shown in /api/health)."""

    mode: str  # "namespace" or "none"
    network_isolated: bool
    separate_user: bool
    memory_limit_mb: int
    cpu_time_seconds: int
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "network_isolated": self.network_isolated,
            "separate_user": self.separate_user,
            "memory_limit_mb": self.memory_limit_mb,
            "cpu_time_seconds": self.cpu_time_seconds,
            "warnings": list(self.warnings),
        }


def unshare_prefix(as_root: bool) -> list[str]:
    """The command that puts a process in new network (and, as root, mount) namespaces."""
    return ["unshare", "--net", "--mount"] if as_root else ["unshare", "--net", "--map-root-user"]


def namespace_works(as_root: bool) -> str | None:
    """None when ``unshare --net`` works here, else why not."""
    if shutil.which("unshare") is None:
        return "the unshare command is not installed (util-linux)"
    try:
        done = subprocess.run(
            [*unshare_prefix(as_root), "true"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare failed: {exc}"
    if done.returncode != 0:
        return f"unshare --net failed: {done.stderr.strip() or done.returncode}"
    return None


def set_limits(memory_mb: int, cpu_seconds: int) -> None:
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    if cpu_seconds > 0:
        # SIGXCPU at the soft limit (ends the kernel), SIGKILL a little later if ignored.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


def open_datasets(pairs: list[str]) -> dict[str, int]:
    """Open each ``name=path`` read-only; the descriptors survive exec."""
    fds = {}
    for pair in pairs:
        name, _, path = pair.partition("=")
        fd = os.open(path, os.O_RDONLY)
        os.set_inheritable(fd, True)
        fds[name] = fd
    return fds


def closed_ancestor(path: str) -> str | None:
    """The highest directory above ``path`` that other users cannot enter, if any."""
    parts = os.path.realpath(path).split(os.sep)[1:-1]
    current = ""
    for part in parts:
        current = f"{current}/{part}"
        if not os.stat(current).st_mode & 0o001:
            return current
    return None


def _mount(*args: str, pass_fds: tuple[int, ...] = ()) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30, pass_fds=pass_fds)


#: Shared temporary directories that get a private, empty tmpfs in the kernel's view.
SHARED_TMP = ("/tmp", "/var/tmp", "/dev/shm")  # noqa: S108 (these are what we hide)


def private_tmp(keep: list[str], size_mb: int) -> None:
    """Give the kernel empty temporary directories of its own (root, own mount namespace).

    Other processes' files in ``/tmp`` & co. are hidden, and two kernels cannot pass
    notes through them. The paths in ``keep`` that live there (the kernel's own
    directory, the kernel API's socket directory) are bound back in, through
    descriptors opened before the shared directory is covered.
    """
    held = []
    for path in keep:
        real = os.path.realpath(path)
        if any(real.startswith(shared + os.sep) for shared in SHARED_TMP):
            held.append((real, os.open(real, os.O_PATH | os.O_DIRECTORY)))
    for shared in SHARED_TMP:
        if os.path.isdir(shared) and not os.path.islink(shared):
            _mount("-t", "tmpfs", "-o", f"mode=1777,size={size_mb}m", "rk-tmp", shared)
    for real, fd in held:
        os.makedirs(real, mode=0o755, exist_ok=True)
        # --no-canonicalize: the descriptor's magic link, not the path it names now
        _mount("--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", real, pass_fds=(fd,))
        os.close(fd)


def expose(paths: list[str], staging: str) -> None:
    """Make ``paths`` (the Python installation) reachable for an unprivileged kernel.

    Runs as root in the kernel's private mount namespace. When a directory above a
    path is closed to other users (``/root`` holding a pyenv Python, say), a small
    tmpfs is mounted over that directory holding only the way to each such path,
    each bind-mounted back from where it really is. Everything else in that
    directory is hidden from the kernel; nothing changes outside the namespace.
    """
    real = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})
    # a path inside another exposed path comes along with it
    real = [p for p in real if not any(p.startswith(q + os.sep) for q in real if q != p)]
    plans: dict[str, list[str]] = {}
    for path in real:
        ancestor = closed_ancestor(path)
        if ancestor is not None:
            plans.setdefault(ancestor, []).append(path)
    for ancestor, inside in sorted(plans.items()):
        held = []
        for path in inside:
            # fresh names: a restarted kernel runs this again with the same staging dir
            if os.path.isdir(path):
                hold = tempfile.mkdtemp(dir=staging)
            else:
                handle, hold = tempfile.mkstemp(dir=staging)
                os.close(handle)
            _mount("--bind", path, hold)
            held.append((path, hold))
        _mount("-t", "tmpfs", "-o", "mode=0755,size=1m", "rk-sandbox", ancestor)
        for path, hold in held:
            if os.path.isdir(hold):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                open(path, "w").close()
            _mount("--bind", hold, path)
            subprocess.run(["umount", "-l", hold], check=False, capture_output=True)


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="start a datasite kernel in its sandbox")
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    parser.add_argument("--dataset", action="append", default=[], help="name=path")
    parser.add_argument("--uid", type=int)
    parser.add_argument("--gid", type=int)
    parser.add_argument("--give", action="append", default=[], help="a file the kernel owns")
    parser.add_argument(
        "--expose", action="append", default=[], help="a path the kernel must reach (Python)"
    )
    parser.add_argument("--staging", help="an empty root-only directory for --expose")
    parser.add_argument(
        "--private-tmp",
        type=int,
        metavar="MB",
        help="empty tmpfs of this size over /tmp, /var/tmp and /dev/shm",
    )
    parser.add_argument(
        "--keep", action="append", default=[], help="a path under /tmp the kernel still needs"
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no kernel command after --")
    fds = open_datasets(args.dataset)
    env = dict(os.environ)
    if args.dataset:
        env[DATASET_FDS_ENV] = json.dumps(fds)
    if args.uid is not None:
        gid = args.gid if args.gid is not None else args.uid
        for path in args.give:
            os.chown(path, args.uid, gid)
        if args.expose and args.staging:
            expose(args.expose, args.staging)
        if args.private_tmp:
            private_tmp(args.keep, args.private_tmp)
        drop_privileges(args.uid, gid)
    set_limits(args.memory_mb, args.cpu_seconds)
    os.execvpe(command[0], command, env)  # noqa: S606 (our own argument list)


if __name__ == "__main__":
    main(sys.argv[1:])
