"""Unit tests of the store, the datasets import and the deny-by-default filter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, text

from remote_kernel.checks.filter import DenyByDefaultFilter, InsecureFilterRefused, make_filter
from remote_kernel.checks.policy import Policy
from remote_kernel.datasite.config import ConfigError, DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset, schema_only_mock, synthetic_heart
from remote_kernel.datasite.store import Conflict, Store
from remote_kernel.protocol.errors import DatasetError
from remote_kernel.protocol.models import FilterDecision, Finding, OutputItem, Role, Verdict


@pytest.fixture
def store(store_url: str) -> Store:
    """A new store on each backend (conftest's ``store_url``: SQLite and PostgreSQL)."""
    s = Store(store_url)
    yield s
    s.close()


def every_stored_value(store: Store) -> str:
    """Every value of every row of every table, as text: what a stolen database holds."""
    with store.engine.connect() as db:
        tables = inspect(db).get_table_names()
        return "\n".join(
            repr(tuple(row))
            for table in tables
            for row in db.execute(text(f"SELECT * FROM {table}"))
        )


def make_output(store: Store, text: str = "hello\n") -> tuple[int, int]:
    alice, _ = store.create_user("alice", Role.RESEARCHER)
    store.create_session("s1", alice)
    request = store.create_request("s1", alice, "print('hello')")
    item = OutputItem("stream", {"name": "stdout", "text": text})
    output = store.add_output(request.id, item)
    return request.id, output.id


def test_votes_of_a_long_page_in_one_call(store: Store) -> None:
    """More output ids than SQLite takes parameters in one statement (32,766)."""
    _, output_id = make_output(store)
    store.apply_filter_decision(output_id, FilterDecision(Verdict.REVIEW, ()), "rules")
    bob, _ = store.create_user("bob", Role.REVIEWER)
    store.review_output(output_id, bob, approve=True, comment="ok", required_reviews=2)
    ids = [*range(10**6, 10**6 + 40_000), output_id]
    assert store.votes_of(ids) == {output_id: [("bob", "approve", "ok")]}
    assert store.votes_of([]) == {}


def test_tokens_are_stored_hashed(store: Store) -> None:
    _, token = store.create_user("alice", Role.RESEARCHER)
    assert store.user_by_token(token).name == "alice"
    assert store.user_by_token(token + "x") is None
    stored = every_stored_value(store)
    assert "alice" in stored and token not in stored and token[3:20] not in stored
    with pytest.raises(Conflict):
        store.create_user("alice", Role.REVIEWER)


def test_review_state_machine(store: Store) -> None:
    _, output_id = make_output(store)
    bob, _ = store.create_user("bob", Role.REVIEWER)
    with pytest.raises(Conflict, match="not been checked"):
        store.review_output(output_id, bob, approve=True)
    decision = DenyByDefaultFilter().check(store.get_output(output_id).item)
    store.apply_filter_decision(output_id, decision, "deny-by-default")
    assert [o.id for o in store.pending_outputs()] == [output_id]
    released = store.review_output(output_id, bob, approve=True)
    assert released.state == "released" and released.decided_by == "bob"
    with pytest.raises(Conflict, match="already released"):
        store.review_output(output_id, bob, approve=False, comment="too late")
    # The audit log names the hash of the exact released bytes.
    entries = store.audit_entries()
    release = next(e for e in entries if e.action == "output.released")
    assert release.detail["released_sha256"] == store.get_output(output_id).sha256


def test_audit_chain_detects_edits_removals_and_reordering(store: Store) -> None:
    make_output(store)
    assert store.verify_audit() == []
    # Behind the store's back, as someone with the database's password would.
    with store.engine.connect() as db:
        db.execute(text("UPDATE audit SET actor = 'mallory' WHERE id = 2"))
        db.commit()
        assert any("entry 2" in p for p in store.verify_audit())
        db.execute(text("UPDATE audit SET actor = 'alice' WHERE id = 2"))  # undo
        db.execute(text("DELETE FROM audit WHERE id = 2"))
        db.commit()
    assert any("chain broken" in p for p in store.verify_audit())


def test_filter_is_deny_by_default_and_blocks_oversized_outputs() -> None:
    check = DenyByDefaultFilter(max_output_bytes=100)
    small = check.check(OutputItem("stream", {"name": "stdout", "text": "1"}))
    assert small.verdict is Verdict.REVIEW and small.findings
    big = check.check(OutputItem("stream", {"name": "stdout", "text": "x" * 200}))
    assert big.verdict is Verdict.BLOCK and "limit" in big.findings[0].message
    with pytest.raises(InsecureFilterRefused):
        make_filter("insecure-release-all", Policy())
    assert Verdict.worst([]) is Verdict.REVIEW  # no findings is not a release
    held = FilterDecision(Verdict.REVIEW, (Finding("a", Verdict.REVIEW, "SECRET-42"),))
    assert "held for review" in held.summary() and "SECRET" not in held.summary()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(list(Verdict)), max_size=6))
def test_worst_verdict_is_the_most_severe(verdicts: list[Verdict]) -> None:
    worst = Verdict.worst(verdicts)
    assert all(worst.severity >= v.severity for v in verdicts)
    if Verdict.BLOCK in verdicts:
        assert worst is Verdict.BLOCK


def test_schema_only_mock_keeps_schema_and_never_copies_a_row() -> None:
    private = synthetic_heart(500, seed=3)
    mock = schema_only_mock(private, rows=300, seed=1)
    assert list(mock.columns) == list(private.columns)
    assert mock.dtypes.tolist() == private.dtypes.tolist()
    rows = set(map(tuple, private.astype(str).to_numpy()))
    assert not any(tuple(r) in rows for r in mock.astype(str).to_numpy())
    # Coded columns only take codes that exist; missing values are kept.
    assert set(mock["thal"].dropna()) <= set(private["thal"].dropna())
    assert mock.equals(schema_only_mock(private, rows=300, seed=1))


def test_mock_of_a_tiny_table_redraws_rows_equal_to_private_ones() -> None:
    private = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    mock = schema_only_mock(private, rows=50, seed=0)
    private_rows = set(map(tuple, private.astype(str).to_numpy()))
    assert not any(tuple(r) in private_rows for r in mock.astype(str).to_numpy())


def test_add_dataset_formats_and_bad_inputs(tmp_path: Path) -> None:
    config = DatasiteConfig.create(tmp_path / "site", "site")
    frame = pd.DataFrame(
        {"id": np.arange(20), "group": list("ab") * 10, "v": np.linspace(0, 1, 20)}
    )
    frame.to_csv(tmp_path / "with-header.csv", index=False)
    frame.to_parquet(tmp_path / "table.parquet")
    (tmp_path / "headerless.csv").write_text("1,?,3\n4,5,6\n")
    entry = add_dataset(config, "csv", tmp_path / "with-header.csv")
    assert [c.name for c in entry.columns] == ["id", "group", "v"]
    add_dataset(config, "pq", tmp_path / "table.parquet")
    entry = add_dataset(
        config, "raw", tmp_path / "headerless.csv", columns=["a", "b", "c"], na_values=["?"]
    )
    assert [c.dtype for c in entry.columns] == ["int64", "float64", "int64"]
    assert set(DatasiteConfig.load(tmp_path / "site").datasets) == {"csv", "pq", "raw"}

    (tmp_path / "empty.csv").write_text("a,b\n")
    with pytest.raises(DatasetError, match="no rows"):
        add_dataset(config, "empty", tmp_path / "empty.csv")
    with pytest.raises(DatasetError, match="already exists"):
        add_dataset(config, "csv", tmp_path / "with-header.csv")
    with pytest.raises(DatasetError, match="columns"):
        add_dataset(config, "bad", tmp_path / "headerless.csv", columns=["a", "b"])
    with pytest.raises(ConfigError, match="not allowed"):
        add_dataset(config, "../escape", tmp_path / "with-header.csv")
    frame.rename(columns={"v": "w"}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(DatasetError, match="differ"):
        add_dataset(config, "m", tmp_path / "with-header.csv", mock_path=tmp_path / "other.csv")
    assert "m" not in DatasiteConfig.load(tmp_path / "site").datasets
    with pytest.raises(ConfigError, match="not a datasite directory"):
        DatasiteConfig.load(tmp_path)


def test_mocks_never_carry_identifiers_or_rare_categories() -> None:
    from tests.test_exfiltration import patients_table

    private = patients_table(300)
    private["diagnosis"] = ["common"] * 290 + [f"rare-{i}" for i in range(10)]
    mock = schema_only_mock(private, rows=300, seed=2)
    for column in ("patient_id", "name", "dob", "diagnosis"):
        leaked = set(mock[column]) & set(private[column]) - {"common"}
        assert not leaked, f"{column}: {sorted(leaked)[:3]}"
    assert set(mock["diagnosis"]) == {"common"}
