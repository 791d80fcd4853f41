"""``remote-kernel demo``: one datasite with heart-disease data, ready to try.

Uses the UCI Cleveland file when it is on this machine, otherwise generated
heart-shaped data. Creates a researcher (alice) and a reviewer (bob), writes
their tokens to ``<dir>/demo-tokens.json`` (demo only: real tokens are shown
once and never stored), prints how to connect, and serves until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from .config import CONFIG_FILE, DatasiteConfig
from .datasets import HEART_COLUMNS, UCI_HEART_FILES, add_dataset, find_uci_heart_dir, synthetic_heart
from .models import Role
from .store import Store

SITE = "cleveland"


def prepare_demo(directory: str | Path, data_dir: str | Path | None = None) -> dict[str, str]:
    """Create (or reuse) the demo datasite; return the demo tokens."""
    directory = Path(directory).resolve()
    tokens_file = directory / "demo-tokens.json"
    if (directory / CONFIG_FILE).exists() and tokens_file.exists():
        return dict(json.loads(tokens_file.read_text()))
    config = DatasiteConfig.create(directory, SITE)
    uci = find_uci_heart_dir(data_dir)
    if uci is not None:
        source = uci / UCI_HEART_FILES[SITE]
        add_dataset(config, "heart", source, columns=HEART_COLUMNS, na_values=["?"],
                    description="UCI Heart Disease, Cleveland Clinic (CC BY 4.0)", seed=1)  # fmt: skip
    else:
        generated = directory / "generated-heart.csv"
        synthetic_heart(303, seed=1).to_csv(generated, index=False)
        add_dataset(config, "heart", generated, seed=1,
                    description="generated heart-disease-shaped data (no real patients)")  # fmt: skip
    store = Store(config.database_url)
    tokens = {}
    for name, role in (("alice", Role.RESEARCHER), ("bob", Role.REVIEWER)):
        _, tokens[name] = store.create_user(name, role)
    store.close()
    tokens_file.write_text(json.dumps(tokens, indent=2))
    os.chmod(tokens_file, 0o600)
    return tokens


def instructions(url: str, tokens: dict[str, str], data_note: str) -> str:
    return f"""
remote_kernel demo: datasite {SITE!r} at {url} ({data_note})

Researcher (alice) - in a notebook on any local Python kernel:

    %load_ext remote_kernel
    import remote_kernel as rk
    site = rk.connect("{url}", token="{tokens['alice']}", name="{SITE}")
    df = rk.data("heart")          # the mock, here

    %%remote
    df = rk.data("heart")          # the private table, at the datasite
    df.groupby("sex").num.mean()

Reviewer (bob) - in a terminal:

    export REMOTE_KERNEL_URL={url} REMOTE_KERNEL_TOKEN={tokens['bob']}
    remote-kernel review list
    remote-kernel review show OUTPUT_ID
    remote-kernel review approve OUTPUT_ID     # or: deny OUTPUT_ID --comment "why"

Ctrl-C stops the datasite and its kernels.
"""


def run_demo(directory: str | Path, port: int, data_dir: str | Path | None = None) -> None:
    from .server.app import run_server

    tokens = prepare_demo(directory, data_dir)
    config = DatasiteConfig.load(directory)
    source = config.datasets["heart"].source
    note = "UCI Cleveland data" if source.endswith(".data") else "generated heart-shaped data"

    def ready(url: str) -> None:
        print(instructions(url, tokens, note), flush=True)

    try:
        asyncio.run(run_server(directory, "127.0.0.1", port, ready=ready))
    except KeyboardInterrupt:
        pass
