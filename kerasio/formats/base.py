"""The format protocol and the registry every part of kerasio iterates over.

A format is an object with a few verbs (``supports``, ``save``, ``load``,
``describe``, ``available_devices``) and a few facts (its path in a bundle, the
runtime that consumes it). Each format module builds one and calls
:func:`register`; adding a format means adding one module to
:mod:`kerasio.formats`. Export, load, verify, the worker and the CLI never name
a runtime: they ask the format.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np

from kerasio.backends.base import available_devices
from kerasio.backends.environment import to_numpy
from kerasio.errors import ArtifactError, KerasioError
from kerasio.spec.divergence import LayerOutput
from kerasio.spec.iospec import IOSpec
from kerasio.spec.task import Task
from kerasio.spec.tolerances import Tolerance

__all__ = ["Format", "Runner", "ExportContext", "REGISTRY", "register", "get_format", "resolve_formats", "explicit"]


@dataclass
class ExportContext:
    """What a format's ``save`` may need besides the model."""

    iospec: IOSpec
    task: Task
    reference_inputs: dict[str, np.ndarray]
    options: dict[str, Any] = field(default_factory=dict)  # this format's ``format_options[name]``
    # What this export has written so far, by format name: a format converted from another's artifact (LiteRT
    # from the SavedModel) starts from it instead of writing its own.
    written: Mapping[str, Path] = field(default_factory=dict)
    weights_bytes: int = 0  # the model's parameter bytes (ONNX writes external data above its threshold)


class Runner:
    """A loaded artifact: ``run({input name: array}) -> {output name: array}``.

    Attributes:
        format: the format's registry name.
        path: the artifact on disk.
        runtime: what runs it (``keras/tensorflow``, ``tensorflow``, ``onnxruntime``, ``litert``).
        backend: the tolerance table's backend column (``tensorflow``, ``jax``, ``torch``,
            ``onnxruntime``, ``litert``).
        device: ``cpu`` or ``gpu``.
        signature: the names and specs the artifact is called with.
        model: the underlying object (a Keras model, a ``tf.Module``, an ``InferenceSession``, ...).
    """

    def __init__(self, fn: Callable[[Mapping[str, np.ndarray]], Mapping[str, Any]], *, format: str, path: Path,
                 runtime: str, backend: str, iospec: IOSpec, device: str = "cpu", model: Any = None,
                 info: dict[str, Any] | None = None, context: Callable[[], ContextManager[Any]] | None = None):
        self._fn = fn
        self.format, self.path, self.runtime, self.backend = format, Path(path), runtime, backend
        self.iospec, self.device, self.model = iospec, device, model
        self.info: dict[str, Any] = dict(info or {})
        self._context = context or contextlib.nullcontext

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run already-coerced inputs (see :meth:`Signature.coerce`); outputs keyed by the signature's names.

        Raises:
            ArtifactError: the runtime failed on these inputs (its message is kept).
        """

        try:
            with self._context():
                out = self._fn(inputs)
        except KerasioError:
            raise
        except Exception as exc:  # each runtime raises its own types; the user gets one kerasio error
            said = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"  # one line (ORT's span several)
            error = ArtifactError(
                f"{self.path}: {self.runtime} failed to run the {self.format} artifact ({said}). Check the inputs "
                f"against the signature {self.iospec.describe()}, or re-export it. "
                f"Received: inputs {({k: tuple(np.shape(v)) for k, v in inputs.items()})}"
            )
            error.runtime_error = said  # type: ignore[attr-defined]  # the shape sweep reports the runtime's words
            raise error from None
        missing = [n for n in self.iospec.output_names if n not in out]
        if missing:
            raise ArtifactError(
                f"{self.path}: the {self.format} artifact returned no output {missing}; it returns "
                f"{sorted(out)}. Re-export it. Received: outputs={sorted(out)}"
            )
        rows = {len(v) for v in inputs.values() if np.ndim(v)}
        result = {}
        for spec in self.iospec.outputs:
            array = to_numpy(out[spec.name])
            _check_output(self, spec, array, rows.pop() if len(rows) == 1 else None)
            result[spec.name] = array
        return result

    def __repr__(self) -> str:
        return f"<Runner {self.format} {self.path} via {self.runtime} on {self.device}>"


def _check_output(runner: Runner, spec: Any, array: np.ndarray, rows: int | None) -> None:
    """An output must have the rank, fixed dimensions, kind and rows its signature declares.

    What reads the outputs next (labels by class index, columns per class)
    trusts them; an artifact that returns something else is refused here.
    """
    strings = array.dtype.kind in "USO"
    wrong = array.ndim != spec.rank or (strings != (spec.dtype == "string")) or any(
        want is not None and got != want for want, got in zip(spec.shape[1:], array.shape[1:]))
    if not wrong and rows is not None and array.ndim and spec.shape[:1] == (None,):
        wrong = array.shape[0] != rows
    if wrong:
        raise ArtifactError(
            f"{runner.path}: the {runner.format} artifact returned output {spec.name!r} as {array.dtype}"
            f"{list(array.shape)}, but the signature declares {spec.describe()}"
            f"{f' with {rows} rows' if rows is not None else ''}. Re-export it. Received: shape={tuple(array.shape)}")


class Format:
    """Base class of the format objects; subclasses override the verbs.

    Attributes:
        name: registry key (``--formats NAME``).
        filename: where the artifact lives inside a bundle.
        runtime: what consumes it: ``keras`` (any Keras backend), ``tensorflow``,
            ``onnxruntime`` or ``litert``.
        default: written by ``export`` when no formats are named.
        needs_trust: loading can run arbitrary code (pickle).
        legacy: a legacy format; writing or reading it warns.
        suffixes: file suffixes that ``load`` recognises outside a bundle.
        description: one line for ``kerasio --help`` and the README's format table.
        options: the options this format takes in ``format_options[name]``, with a line each (anything else
            is refused before anything is written).
        tolerances: this format's own rows of the tolerance table (:class:`~kerasio.spec.tolerances.Tolerance`),
            consulted before the table's.
        save_backend: the Keras backend the artifact must be written under (``None``: any). Export writes it in
            a worker of that backend, from the model's ``.keras`` file, when the model lives on another.
        quantized: the quantization scheme of a quantized variant (``""`` for a full-precision format): its
            artifact is judged by the gates of :mod:`kerasio.spec.quantization`, not by tolerances, and it is
            written only when named (``"all"`` means every full-precision format).
        repro_code: Python source defining ``run(path, inputs) -> {output name: array}`` with this format's
            runtime alone (no kerasio): the heart of a failing check's reproduction script (:mod:`kerasio.repro`),
            which defines ``INPUT_NAMES``, ``INPUT_KEYS``, ``INPUT_STRUCTURE``, ``OUTPUT_NAMES`` and ``DEVICE``.
    """

    name: str = ""
    filename: str = ""
    runtime: str = "keras"
    default: bool = False
    needs_trust: bool = False
    legacy: bool = False
    suffixes: tuple[str, ...] = ()
    description: str = ""
    options: dict[str, str] = {}
    save_backend: str | None = None
    tolerances: tuple[Tolerance, ...] = ()
    quantized: str = ""
    repro_code: str = """
def run(path, inputs):
    raise SystemExit("this format has no reproduction script: load the artifact with its runtime by hand")
"""

    def relpath(self, bundle: Path, ctx: ExportContext | None = None) -> str:
        """Where the next export of this format goes inside ``bundle`` (POSIX, relative); ``ctx`` is the export's
        context, for a format whose layout depends on the model (an ONNX graph with external data)."""
        return self.filename

    def supports(self, iospec: IOSpec) -> str | None:
        """``None`` when this format can carry a model of this signature, else the reason it cannot."""
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """Write the artifact at ``dest``; return facts only the writer knows (merged into ``info``)."""
        raise NotImplementedError

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        """Load the artifact at ``path`` onto ``device`` and return a :class:`Runner`.

        ``signature`` is the manifest's; without one (a bare file) the format
        reads the names off the artifact itself.
        """
        raise NotImplementedError

    def precheck(self, path: Path) -> None:
        """The audits that need no ML framework, run in the caller's process before an untrusted artifact's
        worker starts: a hostile file is refused at once, with the same error the worker would give. The worker
        (through :meth:`load`) runs every audit again. Nothing here may import TensorFlow or parse a format
        through a native library.
        """

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
        """The artifact's own values of the original model's layer outputs on ``inputs``, read from its runtime.

        ``layers`` are the original's top-level layers as they ran (:class:`~kerasio.spec.divergence.LayerOutput`:
        key, class, value and, for a converted graph, the op producing the output in the original's TensorFlow
        trace, by which a graph finds its tensors: :func:`~kerasio.spec.divergence.read_layers`). Returns
        ``({layer key: value}, {layer key: where it was read})`` for the layers found, or ``None`` when this
        runtime cannot expose them: ``verify --explain`` then bisects with prefix sub-models instead.
        """
        return None

    def describe(self, path: Path) -> dict[str, Any]:
        """Facts read back from a written artifact (I/O names, signatures) without running it.

        Export records them in the manifest's ``info``, which ``kerasio inspect``
        shows without importing any ML framework.
        """
        return {}

    def available_devices(self, backend: str) -> list[str]:
        """The devices this format's runtime can use here (``backend``: the worker's Keras backend)."""

        return available_devices(backend)

    def worker_backend(self, requested: str) -> str:
        """The Keras backend a verifying process needs for this format (``requested`` unless it needs TF)."""
        return requested

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
            f"unknown format {name!r}; known formats are {', '.join(REGISTRY)}. Received: format={name!r}"
        ) from None


def resolve_formats(formats: str | Sequence[str] | None) -> list[Format]:
    """``None`` -> the defaults; ``"all"`` -> every full-precision format; else names (comma-separated or a list)."""
    if formats is None:
        return [f for f in REGISTRY.values() if f.default]
    if isinstance(formats, str):
        formats = [s.strip() for s in formats.split(",") if s.strip()]
    if list(formats) == ["all"]:
        return [f for f in REGISTRY.values() if not f.quantized]
    out: list[Format] = []
    for name in formats:
        fmt = get_format(name)
        if fmt not in out:
            out.append(fmt)
    if not out:
        raise ArtifactError("no formats named; pass e.g. --formats keras,savedmodel (or all). Received: formats=[]")
    return out


def explicit(formats: str | Sequence[str] | None) -> bool:
    """Whether the user named formats (a skip is then an error) rather than taking defaults or ``all``."""
    if formats is None:
        return False
    names = [s.strip() for s in formats.split(",")] if isinstance(formats, str) else list(formats)
    return names != ["all"]

