"""Load a bundle, a ``.keras`` file or a SavedModel directory (any registered artifact), hash-checked first."""
from __future__ import annotations

import contextlib
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from kerasio.backends.environment import default_backend
from kerasio.bundle.arrays import load_arrays
from kerasio.bundle.audit import allowing_ops
from kerasio.bundle.audit.keras import exported_here
from kerasio.bundle.fsutil import hash_artifact, private_dir, tree_size
from kerasio.bundle.inputs import read_input_file
from kerasio.bundle.layout import MANIFEST_NAME, flat_name
from kerasio.bundle.manifest import Artifact, Manifest
from kerasio.bundle.reader import read_manifest, read_pinned
from kerasio.bundle.trust import trusted
from kerasio.compare import Comparison, compare_models
from kerasio.errors import ArtifactError, InputError, KerasioError, LegacyFormatWarning, SignatureError, UnsafeArtifactError
from kerasio.formats import REGISTRY, Format, Runner, get_format
from kerasio.options import VerifyOptions
from kerasio.present.html import STYLE, escape, table
from kerasio.process.protocol import WARM, JobRequest, OpenRequest
from kerasio.process.session import Session
from kerasio.spec.iospec import IOSpec
from kerasio.spec.limits import Limits
from kerasio.spec.synth import SyntheticInputs, hints_from_model, synthesize
from kerasio.spec.task import NamedColumns, Task, resolve_task
from kerasio.verify import importable_custom_modules, plugin_modules

__all__ = ["load", "load_isolated", "load_model_file", "LoadedModel", "PREFERENCE"]

# Which artifact of a bundle ``load`` picks when no format is named.
PREFERENCE = ("keras", "savedmodel", "weights", "h5", "onnx", "litert", "pickle")


@dataclass
class LoadedModel(NamedColumns):
    """A loaded artifact, its signature and task: ``run`` for outputs, ``predict`` for labels or values."""

    runner: Runner
    task: Task
    sha256: str | None = None
    manifest: Manifest | None = field(default=None, repr=False)
    _resources: contextlib.ExitStack | None = field(default=None, repr=False, compare=False)
    _worker: Any = field(default=None, repr=False, compare=False)  # an isolated model's worker and its copy
    _copy: Path | None = field(default=None, repr=False, compare=False)

    @property
    def isolated(self) -> bool:
        """Whether the artifact runs in a sandboxed worker (an untrusted one) rather than in this process."""
        return "sandbox" in self.runner.info

    def close(self) -> None:
        """Release what the model holds: its worker (an untrusted artifact's) and its generation's pin."""
        if self._resources is not None:
            self._resources.close()

    def __enter__(self) -> "LoadedModel":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def iospec(self) -> IOSpec:
        return self.runner.iospec

    @property
    def format(self) -> str:
        return self.runner.format

    @property
    def path(self) -> Path:
        return self.runner.path

    @property
    def model(self) -> Any:
        return self.runner.model

    def _repr_html_(self) -> str:
        r = self.runner
        facts: list[list[Any]] = [["format", r.format], ["path", r.path], ["sha256", self.sha256 or "-"],
                 ["runtime", f"{r.runtime} on {r.device}"], ["signature", self.iospec.describe()],
                 ["task", self.task.kind + (f": {self.task.class_names}" if self.task.is_classification else "")]]
        if "sandbox" in r.info:
            facts.append(["sandbox", r.info["sandbox"]])
        return f'{STYLE}<div class="kerasio"><h4>Loaded {escape(r.format)} artifact</h4>{table(["", ""], facts)}</div>'

    def run(self, inputs: Any) -> dict[str, np.ndarray]:
        """Every named output for ``inputs`` (array, list, dict by input name, DataFrame, or a file path).

        Example:
            >>> kerasio.load("saved_models/seed").run(x[:2])  # doctest: +SKIP
            {'probabilities': array([[0.2, 0.1, 0.7], [0.9, 0.05, 0.05]], dtype=float32)}
        """
        source = "inputs"
        if isinstance(inputs, (str, Path)):
            source, inputs = str(inputs), read_input_file(inputs)
        return self.runner.run(self.iospec.coerce(inputs, source=source))

    def predict(self, inputs: Any, *, probabilities: bool = False) -> Any:
        """Labels for a classification (``(labels, probabilities)`` when asked); otherwise the outputs.

        A regression returns its one output; a ``raw`` model returns its one
        output, or a dict of outputs when it has several.
        """
        outputs = self.run(inputs)
        if self.task.is_classification:
            labels = self.task.labels(outputs)
            return (labels, outputs[str(self.task.output)]) if probabilities else labels
        if probabilities:
            raise InputError(
                f"probabilities=True applies to classifications; this model's task is {self.task.kind!r}, so "
                "predict returns its outputs. Drop probabilities=True. Received: probabilities=True"
            )
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """The class probabilities of a classification."""
        return self.predict(inputs, probabilities=True)[1]

    def synthesize(self, settings: SyntheticInputs | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Seeded inputs made from this model's signature (:mod:`kerasio.spec.synth`), and what each was made from.

        A Keras model's layers say what values each input takes (an ``Embedding``'s size, a vocabulary, a
        ``Rescaling``'s range); an isolated model's worker reads them (the registered job ``synthesize``).
        """
        settings = settings or SyntheticInputs()
        if not self.runner.runtime.startswith("keras"):
            return synthesize(self.iospec, {}, settings)  # a graph's layers are not Keras layers: dtypes only
        if self._worker is None:
            return synthesize(self.iospec, hints_from_model(self.model, self.iospec), settings)
        made = self._worker.call(JobRequest("synthesize", {
            "path": str(self._copy), "format": self.format, "iospec": self.iospec.to_dict(),
            "settings": {"rows": settings.rows, "seed": settings.seed, "length": settings.length,
                         "value_ranges": {k: list(v) for k, v in settings.value_ranges.items()}}}))
        arrays = load_arrays(Path(made["inputs"]), self.iospec.input_names, list(self.iospec.inputs))
        return arrays, dict(made["made"])

    def compare(self, other: "LoadedModel", inputs: Any = None, *, options: VerifyOptions | None = None
                ) -> Comparison:
        """Whether ``other`` gives this model's outputs: both run on the same inputs, every output compared.

        See :func:`kerasio.compare.compare_models` (inputs, tolerances, matching by name or position).

        Example:
            >>> mine, theirs = kerasio.load("model.keras"), kerasio.load("colleague.onnx")  # doctest: +SKIP
            >>> mine.compare(theirs).ok  # doctest: +SKIP
            True
        """
        return compare_models(self, other, inputs, options)


def load(path: str | Path, *, format: str | None = None, trust: bool = False, device: str = "cpu",
         allow_ops: Sequence[str] = (), public_key: str | Path | None = None, limits: Limits | None = None,
         imports: Sequence[str] = (), isolate: bool | None = None) -> LoadedModel:
    """Load a bundle or a single artifact, checking its sha256 before loading.

    Whether the artifact runs in this process depends on whether it is yours
    (see :mod:`kerasio.bundle.trust`): a bundle kerasio exported under your account,
    one whose signature verifies with ``public_key``, or anything loaded with
    ``trust=True`` is audited and loaded here (the fast path: well under a
    millisecond per small batch). Anything else (a bundle from someone else, a
    bare file) is audited, loaded and run in a sandboxed worker process under
    :class:`~kerasio.spec.limits.Limits`: it cannot touch this process, and a limit
    it hits is a :class:`~kerasio.errors.ResourceLimitError`. Such a model holds
    its worker until :meth:`LoadedModel.close` (or the end of a ``with`` block,
    or until it is garbage-collected); ``model.isolated`` says which it is.

    Args:
        path: a bundle directory, a ``.keras`` file, a SavedModel directory or
            any other registered artifact (``.h5``, ``.onnx``, ``.tflite``, ``.pkl``).
        format: which artifact of a bundle to load (default: ``keras`` if present).
        trust: you vouch for the artifact: load it in this process, and allow the pickle format (which can
            run arbitrary code).
        device: ``cpu`` or ``gpu``.
        allow_ops: SavedModel op names to accept beyond the inference allowlist (only for a file you trust).
        public_key: an elliptic-curve public key (PEM): the bundle's manifest must carry a valid signature
            by its private key (``kerasio sign``); a bundle that has one is then trusted.
        limits: for an untrusted artifact, the worker's limits (default: derived from its size).
        imports: for an untrusted artifact, modules the worker imports first (custom layers).
        isolate: ``None`` (default) decides by trust as above; ``True`` runs even a trusted artifact in the
            worker; ``False`` insists on this process and refuses an untrusted artifact
            (:class:`~kerasio.errors.UnsafeArtifactError`) instead of isolating it.

    Raises:
        IntegrityError: the bytes differ from the manifest; nothing is loaded.
        SignatureError: ``public_key`` was given and the signature is missing or does not verify.
        ArtifactError: the path is not something kerasio can load.
        ResourceLimitError: an untrusted artifact hit one of its limits.

    Example:
        >>> m = load("saved_models/seed")  # doctest: +SKIP
        >>> m.predict(x[:3])  # doctest: +SKIP
        array(['setosa', 'virginica', 'setosa'], dtype='<U10')
    """

    resources = contextlib.ExitStack()  # the generation's pin (and an untrusted model's worker), held while it lives
    try:
        tmp = resources.enter_context(private_dir("kerasio-load-"))
        checked = _checked_copy(Path(path), format, public_key, tmp, resources)
        recorded = trusted(checked.manifest)  # exported here: one lookup of the record, used twice below
        own = recorded or trusted(None, trust=trust, public_key=public_key)
        if isolate is False and not own:
            raise UnsafeArtifactError(
                f"{checked.shown}: loading in this process runs the artifact here, and it is not yours (kerasio did "
                "not export it under this account, and no public key vouches for it). Load it in the sandboxed worker "
                "(drop --in-process / isolate=False), or pass trust=True (--trust) if you vouch for it. "
                "Received: isolate=False")
        if own and not isolate:
            with allowing_ops(allow_ops), exported_here(recorded):
                manifest = checked.manifest
                runner = _load_copy(checked.format, checked.copy, checked.shown, device=device, trust=trust,
                                    iospec=manifest.iospec if manifest else None)
            shutil.rmtree(tmp, ignore_errors=True)  # loaded: the runtime holds what it needs
            loaded = LoadedModel(runner, _task(checked.manifest, runner.iospec), checked.sha256, checked.manifest)
        else:
            loaded = _in_worker(checked, tmp, resources, trust=trust, allow_ops=allow_ops, imports=imports,
                                limits=limits, device=device)
    except BaseException:
        resources.close()
        raise
    # While it lives, a writer does not prune its generation: manifest.reference_arrays(bundle) and the files the
    # manifest names stay readable (a later writer prunes the generation once the model is gone).
    loaded._resources = resources
    weakref.finalize(loaded, resources.close)
    return loaded


@dataclass
class _Checked:
    """A private copy of exactly the hashed bytes of one artifact, and what names it."""

    format: Format
    copy: Path
    shown: Path  # the artifact in the bundle, for messages
    sha256: str
    manifest: Manifest | None


def _checked_copy(path: Path, format: str | None, public_key: str | Path | None, tmp: Path,
                  stack: contextlib.ExitStack) -> _Checked:
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or directory. Pass a bundle directory or an artifact. "
                            f"Received: {path}")
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = read_pinned(path, stack, public_key)
        names = [a.format for a in manifest.artifacts]
        if format is None:
            format = next((f for f in PREFERENCE if f in names), names[0] if names else None)
        if format is None:
            raise ArtifactError(f"{path}: the manifest lists no artifacts; re-export the bundle. Received: []")
        art = manifest.artifact(format)
        return _Checked(get_format(format), art.materialize(path, tmp), path / art.path, art.sha256, manifest)

    fmt = get_format(format) if format else next((f for f in REGISTRY.values() if f.matches(path)), None)
    if fmt is None:
        raise ArtifactError(
            f"{path}: not a kerasio bundle, .keras file, SavedModel directory or other known artifact; pass one "
            f"of those ({', '.join(REGISTRY)}). Received: {path}"
        )
    bundle, enclosing, entry = _enclosing_artifact(path, public_key)
    if public_key is not None and entry is None:
        raise SignatureError(f"{path}: a public key was given, but this artifact is not listed by a signed "
                             f"bundle's manifest, so there is no signature to check; nothing was loaded. Load the "
                             f"bundle directory instead. Received: {path}")
    if entry is not None and enclosing is not None and bundle is not None:
        # A top-level name is a hardlink to the generation's file: what is checked and loaded is the manifest's.
        return _Checked(fmt, entry.materialize(bundle, tmp), path, entry.sha256, enclosing)
    copy = tmp / path.name
    return _Checked(fmt, copy, path, hash_artifact(path, copy_to=copy)[0], None)  # loaded is what was hashed


def load_model_file(path: str | Path, *, trust: bool = False, stack: contextlib.ExitStack) -> tuple[Any, Path, str]:
    """A Keras model file built in this process, for export: ``(model, the file, its sha256)``.

    ``path`` is a ``.keras`` file, a legacy ``.h5``, a ``weights`` directory with its architecture, or a bundle
    (its ``.keras`` artifact). The bytes are hashed as they are copied to a private directory (``stack`` removes
    it), and the copy gets the audit :func:`load` gives an untrusted file: the format's framework-free checks,
    then its full audit (the config's classes against the allowlist, sizes, no Lambda, no HDF5 links) before
    Keras builds anything. Export needs the model object itself (the converters take it), so it is built here,
    not in the sandboxed worker; every artifact written from it is then verified in the worker.

    Raises:
        ArtifactError: the path is not a Keras model file (a SavedModel, ONNX or LiteRT file cannot be rebuilt
            as a Keras model; ``kerasio compare`` checks one against a ``.keras`` file), or the audit refused it.
    """
    path = Path(path)
    fmt = next((f for f in REGISTRY.values() if f.matches(path)), None) if not (path / MANIFEST_NAME).is_file() \
        else get_format("keras")
    if fmt is not None and fmt.runtime != "keras":
        raise ArtifactError(
            f"{path}: a {fmt.name} artifact cannot be rebuilt as a Keras model, so it cannot be exported again. Export "
            f"the .keras (or .h5) file it came from; to check whether the two agree, run: kerasio compare MODEL.keras "
            f"{path}. Received: {fmt.name}")
    if fmt is not None and fmt.needs_trust and not trust:
        raise UnsafeArtifactError(f"{path}: loading a {fmt.name} file runs its code; pass trust=True (--trust) only "
                                  f"for a file you vouch for. Received: trust=False")
    tmp = stack.enter_context(private_dir("kerasio-export-"))
    checked = _checked_copy(path, "keras" if (path / MANIFEST_NAME).is_file() else None, None, tmp, stack)
    if checked.format.runtime != "keras":
        raise ArtifactError(f"{path}: no Keras model file here to export (found {checked.format.name}); pass a .keras "
                            f"file, a legacy .h5 or a weights directory. Received: {path}")
    try:
        checked.format.precheck(checked.copy)  # what needs no framework first, as load does
    except KerasioError as exc:
        exc.args = (str(exc).replace(str(checked.copy), str(checked.shown)),) + exc.args[1:]
        raise
    runner = _load_copy(checked.format, checked.copy, checked.shown, trust=trust)
    return runner.model, checked.shown, checked.sha256


def _task(manifest: Manifest | None, iospec: IOSpec) -> Task:
    return manifest.task if manifest else resolve_task("auto", iospec)


@contextlib.contextmanager
def load_isolated(path: str | Path, *, format: str | None = None, trust: bool = False, allow_ops: Sequence[str] = (),
                  public_key: str | Path | None = None, imports: Sequence[str] = (),
                  limits: Limits | None = None, device: str = "cpu") -> Iterator[LoadedModel]:
    """:func:`load`, but always in a sandboxed worker process (what ``kerasio predict`` does), trusted or not.

    The worker reads only a checked copy of the artifact and writes only its
    own directory (Landlock, see :mod:`kerasio.process.sandbox`), under ``limits``;
    this process never imports the artifact's runtime.
    ``model.runner.info["sandbox"]`` says what confined it. The worker stops
    when the block ends.
    """
    with load(path, format=format, trust=trust, allow_ops=allow_ops, public_key=public_key, imports=imports,
              limits=limits, device=device, isolate=True) as model:
        yield model


def _in_worker(checked: "_Checked", tmp: Path, resources: contextlib.ExitStack, *, trust: bool,
               allow_ops: Sequence[str], imports: Sequence[str], limits: Limits | None, device: str) -> LoadedModel:
    """A model whose artifact is loaded and run by a sandboxed, bounded worker that ``resources`` closes."""

    manifest = checked.manifest
    if manifest is not None:  # as verify does: the custom-class modules this process has imported itself
        imports = [*imports, *importable_custom_modules(manifest.custom_objects)]
    fmt = checked.format
    imports = [*imports, *plugin_modules([fmt.name])]  # a plug-in format's module, as verify does
    try:  # what needs no framework is refused here, before a worker (and its TensorFlow import) starts
        fmt.precheck(checked.copy)
    except KerasioError as exc:
        exc.args = (str(exc).replace(str(checked.copy), str(checked.shown)),) + exc.args[1:]
        raise
    size = tree_size(checked.copy)
    bounds = (limits or Limits.from_env()).resolved(size)
    session = resources.enter_context(Session(imports=imports))
    worker = session.sandboxed(fmt.worker_backend(default_backend()), [str(tmp)], limits=bounds, device=device,
                               warm=WARM.get(fmt.runtime, ("keras",)))
    runner = session.open(worker, OpenRequest(fmt.name, str(checked.copy), manifest.iospec.to_dict() if manifest
                                              else None, device=device, trust=trust, imports=tuple(imports),
                                              allow_ops=tuple(allow_ops)), shown=checked.shown, scratch=tmp)
    iospec = runner.iospec
    if fmt.legacy:  # the worker's own warning stays in the worker: said here, once it has loaded
        import warnings

        warnings.warn(f"{fmt.name}: {fmt.description}; a legacy format, prefer .keras", LegacyFormatWarning,
                      stacklevel=4)
    return LoadedModel(runner, _task(manifest, iospec), checked.sha256, manifest, _worker=worker, _copy=checked.copy)


def _load_copy(fmt: Format, copy: Path, shown: Path, **kwargs: Any) -> Runner:
    """Load the checked private copy; errors and the runner name the bundle's file, not the copy."""
    try:
        runner = fmt.load(copy, **kwargs)
    except KerasioError as exc:
        exc.args = (str(exc).replace(str(copy), str(shown)),) + exc.args[1:]
        raise
    runner.path = shown
    return runner


def _enclosing_artifact(path: Path, public_key: str | Path | None = None
                        ) -> tuple[Path | None, Manifest | None, Artifact | None]:
    """If ``path`` is an artifact listed by the manifest of the bundle it lies in: that bundle, manifest and entry.

    A top-level name (``bundle/model.keras``, ``bundle/serving/3``) stands for the current generation's file.
    """
    for bundle in (path.parent, path.parent.parent):
        if (bundle / MANIFEST_NAME).is_file():
            manifest = read_manifest(bundle, public_key=public_key)
            rel = path.resolve().relative_to(bundle.resolve()).as_posix()
            for art in manifest.artifacts:
                if rel in (art.path, flat_name(art.path)):
                    return bundle, manifest, art
    return None, None, None
