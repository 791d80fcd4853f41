"""Mutual TLS between MPC parties, with each peer's certificate pinned.

MPyC's own ``--ssl`` reads ``.config/party_<i>.crt`` and one shared CA from the
working directory and expects the server name ``MPyC party <i>``: party numbers
change from one computation to the next, and federations have no common CA. So
the party program replaces the runtime's start with :func:`start_runtime`, which
opens the same connections as MPyC's (party ``i`` listens for parties ``< i`` and
connects to parties ``> i``, the client sending its number first) with TLS 1.2+
both ways: a client trusts only the certificate the site's own ``datasite.yaml``
names for that peer and checks the peer's name in it; a server accepts only
clients holding one of the participants' certificates, and only under the party
number whose name that certificate carries (:func:`numbered_exchanger`).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any


def server_context(certificate: str, key: str, trusted: list[str]) -> ssl.SSLContext:
    """What a listening party presents, and the client certificates it accepts."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    for path in trusted:
        context.load_verify_locations(cafile=path)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(certificate: str, key: str, peer_certificate: str) -> ssl.SSLContext:
    """What a connecting party presents; it trusts exactly its peer's pinned certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=peer_certificate)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certificate, key)
    context.check_hostname = True
    return context


def certificate_names(peercert: Any) -> set[str]:
    """The DNS names of a verified peer certificate (``SSLSocket.getpeercert()``'s dict)."""
    if not isinstance(peercert, dict):
        return set()
    return {value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"}


def numbered_exchanger(base: type, names: list[str]) -> type:
    """MPyC's server-side protocol, refusing a client whose first message (its party
    number) is not the number of the site its certificate names: a participant cannot
    connect as another participant."""

    class Numbered(base):  # type: ignore[misc, valid-type]
        def data_received(self, data: bytes) -> None:
            if self.peer_pid is None:
                head = bytes(self.bytes) + bytes(data)
                if len(head) >= 2:
                    claimed = int.from_bytes(head[:2], "little")
                    held = certificate_names(self.transport.get_extra_info("peercert"))
                    if claimed >= len(names) or names[claimed] not in held:
                        self.transport.close()
                        return
            super().data_received(data)

    return Numbered


async def start_runtime(
    runtime: Any,
    names: list[str],
    certificate: str,
    key: str,
    peer_certificates: list[str],
    listen_host: str,
    deadline: float,
) -> None:
    """MPyC's ``Runtime.start`` over pinned mutual TLS; gives up at ``deadline`` (monotonic).

    Raises :class:`ConnectionError` naming the peer that could not be reached.
    """
    from mpyc import asyncoro  # the party process only: MPyC reads sys.argv on import

    loop = asyncio.get_running_loop()
    me = runtime.pid
    for peer in runtime.parties:
        peer.protocol = asyncio.Future(loop=loop) if peer.pid == me else None
    server = None
    if me:
        trusted = [p for i, p in enumerate(peer_certificates) if i < me]
        context = server_context(certificate, key, trusted)
        exchanger = numbered_exchanger(asyncoro.MessageExchanger, names)
        server = await loop.create_server(
            lambda: exchanger(runtime),
            host=listen_host,
            port=runtime.parties[me].port,
            ssl=context,
        )
    try:
        for peer in runtime.parties[me + 1 :]:
            context = client_context(certificate, key, peer_certificates[peer.pid])
            await _connect(loop, runtime, peer, context, names[peer.pid], deadline)
        remaining = deadline - time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(runtime.parties[me].protocol), remaining)
        except asyncio.TimeoutError:
            raise ConnectionError(
                "not every party connected in time: " + ", ".join(names[:me]) + " expected"
            ) from None
    finally:
        if server is not None:
            server.close()
    runtime.start_time = time.time()


async def _connect(
    loop: asyncio.AbstractEventLoop,
    runtime: Any,
    peer: Any,
    context: ssl.SSLContext,
    name: str,
    deadline: float,
) -> None:
    """Connect to a peer's party, retrying until the deadline (it may start a little later)."""
    from mpyc import asyncoro

    last = "no answer"
    while time.monotonic() < deadline:
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: asyncoro.MessageExchanger(runtime, peer.pid),
                    peer.host,
                    peer.port,
                    ssl=context,
                    server_hostname=name,
                ),
                max(0.1, deadline - time.monotonic()),
            )
            return
        except ssl.SSLCertVerificationError as exc:
            raise ConnectionError(
                f"{name} presented a certificate we do not trust: {exc}"
            ) from None
        except (OSError, asyncio.TimeoutError) as exc:
            last = exc.__class__.__name__
        await asyncio.sleep(0.2)
    raise ConnectionError(f"could not reach the MPC party of {name} ({last})")
