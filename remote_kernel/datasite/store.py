"""Durable state of a datasite: users, sessions, requests, outputs, reviews, audit.

SQLAlchemy 2 over SQLite (WAL, ``synchronous=FULL``) by default, or PostgreSQL
(psycopg 3) when ``store:`` in datasite.yaml says ``postgresql+psycopg://…``; the
schema is Alembic's (:mod:`remote_kernel.datasite.migrations`), upgraded when a
store opens. Every write is one short transaction that also appends to the
hash-chained audit log, so a state change and its audit entry are committed
together or not at all (invariants 5 and 6). Write transactions are serialised,
so that writers (threads, the command line, server replicas) never fork the audit
chain nor act on a state another writer is changing: on SQLite they start with
``BEGIN IMMEDIATE``, on PostgreSQL they first take one transaction-scoped advisory
lock (:data:`WRITER_LOCK`). Reads are not serialised.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import secrets
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Connection,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.engine import Row, make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from remote_kernel.datasite import migrations
from remote_kernel.datasite.config import ConfigError
from remote_kernel.protocol.errors import (
    BudgetExhausted,
    Conflict,
    InputError,
    NotFound,
    PermissionDenied,
)
from remote_kernel.protocol.models import (
    FilterDecision,
    OutputItem,
    OutputState,
    RequestStatus,
    Role,
    Verdict,
    canonical_json,
)

TOKEN_PREFIX = "rk_"  # noqa: S105 (a prefix that makes leaked tokens greppable)
GENESIS_HASH = "0" * 64


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def hash_token(token: str) -> str:
    """Tokens are 256-bit random strings, so a plain SHA-256 is a safe one-way hash."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    #: After this moment (UTC) the token is refused; None: it does not expire.
    expires_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def role_enum(self) -> Role:
        return Role(self.role)

    def token_state(self, now: datetime | None = None) -> str:
        """``active``, ``revoked`` or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= (now or utcnow()):
            return "expired"
        return "active"


class KernelSession(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(default=None)
    kernel_pid: Mapped[int | None] = mapped_column(default=None)
    #: The server replica that runs this session's requests (its kernel lives there).
    replica: Mapped[str | None] = mapped_column(String(64), index=True)


class Request(Base):
    __tablename__ = "requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    code: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=RequestStatus.QUEUED.value, index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Replica(Base):
    """A running ``datasite serve`` process and its lease (renewed by its heartbeat)."""

    __tablename__ = "replicas"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[datetime] = mapped_column()
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)


class Push(Base):
    """An object a researcher sent along with a request (cloudpickle bytes, never loaded here)."""

    __tablename__ = "pushes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    type_name: Mapped[str] = mapped_column(String(256), default="")
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)


@dataclass(frozen=True)
class NewPush:
    """A validated push, before it is stored."""

    name: str
    type_name: str
    data: bytes


class Output(Base):
    __tablename__ = "outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("requests.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    msg_type: Mapped[str] = mapped_column(String(32))
    # "kernel" (emitted by the researcher's kernel), or made by the datasite: "query"
    # (the sound tier), "suppressed" (a variant of a kernel table), "error" (type + lines).
    origin: Mapped[str] = mapped_column(String(16), default="kernel")
    #: For a variant: the output it may be released in place of (same request and seq).
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("outputs.id"), default=None, index=True
    )
    #: For a variant: what the datasite did to the original ("3 cell(s) under 10 blanked").
    note: Mapped[str | None] = mapped_column(Text, default=None)
    # The exact canonical bytes checked and released (invariant 2), as UTF-8 text.
    body: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=OutputState.PENDING.value)
    verdict: Mapped[str | None] = mapped_column(String(16), default=None)
    findings: Mapped[list[Any]] = mapped_column(default=list)
    summary: Mapped[str] = mapped_column(Text, default="awaiting the output filter")
    decided_by: Mapped[str | None] = mapped_column(String(64), default=None)
    decided_at: Mapped[datetime | None] = mapped_column(default=None)
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    @property
    def item(self) -> OutputItem:
        parsed = json.loads(self.body)
        return OutputItem(msg_type=parsed["msg_type"], content=parsed["content"])


class Review(Base):
    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("outputs.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Budget(Base):
    """A researcher's privacy budget on one dataset (set by an admin) and what is spent of it.

    Amounts are integers in :data:`EPSILON_UNIT` and :data:`DELTA_UNIT` (see
    :func:`to_units`), so that sums and comparisons in SQL are exact.
    """

    __tablename__ = "budgets"
    __table_args__ = (UniqueConstraint("user_id", "dataset"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    dataset: Mapped[str] = mapped_column(String(128))
    epsilon_total: Mapped[int] = mapped_column(BigInteger)
    delta_total: Mapped[int] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class BudgetCharge(Base):
    """One charge against a budget: committed before the answer it paid for is released."""

    __tablename__ = "budget_charges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    budget_id: Mapped[int] = mapped_column(ForeignKey("budgets.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    dataset: Mapped[str] = mapped_column(String(128))
    epsilon: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(BigInteger)
    #: What was paid for: a request id and/or the SHA-256 of the query's text.
    what: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


#: Budgets count epsilon in micro-epsilon: no query is meaningfully finer than 1e-6.
EPSILON_UNIT = Decimal("1e-6")
#: ... and delta in units of 1e-18 (deltas are small, 1e-5 to 1e-12; below 1 fits an int64).
DELTA_UNIT = Decimal("1e-18")
MAX_EPSILON = 1_000_000.0
#: Float representation error forgiven when rounding, in units (1e-9 epsilon).
_SLACK = Decimal("0.001")


def to_units(amount: float, unit: Decimal, charge: bool) -> int:
    """An amount of epsilon or delta as an integer number of ``unit``: exact in SQL.

    Why integers and not floats: a ledger adds and compares, and floats do neither
    exactly (0.1 + 0.1 + 0.1 > 0.3), so three queries at 0.1 would not fit a budget of
    0.3. Why not Decimal columns: SQLite stores NUMERIC as floats. Integers are exact on
    SQLite and PostgreSQL alike, and ``spent + charge <= total`` runs in the database.
    The float is read through its shortest repr (0.1 is "0.1", not 0.1000000000000000055),
    an error under a thousandth of a unit is forgiven (0.30000000000000004 is 0.3), and
    otherwise a charge is rounded up and a total down: the ledger never undercharges,
    so 1/3 costs 0.333334 and three of them do not fit 1.0 (ask for 0.333333).
    """
    exact = Decimal(repr(float(amount))) / unit
    if charge:
        return int((exact - _SLACK).to_integral_value(ROUND_CEILING))
    return int((exact + _SLACK).to_integral_value(ROUND_FLOOR))


def from_units(units: int, unit: Decimal) -> float:
    return float(units * unit)


def format_units(units: int, unit: Decimal) -> str:
    """The exact decimal of an amount, without trailing zeros: "0.05", "1.0", "0.000001"."""
    shown = format((units * unit).normalize(), "f")
    return shown if "." in shown else shown + ".0"


def _checked_units(amount: float, name: str, unit: Decimal, charge: bool) -> int:
    """Validate an epsilon or delta (finite, in range) and convert it; InputError if not."""
    is_number = isinstance(amount, (int, float)) and not isinstance(amount, bool)
    limit = MAX_EPSILON if unit == EPSILON_UNIT else 1.0
    if not is_number or not 0.0 <= amount < limit:  # also refuses NaN and infinities
        raise InputError(f"{name} must be a number from 0 up to (not including) {int(limit)}.")
    units = to_units(amount, unit, charge)
    if charge and unit == EPSILON_UNIT and units <= 0:
        raise InputError(f"a DP query must spend a positive epsilon, got {amount!r}.")
    return units


def _checked_text(value: str, what: str, max_chars: int | None = None) -> str:
    """``value`` if both backends can store it as it is, else InputError (nothing stored).

    PostgreSQL refuses NUL characters in text and enforces VARCHAR lengths, where SQLite
    takes both silently: refusing them here on both keeps the backends alike and the
    error clear (Python source cannot contain NUL anyway).
    """
    if "\x00" in value:
        raise InputError(f"{what} must not contain NUL (\\x00) characters")
    if max_chars is not None and len(value) > max_chars:
        raise InputError(f"{what} is longer than {max_chars} characters")
    return value


@dataclass(frozen=True)
class Charge:
    """A committed charge, and what is left of the budget after it."""

    id: int
    user: str
    dataset: str
    epsilon: float
    delta: float
    what: str
    at: datetime
    epsilon_left: float
    delta_left: float


@dataclass(frozen=True)
class BudgetLine:
    """One researcher's budget on one dataset: totals, spent, left (floats of exact units)."""

    user: str
    dataset: str
    epsilon_total: float
    epsilon_spent: float
    epsilon_left: float
    delta_total: float
    delta_spent: float
    delta_left: float
    charges: int
    updated_at: datetime


_BUDGETS = Budget.__table__
_CHARGES = BudgetCharge.__table__
#: The check and the charge in one statement: it changes a row only if the charge fits.
#: Atomic on any database without a lock mode (PostgreSQL re-checks the WHERE on the row
#: version it locks), and under SQLite's BEGIN IMMEDIATE writers are serialized anyway.
_CHARGE_BUDGET = (
    _BUDGETS.update()
    .where(
        _BUDGETS.c.user_id == bindparam("uid"),
        _BUDGETS.c.dataset == bindparam("ds"),
        _BUDGETS.c.epsilon_spent + bindparam("e") <= _BUDGETS.c.epsilon_total,
        _BUDGETS.c.delta_spent + bindparam("d") <= _BUDGETS.c.delta_total,
    )
    .values(
        epsilon_spent=_BUDGETS.c.epsilon_spent + bindparam("e"),
        delta_spent=_BUDGETS.c.delta_spent + bindparam("d"),
        updated_at=bindparam("at"),
    )
    .returning(*_BUDGETS.c)
)
_INSERT_CHARGE = _CHARGES.insert().returning(_CHARGES.c.id)
_GET_BUDGET = select(_BUDGETS).where(
    _BUDGETS.c.user_id == bindparam("uid"), _BUDGETS.c.dataset == bindparam("ds")
)


def _budget_line(row: Row[Any]) -> BudgetLine:
    """A budgets row (with its user's name and its number of charges) in plain amounts."""
    eps, dlt = EPSILON_UNIT, DELTA_UNIT
    return BudgetLine(
        row.user_name, row.dataset,
        from_units(row.epsilon_total, eps), from_units(row.epsilon_spent, eps),
        from_units(max(0, row.epsilon_total - row.epsilon_spent), eps),
        from_units(row.delta_total, dlt), from_units(row.delta_spent, dlt),
        from_units(max(0, row.delta_total - row.delta_spent), dlt),
        int(row[-1]), row.updated_at,
    )  # fmt: skip


def audit_hash(
    prev_hash: str, at: datetime, actor: str, action: str, target: str, detail: dict[str, Any]
) -> str:
    payload = canonical_json(
        {
            "prev": prev_hash,
            "at": at.isoformat(),
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail,
        }
    )
    return hashlib.sha256(payload).hexdigest()


# --- prebuilt statements for the path every remote cell takes ------------------------
# Each cell passes through create_request, set_request_status (twice), add_output and
# apply_filter_decision. Through the ORM's unit of work each of those cost about 2 ms of
# CPU, most of a datasite's work per cell; statements built once and run on the
# transaction's connection cost a third of that (benchmarks/roundtrip.py, fanout.py).
_REQUESTS = Request.__table__
_OUTPUTS = Output.__table__
_AUDIT = AuditEntry.__table__
_LAST_AUDIT_HASH = select(_AUDIT.c.hash).order_by(_AUDIT.c.id.desc()).limit(1)
_INSERT_AUDIT = _AUDIT.insert()
_INSERT_REQUEST = _REQUESTS.insert().returning(*_REQUESTS.c)
_GET_SESSION = select(KernelSession.__table__).where(
    KernelSession.__table__.c.id == bindparam("row_id")
)
_GET_REQUEST = select(_REQUESTS).where(_REQUESTS.c.id == bindparam("row_id"))
_INSERT_OUTPUT = _OUTPUTS.insert().returning(*_OUTPUTS.c)
_GET_OUTPUT = select(_OUTPUTS).where(_OUTPUTS.c.id == bindparam("row_id"))
# Variants share their original's seq and are not counted: the researcher's numbering of
# outputs must not show that one was made.
_COUNT_OUTPUTS = select(func.count(_OUTPUTS.c.id)).where(
    _OUTPUTS.c.request_id == bindparam("request_id"), _OUTPUTS.c.parent_id.is_(None)
)
_UPDATES: dict[tuple[str, tuple[str, ...]], Any] = {}
_SESSIONS = KernelSession.__table__
#: queued -> running, only if still queued (and, for a replica, only in its own session).
_START_ANY = (
    _REQUESTS.update()
    .where(
        _REQUESTS.c.id == bindparam("row_id"),
        _REQUESTS.c.status == RequestStatus.QUEUED.value,
    )
    .values(status=RequestStatus.RUNNING.value, started_at=bindparam("at"))
    .returning(*_REQUESTS.c)
)
_START_OWNED = _START_ANY.where(
    _REQUESTS.c.session_id.in_(
        select(_SESSIONS.c.id).where(_SESSIONS.c.replica == bindparam("replica"))
    )
)


def _update_returning(table: Any, columns: tuple[str, ...]) -> Any:
    """``UPDATE table SET columns WHERE id = :row_id RETURNING *``, built once per shape."""
    key = (table.name, columns)
    statement = _UPDATES.get(key)
    if statement is None:
        statement = _UPDATES[key] = (
            table.update()
            .where(table.c.id == bindparam("row_id"))
            .values({name: bindparam(name) for name in columns})
            .returning(*table.c)
        )
    return statement


def _finish_statement(columns: tuple[str, ...]) -> Any:
    """Like :func:`_update_returning` for requests, only while queued or running."""
    key = ("requests-finish", columns)
    statement = _UPDATES.get(key)
    if statement is None:
        unfinished = (RequestStatus.QUEUED.value, RequestStatus.RUNNING.value)
        statement = _UPDATES[key] = (
            _REQUESTS.update()
            .where(_REQUESTS.c.id == bindparam("row_id"), _REQUESTS.c.status.in_(unfinished))
            .values({name: bindparam(name) for name in columns})
            .returning(*_REQUESTS.c)
        )
    return statement


def _update(conn: Connection, table: Any, row_id: int | str, **values: Any) -> Row[Any] | None:
    statement = _update_returning(table, tuple(sorted(values)))
    return conn.execute(statement, {"row_id": row_id, **values}).first()


def _insert_output(conn: Connection, item: OutputItem, **columns: Any) -> Output:
    """Insert an output row holding ``item``'s canonical bytes (what is checked and released)."""
    body = item.canonical_bytes()
    values = {
        "msg_type": item.msg_type,
        "body": body.decode(),
        "sha256": hashlib.sha256(body).hexdigest(),
        "size": len(body),
        **columns,
    }
    return Output(**conn.execute(_INSERT_OUTPUT, values).one()._mapping)


#: The advisory lock every PostgreSQL write transaction takes first (any constant; ours),
#: released at commit or rollback. Why every write and not only the audit append: each
#: write appends to the chain anyway, and taking the lock first (as SQLite's BEGIN
#: IMMEDIATE does) means no writer holds it while waiting for a row lock, so writers
#: cannot deadlock, and check-then-write code (a name taken? a vote cast?) stays correct
#: under READ COMMITTED, exactly as on SQLite.
WRITER_LOCK = 0x726B_7772  # "rkwr"
_TAKE_WRITER_LOCK = select(func.pg_advisory_xact_lock(WRITER_LOCK))


def _make_engine(url: str) -> Any:
    """An engine for ``url`` with what the store needs of its dialect.

    ``postgresql://`` means psycopg 3 (SQLAlchemy's default driver would be psycopg2).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _begin_immediate)
        return engine
    if backend == "postgresql":
        if importlib.util.find_spec("psycopg") is None:
            raise ConfigError(
                "a PostgreSQL store needs psycopg 3: pip install 'remote_kernel[postgresql]'"
            )
        # pre_ping: a connection the database server dropped (restart, failover) is
        # replaced instead of failing the next request.
        parsed = parsed.set(drivername="postgresql+psycopg")
        return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)
    raise ConfigError(
        f"unsupported store {parsed.drivername!r}: use sqlite:///PATH or "
        "postgresql+psycopg://USER:PASSWORD@HOST[:PORT]/DATABASE"
    )


def _begin_immediate(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" hook decide
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Store:
    """All reads and writes of datasite state go through here."""

    def __init__(self, url: str, upgrade: bool = True) -> None:
        """Open the store at ``url``, upgrading its schema to the newest revision
        (``upgrade=False``: as it is, for Alembic's own env.py)."""
        self.engine = _make_engine(url)
        self._serialise_writes = self.engine.dialect.name == "postgresql"
        if upgrade:
            try:
                migrations.ensure_current(self.engine)
            except OperationalError as exc:  # down, refused, wrong password: say so, briefly
                where = self.engine.url.render_as_string(hide_password=True)
                reason = str(exc.orig or exc).strip().splitlines()[0]
                raise ConfigError(f"cannot open the store {where}: {reason}") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._user_names: dict[int, str] = {}

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One write transaction through the ORM (serialised with every other writer)."""
        with self._sessions() as session, session.begin():
            if self._serialise_writes:
                session.execute(_TAKE_WRITER_LOCK)
            yield session

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction without the ORM, for the per-cell path."""
        with self.engine.begin() as conn:
            if self._serialise_writes:
                conn.execute(_TAKE_WRITER_LOCK)
            yield conn

    # --- audit ---------------------------------------------------------------------------
    def _audit(
        self, db: Session | Connection, actor: str, action: str, target: str = "", **detail: Any
    ) -> None:
        # Runs in every write transaction, so it works on the connection: the previous
        # hash, then one INSERT. In an ORM transaction it shares the session's connection.
        conn = db.connection() if isinstance(db, Session) else db
        prev = conn.execute(_LAST_AUDIT_HASH).scalar() or GENESIS_HASH
        at = utcnow()
        conn.execute(
            _INSERT_AUDIT,
            {
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "detail": detail,
                "prev_hash": prev,
                "hash": audit_hash(prev, at, actor, action, target, detail),
            },
        )

    def audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        with self.transaction() as db:
            self._audit(db, actor, action, target, **detail)

    def audit_entries(self) -> list[AuditEntry]:
        with self._sessions() as db:
            return list(db.scalars(select(AuditEntry).order_by(AuditEntry.id)))

    def verify_audit(self) -> list[str]:
        """Problems found in the hash chain (empty when intact)."""
        problems = []
        prev = GENESIS_HASH
        for entry in self.audit_entries():
            if entry.prev_hash != prev:
                problems.append(f"entry {entry.id}: chain broken (an entry before it changed)")
            expected = audit_hash(
                entry.prev_hash, entry.at, entry.actor, entry.action, entry.target, entry.detail
            )
            if expected != entry.hash:
                problems.append(f"entry {entry.id}: content does not match its hash")
            prev = entry.hash
        return problems

    # --- users ---------------------------------------------------------------------------
    def create_user(
        self,
        name: str,
        role: Role,
        actor: str = "admin-cli",
        expires_in: timedelta | None = None,
    ) -> tuple[User, str]:
        """Create a user and return it with its token; only the token's hash is kept."""
        _checked_text(name, "a user name", 64)
        token = new_token()
        if expires_in is not None and expires_in <= timedelta(0):
            raise ValueError("a token's lifetime must be positive")
        expires_at = utcnow() + expires_in if expires_in is not None else None
        with self.transaction() as db:
            if db.scalars(select(User).where(User.name == name)).first():
                raise Conflict(f"user {name!r} already exists")
            user = User(
                name=name, role=role.value, token_hash=hash_token(token), expires_at=expires_at
            )
            db.add(user)
            db.flush()
            extra = {"expires_at": expires_at.isoformat() + "Z"} if expires_at else {}
            self._audit(
                db, actor, "user.create", f"user:{user.id}", name=name, role=role.value, **extra
            )
        return user, token

    def user_by_token(self, token: str) -> User | None:
        """The active user holding ``token``; None for unknown, revoked or expired tokens."""
        with self._sessions() as db:
            user = db.scalars(select(User).where(User.token_hash == hash_token(token))).first()
            if user is None or user.token_state() != "active":
                return None
            return user

    def revoke_user(self, name: str, actor: str = "admin-cli") -> User:
        """Refuse ``name``'s token from now on (the user and their history stay)."""
        with self.transaction() as db:
            user = db.scalars(select(User).where(User.name == name)).first()
            if user is None:
                raise NotFound(f"no user {name!r}")
            if user.revoked_at is not None:
                raise Conflict(f"user {name!r} was already revoked at {user.revoked_at}Z")
            user.revoked_at = utcnow()
            self._audit(db, actor, "user.revoke", f"user:{user.id}", name=name)
        return user

    def users(self) -> list[User]:
        with self._sessions() as db:
            return list(db.scalars(select(User).order_by(User.id)))

    # --- sessions ------------------------------------------------------------------------
    def create_session(self, session_id: str, user: User) -> KernelSession:
        row = KernelSession(id=session_id, user_id=user.id, created_at=utcnow())
        with self._write() as conn:  # the columns every schema revision has, by name
            conn.execute(
                _SESSIONS.insert(),
                {"id": row.id, "user_id": row.user_id, "created_at": row.created_at},
            )
            self._audit(conn, user.name, "session.create", f"session:{session_id}")
        return row

    def get_session(self, session_id: str) -> KernelSession:
        with self.engine.connect() as conn:
            row = conn.execute(_GET_SESSION, {"row_id": session_id}).first()
        if row is None:
            raise NotFound(f"no session {session_id!r}")
        return KernelSession(**row._mapping)

    def sessions_of(self, user_id: int) -> list[KernelSession]:
        with self._sessions() as db:
            query = select(KernelSession).where(KernelSession.user_id == user_id)
            return list(db.scalars(query.order_by(KernelSession.created_at)))

    def close_session(self, session_id: str, actor: str) -> None:
        with self.transaction() as db:
            row = db.get(KernelSession, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            row.closed_at = row.closed_at or utcnow()
            self._audit(db, actor, "session.close", f"session:{session_id}")

    def set_kernel_pid(self, session_id: str, pid: int | None) -> None:
        with self.transaction() as db:
            row = db.get(KernelSession, session_id)
            if row is not None:
                row.kernel_pid = pid

    def open_sessions_with_kernels(self) -> list[KernelSession]:
        with self._sessions() as db:
            query = select(KernelSession).where(KernelSession.kernel_pid.is_not(None))
            return list(db.scalars(query))

    # --- requests ------------------------------------------------------------------------
    def create_request(
        self,
        session_id: str,
        user: User,
        code: str,
        pushes: tuple[NewPush, ...] = (),
        first: Callable[[Connection], None] | None = None,
    ) -> Request:
        """Store a request and its pushed objects together (one transaction, one audit entry).

        ``first``: run in the same transaction before the insert (a replica claims the
        session there, so that no other replica sees the request without an owner).
        """
        _checked_text(code, "the code")
        for push in pushes:
            _checked_text(push.name, "a push's name", 128)
            _checked_text(push.type_name, "a push's type", 256)
        with self._write() as conn:
            if first is not None:
                first(conn)
            row = conn.execute(
                _INSERT_REQUEST, {"session_id": session_id, "user_id": user.id, "code": code}
            ).one()
            request = Request(**row._mapping)
            pushed = []
            for push in pushes:
                digest = hashlib.sha256(push.data).hexdigest()
                conn.execute(
                    Push.__table__.insert(),
                    {
                        "request_id": request.id,
                        "name": push.name,
                        "type_name": push.type_name,
                        "size": len(push.data),
                        "sha256": digest,
                        "data": push.data,
                    },
                )
                pushed.append({"name": push.name, "sha256": digest, "size": len(push.data)})
            self._audit(
                conn,
                user.name,
                "request.submit",
                f"request:{request.id}",
                session=session_id,
                code_sha256=hashlib.sha256(code.encode()).hexdigest(),
                **({"pushes": pushed} if pushed else {}),
            )
        return request

    def pushes_of(self, request_id: int) -> list[Push]:
        with self._sessions() as db:
            query = select(Push).where(Push.request_id == request_id).order_by(Push.id)
            return list(db.scalars(query))

    def set_request_status(
        self, request_id: int, status: RequestStatus, message: str = ""
    ) -> Request:
        changes: dict[str, Any] = {"status": status.value}
        if message:  # the datasite's words, maybe quoting a kernel's: no NUL on PostgreSQL
            changes["message"] = message.replace("\x00", "\ufffd")
        if status is RequestStatus.RUNNING:
            changes["started_at"] = utcnow()
        elif status.finished:
            changes["finished_at"] = utcnow()
        with self._write() as conn:
            if status.finished:  # a finished request never changes again (a replica that
                # lost a session may finish a request its new owner already ended)
                row = conn.execute(_finish_statement(tuple(sorted(changes))),
                                   {"row_id": request_id, **changes}).first()  # fmt: skip
                if row is None:
                    found = conn.execute(_GET_REQUEST, {"row_id": request_id}).first()
                    if found is None:
                        raise NotFound(f"no request {request_id}")
                    return Request(**found._mapping)
            else:
                row = _update(conn, _REQUESTS, request_id, **changes)
            if row is None:
                raise NotFound(f"no request {request_id}")
            self._audit(
                conn, "datasite", "request.status", f"request:{request_id}", status=status.value
            )
        return Request(**row._mapping)

    def start_request(self, request_id: int, replica: str | None = None) -> Request | None:
        """Mark a queued request running; None if it is no longer queued, or (``replica``
        given) its session is no longer that replica's. The one place a request starts,
        so that no request runs twice, whichever replicas hold it in their queues."""
        statement = _START_ANY if replica is None else _START_OWNED
        values = {"row_id": request_id, "replica": replica, "at": utcnow()}
        with self._write() as conn:
            row = conn.execute(statement, values).first()
            if row is None:
                return None
            status = RequestStatus.RUNNING.value
            where = {"replica": replica} if replica is not None else {}
            self._audit(
                conn, "datasite", "request.status", f"request:{request_id}", status=status, **where
            )
        return Request(**row._mapping)

    def get_user(self, user_id: int) -> User:
        with self._sessions() as db:
            user = db.get(User, user_id)
        if user is None:
            raise NotFound(f"no user {user_id}")
        return user

    def get_request(self, request_id: int) -> Request:
        with self.engine.connect() as conn:
            row = conn.execute(_GET_REQUEST, {"row_id": request_id}).first()
        if row is None:
            raise NotFound(f"no request {request_id}")
        return Request(**row._mapping)

    def list_requests(
        self, user_id: int | None = None, status: str | None = None, limit: int = 500
    ) -> list[Request]:
        query = select(Request).order_by(Request.id.desc()).limit(limit)
        if user_id is not None:
            query = query.where(Request.user_id == user_id)
        if status is not None:
            query = query.where(Request.status == status)
        with self._sessions() as db:
            return list(db.scalars(query))

    def interrupt_unfinished_requests(self, message: str) -> list[int]:
        """At start-up: requests that were queued or running when the server died."""
        unfinished = [RequestStatus.QUEUED.value, RequestStatus.RUNNING.value]
        with self.transaction() as db:
            rows = list(db.scalars(select(Request).where(Request.status.in_(unfinished))))
            for row in rows:
                row.status = RequestStatus.INTERRUPTED.value
                row.message = message
                row.finished_at = utcnow()
                self._audit(
                    db,
                    "datasite",
                    "request.status",
                    f"request:{row.id}",
                    status=row.status,
                    reason="server restart",
                )
            return [row.id for row in rows]

    # --- outputs -------------------------------------------------------------------------
    def add_output(self, request_id: int, item: OutputItem, origin: str = "kernel") -> Output:
        """Record an output before anything else happens to it (pending, unchecked)."""
        with self._write() as conn:
            seq = conn.execute(_COUNT_OUTPUTS, {"request_id": request_id}).scalar()
            output = _insert_output(conn, item, request_id=request_id, seq=int(seq or 0),
                                    origin=origin)  # fmt: skip
            self._audit(
                conn,
                "kernel",
                "output.record",
                f"output:{output.id}",
                request=request_id,
                sha256=output.sha256,
                size=output.size,
            )
        return output

    def add_variant(self, parent: Output, item: OutputItem, origin: str, note: str) -> Output:
        """Record a datasite-made variant of ``parent`` (pending, unchecked), audited with
        its hash: it may later be released in the original's place."""
        with self._write() as conn:
            output = _insert_output(
                conn,
                item,
                request_id=parent.request_id,
                seq=parent.seq,
                origin=origin,
                parent_id=parent.id,
                note=note,
            )
            self._audit(
                conn,
                "datasite",
                "output.variant",
                f"output:{output.id}",
                request=parent.request_id,
                variant_of=parent.id,
                kind=origin,
                note=note,
                sha256=output.sha256,
                size=output.size,
            )
        return output

    def variants_of(self, output_ids: list[int]) -> dict[int, list[Output]]:
        """The variants of each of ``output_ids`` (one query per 500), oldest first."""
        found: dict[int, list[Output]] = {}
        with self._sessions() as db:
            for start in range(0, len(output_ids), 500):
                query = (
                    select(Output)
                    .where(Output.parent_id.in_(output_ids[start : start + 500]))
                    .order_by(Output.id)
                )
                for output in db.scalars(query):
                    found.setdefault(output.parent_id or 0, []).append(output)
        return found

    def released_variant_of(self, output_id: int) -> Output | None:
        """The variant released in place of ``output_id``, if any."""
        variants = self.variants_of([output_id]).get(output_id, [])
        return next((v for v in variants if v.state == OutputState.RELEASED.value), None)

    def apply_filter_decision(
        self, output_id: int, decision: FilterDecision, filter_name: str
    ) -> Output:
        verdict = {
            "verdict": decision.verdict.value,
            "findings": [f.to_json() for f in decision.findings],
            "summary": decision.summary(),
        }
        by = f"policy:{filter_name}"
        with self._write() as conn:
            if decision.verdict is Verdict.RELEASE:
                return self._decide(conn, output_id, OutputState.RELEASED, by, **verdict)
            if decision.verdict is Verdict.BLOCK:
                return self._decide(conn, output_id, OutputState.BLOCKED, by, **verdict)
            row = _update(conn, _OUTPUTS, output_id, **verdict)
            if row is None:
                raise NotFound(f"no output {output_id}")
            self._audit(
                conn, by, "output.hold", f"output:{output_id}", findings=len(decision.findings)
            )
        return Output(**row._mapping)

    def _get_output(self, conn: Connection, output_id: int) -> Output:
        row = conn.execute(_GET_OUTPUT, {"row_id": output_id}).first()
        if row is None:
            raise NotFound(f"no output {output_id}")
        return Output(**row._mapping)

    def _decide(
        self,
        conn: Connection,
        output_id: int,
        state: OutputState,
        by: str,
        comment: str = "",
        audit: dict[str, Any] | None = None,
        **also: Any,
    ) -> Output:
        """Give an output its final state (with ``also``: other columns) and audit it
        (``audit``: more detail for the entry)."""
        row = _update(
            conn,
            _OUTPUTS,
            output_id,
            state=state.value,
            decided_by=by,
            decided_at=utcnow(),
            comment=comment,
            **also,
        )
        if row is None:
            raise NotFound(f"no output {output_id}")
        output = Output(**row._mapping)
        detail: dict[str, Any] = {"request": output.request_id}
        if state is OutputState.RELEASED:
            detail["released_sha256"] = output.sha256
            detail["size"] = output.size
        if comment:
            detail["comment"] = comment
        detail.update(audit or {})
        self._audit(conn, by, f"output.{state.value}", f"output:{output.id}", **detail)
        return output

    def review_output(
        self,
        output_id: int,
        reviewer: User,
        approve: bool,
        comment: str = "",
        required_reviews: int = 1,
    ) -> Output:
        """Record one reviewer's vote and decide when the votes allow it.

        With ``required_reviews`` 1 the vote decides. With more (the two-person
        rule) each vote is recorded and audited (``output.vote``); the output is
        released when that many reviewers approved, denied when they all denied,
        and "conflicted" as soon as the votes disagree. Nobody reviews an output
        of their own request, nor votes twice on one output.
        """
        _checked_text(comment, "a review comment")
        with self._write() as conn:
            output, earlier = self._checked_vote(conn, output_id, reviewer)
            decision = "approve" if approve else "deny"
            conn.execute(
                Review.__table__.insert(),
                {
                    "output_id": output_id,
                    "reviewer_id": reviewer.id,
                    "decision": decision,
                    "comment": comment,
                },
            )
            if required_reviews <= 1:
                state = OutputState.RELEASED if approve else OutputState.DENIED
                decided = self._decide(conn, output_id, state, reviewer.name, comment)
                self._settle_variants(conn, decided)
                return decided
            votes = [*earlier, (reviewer.name, decision, comment)]
            self._audit(
                conn,
                reviewer.name,
                "output.vote",
                f"output:{output.id}",
                request=output.request_id,
                decision=decision,
                votes=len(votes),
                required=required_reviews,
                **({"comment": comment} if comment else {}),
            )
            decided = self._decide_by_votes(conn, output, votes, required_reviews)
            self._settle_variants(conn, decided)
            return decided

    def _settle_variants(self, conn: Connection, decided: Output) -> None:
        """Keep an original and its variants consistent, in the deciding vote's transaction.

        A released variant closes its original as ``denied`` (its bytes as they were
        never travel; the comment says what was released instead) and any other
        variant; a decided original closes its pending variants, so nothing of it can
        be released later by another path.
        """
        if decided.state == OutputState.PENDING.value:
            return
        parent_id = decided.parent_id
        if parent_id is not None and decided.state != OutputState.RELEASED.value:
            return
        if parent_id is not None:
            parent = self._get_output(conn, parent_id)
            if parent.state == OutputState.PENDING.value:
                comment = (
                    f"released with suppression as output {decided.id} ({decided.note}); "
                    "the table as the kernel printed it is not released"
                )
                by = decided.decided_by or "datasite"
                self._decide(conn, parent_id, OutputState.DENIED, by, comment,
                             audit={"superseded_by": decided.id})  # fmt: skip
        closer = parent_id if parent_id is not None else decided.id
        siblings = conn.execute(
            select(_OUTPUTS.c.id).where(
                _OUTPUTS.c.parent_id == closer, _OUTPUTS.c.state == OutputState.PENDING.value
            )
        ).scalars()
        for variant_id in list(siblings):
            comment = f"not needed: output {decided.id} was {decided.state}"
            self._decide(conn, variant_id, OutputState.DENIED, "datasite", comment)

    def _checked_vote(
        self, conn: Connection, output_id: int, reviewer: User
    ) -> tuple[Output, list[tuple[str, str, str]]]:
        """The output a vote is about and its earlier votes, if this reviewer may vote now.

        Conflict when it is decided or not yet checked, or the reviewer voted already;
        PermissionDenied for a vote on one's own request.
        """
        output = self._get_output(conn, output_id)
        if output.state != OutputState.PENDING.value:
            raise Conflict(
                f"output {output_id} is already {output.state}"
                + (f" by {output.decided_by}" if output.decided_by else "")
            )
        if output.parent_id is not None:  # a variant: only while its original waits
            parent = self._get_output(conn, output.parent_id)
            if parent.state != OutputState.PENDING.value:
                raise Conflict(f"output {output_id} is a variant of output {parent.id}, "
                               f"which is already {parent.state}")  # fmt: skip
        if output.verdict is None:
            raise Conflict(f"output {output_id} has not been checked by the filter yet")
        author = conn.execute(
            select(Request.user_id).where(Request.id == output.request_id)
        ).scalar()
        if author == reviewer.id:
            raise PermissionDenied("nobody may review an output of their own request")
        earlier = conn.execute(
            select(Review.reviewer_id, User.name, Review.decision, Review.comment)
            .join(User, User.id == Review.reviewer_id)
            .where(Review.output_id == output_id)
            .order_by(Review.id)
        ).all()
        if any(vote.reviewer_id == reviewer.id for vote in earlier):
            raise Conflict(
                f"{reviewer.name} already reviewed output {output_id}; another reviewer must decide"
            )
        return output, [(vote.name, vote.decision, vote.comment) for vote in earlier]

    def _decide_by_votes(
        self, conn: Connection, output: Output, votes: list[tuple[str, str, str]], required: int
    ) -> Output:
        """Two-person rule: conflicted as soon as votes differ, decided when enough agree."""
        decisions = {d for _, d, _ in votes}
        by = ", ".join(name for name, _, _ in votes)
        comments = "; ".join(f"{name}: {text}" for name, _, text in votes if text)
        if len(decisions) > 1:
            return self._decide(conn, output.id, OutputState.CONFLICTED, by, comments)
        if len(votes) >= required:
            approved = decisions == {"approve"}
            state = OutputState.RELEASED if approved else OutputState.DENIED
            return self._decide(conn, output.id, state, by, comments)
        return output

    def votes_of(self, output_ids: list[int]) -> dict[int, list[tuple[str, str, str]]]:
        """Each output's recorded votes as (reviewer name, "approve"/"deny", comment).

        One query for a whole review queue, oldest vote first; outputs without
        votes are absent from the result.
        """
        votes: dict[int, list[tuple[str, str, str]]] = {}
        with self.engine.connect() as conn:
            # In slices: SQLite caps the parameters of one statement (a long history page).
            for start in range(0, len(output_ids), 500):
                query = (
                    select(Review.output_id, User.name, Review.decision, Review.comment)
                    .join(User, User.id == Review.reviewer_id)
                    .where(Review.output_id.in_(output_ids[start : start + 500]))
                    .order_by(Review.id)
                )
                for output_id, name, decision, comment in conn.execute(query):
                    votes.setdefault(output_id, []).append((name, decision, comment))
        return votes

    def get_output(self, output_id: int) -> Output:
        with self.engine.connect() as conn:
            return self._get_output(conn, output_id)

    def outputs_of(self, request_id: int) -> list[Output]:
        with self._sessions() as db:
            query = (
                select(Output)
                .where(Output.request_id == request_id)
                .order_by(Output.seq, Output.id)
            )
            return list(db.scalars(query))

    def pending_outputs(self) -> list[Output]:
        with self._sessions() as db:
            # Variants are offered on their original's item, not queued on their own.
            query = (
                select(Output)
                .where(Output.state == OutputState.PENDING.value)
                .where(Output.verdict.is_not(None))
                .where(Output.parent_id.is_(None))
                .order_by(Output.id)
            )
            return list(db.scalars(query))

    def unchecked_outputs(self) -> list[Output]:
        """Outputs recorded but not yet filtered (the server died in between)."""
        with self._sessions() as db:
            query = select(Output).where(Output.verdict.is_(None)).order_by(Output.id)
            return list(db.scalars(query))

    def released_datasite_outputs(self, user_id: int, marker: str, limit: int = 50) -> list[Output]:
        """One researcher's released datasite-made tables whose body holds ``marker`` (a
        mime type, e.g. the DP tier's), newest first: what a reviewer is shown they hold.

        The marker narrows in SQL (a portable LIKE); callers still parse each body.
        """
        with self._sessions() as db:
            query = (
                select(Output)
                .join(Request, Request.id == Output.request_id)
                .where(Request.user_id == user_id, Output.origin == "query")
                .where(Output.state == OutputState.RELEASED.value, Output.parent_id.is_(None))
                .where(Output.body.contains(marker, autoescape=True))
                .order_by(Output.id.desc())
                .limit(limit)
            )
            return list(db.scalars(query))

    def user_name(self, user_id: int) -> str:
        """Names never change once created, so they are cached (a hot path)."""
        name = self._user_names.get(user_id)
        if name is None:
            with self._sessions() as db:
                user = db.get(User, user_id)
            if user is None:
                return f"user-{user_id}"
            name = self._user_names[user_id] = user.name
        return name

    def counts(self) -> dict[str, int]:
        """Row counts per table, used by tests to prove that bad input changed nothing."""
        with self._sessions() as db:
            return {
                model.__tablename__: int(db.scalar(select(func.count()).select_from(model)) or 0)
                for model in (User, KernelSession, Request, Output, Review, AuditEntry)
            }

    # --- privacy budgets -----------------------------------------------------------------
    def set_budget(
        self,
        user: User | str,
        dataset: str,
        epsilon: float,
        delta: float | None = None,
        actor: str = "admin-cli",
    ) -> BudgetLine:
        """Set a researcher's total budget on a dataset (audited ``budget.set``).

        ``delta`` None keeps the current total delta (0 for a new budget). A total below
        what is already spent is allowed: nothing more fits until it is raised, and what
        was spent stays recorded. The dataset's name is the caller's to check (datasets
        live in datasite.yaml, not in the store).
        """
        epsilon_total = _checked_units(epsilon, "epsilon", EPSILON_UNIT, charge=False)
        delta_total = None if delta is None else _checked_units(delta, "delta", DELTA_UNIT, False)
        with self._write() as conn:
            user_id, name = self._budget_holder(conn, user)
            row = conn.execute(_GET_BUDGET, {"uid": user_id, "ds": dataset}).first()
            if delta_total is None:
                delta_total = row.delta_total if row is not None else 0
            values = {"epsilon_total": epsilon_total, "delta_total": delta_total}
            values["updated_at"] = utcnow()
            if row is None:
                insert = _BUDGETS.insert().returning(_BUDGETS.c.id)
                new = {"user_id": user_id, "dataset": dataset, **values}
                budget_id = conn.execute(insert, new).scalar_one()
                previous: dict[str, float] = {}
            else:
                budget_id = row.id
                _update(conn, _BUDGETS, budget_id, **values)
                previous = {
                    "previous_epsilon": from_units(row.epsilon_total, EPSILON_UNIT),
                    "previous_delta": from_units(row.delta_total, DELTA_UNIT),
                }
            self._audit(
                conn,
                actor,
                "budget.set",
                f"budget:{budget_id}",
                user=name,
                dataset=dataset,
                epsilon=from_units(epsilon_total, EPSILON_UNIT),
                delta=from_units(delta_total, DELTA_UNIT),
                **previous,
            )
        return self.budgets(name, dataset)[0]

    def charge_budget(
        self, user: User | str, dataset: str, epsilon: float, delta: float = 0.0, what: str = ""
    ) -> Charge:
        """Charge ``(epsilon, delta)`` to a researcher's budget on a dataset, or refuse.

        Call it after the query is checked and planned and before anything is released:
        it returns once the charge and its audit entry (``budget.charge``) are committed
        (``synchronous=FULL``: on disk), so a crash after it can lose an answer, never a
        charge. Check and charge are one conditional UPDATE (``_CHARGE_BUDGET``), so
        concurrent queries cannot overspend. :class:`BudgetExhausted` (no budget, or not
        enough left) changes nothing: a smaller query still fits. ``what`` names what was
        paid for (a request id, the SHA-256 of the SQL).
        """
        (charge,) = self.charge_budgets(user, [dataset], epsilon, delta, what)
        return charge

    def charge_budgets(
        self,
        user: User | str,
        datasets: Sequence[str],
        epsilon: float,
        delta: float = 0.0,
        what: str = "",
    ) -> list[Charge]:
        """Charge ``(epsilon, delta)`` on *each* of ``datasets`` (a DP join reads two), or none.

        One transaction: every conditional UPDATE runs in it, and the first that does not
        fit raises :class:`BudgetExhausted` naming that dataset, which rolls back the
        charges already made -- on SQLite and PostgreSQL alike (plain UPDATE ... RETURNING
        and INSERT, no dialect-specific SQL). A dataset named twice is charged once.
        """
        e = _checked_units(epsilon, "epsilon", EPSILON_UNIT, charge=True)
        d = _checked_units(delta, "delta", DELTA_UNIT, charge=True)
        what, at = what[:256], utcnow()
        with self._write() as conn:
            user_id, name = self._budget_holder(conn, user)
            return [
                self._charge_one(conn, (user_id, name), dataset, (e, d), what, at)
                for dataset in dict.fromkeys(datasets)
            ]

    def _charge_one(
        self,
        conn: Connection,
        holder: tuple[int, str],
        dataset: str,
        units: tuple[int, int],
        what: str,
        at: datetime,
    ) -> Charge:
        """One dataset's conditional UPDATE, charge row and audit entry, in ``conn``'s
        transaction; BudgetExhausted (rolling the transaction back) if it does not fit."""
        (user_id, name), (e, d) = holder, units
        fitted = {"uid": user_id, "ds": dataset, "e": e, "d": d, "at": at}
        row = conn.execute(_CHARGE_BUDGET, fitted).first()
        if row is None:
            raise self._refusal(conn, user_id, dataset, e, d)
        charged = {"budget_id": row.id, "user_id": user_id, "dataset": dataset}
        charged.update(epsilon=e, delta=d, what=what, created_at=at)
        charge_id = conn.execute(_INSERT_CHARGE, charged).scalar_one()
        charge = Charge(
            id=charge_id,
            user=name,
            dataset=dataset,
            epsilon=from_units(e, EPSILON_UNIT),
            delta=from_units(d, DELTA_UNIT),
            what=what,
            at=at,
            epsilon_left=from_units(row.epsilon_total - row.epsilon_spent, EPSILON_UNIT),
            delta_left=from_units(row.delta_total - row.delta_spent, DELTA_UNIT),
        )
        self._audit(
            conn,
            name,
            "budget.charge",
            f"budget:{row.id}",
            dataset=dataset,
            epsilon=charge.epsilon,
            delta=charge.delta,
            what=what,
            charge=charge_id,
            epsilon_left=charge.epsilon_left,
        )
        return charge

    def _budget_holder(self, conn: Connection, user: User | str) -> tuple[int, str]:
        """A researcher's id and name; NotFound for an unknown name, InputError for a reviewer."""
        if isinstance(user, User):
            found: Any = user
        else:
            found = conn.execute(select(User.id, User.name, User.role).where(User.name == user))
            found = found.first()
            if found is None:
                raise NotFound(f"no user {user!r}")
        if found.role != Role.RESEARCHER.value:
            raise InputError(
                f"{found.name!r} is a {found.role}; privacy budgets are for researchers"
            )
        return found.id, found.name

    @staticmethod
    def _refusal(conn: Connection, user_id: int, dataset: str, e: int, d: int) -> BudgetExhausted:
        """Why a charge did not fit, in the words the researcher reads."""
        row = conn.execute(_GET_BUDGET, {"uid": user_id, "ds": dataset}).first()
        if row is None:
            return BudgetExhausted(
                f"you have no privacy budget on {dataset}, so DP queries there are refused "
                "— ask the datasite admin for one"
            )
        kind = "epsilon" if e > row.epsilon_total - row.epsilon_spent else "delta"
        sign, need, unit = ("ε", e, EPSILON_UNIT) if kind == "epsilon" else ("δ", d, DELTA_UNIT)
        total = getattr(row, f"{kind}_total")
        left = max(0, total - getattr(row, f"{kind}_spent"))
        return BudgetExhausted(
            f"this query needs {sign}={format_units(need, unit)} on {dataset}; you have "
            f"{sign}={format_units(left, unit)} left of {format_units(total, unit)} "
            "— ask the datasite admin for more"
        )

    def budgets(self, user: str | None = None, dataset: str | None = None) -> list[BudgetLine]:
        """Every budget (or one user's, one dataset's): totals, spent, left, charges made."""
        counted = (
            select(_CHARGES.c.budget_id, func.count().label("n"))
            .group_by(_CHARGES.c.budget_id)
            .subquery()
        )
        query = (
            select(_BUDGETS, User.name.label("user_name"), func.coalesce(counted.c.n, 0))
            .join(User, User.id == _BUDGETS.c.user_id)
            .outerjoin(counted, counted.c.budget_id == _BUDGETS.c.id)
            .order_by(User.name, _BUDGETS.c.dataset)
        )
        if user is not None:
            query = query.where(User.name == user)
        if dataset is not None:
            query = query.where(_BUDGETS.c.dataset == dataset)
        with self.engine.connect() as conn:
            return [_budget_line(row) for row in conn.execute(query)]
