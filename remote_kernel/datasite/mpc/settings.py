"""A datasite's MPC federation settings (the ``mpc:`` section of ``datasite.yaml``).

Each site names the peers it will compute with, each with the address of its MPC
party and the TLS certificate it must present. Nothing here is learned from a
request: a researcher can ask for a joint computation only among sites that every
participant has already named, so a request cannot introduce a stranger.

::

    mpc:
      address: 127.0.0.1:9301         # where this site's MPC party listens
      certificate: mpc/cert.pem       # this site's certificate and key (PEM),
      key: mpc/key.pem                #   relative to the datasite directory
      timeout_seconds: 60             # every party connects within it, finishes within 2x
      peers:
        - {name: hungarian, address: 10.0.0.2:9301, certificate: mpc/peers/hungarian.pem}
        - {name: ttp, address: 10.0.0.9:9301, certificate: mpc/peers/ttp.pem, helper: true}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from remote_kernel.protocol import names
from remote_kernel.protocol.errors import InputError

#: Every party must have connected by then, and finished by twice that, or it fails.
DEFAULT_TIMEOUT = 60.0


class MpcSettingsError(InputError):
    """The ``mpc:`` section of datasite.yaml is not usable; the message says which entry."""


@dataclass(frozen=True)
class Peer:
    """Another site's MPC party: where it listens and the certificate it must show."""

    name: str
    host: str
    port: int
    certificate: str  # path, relative to the datasite directory unless absolute
    #: A party that holds no data for the computation (ZorgTTP's role in TNO's pilot).
    helper: bool = False

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "address": f"{self.host}:{self.port}",
            "certificate": self.certificate,
        }
        if self.helper:
            out["helper"] = True
        return out


@dataclass(frozen=True)
class MpcSettings:
    """This site's own MPC party and the peers it accepts."""

    host: str = ""
    port: int = 0
    certificate: str = ""
    key: str = ""
    timeout_seconds: float = DEFAULT_TIMEOUT
    peers: tuple[Peer, ...] = field(default_factory=tuple)

    @property
    def enabled(self) -> bool:
        return bool(self.port and self.certificate and self.key)

    def peer(self, name: str) -> Peer | None:
        return next((p for p in self.peers if p.name == name), None)

    def path(self, directory: Path, value: str) -> Path:
        """A configured file, relative to the datasite directory unless absolute."""
        path = Path(value)
        return path if path.is_absolute() else directory / path

    def to_yaml(self) -> dict[str, Any] | None:
        if not self.enabled and not self.peers:
            return None
        return {
            "address": f"{self.host}:{self.port}",
            "certificate": self.certificate,
            "key": self.key,
            "timeout_seconds": self.timeout_seconds,
            "peers": [p.to_yaml() for p in self.peers],
        }


def parse_address(value: Any, where: str) -> tuple[str, int]:
    """``host:port`` as a (host, port) pair; a clear error otherwise."""
    if not isinstance(value, str) or ":" not in value:
        raise MpcSettingsError(f"{where}: address must be 'host:port', not {value!r}")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MpcSettingsError(f"{where}: address must be 'host:port', not {value!r}")
    return host.strip("[]"), int(port)


def parse_mpc(raw: Any, where: str = "mpc") -> MpcSettings:
    """The typed settings from the YAML mapping (None: this site takes part in nothing)."""
    if raw is None:
        return MpcSettings()
    if not isinstance(raw, dict):
        raise MpcSettingsError(f"{where} must be a mapping")
    unknown = set(raw) - {"address", "certificate", "key", "timeout_seconds", "peers"}
    if unknown:
        raise MpcSettingsError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    host, port = parse_address(raw.get("address"), where)
    timeout = raw.get("timeout_seconds", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise MpcSettingsError(f"{where}.timeout_seconds must be a positive number")
    for key in ("certificate", "key"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise MpcSettingsError(f"{where}.{key} must name a PEM file")
    peers = tuple(_peer(p, f"{where}.peers[{i}]") for i, p in enumerate(raw.get("peers") or []))
    seen = [p.name for p in peers]
    if len(set(seen)) != len(seen):
        raise MpcSettingsError(f"{where}.peers names a site twice")
    return MpcSettings(host, port, raw["certificate"], raw["key"], float(timeout), peers)


def _peer(raw: Any, where: str) -> Peer:
    if not isinstance(raw, dict):
        raise MpcSettingsError(f"{where} must be a mapping with name, address and certificate")
    unknown = set(raw) - {"name", "address", "certificate", "helper"}
    if unknown:
        raise MpcSettingsError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")
    try:
        name = names.check_name("datasite", raw.get("name"))
    except InputError as exc:
        raise MpcSettingsError(f"{where}: {exc}") from None
    host, port = parse_address(raw.get("address"), where)
    certificate = raw.get("certificate")
    if not isinstance(certificate, str) or not certificate:
        raise MpcSettingsError(f"{where}.certificate must name the peer's PEM certificate")
    return Peer(name, host, port, certificate, bool(raw.get("helper", False)))
