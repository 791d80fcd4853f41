"""The researcher's saved datasite connections: one 0600 JSON file, never the notebook.

``remote-kernel connect``, the JupyterLab server extension and the proxy
kernels all read and write the same file, so a token typed once (in a
terminal or in the Datasites panel) is usable by every kernel of that user
and is never stored in a notebook, the page or browser storage.

The file lives in the user's Jupyter config directory
(``jupyter --config-dir``, i.e. ``$JUPYTER_CONFIG_DIR`` or ``~/.jupyter``)
as ``remote_kernel/connections.json``; ``REMOTE_KERNEL_CONNECTIONS`` points
elsewhere (tests, the demo).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from remote_kernel.protocol import names

CONNECTIONS_ENV = "REMOTE_KERNEL_CONNECTIONS"


@dataclass(frozen=True)
class Connection:
    """One saved datasite: where it is, the token, and who the token belongs to."""

    name: str
    url: str
    token: str
    user: str = ""
    role: str = ""

    def public(self) -> dict[str, str]:
        """Everything but the token (for listings, panels and logs)."""
        return {"name": self.name, "url": self.url, "user": self.user, "role": self.role}


def connections_path() -> Path:
    explicit = os.environ.get(CONNECTIONS_ENV)
    if explicit:
        return Path(explicit)
    from jupyter_core.paths import jupyter_config_dir

    return Path(jupyter_config_dir()) / "remote_kernel" / "connections.json"


def check_name(name: str) -> str:
    """Connection names become kernelspec names (``remote-<name>``): keep them simple."""
    return names.check_name("connection", name)


def load_connections(path: Path | None = None) -> dict[str, Connection]:
    """All saved connections by name ({} when none were saved yet)."""
    path = path or connections_path()
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read saved connections in {path}: {exc}") from None
    result: dict[str, Connection] = {}
    for name, entry in (raw.get("connections") or {}).items():
        with contextlib.suppress(TypeError, KeyError):
            result[name] = Connection(
                name=name,
                url=str(entry["url"]),
                token=str(entry["token"]),
                user=str(entry.get("user", "")),
                role=str(entry.get("role", "")),
            )
    return result


def _write(connections: dict[str, Connection], path: Path | None = None) -> None:
    path = path or connections_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    payload = {
        "connections": {
            name: {k: v for k, v in asdict(c).items() if k != "name"}
            for name, c in sorted(connections.items())
        }
    }
    # Written to a private temporary file and renamed: never a moment with a
    # world-readable token, never a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".connections-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_connection(connection: Connection, path: Path | None = None) -> Connection:
    """Add or replace one connection (``path``: another connections file, e.g. the demo's)."""
    check_name(connection.name)
    connections = load_connections(path)
    connections[connection.name] = connection
    _write(connections, path)
    return connection


def remove_connection(name: str) -> bool:
    """Forget a connection; False if there was none by that name."""
    connections = load_connections()
    if connections.pop(name, None) is None:
        return False
    _write(connections)
    return True
