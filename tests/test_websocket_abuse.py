"""Websocket abuse: malformed and binary frames, floods, a client that never reads.

A real datasite with small limits (bursts of 40 messages, 32 KiB of unread events);
raw sockets where a well-behaved client library would not misbehave. Each case
checks the close code the client gets, that the server stays up, and that its
memory stays bounded.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from .conftest import RunningDatasite, make_datasite

BUFFER = 32 * 1024
BURST = 40


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    running = make_datasite(
        tmp_path_factory.mktemp("ws-abuse"),
        max_ws_buffer_bytes=BUFFER,
        ws_message_burst=BURST,
        ws_messages_per_second=5,
    )
    running.start()
    yield running
    running.stop()


def new_session(site: RunningDatasite) -> str:
    response = httpx.post(site.url + "/api/sessions", headers=site.headers("alice"))
    return str(response.json()["id"])


def channel(site: RunningDatasite, session: str, **kwargs: object):  # type: ignore[no-untyped-def]
    return ws_connect(
        f"ws://127.0.0.1:{site.port}/api/sessions/{session}/channel",
        additional_headers=site.headers("alice"),
        open_timeout=10,
        **kwargs,
    )


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw_channel(site: RunningDatasite, session: str, rcvbuf: int | None = None) -> socket.socket:
    """A websocket opened by hand: the test decides what (not) to read and send."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", site.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/sessions/{session}/channel HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {site.tokens['alice']}\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def masked_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    mask = os.urandom(4)
    header = bytes([(0x80 if fin else 0) | rsv | opcode])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_frames(sock: socket.socket, timeout: float = 20) -> tuple[list[bytes], int | None, str]:
    """Every frame the server sent until it closed: text payloads, close code, reason."""
    sock.settimeout(timeout)
    data = b""
    texts: list[bytes] = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return texts, None, ""  # dropped without a close frame
        data += chunk
        while len(data) >= 2:
            opcode, length, offset = data[0] & 0x0F, data[1] & 0x7F, 2
            if length == 126:
                if len(data) < 4:
                    break
                length, offset = struct.unpack("!H", data[2:4])[0], 4
            elif length == 127:
                if len(data) < 10:
                    break
                length, offset = struct.unpack("!Q", data[2:10])[0], 10
            if len(data) < offset + length:
                break
            payload, data = data[offset : offset + length], data[offset + length :]
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                return texts, code, payload[2:].decode(errors="replace")
            texts.append(payload)


def test_malformed_json_gets_an_error_and_the_channel_stays_usable(site: RunningDatasite) -> None:
    with channel(site, new_session(site)) as ws:
        for bad in ("{not json", "[1, 2]", '"text"', '{"type": "execute"}', '{"a": "\\ud800"}'):
            ws.send(bad)
            reply = json.loads(ws.recv(timeout=10))
            assert reply["type"] == "error" and reply["status"] == 400 and reply["message"]
        ws.send(json.dumps({"type": "execute", "code": "x = 1", "ref": "ok"}))
        kinds = [json.loads(ws.recv(timeout=10))["type"] for _ in range(2)]
        assert "accepted" in kinds  # (with the request's own "request" event)


def test_binary_frames_are_read_as_json_text(site: RunningDatasite) -> None:
    """Binary frames get the same answers as text ones (bad JSON: a 400 error, no close)."""
    with channel(site, new_session(site)) as ws:
        ws.send(b"\x00\xff not json")
        reply = json.loads(ws.recv(timeout=10))
        assert reply["status"] == 400 and "not valid JSON" in reply["message"]
        ws.send(b'{"type": "nothing"}')
        assert json.loads(ws.recv(timeout=10))["status"] == 400


@pytest.mark.parametrize(
    "frame",
    [
        masked_frame(0x1, b"\xff\xfe invalid utf-8"),  # text that is not UTF-8
        masked_frame(0x1, b"{}", rsv=0x40),  # a reserved bit (an extension never agreed)
        masked_frame(0x9, b"x" * 200),  # a control frame over 125 bytes
        masked_frame(0x3, b"{}"),  # a reserved opcode
    ],
    ids=["bad-utf8", "rsv-bit", "long-ping", "bad-opcode"],
)
def test_protocol_violations_drop_the_connection_and_nothing_else(
    site: RunningDatasite, frame: bytes
) -> None:
    session = new_session(site)
    store = site.store()
    before = store.counts()
    sock = raw_channel(site, session)
    sock.sendall(frame)
    texts, code, _ = read_frames(sock, timeout=10)  # returns only once the server closed
    sock.close()
    assert texts == [] and code in (None, 1002, 1007)  # tornado fails the connection
    assert httpx.get(site.url + "/api/health").status_code == 200
    assert store.counts() == before
    store.close()


def test_a_message_flood_is_closed_with_1008(site: RunningDatasite) -> None:
    session = new_session(site)
    store = site.store()
    requests_before = store.counts()["requests"]
    pid = site.process.pid if site.process else 0
    memory_before = rss_kib(pid)
    sock = raw_channel(site, session)
    sock.sendall(masked_frame(0x1, b'{"type": "nothing"}') * (BURST * 3))  # all at once
    texts, code, reason = read_frames(sock)
    sock.close()
    assert code == 1008 and "too many messages" in reason
    assert BURST <= len(texts) <= BURST + 5  # one error reply per message allowed
    assert all(json.loads(t)["status"] == 400 for t in texts)
    assert store.counts()["requests"] == requests_before
    assert rss_kib(pid) - memory_before < 64 * 1024
    store.close()


def test_a_client_that_never_reads_is_closed_and_memory_stays_bounded(
    site: RunningDatasite,
) -> None:
    session = new_session(site)
    pid = site.process.pid if site.process else 0
    sock = raw_channel(site, session, rcvbuf=4096)  # then never read while events stream
    memory_before = rss_kib(pid)
    outputs = 700
    code = f"from IPython.display import display\nfor i in range({outputs}):\n    display(i)"
    response = httpx.post(
        f"{site.url}/api/sessions/{session}/requests",
        json={"code": code},
        headers=site.headers("alice"),
    )
    request_id = response.json()["id"]
    log = site.log_path
    assert log is not None
    deadline = time.monotonic() + 120
    while "unread" not in log.read_text():
        assert time.monotonic() < deadline, "the slow reader was never closed"
        time.sleep(0.05)
    texts, close_code, reason = read_frames(sock)  # now read: the close frame is at the end
    sock.close()
    assert close_code == 1008 and "not being read" in reason
    assert len(texts) < outputs  # events stopped at the cap instead of piling up
    assert rss_kib(pid) - memory_before < 64 * 1024
    # Nothing is lost for the researcher: the request and its outputs are all in the store.
    headers = site.headers("alice")
    deadline = time.monotonic() + 120
    while True:
        view = httpx.get(f"{site.url}/api/requests/{request_id}", headers=headers).json()
        if view["status"] != "running" and view["status"] != "queued":
            break
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert view["status"] == "completed" and len(view["outputs"]) == outputs
