"""Running a checked query in the process's locked-down, in-memory DuckDB.

Nothing here decides what may be asked (that is :mod:`remote_kernel.querylang.shape`)
or what may leave (the datasite's sound tier): it only makes sure a query sees the
tables it was handed and nothing else, and that a failure does not quote data.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import duckdb
import pandas as pd

from remote_kernel.protocol.errors import QueryRejected

if TYPE_CHECKING:
    from remote_kernel.querylang.parsed import ParsedQuery

_database_lock = threading.Lock()
_database_connection: duckdb.DuckDBPyConnection | None = None


def _database() -> duckdb.DuckDBPyConnection:
    """The process's one in-memory DuckDB, locked down before any query sees it.

    Replacement scans of Python variables are switched off (otherwise ``FROM x``
    would read any DataFrame named ``x`` in the caller's frames), extensions are
    not auto-installed or auto-loaded, external access (files, network, ATTACH,
    COPY, extensions) is disabled, and the configuration is locked so that no
    query can switch any of it back on. All are global settings, inherited by every
    cursor. The database holds no tables: each query's cursor registers its own.
    """
    global _database_connection
    with _database_lock:
        if _database_connection is None:
            con = duckdb.connect(":memory:")
            for setting in (
                "python_enable_replacements = false",
                "autoinstall_known_extensions = false",
                "autoload_known_extensions = false",
                "enable_external_access = false",
                "lock_configuration = true",
            ):
                con.execute(f"SET GLOBAL {setting}")
            _database_connection = con
        return _database_connection


_plain_frames: dict[int, tuple[weakref.ref[pd.DataFrame], pd.DataFrame]] = {}


def plain(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with categorical columns as plain values (converted once per frame).

    DuckDB registers a pandas categorical as an ENUM type whose values are the
    category set -- taken from the private data -- and prints that type in binder
    errors ("No function matches 'sum(ENUM('P00017', ...))'"), which are relayed.
    As plain values the type is VARCHAR (or the categories' own type): schema only.
    :func:`open_connection` applies it to every table, on both sides.
    """
    categorical = [c for c in frame.columns if isinstance(frame[c].dtype, pd.CategoricalDtype)]
    if not categorical:
        return frame
    cached = _plain_frames.get(id(frame))
    if cached is not None and cached[0]() is frame:
        return cached[1]
    converted = frame.astype({c: frame[c].cat.categories.dtype for c in categorical})
    _plain_frames[id(frame)] = (weakref.ref(frame), converted)
    for key, (ref, _) in list(_plain_frames.items()):
        if ref() is None:
            _plain_frames.pop(key, None)  # another thread may have dropped it already
    return converted


def open_connection(tables: Mapping[str, pd.DataFrame]) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that sees only ``tables`` and can touch nothing else.

    A cursor on the locked-down process database (see :func:`_database`: external
    access disabled, configuration locked -- ``read_csv('/etc/passwd')``, ``COPY ...
    TO`` and ``SET enable_external_access=true`` all fail), with ``tables``
    registered as zero-copy views, categorical columns as plain values (:func:`plain`:
    an ENUM's type name would list the private categories in error messages).
    Registered views are private to the cursor, so
    concurrent queries do not see each other's tables, and a fresh cursor per query
    costs microseconds where a fresh database costs ~30 ms. DuckDB cannot write
    through a registered DataFrame view; DDL could replace a view, which is why only
    a checked single SELECT is ever executed.
    """
    database = _database()
    with _database_lock:
        con = database.cursor()
    try:
        for name, frame in tables.items():
            con.register(str(name), plain(frame))
    except Exception:
        con.close()
        raise
    return con


#: Errors raised while binding the query, before any row is read: their messages
#: quote only the query and the schema, so the researcher may read them.
_BIND_TIME_ERRORS = (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException)

#: Said for a failure while running on private rows: DuckDB's message can quote values.
PRIVATE_FAILURE = (
    "the query failed while running on the private data (for example a conversion "
    "or a pattern that fails on some row). The datasite does not pass the error on, "
    "because it can quote private values; run the query on the mock to find the "
    "problem."
)


class PrivateRunFailed(QueryRejected):
    """A checked query bound and ran on zero rows, then failed on the private rows.

    Whether that happens can depend on one patient's value, so the datasite must not
    tell the researcher at once (see :func:`remote_kernel.checks.sqltier.run_query`).
    """


@contextlib.contextmanager
def refusing_errors(
    *, private: bool, advice: str = "", on: str = "the mock data"
) -> Iterator[None]:
    """Turn DuckDB's errors inside the block into QueryRejected without leaking data.

    An error raised while a query *runs* can quote the private data: a failed cast
    names the value ("Could not convert string 'P00017'..."), ``error(x)`` raises
    with any text the query likes. On private data only bind-time errors are
    relayed (with ``advice``); any other failure is :class:`PrivateRunFailed` with
    a fixed message. ``on`` names the public rows a non-private run read.
    """
    try:
        yield
    except _BIND_TIME_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QueryRejected(f"DuckDB refused the query: {first}" + advice) from None
    except duckdb.Error as exc:
        if not private:
            raise QueryRejected(f"the query failed on {on}: {exc}") from None
        raise PrivateRunFailed(PRIVATE_FAILURE) from None


#: Appended to a bind error of an aggregate query: what the shape rules expect.
SHAPE_ADVICE = (
    ". Every selected column must be a GROUP BY key or an aggregate (COUNT/SUM/AVG) "
    "of a numeric column."
)


def check_numeric(parsed: ParsedQuery, frame: pd.DataFrame) -> None:
    """SUM and AVG need a numeric (or boolean) column: refused with its type, before
    anything runs (the dtype is schema, not data, so the message may name it)."""
    by_lower = {str(c).lower(): c for c in frame.columns}
    for aggregate in parsed.aggregates:
        if aggregate.function in ("sum", "avg") and aggregate.column is not None:
            column = by_lower.get(aggregate.column.lower())
            if column is None:
                continue
            dtype = plain(frame)[column].dtype  # as DuckDB will see it
            if not (pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)):
                raise QueryRejected(
                    f"{aggregate.text}: {aggregate.function.upper()} needs a numeric column; "
                    f"{aggregate.column} is {dtype}. Count its values with GROUP BY instead."
                )
