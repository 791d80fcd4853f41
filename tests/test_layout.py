"""The trust boundary in the code: import contracts hold, and break when they should.

The contracts themselves are in pyproject.toml (``[tool.importlinter]``) and are run
by ``lint-imports`` in CI; these tests prove that they hold today, that they would
catch a forbidden import (a test of the test), and that a datasite server process
does not even load the researcher side's modules.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = shutil.which("lint-imports")

pytestmark = pytest.mark.skipif(LINT_IMPORTS is None, reason="import-linter is not installed")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package under ``root`` (which has its own pyproject.toml)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_contract_holds() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BROKEN" not in result.stdout
    assert " 0 broken" in result.stdout


def copy_package(tmp_path: Path) -> Path:
    shutil.copytree(
        ROOT / "remote_kernel",
        tmp_path / "remote_kernel",
        ignore=shutil.ignore_patterns("labextension", "__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        (
            "datasite/core.py",
            "remote_kernel.researcher.client",
            "the datasite never imports researcher-side code",
        ),
        ("checks/filter.py", "remote_kernel.datasite.store", "checks are pure"),
        ("researcher/client.py", "remote_kernel.checks.rules", "the researcher side stays out"),
        ("labapp/app.py", "remote_kernel.datasite.config", "the researcher side stays out"),
        ("protocol/models.py", "remote_kernel.researcher.connections", "protocol is the bottom"),
        ("mocks/generate.py", "remote_kernel.mocks.report", "report builds on generate"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, forbidden: str, contract: str
) -> None:
    root = copy_package(tmp_path)
    path = root / "remote_kernel" / module
    path.write_text(path.read_text() + f"\nimport {forbidden}  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if line.endswith("BROKEN")]
    assert len(broken) >= 1 and any(line.startswith(contract) for line in broken), result.stdout


def test_the_datasite_server_loads_no_researcher_module() -> None:
    """At run time too: importing the server and the checks loads nothing of the other side."""
    code = (
        "import sys\n"
        "import remote_kernel.datasite.http.app, remote_kernel.checks.filter, "
        "remote_kernel.checks.sqltier\n"
        "print(sorted(m for m in sys.modules if m.startswith(('remote_kernel.researcher', "
        "'remote_kernel.labapp'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
