"""The bundle manifest ``kerasio.json``: plain JSON behind a small dataclass.

Schema 2 records the model's signature (named inputs and outputs), the task,
the formats that were skipped and why, and the reference data as named arrays
(``.npz``, loaded with ``allow_pickle=False``). Schema-1 bundles (kerasio 0.1:
one ``features`` input, ``probabilities`` output, ``.npy`` references) are read
by translating them into the same objects.
"""
from __future__ import annotations

import hashlib
import io
import json
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from kerasio._version import __version__
from kerasio.bundle.arrays import _fits_in_memory, check_against, load_arrays
from kerasio.bundle.bounded import loads
from kerasio.bundle.fsutil import confined, hash_artifact, sha256_file, tree_size, write_text_atomic
from kerasio.bundle.layout import MANIFEST_NAME, SCHEMA_VERSION, SUPPORTED_SCHEMAS, pinned
from kerasio.bundle.validation import MAX_MANIFEST_BYTES, MAX_STRING, validate_manifest
from kerasio.errors import ArtifactError, IntegrityError, KerasioError, ResourceLimitError
from kerasio.present.html import STYLE, escape, table, trace_svg
from kerasio.spec.iospec import IOSpec
from kerasio.spec.task import NamedColumns, Task

__all__ = ["Manifest", "Artifact", "MANIFEST_NAME", "SCHEMA_VERSION", "library_versions", "manifest_bytes",
           "parse_manifest"]


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

        Only for reporting: a loader must use :meth:`materialize`, which hashes the very bytes it loads.

        Raises:
            IntegrityError: naming the artifact (and the file within a
                directory artifact) whose bytes changed.
            UnsafeArtifactError: a path that leaves the bundle, a symlink or a special file
                (nothing outside the bundle is opened or hashed).
        """
        # Confined before anything is opened: relative, inside the bundle, no symlink, no FIFO or device.
        full = confined(bundle, self.path, f"artifact {self.format!r}")
        self._sized(bundle, full)
        with pinned(bundle, self.path):
            digest, _size, files = hash_artifact(full)
        self._match(bundle, full, digest, files)
        return full

    def materialize(self, bundle: Path, into: str | Path) -> Path:
        """Copy the artifact into the private directory ``into`` while hashing it; return the checked copy.

        The copy is made from the reads that are hashed, so a loader given it
        loads exactly the bytes that matched the manifest: no check-then-reopen,
        whatever happens to the bundle meanwhile. The generation read is pinned
        against pruning while it is copied.
        """
        full = confined(bundle, self.path, f"artifact {self.format!r}")
        self._sized(bundle, full)
        Path(into).mkdir(mode=0o700, parents=True, exist_ok=True)
        copy = Path(into) / Path(self.path).name
        with pinned(bundle, self.path):
            digest, _size, files = hash_artifact(full, copy_to=copy)
        try:
            self._match(bundle, full, digest, files)
        except IntegrityError:
            shutil.rmtree(copy, ignore_errors=True) if copy.is_dir() else copy.unlink(missing_ok=True)
            raise
        return copy

    def read_verified(self, bundle: Path) -> bytes:
        """The bytes of a single-file artifact, hashed as they were read (see :meth:`materialize`)."""
        full = confined(bundle, self.path, f"artifact {self.format!r}")
        self._sized(bundle, full)
        _fits_in_memory(full, self.size, self.format)
        buffer = io.BytesIO()
        with pinned(bundle, self.path):
            digest = sha256_file(full, copy_to=buffer)
        self._match(bundle, full, digest, None)
        return buffer.getvalue()

    def _sized(self, bundle: Path, full: Path) -> None:
        """Compare the bytes on disk with the manifest's ``size`` before a byte is read (``size`` 0: not recorded)."""
        if not self.size:
            return
        actual = tree_size(full)
        if actual != self.size:
            raise IntegrityError(
                f"{full}: {actual:,} bytes on disk, but {bundle / MANIFEST_NAME} records {self.size:,}. The "
                f"{self.format} artifact was modified or corrupted after export; nothing was read or loaded. Re-export "
                f"it, or restore the original file. Received: {actual:,} bytes")

    def _match(self, bundle: Path, full: Path, digest: str, files: dict[str, str] | None) -> None:
        if digest == self.sha256:
            return
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
class Manifest(NamedColumns):
    """What a bundle holds and the evidence needed to verify it."""

    iospec: IOSpec
    task: Task = field(default_factory=Task)
    artifacts: list[Artifact] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    created_utc: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    versions: dict[str, str] = field(default_factory=dict)
    backend: str = ""
    device: str = ""
    device_name: str = ""
    cpu_features: str = ""  # the exporting CPU's fingerprint (runtime.cpu_features): bit-identity needs the same
    label: str = "label"
    trace: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    custom_objects: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # hashed extra files (trace.csv, ...)
    # allowlisted packages whose classes the model uses (kerasio.bundle.audit.packages): {name: version}
    packages: dict[str, str] = field(default_factory=dict)
    # sha256 of the bytes this manifest was parsed from ('' when built in memory): what kerasio.bundle.trust records
    digest: str = field(default="", repr=False, compare=False)

    # -- conversion -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version, "created_utc": self.created_utc, "versions": self.versions,
            "backend": self.backend, "device": self.device, "device_name": self.device_name,
            "cpu_features": self.cpu_features, "signature": self.iospec.to_dict(), "task": self.task.to_dict(),
            "artifacts": [vars(a).copy() for a in self.artifacts], "skipped": dict(self.skipped),
            "label": self.label, "trace": self.trace, "metrics": self.metrics, "training": self.training,
            "reference": self.reference, "custom_objects": self.custom_objects, "attachments": self.attachments,
            **({"packages": dict(self.packages)} if self.packages else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        data = dict(data)
        version = data.get("schema_version")
        if version not in SUPPORTED_SCHEMAS:
            raise ArtifactError(
                f"{MANIFEST_NAME}: schema_version {version!r} is not supported by this kerasio "
                f"(reads {', '.join(map(str, SUPPORTED_SCHEMAS))}). Upgrade kerasio or re-export the bundle. "
                f"Received: schema_version={version!r}"
            )
        validate_manifest(data, schema=version)
        if version == 1:
            data = _from_schema_1(data)
        try:
            fields = set(Artifact.__dataclass_fields__)  # unknown keys were warned about by validate_manifest
            artifacts = [Artifact(**{k: v for k, v in a.items() if k in fields}) for a in data.get("artifacts", [])]
        except TypeError as exc:
            raise ArtifactError(f"{MANIFEST_NAME}: an artifact entry is malformed; re-export the bundle. "
                                f"Received: {exc}") from None
        known = set(cls.__dataclass_fields__) - {"signature", "task", "artifacts", "digest"}
        return cls(iospec=IOSpec.from_dict(data["signature"]), task=Task.from_dict(data.get("task")),
                   artifacts=artifacts, **{k: v for k, v in data.items() if k in known})

    def relocated(self, prefix: str) -> "Manifest":
        """This manifest with every artifact and reference path under ``prefix`` (a generation directory)."""
        data = self.to_dict()
        for art in data["artifacts"]:
            art["path"] = f"{prefix}/{art['path']}"
        data["reference"] = {**data["reference"], **{k: {**v, "path": f"{prefix}/{v['path']}"}
                                                     for k, v in self.reference_files().items()}}
        data["attachments"] = [{**a, "path": f"{prefix}/{a['path']}"} for a in data["attachments"]]
        return Manifest.from_dict(data)

    def text(self) -> str:
        """The manifest as kerasio writes it (``kerasio.json``)."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, bundle: Path) -> Path:
        path = Path(bundle) / MANIFEST_NAME
        write_text_atomic(path, self.text())
        return path

    def _repr_html_(self) -> str:
        """What ``kerasio inspect`` shows, for a notebook."""

        facts = [["created", self.created_utc], ["backend", f"{self.backend} on {self.device} {self.device_name}"],
                 ["signature", self.iospec.describe()], ["task", self.task.kind],
                 ["versions", ", ".join(f"{k} {v}" for k, v in self.versions.items())]]
        if self.task.is_classification:
            facts.append(["classes", ", ".join(self.class_names)])
        facts += [[k, f"{v:.4f}"] for k, v in self.metrics.items() if isinstance(v, (int, float))]
        facts.append(["shape sweep", self.sweep_text()])
        rows = [[a.format, a.path, a.size, a.sha256] for a in self.artifacts]
        rows += [[name, "-", "-", f"skipped: {why}"] for name, why in self.skipped.items()]
        chart = trace_svg(self.trace) if self.trace else ""
        return (f'{STYLE}<div class="kerasio"><h4>kerasio bundle (schema {escape(self.schema_version)})</h4>'
                + table(["", ""], facts) + "<h4>Artifacts</h4>" + table(["Format", "Path", "Bytes", "sha256"], rows)
                + chart + "</div>")

    # -- queries ------------------------------------------------------------
    def integrity(self, bundle: Path) -> dict[str, str]:
        """Each artifact's and reference file's bytes against the manifest, by path: ``ok`` or what is wrong.

        What ``verify`` checks before it loads anything, without loading:
        paths confined to the bundle, sizes, then sha256 of every byte.
        """

        entries = [(a.path, a) for a in self.artifacts]
        entries += [(e["path"], Artifact(format=f"reference {k}", path=e["path"], size=int(e.get("size") or 0),
                                         sha256=e["sha256"]))
                    for k, e in self.reference_files().items()]
        found = {}
        for path, art in entries:
            try:
                art.check(Path(bundle))
                found[path] = "ok"
            except IntegrityError as exc:
                found[path] = "MODIFIED: " + str(exc).split(". ")[0]
            except ResourceLimitError:  # nothing could be checked (a lock another process holds): say so, as an error
                raise
            except KerasioError as exc:
                found[path] = "REFUSED: " + str(exc).split(". ")[0]
        return found

    def artifact(self, fmt: str) -> Artifact:
        for art in self.artifacts:
            if art.format == fmt:
                return art
        have = [a.format for a in self.artifacts]
        why = f" (skipped at export: {self.skipped[fmt]})" if fmt in self.skipped else ""
        raise ArtifactError(f"this bundle has no {fmt!r} artifact{why}; it has {have}. Export it with --formats. "
                            f"Received: format={fmt!r}")

    def reference_arrays(self, bundle: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The stored reference inputs and outputs by name, after checking their hashes."""
        return self._reference(bundle, "inputs"), self._reference(bundle, "outputs")

    def reference_one_row(self, bundle: Path) -> dict[str, np.ndarray]:
        """The original model's outputs for the first reference row run as a batch of one."""
        return self._reference(bundle, "outputs_1row")

    def reference_sweep(self, bundle: Path) -> list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The shape sweep's ``(shape name, inputs, original outputs)``, hashes and shapes checked; [] before 0.4.

        The inputs must have exactly the shapes the manifest records for them, and the outputs the signature's
        rank, fixed dimensions and kind (:mod:`kerasio.spec.sweep` made them at export).
        """
        shapes = [s for s in self.reference.get("sweep") or [] if "shapes" in s]
        if not shapes:
            return []
        names = {"sweep_inputs": self.iospec.inputs, "sweep_outputs": self.iospec.outputs}
        read = {}
        for key, specs in names.items():
            data, path = self._reference_bytes(bundle, key)
            read[key] = load_arrays(path, [f"{i}/{s.name}" for i in range(len(shapes)) for s in specs], data=data)
        found = []
        for i, shape in enumerate(shapes):
            x = {s.name: read["sweep_inputs"][f"{i}/{s.name}"] for s in self.iospec.inputs}
            y = {s.name: read["sweep_outputs"][f"{i}/{s.name}"] for s in self.iospec.outputs}
            where = Path(bundle) / self.reference["sweep_inputs"]["path"]
            for name, array in x.items():
                if list(array.shape) != shape["shapes"].get(name):
                    raise ArtifactError(f"{where}: sweep shape {shape['name']!r}: input {name!r} is "
                                        f"{list(array.shape)}, but the manifest records {shape['shapes'].get(name)}; "
                                        f"re-export the bundle. Received: shape={list(array.shape)}")
            check_against(where, x, self.iospec.inputs)
            check_against(Path(bundle) / self.reference["sweep_outputs"]["path"], y, self.iospec.outputs)
            found.append((str(shape["name"]), x, y))
        return found

    def sweep_text(self) -> str:
        """The shape sweep in one line, for ``inspect``: the shapes checked besides the reference, and refusals."""
        shapes = [str(s["name"]) for s in self.reference.get("sweep") or [] if "shapes" in s]
        if not shapes and not self.sweep_refused():
            return "none recorded (a bundle from before kerasio 0.4): the reference batch and its first row only"
        text = ", ".join(shapes) or "none"
        refused = "; ".join(f"{k}: {v}" for k, v in self.sweep_refused().items())
        return text + (f" (left out, {refused})" if refused else "")

    def reference_labels(self, bundle: Path) -> np.ndarray | None:
        """The reference rows' class indices, hash checked, when the bundle records them (else None)."""
        if "labels" not in self.reference:
            return None
        data, path = self._reference_bytes(bundle, "labels")
        labels = load_arrays(path, ["labels"], data=data)["labels"]
        rows = self.reference.get("rows")
        if labels.ndim != 1 or labels.dtype.kind not in "iu" or (rows is not None and len(labels) != rows):
            raise ArtifactError(f"{Path(bundle) / path.name}: the reference labels are not one class index per "
                                f"reference row; re-export the bundle. Received: shape {labels.shape}, {labels.dtype}")
        return labels

    def reference_files(self) -> dict[str, dict[str, Any]]:
        """The reference's file entries (path, size, sha256) by key, without its other records (sweep, synthetic)."""
        return {k: e for k, e in self.reference.items() if isinstance(e, dict) and "path" in e}

    def synthetic_notes(self) -> list[str]:
        """The warnings of a reference made from the signature (``export(reference_inputs=None)``); [] otherwise."""
        made = self.reference.get("synthetic")
        if not isinstance(made, dict):
            return []
        notes = [f"reference: SYNTHETIC, made from the signature (seed {made.get('seed')}, {made.get('rows')} rows), "
                 "not real data: " + "; ".join(f"{k}: {v}" for k, v in (made.get("inputs") or {}).items())]
        if made.get("one_class"):
            notes.append(f"reference: {made['one_class']}")
        return notes

    def sweep_refused(self) -> dict[str, str]:
        """The sweep's shapes the original model itself refused at export, with its reason."""
        return {s["name"]: s["refused"] for s in self.reference.get("sweep") or [] if "refused" in s}

    def _reference_bytes(self, bundle: Path, key: str) -> tuple[bytes, Path]:
        try:
            entry = self.reference[key]
            art = Artifact(format=f"reference {key}", path=entry["path"], size=int(entry.get("size") or 0),
                           sha256=entry["sha256"])
        except (KeyError, TypeError):
            raise ArtifactError(f"{Path(bundle) / MANIFEST_NAME}: no reference {key} recorded; re-export the "
                                f"bundle. Received: reference keys {sorted(self.reference)}") from None
        return art.read_verified(Path(bundle)), Path(bundle) / art.path

    def _reference(self, bundle: Path, key: str) -> dict[str, np.ndarray]:
        data, path = self._reference_bytes(bundle, key)
        specs = self.iospec.inputs if key == "inputs" else self.iospec.outputs
        arrays = load_arrays(path, [s.name for s in specs], specs, data=data)
        rows = self.reference.get("rows")
        if key != "outputs_1row" and isinstance(rows, int) and len(next(iter(arrays.values()))) != rows:
            raise ArtifactError(f"{path}: {len(next(iter(arrays.values())))} rows, but the manifest records {rows}; "
                                f"re-export the bundle. Received: rows={rows}")
        return arrays


def _from_schema_1(data: dict[str, Any]) -> dict[str, Any]:
    """kerasio 0.1's classifier bundle in schema-2 terms: ``features`` -> ``probabilities``."""
    features = [str(f) for f in data.get("feature_names", [])]
    classes = [str(c) for c in data.get("class_names", [])]
    name = (data.get("input") or {}).get("name", "features")
    data["signature"] = {
        "inputs": [{"name": name, "dtype": "float32", "shape": [None, len(features)]}],
        "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, len(classes)],
                     "activation": "softmax", "probabilities": True}],
        "feature_names": features, "model_kind": "sequential",
    }
    data["task"] = {"kind": "classification", "output": "probabilities", "class_names": classes}
    data["skipped"] = {}
    return data


def manifest_bytes(bundle: str | Path) -> bytes:
    """The bytes of ``<bundle>/kerasio.json``, read once (no symlink, no FIFO, at most the size limit)."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise ArtifactError(
            f"{Path(bundle)}: not a kerasio bundle (no {MANIFEST_NAME}). Pass a bundle directory "
            f"written by kerasio, a .keras file or a SavedModel directory. Received: {Path(bundle)}"
        )
    confined(Path(bundle), MANIFEST_NAME, "the manifest")  # a regular file, not a link or a FIFO
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path}: the manifest is {size} bytes, over the limit of {MAX_MANIFEST_BYTES}; no "
                            f"kerasio manifest is that large. Re-export the bundle. Received: {size} bytes")
    buffer = io.BytesIO()
    sha256_file(path, copy_to=buffer)
    return buffer.getvalue()[:MAX_MANIFEST_BYTES + 1]


def parse_manifest(data: bytes, path: Path) -> Manifest:
    """Validate and parse manifest bytes (``path`` names them in errors)."""
    parsed = loads(data, what=str(path), max_bytes=MAX_MANIFEST_BYTES, max_string=MAX_STRING,
                   advice="re-export the bundle")
    if not isinstance(parsed, dict):
        raise ArtifactError(f"{path}: the manifest is not a JSON object; re-export the bundle. "
                            f"Received: {type(parsed).__name__}")
    manifest = Manifest.from_dict(parsed)
    manifest.digest = hashlib.sha256(data).hexdigest()
    return manifest


def library_versions() -> dict[str, str]:
    """Versions of kerasio, Keras, TensorFlow, numpy and Python (only what is importable)."""
    import importlib.metadata as md


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
