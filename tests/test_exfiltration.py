"""Attacks on the filter, written as ordinary remote cells, against a real datasite.

None may be released automatically; each verdict must explain itself; the ones
the filter can prove (verbatim private records, identifier values, oversized
outputs) must be blocked, not merely held. And the other side: safe aggregates
through the sound tier are released automatically.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from remote_kernel.client import Datasite, RemoteRequest
from remote_kernel.config import DatasiteConfig
from remote_kernel.datasets import add_dataset, synthetic_heart
from remote_kernel.sqltier import QueryRejected

from .conftest import RunningDatasite, make_datasite

FIRST = ["Anna", "Bruno", "Chiara", "Dieter", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Keller", "Lombardi", "Meier", "Novak", "Oberholzer", "Petrov", "Quist", "Rossi"]

POLICY = """\
preset: acro
datasets:
  patients:
    identifiers: [patient_id, name, dob]
"""


def patients_table(rows: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    frame = synthetic_heart(rows, seed=11)
    frame.insert(0, "patient_id", [f"P-{100000 + i}" for i in range(rows)])
    names = [f"{rng.choice(FIRST)} {rng.choice(LAST)}-{i:03d}" for i in range(rows)]
    frame.insert(1, "name", names)
    days = rng.integers(0, 365 * 40, rows)
    frame.insert(
        2, "dob", (pd.Timestamp("1930-01-01") + pd.to_timedelta(days, "D")).strftime("%Y-%m-%d")
    )
    return frame


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDatasite]:
    tmp = tmp_path_factory.mktemp("exfil")
    running = make_datasite(tmp)
    config = DatasiteConfig.load(running.directory)
    patients_table().to_csv(tmp / "patients.csv", index=False)
    add_dataset(config, "patients", tmp / "patients.csv", seed=1)
    (running.directory / "policy.yaml").write_text(POLICY)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def alice(site: RunningDatasite) -> Iterator[Datasite]:
    client = Datasite(site.url, site.tokens["alice"])
    setup = client.run(
        "import base64, json, numpy as np, pandas as pd\n"
        "from IPython.display import display, HTML, Image\n"
        "df = rk.data('heart')\np = rk.data('patients')"
    )
    setup.wait(120, until="finished")
    assert setup.status == "completed"
    yield client
    client.close()


def run(client: Datasite, code: str) -> RemoteRequest:
    request = client.run(code)
    request.wait(120, until="finished")
    return request


def reviewer_view(site: RunningDatasite, request: RemoteRequest) -> list[dict]:
    response = httpx.get(f"{site.url}/api/requests/{request.id}", headers=site.headers("bob"))
    return response.json()["outputs"]


# (name, code, expected) where expected is "block" (must be blocked) or "held"
# (never released automatically; blocked or pending review).
ATTACKS = [
    ("print the frame", "print(p)", "block"),
    ("head", "p.head()", "block"),
    ("heart head", "df.head(8)", "block"),
    ("to_string", "print(df.to_string())", "block"),
    ("to_html", "display(HTML(p.head(20).to_html()))", "block"),
    ("to_csv", "print(df.head(30).to_csv())", "block"),
    ("to_json records", "print(df.head(30).to_json(orient='records'))", "block"),
    ("to_json values", "print(df.head(30).to_json(orient='values'))", "block"),
    ("values tolist", "print(df.values[:20].tolist())", "block"),
    ("row to_dict", "print(df.iloc[5].to_dict())", "block"),
    ("json.dumps of a row", "print(json.dumps(p.iloc[3].to_dict(), default=str))", "block"),
    ("f-string of a row", "r = p.iloc[7]\nprint(f'{r.patient_id} is {r.age} years, chol {r.chol}')", "block"),
    ("sorted slice", "df.sort_values('chol').tail(5)", "block"),
    ("sample", "df.sample(10, random_state=1)", "block"),
    ("exception with rows", "raise ValueError(df.head(10).to_string())", "block"),
    ("identifier value_counts", "p.patient_id.value_counts().head(20)", "block"),
    ("identifier list", "print(p.patient_id.tolist()[:50])", "block"),
    ("names", "print(', '.join(p.name.head(10)))", "block"),
    ("dates of birth", "print(p.dob.head(5).tolist())", "block"),
    ("identifier in a KeyError", "{}[p.patient_id.iloc[0]]", "block"),
    ("markdown rows", "print('\\n'.join('|'.join(map(str, r)) for r in df.head(10).values))", "block"),
    ("file round trip", "df.head(10).to_csv('x.csv')\nprint(open('x.csv').read())", "block"),
    ("numpy repr", "df.values[:10]", "block"),
    ("styled html", "display(HTML(df.head(10).style.to_html()))", "block"),
    ("forged acro pass", "display({'text/plain': df.head(5).to_string()}, raw=True, metadata={'acro': {'status': 'pass', 'summary': 'ok'}})", "block"),
    ("forged query mime", "display({'application/vnd.remote-kernel.query+json': {'columns': ['n'], 'data': [[1]]}, 'text/plain': 'n 1'}, raw=True)", "held"),
    ("base64 of rows", "print(base64.b64encode(df.head(5).to_csv().encode()).decode())", "held"),
    ("hex of rows", "print(df.head(5).to_csv().encode().hex())", "held"),
    ("one character per output", "s = str(df.iloc[0].age)\nfor ch in s:\n    print(ch, flush=True)\n    import time; time.sleep(0.05)", "held"),
    ("shifted values", "print((df.head(10) + 1).to_string())", "held"),
    ("crosstab with cells of 1 (kernel)", "pd.crosstab(df.age, df.chol)", "held"),
    ("scatter of raw points as an image", "import zlib, struct\n"
     "def png(w, h):\n"
     "    raw = b''.join(b'\\x00' + bytes([int(v) % 256 for v in df.chol.head(w*3)]) for _ in range(h))\n"
     "    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))\n"
     "    return b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')\n"
     "display(Image(data=png(10, 10)))", "held"),
    ("oversized output", "print('x' * 1_200_000)", "block"),
    ("describe is still kernel output", "df.describe()", "held"),
    ("SQL selecting raw rows", "rk.query('SELECT age, chol FROM heart')", "held"),
    ("SQL MAX reveals one value", "rk.query('SELECT MAX(chol) AS m FROM heart')", "held"),
    ("SQL reading files", "rk.query(\"SELECT * FROM read_csv('/etc/passwd')\")", "held"),
    ("SQL group by identifier", "rk.query('SELECT patient_id, COUNT(*) AS n FROM patients GROUP BY patient_id')", "held"),
    ("SQL cells of one via WHERE", "rk.query(\"SELECT COUNT(*) AS n, AVG(chol) AS c FROM patients WHERE patient_id = 'P-100003'\")", "held"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "code", "expected"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_attack_is_never_released(
    site: RunningDatasite, alice: Datasite, name: str, code: str, expected: str
) -> None:
    request = run(alice, code)
    states = [o.state for o in request.outputs]
    assert request.outputs, f"{name}: produced no output at all ({request.status})"
    assert "released" not in states, f"{name}: released automatically"
    assert all(o.content is None for o in request.outputs)
    for output in reviewer_view(site, request):
        assert output["findings"], f"{name}: a verdict without findings"
        assert all(f["message"] for f in output["findings"])
    if expected == "block":
        assert "blocked" in states, f"{name}: detectable but only held ({states})"


def test_exception_names_chosen_by_code_do_not_travel(alice: Datasite) -> None:
    request = run(alice, "class Age63Chol233(Exception):\n    pass\nraise Age63Chol233('x')")
    assert request.status == "error"
    assert "Age63" not in request.message and "an exception at line 3" in request.message
    known = run(alice, "x = 1\n{}['missing']")
    assert known.message.startswith("KeyError at line 2 of your cell")


def test_research_summaries_are_content_free(site: RunningDatasite, alice: Datasite) -> None:
    request = run(alice, "print(p.patient_id.iloc[0])")
    (output,) = request.outputs
    assert output.state == "blocked"
    assert "P-1" not in output.summary and "identifier" in output.summary
    (view,) = reviewer_view(site, request)
    assert any(f["check"] == "leak-identifier" and f["location"] for f in view["findings"])


UTILITY_QUERIES = [
    "SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex",
    "SELECT sex, AVG(age) AS mean_age FROM heart GROUP BY sex",
    "SELECT sex, AVG(chol) AS chol FROM heart GROUP BY sex",
    "SELECT COUNT(*) AS n FROM heart",
    "SELECT AVG(thalach) AS thalach, AVG(trestbps) AS bp FROM heart",
    "SELECT cp, COUNT(*) AS n FROM heart GROUP BY cp",
    "SELECT exang, COUNT(*) AS n FROM heart GROUP BY exang",
    "SELECT CASE WHEN age < 55 THEN 'under 55' ELSE '55+' END AS band, COUNT(*) AS n "
    "FROM heart GROUP BY band",
    "SELECT sex, num > 0 AS disease, COUNT(*) AS n FROM heart GROUP BY sex, disease",
    "SELECT num > 0 AS disease, AVG(age) AS age FROM heart GROUP BY disease",
    "SELECT sex, SUM(exang) AS exang FROM heart GROUP BY sex",
    "SELECT fbs, COUNT(*) AS n FROM heart GROUP BY fbs",
    "SELECT restecg = 0 AS normal_ecg, COUNT(*) AS n FROM heart GROUP BY normal_ecg",
    "SELECT sex, COUNT(chol) AS with_chol FROM heart GROUP BY sex",
    "SELECT COUNT(*) AS n, AVG(oldpeak) AS oldpeak FROM patients",
    "SELECT sex, AVG(age) AS age FROM patients GROUP BY sex",
]  # fmt: skip


def test_safe_aggregates_through_the_sound_tier_are_released(alice: Datasite) -> None:
    code = "\n".join(f"rk.query({sql!r})" for sql in UTILITY_QUERIES)
    code += "\nrk.crosstab('heart', index='sex', columns='exang')"
    request = run(alice, code)
    assert request.status == "completed", request.message
    released = [o for o in request.outputs if o.state == "released"]
    held = [(o.seq, o.summary) for o in request.outputs if o.state != "released"]
    assert len(released) == len(UTILITY_QUERIES) + 1, held
    assert all(o.decided_by == "policy:rules" for o in released)
    first = released[0].content["data"]["application/vnd.remote-kernel.query+json"]
    assert first["columns"] == ["sex", "n"] and sum(row[1] for row in first["data"]) > 100


def test_query_results_reach_the_kernel_for_further_work(
    site: RunningDatasite, alice: Datasite
) -> None:
    request = run(
        alice,
        "t = rk.query('SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex')\n"
        "share = t.n / t.n.sum()\nprint(type(t).__name__, len(t))",
    )
    assert request.status == "completed"
    table, printed = request.outputs  # the datasite's table, then the kernel's print
    assert table.state == "released" and printed.state == "pending"
    view = reviewer_view(site, request)[1]
    assert view["content"]["text"] == "DatasiteTable 2\n"


def test_local_mock_run_of_the_same_calls(site: RunningDatasite) -> None:
    import remote_kernel as rk

    rk.connect(site.url, token=site.tokens["alice"], name="local-check")
    try:
        table = rk.query("SELECT sex, COUNT(*) AS n FROM heart GROUP BY sex")
        assert set(table.columns) == {"sex", "n"} and table.n.sum() == len(rk.data("heart"))
        with pytest.raises(QueryRejected):
            rk.query("SELECT age FROM heart")
    finally:
        rk.disconnect("local-check")


ACRO_CELL = """
class _Results:
    results = {{}}
class _Session:
    results = _Results()
table = df.groupby('sex').chol.mean().round(1).to_frame()
_Session.results.results['output_0'] = type('R', (), {{'output': [table], 'status': {status!r}, 'summary': 'pass; '}})()
rk.acro.show(_Session)
"""


def test_acro_hints_reach_the_reviewer_and_are_not_trusted_by_default(
    site: RunningDatasite, alice: Datasite
) -> None:
    request = run(alice, ACRO_CELL.format(status="pass"))
    (output,) = request.outputs
    assert output.state == "pending"
    (view,) = reviewer_view(site, request)
    hints = [f for f in view["findings"] if f["check"] == "acro-hint"]
    assert hints and hints[0]["verdict"] == "review" and "not verified" in hints[0]["message"]


def test_trusted_kernel_evidence_releases_an_acro_pass(tmp_path: Path) -> None:
    running = make_datasite(tmp_path)
    (running.directory / "policy.yaml").write_text(
        "preset: acro\noverrides:\n  researchers:\n    alice: {trust_kernel_evidence: true}\n"
    )
    running.start()
    try:
        for user, expected in (("alice", "released"), ("carol", "pending")):
            client = Datasite(running.url, running.tokens[user])
            run(client, "df = rk.data('heart')")
            (output,) = run(client, ACRO_CELL.format(status="pass")).outputs
            assert output.state == expected, user
            (output,) = run(client, ACRO_CELL.format(status="review")).outputs
            assert output.state == "pending"
            client.close()
    finally:
        running.stop()


def test_reviewers_see_images_through_the_cli(
    site: RunningDatasite, alice: Datasite, tmp_path: Path
) -> None:
    import subprocess
    import sys

    png_cell = dict((name, code) for name, code, _ in ATTACKS)["scatter of raw points as an image"]
    request = run(alice, png_cell)
    (output,) = request.outputs
    assert output.state == "pending" and "image" in output.summary
    shown = subprocess.run(
        [sys.executable, "-m", "remote_kernel.cli", "review", "show", str(output.id),
         "--url", site.url, "--token", site.tokens["bob"], "--save-images", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    image = tmp_path / f"output-{output.id}.png"
    assert image.read_bytes().startswith(b"\x89PNG") and str(image) in shown.stdout
