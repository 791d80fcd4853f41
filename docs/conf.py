"""Sphinx configuration: the remote_kernel documentation site (MyST Markdown).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``
(``pip install -e ".[docs]"``). Every page is Markdown in this folder;
``api.md`` is generated from ``openapi.yaml`` by ``_ext/openapi_page.py``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "remote_kernel"
author = "the remote_kernel developers"
copyright = "the remote_kernel developers, BSD-3-Clause"
_version_file = (HERE.parent / "remote_kernel" / "_version.py").read_text(encoding="utf-8")
_match = re.search(r"__version__\s*=\s*[\"']([^\"']+)", _version_file)
release = version = _match.group(1) if _match else "unknown"

extensions = [
    "myst_parser",
    "sphinxcontrib.mermaid",
    "openapi_page",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
# Only Markdown pages are sources; openapi.yaml is an input of api.md, _ext is code.
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # links like policy.md#thresholds
myst_fence_as_directive = ["mermaid"]  # ```mermaid blocks render as diagrams

openapi_pages = {"api": "openapi.yaml"}

html_theme = "furo"
html_title = f"remote_kernel {release}"
html_static_path: list[str] = []

# Pages other work adds (the JupyterLab extension's page, the full security
# document) are listed in index.md and linked from other pages, but may not exist
# yet in every checkout. For each missing one, its toctree line and every line
# ending in "<!-- if PAGE -->" are dropped, so the build stays warning-free.
OPTIONAL_PAGES = ("jupyterlab", "security")


def _drop_missing_optional_pages(app: Any, docname: str, source: list[str]) -> None:
    missing = [page for page in OPTIONAL_PAGES if not (HERE / f"{page}.md").exists()]
    if not missing:
        return
    kept = [
        line
        for line in source[0].splitlines(keepends=True)
        if not any(
            line.strip() in (page, f"<!-- if {page} -->")
            or line.rstrip().endswith(f"<!-- if {page} -->")
            for page in missing
        )
    ]
    source[0] = "".join(kept)


def setup(app: Any) -> None:
    # A config value that changes when an optional page appears or goes, so that an
    # incremental build re-reads every page instead of keeping stale toctrees.
    app.add_config_value("optional_pages_present", [], "env", types=[list])
    app.connect("source-read", _drop_missing_optional_pages)


optional_pages_present = [page for page in OPTIONAL_PAGES if (HERE / f"{page}.md").exists()]
