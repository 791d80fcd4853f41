"""Mime bundles for remote outputs: placeholders, released content, denials.

Pure functions (no I/O) so the magic, the proxy kernel and tests render
outputs the same way. Every bundle carries ``metadata["remote_kernel"]``
(site, request, output, state, who decided) for frontends that want to draw
their own labels.
"""

from __future__ import annotations

import html
import re
from typing import Any

from remote_kernel.protocol.values import VALUE_MIME
from remote_kernel.researcher.client import DP_MIME, RemoteOutput, RemoteRequest

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
Bundle = dict[str, Any]

_BOX = (
    '<div style="border-left:4px solid {color};padding:2px 8px;margin:2px 0;'
    'font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;color:#333">{body}</div>'
)


def display_id(request: RemoteRequest, output: RemoteOutput | None = None) -> str:
    suffix = f"output-{output.id}" if output is not None else "status"
    return f"rk-{request.site}-{request.id}-{suffix}"


def released_by(output: RemoteOutput) -> str:
    who = output.decided_by or "unknown"
    if who.startswith("policy:"):
        return f"released automatically by policy {who.split(':', 1)[1]}"
    return f"released by {who}"


def _metadata(request: RemoteRequest, output: RemoteOutput | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"site": request.site, "request_id": request.id}
    if output is not None:
        meta.update(output_id=output.id, state=output.state, decided_by=output.decided_by)
    return {"remote_kernel": meta}


def output_bundle(request: RemoteRequest, output: RemoteOutput) -> tuple[Bundle, dict[str, Any]]:
    """What to show for ``output`` in its current state, and its metadata."""
    metadata = _metadata(request, output)
    site = request.site
    if output.state == "released" and output.content is not None:
        return _released(site, output), metadata
    if output.state == "denied":
        text = f"✖ {site}: output {output.seq + 1} denied by {output.decided_by}: {output.comment}"
        return _note(text, "#c62828"), metadata
    if output.state == "conflicted":
        text = (
            f"✖ {site}: output {output.seq + 1} not released, the reviewers disagreed: "
            f"{output.comment}"
        )
        return _note(text, "#c62828"), metadata
    if output.state == "blocked":
        number = output.seq + 1
        text = f"⛔ {site}: output {number} blocked by the datasite's policy ({output.summary})"
        return _note(text, "#6a1b9a"), metadata
    number = output.seq + 1
    text = f"⏳ pending review at {site} · output {number} ({output.summary})"
    return _note(text, "#f9a825"), metadata


def status_bundle(request: RemoteRequest, elapsed: float | None = None) -> tuple[Bundle, dict]:
    counts: dict[str, int] = {}
    for output in request.outputs:
        counts[output.state] = counts.get(output.state, 0) + 1
    parts = [f"{request.site}", f"request {request.id}", request.status]
    if counts:
        parts.append(", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if elapsed is not None:
        parts.append(f"{elapsed:.1f} s")
    if request.message and request.status in ("failed", "interrupted", "error"):
        parts.append(request.message)
    color = {"failed": "#c62828", "interrupted": "#c62828", "error": "#ef6c00"}.get(
        request.status, "#1565c0"
    )
    return _note(" · ".join(parts), color), _metadata(request, None)


def mock_label() -> Bundle:
    return _note("mock · this cell ran on your own kernel against the mock data", "#9e9e9e")


def _note(text: str, color: str) -> Bundle:
    return {"text/plain": text, "text/html": _BOX.format(color=color, body=html.escape(text))}


def dp_label(output: RemoteOutput) -> str:
    """``differential privacy: ε=0.1 spent on heart, ε=0.2 left`` for a DP answer, else ''."""
    facts = output.data.get(DP_MIME)
    if not isinstance(facts, dict):
        return ""
    try:
        spent, left = float(facts["epsilon"]), float(facts["epsilon_left"])
    except (KeyError, TypeError, ValueError):
        return ""
    dataset = f" on {facts['dataset']}" if facts.get("dataset") else ""
    return f"differential privacy: ε={spent:g} spent{dataset}, ε={left:g} left"


def _released(site: str, output: RemoteOutput) -> Bundle:
    label = " · ".join(p for p in (site, released_by(output), dp_label(output)) if p)
    header = _BOX.format(color="#2e7d32", body=html.escape(label))
    content = output.content or {}
    if output.msg_type == "stream":
        text = str(content.get("text", ""))
        return {
            "text/plain": f"[{label}]\n{text}",
            "text/html": header + f"<pre>{html.escape(text)}</pre>",
        }
    if output.msg_type == "error":
        text = ANSI.sub("", "\n".join(content.get("traceback") or []))
        text = text or f"{content.get('ename')}: {content.get('evalue')}"
        return {
            "text/plain": f"[{label}]\n{text}",
            "text/html": header + f'<pre style="color:#b71c1c">{html.escape(text)}</pre>',
        }
    data: dict[str, Any] = dict(content.get("data") or {})
    # The value travels to rk.last().values(), not into the saved notebook.
    data.pop(VALUE_MIME, None)
    plain = str(data.get("text/plain", ""))
    if "text/html" in data:
        body = str(data["text/html"])
    elif "image/png" in data or "image/jpeg" in data:
        mime = "image/png" if "image/png" in data else "image/jpeg"
        body = f'<img src="data:{mime};base64,{str(data[mime]).strip()}"/>'
    else:
        body = f"<pre>{html.escape(plain)}</pre>"
    data["text/plain"] = f"[{label}]\n{plain}"
    data["text/html"] = header + body
    return data


# --- fan-out status: one row per site -----------------------------------------------------------
STATE_COLORS = {
    "queued": "#757575",
    "running": "#1565c0",
    "pending review": "#f9a825",
    "released": "#2e7d32",
    "denied": "#c62828",
    "conflicted": "#c62828",
    "blocked": "#6a1b9a",
    "failed": "#c62828",
    "interrupted": "#c62828",
    "not sent": "#c62828",
    "error": "#ef6c00",
}


def output_counts(request: Any) -> str:
    """``"1 pending, 1 released"``: how a request's outputs stand (empty without outputs)."""
    counts: dict[str, int] = {}
    for output in request.outputs if request is not None else []:
        counts[output.state] = counts.get(output.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


def site_rows(result: Any, elapsed: dict[str, float]) -> list[dict[str, Any]]:
    """One row per site, in the order the sites were chosen (what frontends redraw from).

    ``{site, request, state, outputs, when, detail}``: ``outputs`` counts the request's
    outputs by state, ``when`` its elapsed time, ``detail`` why it failed or a warning.
    """
    rows = []
    for row in result.status():
        detail = row["message"] or ""
        if row["warnings"]:
            detail = "; ".join([detail, *row["warnings"]]).strip("; ")
        seconds = elapsed.get(row["site"])
        request = result.runs[row["site"]].request
        rows.append(
            {
                "site": row["site"],
                "request": row["request"],
                "state": row["state"],
                "outputs": output_counts(request),
                "when": f"{seconds:.1f} s" if seconds is not None else "",
                "detail": detail,
            }
        )
    return rows


def row_text(row: dict[str, Any]) -> str:
    """``cleveland · pending review · 2 pending · request 4 · 1.2 s``: one site's line."""
    request = f"request {row['request']}" if row.get("request") is not None else ""
    parts = (row["site"], row["state"], row.get("outputs"), request, row.get("when"))
    return " · ".join(str(p) for p in (*parts, row.get("detail")) if p)


def rows_html(rows: list[dict[str, Any]]) -> str:
    """The rows as a compact table (class ``rk-SiteRow``, ``data-site`` on each row)."""
    cells = []
    for row in rows:
        color = STATE_COLORS.get(str(row["state"]).split(" (")[0], "#1565c0")
        request = f"request {row['request']}" if row.get("request") is not None else ""
        when = " · ".join(p for p in (request, row.get("when")) if p)
        cells.append(
            f'<tr class="rk-SiteRow" data-site="{html.escape(row["site"])}" '
            f'data-state="{html.escape(row["state"])}">'
            f'<td style="padding:1px 8px;font-weight:600">{html.escape(row["site"])}</td>'
            f'<td style="padding:1px 8px;color:{color}">● {html.escape(row["state"])}</td>'
            f'<td style="padding:1px 8px">{html.escape(row.get("outputs") or "")}</td>'
            f'<td style="padding:1px 8px;color:#555">{html.escape(when)}</td>'
            f'<td style="padding:1px 8px;color:#555">{html.escape(row.get("detail") or "")}</td>'
            "</tr>"
        )
    return (
        '<table class="rk-fanout" style="border-collapse:collapse;font-size:12px;'
        'font-family:var(--jp-ui-font-family,sans-serif)">' + "".join(cells) + "</table>"
    )


def _elapsed(result: Any, elapsed: float | dict[str, float]) -> dict[str, float]:
    return elapsed if isinstance(elapsed, dict) else dict.fromkeys(result.runs, elapsed)


def fanout_table_html(result: Any, elapsed: float | dict[str, float]) -> str:
    """An HTML table with one row per site: state (coloured), outputs, request, time, problems."""
    return rows_html(site_rows(result, _elapsed(result, elapsed)))


def fanout_bundle(result: Any, elapsed: dict[str, float]) -> Bundle:
    """The fan-out status as text and HTML (what shows where widgets do not render)."""
    rows = site_rows(result, elapsed)
    return {"text/plain": "\n".join(row_text(r) for r in rows), "text/html": rows_html(rows)}


def fanout_metadata(result: Any, elapsed: dict[str, float]) -> dict[str, Any]:
    """For frontends (the JupyterLab extension): each site's request and its row, in order."""
    requests = {name: r.id for name, r in result.requests.items()}
    return {"remote_kernel": {"requests": requests, "rows": site_rows(result, elapsed)}}
