"""Tabular in and out: input files for ``predict``, prediction files, and plain text tables.

Input files: CSV and Parquet (columns matched to the signature by name), ``.npz``
(one array per input name) and ``.npy`` (one array, for a single input).
Predictions: CSV when every output fits in columns, ``.npz`` otherwise.
"""
from __future__ import annotations

import re

__all__ = ["render_table", "wrap_notes", "first_error_line", "WIDTH"]


WIDTH = 100  # every table and note kerasio prints fits in this many columns


def render_table(head: list[str], rows: list[list[str]], *, width: int = WIDTH) -> str:
    """A plain ``|``-separated text table (export, verify, inspect and the trace use it), at most ``width`` wide.

    When the content is wider, the widest columns are narrowed and their
    cells cut with ``…`` (a hash or a path keeps its start). Every cell is one
    line: control characters in it (a bundle's strings are a stranger's) are
    shown escaped.
    """

    head = [printable(str(h)) for h in head]
    rows = [[printable(str(c)) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    while sum(widths) + 3 * len(widths) + 1 > width and max(widths) > 6:
        widths[widths.index(max(widths))] -= 1

    def cell(text: str, w: int) -> str:
        return text.ljust(w) if len(text) <= w else text[:w - 1] + "…"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell(c, w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def wrap_notes(notes: list[str], *, width: int = WIDTH, indent: str = "  ") -> list[str]:
    """Each note wrapped to ``width`` columns, continuation lines indented under its text (control characters
    escaped: a note is one logical line, whatever a bundle's strings hold)."""
    import textwrap


    out = []
    for note in notes:
        note = printable(note)
        body = note[len(indent):] if note.startswith(indent) else note
        out += textwrap.wrap(body, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                             break_on_hyphens=False, break_long_words=True) or [indent]
    return out


# Shown escaped: control characters (a newline that starts a fake line, an ANSI escape), the bidirectional
# overrides and zero-width marks that make a terminal show text in another order (Trojan Source), lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` on one line, with control characters (newlines and terminal escapes among them), bidirectional
    overrides and lone surrogates shown as ``\\x..`` / ``\\u....`` instead of sent raw."""
    def code(m: re.Match[str]) -> str:
        n = ord(m.group())
        return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}"

    return _UNPRINTABLE.sub(code, text)


def first_error_line(text: str, limit: int = 300) -> str:
    """A converter's or loader's message as one line: its first error line, without MLIR's source locations.

    MLIR converters (LiteRT) print ``<unknown>:0: error: loc(callsite(...)): 'op' message`` and pages of notes;
    the user needs the message.
    """
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    line = next((ln for ln in lines if "error:" in ln), lines[0] if lines else "")
    if "error:" in line:
        line = line.split("error:", 1)[1].strip()
    if line.startswith("loc("):  # drop the balanced loc(...) and what follows it up to the message
        depth = 0
        for i, ch in enumerate(line):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and ch == ")":
                line = line[i + 1:].lstrip(": ").strip()
                if line.startswith("error:"):
                    line = line[len("error:"):].strip()
                break
    return line if len(line) <= limit else line[:limit - 3] + "..."
