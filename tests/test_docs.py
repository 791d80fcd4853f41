"""The documentation site builds, with no warning (as `sphinx-build -W` in the README)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytest.importorskip("sphinx", reason="the docs extra is not installed (pip install -e '.[docs]')")
pytest.importorskip("myst_parser", reason="the docs extra is not installed")


@pytest.mark.timeout(120)
def test_docs_build_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "html"
    command = [
        sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
        "-d", str(tmp_path / "doctrees"), str(DOCS), str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=110, cwd=ROOT)
    assert done.returncode == 0, (
        f"sphinx-build failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr}"
    )
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("index", "researchers", "data-owners", "operators", "developers", "api"):
        assert (out / f"{page}.html").exists(), page
    api = (out / "api.html").read_text(encoding="utf-8")
    # The REST page is generated from openapi.yaml: every path is on it.
    yaml = pytest.importorskip("yaml")
    spec = yaml.safe_load((DOCS / "openapi.yaml").read_text(encoding="utf-8"))
    for path in spec["paths"]:
        assert path in api, f"{path} missing from api.html"
    assert (out / "_images" / "pending-outputs.png").exists()  # screenshots are copied
