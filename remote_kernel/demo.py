"""``remote-kernel demo``: one datasite with heart-disease data, ready to try.

Uses the UCI Cleveland file when it is on this machine, otherwise generated
heart-shaped data. Creates a researcher (alice) and a reviewer (bob), writes
their tokens to ``<dir>/demo-tokens.json`` (demo only: real tokens are shown
once and never stored), writes ``<dir>/quickstart.ipynb`` ready to run, starts
JupyterLab on it when JupyterLab is installed, prints how to connect, and
serves until Ctrl-C or SIGTERM, then stops JupyterLab and every kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from .config import CONFIG_FILE, DatasiteConfig
from .datasets import (
    HEART_COLUMNS,
    UCI_HEART_FILES,
    add_dataset,
    find_uci_heart_dir,
    synthetic_heart,
)
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
        add_dataset(
            config,
            "heart",
            source,
            columns=HEART_COLUMNS,
            na_values=["?"],
            description="UCI Heart Disease, Cleveland Clinic (CC BY 4.0)",
            seed=1,
        )
    else:
        generated = directory / "generated-heart.csv"
        synthetic_heart(303, seed=1).to_csv(generated, index=False)
        add_dataset(
            config,
            "heart",
            generated,
            seed=1,
            description="generated heart-disease-shaped data (no real patients)",
        )
    store = Store(config.database_url)
    tokens = {}
    for name, role in (("alice", Role.RESEARCHER), ("bob", Role.REVIEWER)):
        _, tokens[name] = store.create_user(name, role)
    store.close()
    tokens_file.write_text(json.dumps(tokens, indent=2))
    os.chmod(tokens_file, 0o600)
    return tokens


def quickstart_notebook(url: str, token: str) -> dict:
    """A notebook that walks through the researcher's side (nbformat 4 JSON)."""

    def md(text: str) -> dict:
        return {"cell_type": "markdown", "metadata": {}, "source": text}

    def code(text: str) -> dict:
        return {
            "cell_type": "code",
            "metadata": {},
            "source": text,
            "outputs": [],
            "execution_count": None,
        }

    cells = [
        md(
            "# remote_kernel quickstart\n\nConnect to the demo datasite as the researcher "
            '**alice**. `rk.data("heart")` gives you the **mock** here; at the datasite the '
            "same call gives the private table."
        ),
        code(
            "%load_ext remote_kernel\nimport remote_kernel as rk\n\n"
            f"site = rk.connect({url!r}, token={token!r}, name={SITE!r})\n"
            'df = rk.data("heart")   # the MOCK: same columns and dtypes, no real patient\n'
            "df.head()"
        ),
        md(
            "A `%%remote` cell runs here on the mock first, then at the datasite. Its output "
            "shows as *pending review* until the reviewer releases it. Release it from a "
            "terminal (the demo printed the commands):\n\n"
            "```\nremote-kernel review list\nremote-kernel review approve OUTPUT_ID\n```"
        ),
        code(
            '%%remote\ndf = rk.data("heart")   # the PRIVATE table, at the datasite\n'
            'df.groupby("sex").num.mean()'
        ),
        md("Without magics, from any Python:"),
        code("request = site.run('rk.data(\"heart\").age.describe()')\nrequest"),
        code(
            "request.wait(timeout=600)   # returns once a reviewer decided\n"
            "[o.text for o in request.outputs]"
        ),
    ]
    for number, cell in enumerate(cells):
        cell["id"] = f"quickstart-{number}"
    return {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }


def instructions(url: str, tokens: dict[str, str], data_note: str, notebook: Path) -> str:
    return f"""
remote_kernel demo: datasite {SITE!r} at {url} ({data_note})

Researcher (alice): open {notebook}
  or, in any notebook on a local Python kernel:

    %load_ext remote_kernel
    import remote_kernel as rk
    site = rk.connect("{url}", token="{tokens["alice"]}", name="{SITE}")
    df = rk.data("heart")          # the mock, here

    %%remote
    df = rk.data("heart")          # the private table, at the datasite
    df.groupby("sex").num.mean()

Reviewer (bob), in a terminal:

    export REMOTE_KERNEL_URL={url} REMOTE_KERNEL_TOKEN={tokens["bob"]}
    remote-kernel review list
    remote-kernel review show OUTPUT_ID
    remote-kernel review approve OUTPUT_ID     # or: deny OUTPUT_ID --comment "why"

Ctrl-C stops everything.
"""


def start_jupyterlab(directory: Path, port: int) -> subprocess.Popen[bytes] | None:
    """JupyterLab on the demo folder, in its own session so Ctrl-C reaches only us."""
    if importlib.util.find_spec("jupyterlab") is None:
        print("(JupyterLab is not installed: pip install 'remote_kernel[demo]' to get it)")
        return None
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        f"--ServerApp.root_dir={directory}",
        "--LabApp.default_url=/lab/tree/quickstart.ipynb",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")
    return subprocess.Popen(command, start_new_session=True)


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def run_demo(
    directory: str | Path,
    port: int,
    data_dir: str | Path | None = None,
    lab: bool = True,
    lab_port: int = 8888,
) -> None:
    from .server.app import run_server

    directory = Path(directory).resolve()
    tokens = prepare_demo(directory, data_dir)
    config = DatasiteConfig.load(directory)
    source = config.datasets["heart"].source
    note = "UCI Cleveland data" if source.endswith(".data") else "generated heart-shaped data"
    notebook = directory / "quickstart.ipynb"
    lab_process: list[subprocess.Popen[bytes] | None] = [None]

    def ready(url: str) -> None:
        notebook.write_text(json.dumps(quickstart_notebook(url, tokens["alice"]), indent=1))
        print(instructions(url, tokens, note, notebook), flush=True)
        if lab:
            lab_process[0] = start_jupyterlab(directory, lab_port)

    try:
        asyncio.run(run_server(directory, "127.0.0.1", port, ready=ready))
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(lab_process[0])
