"""JSON from a possibly hostile file, parsed within bounds: size, nesting, integer digits, valid Unicode.

Python's own limits surface as the wrong errors: an integer of 5,000 digits
raises ``ValueError`` ("Exceeds the limit (4300 digits)"), deep nesting raises
``RecursionError`` in whatever walks the result, and a lone surrogate
(``"\\ud800"``) parses fine and fails later when it is printed or used as a
path. Every JSON document kerasio reads from a bundle (the manifest, a
``.keras`` config, an HDF5 ``model_config``, a weights architecture, the last
verification report) goes through :func:`loads`, which refuses each of them
with an :class:`~kerasio.errors.ArtifactError` that names the file.
"""
from __future__ import annotations

import json
from typing import Any

from kerasio.errors import ArtifactError

__all__ = ["loads", "check_depth", "MAX_DEPTH", "MAX_INT_DIGITS"]

MAX_DEPTH = 64  # a Keras config nests about 8 levels per nested model; kerasio's manifest about 6
MAX_INT_DIGITS = 40  # 2**128 has 39 digits; no shape, count or seed needs more


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _Bound(f"an integer of {len(text.lstrip('-'))} digits (the limit is {MAX_INT_DIGITS})")
    return int(text)


class _Bound(ValueError):
    """A bound crossed while parsing (raised through the json module, reported as ArtifactError)."""


def loads(data: bytes | str, *, what: str, max_bytes: int, max_depth: int = MAX_DEPTH,
          advice: str = "re-export it", max_string: int | None = None) -> Any:
    """Parse ``data`` (from the file named ``what``) within bounds.

    Raises:
        ArtifactError: too large, not UTF-8, not JSON, nested deeper than ``max_depth``, an integer of more
            than :data:`MAX_INT_DIGITS` digits, or a string that is not valid Unicode (a lone surrogate).
    """
    if len(data) > max_bytes:
        raise ArtifactError(f"{what}: {len(data)} bytes of JSON, over the limit of {max_bytes}; no kerasio or Keras "
                            f"file is that large. {advice[:1].upper()}{advice[1:]}. Received: {len(data)} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, (bytes, bytearray)) else data
        parsed = json.loads(text, parse_int=_parse_int)
    except _Bound as exc:
        raise ArtifactError(f"{what}: holds {exc}; refusing it. {advice[:1].upper()}{advice[1:]}. "
                            f"Received: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{what}: not UTF-8 text ({exc.reason} at byte {exc.start}); {advice}. "
                            f"Received: {exc.object[exc.start:exc.start + 8]!r}") from None
    except RecursionError:
        raise ArtifactError(f"{what}: nested more than {max_depth} levels deep; no kerasio or Keras file is. "
                            f"{advice[:1].upper()}{advice[1:]}. Received: deeper than Python's recursion limit") from None
    except ValueError as exc:  # json.JSONDecodeError, and int() of a malformed number
        raise ArtifactError(f"{what}: not valid JSON; {advice}. Received: {str(exc)[:200]}") from None
    check_depth(parsed, max_depth, what=what, advice=advice, max_string=max_string)
    return parsed


def check_depth(value: Any, limit: int = MAX_DEPTH, *, what: str = "kerasio.json",
                advice: str = "re-export the bundle", max_string: int | None = None) -> None:
    """Refuse JSON nested deeper than ``limit``, or holding a string that is not valid Unicode (or longer than
    ``max_string`` characters).

    Iterative: a hostile document cannot exhaust the stack here.
    """
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ArtifactError(f"{what}: nested more than {limit} levels deep; no kerasio or Keras file is. "
                                f"{advice[:1].upper()}{advice[1:]}. Received: depth > {limit}")
        if isinstance(node, dict):
            for key, item in node.items():
                _unicode(key, what, advice, max_string)
                stack.append((item, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
        elif isinstance(node, str):
            _unicode(node, what, advice, max_string)


def _unicode(text: str, what: str, advice: str, max_string: int | None) -> None:
    if max_string is not None and len(text) > max_string:
        raise ArtifactError(f"{what}: holds a string of {len(text)} characters, over the limit of {max_string}; "
                            f"refusing it. {advice[:1].upper()}{advice[1:]}. Received: {text[:40]!r}...")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ArtifactError(f"{what}: holds a string that is not valid Unicode (a lone surrogate at character "
                            f"{exc.start}); refusing it. {advice[:1].upper()}{advice[1:]}. Received: "
                            f"{text[max(exc.start - 10, 0):exc.start].encode('utf-8', 'replace')!r}...") from None
