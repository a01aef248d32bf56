"""What crosses the boundary to a worker process: how a failed answer becomes the exception it stands for.

A worker answers every request with a JSON object: ``{"ok": true, ...}`` or
``{"ok": false, "error": <message>, "type": <kerasio exception class>,
"limit": <which limit, for a ResourceLimitError>}``. :func:`answer_error` is
the one place that maps a failed answer back to its exception, for the
verifier, the loader and the exporter alike. (This module is imported by
``kerasio.worker``, which runs as ``python -m``: it must not import that.)
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import KerasioError
from .limits import Limits

__all__ = ["answer_error"]


def answer_error(answer: dict[str, Any], limits: Limits | None = None, *, copy: str | Path | None = None,
                 shown: str | Path | None = None) -> KerasioError:
    """The exception a failed answer stands for: its kerasio class (``ArtifactError`` for any other type).

    ``copy`` (the checked private copy the worker loaded) is replaced by
    ``shown`` (the artifact in the bundle) in the message. A limit the worker
    reported becomes :meth:`Limits.hit`, which names the limit and how to raise it.
    """
    from . import errors

    text = str(answer.get("error", "the worker failed"))
    if copy is not None and shown is not None:
        text = text.replace(str(copy), str(shown))
    if answer.get("type") == "ResourceLimitError":
        limit = str(answer.get("limit") or "memory")
        found = (limits or Limits.from_env().resolved()).hit(limit, text.split(". ")[0][:300])
        return found
    kind = getattr(errors, str(answer.get("type")), None)
    if not (isinstance(kind, type) and issubclass(kind, KerasioError)):
        kind = errors.ArtifactError
    return kind(text)
