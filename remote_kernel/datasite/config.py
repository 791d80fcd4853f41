"""The datasite directory: one folder holds everything a datasite owns.

Layout::

    <dir>/datasite.yaml        settings and the dataset registry (this module)
    <dir>/datasite.db          SQLite store (requests, outputs, decisions, audit), unless
                               ``store:`` in datasite.yaml names a PostgreSQL database
    <dir>/datasets/<name>/     private.parquet and mock.parquet
    <dir>/scratch/<session>/   each researcher kernel's working directory

A directory is the unit an admin backs up, moves or deletes; nothing of a
datasite lives elsewhere.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from remote_kernel.datasite.mpc.settings import MpcSettings, MpcSettingsError, parse_mpc
from remote_kernel.protocol import names
from remote_kernel.protocol.errors import InputError, UnknownDataset

CONFIG_FILE = "datasite.yaml"


class ConfigError(InputError):
    """The datasite directory or one of its settings is not usable."""


def check_name(kind: str, name: str) -> str:
    """:func:`remote_kernel.protocol.names.check_name`, raising :class:`ConfigError`."""
    try:
        return names.check_name(kind, name)
    except InputError as exc:
        raise ConfigError(str(exc)) from None


@dataclass
class Limits:
    max_code_bytes: int = 1024 * 1024
    max_request_body_bytes: int = 2 * 1024 * 1024
    #: Total size of the objects one request may push (cloudpickle bytes).
    max_push_bytes: int = 16 * 1024 * 1024
    #: Outputs (iopub messages) one request may produce before it is cut off.
    max_outputs_per_request: int = 2000
    #: Total bytes of output one request may produce before it is cut off.
    max_output_bytes_per_request: int = 64 * 1024 * 1024
    #: Websocket flood control: messages per second a channel may send on average,
    #: and the burst it may send at once; past that the channel is closed (1008).
    ws_messages_per_second: float = 20.0
    ws_message_burst: int = 200
    #: Events queued for a websocket client that does not read; past that it is closed.
    max_ws_buffer_bytes: int = 8 * 1024 * 1024
    #: Seconds a cell over its time limit (policy ``max_cell_seconds``) gets to stop after
    #: it is interrupted; then its kernel is stopped.
    interrupt_grace_seconds: float = 10.0


@dataclass
class KernelSettings:
    cull_idle_seconds: float = 3600.0
    cull_interval_seconds: float = 60.0
    startup_timeout_seconds: float = 60.0
    #: ``auto``: a network namespace (and, when the server is root, a user of the
    #: kernel's own) when this machine allows it, else no sandbox with a loud warning;
    #: ``namespace``: refuse to start kernels without it; ``none``: no sandbox.
    sandbox: str = "auto"
    #: Address-space limit of a kernel (RLIMIT_AS), in MiB; 0 for none.
    memory_limit_mb: int = 4096
    #: CPU time a kernel may use in all (RLIMIT_CPU), in seconds; 0 for none.
    cpu_time_seconds: int = 0
    #: Sandboxed kernels run as uid/gid ``sandbox_uid_base + n`` (one per session).
    sandbox_uid_base: int = 200000
    #: Where sandboxed kernels get their scratch directories (outside the 0700
    #: datasite directory, which they must not be able to enter); default: the
    #: system's temporary directory.
    sandbox_dir: str | None = None
    #: Size of the private, empty /tmp (and /var/tmp, /dev/shm) a sandboxed kernel gets.
    private_tmp_mb: int = 256
    #: ``local``: kernels on this machine (jupyter_client); ``gateway``: through a Jupyter
    #: (Enterprise) Gateway at ``gateway_url`` (``datasite/gateway.py``, docs/operators.md).
    provider: str = "local"
    gateway_url: str = ""
    #: The gateway's auth token is read from this environment variable (not the file).
    gateway_token_env: str = "REMOTE_KERNEL_GATEWAY_TOKEN"  # noqa: S105 (a variable's name)
    gateway_kernel_name: str = "python3"
    #: ``KERNEL_USERNAME`` of gateway kernels (their process proxy runs them as this user).
    gateway_username: str = "remote-kernel"
    #: Container image of gateway kernels on Kubernetes/Docker, sent as ``KERNEL_IMAGE``
    #: (EG's container process proxies honour it): Python with remote_kernel installed.
    gateway_kernel_image: str = ""
    #: Where kernels on other machines reach the kernel API (TCP + TLS), e.g. ``0.0.0.0:8790``,
    #: the address they are told (``https://datasite.internal:8790``), and its TLS files.
    api_listen: str = ""
    api_url: str = ""
    api_certfile: str = ""
    api_keyfile: str = ""

    def gateway_token(self) -> str:
        return os.environ.get(self.gateway_token_env, "")

    def check(self, path: Path) -> None:
        """Refuse settings that cannot work, naming the key (config errors are caught early)."""
        if self.sandbox not in SANDBOX_MODES:
            raise ConfigError(
                f"{path}: kernels.sandbox must be one of {', '.join(SANDBOX_MODES)}, "
                f"not {self.sandbox!r}"
            )
        if self.provider not in KERNEL_PROVIDERS:
            raise ConfigError(
                f"{path}: kernels.provider must be one of {', '.join(KERNEL_PROVIDERS)}, "
                f"not {self.provider!r}"
            )
        if self.provider == "gateway":
            missing = [k for k in GATEWAY_KEYS if not getattr(self, k)]
            if missing:
                raise ConfigError(
                    f"{path}: kernels.provider 'gateway' needs "
                    + ", ".join(f"kernels.{k}" for k in missing)
                )


SANDBOX_MODES = ("auto", "namespace", "none")
KERNEL_PROVIDERS = ("local", "gateway")
#: What a gateway provider cannot do without (its kernels reach the datasite over TLS).
GATEWAY_KEYS = ("gateway_url", "api_listen", "api_url", "api_certfile", "api_keyfile")


@dataclass
class AuthSettings:
    #: Failed logins from one client address within ``failure_window_seconds`` that
    #: lock that address out for ``lockout_seconds`` (429 with Retry-After).
    max_failed_logins: int = 10
    failure_window_seconds: float = 60.0
    lockout_seconds: float = 60.0


@dataclass
class ColumnSchema:
    name: str
    dtype: str


@dataclass
class DatasetEntry:
    name: str
    private: str  # path relative to the datasite directory
    mock: str
    columns: list[ColumnSchema]
    description: str = ""
    source: str = ""  # where the admin imported it from, for the admin's records
    #: Opted into joint computations with peer sites (``rk.secure``); off by default.
    mpc: bool = False

    def to_public_json(self) -> dict[str, Any]:
        """What a researcher may know about a dataset: its name and shape of its columns."""
        return {
            "name": self.name,
            "description": self.description,
            "columns": [asdict(c) for c in self.columns],
        }


@dataclass
class ReplicaSettings:
    """Several servers on one PostgreSQL store (docs/operators.md, "Several replicas").

    A replica renews its lease every ``heartbeat_seconds``; one whose lease is over
    ``lease_seconds`` old is dead, and its sessions are taken over. Each replica also
    looks for work every ``poll_seconds`` (besides being told by NOTIFY).
    """

    lease_seconds: float = 15.0
    heartbeat_seconds: float = 3.0
    poll_seconds: float = 2.0


@dataclass
class DatasiteConfig:
    name: str
    directory: Path
    #: ``store:`` in datasite.yaml: a SQLAlchemy URL (``postgresql+psycopg://user:pw@host/db``
    #: or ``sqlite:///path``); None for ``datasite.db`` in the directory.
    db_url: str | None = None
    output_filter: str = "rules"
    limits: Limits = field(default_factory=Limits)
    kernels: KernelSettings = field(default_factory=KernelSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    datasets: dict[str, DatasetEntry] = field(default_factory=dict)
    #: MPC peers and this site's own MPC party (see :mod:`remote_kernel.datasite.mpc`).
    mpc: MpcSettings = field(default_factory=MpcSettings)
    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)

    # --- paths ---------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.directory / CONFIG_FILE

    @property
    def datasets_dir(self) -> Path:
        return self.directory / "datasets"

    @property
    def scratch_dir(self) -> Path:
        return self.directory / "scratch"

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.directory / 'datasite.db'}"

    def dataset(self, name: str) -> DatasetEntry:
        try:
            return self.datasets[name]
        except KeyError:
            available = ", ".join(sorted(self.datasets)) or "none yet"
            raise UnknownDataset(
                f"datasite {self.name!r} has no dataset {name!r} (available: {available})"
            ) from None

    # --- persistence ---------------------------------------------------------------------
    def to_yaml_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "store": self.db_url,
            "output_filter": self.output_filter,
            "limits": asdict(self.limits),
            "kernels": asdict(self.kernels),
            "auth": asdict(self.auth),
            "datasets": {
                name: {
                    "private": d.private,
                    "mock": d.mock,
                    "description": d.description,
                    "source": d.source,
                    "columns": [asdict(c) for c in d.columns],
                    **({"mpc": True} if d.mpc else {}),
                }
                for name, d in sorted(self.datasets.items())
            },
        }
        mpc = self.mpc.to_yaml()
        if mpc is not None:
            out["mpc"] = mpc
        if self.replicas != ReplicaSettings():
            out["replicas"] = asdict(self.replicas)
        return out

    def save(self) -> None:
        """Write atomically so that a crash never leaves half a config behind."""
        tmp = self.config_path.with_suffix(".yaml.tmp")
        tmp.write_text(yaml.safe_dump(self.to_yaml_dict(), sort_keys=False))
        os.replace(tmp, self.config_path)

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> DatasiteConfig:
        directory = Path(directory).resolve()
        path = directory / CONFIG_FILE
        if not path.exists():
            raise ConfigError(
                f"{directory} is not a datasite directory (no {CONFIG_FILE}); "
                f"create one with: remote-kernel datasite init {directory} --name NAME"
            )
        raw = yaml.safe_load(path.read_text()) or {}
        try:
            datasets = {
                name: DatasetEntry(
                    name=name,
                    private=d["private"],
                    mock=d["mock"],
                    description=d.get("description", ""),
                    source=d.get("source", ""),
                    columns=[ColumnSchema(**c) for c in d.get("columns", [])],
                    mpc=d.get("mpc", False) is True,
                )
                for name, d in (raw.get("datasets") or {}).items()
            }
            kernels = KernelSettings(**(raw.get("kernels") or {}))
            kernels.check(path)
            return cls(
                name=check_name("datasite", raw["name"]),
                directory=directory,
                db_url=_store_url(raw.get("store", raw.get("db_url")), path),
                output_filter=raw.get("output_filter", "rules"),
                limits=Limits(**(raw.get("limits") or {})),
                kernels=kernels,
                auth=AuthSettings(**(raw.get("auth") or {})),
                datasets=datasets,
                mpc=_mpc_settings(raw.get("mpc"), path),
                replicas=ReplicaSettings(**(raw.get("replicas") or {})),
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a valid datasite config: {exc}") from exc

    @classmethod
    def create(
        cls, directory: str | os.PathLike[str], name: str, store: str | None = None
    ) -> DatasiteConfig:
        """A new datasite directory; ``store``: a database URL (default: SQLite in it)."""
        directory = Path(directory).resolve()
        check_name("datasite", name)
        if (directory / CONFIG_FILE).exists():
            raise ConfigError(f"{directory} is already a datasite directory")
        store = _store_url(store, directory / CONFIG_FILE)
        directory.mkdir(parents=True, exist_ok=True)
        config = cls(name=name, directory=directory, db_url=store)
        config.datasets_dir.mkdir(exist_ok=True)
        config.scratch_dir.mkdir(exist_ok=True)
        # The directory holds the database and private data: owner-only.
        os.chmod(directory, 0o700)
        config.save()
        return config


def _mpc_settings(raw: Any, path: Path) -> MpcSettings:
    try:
        return parse_mpc(raw)
    except MpcSettingsError as exc:
        raise ConfigError(f"{path}: {exc}") from None


STORE_BACKENDS = ("sqlite", "postgresql")


def _store_url(raw: Any, path: Path) -> str | None:
    """``store:`` checked: absent, or a URL of a backend the store supports."""
    if raw is None:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        backend = make_url(raw).get_backend_name() if isinstance(raw, str) else None
    except ArgumentError:
        backend = None
    if backend not in STORE_BACKENDS:
        # Only the scheme is quoted: the rest of a URL may hold a password.
        shown = repr(raw.split(":", 1)[0]) if isinstance(raw, str) else type(raw).__name__
        raise ConfigError(
            f"{path}: store must be a database URL, postgresql+psycopg://USER:PASSWORD@HOST"
            "[:PORT]/DATABASE or sqlite:///PATH (leave it out for datasite.db in the "
            f"directory), not {shown}"
        )
    return str(raw)
