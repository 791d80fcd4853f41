"""Tables the researcher's kernel printed: hints for reviewers, and a suppressed variant.

A table computed in the kernel is never evidence (invariant 2): researcher code
could have computed it from anything and called it "counts". Yet a reviewer
looking at a crosstab wants to see at once which cells are small. So the rules of
:mod:`remote_kernel.checks.rules` run on the table as *hints*: every finding here
has the verdict ``review`` and says what was assumed (that whole numbers are
counts of people), and researchers never see them (:data:`HINT_CHECKS` are left
out of their content-free summary, which would otherwise answer "were there small
cells?").

Reading. A DataFrame reaches the datasite up to three times: as the value payload
(decoded by :mod:`remote_kernel.protocol.values`, which refuses anything it cannot
check), as ``text/html`` and as ``text/plain`` (or as a ``stream`` from
``print``). Each is read into a :class:`Grid` of label and cell *texts*: HTML with
the standard library's parser (only the text inside ``th``/``td``; comments,
styles, attributes and text outside cells are ignored), plain text by columns,
and the value by rendering its frame with pandas and reading that HTML, so all
three compare as equal texts. When they disagree, or one of them cannot be read
as the same plain table, the reviewer is told (``table-mismatch``) and no variant
is offered: the datasite does not guess which of two stories is true.

The variant. For a table of counts with failing cells, :func:`suppressed_variant`
renders a *new* table from the grid: its labels and numbers, failing cells
blank, nothing else of the kernel's bytes (no markup, no hidden text outside the
cells). It is a new output, checked by the filter like any other (its cells came
from the kernel: the leak scan applies), and released only by reviewers.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pandas as pd

from remote_kernel.checks import rules
from remote_kernel.checks.policy import Thresholds
from remote_kernel.protocol.models import Finding, OutputItem, Verdict
from remote_kernel.protocol.values import VALUE_MIME, ValueDecodeError, read_table, value_texts

log = logging.getLogger(__name__)

#: Checks that only guide reviewers; the researcher's summary never counts them.
HINT_CHECKS = frozenset({"small-cells-hint", "zeros-hint", "table-hint", "table-mismatch"})
#: Tables with more cells than this get no hints (a person reads them anyway).
MAX_TABLE_CELLS = 20_000
#: Most characters of HTML or text read for a table.
MAX_TABLE_TEXT = 2 * 1024 * 1024
_COUNT = re.compile(r"\d{1,15}")


@dataclass(frozen=True)
class Grid:
    """A table as texts: what a reader sees in each label and cell, nothing else."""

    index_names: tuple[str, ...]
    columns_name: str
    columns: tuple[str, ...]
    index: tuple[tuple[str, ...], ...]
    cells: tuple[tuple[str, ...], ...]

    def same_table(self, other: Grid) -> bool:
        """Same column labels, row labels and cells (names are left out: a text repr
        and an HTML table place them differently)."""
        return (self.columns, self.index, self.cells) == (other.columns, other.index, other.cells)

    @property
    def size(self) -> int:
        return len(self.cells) * len(self.columns)


class _TableParser(HTMLParser):
    """Collects the text of every ``th``/``td`` per row; counts tables and spans."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables = 0
        self.spans = False
        self.rows: list[tuple[bool, list[tuple[str, str]]]] = []
        self._head = False
        self._cell: list[str] | None = None
        self._tag = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables += 1
        elif tag in ("thead", "tbody", "tfoot"):
            self._close_cell()
            self._head = tag == "thead"
        elif tag == "tr":
            self._close_cell()
            self.rows.append((self._head, []))
        elif tag in ("th", "td"):
            self._close_cell()
            if any(k in ("colspan", "rowspan") and v not in (None, "1") for k, v in attrs):
                self.spans = True
            self._cell, self._tag = [], tag

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td", "tr", "thead", "tbody", "tfoot", "table"):
            self._close_cell()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def _close_cell(self) -> None:
        if self._cell is not None and self.rows:
            self.rows[-1][1].append((self._tag, " ".join("".join(self._cell).split())))
        self._cell = None


def html_grid(text: str) -> Grid | None:
    """The one plain table in ``text`` (pandas' HTML layout), or None.

    None for anything but exactly one table whose body rows all have the same
    leading header cells (the index) and width, without spans (a sparsified
    MultiIndex): hints for those would name the wrong cells.
    """
    if len(text) > MAX_TABLE_TEXT:
        return None
    parser = _TableParser()
    parser.feed(text)
    parser.close()
    head = [[t for _, t in cells] for is_head, cells in parser.rows if is_head]
    body = [cells for is_head, cells in parser.rows if not is_head and cells]
    if parser.tables != 1 or parser.spans or not head or not body:
        return None
    nidx = next((i for i, (tag, _) in enumerate(body[0]) if tag != "th"), len(body[0]))
    width = len(body[0])
    if not 0 < nidx < width or any(len(row) != width for row in [*head, *body]):
        return None
    if any([tag for tag, _ in row[:nidx]] != ["th"] * nidx for row in body):
        return None
    names = tuple(head[1][:nidx]) if len(head) == 2 and not any(head[1][nidx:]) else None
    if names is None and len(head) != 1:
        return None
    return Grid(
        index_names=names or ("",) * nidx,
        columns_name=head[0][nidx - 1],
        columns=tuple(head[0][nidx:]),
        index=tuple(tuple(t for _, t in row[:nidx]) for row in body),
        cells=tuple(tuple(t for _, t in row[nidx:]) for row in body),
    )


def text_grid(text: str) -> Grid | None:
    """A DataFrame's plain text (``print(df)``, its repr) as a grid, or None.

    Only the simple layout: one index column, labels without spaces, every row as
    wide as the others; an optional line with the index's name alone.
    """
    if len(text) > MAX_TABLE_TEXT:
        return None
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        return None
    header, rows = lines[0], lines[1:]
    names: tuple[str, ...] = ("",)
    if len(rows[0]) == 1:
        names, rows = (rows[0][0],), rows[1:]
    if not rows or len(rows[0]) < 2 or any(len(row) != len(rows[0]) for row in rows):
        return None
    width = len(rows[0])
    if len(header) == width:
        columns_name, columns = header[0], header[1:]
    elif len(header) == width - 1:
        columns_name, columns = "", header
    else:
        return None
    return Grid(
        index_names=names,
        columns_name=columns_name,
        columns=tuple(columns),
        index=tuple((row[0],) for row in rows),
        cells=tuple(tuple(row[1:]) for row in rows),
    )


def value_grid(payload: Any) -> Grid | None:
    """A DataFrame value payload as a grid (pandas renders it, :func:`html_grid` reads it).

    The payload gets every check of :func:`~remote_kernel.protocol.values.value_texts`
    first (canonical bytes, declared shape); anything else is None.
    """
    if not isinstance(payload, dict) or payload.get("kind") != "dataframe":
        return None
    try:
        value_texts(payload)
        frame = read_table(payload)
    except ValueDecodeError:
        return None
    if frame.size > MAX_TABLE_CELLS:
        return None
    return html_grid(frame.to_html(max_rows=None, max_cols=None))


@dataclass(frozen=True)
class KernelTable:
    """The table an output shows, where it was read from, and any disagreement."""

    grid: Grid
    source: str
    #: Why the output's representations cannot be taken as one table ("" when they agree).
    problem: str = ""


def read_kernel_table(item: OutputItem) -> KernelTable | None:
    """The table in a kernel output, or None when it holds none.

    The value payload is read first (exact), then HTML, then plain text; every
    representation present must read as the same table (a text/plain that reads as
    no table at all is let be), or ``problem`` says which do not.
    """
    readings: list[tuple[str, Grid | None]] = []
    if item.msg_type == "stream":
        readings.append(("printed text", text_grid(str(item.content.get("text", "")))))
    elif item.msg_type in ("display_data", "execute_result"):
        data = item.content.get("data") or {}
        if VALUE_MIME in data:
            readings.append(("value payload", value_grid(data[VALUE_MIME])))
        if "text/html" in data:
            readings.append(("text/html", html_grid(str(data["text/html"]))))
        if "text/plain" in data:
            readings.append(("text/plain", text_grid(str(data["text/plain"]))))
    read = [(where, grid) for where, grid in readings if grid is not None]
    if not read or read[0][1].size > MAX_TABLE_CELLS:
        return None
    source, grid = read[0]
    # A text/plain that is no table (an HTML object's repr, a wide frame wrapped) says
    # nothing either way, and a variant never carries the kernel's text.
    unread = [where for where, g in readings if g is None and where != "text/plain"]
    differ = [where for where, g in read[1:] if not g.same_table(grid)]
    problem = ""
    if differ:
        problem = f"the {source} and the {', '.join(differ)} show different tables"
    elif unread:
        problem = f"the {', '.join(unread)} could not be read as the same plain table"
    return KernelTable(grid, source, problem)


def counts_of(grid: Grid) -> np.ndarray | None:
    """The cells as numbers when every one is a whole number (a table of counts), else None."""
    if not grid.cells or not all(_COUNT.fullmatch(c) for row in grid.cells for c in row):
        return None
    return np.array([[int(c) for c in row] for row in grid.cells], dtype=np.float64)


def failing_masks(counts: np.ndarray, t: Thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(small, zero): counts from 1 to ``min_cell_count`` - 1; zeros if the policy flags them."""
    small = (counts > 0) & rules.small_cells(counts, t.min_cell_count)
    zero = rules.zeros(counts) if t.zeros == "review" else np.zeros(counts.shape, dtype=bool)
    return small, zero


def _keys(grid: Grid) -> pd.DataFrame:
    names = [name or ("index" if len(grid.index_names) == 1 else f"level {i}")
             for i, name in enumerate(grid.index_names)]  # fmt: skip
    return pd.DataFrame(list(grid.index), columns=names)


def table_hint_findings(item: OutputItem, t: Thresholds) -> list[Finding]:
    """Hints for the reviewer about a table the kernel printed (all ``review``).

    A hint that cannot be computed is left out: hints are not a check, and an
    output that breaks them is still reviewed (and scanned) like any other.
    """
    try:
        table = read_kernel_table(item)
        return [] if table is None else _hints(table, t)
    except Exception:  # researcher-made input; a hint is never worth failing the filter
        log.exception("table hints failed on an output")
        return []


def _hints(table: KernelTable, t: Thresholds) -> list[Finding]:
    findings: list[Finding] = []
    if table.problem:
        findings.append(
            Finding("table-mismatch", Verdict.REVIEW,
                    f"hint: {table.problem}; the researcher would receive all of them. "
                    "No suppressed variant is offered for this output.")
        )  # fmt: skip
    counts = counts_of(table.grid)
    not_assessed = (
        "dominance and p-percent are not assessed: they need each contributor's value, "
        "which a printed table does not carry"
    )
    if counts is None:
        findings.append(
            Finding("table-hint", Verdict.REVIEW,
                    f"hint: a table read from the {table.source}; not every cell is a whole "
                    f"number, so it is not read as counts and has no count hints; {not_assessed}")
        )  # fmt: skip
        return findings
    small, zero = failing_masks(counts, t)
    grid, keys = table.grid, _keys(table.grid)
    findings += rules.mask_findings(
        small, check="small-cells-hint", verdict=Verdict.REVIEW, keys=keys, columns=grid.columns,
        message=lambda i, j: (
            f"hint: {counts[i, j]:g} here; if this cell counts people, the policy needs at "
            f"least {t.min_cell_count} (read from the kernel's table, not evidence)"
        ),
    )  # fmt: skip
    findings += rules.mask_findings(
        zero, check="zeros-hint", verdict=Verdict.REVIEW, keys=keys, columns=grid.columns,
        message="hint: a zero count says something about everyone in the group (ACRO flags zeros)",
    )  # fmt: skip
    findings.append(
        Finding("table-hint", Verdict.REVIEW,
                f"hint, not evidence: the {table.source} read as a table of counts (every cell "
                f"is a whole number; assumed to count people): {int(small.sum())} cell(s) "
                f"under {t.min_cell_count}, {int(zero.sum())} zero cell(s) flagged; "
                f"{not_assessed}")
    )  # fmt: skip
    return findings


@dataclass(frozen=True)
class Variant:
    """A datasite-made form of a kernel table: the output item and what was done."""

    item: OutputItem
    blanked: int
    summary: str


def suppressed_variant(item: OutputItem, t: Thresholds) -> Variant | None:
    """The table with its failing cells blank, or None when none is offered.

    None unless the output's representations agree on one table of counts with
    at least one failing cell (see the module docstring).
    """
    table = read_kernel_table(item)
    if table is None or table.problem:
        return None
    counts = counts_of(table.grid)
    if counts is None:
        return None
    small, zero = failing_masks(counts, t)
    blank = small | zero
    if not blank.any():
        return None
    blanked = int(blank.sum())
    summary = f"{blanked} cell(s) under {t.min_cell_count} blanked"
    if zero.any():
        summary += f" (zeros included: {int(zero.sum())})"
    return Variant(render_variant(table.grid, blank, summary), blanked, summary)


def render_variant(grid: Grid, blank: np.ndarray, summary: str) -> OutputItem:
    """A display_data item the datasite writes from the grid alone (pandas renders it)."""
    values = [
        ["" if blank[i, j] else cell for j, cell in enumerate(row)]
        for i, row in enumerate(grid.cells)
    ]
    names = [name or None for name in grid.index_names]
    if len(names) == 1:
        index = pd.Index([labels[0] for labels in grid.index], name=names[0], dtype=object)
    else:
        index = pd.MultiIndex.from_tuples(grid.index, names=names)
    columns = pd.Index(list(grid.columns), name=grid.columns_name or None, dtype=object)
    frame = pd.DataFrame(values, index=index, columns=columns, dtype=object)
    note = f"suppressed by the datasite: {summary}"
    data = {
        "text/plain": f"{note}\n{frame.to_string()}",
        "text/html": f"<p>{html.escape(note)}</p>\n{frame.to_html()}",
    }
    return OutputItem("display_data", {"data": data, "metadata": {}, "transient": {}})
