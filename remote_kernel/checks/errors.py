"""What a researcher may learn at once when their cell raises: type, their lines, nothing else.

The kernel's error output (message and traceback) is written by researcher code
and can quote private values (``KeyError: 'Jane Doe'``), so it waits for a
reviewer. What cannot carry data beyond a few bits is released at once, in an
output the *datasite* writes (origin ``error``, like the sound tier's tables):

* the exception's type, only when its name is on :data:`KNOWN_EXCEPTIONS` (a
  class name is chosen by researcher code, so any other name could spell a
  value): about 8 bits;
* the line numbers of the frames in the researcher's own cell, each between 1
  and the cell's length, at most :data:`MAX_FRAMES` of them: at most
  ``MAX_FRAMES * log2(lines)`` bits;
* those lines' text, quoted from the code the researcher submitted (their own
  text), never from the traceback.

Everything here is read from the kernel's traceback, which researcher code can
forge: that is why only bounded numbers and a name from a fixed list are taken
from it, and why the bits are counted in the docs (policy.md, "Small channels").
"""

from __future__ import annotations

import builtins
import html
import re
from dataclasses import dataclass
from typing import Any

from remote_kernel.protocol.models import OutputItem

#: Exception names the researcher may see at once (ename is chosen by researcher code,
#: so an arbitrary class name could carry private values; these cannot).
KNOWN_EXCEPTIONS = frozenset(
    name
    for name, value in vars(builtins).items()
    if isinstance(value, type) and issubclass(value, BaseException)
) | {
    "ParserError", "MergeError", "IndexingError", "InvalidIndexError", "OutOfBoundsDatetime",
    "LinAlgError", "AxisError", "NotFittedError", "QueryRejected", "UnknownDataset",
    "RemoteKernelError", "BinderException", "CatalogException", "ParserException",
    "BudgetExhausted",
}  # fmt: skip
#: Most frames of the researcher's cell released (bounds the bits a traceback can carry).
MAX_FRAMES = 10
#: Longest quoted source line (the researcher's own text; kept readable).
MAX_LINE_CHARS = 200
CELL_FRAME = re.compile(r"Cell In\[(\d+)\], line (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class ErrorFacts:
    """The few things about an exception that may be released at once."""

    #: A known exception name, or None for any other.
    name: str | None
    #: Line numbers (1-based) of the frames in this cell, outermost first.
    lines: tuple[int, ...]


def error_facts(content: dict[str, Any], code: str) -> ErrorFacts:
    """Read a kernel's error content down to :class:`ErrorFacts`.

    Frames are IPython's ``Cell In[N], line L`` headers; the cell that ran is the
    one with the highest ``N`` (execution counts only grow), so frames of earlier
    cells (a function defined before) are left out: their line numbers would
    point into other code. The traceback's last entry (``Name: message``) is not
    read: the message is exactly what is held.
    """
    ename = str(content.get("ename", ""))
    entries = [ANSI.sub("", str(t)) for t in content.get("traceback") or []]
    frames = [m for entry in entries[:-1] if (m := CELL_FRAME.search(entry))]
    numbers = [(int(cell), int(line)) for cell, line in (m.groups() for m in frames)]
    limit = len(code.splitlines()) or 1
    latest = max((cell for cell, _ in numbers), default=None)
    lines = [line for cell, line in numbers if cell == latest and 1 <= line <= limit]
    return ErrorFacts(ename if ename in KNOWN_EXCEPTIONS else None, tuple(lines[-MAX_FRAMES:]))


def error_summary(content: dict[str, Any], code: str) -> str:
    """The request's one-line message: the type and the line the exception came from."""
    facts = error_facts(content, code)
    where = f" at line {facts.lines[-1]} of your cell" if facts.lines else ""
    return (
        f"{facts.name or 'an exception'}{where}; "
        "the message and traceback are checked like any other output"
    )


def error_release_item(facts: ErrorFacts, code: str) -> OutputItem:
    """The datasite's own output for an error: the type and the cell's frames, quoted
    from the submitted code; the message and values stay in the held kernel output."""
    source = code.splitlines()
    name = facts.name or "An exception (its type is not on this datasite's list of known names)"
    head = f"{name} in your cell; the message and values are held for review"
    width = len(str(max(facts.lines, default=1)))
    lines = [f"  line {n:>{width}}: {source[n - 1].rstrip()[:MAX_LINE_CHARS]}" for n in facts.lines]
    text = "\n".join([head, *lines])
    data = {"text/plain": text, "text/html": f"<pre>{html.escape(text)}</pre>"}
    metadata = {"remote_kernel": {"made_by": "datasite", "kind": "error-summary"}}
    return OutputItem("display_data", {"data": data, "metadata": metadata, "transient": {}})
