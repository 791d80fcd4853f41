"""Hints on kernel-printed tables, and "approve with suppression", against a real datasite.

A crosstab the researcher's kernel prints is held like any kernel output; the
reviewer now also sees which cells are small (hints, never a reason to release),
and a suppressed variant the datasite wrote from the table's cells. Approving the
variant releases its bytes in the original's place. The researcher never learns
of the variant before that: not in listings, not by id, not on the websocket.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pandas as pd
import pytest
from websockets.sync.client import connect

from remote_kernel.checks.kernel_tables import html_grid
from remote_kernel.protocol.models import Role, canonical_json

from .conftest import RunningDatasite, make_datasite, wait_finished

CROSSTAB = 'import pandas as pd\nh = rk.data("heart")\npd.crosstab(h["sex"], h["num"])\n'


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    # Switzerland's sex x num crosstab has a cell of 1 and two zeros (in the UCI file).
    running = make_datasite(tmp_path_factory.mktemp("hints"), "switzerland")
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def two_person(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    running = make_datasite(tmp_path_factory.mktemp("hints-2p"), "switzerland")
    (running.directory / "policy.yaml").write_text("required_reviews: 2\n")
    store = running.store()
    _, running.tokens["dave"] = store.create_user("dave", Role.REVIEWER)
    store.close()
    running.start()
    yield running
    running.stop()


class Channel:
    """A researcher's websocket: every event it receives is kept, as sent."""

    def __init__(self, site: RunningDatasite, user: str = "alice") -> None:
        self.site, self.user = site, user
        session = self.call("POST", "/api/sessions")["id"]
        url = site.url.replace("http", "ws") + f"/api/sessions/{session}/channel"
        self.ws = connect(url, additional_headers=site.headers(user))
        self.events: list[dict] = []
        self.raw: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                self.raw.append(str(message))
                self.events.append(json.loads(message))
        except Exception:
            return

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = httpx.request(
            method, self.site.url + path, headers=self.site.headers(self.user), timeout=30, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def run(self, code: str) -> dict:
        """Submit ``code``; the finished request as the researcher sees it."""
        before = len(self.events)
        self.ws.send(json.dumps({"type": "execute", "code": code, "ref": "t"}))
        wait = threading.Event()
        for _ in range(300):
            accepted = [e for e in self.events[before:] if e.get("type") == "accepted"]
            if accepted:
                request_id = accepted[0]["request"]["id"]
                return wait_finished(lambda path: self.call("GET", path), request_id)
            wait.wait(0.1)
        raise TimeoutError(f"not accepted: {self.events[before:]}")

    def close(self) -> None:
        self.ws.close()


def get(site: RunningDatasite, user: str, path: str) -> httpx.Response:
    return httpx.get(site.url + path, headers=site.headers(user), timeout=30)


def review(site: RunningDatasite, user: str, output_id: int, decision: str, comment: str = ""):
    return httpx.post(
        f"{site.url}/api/outputs/{output_id}/review",
        headers=site.headers(user),
        json={"decision": decision, "comment": comment},
        timeout=30,
    )


def private_crosstab(site: RunningDatasite) -> pd.DataFrame:
    frame = pd.read_parquet(site.directory / "datasets" / "heart" / "private.parquet")
    return pd.crosstab(frame["sex"], frame["num"])


def failing_cells(table: pd.DataFrame) -> set[tuple[int, str]]:
    """(row, column label) of every cell the strict policy fails: 0 < n < 10, and zeros."""
    return {
        (i, str(column))
        for i in range(len(table))
        for j, column in enumerate(table.columns)
        if table.iloc[i, j] < 10
    }


def table_output(site: RunningDatasite, channel: Channel, code: str) -> tuple[dict, dict]:
    """Run ``code``; (the researcher's request view, the reviewer's view of its table)."""
    request = channel.run(code)
    assert request["status"] == "completed", request
    (output,) = request["outputs"]
    reviewer_view = get(site, "bob", f"/api/outputs/{output['id']}").json()
    return request, reviewer_view


def test_crosstab_hints_name_the_small_cells_and_the_researcher_sees_none(site):
    table = private_crosstab(site)
    if not (table == 1).any().any():
        pytest.skip("needs the UCI Switzerland file (a crosstab cell of 1)")
    request, view = held_table(site, CROSSTAB)
    hints = [f for f in view["findings"] if f["check"] == "small-cells-hint"]
    zeros = [f for f in view["findings"] if f["check"] == "zeros-hint"]
    assert all(f["verdict"] == "review" for f in view["findings"] if "hint" in f["check"])
    assert view["verdict"] == "review" and view["state"] == "pending"
    i, j = next((i, j) for i in range(len(table)) for j in range(table.shape[1])
                if table.iloc[i, j] == 1)  # fmt: skip
    label, column = table.index[i], table.columns[j]
    one = f"row {i} (sex={label}), column {column}"
    assert any(f["location"] == one and f["message"].startswith("hint: 1 here") for f in hints)
    located = {(f["location"].split(" ")[1], f["location"].rsplit("column ", 1)[1])
               for f in hints + zeros}  # fmt: skip
    assert located == {(str(r), c) for r, c in failing_cells(table)}
    assert any(f["check"] == "table-hint" and "counts" in f["message"] for f in view["findings"])
    # The researcher's summary is content-free: no hint, no count of small cells.
    (mine,) = request["outputs"]
    assert "hint" not in mine["summary"] and "content" not in mine


def test_the_variant_blanks_exactly_the_failing_cells_and_approving_releases_its_bytes(site):
    table = private_crosstab(site)
    failing = failing_cells(table)
    if not failing:
        pytest.skip("this dataset's crosstab has no failing cells")
    channel = Channel(site)
    try:
        request, view = table_output(site, channel, CROSSTAB)
        original_id = request["outputs"][0]["id"]
        (variant,) = view["variants"]
        assert set(variant) >= {"id", "kind", "content", "summary"}
        assert variant["kind"] == "suppressed" and variant["state"] == "pending"
        assert variant["summary"].startswith(f"{len(failing)} cell(s) under 10 blanked")
        grid = html_grid(variant["content"]["data"]["text/html"])
        assert grid is not None
        for i, row in enumerate(grid.cells):
            for j, cell in enumerate(row):
                expected = "" if (i, grid.columns[j]) in failing else str(table.iloc[i, j])
                assert cell == expected
        # Not in the reviewers' queue on its own: it is offered on its original.
        queue = get(site, "bob", "/api/reviews").json()
        assert variant["id"] not in {item["id"] for item in queue}
        assert any(v["id"] == variant["id"] for item in queue for v in item.get("variants", []))

        assert_researcher_unaware(site, channel, request["id"], variant["id"])

        decided = review(site, "bob", variant["id"], "approve")
        assert decided.status_code == 200, decided.text
        assert decided.json()["state"] == "released"
        released = released_event(channel, original_id)
    finally:
        channel.close()
    # The researcher got the variant's exact bytes, in the original's place.
    assert released["content"] == variant["content"]
    mine = get(site, "alice", f"/api/outputs/{original_id}").json()
    assert mine["id"] == original_id and mine["state"] == "released"
    assert mine["content"] == variant["content"] and mine["sha256"] == variant["sha256"]
    body = canonical_json({"msg_type": "display_data", "content": variant["content"]})
    assert hashlib.sha256(body).hexdigest() == variant["sha256"]
    assert get(site, "alice", f"/api/outputs/{variant['id']}").status_code == 404
    listing = get(site, "alice", f"/api/requests/{request['id']}").json()["outputs"]
    assert [o["id"] for o in listing] == [original_id]
    # The original is closed, saying what was released instead; all of it audited.
    closed = get(site, "bob", f"/api/outputs/{original_id}").json()
    assert closed["state"] == "denied" and "released with suppression" in closed["comment"]
    entries = audit(site)
    made = entries[(f"output:{variant['id']}", "output.variant")]
    assert made["sha256"] == variant["sha256"] and made["variant_of"] == original_id
    out = entries[(f"output:{variant['id']}", "output.released")]
    assert out["released_sha256"] == variant["sha256"]
    assert entries[(f"output:{original_id}", "output.denied")]["superseded_by"] == variant["id"]


def held_table(site: RunningDatasite, code: str) -> tuple[dict, dict]:
    """:func:`table_output` on a channel of its own."""
    channel = Channel(site)
    try:
        return table_output(site, channel, code)
    finally:
        channel.close()


def released_event(channel: Channel, output_id: int) -> dict:
    for _ in range(100):
        for event in channel.events:
            output = event.get("output") or {}
            if output.get("id") == output_id and output.get("state") == "released":
                return output
        threading.Event().wait(0.1)
    raise AssertionError(f"no release of output {output_id}: {channel.events}")


def assert_researcher_unaware(
    site: RunningDatasite, channel: Channel, request_id: int, variant_id: int
) -> None:
    """Before release the variant is nowhere a researcher can look."""
    assert get(site, "alice", f"/api/outputs/{variant_id}").status_code == 404
    for path in (f"/api/requests/{request_id}", "/api/requests?outputs=true"):
        text = get(site, "alice", path).text
        assert f'"id": {variant_id},' not in text and "suppressed" not in text
    for event in channel.events:
        assert (event.get("output") or {}).get("id") != variant_id
    assert not any("suppressed" in raw for raw in channel.raw)


def audit(site: RunningDatasite) -> dict[tuple[str, str], dict]:
    store = site.store()
    try:
        assert store.verify_audit() == []
        return {(e.target, e.action): e.detail for e in store.audit_entries()}
    finally:
        store.close()


def test_denying_the_original_closes_its_variant(site):
    request, view = held_table(site, LITERAL_TABLE)
    (variant,) = view["variants"]
    original_id = request["outputs"][0]["id"]
    assert review(site, "bob", original_id, "deny", "no").status_code == 200
    assert get(site, "bob", f"/api/outputs/{variant['id']}").json()["state"] == "denied"
    late = review(site, "bob", variant["id"], "approve")
    assert late.status_code == 409
    mine = get(site, "alice", f"/api/outputs/{original_id}").json()
    assert mine["state"] == "denied" and "content" not in mine


LITERAL_TABLE = (
    "import pandas as pd\n"
    "t = pd.DataFrame({'a': [25, 3], 'b': [40, 12]}, index=pd.Index(['x', 'y'], name='g'))\n"
    "t\n"
)


def test_two_person_rule_applies_to_the_variant(two_person):
    channel = Channel(two_person)
    try:
        request, view = table_output(two_person, channel, LITERAL_TABLE)
        (variant,) = view["variants"]
        original_id = request["outputs"][0]["id"]
        first = review(two_person, "bob", variant["id"], "approve")
        assert first.json()["state"] == "pending"
        mine = get(two_person, "alice", f"/api/outputs/{original_id}").json()
        assert mine["state"] == "pending" and "content" not in mine
        assert review(two_person, "bob", variant["id"], "approve").status_code == 409
        second = review(two_person, "dave", variant["id"], "approve")
        assert second.json()["state"] == "released"
        event = released_event(channel, original_id)
    finally:
        channel.close()
    assert event["content"] == variant["content"]


def test_html_with_hidden_content_gives_a_variant_of_the_cells_only(site):
    hidden = (
        "<div style='display:none'>SECRET-ROW 63 1 233</div><!-- SECRET-COMMENT -->"
        "<table><thead><tr><th></th><th>n</th></tr></thead>"
        "<tbody><tr><th title='SECRET-ATTR'>a</th><td>40</td></tr>"
        "<tr><th>b</th><td>2</td></tr></tbody></table>"
        "<style>td::after{content:'SECRET-CSS'}</style>"
    )
    code = f"from IPython.display import HTML, display\ndisplay(HTML({hidden!r}))\n"
    _, view = held_table(site, code)
    (variant,) = view["variants"]
    text = json.dumps(variant["content"])
    assert "SECRET" not in text
    grid = html_grid(variant["content"]["data"]["text/html"])
    assert grid is not None and grid.cells == (("40",), ("",))
    assert [f["location"] for f in view["findings"] if f["check"] == "small-cells-hint"] == [
        "row 1 (index=b), column n"
    ]


def test_text_in_a_cell_or_text_and_value_disagreeing_gives_no_variant(site):
    in_cell = (
        "<table><thead><tr><th></th><th>n</th></tr></thead><tbody>"
        "<tr><th>a</th><td>3<span style='display:none'>SECRET</span></td></tr></tbody></table>"
    )
    forged = (
        "import pandas as pd\n"
        "from remote_kernel.researcher.values import encode_value\n"
        "shown = pd.DataFrame({'n': [40, 2]}, index=['a', 'b'])\n"
        "other = pd.DataFrame({'n': [40, 2, 7]}, index=['a', 'b', 'SECRET'])\n"
        "display({'text/html': shown.to_html(), 'text/plain': repr(shown),\n"
        "         'application/vnd.remote-kernel.value+json': encode_value(other)}, raw=True)\n"
    )
    channel = Channel(site)
    try:
        _, cell_view = table_output(
            site, channel, f"from IPython.display import HTML\nHTML({in_cell!r})\n"
        )
        _, forged_view = table_output(site, channel, forged)
    finally:
        channel.close()
    assert cell_view["variants"] == []
    assert forged_view["variants"] == []
    mismatch = [f for f in forged_view["findings"] if f["check"] == "table-mismatch"]
    assert mismatch and "different tables" in mismatch[0]["message"]


def test_float_tables_get_no_count_hints(site):
    code = "import pandas as pd\npd.DataFrame({'mean': [1.5, 2.25]}, index=['a', 'b'])\n"
    _, view = held_table(site, code)
    checks = [f["check"] for f in view["findings"]]
    assert "small-cells-hint" not in checks and view["variants"] == []
    assert any(f["check"] == "table-hint" and "not read as counts" in f["message"]
               for f in view["findings"])  # fmt: skip


def cli(site: RunningDatasite, *args: str) -> str:
    token = ["--url", site.url, "--token", site.tokens["bob"]]
    done = subprocess.run(
        [sys.executable, "-m", "remote_kernel.cli", "review", *args, *token],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_command_line_shows_and_approves_a_variant(site):
    channel = Channel(site)
    try:
        request, view = table_output(site, channel, LITERAL_TABLE)
        (variant,) = view["variants"]
        original_id = request["outputs"][0]["id"]
        shown = cli(site, "show", str(original_id))
        assert f"--- variant {variant['id']} (suppressed, pending): 1 cell(s) under 10" in shown
        assert f"remote-kernel review approve {variant['id']}" in shown
        approved = cli(site, "approve", str(variant["id"]))
        assert approved.strip() == f"output {variant['id']} released"
        event = released_event(channel, original_id)
    finally:
        channel.close()
    assert event["content"] == variant["content"]
