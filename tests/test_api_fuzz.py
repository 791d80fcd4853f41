"""API fuzzing: schemathesis generates requests from docs/openapi.yaml, with each role's token.

Against a real datasite: no answer may be a 5xx, every error must be the documented
JSON error body with a message, and responses must match the document (status
codes, content types, schemas). Bounded: a few examples per operation and role.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    negative_data_rejection,
    positive_data_acceptance,
)

from .conftest import RunningDatasite, make_datasite  # noqa: E402

DOC = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
schema = schemathesis.openapi.from_path(DOC)
ROLES = ("alice", "bob", "admin")  # researcher, reviewer, admin
DOCUMENTED_QUERY = {"status", "outputs"}


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("fuzz"), max_code_bytes=2000)
    site.start()
    yield site
    site.stop()


@pytest.mark.parametrize("caller", ROLES)
@schema.parametrize()
@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors_and_json_errors_everywhere(
    case: schemathesis.Case, caller: str, fuzzed: RunningDatasite
) -> None:
    response = case.call(base_url=fuzzed.url, headers=fuzzed.headers(caller), timeout=30)
    where = f"{caller}: {case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code < 500, f"{where} {response.text}"
    if response.status_code >= 400 and response.content:
        content_type = response.headers.get("content-type", [""])[0]  # lower-case, lists
        assert content_type.startswith("application/json"), (where, response.text)
        error = response.json()["error"]
        assert error["status"] == response.status_code, where
        assert isinstance(error["message"], str) and error["message"].strip(), where
    excluded = []
    if case.path == "/api/sessions/{session_id}/requests" and "appears twice" in response.text:
        # Push names must be unique, which JSON Schema cannot say: a 400 is right here.
        excluded.append(positive_data_acceptance)
    if set(case.query or {}) - DOCUMENTED_QUERY:
        # Unknown query parameters are ignored, as HTTP APIs usually do (cache busters).
        excluded.append(negative_data_rejection)
    case.validate_response(response, excluded_checks=excluded)
