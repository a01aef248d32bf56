"""Load a bundle, a ``.keras`` file or a SavedModel directory, hash-checked first."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError
from .formats import REGISTRY, Runner, get_format
from .manifest import MANIFEST_NAME, Manifest, read_manifest

__all__ = ["load", "LoadedModel", "PREFERENCE"]

# Which artifact of a bundle ``load`` picks when no format is named.
PREFERENCE = ("keras", "savedmodel", "weights", "h5", "onnx", "litert", "pickle")


@dataclass
class LoadedModel:
    """A loaded artifact with the names it needs to turn rows into labels."""

    runner: Runner
    feature_names: list[str]
    class_names: list[str]
    sha256: str | None = None
    manifest: Manifest | None = field(default=None, repr=False)

    def __post_init__(self):
        self.label_array = np.asarray(self.class_names)

    @property
    def format(self) -> str:
        return self.runner.format

    @property
    def path(self) -> Path:
        return self.runner.path

    @property
    def model(self) -> Any:
        return self.runner.model

    def predict_proba(self, rows) -> np.ndarray:
        from .predict import predict

        return predict(self, rows, probabilities=True)[1]

    def predict(self, rows) -> np.ndarray:
        from .predict import predict

        return predict(self, rows)


def load(path: str | Path, *, format: str | None = None, trust: bool = False) -> LoadedModel:
    """Load a bundle or a single artifact, checking its sha256 before loading.

    Args:
        path: a bundle directory, a ``.keras`` file, a SavedModel directory or
            any other registered artifact (``.h5``, ``.onnx``, ``.tflite``, ``.pkl``).
        format: which artifact of a bundle to load (default: ``keras`` if present).
        trust: allow the pickle format (it can run arbitrary code).

    Raises:
        IntegrityError: the bytes differ from the manifest; nothing is loaded.
        ArtifactError: the path is not something kerasio can load.

    Example:
        >>> m = load("saved_models/seed")  # doctest: +SKIP
        >>> m.predict(x[:3])  # doctest: +SKIP
        array(['setosa', 'virginica', 'setosa'], dtype='<U10')
    """
    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"{path}: no such file or directory.")
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        manifest = read_manifest(path)
        names = [a.format for a in manifest.artifacts]
        if format is None:
            format = next((f for f in PREFERENCE if f in names), names[0] if names else None)
        art = manifest.artifact(format)
        runner = get_format(format).load(art.check(path), trust=trust)
        return LoadedModel(runner, manifest.feature_names, manifest.class_names, art.sha256, manifest)

    fmt = get_format(format) if format else next((f for f in REGISTRY.values() if f.matches(path)), None)
    if fmt is None:
        raise ArtifactError(
            f"{path}: not a kerasio bundle, .keras file, SavedModel directory or other known artifact "
            f"({', '.join(REGISTRY)})."
        )
    manifest, sha = _enclosing_manifest_check(path)
    runner = fmt.load(path, trust=trust)
    if manifest is not None:
        return LoadedModel(runner, manifest.feature_names, manifest.class_names, sha, manifest)
    return LoadedModel(runner, [f"f{i}" for i in range(runner.n_features)],
                       [str(i) for i in range(runner.n_classes)], sha)


def _enclosing_manifest_check(path: Path) -> tuple[Manifest | None, str | None]:
    """If ``path`` is an artifact inside a bundle, check its hash against that manifest."""
    for bundle in (path.parent, path.parent.parent):
        if (bundle / MANIFEST_NAME).is_file():
            manifest = read_manifest(bundle)
            rel = path.resolve().relative_to(bundle.resolve()).as_posix()
            for art in manifest.artifacts:
                if art.path == rel:
                    art.check(bundle)
                    return manifest, art.sha256
    from .fsutil import hash_artifact

    return None, hash_artifact(path)[0]
