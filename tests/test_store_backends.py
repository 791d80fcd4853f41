"""The store on SQLite and PostgreSQL: one schema (Alembic), one audit chain, one behaviour.

Each test that takes ``store_url`` runs on a real SQLite file and on a real PostgreSQL
database (tests/postgres.py starts a throwaway server). Pre-migration datasites are
SQLite only (PostgreSQL arrived with the migrations), so their adoption is tested there.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from hashlib import sha256
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from remote_kernel.datasite import migrations
from remote_kernel.datasite.config import ConfigError, DatasiteConfig
from remote_kernel.datasite.store import Base, NewPush, Store, hash_token, new_token
from remote_kernel.protocol.errors import BudgetExhausted, InputError
from remote_kernel.protocol.models import FilterDecision, OutputItem, RequestStatus, Role, Verdict
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, free_port, make_datasite
from .postgres import PostgresCluster

#: Columns that datasites made before the migrations got later, by hand (ALTER TABLE).
LATE_COLUMNS = {"users": {"expires_at"}, "outputs": {"parent_id", "note"}}
LATE_TABLES = {"budgets", "budget_charges"}
#: What migrations after the baseline add: never in a pre-migration schema.
AFTER_BASELINE_COLUMNS = {"sessions": {"replica"}}
AFTER_BASELINE_TABLES = {"replicas"}
AFTER_BASELINE_INDEXES = {"ix_sessions_replica", "ix_requests_status"}


def schema_differences(engine: sa.Engine) -> list[object]:
    """What Alembic's autogenerate would change to make the database match the models."""
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


def test_schema_is_at_head_and_matches_the_models(store_url: str) -> None:
    store = Store(store_url)
    try:
        heads = ScriptDirectory(str(migrations.SCRIPT_LOCATION)).get_heads()
        assert heads == [migrations.HEAD], "migrations.HEAD must name the newest revision"
        with store.engine.connect() as conn:
            assert migrations.current_revision(conn) == migrations.HEAD
        # A model changed without a migration (or the reverse) shows up here.
        assert schema_differences(store.engine) == []
        assert migrations.upgrade(store.engine) == (migrations.HEAD, migrations.HEAD)
    finally:
        store.close()


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from remote_kernel.datasite.store import Store
url, go = sys.argv[1], Path(sys.argv[2])
while not go.exists():
    time.sleep(0.001)
store = Store(url)
store.audit("replica", "test.opened")
print("opened", flush=True)
"""


def test_replicas_opening_a_new_store_at_once_migrate_it_once(
    store_url: str, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    command = [sys.executable, "-c", OPEN_AT_ONCE, store_url, str(go)]
    replicas = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True) for _ in range(4)]  # fmt: skip
    go.touch()
    results = [replica.communicate(timeout=120) for replica in replicas]
    assert [out for out, _ in results] == ["opened\n"] * 4, [err for _, err in results]
    store = Store(store_url)
    try:
        with store.engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        assert versions == [(migrations.HEAD,)]
        assert schema_differences(store.engine) == []
        assert len(store.audit_entries()) == 4 and store.verify_audit() == []
    finally:
        store.close()


def test_a_schema_newer_than_the_code_is_refused(store_url: str) -> None:
    Store(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(ConfigError, match="revision 9999, which this remote_kernel does not"):
        Store(store_url)


def test_concurrent_writers_never_fork_the_audit_chain(store_url: str) -> None:
    """20 threads at once, each writing through every kind of write transaction."""
    store = Store(store_url)
    alice, _ = store.create_user("alice", Role.RESEARCHER)
    store.set_budget("alice", "heart", 1.0)
    start = threading.Barrier(20)
    failures: list[BaseException] = []

    def write(i: int) -> None:
        try:
            start.wait()
            store.create_session(f"s{i}", alice)  # ORM transaction
            for j in range(4):
                request = store.create_request(f"s{i}", alice, f"print({i}, {j})")
                store.set_request_status(request.id, RequestStatus.RUNNING)
                store.audit(f"thread-{i}", "test.write", f"n:{j}")
            try:
                store.charge_budget("alice", "heart", 0.1, what=f"thread {i}")
            except BudgetExhausted:
                pass
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert failures == []
        assert store.verify_audit() == []
        actions = [entry.action for entry in store.audit_entries()]
        assert actions.count("request.submit") == actions.count("test.write") == 80
        assert actions.count("budget.charge") == 10  # 1.0 / 0.1: exactly ten fitted
        assert store.budgets("alice")[0].epsilon_left == 0.0
    finally:
        store.close()


def test_text_one_backend_would_refuse_is_refused_on_both(store_url: str) -> None:
    """PostgreSQL rejects NUL characters and over-long names that SQLite would keep: the
    store refuses them first, on both, with a clear error and nothing stored."""
    store = Store(store_url)
    try:
        alice, _ = store.create_user("alice", Role.RESEARCHER)
        store.create_session("s1", alice)
        before = store.counts()
        refusals = [
            (lambda: store.create_request("s1", alice, "print(1)\x00"), "NUL"),
            (lambda: store.create_user("x" * 65, Role.RESEARCHER), "longer than 64"),
            (lambda: store.create_request("s1", alice, "1", (NewPush("m" * 129, "", b""),)),
             "longer than 128"),
        ]  # fmt: skip
        for attempt, message in refusals:
            with pytest.raises(InputError, match=message):
                attempt()
        assert store.counts() == before
        request = store.create_request("s1", alice, "raise ValueError")
        failed = store.set_request_status(request.id, RequestStatus.ERROR, "ValueError: \x00")
        assert failed.message == "ValueError: \ufffd"
    finally:
        store.close()


def test_unsupported_store_urls_are_refused_without_showing_the_password(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="unsupported store 'mysql'"):
        Store("mysql://root:hunter2@db/site")
    port = free_port()  # nothing listens there
    with pytest.raises(ConfigError, match=f"cannot open the store .*:{port}/site") as refused:
        Store(f"postgresql+psycopg://rk:hunter2@127.0.0.1:{port}/site")
    assert "hunter2" not in str(refused.value) and "***" in str(refused.value)
    config = DatasiteConfig.create(tmp_path / "site", "site")
    text = config.config_path.read_text()
    assert "store: null" in text
    config.config_path.write_text(text.replace("store: null", "store: mysql://u:hunter2@h/d"))
    with pytest.raises(ConfigError, match="store must be a database URL") as refused:
        DatasiteConfig.load(config.directory)
    assert "hunter2" not in str(refused.value)
    # The key's earlier name is still read.
    config.config_path.write_text(text.replace("store: null", "db_url: sqlite:////x/y.db"))
    assert DatasiteConfig.load(config.directory).database_url == "sqlite:////x/y.db"


# --- datasites made before the migrations ------------------------------------------------------
def pre_migration_schema(url: str, late_columns: bool) -> None:
    """The tables as the store made them before Alembic: ``create_all`` of the models,
    with (``late_columns``) or without the columns and tables added since."""
    legacy = sa.MetaData()
    for table in Base.metadata.sorted_tables:
        if table.name in AFTER_BASELINE_TABLES or (not late_columns and table.name in LATE_TABLES):
            continue
        dropped = set() if late_columns else LATE_COLUMNS.get(table.name, set())
        dropped |= AFTER_BASELINE_COLUMNS.get(table.name, set())
        kept = [column._copy() for column in table.columns if column.name not in dropped]
        for column in kept:
            if column.index and f"ix_{table.name}_{column.name}" in AFTER_BASELINE_INDEXES:
                column.index = None
        together = [  # composite unique constraints (a column's own unique=True is copied)
            sa.UniqueConstraint(*[c.name for c in constraint.columns])
            for constraint in list(table.constraints)
            if isinstance(constraint, sa.UniqueConstraint) and len(constraint.columns) > 1
        ]
        links = [
            sa.ForeignKeyConstraint([c.name for c in fk.columns],
                                    [e.target_fullname for e in fk.elements])
            for fk in table.foreign_key_constraints
            if not {c.name for c in fk.columns} & dropped
        ]  # fmt: skip
        sa.Table(table.name, legacy, *kept, *together, *links)
    engine = sa.create_engine(url)
    legacy.create_all(engine)
    engine.dispose()


def fill_old_store(url: str) -> tuple[str, int]:
    """Rows as an old server wrote them (no late columns used); alice's token, a request id."""
    token = new_token()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO users (id, name, role, token_hash, created_at) "
                    "VALUES (1, 'alice', 'researcher', :h, '2026-01-02 03:04:05.000000')"),
            {"h": hash_token(token)},
        )  # fmt: skip
    engine.dispose()
    old = Store(url, upgrade=False)
    alice = type("OldUser", (), {"id": 1, "name": "alice"})()
    old.create_session("s1", alice)
    request = old.create_request("s1", alice, "print('old')", (NewPush("m", "int", b"\x80"),))
    body = OutputItem("stream", {"name": "stdout", "text": "old\n"}).canonical_bytes()
    with old.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO outputs (request_id, seq, msg_type, origin, body, sha256, size, "
                "state, verdict, findings, summary, comment, created_at) VALUES (:r, 0, "
                "'stream', 'kernel', :body, :sha, :size, 'pending', 'review', '[]', 'held', "
                "'', '2026-01-02 03:04:06')"
            ),
            {"r": request.id, "body": body.decode(), "sha": sha256(body).hexdigest(),
             "size": len(body)},
        )  # fmt: skip
    old.audit("admin-cli", "user.create", "user:1", name="alice")
    old.close()
    return token, request.id


@pytest.mark.parametrize("late_columns", [False, True], ids=["oldest", "latest"])
def test_a_pre_migration_sqlite_datasite_is_adopted_without_data_loss(
    tmp_path: Path, late_columns: bool
) -> None:
    url = f"sqlite:///{tmp_path / 'datasite.db'}"
    pre_migration_schema(url, late_columns)
    token, request_id = fill_old_store(url)
    old = Store(url, upgrade=False)
    before = (old.counts(), [entry.hash for entry in old.audit_entries()])
    old.close()

    store = Store(url)  # what init, serve and every command now do
    try:
        assert (store.counts(), [entry.hash for entry in store.audit_entries()]) == before
        assert schema_differences(store.engine) == []
        assert store.user_by_token(token).name == "alice"
        assert store.get_request(request_id).code == "print('old')"
        assert [p.data for p in store.pushes_of(request_id)] == [b"\x80"]
        (output,) = store.outputs_of(request_id)
        assert (output.state, output.parent_id, output.note) == ("pending", None, None)
        # The new columns and tables work on the adopted store.
        store.apply_filter_decision(output.id, FilterDecision(Verdict.REVIEW, ()), "rules")
        variant = store.add_variant(output, OutputItem("stream", {"text": "x"}), "suppressed", "n")
        assert variant.parent_id == output.id
        store.set_budget("alice", "heart", 0.5)
        assert store.verify_audit() == []
    finally:
        store.close()


def migrate(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "remote_kernel.cli", "datasite", "migrate", str(directory)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def test_migrate_command_on_an_old_sqlite_datasite(tmp_path: Path) -> None:
    config = DatasiteConfig.create(tmp_path / "site", "site")
    pre_migration_schema(config.database_url, late_columns=True)
    token, _ = fill_old_store(config.database_url)
    due = migrate(config.directory, "--check")
    assert (
        due.returncode == 1
        and f"revision none, newest {migrations.HEAD}: an upgrade is due" in due.stdout
    )
    done = migrate(config.directory)
    assert done.returncode == 0, done.stderr
    assert f"upgraded from revision none to {migrations.HEAD}" in done.stdout
    again = migrate(config.directory)
    assert f"already at the newest revision {migrations.HEAD}" in again.stdout
    assert migrate(config.directory, "--check").returncode == 0
    store = Store(config.database_url)
    assert store.user_by_token(token).name == "alice" and store.verify_audit() == []
    store.close()


def test_serve_adopts_an_old_sqlite_datasite_by_itself(tmp_path: Path) -> None:
    config = DatasiteConfig.create(tmp_path / "site", "site")
    pre_migration_schema(config.database_url, late_columns=False)
    token, request_id = fill_old_store(config.database_url)
    site = RunningDatasite(config.directory, "site", free_port(), {"alice": token})
    site.start()
    try:
        seen = httpx.get(f"{site.url}/api/requests/{request_id}", headers=site.headers("alice"))
        assert seen.status_code == 200 and seen.json()["code"] == "print('old')", seen.text
    finally:
        site.stop()
    engine = sa.create_engine(config.database_url)
    with engine.connect() as conn:
        assert migrations.current_revision(conn) == migrations.HEAD
    engine.dispose()


def test_init_with_a_postgresql_store(tmp_path: Path, postgres_cluster: PostgresCluster) -> None:
    """``init --store URL`` writes ``store:``; the schema is made in PostgreSQL at once."""
    url = postgres_cluster.new_database().replace("rk@", "rk:not-shown@")  # trust auth
    directory = tmp_path / "site"
    cli = [sys.executable, "-m", "remote_kernel.cli", "datasite"]
    made = subprocess.run([*cli, "init", str(directory), "--name", "site", "--store", url],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert DatasiteConfig.load(directory).database_url == url
    assert not (directory / "datasite.db").exists()
    checked = migrate(directory, "--check")
    assert checked.returncode == 0 and "up to date" in checked.stdout
    assert "not-shown" not in checked.stdout and "***" in checked.stdout
    script = migrate(directory, "--sql")  # PostgreSQL's dialect, without connecting
    assert script.returncode == 0, script.stderr
    assert "CREATE TABLE audit" in script.stdout and "BIGINT" in script.stdout
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in script.stdout
    assert "ALTER TABLE sessions ADD COLUMN replica" in script.stdout
    assert f"SET version_num='{migrations.HEAD}'" in script.stdout


# --- a served datasite on PostgreSQL -----------------------------------------------------------
def test_a_served_datasite_on_postgresql_runs_a_cell_end_to_end(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """A real ``datasite serve`` and a real kernel, every row in PostgreSQL, none in SQLite."""
    url = postgres_cluster.new_database()
    site = make_datasite(tmp_path, store=url)
    site.start()
    client = Datasite(site.url, site.tokens["alice"])
    try:
        request = client.run("print(len(rk.data('heart')) > 0)")
        request.wait(120, until="finished")
        assert request.status == "completed"
        (output,) = request.outputs
        assert output.state == "pending"
        review = httpx.post(f"{site.url}/api/outputs/{output.id}/review",
                            json={"decision": "approve"}, headers=site.headers("bob"))  # fmt: skip
        assert review.status_code == 200, review.text
        request.wait(30)
        assert request.outputs[0].text == "True\n"
    finally:
        client.close()
        site.stop()
    assert not (site.directory / "datasite.db").exists()
    engine = sa.create_engine(url)
    with engine.connect() as db:
        states = db.execute(sa.text("SELECT state, decided_by FROM outputs")).all()
        actions = set(db.execute(sa.text("SELECT action FROM audit")).scalars())
    engine.dispose()
    assert states == [("released", "bob")]
    assert {"request.submit", "output.record", "output.released"} <= actions
    store = Store(url)
    assert store.verify_audit() == []
    store.close()


def test_a_served_datasite_survives_a_postgresql_crash(
    tmp_path: Path, postgres_cluster: PostgresCluster
) -> None:
    """PostgreSQL killed (immediate stop: WAL replay on start) under a running datasite:
    what was acknowledged is still there, and the server serves again by itself."""
    site = make_datasite(tmp_path, store=postgres_cluster.new_database())
    site.start()
    client = Datasite(site.url, site.tokens["alice"])
    try:
        before = client.run("print('before')")
        before.wait(120, until="finished")
        (held,) = before.outputs
        postgres_cluster.crash_and_restart()
        # Connections the crash killed are replaced (pool pre-ping), not reported as errors.
        seen = httpx.get(f"{site.url}/api/requests/{before.id}", headers=site.headers("alice"))
        assert seen.status_code == 200, seen.text
        assert [o["id"] for o in seen.json()["outputs"]] == [held.id]
        review = httpx.post(f"{site.url}/api/outputs/{held.id}/review",
                            json={"decision": "approve"}, headers=site.headers("bob"))  # fmt: skip
        assert review.status_code == 200, review.text
        after = client.run("print('after')")
        after.wait(120, until="finished")
        assert after.status == "completed" and after.id > before.id
    finally:
        client.close()
        site.stop()
    store = site.store()
    assert store.get_output(held.id).state == "released"
    assert store.verify_audit() == []
    store.close()
