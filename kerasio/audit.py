"""Audit a model file's config as plain JSON before any Keras object is built.

Nothing here imports Keras except to ask which custom classes are registered.
The guards: a ``.keras`` file must be a sane zip (no path tricks, no zip bomb),
its config must name only Keras classes or classes registered in this process,
and ``Lambda`` layers (which carry Python bytecode) are refused.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

from .errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_keras_file", "audit_config", "read_keras_config", "archive_limits"]

MAX_UNCOMPRESSED = 16 << 30  # 16 GiB: far above any model kerasio has met, far below a bomb
MAX_RATIO = 200  # compressed -> uncompressed expansion allowed per member
# Keras writes .keras archives uncompressed (ZIP_STORED): a real one expands about 1x. 20x leaves room for a
# re-zipped archive and stops a bomb of many small members (256 x 1 MiB in 300 KB is ~870x).
MAX_TOTAL_RATIO = 20
MAX_MEMBERS = 10_000  # a .keras holds 3 members plus the assets of its layers


def archive_limits() -> dict[str, int]:
    """The archive caps, each overridable by an environment variable (``KERASIO_MAX_ARCHIVE_BYTES``, ...)."""
    def env(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    return {"bytes": env("KERASIO_MAX_ARCHIVE_BYTES", MAX_UNCOMPRESSED),
            "members": env("KERASIO_MAX_ARCHIVE_MEMBERS", MAX_MEMBERS),
            "ratio": env("KERASIO_MAX_ARCHIVE_RATIO", MAX_TOTAL_RATIO)}
_KERAS_MODULES = ("keras", "keras.src", "keras.layers", "keras.models", "keras.src.")


def read_keras_config(path: Path) -> dict[str, Any]:
    """Return ``config.json`` of a ``.keras`` zip after checking the archive."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArtifactError(
            f"{path}: not a valid .keras archive. The file is corrupt or is not a Keras v3 "
            f"model; re-export it. Received: {exc}"
        ) from None
    with archive:
        limits = archive_limits()
        members = archive.infolist()
        if len(members) > limits["members"]:
            raise UnsafeArtifactError(
                f"{path}: the archive has {len(members)} members, over the limit of {limits['members']}; refusing "
                "to load. Re-export the model (or raise KERASIO_MAX_ARCHIVE_MEMBERS for a file you trust). "
                f"Received: {len(members)} members"
            )
        for info in members:
            name = info.filename
            if name.startswith("/") or ".." in Path(name).parts:
                raise UnsafeArtifactError(f"{path}: archive member {name!r} escapes the archive; refusing to load. "
                                          f"Re-export the model. Received: member {name!r}")
            if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_RATIO and info.file_size > 1 << 20:
                raise UnsafeArtifactError(
                    f"{path}: member {name!r} expands {info.file_size // max(info.compress_size, 1)}x "
                    "(a zip bomb?); refusing to load. Re-export the model. "
                    f"Received: {info.compress_size} bytes expanding to {info.file_size}"
                )
        declared = sum(info.file_size for info in members)
        compressed = max(path.stat().st_size, 1)
        if declared > limits["bytes"] or declared > limits["ratio"] * compressed + (1 << 20):
            raise UnsafeArtifactError(
                f"{path}: the archive expands to {declared} bytes from {compressed} ({declared // compressed}x; "
                f"limits: {limits['ratio']}x and {limits['bytes']} bytes); refusing to load before anything is "
                "extracted. Re-export the model (or raise KERASIO_MAX_ARCHIVE_RATIO / KERASIO_MAX_ARCHIVE_BYTES "
                f"for a file you trust). Received: {len(members)} members, {declared} bytes uncompressed"
            )
        if "config.json" not in archive.namelist():
            raise ArtifactError(f"{path}: .keras archive has no config.json; it is not a Keras v3 model. Re-export it "
                                f"with model.save('model.keras'). Received: members {archive.namelist()[:10]}")
        try:
            return json.loads(archive.read("config.json"))
        except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{path}: config.json is unreadable; re-export the model. Received: {exc}") from None


def _objects(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "class_name" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def audit_config(config: dict[str, Any], path: Path) -> list[str]:
    """Check every serialized object against the allow-list; return custom class names.

    Raises:
        UnsafeArtifactError: for a ``Lambda`` layer or a class that is neither
            Keras's own nor registered in this process.
    """
    import keras

    custom = []
    for obj in _objects(config):
        class_name = obj.get("class_name")
        module = obj.get("module") or ""
        registered = obj.get("registered_name")
        if class_name in ("Lambda", "__lambda__") or (module == "builtins" and class_name == "function"):
            raise UnsafeArtifactError(
                f"{path}: the model contains a {class_name} object, which carries Python bytecode and "
                "would run on load. kerasio refuses it; replace the Lambda by a registered custom layer. "
                f"Received: class_name={class_name!r}"
            )
        if not isinstance(class_name, str) or (not module and registered is None):
            continue  # plain config values such as {"class_name": "__tensor__"}
        if module.startswith(_KERAS_MODULES) or module in ("builtins", "numpy"):
            continue
        name = registered or class_name
        if keras.saving.get_registered_object(name) is None:
            raise UnsafeArtifactError(
                f"{path}: custom class {name!r} (module {module!r}) is not registered in this process. "
                "Decorate it with @keras.saving.register_keras_serializable() and import its module "
                f"before loading (CLI: --import MODULE). Received: registered_name={name!r}"
            )
        custom.append(name)
    return custom


def audit_keras_file(path: Path) -> list[str]:
    """Audit a ``.keras`` file; return the custom classes it uses."""
    return audit_config(read_keras_config(path), path)


# Ops that touch the file system or run Python when a SavedModel's graph executes.
# Keras never emits them in a classifier's forward pass; the saver's own
# SaveV2/RestoreV2 are left alone (TF's loader needs them to restore variables).
UNSAFE_TF_OPS = frozenset({
    "WriteFile", "ReadFile", "MatchingFiles", "DeleteFile", "ImmutableConst",
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "CreateSummaryFileWriter", "WriteSummary", "WriteRawProtoSummary", "WriteScalarSummary",
})


def read_saved_model_proto(path: Path):
    """Parse ``<path>/saved_model.pb`` into a ``SavedModel`` proto, without building any graph."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ArtifactError(f"{path / 'saved_model.pb'}: not a readable SavedModel proto; re-export it. "
                            f"Received: {str(exc)[:200]}") from None
    return proto


def audit_saved_model(path: Path) -> set[str]:
    """Read ``saved_model.pb`` as a proto and refuse graphs with file-system or Python ops.

    Returns the set of op types used. Runs before ``tf.saved_model.load``.
    """
    proto = read_saved_model_proto(path)
    ops: set[str] = set()
    for graph in proto.meta_graphs:
        ops |= {node.op for node in graph.graph_def.node}
        for fn in graph.graph_def.library.function:
            ops |= {node.op for node in fn.node_def}
            for node in fn.node_def:
                stream = node.attr.get("output_stream")
                if node.op == "PrintV2" and stream is not None and stream.s.startswith(b"file://"):
                    raise UnsafeArtifactError(f"{path}: the graph prints to a file; refusing to load. Re-export it "
                                              f"without file output. Received: {stream.s.decode()[:200]}")
    bad = sorted(ops & UNSAFE_TF_OPS)
    if bad:
        raise UnsafeArtifactError(
            f"{path}: the SavedModel's graph uses {', '.join(bad)}, which touch files or run Python when served; "
            "a Keras model's forward pass never needs them. Refusing to load it; re-export the model. "
            f"Received: ops {bad}"
        )
    return ops
