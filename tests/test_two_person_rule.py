"""Two-person review (OpenSAFELY's airlock): ``required_reviews: 2`` in policy.yaml.

Against a real served datasite: two approvals release, one approval changes
nothing the researcher can see, mixed votes make the output "conflicted" (its
comments go back, its content never), nobody votes twice, nobody reviews their
own output, and every vote and decision is in the hash-chained audit log.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from remote_kernel.checks.policy import PolicyError, parse_policy
from remote_kernel.protocol.errors import PermissionDenied
from remote_kernel.protocol.models import FilterDecision, OutputItem, Role, Verdict
from remote_kernel.researcher.client import Datasite

from .conftest import RunningDatasite, make_datasite, wait_finished


@pytest.fixture(scope="module")
def two_person_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    site = make_datasite(tmp_path_factory.mktemp("two-person"), "hungary")
    (site.directory / "policy.yaml").write_text("required_reviews: 2\n")
    store = site.store()
    for name in ("dave", "erin"):
        _, site.tokens[name] = store.create_user(name, Role.REVIEWER)
    store.close()
    site.start()
    yield site
    site.stop()


def pending_output(site: RunningDatasite) -> tuple[int, int]:
    """Submit a cell as alice; return (request id, its one pending output id)."""
    researcher = Datasite(site.url, site.tokens["alice"])
    try:
        request = researcher.run("print(rk.data('heart').shape)")
    finally:
        researcher.close()
    view = wait_finished(lambda path: get(site, "alice", path), request.id)
    (output,) = view["outputs"]
    assert output["state"] == "pending"
    return request.id, output["id"]


def get(site: RunningDatasite, user: str, path: str) -> dict:
    response = httpx.get(site.url + path, headers=site.headers(user), timeout=30)
    response.raise_for_status()
    return response.json()


def vote(site: RunningDatasite, user: str, output_id: int, decision: str, comment: str = ""):
    return httpx.post(
        f"{site.url}/api/outputs/{output_id}/review",
        headers=site.headers(user),
        json={"decision": decision, "comment": comment},
        timeout=30,
    )


def audit_actions(site: RunningDatasite, output_id: int) -> list[tuple[str, str]]:
    store = site.store()
    try:
        assert store.verify_audit() == []  # the chain is intact after every vote
        return [
            (e.actor, e.action) for e in store.audit_entries() if e.target == f"output:{output_id}"
        ]
    finally:
        store.close()


def test_two_approvals_release_and_one_changes_nothing_for_the_researcher(
    two_person_site: RunningDatasite,
) -> None:
    request_id, output_id = pending_output(two_person_site)
    first = vote(two_person_site, "bob", output_id, "approve")
    assert first.status_code == 200 and first.json()["state"] == "pending"
    view = get(two_person_site, "alice", f"/api/requests/{request_id}")
    assert view["outputs"][0]["state"] == "pending" and "content" not in view["outputs"][0]
    # Still in the queue for the second reviewer.
    queue = get(two_person_site, "dave", "/api/reviews")
    assert output_id in [item["id"] for item in queue]

    second = vote(two_person_site, "dave", output_id, "approve", "fine")
    assert second.status_code == 200, second.text
    decided = second.json()
    assert decided["state"] == "released" and decided["decided_by"] == "bob, dave"
    released = get(two_person_site, "alice", f"/api/requests/{request_id}")["outputs"][0]
    assert released["state"] == "released" and "(" in released["content"]["text"]
    actions = audit_actions(two_person_site, output_id)
    assert actions[-3:] == [
        ("bob", "output.vote"),
        ("dave", "output.vote"),
        ("bob, dave", "output.released"),
    ]


def queue_item(site: RunningDatasite, user: str, output_id: int) -> dict | None:
    items = [item for item in get(site, user, "/api/reviews") if item["id"] == output_id]
    return items[0] if items else None


def test_reviewers_see_the_votes_and_a_voter_no_longer_queues_the_output(
    two_person_site: RunningDatasite,
) -> None:
    request_id, output_id = pending_output(two_person_site)
    before = queue_item(two_person_site, "bob", output_id)
    assert before is not None
    assert before["required_reviews"] == 2 and before["votes"] == []

    first = vote(two_person_site, "bob", output_id, "approve", "aggregate only")
    assert first.status_code == 200, first.text
    bob_vote = {"reviewer": "bob", "decision": "approve", "comment": "aggregate only"}
    assert first.json()["votes"] == [bob_vote] and first.json()["required_reviews"] == 2

    # Bob's queue leaves it out (Approve/Deny would be a 409 there) ...
    assert queue_item(two_person_site, "bob", output_id) is None
    # ... the second reviewer still has it, with "1 of 2" ...
    second = queue_item(two_person_site, "dave", output_id)
    assert second is not None
    assert second["required_reviews"] == 2 and second["votes"] == [bob_vote]
    # ... and so does an admin (who cannot vote).
    assert queue_item(two_person_site, "admin", output_id)["votes"] == [bob_vote]

    # Bob still finds it, with its votes, in the other views.
    seen = get(two_person_site, "bob", f"/api/outputs/{output_id}")
    assert seen["state"] == "pending" and seen["votes"] == [bob_vote]
    (listed,) = get(two_person_site, "bob", f"/api/requests/{request_id}")["outputs"]
    assert listed["votes"] == [bob_vote] and listed["required_reviews"] == 2
    history = httpx.get(
        two_person_site.url + "/api/requests",
        params={"outputs": "true"},
        headers=two_person_site.headers("bob"),
        timeout=30,
    ).json()
    (in_history,) = [o for r in history for o in r["outputs"] if o["id"] == output_id]
    assert in_history["votes"] == [bob_vote]

    # The researcher never sees votes, in any view.
    for path in (f"/api/outputs/{output_id}", f"/api/requests/{request_id}"):
        text = httpx.get(
            two_person_site.url + path, headers=two_person_site.headers("alice"), timeout=30
        ).text
        assert '"votes"' not in text and "required_reviews" not in text
        assert "aggregate only" not in text

    # A vote without a comment has no "comment" key; the decided output keeps its votes.
    decided = vote(two_person_site, "dave", output_id, "approve").json()
    assert decided["state"] == "released"
    assert decided["votes"] == [bob_vote, {"reviewer": "dave", "decision": "approve"}]
    assert queue_item(two_person_site, "dave", output_id) is None
    assert queue_item(two_person_site, "admin", output_id) is None


def test_mixed_votes_are_conflicted_and_send_the_comments_back(
    two_person_site: RunningDatasite,
) -> None:
    request_id, output_id = pending_output(two_person_site)
    assert vote(two_person_site, "bob", output_id, "approve", "looks aggregate").status_code == 200
    denied = vote(two_person_site, "dave", output_id, "deny", "shape reveals the cohort size")
    assert denied.status_code == 200, denied.text
    assert denied.json()["state"] == "conflicted"
    seen = get(two_person_site, "alice", f"/api/requests/{request_id}")["outputs"][0]
    assert seen["state"] == "conflicted" and "content" not in seen
    assert "bob: looks aggregate" in seen["comment"]
    assert "dave: shape reveals the cohort size" in seen["comment"]
    # Final: a third reviewer cannot turn it into a release.
    late = vote(two_person_site, "erin", output_id, "approve")
    assert late.status_code == 409 and "conflicted" in late.json()["error"]["message"]
    actions = [a for _, a in audit_actions(two_person_site, output_id)]
    assert actions[-3:] == ["output.vote", "output.vote", "output.conflicted"]


def test_two_denials_deny(two_person_site: RunningDatasite) -> None:
    request_id, output_id = pending_output(two_person_site)
    assert vote(two_person_site, "bob", output_id, "deny", "raw shape").status_code == 200
    assert vote(two_person_site, "erin", output_id, "deny", "agreed").status_code == 200
    seen = get(two_person_site, "alice", f"/api/requests/{request_id}")["outputs"][0]
    assert seen["state"] == "denied" and seen["comment"] == "bob: raw shape; erin: agreed"


def test_nobody_votes_twice(two_person_site: RunningDatasite) -> None:
    _, output_id = pending_output(two_person_site)
    assert vote(two_person_site, "bob", output_id, "approve").status_code == 200
    again = vote(two_person_site, "bob", output_id, "approve")
    assert again.status_code == 409 and "another reviewer" in again.json()["error"]["message"]
    state = get(two_person_site, "bob", f"/api/outputs/{output_id}")["state"]
    assert state == "pending"


def test_a_researcher_cannot_vote(two_person_site: RunningDatasite) -> None:
    _, output_id = pending_output(two_person_site)
    assert vote(two_person_site, "alice", output_id, "approve").status_code == 403


def test_the_author_never_reviews_their_own_output(two_person_site: RunningDatasite) -> None:
    """Even a reviewer-role account that authored a request (made directly in the store)."""
    store = two_person_site.store()
    try:
        author, _ = store.create_user("mallory", Role.REVIEWER)
        session = store.create_session("00000000-0000-4000-8000-000000000001", author)
        request = store.create_request(session.id, author, "print(1)")
        output = store.add_output(request.id, OutputItem("stream", {"name": "stdout", "text": "1"}))
        store.apply_filter_decision(output.id, FilterDecision(Verdict.REVIEW, ()), "rules")
        with pytest.raises(PermissionDenied):
            store.review_output(output.id, author, approve=True, required_reviews=2)
        assert store.get_output(output.id).state == "pending"
    finally:
        store.close()


def test_policy_validates_required_reviews(tmp_path: Path) -> None:
    assert parse_policy({"required_reviews": 2}).required_reviews == 2
    assert parse_policy({}).required_reviews == 1
    for bad in (0, "two", True, 9):
        with pytest.raises(PolicyError, match="required_reviews"):
            parse_policy({"required_reviews": bad})


def review_cli(site: RunningDatasite, user: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "remote_kernel.cli", "review", *args,
         "--url", site.url, "--token", site.tokens[user]],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_command_line_shows_the_votes(two_person_site: RunningDatasite) -> None:
    _, output_id = pending_output(two_person_site)
    assert vote(two_person_site, "bob", output_id, "approve", "counts only").status_code == 200

    (row,) = [
        line
        for line in review_cli(two_person_site, "dave", "list").splitlines()
        if line.split()[:1] == [str(output_id)]
    ]
    assert row.endswith("[1 of 2 approvals: bob approved]")
    assert str(output_id) not in review_cli(two_person_site, "bob", "list").split()
    shown = review_cli(two_person_site, "dave", "show", str(output_id))
    assert "--- votes ---\n1 of 2 approvals: bob approved\nbob: counts only" in shown
