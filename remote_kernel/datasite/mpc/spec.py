"""The joint computation a researcher asked for, as each site checks it on its own.

A researcher sends the same request to every site: a computation id, the SQL, the
public key domain and the ordered party list (the order is the party numbering).
Each site verifies it independently -- it is itself a party, every other party is a
peer it named in ``datasite.yaml`` (helpers marked as such there), the dataset has
opted in, the query has a shape the pooled tier can answer soundly -- and computes
the request's digest. The parties compare digests before sharing anything, so a
request that differs at any one site fails at all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from remote_kernel.checks.policy import Thresholds
from remote_kernel.datasite.mpc.errors import NotOptedIn, SecureQueryRefused
from remote_kernel.datasite.mpc.fit import FitSpec, parse_fit
from remote_kernel.datasite.mpc.plan import TOP_N
from remote_kernel.datasite.mpc.settings import MpcSettings
from remote_kernel.protocol.errors import InputError
from remote_kernel.querylang import ParsedQuery, check_on_tables, check_query

#: Key combinations a pooled table may have (each is a cell every site shares).
MAX_CELLS = 2000
_ID = re.compile(r"^[0-9a-f]{16,64}$")


@dataclass(frozen=True)
class SecureRequest:
    computation_id: str
    sql: str
    dataset: str
    parties: tuple[str, ...]
    helpers: tuple[str, ...]
    domain: tuple[tuple[Any, ...], ...]
    #: A pooled model instead of a query (``sql`` is then empty).
    fit: FitSpec | None = field(default=None)

    @property
    def digest(self) -> str:
        """What every party must agree on, hashed (canonical JSON)."""
        body = {
            "computation_id": self.computation_id,
            "sql": self.sql,
            "dataset": self.dataset,
            "parties": list(self.parties),
            "helpers": list(self.helpers),
            "domain": [list(values) for values in self.domain],
            "fit": self.fit.to_json() if self.fit else None,
        }
        text = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def data_parties(self) -> tuple[str, ...]:
        return tuple(p for p in self.parties if p not in self.helpers)


def parse_request(body: Any) -> SecureRequest:
    """The request's fields, typed; :class:`InputError` says which one is wrong."""
    if not isinstance(body, dict):
        raise InputError("request body must be a JSON object")
    cid, sql, dataset = body.get("computation_id"), body.get("sql"), body.get("dataset")
    if not isinstance(cid, str) or not _ID.match(cid):
        raise InputError("field 'computation_id' must be 16-64 lowercase hex digits")
    fit = parse_fit(body["fit"]) if body.get("fit") is not None else None
    if fit is not None and (sql or body.get("domain")):
        raise InputError("a request has either 'sql' (and 'domain') or 'fit', not both")
    if fit is not None:
        sql = ""
    elif not isinstance(sql, str) or not sql.strip():
        raise InputError("field 'sql' must be a query")
    if not isinstance(dataset, str) or not dataset:
        raise InputError("field 'dataset' must name the dataset the query reads")
    parties, helpers = body.get("parties"), body.get("helpers", [])
    for name, value in (("parties", parties), ("helpers", helpers)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InputError(f"field '{name}' must be a list of site names")
    if len(set(parties)) != len(parties):
        raise InputError("field 'parties' names a site twice")
    domain = body.get("domain", [])
    if not isinstance(domain, list) or not all(isinstance(v, list) for v in domain):
        raise InputError("field 'domain' must be a list of value lists, one per group key")
    for values in domain:
        if not all(_plain(v) for v in values) or len(set(map(repr, values))) != len(values):
            raise InputError("field 'domain' holds distinct numbers or strings only")
    keys = tuple(map(tuple, domain))
    return SecureRequest(cid, sql, dataset, tuple(parties), tuple(helpers), keys, fit)


def _plain(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int | str)


def verify_parties(request: SecureRequest, me: str, mpc: MpcSettings) -> None:
    """This site is a party, and every other party is a peer named in its own config."""
    if not mpc.enabled:
        raise NotOptedIn(f"datasite {me!r} takes part in no joint computations (no mpc: section)")
    if me not in request.parties:
        raise SecureQueryRefused(f"datasite {me!r} is not among the parties of this computation")
    if len(request.parties) < 3:
        raise SecureQueryRefused(
            "a joint computation needs at least 3 parties (with 2 sites, add a helper party)"
        )
    if len(request.data_parties) < 2:
        raise SecureQueryRefused("a pooled query needs at least 2 sites holding data")
    strangers = [p for p in request.parties if p != me and mpc.peer(p) is None]
    if strangers:
        raise SecureQueryRefused(
            f"{', '.join(strangers)} is not an MPC peer of {me!r} (datasite.yaml mpc.peers)"
        )
    unknown = [h for h in request.helpers if h not in request.parties]
    not_helpers = [
        h for h in request.helpers if h != me and not getattr(mpc.peer(h), "helper", False)
    ]
    if unknown or not_helpers:
        raise SecureQueryRefused(
            f"{', '.join(unknown + not_helpers)} is not a helper party known to {me!r}"
        )


def verify_query(
    request: SecureRequest,
    tables: Mapping[str, pd.DataFrame] | None,
    opted_in: Mapping[str, bool],
    thresholds: Thresholds,
) -> ParsedQuery:
    """The query's shape at this site (``tables=None``: a helper, which has no data)."""
    try:
        if tables is None:
            parsed = check_query(request.sql, [request.dataset])
        else:
            parsed = check_on_tables(request.sql, tables)
    except InputError as exc:
        raise SecureQueryRefused(str(exc)) from None
    if parsed.dataset != request.dataset:
        raise SecureQueryRefused(f"the query reads {parsed.dataset!r}, not {request.dataset!r}")
    if tables is not None and not opted_in.get(parsed.dataset, False):
        raise NotOptedIn(
            f"dataset {parsed.dataset!r} is not opted into joint computations here "
            "(its owner sets mpc: true for it in datasite.yaml)"
        )
    _pooled_shape(parsed, request, thresholds)
    return parsed


def _pooled_shape(parsed: ParsedQuery, request: SecureRequest, t: Thresholds) -> None:
    """What the pooled tier adds to the exact tier's shape rules, and why."""
    if parsed.has_limit or parsed.has_order_by:
        raise SecureQueryRefused("no ORDER BY or LIMIT: the pooled table comes sorted by its keys")
    if parsed.has_where and not t.allow_where:
        raise SecureQueryRefused(
            "this site's policy answers no filtered (WHERE) queries without a person, "
            "and a joint computation has no reviewer"
        )
    if any(key.computed or key.select_position is None for key in parsed.keys):
        raise SecureQueryRefused("group keys must be plain columns, each selected")
    if parsed.select_count != len(parsed.keys) + len(parsed.aggregates):
        raise SecureQueryRefused("select only the group keys and COUNT/SUM/AVG aggregates")
    if len(request.domain) != len(parsed.keys):
        raise SecureQueryRefused(
            f"the key domain has {len(request.domain)} value list(s) for {len(parsed.keys)} key(s)"
        )
    if any(len(values) > t.max_levels for values in request.domain):
        raise SecureQueryRefused(f"a group key has more than {t.max_levels} public values")
    if math.prod(len(values) for values in request.domain) > MAX_CELLS:
        raise SecureQueryRefused(f"the pooled table would have more than {MAX_CELLS} cells")
    if t.dominance_n > TOP_N:
        raise SecureQueryRefused(
            f"this site's dominance rule needs the top {t.dominance_n} contributions; "
            f"joint computations share at most {TOP_N}"
        )
