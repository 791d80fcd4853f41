"""Pooled answers across datasites by MPC (``rk.secure.query``), end to end.

Real datasite servers on loopback ports, each with its own private heart data, its
own MPC key and certificate and its peers named in datasite.yaml; a real researcher
client; real MPyC parties (one subprocess per site) over mutual TLS.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

import remote_kernel as rk
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.mpc.certs import make_certificate
from remote_kernel.datasite.mpc.settings import MpcSettings, Peer
from remote_kernel.datasite.store import Store
from remote_kernel.protocol.models import Role
from remote_kernel.researcher import api
from tests.conftest import RunningDatasite, free_port, make_datasite

pytestmark = pytest.mark.slow  # about a minute on 2 cores: several MPC runs and a timeout

#: A site that is down makes the others give up after this many seconds.
MPC_TIMEOUT = 15.0  # and finish within twice it (a logistic fit: ~18 s on a loaded machine)
SQL = "SELECT sex, COUNT(*) AS n, SUM(chol) AS total, AVG(chol) AS mean FROM heart GROUP BY sex"


def helper_site(tmp: Path, name: str) -> RunningDatasite:
    """A datasite that holds no data and only helps compute (a trusted third party)."""
    config = DatasiteConfig.create(tmp / name, name)
    config.auth.max_failed_logins = 100000
    config.save()
    store = Store(config.database_url)
    tokens = {"alice": store.create_user("alice", Role.RESEARCHER)[1]}
    store.close()
    return RunningDatasite(config.directory, name, free_port(), tokens)


def federate(
    tmp: Path, sites: dict[str, RunningDatasite], helpers: tuple[str, ...] = ()
) -> dict[str, RunningDatasite]:
    """Make the sites name each other as MPC peers, opt their heart data in, start them."""
    certs = {name: make_certificate(name, tmp / "certs" / name) for name in sites}
    ports = {name: free_port() for name in sites}
    for name, site in sites.items():
        config = DatasiteConfig.load(site.directory)
        key, cert = certs[name]
        peers = tuple(
            Peer(other, "127.0.0.1", ports[other], str(certs[other][1]), other in helpers)
            for other in sites
            if other != name
        )
        config.mpc = MpcSettings("127.0.0.1", ports[name], str(cert), str(key), MPC_TIMEOUT, peers)
        if "heart" in config.datasets:
            config.datasets["heart"] = replace(config.datasets["heart"], mpc=True)
        config.save()
    with ThreadPoolExecutor(len(sites)) as pool:
        list(pool.map(lambda s: s.start(), sites.values()))
    return sites


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningDatasite]]:
    tmp = tmp_path_factory.mktemp("mpc3")
    sites = {name: make_datasite(tmp, name) for name in ("cleveland", "hungary", "switzerland")}
    for site in sites.values():  # a second dataset that is NOT opted in
        config = DatasiteConfig.load(site.directory)
        config.datasets["heart_raw"] = replace(config.datasets["heart"], name="heart_raw")
        config.save()
    # carol's thresholds at one site are far stricter: her pooled cells fail there.
    (sites["hungary"].directory / "policy.yaml").write_text(
        "preset: acro\noverrides:\n  researchers:\n    carol: {min_cell_count: 100000}\n"
    )
    federate(tmp, sites)
    yield sites
    for site in sites.values():
        site.stop()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every answer to ``POST /api/secure/query`` the researcher's client receives, as text
    (the other calls bring the public schema and mocks)."""
    texts: list[str] = []
    original = api.DatasiteApi._answer

    def record(
        self: api.DatasiteApi, response: httpx.Response, method: str, path: str, raw: bool
    ) -> Any:
        if path == "/api/secure/query":
            texts.append(response.text)
        return original(self, response, method, path, raw)

    monkeypatch.setattr(api.DatasiteApi, "_answer", record)
    return texts


def connect(sites: dict[str, RunningDatasite], user: str = "alice") -> None:
    for name in list(rk.sites()):
        rk.disconnect(name)
    for name, site in sites.items():
        rk.connect(site.url, token=site.tokens[user], name=name)


def private(site: RunningDatasite) -> pd.DataFrame:
    return pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")


def truth(frames: list[pd.DataFrame]) -> pd.DataFrame:
    pooled = pd.concat(frames, ignore_index=True)
    return pooled.groupby("sex").agg(
        n=("sex", "size"), total=("chol", "sum"), mean=("chol", "mean")
    )


def per_site_numbers(frames: list[pd.DataFrame]) -> set[str]:
    """Each site's own counts and sums by sex, spelled as they could appear in text."""
    spelled = set()
    for frame in frames:
        own = frame.groupby("sex").agg(n=("sex", "size"), total=("chol", "sum"))
        for value in own.to_numpy().ravel():
            spelled |= {str(int(value)), f"{float(value)}", f"{float(value):g}"}
    return spelled


def numbers_in(text: str) -> set[str]:
    """Every number in a JSON text (values, and numbers inside strings such as messages),
    not digits inside hex ids and digests."""
    try:
        document: Any = json.loads(text)
    except ValueError:
        document = text
    found: set[str] = set()
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack += list(value.values())
        elif isinstance(value, list):
            stack += value
        elif isinstance(value, bool) or value is None:
            continue
        elif isinstance(value, int | float):
            found |= {str(value), f"{float(value)}", f"{float(value):g}"}
        elif isinstance(value, str) and not re.fullmatch(r"[0-9a-f]{16,}", value):
            found |= set(re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", value))
    return found


def audit(site: RunningDatasite, action_prefix: str = "mpc.") -> list[Any]:
    store = site.store()
    try:
        return [e for e in store.audit_entries() if e.action.startswith(action_prefix)]
    finally:
        store.close()


# --- pooled answers -------------------------------------------------------------------------------
def test_pooled_count_sum_avg_equal_the_sum_of_the_sites_and_reveal_no_site(
    three: dict[str, RunningDatasite], recorded: list[str]
) -> None:
    connect(three)
    result = rk.secure.query(SQL)
    frames = [private(site) for site in three.values()]
    expected = truth(frames)
    assert list(result.columns) == ["sex", "n", "total", "mean"]
    assert result["sex"].tolist() == sorted(expected.index.tolist())
    for _, row in result.iterrows():
        want = expected.loc[row["sex"]]
        assert row["n"] == want["n"]
        assert row["total"] == pytest.approx(want["total"], abs=1e-6)
        assert row["mean"] == pytest.approx(want["mean"], abs=1e-6)
    assert result.attrs["parties"] == list(three)
    # Nothing the researcher received holds a site's own count or sum (unless pooled equal).
    shown = result[["sex", "n", "total"]].to_numpy().ravel()  # keys are public: 0 and 1
    pooled = {str(v) for v in shown} | {f"{float(v):g}" for v in shown} | {"0.0", "1.0"}
    assert len(recorded) == 3
    seen = set().union(*(numbers_in(text) for text in recorded))
    leaked = (per_site_numbers(frames) - pooled) & seen
    assert len(per_site_numbers(frames) - pooled) > 6 and not leaked
    # No site's own sum reaches any server's log (as a float, as it would be written).
    own_sums = {f"{float(v):.1f}" for f in frames for v in f.groupby("sex")["chol"].sum()}
    for site in three.values():
        assert site.log_path is not None
        assert not {v for v in own_sums - pooled if v in site.log_path.read_text()}
    # Every site audited the computation: the same id, the parties, what was opened.
    cid = result.attrs["computation_id"]
    for site in three.values():
        (entry,) = [e for e in audit(site) if e.target == cid]
        assert entry.action == "mpc.released"
        detail = entry.detail
        assert detail["parties"] == list(three) and "pooled table" in detail["opened"]
        assert not numbers_in(json.dumps(entry.detail)) & (per_site_numbers(frames) - pooled)


def test_the_mock_path_pools_the_mocks_and_says_what_will_happen(
    three: dict[str, RunningDatasite], capsys: pytest.CaptureFixture[str]
) -> None:
    connect(three)
    result = rk.secure.query(SQL, mock=True)
    mocks = [rk.sites()[name].mock("heart") for name in three]
    assert result.set_index("sex")["n"].to_dict() == truth(mocks)["n"].to_dict()
    said = capsys.readouterr().out
    assert "mock data" in said and "only the pooled table is opened" in said


def test_keys_can_be_given_and_two_parties_are_refused_before_anything_is_sent(
    three: dict[str, RunningDatasite],
) -> None:
    connect(three)
    result = rk.secure.query(SQL, keys={"sex": [1]})  # only the men's cell
    expected = truth([private(site) for site in three.values()])
    assert result["sex"].tolist() == [1] and result["n"].tolist() == [expected.loc[1, "n"]]
    before = [len(audit(site)) for site in three.values()]
    with pytest.raises(rk.RemoteKernelError, match="at least 3 parties"):
        rk.secure.query(SQL, sites=["cleveland", "hungary"])
    assert [len(audit(site)) for site in three.values()] == before


def test_a_pooled_cell_under_one_sites_threshold_releases_nothing_anywhere(
    three: dict[str, RunningDatasite], recorded: list[str]
) -> None:
    connect(three, user="carol")
    with pytest.raises(rk.secure.SecureQueryFailed) as caught:
        rk.secure.query(SQL)
    assert set(caught.value.by_site) == set(three)  # every site withheld it, not only hungary
    assert all("withheld" in message for message in caught.value.by_site.values())
    assert "small-cells" in str(caught.value)
    frames = [private(site) for site in three.values()]
    seen = set().union(*(numbers_in(text) for text in recorded))
    assert not (per_site_numbers(frames) - {"0", "1", "2"}) & seen
    for site in three.values():
        assert audit(site)[-1].action == "mpc.failed"
        assert audit(site)[-1].detail["opened"] == "one pass/fail bit per rule"


def test_a_dataset_not_opted_in_is_refused_with_a_clear_message(
    three: dict[str, RunningDatasite],
) -> None:
    connect(three)
    with pytest.raises(rk.secure.SecureQueryFailed) as caught:
        rk.secure.query(SQL.replace("FROM heart", "FROM heart_raw"))
    assert caught.value.status == 403
    for message in caught.value.by_site.values():
        assert "not opted into joint computations" in message and "mpc: true" in message


def _post_all(sites: dict[str, RunningDatasite], bodies: dict[str, dict[str, Any]]) -> dict:
    def post(name: str) -> httpx.Response:
        site = sites[name]
        return httpx.post(
            site.url + "/api/secure/query",
            json=bodies[name],
            headers=site.headers("alice"),
            timeout=60,
        )

    with ThreadPoolExecutor(len(sites)) as pool:
        return dict(zip(sites, pool.map(post, sites), strict=True))


def _body(parties: list[str]) -> dict[str, Any]:
    """What rk.secure.query sends to every site, made by hand to change it at one."""
    return {
        "computation_id": secrets.token_hex(16),
        "sql": SQL,
        "dataset": "heart",
        "parties": parties,
        "helpers": [],
        "domain": [[0, 1]],
    }


def test_a_request_that_differs_at_one_site_is_refused_at_every_site(
    three: dict[str, RunningDatasite],
) -> None:
    body = _body(list(three))
    tampered = {**body, "sql": SQL.replace("SUM(chol)", "SUM(trestbps)")}
    answers = _post_all(three, {n: tampered if n == "hungary" else body for n in three})
    for response in answers.values():
        assert response.status_code == 503
        assert "not asked the same computation" in response.json()["error"]["message"]
    # A site that is not among the parties refuses at once, before any MPC.
    outsider = {**body, "parties": ["cleveland", "hungary", "elsewhere"]}
    response = _post_all({"switzerland": three["switzerland"]}, {"switzerland": outsider})
    assert response["switzerland"].status_code == 400
    assert "not among the parties" in response["switzerland"].json()["error"]["message"]


def test_a_site_that_is_down_fails_the_computation_clearly_everywhere(
    three: dict[str, RunningDatasite],
) -> None:
    # Down before the request: the researcher's kernel says so, and no site starts anything.
    connect(three)
    before = {name: len(audit(site)) for name, site in three.items()}
    three["switzerland"].stop()
    try:
        with pytest.raises(rk.DatasiteUnreachable, match="cannot reach the datasite"):
            rk.secure.query(SQL)
        assert {name: len(audit(three[name])) for name in ("cleveland", "hungary")} == {
            name: before[name] for name in ("cleveland", "hungary")
        }
    finally:
        three["switzerland"].start()
    # A party that never joins (its site did not get, or refused, the request): the others
    # give up within their timeout, say which party is missing, release nothing, audit it.
    body = _body(list(three))
    joined = {name: three[name] for name in ("cleveland", "hungary")}
    answers = _post_all(joined, {name: body for name in joined})
    for name, response in answers.items():
        assert response.status_code == 503
        message = response.json()["error"]["message"]
        assert "switzerland" in message and "nothing was released" in message
        entry = audit(three[name])[-1]
        assert entry.target == body["computation_id"] and entry.action == "mpc.failed"
        assert entry.detail["opened"] == "nothing"


# --- two sites and a helper -----------------------------------------------------------------------
def test_two_sites_and_a_helper_pool_exactly(tmp_path: Path) -> None:
    sites = {name: make_datasite(tmp_path, name) for name in ("cleveland", "va-long-beach")}
    sites["ttp"] = helper_site(tmp_path, "ttp")
    federate(tmp_path, sites, helpers=("ttp",))
    try:
        for name in list(rk.sites()):
            rk.disconnect(name)
        for name, site in sites.items():  # the researcher's own names for the sites
            rk.connect(site.url, token=site.tokens["alice"], name=f"my-{name}")
        result = rk.secure.query("SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp")
        frames = [private(sites[name]) for name in ("cleveland", "va-long-beach")]
        expected = pd.concat(frames).groupby("cp").size()
        assert result.set_index("cp")["n"].to_dict() == {
            int(k): int(v) for k, v in expected.items()
        }
        assert result.attrs["helpers"] == ["ttp"]  # the sites' own names
        assert sorted(result.attrs["parties"]) == ["cleveland", "ttp", "va-long-beach"]
        (entry,) = audit(sites["ttp"])
        assert entry.action == "mpc.released" and entry.detail["helpers"] == ["ttp"]
    finally:
        for site in sites.values():
            site.stop()


# --- the parties themselves -----------------------------------------------------------------------
def run_parties(
    tmp: Path,
    sql: str,
    vectors: dict[str, list[float] | None],
    pinned: dict[str, dict[str, Path]] | None = None,
    timeout: float = 4,
    extra: dict[str, dict[str, Any]] | None = None,
    kill: tuple[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Run one real party process per site on a query's vectors (None: a helper); their
    result files (absent for a party that wrote none). ``pinned[site][peer]`` overrides
    the certificate ``site`` pins for ``peer``; ``extra[site]`` adds to its job;
    ``kill=(site, seconds)`` kills that party's process after so many seconds."""
    import subprocess
    import sys

    from remote_kernel.datasite.mpc.plan import build_plan
    from remote_kernel.querylang import check_query

    names = list(vectors)
    certs = {n: make_certificate(n, tmp / n) for n in names}
    ports = [free_port() for _ in names]
    plan = build_plan(check_query(sql, ["heart"]), 1)
    processes = []
    for pid, name in enumerate(names):
        overrides = (pinned or {}).get(name, {})
        job = {
            "pid": pid,
            "names": names,
            "helpers": [n for n, v in vectors.items() if v is None],
            "listen_host": "127.0.0.1",
            "addresses": [["127.0.0.1", port] for port in ports],
            "certificate": str(certs[name][1]),
            "key": str(certs[name][0]),
            "peer_certificates": [str(overrides.get(n, certs[n][1])) for n in names],
            "digest": "same",
            "thresholds": {
                "min_cell_count": 10,
                "dominance_n": 2,
                "dominance_k": 0.9,
                "p_ratio": 0.1,
                "min_dof": 10,
            },
            "task": "query",
            "q": 0,
            "layout": plan.layout,
            "plan": plan.to_json(),
            "vector": vectors[name],
            "timeout": timeout,
            "result": str(tmp / f"{name}.json"),
            **(extra or {}).get(name, {}),
        }
        (tmp / f"{name}-job.json").write_text(json.dumps(job))
        command = [sys.executable, "-m", "remote_kernel.datasite.mpc.party"]
        processes.append(subprocess.Popen([*command, str(tmp / f"{name}-job.json")]))
    if kill is not None:
        time.sleep(kill[1])
        processes[names.index(kill[0])].kill()
    for process in processes:
        process.wait(timeout=60)
    written = [name for name in names if (tmp / f"{name}.json").exists()]
    return {name: json.loads((tmp / f"{name}.json").read_text()) for name in written}


def test_a_peer_with_the_wrong_certificate_is_refused_and_nothing_is_opened(tmp_path: Path) -> None:
    """Three real party processes; b pins a certificate for c that c does not hold (a
    stranger's, under c's name): the TLS handshake fails, and no party gets a result."""
    stranger = make_certificate("c", tmp_path / "stranger")
    vectors: dict[str, list[float] | None] = {n: [50.0] for n in ("a", "b", "c")}
    results = run_parties(
        tmp_path, "SELECT COUNT(*) AS n FROM heart", vectors, pinned={"b": {"c": stranger[1]}}
    )
    assert "c presented a certificate we do not trust" in results["b"]["error"]
    assert all(set(result) == {"error"} for result in results.values())


def test_a_party_killed_mid_computation_leaves_every_party_without_a_result(
    tmp_path: Path,
) -> None:
    """A logistic fit (many rounds) with three parties; c is killed once they compute:
    a and b give up within their deadline with an error, and nobody has coefficients."""
    rng = np.random.default_rng(7)
    features = 11

    def rows() -> list[list[float]]:
        x = rng.normal(size=(400, features))
        y = (x @ rng.normal(size=features) + rng.normal(size=400) > 0).astype(float)
        return np.column_stack([y, x]).tolist()

    fit = {"task": "logistic", "q": features + 1, "layout": [], "plan": None}
    extra = {name: {**fit, "rows": rows()} for name in ("a", "b", "c")}
    started = time.monotonic()
    results = run_parties(
        tmp_path,
        "SELECT COUNT(*) AS n FROM heart",
        {name: [] for name in "abc"},
        extra=extra,
        timeout=4,
        kill=("c", 2.5),
    )
    assert "c" not in results  # killed: no result file
    for name in ("a", "b"):
        assert set(results[name]) == {"error"}, results[name]
    assert time.monotonic() - started < 2.5 + 2 * 4 + 1 + 5  # kill, deadline, watchdog, slack


def test_pooled_dominance_and_p_percent_are_checked_on_the_shares(tmp_path: Path) -> None:
    """One patient holds most of a pooled sum: N-K dominance and p-percent fail on the
    pooled cell (each site alone could not see it), and only the verdict bits are opened."""
    from remote_kernel.datasite.mpc.local import local_vector
    from remote_kernel.datasite.mpc.plan import build_plan
    from remote_kernel.querylang import check_on_tables

    sql = "SELECT COUNT(*) AS n, SUM(chol) AS s FROM heart"

    def vector(values: list[float]) -> list[float]:
        tables = {"heart": pd.DataFrame({"chol": values})}
        parsed = check_on_tables(sql, tables)
        return local_vector(parsed, tables, [], build_plan(parsed, 1))

    dominated = run_parties(
        tmp_path / "dominated",
        sql,
        {"a": vector([9800.0] + [10.0] * 19 + [10.0]), "b": vector([25.0] * 20), "c": None},
    )
    assert dominated["a"] == dominated["b"] == dominated["c"]
    assert dominated["a"] == {"released": False, "failed": ["dominance", "p-percent"]}
    spread = run_parties(
        tmp_path / "spread",
        sql,
        {"a": vector([980.0] + [10.0] * 20), "b": vector([250.0] * 20), "c": None},
    )
    assert spread["a"] == {"released": True, "values": [41.0, 6180.0]}


def test_a_party_cannot_connect_under_another_partys_number() -> None:
    """The listening side reads the client's party number from its first bytes and closes
    the connection unless the client's certificate names that party."""
    from remote_kernel.datasite.mpc.tls import numbered_exchanger

    received: list[bytes] = []

    class Base:
        def __init__(self) -> None:
            self.peer_pid: int | None = None
            self.bytes = bytearray()
            self.transport: Any = None

        def data_received(self, data: bytes) -> None:
            received.append(data)

    class Transport:
        closed = False

        def __init__(self, name: str) -> None:
            self.cert = {"subjectAltName": (("DNS", name),)}

        def get_extra_info(self, key: str) -> Any:
            return self.cert if key == "peercert" else None

        def close(self) -> None:
            self.closed = True

    exchanger = numbered_exchanger(Base, ["a", "b", "c"])
    honest, impostor = exchanger(), exchanger()
    honest.transport, impostor.transport = Transport("b"), Transport("b")
    honest.data_received((1).to_bytes(2, "little") + b"keys")
    impostor.data_received((0).to_bytes(2, "little") + b"keys")
    assert received == [(1).to_bytes(2, "little") + b"keys"]
    assert not honest.transport.closed and impostor.transport.closed


# --- pooled models --------------------------------------------------------------------------------
FIT = {"y": "trestbps", "X": ["age", "chol", "thalach"]}


def ordinary_least_squares(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients and standard errors on the pooled private rows (the plaintext truth)."""
    rows = rows[[FIT["y"], *FIT["X"]]].dropna()
    design = np.column_stack([np.ones(len(rows)), rows[FIT["X"]].to_numpy(float)])
    target = rows[FIT["y"]].to_numpy(float)
    coef = LinearRegression().fit(design[:, 1:], target)
    beta = np.concatenate([[coef.intercept_], coef.coef_])
    residual = target - design @ beta
    cov = residual @ residual / (len(rows) - design.shape[1]) * np.linalg.inv(design.T @ design)
    return beta, np.sqrt(np.diag(cov))


def test_a_pooled_linear_regression_matches_the_pooled_rows(
    three: dict[str, RunningDatasite], recorded: list[str]
) -> None:
    connect(three)
    model = rk.secure.fit("linear", "heart", **FIT)
    frames = [private(site) for site in three.values()]
    beta, errors = ordinary_least_squares(pd.concat(frames, ignore_index=True))
    assert list(model.index) == ["Intercept", *FIT["X"]]
    assert np.abs(model["coef"].to_numpy() - beta).max() < 1e-3
    assert np.abs(model["std_err"].to_numpy() - errors).max() < 1e-3
    complete = sum(len(f[[FIT["y"], *FIT["X"]]].dropna()) for f in frames)
    assert model.attrs["nobs"] == complete
    # what the researcher received: the model, not any site's row count
    own_rows = {str(len(f[[FIT["y"], *FIT["X"]]].dropna())) for f in frames} - {str(complete)}
    assert not own_rows & set().union(*(numbers_in(text) for text in recorded))
    # On the mocks: the same call, pooled mocks, said so.
    on_mocks = rk.secure.fit("linear", "heart", **FIT, mock=True)
    assert list(on_mocks.index) == list(model.index)
    # Under carol's thresholds at one site the model is withheld everywhere.
    connect(three, user="carol")
    with pytest.raises(rk.secure.SecureQueryFailed) as caught:
        rk.secure.fit("linear", "heart", **FIT)
    assert set(caught.value.by_site) == set(three) and "small-cells" in str(caught.value)


def test_a_pooled_logistic_regression_matches_the_pooled_rows(
    three: dict[str, RunningDatasite],
) -> None:
    from sklearn.linear_model import LogisticRegression

    connect(three)
    x = ["age", "thalach"]
    model = rk.secure.fit("logistic", "heart", y="exang", X=x)
    pooled = pd.concat([private(site) for site in three.values()], ignore_index=True)
    rows = pooled[["exang", *x]].dropna()
    truth = LogisticRegression(penalty=None, tol=1e-10, max_iter=10000)
    truth.fit(rows[x].to_numpy(float), rows["exang"].to_numpy(float))
    beta = np.concatenate([truth.intercept_, truth.coef_[0]])
    design = np.column_stack([np.ones(len(rows)), rows[x].to_numpy(float)])
    p = 1 / (1 + np.exp(-design @ beta))
    errors = np.sqrt(np.diag(np.linalg.inv((design * (p * (1 - p))[:, None]).T @ design)))
    assert model.attrs["nobs"] == len(rows)
    assert np.abs(model["coef"].to_numpy() - beta).max() < 1e-3
    assert np.abs(model["std_err"].to_numpy() - errors).max() < 1e-3
    # a column that is not 0/1 cannot be a logistic outcome
    with pytest.raises(rk.secure.SecureQueryFailed, match="0 or 1 in every row"):
        rk.secure.fit("logistic", "heart", y="cp", X=x)


# --- layout ---------------------------------------------------------------------------------------
def test_the_mpc_package_stays_http_free_and_the_server_loads_no_mpyc(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.test_layout import LINT_IMPORTS, copy_package, lint_imports

    code = (
        "import sys, remote_kernel.datasite.http.app\n"
        "print([m for m in sys.modules if 'mpyc' in m])"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"  # MPyC runs in the party process only
    if LINT_IMPORTS is None:
        pytest.skip("import-linter is not installed")
    root = copy_package(tmp_path)
    path = root / "remote_kernel" / "datasite" / "mpc" / "spec.py"
    path.write_text(path.read_text() + "\nimport remote_kernel.datasite.http.handlers  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert any(
        line.startswith("joint computations (datasite/mpc) are HTTP-free") and "BROKEN" in line
        for line in result.stdout.splitlines()
    ), result.stdout


class _Marks:
    """Unpickling this leaves a file: proof that someone unpickled it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.path, "unpickled"))


def test_a_party_never_unpickles_what_a_peer_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MPyC unpickles peers' ``transfer`` messages (its shutdown uses one): the party
    swaps its runtime's pickle for JSON, so a compromised peer cannot run code here."""
    import pickle

    import mpyc.runtime

    from remote_kernel.datasite.mpc.party import JsonCodec, forbid_pickle

    monkeypatch.setattr(mpyc.runtime, "pickle", mpyc.runtime.pickle)  # restored afterwards
    forbid_pickle()
    assert mpyc.runtime.pickle is JsonCodec
    marker = tmp_path / "marker"
    with pytest.raises(ValueError):
        mpyc.runtime.pickle.loads(pickle.dumps(_Marks(marker)))
    assert not marker.exists()
    message = {"digest": "ab" * 32, "t": {"min_cell_count": 10}}
    assert JsonCodec.loads(JsonCodec.dumps(message)) == message
