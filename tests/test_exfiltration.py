"""Attacks on the filter, written as ordinary remote cells, against a real datasite.

None may be released automatically; each verdict must explain itself; the ones
the filter can prove (verbatim private records, identifier values, oversized
outputs) must be blocked, not merely held. And the other side: safe aggregates
through the sound tier are released automatically.

The second half forges the value channel: outputs carrying a hand-made
``application/vnd.remote-kernel.value+json`` payload (what the datasite
kernel's displayhook attaches to a cell's last value). They run as ``carol``,
whom this datasite's policy trusts with kernel evidence, and every forged
output claims an ACRO "pass": the most permissive setting short of
``--insecure-release-all``, where the filter's own findings are all that stands
between a forged output and its release.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from remote_kernel.checks.filter import InsecureReleaseAllFilter, value_findings
from remote_kernel.datasite.config import DatasiteConfig
from remote_kernel.datasite.datasets import add_dataset, synthetic_heart
from remote_kernel.protocol.errors import QueryRejected
from remote_kernel.protocol.models import OutputItem, Verdict
from remote_kernel.protocol.values import VALUE_MIME
from remote_kernel.researcher.client import Datasite, RemoteOutput, RemoteRequest
from remote_kernel.researcher.values import PickledValue, decode_value, encode_value

from .conftest import RunningDatasite, make_datasite

FIRST = ["Anna", "Bruno", "Chiara", "Dieter", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas"]
LAST = ["Keller", "Lombardi", "Meier", "Novak", "Oberholzer", "Petrov", "Quist", "Rossi"]

POLICY = """\
preset: acro
datasets:
  patients:
    identifiers: [patient_id, name, dob]
overrides:
  researchers:
    carol: {trust_kernel_evidence: true}
"""
SETUP = (
    "import base64, json, numpy as np, pandas as pd\n"
    "from IPython.display import display, HTML, Image\n"
    "df = rk.data('heart')\np = rk.data('patients')"
)


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
    setup = client.run(SETUP)
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
    # A cell that raised also gets the datasite's own note (type and lines of the cell,
    # quoted from the code): released at once, and nothing else of the kernel's.
    notes = [o for o in request.outputs if is_error_note(o, code)]
    kernel = [o for o in request.outputs if o not in notes]
    states = [o.state for o in kernel]
    assert kernel, f"{name}: produced no output at all ({request.status})"
    assert "released" not in states, f"{name}: released automatically"
    assert all(o.content is None for o in kernel)
    for output in reviewer_view(site, request):
        assert output["findings"], f"{name}: a verdict without findings"
        assert all(f["message"] for f in output["findings"])
    if expected == "block":
        assert "blocked" in states, f"{name}: detectable but only held ({states})"


def is_error_note(output: RemoteOutput, code: str) -> bool:
    """The datasite's released note for an error: a known name, then lines of ``code`` only;
    or its note of a refused query: the refusal's words, made from the query text."""
    made_by = ((output.content or {}).get("metadata") or {}).get("remote_kernel") or {}
    if output.state == "released" and made_by.get("kind") == "query-refusal":
        assert output.text.startswith("rk.query refused at ")
        return True
    if output.state != "released" or made_by.get("kind") != "error-summary":
        return False
    head, *lines = output.text.splitlines()
    source = code.splitlines()
    assert head.endswith("in your cell; the message and values are held for review")
    for line in lines:
        number, _, quoted = line.strip().removeprefix("line ").partition(": ")
        assert source[int(number) - 1].rstrip().strip() == quoted.strip()
    return True


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


# --- forged values and other value-channel attacks --------------------------------------------

#: Helpers defined in the attacker's kernel at the datasite: researcher code can emit any
#: display_data / execute_result / update_display_data with any payload under the value mime.
FORGE = '''
import io, os, pickle, struct
import pyarrow as pa
from remote_kernel.researcher.values import encode_value
VALUE = 'application/vnd.remote-kernel.value+json'
PASS = {'acro': {'status': 'pass', 'summary': 'all cells pass'}}
BENIGN = 'sex    n\\n0     97\\n1    206'

def arrow(table, **options):
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=True)
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema, options=pa.ipc.IpcWriteOptions(**options)) as w:
        w.write_table(table)
    return sink.getvalue()

def b64(raw):
    return base64.b64encode(raw).decode()

def table_payload(raw, shape=(1, 1)):
    return {'type': 'pandas.DataFrame', 'kind': 'dataframe', 'shape': list(shape), 'arrow': b64(raw)}

class Forged:
    """A last expression shown as the forged bundle; it cannot be pickled, so the
    displayhook attaches no value of its own."""
    def __init__(self, bundle):
        self.bundle = bundle
    def _repr_mimebundle_(self, include=None, exclude=None):
        return self.bundle, PASS
    def __reduce__(self):
        raise TypeError('not picklable')

def forge(payload, how='display', text=BENIGN):
    bundle = {'text/plain': text, VALUE: payload}
    if how == 'display':
        display(bundle, raw=True, metadata=PASS)
    elif how == 'publish':
        get_ipython().display_pub.publish(bundle, metadata=PASS)
    elif how == 'update':
        handle = display({'text/plain': 'placeholder'}, raw=True, display_id=True)
        handle.update(bundle, raw=True, metadata=PASS)
    elif how == 'result':
        return Forged(bundle)
'''


@pytest.fixture(scope="module")
def carol(site: RunningDatasite) -> Iterator[Datasite]:
    """A researcher this datasite trusts with kernel evidence (an ACRO pass releases)."""
    client = Datasite(site.url, site.tokens["carol"])
    setup = run(client, SETUP + FORGE)
    assert setup.status == "completed", setup.message
    yield client
    client.close()


@pytest.fixture(scope="module")
def forging_alice(alice: Datasite) -> Datasite:
    """``alice`` (kernel evidence not trusted) with the forging helpers."""
    setup = run(alice, FORGE)
    assert setup.status == "completed", setup.message
    return alice


def findings_of(site: RunningDatasite, request: RemoteRequest, msg_type: str) -> list[dict]:
    """The reviewer's findings of the request's one output of ``msg_type``."""
    (output,) = [o for o in reviewer_view(site, request) if o["msg_type"] == msg_type]
    return output["findings"]


def peak_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def server_is_up(site: RunningDatasite) -> bool:
    assert site.process is not None
    alive = site.process.poll() is None
    return alive and httpx.get(site.url + "/api/health", timeout=5).status_code == 200


def test_a_clean_forged_value_of_a_trusted_researcher_is_released(carol: Datasite) -> None:
    """The control: in this setting a forged output is released unless the filter finds
    something, so the blocks below are the filter's doing, not the policy's."""
    request = run(carol, "forge(encode_value(df.groupby('sex').chol.mean().round(1).to_frame()))")
    (output,) = request.outputs
    assert output.state == "released", output.summary
    value = decode_value(output.data[VALUE_MIME])
    assert list(value.columns) == ["chol"] and len(value) == 2


# (name, code, check, where): the finding that must block it, and where it must be found.
VALUE_LEAKS = [
    ("dataframe of private rows", "forge(encode_value(df.head(20)))", "leak-record", "value line"),
    ("dataframe of identifiers", "forge(encode_value(p[['patient_id', 'name', 'age']].head(10)))", "leak-identifier", "value line"),
    ("series: one private row", "forge(encode_value(df.dropna().iloc[5]))", "leak-record", "value line"),
    ("series of identifiers", "forge(encode_value(p.patient_id.head(10)))", "leak-identifier", "value line"),
    ("float32 rows", "forge(encode_value(df.dropna().head(20).astype('float32')))", "leak-record", "value line"),
    ("identifier as a column name", "forge(encode_value(pd.DataFrame({p.patient_id.iloc[3]: [1, 2]})))", "leak-identifier", "value line"),
    ("ndarray of private rows", "forge(encode_value(df.dropna().head(20).to_numpy()))", "leak-record", "value line"),
    ("json: nested lists of private rows", "forge({'type': 'list', 'kind': 'json', 'data': df.dropna().head(20).values.tolist()})", "leak-record", VALUE_MIME),
    ("json: records", "forge(encode_value(df.dropna().head(20).to_dict('records')))", "leak-record", VALUE_MIME),
    # Places a printed table does not show: DataFrame.attrs (Arrow schema metadata), the
    # categories no row uses, and fields of the message besides its data.
    ("rows in DataFrame.attrs", "t = df.groupby('sex').chol.mean().round(1).to_frame()\nt.attrs['notes'] = df.dropna().head(20).values.tolist()\nforge(encode_value(t))", "leak-record", "value metadata"),
    ("identifiers as unused categories", "c = pd.DataFrame({'site': pd.Categorical(['a'] * 3, categories=['a', *p.patient_id.head(30)])})\nforge(encode_value(c))", "leak-identifier", "value categories"),
    ("rows in the display metadata", "display({'text/plain': BENIGN}, raw=True, metadata={**PASS, 'rows': df.dropna().head(20).values.tolist()})", "leak-record", "output's other fields"),
    ("identifier as the display id", "h = display({'text/plain': BENIGN}, raw=True, metadata=PASS, display_id=p.patient_id.iloc[4])", "leak-identifier", "output's other fields"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "code", "check", "where"), VALUE_LEAKS, ids=[a[0] for a in VALUE_LEAKS]
)
def test_private_data_in_a_forged_value_is_blocked(
    site: RunningDatasite, carol: Datasite, name: str, code: str, check: str, where: str
) -> None:
    request = run(carol, code)
    assert request.status == "completed", request.message
    (output,) = request.outputs
    assert output.state == "blocked", f"{name}: {output.state} ({output.summary})"
    findings = findings_of(site, request, "display_data")
    assert any(
        f["check"] == check and f["verdict"] == "block" and (f["location"] or "").startswith(where)
        for f in findings
    ), findings


# Payloads that are not what they say: each must be blocked as undecodable, quickly, and
# leave the server up and small (some crashed it, hung it or filled its memory before).
MALFORMED = [
    ("kind dataframe, bytes are a pickle", "forge(table_payload(pickle.dumps({'rows': df.head(20).values.tolist()})))"),
    ("truncated Arrow", "v = encode_value(df.head(20))\nraw = base64.b64decode(v['arrow'])\nv['arrow'] = b64(raw[: len(raw) // 2])\nforge(v)"),
    ("bytes after the end of the stream", "v = encode_value(df.groupby('sex').chol.mean().round(1).to_frame())\n"
     "v['arrow'] = b64(base64.b64decode(v['arrow']) + df.head(20).to_csv().encode())\nforge(v)"),
    ("rows under null slots", "vals = df.chol.head(20).fillna(0).astype('int64').to_numpy()\n"
     "hidden = pa.Array.from_buffers(pa.int64(), 20, [pa.py_buffer(bytes(3)), pa.py_buffer(vals.tobytes())])\n"
     "forge(table_payload(arrow(pa.table({'x': hidden})), (20, 1)))"),
    ("string offsets past the data (crashed the server)", "raw = arrow(pa.table({'s': pa.array(['abc', 'def'], pa.string())}))\n"
     "at = raw.find(struct.pack('<3i', 0, 3, 6))\n"
     "forge(table_payload(raw[:at] + struct.pack('<3i', 0, 3, 50_000_000) + raw[at + 12:], (2, 1)))"),
    ("zstd decompression bomb", "forge(table_payload(arrow(pa.table({'x': np.zeros(30_000_000, 'int64')}), compression='zstd')))"),
    ("a null column of 10^8 rows", "forge(table_payload(arrow(pa.table({'n': pa.nulls(10**8)}))))"),
    ("a dictionary repeating 20 kB 200,000 times", "codes = pa.array(np.zeros(200_000, 'int8'))\n"
     "forge(table_payload(arrow(pa.table({'c': pa.DictionaryArray.from_arrays(codes, pa.array(['x' * 20_000]))}))))"),
    ("declared shape larger than the table", "v = encode_value(df.head(3))\nv['shape'] = [10**12, 14]\nforge(v)"),
    ("shape is not a list (crashed the filter)", "v = encode_value(df.head(3))\nv['shape'] = 7\nforge(v)"),
    ("ndarray declaring 10^18 cells", "forge({'kind': 'ndarray', 'dtype': '<f8', 'shape': [10**9, 10**9], 'data': [1.0]})"),
    ("ndarray of 400 kB strings", "forge({'kind': 'ndarray', 'dtype': '<U100000', 'shape': [2], 'data': ['a', 'b']})"),
    ("payload is a string", "forge('63 1 1 145 233')"),
    ("payload is a list", "forge([1, 2, 3])"),
    ("unknown kind", "forge({'kind': 'parquet', 'data': 'UEFSMQ=='})"),
    ("series without its bytes", "forge({'kind': 'series', 'shape': [1]})"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "code"), MALFORMED, ids=[a[0] for a in MALFORMED])
def test_malformed_values_are_blocked_and_the_server_stays_up(
    site: RunningDatasite, carol: Datasite, name: str, code: str
) -> None:
    assert site.process is not None
    peak = peak_rss_mb(site.process.pid)
    request = run(carol, code)
    assert request.status == "completed", f"{name}: {request.status} {request.message}"
    (output,) = request.outputs
    assert output.state == "blocked", f"{name}: {output.state} ({output.summary})"
    findings = findings_of(site, request, "display_data")
    assert any(f["check"] == "value-undecodable" for f in findings), findings
    assert server_is_up(site)
    assert peak_rss_mb(site.process.pid) - peak < 150, "decoding the value took memory"


@pytest.mark.parametrize(
    ("how", "msg_type"),
    [("display", "display_data"), ("publish", "display_data"),
     ("update", "update_display_data"), ("result", "execute_result")],
)  # fmt: skip
def test_every_output_message_carrying_a_value_is_checked(
    site: RunningDatasite, carol: Datasite, how: str, msg_type: str
) -> None:
    request = run(carol, f"forge(encode_value(df.head(20)), how={how!r})")
    (forged,) = [o for o in request.outputs if o.msg_type == msg_type]
    assert forged.state == "blocked", forged.summary
    findings = findings_of(site, request, msg_type)
    assert any(f["check"] == "leak-record" and f["location"].startswith("value") for f in findings)
    assert "released" not in [o.state for o in request.outputs]


def test_a_value_whose_kind_disagrees_with_its_content_is_not_released(
    site: RunningDatasite, forging_alice: Datasite
) -> None:
    """Declared json, the data an Arrow table of private rows in base64: to the filter an
    opaque string (an encoding it cannot see through), so it is held for a person."""
    request = run(
        forging_alice, "forge({'type': 'str', 'kind': 'json', 'data': b64(arrow(df.head(20)))})"
    )
    (output,) = request.outputs
    assert output.state == "pending"
    checks = {f["check"] for f in findings_of(site, request, "display_data")}
    assert "kernel-output" in checks or "acro-hint" in checks


def test_pickled_values_are_held_and_never_unpickled_by_the_server(
    site: RunningDatasite, carol: Datasite, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    # Whoever unpickles these runs exec() and leaves a file named after their pid.
    mark = f"import os; open({str(marks)!r} + '/unpickled-by-%d' % os.getpid(), 'w').close()"
    run(carol, f"class Mark:\n    def __reduce__(self):\n        return (exec, ({mark!r},))")
    model = run(carol, "forge(encode_value(Mark()), how='result')")
    as_table = run(carol, "forge(table_payload(pickle.dumps(Mark())))")
    ids = run(carol, "forge(encode_value(set(p.patient_id.head(5))))")

    (held,) = model.outputs
    assert held.state == "pending", "a pickle must wait for a person, whatever the policy trusts"
    checks = {f["check"]: f["verdict"] for f in findings_of(site, model, "execute_result")}
    assert checks["pickled-value"] == "review" and checks["acro-hint"] == "release"
    assert [o.state for o in as_table.outputs] == ["blocked"]
    assert [o.state for o in ids.outputs] == ["blocked"]
    id_findings = findings_of(site, ids, "display_data")
    assert any(f["check"] == "leak-identifier" for f in id_findings)

    reviewer = Datasite(site.url, site.tokens["bob"])
    try:
        reviewer.approve(held.id)
    finally:
        reviewer.close()
    value = model.wait(60).value()
    assert isinstance(value, PickledValue)
    assert list(marks.iterdir()) == [], "something unpickled a researcher's payload"
    # The marks do work: loading it here (the researcher's choice) runs it, in this process.
    value.load(trust=True)
    assert sorted(m.name for m in marks.iterdir()) == [f"unpickled-by-{os.getpid()}"]
    assert site.process is not None and os.getpid() != site.process.pid


def test_pickles_are_held_even_by_the_release_everything_filter() -> None:
    payload = encode_value(lambda x: x + 1)
    assert payload is not None and payload["kind"] == "pickle"
    item = OutputItem("execute_result", {"data": {"text/plain": "f", VALUE_MIME: payload}})
    decision = InsecureReleaseAllFilter().check(item)
    assert decision.verdict is Verdict.REVIEW
    assert [f.check for f in decision.findings if f.verdict is Verdict.REVIEW] == ["pickled-value"]


FUZZ = """
import base64, json, random
import pandas as pd
from remote_kernel.checks.filter import value_findings
from remote_kernel.protocol.models import OutputItem
from remote_kernel.protocol.values import VALUE_MIME
from remote_kernel.researcher.values import encode_value
frame = pd.DataFrame({"a": [1, 2, 3], "s": ["x", None, "zz"], "f": [0.5, None, 2.0],
                      "c": pd.Categorical(["u", "v", "u"]), "t": pd.date_range("2020", periods=3)})
payload = encode_value(frame)
raw = bytearray(base64.b64decode(payload["arrow"]))
rng = random.Random(7)
verdicts = {}
for i in range(400):
    mutant = bytearray(raw)
    if i % 4 == 0:
        mutant = mutant[: rng.randrange(len(mutant))]
    else:
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(mutant))
            mutant[at] = rng.choice([0, 0xFF, mutant[at] ^ (1 << rng.randrange(8)), rng.randrange(256)])
    item = OutputItem("display_data", {"data": {VALUE_MIME: {**payload, "arrow": base64.b64encode(bytes(mutant)).decode()}}})
    findings = value_findings(item, None)
    verdicts[findings[0].check] = verdicts.get(findings[0].check, 0) + 1
print(json.dumps(verdicts))
"""


def test_corrupted_arrow_bytes_never_crash_the_filter() -> None:
    """Random truncations and byte flips of a value's Arrow bytes, decoded by the filter in
    a process of its own: each one is decided (blocked as undecodable, or a still-valid
    canonical table), and none takes the process down."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FUZZ)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    counts = json.loads(done.stdout)
    assert sum(counts.values()) == 400 and counts.get("value-undecodable", 0) > 300, counts


KERNEL_SIDE = {"_encode", "load", "receive_pushes", "pickle_for_push", "attach_values"}
PICKLERS = {"pickle", "cloudpickle", "dill", "marshal", "shelve", "joblib", "eval", "exec"}


def test_nothing_the_filter_calls_in_values_py_can_unpickle() -> None:
    """Invariant 3 on the source: every function of values.py except the kernel's own
    (encoding, pushing, loading with trust) is free of pickle modules, eval and exec."""
    import ast

    import remote_kernel.protocol.values

    tree = ast.parse(Path(remote_kernel.protocol.values.__file__).read_text())
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name not in KERNEL_SIDE:
            for inner in ast.walk(node):
                names = {inner.id} if isinstance(inner, ast.Name) else set()
                if isinstance(inner, ast.Import | ast.ImportFrom):
                    names = {a.name.split(".")[0] for a in inner.names}
                    names.add((getattr(inner, "module", "") or "").split(".")[0])
                if names & PICKLERS:
                    problems.append(f"{node.name}:{inner.lineno} uses {names & PICKLERS}")
    assert problems == []


def test_value_findings_read_a_table_the_way_the_researcher_gets_it() -> None:
    """No server needed: a value the datasite encoder made decodes, re-encodes to the same
    bytes and is described with its true shape; the same bytes with one byte appended are
    refused."""
    frame = pd.DataFrame({"s": pd.Series(["a", "b"], dtype=object), "n": [1, 2]})
    payload = encode_value(frame)
    assert payload is not None and payload["kind"] == "dataframe"
    item = OutputItem("display_data", {"data": {VALUE_MIME: payload}})
    (finding,) = value_findings(item, None)
    assert finding.check == "value" and "(2 x 2)" in finding.message
    pd.testing.assert_frame_equal(decode_value(payload), frame, check_dtype=False)
    raw = base64.b64decode(payload["arrow"]) + b"\0"
    tampered = {**payload, "arrow": base64.b64encode(raw).decode()}
    item = OutputItem("display_data", {"data": {VALUE_MIME: tampered}})
    (finding,) = value_findings(item, None)
    assert finding.check == "value-undecodable" and "own encoding" in finding.message


@pytest.mark.parametrize(
    ("label", "make", "columns"),
    [
        ("crosstab: int labels", lambda d: pd.crosstab(d.sex, d.num), [0, 1]),
        (
            "agg: tuple labels",
            lambda d: d.groupby("sex").agg({"chol": ["mean", "count"]}),
            [("chol", "mean"), ("chol", "count")],
        ),
        ("mixed labels travel as text", lambda d: pd.DataFrame({1: [1.0], "a": [2.0]}), ["1", "a"]),
        ("bool labels travel as text", lambda d: pd.crosstab(d.sex, d.num > 0), ["False", "True"]),
    ],
)
def test_honest_tables_keep_their_column_labels(label: str, make: object, columns: list) -> None:
    """What researchers index by (``result['cleveland'][1]``) survives the trip, and the
    filter accepts the bytes as canonical."""
    data = pd.DataFrame({"sex": ["M", "F", "M", "F"], "num": [0, 1, 1, 0], "chol": [1.0, 2, 3, 4]})
    payload = encode_value(make(data))  # type: ignore[operator]
    assert payload is not None and payload["kind"] == "dataframe", label
    (finding,) = value_findings(OutputItem("display_data", {"data": {VALUE_MIME: payload}}), None)
    assert finding.check == "value", finding.message
    assert list(decode_value(payload).columns) == columns
