"""Pooled answers by MPC (``rk.secure``) vs plain fan-out, at N datasites on this machine.

    python benchmarks/secure_pooled.py [--sites 4] [--runs 3] [--json]

Each datasite (the UCI heart files when present, else generated heart data) is served
on 127.0.0.1 with ``--insecure-release-all`` (so the fan-out's cells need no
reviewer), names every other site as an MPC peer and opts ``heart`` in. Measured,
median of ``--runs`` after one warm-up:

* fan-out: ``rk.run_everywhere("rk.query(SQL)", sites).wait()`` -- every site's own
  table released, to be pooled on the researcher's machine (and disclosive per site);
* ``rk.secure.query(SQL)`` -- one pooled table, the sites' own numbers never opened;
* ``rk.secure.fit("linear", ...)`` and ``rk.secure.fit("logistic", ...)``.

On one machine every site's server and MPyC party share its cores, which real sites
do not; the MPC times include each party's process start (about 0.5 s of Python and
MPyC imports) and the TLS connections.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from roundtrip import Server, free_port, log

SQL = "SELECT sex, COUNT(*) AS n, AVG(chol) AS mean_chol FROM heart GROUP BY sex"
NAMES = ["cleveland", "hungary", "switzerland", "va-long-beach"]
FIT = {"dataset": "heart", "X": ["age", "thalach"]}


def make_sites(root: Path, count: int) -> list[tuple[str, Server, str]]:
    """``count`` federated datasites (name, server, researcher token), not yet started."""
    from remote_kernel.datasite.config import DatasiteConfig
    from remote_kernel.datasite.datasets import (
        HEART_COLUMNS,
        UCI_HEART_FILES,
        add_dataset,
        find_uci_heart_dir,
        synthetic_heart,
    )
    from remote_kernel.datasite.mpc.certs import make_certificate
    from remote_kernel.datasite.mpc.settings import MpcSettings, Peer
    from remote_kernel.datasite.store import Store
    from remote_kernel.protocol.models import Role

    names = [NAMES[i] if i < len(NAMES) else f"site{i}" for i in range(count)]
    certs = {name: make_certificate(name, root / "certs" / name) for name in names}
    ports = {name: free_port() for name in names}
    uci = find_uci_heart_dir()
    sites = []
    for i, name in enumerate(names):
        config = DatasiteConfig.create(root / name, name)
        if uci is not None and name in UCI_HEART_FILES:
            add_dataset(config, "heart", uci / UCI_HEART_FILES[name], columns=HEART_COLUMNS,
                        na_values=["?"], seed=0)  # fmt: skip
        else:
            source = root / f"{name}.csv"
            synthetic_heart(300, seed=i).to_csv(source, index=False)
            add_dataset(config, "heart", source, seed=0)
        key, cert = certs[name]
        peers = tuple(
            Peer(other, "127.0.0.1", ports[other], str(certs[other][1]))
            for other in names
            if other != name
        )
        config.mpc = MpcSettings("127.0.0.1", ports[name], str(cert), str(key), 60.0, peers)
        config.datasets["heart"] = replace(config.datasets["heart"], mpc=True)
        config.save()
        store = Store(config.database_url)
        try:
            _, token = store.create_user("bench", Role.RESEARCHER)
        finally:
            store.close()
        sites.append((name, Server(config.directory, free_port(), root / f"{name}.log"), token))
    return sites


def timed(run: Callable[[], Any], runs: int) -> dict[str, float]:
    run()  # warm-up (kernels start, mocks download)
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return {"median_s": statistics.median(samples), "min_s": min(samples), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.sites < 3:
        parser.error("a joint computation needs at least 3 sites")
    import remote_kernel as rk

    with tempfile.TemporaryDirectory(prefix="rk-bench-mpc-") as tmp:
        sites = make_sites(Path(tmp), args.sites)
        try:
            for _, server, _ in sites:
                server.start()
            handles = [rk.connect(s.url, token=t, name=n) for n, s, t in sites]
            code = f"rk.query({SQL!r})"
            result = {
                "sites": args.sites,
                "fan-out rk.query": timed(
                    lambda: rk.run_everywhere(code, handles).wait(timeout=120), args.runs
                ),
                "rk.secure.query": timed(lambda: rk.secure.query(SQL), args.runs),
                "rk.secure.fit linear": timed(
                    lambda: rk.secure.fit("linear", y="trestbps", **FIT), args.runs
                ),
                "rk.secure.fit logistic": timed(
                    lambda: rk.secure.fit("logistic", y="exang", **FIT), args.runs
                ),
            }
        finally:
            for _, server, _ in sites:
                with contextlib.suppress(Exception):
                    server.stop()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    log(f"{args.sites} datasites on this machine, median of {args.runs} run(s):")
    for what, numbers in result.items():
        if isinstance(numbers, dict):
            log(f"  {what:<24} {numbers['median_s']:6.2f} s (min {numbers['min_s']:.2f} s)")


if __name__ == "__main__":
    main()
