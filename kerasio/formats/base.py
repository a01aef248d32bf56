"""The format protocol and the registry every part of kerasio iterates over.

A format is an object with three verbs (``save``, ``load``, ``describe``) and a
few facts (its file name in a bundle, the runtime that consumes it). Each
format module builds one and calls :func:`register`; adding a format means
adding one module to :mod:`kerasio.formats`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ArtifactError

__all__ = ["Format", "Runner", "ExportContext", "REGISTRY", "register", "get_format", "resolve_formats"]


@dataclass
class ExportContext:
    """What a format's ``save`` may need besides the model."""

    feature_names: Sequence[str]
    class_names: Sequence[str]
    reference_inputs: np.ndarray
    max_shard_size: float | None = None  # GB, for the weights format
    warmup_records: int = 100


@dataclass
class Runner:
    """A loaded artifact: ``predict_proba(x)`` maps float32 rows to probabilities."""

    predict_proba: Callable[[np.ndarray], np.ndarray]
    format: str
    path: Path
    runtime: str
    n_features: int
    n_classes: int
    model: Any = None
    info: dict[str, Any] = field(default_factory=dict)


class Format:
    """Base class of the format objects; subclasses override the verbs.

    Attributes:
        name: registry key (``--formats NAME``).
        filename: where the artifact lives inside a bundle.
        runtime: ``keras`` (runs on any Keras backend), ``tensorflow``,
            ``onnxruntime`` or ``litert``.
        default: written by ``export`` when no formats are named.
        needs_trust: loading can run arbitrary code (pickle).
        legacy: a legacy format; writing or reading it warns.
        suffixes: file suffixes that ``load`` recognises outside a bundle.
    """

    name: str = ""
    filename: str = ""
    runtime: str = "keras"
    default: bool = False
    needs_trust: bool = False
    legacy: bool = False
    suffixes: tuple[str, ...] = ()
    description: str = ""

    def relpath(self, bundle: Path) -> str:
        """Where the next export of this format goes inside ``bundle`` (POSIX, relative)."""
        return self.filename

    def save(self, model, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """Write the artifact at ``dest``; return facts only the writer knows (merged into ``info``)."""
        raise NotImplementedError

    def load(self, path: Path, *, trust: bool = False) -> Runner:
        """Load the artifact at ``path`` and return a :class:`Runner`."""
        raise NotImplementedError

    def describe(self, path: Path) -> dict[str, Any]:
        """Facts read back from a written artifact (I/O names, signatures) without running it.

        Export records them in the manifest's ``info``, which ``kerasio inspect``
        shows without importing any ML framework.
        """
        return {}

    def matches(self, path: Path) -> bool:
        """Whether a path outside a bundle is an artifact of this format."""
        return path.is_file() and any(path.name.endswith(s) for s in self.suffixes)

    def __repr__(self) -> str:
        return f"<format {self.name}: {self.filename} via {self.runtime}>"


REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Add a format to the registry (module import time)."""
    if fmt.name in REGISTRY:
        raise ValueError(f"format {fmt.name!r} is registered twice")
    REGISTRY[fmt.name] = fmt
    return fmt


def get_format(name: str) -> Format:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ArtifactError(
            f"unknown format {name!r}; known formats are {', '.join(REGISTRY)}."
        ) from None


def resolve_formats(formats: str | Sequence[str] | None) -> list[Format]:
    """``None`` -> the defaults; ``"all"`` -> every format; else names (comma-separated or a list)."""
    if formats is None:
        return [f for f in REGISTRY.values() if f.default]
    if isinstance(formats, str):
        formats = [s.strip() for s in formats.split(",") if s.strip()]
    if list(formats) == ["all"]:
        return list(REGISTRY.values())
    out = []
    for name in formats:
        fmt = get_format(name)
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ArtifactError("no formats named; pass e.g. --formats keras,savedmodel (or all).")
    return out
