"""Tokens: expiry, revocation, throttling of failed logins; TLS serving.

Real servers on loopback, real tokens made by the CLI, a self-signed certificate
made with the openssl command line.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from remote_kernel.cli import main
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.store import Store, utcnow
from remote_kernel.protocol.models import Role

from .conftest import RunningDatasite, free_port, make_datasite


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command line, in this process (a subprocess costs seconds of imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def me(site: RunningDatasite, token: str) -> httpx.Response:
    return httpx.get(site.url + "/api/me", headers={"Authorization": f"Bearer {token}"})


def set_auth(site: RunningDatasite, **settings: float) -> None:
    config = DatasiteConfig.load(site.directory)
    for key, value in settings.items():
        setattr(config.auth, key, value)
    config.save()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> RunningDatasite:
    running = make_datasite(tmp_path_factory.mktemp("tokens"))
    running.start()
    yield running
    running.stop()


def test_expiring_token_works_until_it_expires_and_cli_shows_it(site: RunningDatasite) -> None:
    done = cli("datasite", "add-user", str(site.directory), "dave", "--role", "researcher",
               "--expires-in", "2")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "valid until" in done.stdout
    token = done.stdout.strip().splitlines()[-1]
    assert me(site, token).json()["name"] == "dave"
    listing = cli("datasite", "users", str(site.directory)).stdout
    assert "dave\tresearcher\tactive until" in listing

    # A token that has expired (moved into the past in the store) is refused at once.
    store = site.store()
    _, old = store.create_user("erin", Role.RESEARCHER, expires_in=timedelta(seconds=1))
    assert me(site, old).status_code == 200
    time.sleep(1.2)
    refused = me(site, old)
    assert refused.status_code == 401
    assert "expired" in refused.json()["error"]["message"]
    assert "erin\tresearcher\texpired" in cli("datasite", "users", str(site.directory)).stdout
    store.close()

    bad = cli("datasite", "add-user", str(site.directory), "frank", "--role", "researcher",
              "--expires-in", "-1")  # fmt: skip
    assert bad.returncode == 2 and "positive" in bad.stderr
    store = site.store()
    assert "frank" not in {u.name for u in store.users()}
    store.close()


def test_revoke_stops_the_token_now_including_the_websocket(site: RunningDatasite) -> None:
    store = site.store()
    _, token = store.create_user("gina", Role.RESEARCHER)
    store.close()
    headers = {"Authorization": f"Bearer {token}"}
    session = httpx.post(site.url + "/api/sessions", headers=headers).json()["id"]
    assert me(site, token).status_code == 200

    done = cli("datasite", "revoke", str(site.directory), "gina")
    assert done.returncode == 0, done.stderr
    assert me(site, token).status_code == 401
    with pytest.raises(InvalidStatus) as info:
        ws_connect(f"ws://127.0.0.1:{site.port}/api/sessions/{session}/channel",
                   additional_headers=headers, open_timeout=10)  # fmt: skip
    assert info.value.response.status_code == 401

    again = cli("datasite", "revoke", str(site.directory), "gina")
    assert again.returncode == 2 and "already revoked" in again.stderr
    missing = cli("datasite", "revoke", str(site.directory), "nobody-here")
    assert missing.returncode == 2 and "no user" in missing.stderr
    store = site.store()
    actions = [e.action for e in store.audit_entries()]
    assert actions.count("user.revoke") == 1
    assert store.verify_audit() == []
    assert "gina\tresearcher\trevoked" in cli("datasite", "users", str(site.directory)).stdout
    store.close()


def test_repeated_failed_logins_are_throttled_per_address(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    set_auth(site, max_failed_logins=4, failure_window_seconds=30, lockout_seconds=5)
    site.start()
    store = site.store()
    audited_before = len(store.audit_entries())
    for _ in range(3):
        assert me(site, "rk_wrong").status_code == 401
    fourth = me(site, "rk_wrong")  # the 4th failure locks the address out
    assert fourth.status_code == 401
    locked = me(site, site.tokens["alice"])  # even a valid token from this address waits
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) in (4, 5)
    assert locked.json()["error"]["reason"] == "too_many_requests"
    assert "try again" in locked.json()["error"]["message"]
    with httpx.Client(headers={"Authorization": "Bearer rk_wrong"}) as client:
        for _ in range(30):  # a flood while locked out writes nothing more to the audit log
            assert client.get(site.url + "/api/me").status_code == 429
    entries = store.audit_entries()[audited_before:]
    assert [e.action for e in entries] == ["auth.failed"] * 3 + ["auth.throttled"]
    assert httpx.get(site.url + "/api/health").status_code == 200  # public route unaffected

    time.sleep(float(locked.headers["Retry-After"]) + 0.2)
    assert me(site, site.tokens["alice"]).status_code == 200
    store.close()
    site.stop()


def test_token_expiry_survives_in_an_old_database(tmp_path: Path) -> None:
    """A datasite created before expiry existed gets the column on first open."""
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(64) UNIQUE, role VARCHAR(16),"
        " token_hash VARCHAR(64) UNIQUE, created_at DATETIME, revoked_at DATETIME)"
    )
    con.commit()
    con.close()
    store = Store(f"sqlite:///{db}")
    user, token = store.create_user("old", Role.ADMIN, expires_in=timedelta(days=1))
    assert user.expires_at is not None and user.expires_at > utcnow()
    assert store.user_by_token(token) is not None
    store.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command line is not installed")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_serving_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    site = make_datasite(tmp_path, extra_args=["--certfile", str(cert), "--keyfile", str(key)])
    log = open(tmp_path / "tls-server.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "remote_kernel.cli", "datasite", "serve", str(site.directory),
         "--port", str(site.port), *site.extra_args],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"https://127.0.0.1:{site.port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(url + "/api/health", verify=str(cert), timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "tls-server.log").read_text()
                time.sleep(0.2)
        assert health.status_code == 200
        headers = site.headers("alice")
        assert httpx.get(url + "/api/me", headers=headers, verify=str(cert)).json()["name"] == (
            "alice"
        )
        with pytest.raises(httpx.ConnectError):  # certificate checking is on: untrusted fails
            httpx.get(url + "/api/health", timeout=5)
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port gets nowhere
            httpx.get(f"http://127.0.0.1:{site.port}/api/health", timeout=5)

        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        session = httpx.post(url + "/api/sessions", headers=headers, verify=str(cert)).json()
        with ws_connect(
            f"wss://127.0.0.1:{site.port}/api/sessions/{session['id']}/channel",
            additional_headers=headers,
            ssl=context,
            open_timeout=10,
        ) as channel:
            channel.send('{"type": "nonsense"}')
            assert '"status": 400' in str(channel.recv(timeout=10))
        assert "serving at https://" in (tmp_path / "tls-server.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_tls_needs_both_files_and_readable_ones(tmp_path: Path) -> None:
    site = make_datasite(tmp_path)
    only_cert = cli("datasite", "serve", str(site.directory), "--port", str(free_port()),
                    "--certfile", "x.pem")  # fmt: skip
    assert only_cert.returncode == 2 and "both --certfile and --keyfile" in only_cert.stderr
    port = str(free_port())
    nothing = str(tmp_path / "none.pem")
    missing = cli("datasite", "serve", str(site.directory), "--port", port,
                  "--certfile", nothing, "--keyfile", nothing)  # fmt: skip
    assert missing.returncode == 2 and "cannot load TLS certificate" in missing.stderr
