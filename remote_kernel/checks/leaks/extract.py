"""The text an output item carries: its parts, markup with tags as separators, pandas reprs.

Researcher code chooses every field of an output message, so every field is
read (:func:`item_parts`); HTML keeps one line per table row
(:func:`html_to_text`, or :func:`tags` for the tokenizer that skips building
that text); wrapped pandas reprs are joined back into whole rows
(:func:`unwrap_pandas`), because a record split over column blocks would
otherwise never be one unit.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from remote_kernel.checks.leaks.hashing import WORD_MASKS
from remote_kernel.protocol.models import OutputItem

_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_NEWLINES_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")
#: Tags that end a row or block of visible text: they become line ends.
_HTML_LINE_TAGS = [
    *"/tr /p /li /div /h1 /h2 /h3 /h4 /h5 /h6 /caption /thead /tbody /table /pre /dt /dd".split(),
    *("br", "br/", "br /"),
]
_HTML_LINE_WORDS = np.array(
    [int.from_bytes(t.encode()[:8].ljust(8, b"\x00"), "little") for t in _HTML_LINE_TAGS],
    dtype=np.uint64,
)
_TEXT_LIKE_SUFFIXES = ("+json", "+xml", "/json", "/xml", "/javascript", "/csv")


def tags(buf: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tags of markup in ``buf[:n]``: where each starts (``<``) and ends (``>``), and
    whether it ends a line of visible text (``</tr>``, ``<br>``, ``</p>``...)."""
    opens = np.flatnonzero(buf[:n] == 60)
    closes = np.flatnonzero(buf[:n] == 62)
    if len(opens) == 0:
        return opens, opens, np.zeros(0, dtype=bool)
    if len(opens) == len(closes) and (opens < closes).all() and (closes[:-1] < opens[1:]).all():
        ends = closes  # well-formed: every "<" closed before the next opens
    else:
        at = np.searchsorted(closes, opens)
        ends = np.where(at < len(closes), closes[np.minimum(at, len(closes) - 1)], n - 1)
        # A "<" inside an earlier tag (an attribute value) is not a tag of its own.
        keep = np.ones(len(opens), dtype=bool)
        keep[1:] = opens[1:] > ends[:-1]
        opens, ends = opens[keep], ends[keep]
    # Only "</..." and "<br" can end a line. Closing tags carry no attributes, so the
    # name is all of the tag: compare its first eight bytes, lower-cased.
    second = buf[opens + 1] | 0x20
    maybe = np.flatnonzero((second == 0x2F) | (second == 0x62))
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, strides=(1,))
    word = words[opens[maybe] + 1] | np.uint64(0x2020202020202020)
    length = np.clip(ends[maybe] - opens[maybe] - 1, 0, 8)
    line_end = np.zeros(len(opens), dtype=bool)
    line_end[maybe] = np.isin(word & WORD_MASKS[length], _HTML_LINE_WORDS)
    return opens, ends, line_end


def inside_tags(n: int, opens: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Boolean mask of the bytes that belong to a tag: runs of False and True, repeated."""
    if len(opens) == 0:
        return np.zeros(n, dtype=bool)
    bounds = np.empty(2 * len(opens) + 2, dtype=np.int64)
    bounds[0] = 0
    bounds[1:-1:2] = opens
    bounds[2:-1:2] = ends + 1
    bounds[-1] = n
    flags = np.zeros(2 * len(opens) + 1, dtype=bool)
    flags[1::2] = True
    return np.repeat(flags, np.diff(bounds))


def html_to_text(markup: str) -> str:
    """Visible text of HTML with one line per table row (cells of a row stay on its line).

    Line breaks inside the markup are layout, not content (pandas puts every
    ``<td>`` on its own line), so they become spaces; row and block ends
    (``</tr>``, ``<br>``, ``</p>``...) become line ends; every other tag becomes a
    space; entities are unescaped. The scan itself does not build this text when
    the markup has no entities: it tokenizes the markup with tags as separators.
    """
    data = markup.encode("utf-8", "surrogatepass").translate(_NEWLINES_TO_SPACES)
    n = len(data)
    buf = np.frombuffer(data + b"\x00" * 16, dtype=np.uint8)
    opens, ends, line_end = tags(buf, n)
    out = np.where(inside_tags(n, opens, ends), np.uint8(32), buf[:n])
    out[opens[line_end]] = 10
    text = out.tobytes().decode("utf-8", "replace")
    if "&" in text:
        text = html.unescape(text)
    return text


def unwrap_pandas(text: str) -> tuple[str, list[int]]:
    """Join the column blocks of a wrapped pandas repr back into whole rows.

    In a notebook ``print(df)`` of a wide frame comes out as blocks of columns
    (the header of every block but the last ends with a backslash), so one
    record is split over lines far apart. Blocks with the same number of lines
    are joined line by line; anything else is left as it was. Returns the text
    and, per line of it, the line of the original text it starts on.
    """
    lines = text.split("\n")
    out: list[str] = []
    origin: list[int] = []
    i = 0
    while i < len(lines):
        if not lines[i].rstrip().endswith("\\"):
            out.append(lines[i])
            origin.append(i + 1)
            i += 1
            continue
        height = i
        while height < len(lines) and lines[height].strip():
            height += 1
        height -= i
        blocks = [lines[i : i + height]]
        j = i + height
        # Each further block: one blank line, then as many lines as the first.
        while blocks[-1][0].rstrip().endswith("\\") and j + 1 + height <= len(lines):
            block = lines[j + 1 : j + 1 + height]
            if lines[j].strip() or not all(line.strip() for line in block):
                break
            blocks.append(block)
            j += 1 + height
        if len(blocks) > 1:
            for n, parts in enumerate(zip(*blocks, strict=True)):
                label = parts[0].split(None, 1)[0] if parts[0].strip() else ""
                joined = [parts[0].rstrip().rstrip("\\")]
                for part in parts[1:]:
                    fields = part.rstrip().rstrip("\\").split(None, 1)
                    if len(fields) == 2 and fields[0] == label:
                        fields = fields[1:]  # the row label, repeated in every block
                    joined.append(" ".join(fields))
                out.append(" ".join(joined))
                origin.append(i + n + 1)
            i = j
        else:
            out.append(lines[i])
            origin.append(i + 1)
            i += 1
    return "\n".join(out), origin


def _is_text_mime(mime: str) -> bool:
    return mime.startswith("text/") or mime.endswith(_TEXT_LIKE_SUFFIXES)


def item_parts(item: OutputItem) -> list[tuple[str, str, bool]]:
    """``(where, text, is_markup)`` for every piece of text an output item carries.

    Everything in the message content that is released is read: the known
    fields with their own treatment, and every other field (display metadata, a
    ``transient`` display id, keys no frontend knows, mime types that are not
    text, all of them chosen by researcher code) as JSON. Only the base64
    pictures of ``image/*`` types are left to the rules that send images to a
    person.
    """
    content = item.content or {}
    out: list[tuple[str, str, bool]] = []
    handled = {"data"}
    if item.msg_type == "stream":
        text = content.get("text")
        if isinstance(text, str):
            out.append((f"stream {content.get('name', 'stdout')}", _ANSI.sub("", text), False))
            handled.add("text")
    elif item.msg_type == "error":
        parts = [str(content.get("ename", "")), str(content.get("evalue", ""))]
        traceback = content.get("traceback") or []
        if isinstance(traceback, list):
            parts += [str(line) for line in traceback]
            handled.add("traceback")
        out.append(("traceback", _ANSI.sub("", "\n".join(parts)), False))
        handled.update({"ename", "evalue"})
    data = content.get("data")
    rest: dict[str, Any] = {k: v for k, v in content.items() if k not in handled}
    if isinstance(data, Mapping):
        other: dict[str, Any] = {}
        for mime in sorted(data):
            value = data[mime]
            if not _is_text_mime(mime):
                picture = mime.startswith("image/") and isinstance(value, str)
                other[mime] = None if picture else value  # the mime name itself is read too
                continue
            if isinstance(value, str):
                text = value
            else:
                text = json.dumps(value, ensure_ascii=False, default=str)
            out.append((mime, text, "html" in mime or mime.endswith("xml")))
            other[mime] = None
        if other:
            rest["data"] = other
    elif data is not None:
        rest["data"] = data
    if any(value not in (None, {}, [], "") for value in rest.values()):
        text = json.dumps(rest, ensure_ascii=False, default=str, sort_keys=True)
        out.append(("output's other fields", text, False))
    return out


def item_texts(item: OutputItem) -> list[tuple[str, str]]:
    """Every piece of text an output item carries, as ``(where, text)`` pairs.

    Stream text; each text-like mime type of a display (HTML and SVG/XML with
    tags stripped, JSON serialised); an error's name, value and traceback with
    terminal colour codes removed; every other field of the content (metadata,
    transient, unknown keys and mime types) as JSON. Base64 images carry no text
    and are left to the rules that send images to a person.
    """
    return [
        (where, html_to_text(text) if markup else text) for where, text, markup in item_parts(item)
    ]
