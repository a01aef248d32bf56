"""The bundle manifest ``kerasio.json``: plain JSON behind a small dataclass."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ArtifactError, IntegrityError
from .fsutil import hash_artifact, write_text_atomic

__all__ = ["Manifest", "Artifact", "MANIFEST_NAME", "SCHEMA_VERSION", "read_manifest", "library_versions"]

MANIFEST_NAME = "kerasio.json"
SCHEMA_VERSION = 1
REFERENCE_INPUTS = "reference_inputs.npy"
REFERENCE_OUTPUTS = "reference_outputs.npy"
# The original model's outputs for the first row alone: a 1-row batch may take a
# different kernel (gemv, not gemm) and round differently from row 0 of the batch.
REFERENCE_ONE_ROW = "reference_outputs_1row.npy"


@dataclass
class Artifact:
    """One exported artifact: where it is, what it is and what its bytes hash to."""

    format: str
    path: str
    size: int
    sha256: str
    files: dict[str, str] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def check(self, bundle: Path) -> Path:
        """Return the artifact's path after checking its sha256; raise on mismatch.

        Raises:
            IntegrityError: naming the artifact (and the file within a
                directory artifact) whose bytes changed.
        """
        full = bundle / self.path
        if not full.exists():
            raise ArtifactError(
                f"{full}: artifact {self.format!r} listed in {MANIFEST_NAME} is missing. "
                "Re-export the bundle (kerasio run / kerasio.export)."
            )
        digest, _size, files = hash_artifact(full)
        if digest == self.sha256:
            return full
        where = full
        if self.files and files is not None:
            changed = sorted(set(self.files) ^ set(files)) or sorted(
                k for k in self.files if self.files[k] != files.get(k))
            if changed:
                where = full / changed[0]
        raise IntegrityError(
            f"{where}: sha256 {digest[:12]}... does not match {self.sha256[:12]}... recorded in "
            f"{bundle / MANIFEST_NAME}. The {self.format} artifact was modified or corrupted after "
            "export; nothing was loaded. Re-export it, or restore the original file."
        )


@dataclass
class Manifest:
    """What a bundle holds and the evidence needed to verify it."""

    feature_names: list[str]
    class_names: list[str]
    artifacts: list[Artifact] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    device: str = ""
    device_name: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    label: str = "label"
    trace: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    custom_objects: list[dict[str, str]] = field(default_factory=list)

    # -- conversion -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{MANIFEST_NAME}: schema_version {version!r} is not supported by this kerasio "
                f"(expects {SCHEMA_VERSION}). Upgrade kerasio or re-export the bundle."
            )
        data["artifacts"] = [Artifact(**a) for a in data.get("artifacts", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def write(self, bundle: Path) -> Path:
        path = Path(bundle) / MANIFEST_NAME
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    # -- queries ------------------------------------------------------------
    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def artifact(self, fmt: str) -> Artifact:
        for art in self.artifacts:
            if art.format == fmt:
                return art
        have = [a.format for a in self.artifacts]
        raise ArtifactError(f"this bundle has no {fmt!r} artifact; it has {have}. Export it with --formats.")

    def reference_arrays(self, bundle: Path) -> tuple[np.ndarray, np.ndarray]:
        """The stored reference inputs and outputs, after checking their hashes."""
        return self._reference(bundle, "inputs"), self._reference(bundle, "outputs")

    def reference_one_row(self, bundle: Path) -> np.ndarray:
        """The original model's outputs for the first reference row run as a batch of one."""
        return self._reference(bundle, "outputs_1row")

    def _reference(self, bundle: Path, key: str) -> np.ndarray:
        entry = self.reference[key]
        art = Artifact(format=f"reference {key}", path=entry["path"], size=0, sha256=entry["sha256"])
        return np.load(art.check(Path(bundle)), allow_pickle=False)


def read_manifest(bundle: str | Path) -> Manifest:
    """Read ``<bundle>/kerasio.json``; raise a clear error if absent or invalid."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{Path(bundle)}: not a kerasio bundle (no {MANIFEST_NAME}). Pass a bundle directory "
            "written by kerasio, a .keras file or a SavedModel directory."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc}). Re-export the bundle.") from None
    return Manifest.from_dict(data)


def library_versions() -> dict[str, str]:
    """Versions of kerasio, Keras, TensorFlow, numpy and Python (only what is importable)."""
    import importlib.metadata as md

    from . import __version__

    versions = {"kerasio": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for name in ("keras", "tensorflow", "jax", "torch", "onnxruntime"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return versions


def hash_entry(bundle: Path, rel: str) -> dict[str, Any]:
    digest, size, _ = hash_artifact(bundle / rel)
    return {"path": rel, "sha256": digest, "size": size}
