"""Invariant 5: the hash-chained audit log shows any edit, removal or reordering.

A datasite store gets real entries through the Store's own methods; the test
then tampers with the SQLite file directly (as someone with the file would) and
runs ``remote-kernel datasite audit verify``. A cut-off tail or a chain rewritten
from scratch cannot be seen from inside the file, so the admin records the head
(``audit head``) elsewhere and verifies against it with ``--head``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from remote_kernel.cli import main
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.store import GENESIS_HASH, Store, audit_hash
from remote_kernel.protocol.models import Role


def cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(list(args))
    return code, out.getvalue()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    config = DatasiteConfig.create(tmp_path / "site", "site")
    store = Store(config.database_url)
    for index in range(4):
        store.create_user(f"user{index}", Role.RESEARCHER)
    store.audit("admin-cli", "dataset.add", "dataset:heart", columns=["age"])
    store.revoke_user("user1")
    store.close()
    yield config.directory


def db(site: Path) -> sqlite3.Connection:
    return sqlite3.connect(site / "datasite.db", isolation_level=None)


def verify(site: Path, *extra: str) -> tuple[int, str]:
    return cli("datasite", "audit", "verify", str(site), *extra)


def test_an_intact_log_verifies_and_exports_as_json_lines(site: Path) -> None:
    code, out = verify(site)
    assert code == 0 and "intact (6 entries)" in out
    code, out = cli("datasite", "audit", "export", str(site))
    lines = [json.loads(line) for line in out.splitlines()]
    assert [e["action"] for e in lines] == ["user.create"] * 4 + ["dataset.add", "user.revoke"]
    assert lines[0]["prev_hash"] == GENESIS_HASH
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(lines))
    assert all(e["at"].endswith("Z") for e in lines)


def test_an_edited_entry_is_found(site: Path) -> None:
    with db(site) as con:
        con.execute("""UPDATE audit SET detail = '{"name": "mallory", "role": "admin"}'
                       WHERE id = 3""")
    code, out = verify(site)
    assert code == 1 and "entry 3: content does not match its hash" in out


@pytest.mark.parametrize("column", ["actor", "action", "target", "at"])
def test_any_edited_field_is_found(site: Path, column: str) -> None:
    value = "2020-01-01 00:00:00.000000" if column == "at" else "someone-else"
    with db(site) as con:
        con.execute(f"UPDATE audit SET {column} = ? WHERE id = 5", (value,))
    code, out = verify(site)
    assert code == 1 and "entry 5: content does not match its hash" in out


def test_a_removed_entry_is_found(site: Path) -> None:
    with db(site) as con:
        con.execute("DELETE FROM audit WHERE id = 2")
    code, out = verify(site)
    assert code == 1 and "entry 3: chain broken" in out


def test_reordered_entries_are_found(site: Path) -> None:
    columns = "at, actor, action, target, detail, prev_hash, hash"
    with db(site) as con:
        two = con.execute(f"SELECT {columns} FROM audit WHERE id = 2").fetchone()
        four = con.execute(f"SELECT {columns} FROM audit WHERE id = 4").fetchone()
        update = f"UPDATE audit SET ({columns}) = (?, ?, ?, ?, ?, ?, ?) WHERE id = ?"
        con.execute(update, (*four, 2))
        con.execute(update, (*two, 4))
    code, out = verify(site)
    assert code == 1 and "entry 2: chain broken" in out


def test_a_cut_tail_or_rewritten_chain_needs_the_recorded_head(site: Path) -> None:
    code, out = cli("datasite", "audit", "head", str(site))
    count, head = out.split()
    assert code == 0 and count == "6" and len(head) == 64
    assert verify(site, "--head", head)[0] == 0

    with db(site) as con:  # cut off the last entry: the chain itself stays consistent
        con.execute("DELETE FROM audit WHERE id = 6")
    assert verify(site)[0] == 0  # what the file alone can tell
    code, out = verify(site, "--head", head)
    assert code == 1 and "is not in the chain" in out


def test_a_chain_rewritten_after_an_edit_needs_the_recorded_head(site: Path) -> None:
    head = cli("datasite", "audit", "head", str(site))[1].split()[1]
    with db(site) as con:  # edit entry 3 and recompute every hash after it
        con.execute("""UPDATE audit SET detail = '{"name": "mallory", "role": "admin"}'
                       WHERE id = 3""")
    store = Store(DatasiteConfig.load(site).database_url)
    prev = GENESIS_HASH
    rows = []
    for entry in store.audit_entries():
        digest = audit_hash(prev, entry.at, entry.actor, entry.action, entry.target, entry.detail)
        rows.append((prev, digest, entry.id))
        prev = digest
    store.close()
    with db(site) as con:
        con.executemany("UPDATE audit SET prev_hash = ?, hash = ? WHERE id = ?", rows)
    assert verify(site)[0] == 0  # a consistent forgery, from inside the file
    code, out = verify(site, "--head", head)
    assert code == 1 and "rewritten" in out
