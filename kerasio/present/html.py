"""HTML views: notebook display (``_repr_html_``) and the self-contained report page (``kerasio report``).

Everything is escaped (a bundle's strings are data from a stranger), nothing
is fetched: styles are inline, charts are inline SVG.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from kerasio.present.text import printable

# What html.escape(quote=True) replaces, without importing the stdlib html package (its entity tables cost 2.6 ms of
# every kerasio start, for five characters).
_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#x27;"})

__all__ = ["table", "trace_svg", "status", "escape", "escape_lines", "STYLE"]

STYLE = ("<style>.kerasio table{border-collapse:collapse;font:13px monospace;margin:4px 0}"
         ".kerasio th,.kerasio td{border:1px solid #ccc;padding:2px 8px;text-align:left}"
         ".kerasio th{background:#f3f3f3}.kerasio .pass{color:#0a7a2f;font-weight:bold}"
         ".kerasio .fail{color:#c01818;font-weight:bold}.kerasio .note{color:#555;font:12px sans-serif}"
         ".kerasio h3,.kerasio h4{font-family:sans-serif;margin:8px 0 4px}</style>")


def escape(value: Any) -> str:
    """HTML-escaped, with control characters (newlines included) and bidirectional overrides shown as ``\\x..``."""

    return printable(str(value)).translate(_ESCAPES)


def escape_lines(text: str) -> str:
    """:func:`escape` line by line, keeping the line breaks (for kerasio's own multi-line text, such as JSON)."""
    return "\n".join(escape(line) for line in str(text).split("\n"))


def status(text: str) -> str:
    """PASS in green, FAIL in red (anything else as plain text)."""
    kind = {"PASS": "pass", "FAIL": "fail"}.get(str(text))
    return f'<span class="{kind}">{escape(text)}</span>' if kind else escape(text)


def table(head: Sequence[str], rows: Sequence[Sequence[Any]], *, status_column: int | None = None) -> str:
    cells = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(f"<td>{status(c) if i == status_column else escape(c)}</td>" for i, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def trace_svg(records: Sequence[dict[str, Any]], *, key: str = "loss", width: int = 480, height: int = 180) -> str:
    """An inline SVG line chart of ``key`` and ``val_<key>`` per epoch (no script, no external resource)."""
    series: dict[str, list[tuple[float, float]]] = {
        name: [(float(r["epoch"]), float(r[name])) for r in records if _finite(r.get(name)) and _finite(r.get("epoch"))]
        for name in (key, f"val_{key}")}
    points = [v for s in series.values() for _, v in s]
    if not points:
        return f'<p class="note">(no {escape(key)} to chart)</p>'
    epochs = [e for s in series.values() for e, _ in s]
    lo, hi = min(points), max(points)
    span, first, last = (hi - lo) or 1.0, min(epochs), max(epochs)
    pad_l, pad_r, pad_t, pad_b = 52, 12, 14, 30

    def x(epoch: float) -> float:
        return pad_l + (epoch - first) / ((last - first) or 1) * (width - pad_l - pad_r)

    def y(value: float) -> float:
        return pad_t + (hi - value) / span * (height - pad_t - pad_b)

    colours = {key: "#1f77b4", f"val_{key}": "#ff7f0e"}
    lines = []
    for name, pts in series.items():
        if pts:
            coords = " ".join(f"{x(e):.1f},{y(v):.1f}" for e, v in pts)
            dash = ' stroke-dasharray="5,3"' if name.startswith("val_") else ""
            lines.append(f'<polyline class="series" data-name="{escape(name)}" fill="none" stroke="{colours[name]}" '
                         f'stroke-width="2"{dash} points="{coords}"/>')
    legend = "".join(f'<text x="{pad_l + 10 + i * 110}" y="{height - 6}" fill="{colours[n]}" font-size="12">'
                     f'{escape(n)}</text>' for i, n in enumerate(n for n, p in series.items() if p))
    axes = (f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{height - pad_b}" stroke="#888"/>'
            f'<line x1="{pad_l}" y1="{height - pad_b}" x2="{width - pad_r}" y2="{height - pad_b}" stroke="#888"/>'
            f'<text x="4" y="{pad_t + 4}" font-size="11">{hi:.4g}</text>'
            f'<text x="4" y="{height - pad_b}" font-size="11">{lo:.4g}</text>'
            f'<text x="{pad_l}" y="{height - pad_b + 14}" font-size="11">epoch {first:g}</text>'
            f'<text x="{width - pad_r - 60}" y="{height - pad_b + 14}" font-size="11">epoch {last:g}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="kerasio-chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(key)} per epoch">{axes}{"".join(lines)}'
            f"{legend}</svg>")


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
