"""Round-trip latency of one trivial cell: our datasite against plain Jupyter.

    python benchmarks/roundtrip.py [--runs 100] [--warmup 10] [--json]

Baseline: a direct jupyter_client execute on a local ipykernel
(KernelManager + BlockingKernelClient, ``execute("1+1")``, then wait for the
execute_result and the idle status of that msg_id).

Ours: a temporary datasite directory built with the library (config, a
synthetic heart dataset, one researcher), served by
``python -m remote_kernel.cli datasite serve DIR --insecure-release-all`` on
127.0.0.1, and ``Datasite(url, token).run("1+1").wait(30)`` from this process:
submit -> the kernel runs it -> the output is recorded, checked, released and
received by the client, with the request finished.

The target is a median ratio ours/baseline below 3. ``--insecure-release-all``
releases every output without review: it exists for this benchmark only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

BASELINE_NAME = "direct jupyter_client execute on a local ipykernel"
OURS_NAME = "remote_kernel datasite (--insecure-release-all), client run().wait()"
TARGET_RATIO = 3.0
CODE = "1+1"
EXPECTED = "2"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def summarize(samples_s: list[float]) -> dict[str, float | int]:
    ms = sorted(s * 1000.0 for s in samples_s)
    if len(ms) >= 2:
        p90 = statistics.quantiles(ms, n=10, method="inclusive")[8]
    else:
        p90 = ms[0]
    return {
        "runs": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": p90,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "mean_ms": statistics.fmean(ms),
    }


def measure(one_run: Callable[[], None], runs: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        one_run()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        one_run()
        samples.append(time.perf_counter() - start)
    return samples


# --- baseline: jupyter_client straight to an ipykernel -----------------------------------------
@contextlib.contextmanager
def local_kernel() -> Iterator[Any]:
    """A BlockingKernelClient on an ipykernel of this Python, shut down on exit."""
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager

    manager = KernelManager()
    # The same kernel command the datasite uses: this interpreter, not whatever
    # "python3" kernel spec happens to be installed.
    manager._kernel_spec = KernelSpec(
        argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        display_name="benchmark kernel",
        language="python",
    )
    client = None
    try:
        manager.start_kernel()
        client = manager.client()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        yield client
    finally:
        if client is not None:
            client.stop_channels()
        if manager.has_kernel:
            # Polite shutdown request first; jupyter_client escalates to SIGTERM/SIGKILL.
            manager.shutdown_kernel(now=False)
        manager.cleanup_resources()


def baseline_run(client: Any) -> None:
    msg_id = client.execute(CODE)
    result = None
    idle = False
    while result is None or not idle:
        msg = client.get_iopub_msg(timeout=30)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "execute_result":
            result = msg["content"]["data"]["text/plain"]
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            idle = True
    if result != EXPECTED:
        raise RuntimeError(f"baseline: expected {EXPECTED!r}, got {result!r}")


def drain_shell(client: Any) -> None:
    """Read the execute_replies the timed loop does not wait for (outside the timing)."""
    with contextlib.suppress(Exception):
        while True:
            client.get_shell_msg(timeout=0.2)


def run_baseline(runs: int, warmup: int) -> tuple[list[float], float]:
    start = time.perf_counter()
    with local_kernel() as client:
        startup = time.perf_counter() - start

        def one() -> None:
            baseline_run(client)

        samples = measure(one, runs, warmup)
        drain_shell(client)
    return samples, startup


# --- ours: a datasite served by the CLI ---------------------------------------------------------
def make_datasite(root: Path) -> tuple[Path, str]:
    """A datasite the way an admin makes one; returns its directory and a researcher token."""
    from remote_kernel.datasite.config import DatasiteConfig
    from remote_kernel.datasite.datasets import add_dataset, synthetic_heart
    from remote_kernel.datasite.store import Store
    from remote_kernel.protocol.models import Role

    config = DatasiteConfig.create(root / "bench-site", "bench")
    source = root / "heart.csv"
    synthetic_heart(300, seed=0).to_csv(source, index=False)
    add_dataset(config, "heart", source, seed=0)
    store = Store(config.database_url)
    try:
        _, token = store.create_user("bench", Role.RESEARCHER)
    finally:
        store.close()
    return config.directory, token


class Server:
    """``remote-kernel datasite serve`` in a subprocess of its own session."""

    def __init__(self, directory: Path, port: int, log_path: Path) -> None:
        self.directory = directory
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "remote_kernel.cli", "datasite", "serve",
                 str(self.directory), "--host", "127.0.0.1", "--port", str(self.port),
                 "--insecure-release-all"],
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the datasite exited:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"the datasite did not answer /api/health:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (the server then shuts its kernels down), wait; SIGKILL the group if stuck."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log(f"the datasite did not stop within {timeout} s; killing its process group")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"


def ours_run(site: Any) -> None:
    request = site.run(CODE).wait(30)
    outputs = request.outputs
    if request.status != "completed" or [o.state for o in outputs] != ["released"]:
        raise RuntimeError(f"datasite: unexpected result {request!r}")
    if outputs[0].text != EXPECTED:
        raise RuntimeError(f"datasite: expected {EXPECTED!r}, got {outputs[0].text!r}")


def run_ours(root: Path, runs: int, warmup: int) -> tuple[list[float], float]:
    from remote_kernel.researcher.client import Datasite

    directory, token = make_datasite(root)
    server = Server(directory, free_port(), root / "server.log")
    site = None
    try:
        server.start()
        site = Datasite(server.url, token, cache_dir=root / "cache")
        # The session's first request starts its kernel: timed apart, never a sample.
        start = time.perf_counter()
        ours_run(site)
        startup = time.perf_counter() - start

        def one() -> None:
            ours_run(site)

        samples = measure(one, runs, warmup)
    except Exception:
        log(f"--- datasite log ({server.log_path}) ---\n{server.log_tail()}")
        raise
    finally:
        if site is not None:
            with contextlib.suppress(Exception):
                site.close(end_session=True)
        server.stop()
    return samples, startup


# --- report -------------------------------------------------------------------------------------
def print_table(result: dict[str, Any]) -> None:
    base, ours = result["baseline"], result["ours"]
    print(f"round trip of {CODE!r}: {result['runs']} timed runs after {result['warmup']} warm-up")
    print(f"baseline = {BASELINE_NAME}")
    print(f"ours     = {OURS_NAME}")
    print()
    print(f"{'':<10} {'runs':>5} {'median ms':>10} {'p90 ms':>9} {'min ms':>9} {'max ms':>9}")
    for label, stats in (("baseline", base), ("ours", ours)):
        print(
            f"{label:<10} {stats['runs']:>5} {stats['median_ms']:>10.2f} "
            f"{stats['p90_ms']:>9.2f} {stats['min_ms']:>9.2f} {stats['max_ms']:>9.2f}"
        )
    print()
    print(f"kernel start (not in the samples): baseline {base['startup_s']:.2f} s, "
          f"ours {ours['startup_s']:.2f} s (server already up)")  # fmt: skip
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(f"ratio ours/baseline (medians): {result['ratio']:.2f}x -- "
          f"{verdict} the target (ratio < {TARGET_RATIO:g})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="timed runs per side (100)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs first (10)")
    parser.add_argument("--json", action="store_true", help="print machine-readable results")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless the ratio is below {TARGET_RATIO:g}")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the temporary datasite")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be at least 1 and --warmup at least 0")

    # SIGTERM to the benchmark cleans up like Ctrl-C does.
    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, terminate)

    root = Path(tempfile.mkdtemp(prefix="rk-roundtrip-"))
    try:
        log(f"baseline: {BASELINE_NAME} ({args.warmup} warm-up + {args.runs} runs)")
        base_samples, base_startup = run_baseline(args.runs, args.warmup)
        log(f"ours: datasite in {root} ({args.warmup} warm-up + {args.runs} runs)")
        ours_samples, ours_startup = run_ours(root, args.runs, args.warmup)
    except KeyboardInterrupt:
        log("interrupted; server and kernels stopped")
        return 130
    finally:
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    base = {**summarize(base_samples), "startup_s": base_startup, "name": BASELINE_NAME}
    ours = {**summarize(ours_samples), "startup_s": ours_startup, "name": OURS_NAME}
    ratio = ours["median_ms"] / base["median_ms"]
    result = {
        "code": CODE,
        "runs": args.runs,
        "warmup": args.warmup,
        "baseline": base,
        "ours": ours,
        "ratio": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio < TARGET_RATIO,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 1 if args.check and not result["meets_target"] else 0


if __name__ == "__main__":
    sys.exit(main())
