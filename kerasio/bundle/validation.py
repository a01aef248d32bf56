"""Validate a manifest (plain JSON from a possibly hostile bundle) before anything uses it.

Every field is checked for its type, required fields for presence, and the
whole document for size and nesting depth; a violation is an
:class:`~kerasio.errors.ArtifactError` that names the field. Fields this
version does not know (a newer kerasio wrote them) are ignored with one
:class:`~kerasio.errors.ManifestWarning`. Facts that must agree (class names and
the classifier's output width, feature names and the input width) are
cross-checked, so that a lying manifest cannot reach an ``IndexError`` later.
"""
from __future__ import annotations

import contextvars
import re
import warnings
from typing import Any, Callable, Mapping

from kerasio.bundle.bounded import MAX_DEPTH, check_depth
from kerasio.errors import ArtifactError, ManifestWarning
from kerasio.present.text import printable
from kerasio.spec.iospec import DTYPES, STRUCTURES
from kerasio.spec.task import TASKS

__all__ = ["validate_manifest", "check_depth", "MAX_MANIFEST_BYTES", "MAX_DEPTH", "MAX_STRING", "printable"]

MAX_MANIFEST_BYTES = 64 << 20  # a manifest with a 10,000-epoch trace is a few MB
# Bounds on what a manifest may hold, far above anything kerasio writes and far below what would make a reader
# (inspect's tables, verify's loop) take long: every string, every name, every list.
MAX_STRING = 64 << 10  # a skip reason, an observation, an error text
MAX_NAME = 1024  # an input, output, class, feature, layer or format name
MAX_PATH = 4096
MAX_SPECS = 1024  # inputs or outputs
MAX_ITEMS = 1_000_000  # class names, trace epochs, layer names, files of a directory artifact
MAX_ARTIFACTS = 64
MAX_DIM = (1 << 31) - 1
MAX_RANK = 32
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Check = Callable[[Any, str], None]


def _fail(field: str, want: str, value: Any) -> ArtifactError:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ArtifactError(f"kerasio.json: field {field!r} must be {want}; the manifest is malformed or was edited. "
                         f"Re-export the bundle. Received: {printable(shown)}")


def _is(kind: type | tuple[type, ...], want: str) -> Check:
    def check(value: Any, field: str) -> None:
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise _fail(field, want, value)
        if not isinstance(value, kind):
            raise _fail(field, want, value)
    return check


def _text(limit: int, want: str = "a string") -> Check:
    def check(value: Any, field: str) -> None:
        if not isinstance(value, str):
            raise _fail(field, want, value)
        if len(value) > limit:
            raise _fail(field, f"{want} of at most {limit} characters", f"{len(value)} characters")
    return check


STR, NAME = _text(MAX_STRING), _text(MAX_NAME, "a name")
INT, BOOL = _is(int, "an integer"), _is(bool, "true or false")
NUMBER, DICT, LIST = _is((int, float), "a number"), _is(dict, "an object"), _is(list, "a list")


def _optional(check: Check) -> Check:
    def inner(value: Any, field: str) -> None:
        if value is not None:
            check(value, field)
    return inner


def _list_of(check: Check, limit: int = MAX_ITEMS) -> Check:
    def inner(value: Any, field: str) -> None:
        LIST(value, field)
        if len(value) > limit:
            raise _fail(field, f"a list of at most {limit} items", f"{len(value)} items")
        for i, item in enumerate(value):
            check(item, f"{field}[{i}]")
    return inner


def _map_of(check: Check, limit: int = MAX_ITEMS) -> Check:
    def inner(value: Any, field: str) -> None:
        DICT(value, field)
        if len(value) > limit:
            raise _fail(field, f"an object of at most {limit} entries", f"{len(value)} entries")
        for key, item in value.items():
            if len(key) > MAX_PATH:
                raise _fail(field, f"an object whose keys have at most {MAX_PATH} characters", f"{len(key)} characters")
            check(item, f"{field}.{key}")
    return inner


def _one_of(options: tuple[str, ...]) -> Check:
    def inner(value: Any, field: str) -> None:
        if value not in options:
            raise _fail(field, f"one of {', '.join(options)}", value)
    return inner


def _sha256(value: Any, field: str) -> None:
    if not isinstance(value, str) or not _HEX64.match(value):
        raise _fail(field, "a sha256 (64 lowercase hex digits)", value)


def _dim(value: Any, field: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DIM):
        raise _fail(field, f"a dimension (an integer from 0 to {MAX_DIM}, or null)", value)


def _path(value: Any, field: str) -> None:
    """A relative path as kerasio writes it: no control characters (a newline, an escape), bounded length."""
    STR(value, field)
    if len(value) > MAX_PATH or _CONTROL.search(value):
        raise _fail(field, f"a path of at most {MAX_PATH} characters without control characters", value)
    if any(len(part.encode("utf-8", "surrogatepass")) > 255 for part in value.split("/")):
        raise _fail(field, "a path whose every component has at most 255 bytes (the file system's limit)",
                    value)


def _number_or_null(value: Any, field: str) -> None:
    if value is not None:
        NUMBER(value, field)


def _check_fields(value: Mapping[str, Any], fields: Mapping[str, Check], required: tuple[str, ...],
                  prefix: str) -> None:
    for name in required:
        if name not in value:
            raise ArtifactError(f"kerasio.json: required field {prefix + name!r} is missing; the manifest is "
                                f"malformed. Re-export the bundle. Received: keys {sorted(value)[:20]}")
    for name, check in fields.items():
        if name in value:
            check(value[name], prefix + name)
    unknown = _UNKNOWN.get()
    if unknown is not None:
        unknown.extend(prefix + str(name) for name in value if name not in fields)


def _object(fields: Mapping[str, Check], required: tuple[str, ...] = ()) -> Check:
    def inner(value: Any, field: str) -> None:
        DICT(value, field)
        _check_fields(value, fields, required, f"{field}.")
    return inner


_SPEC = _object({"name": NAME, "dtype": _one_of(DTYPES), "shape": _list_of(_dim, MAX_RANK),
                 "activation": _optional(NAME), "probabilities": BOOL}, required=("name", "dtype", "shape"))
_SIGNATURE = _object({
    "inputs": _list_of(_SPEC, MAX_SPECS), "outputs": _list_of(_SPEC, MAX_SPECS), "input_structure": _one_of(STRUCTURES),
    "output_structure": _one_of(STRUCTURES), "feature_names": _optional(_list_of(NAME)),
    "model_kind": NAME, "compute_dtype": _one_of(DTYPES), "layers": _list_of(NAME), "quantization": STR,
}, required=("inputs", "outputs"))
_TASK = _object({"kind": _one_of(tuple(t for t in TASKS if t != "auto")), "output": _optional(NAME),
                 "class_names": _list_of(NAME), "binary": BOOL})
_ENTRY = _object({"path": _path, "sha256": _sha256, "size": INT}, required=("path", "sha256"))
_ARTIFACT = _object({"format": NAME, "path": _path, "size": INT, "sha256": _sha256,
                     "files": _optional(_map_of(_sha256)), "info": DICT},
                    required=("format", "path", "size", "sha256"))
_TRACE = _object({"epoch": _number_or_null, "loss": _number_or_null, "accuracy": _number_or_null,
                  "val_loss": _number_or_null, "val_accuracy": _number_or_null, "learning_rate": _number_or_null,
                  "seconds": _number_or_null, "observation": _optional(STR)})
_SWEEP_SHAPE = _object({"name": STR, "shapes": _map_of(_list_of(_dim, MAX_RANK), MAX_SPECS), "refused": STR},
                       required=("name",))
_SYNTHETIC = _object({"seed": INT, "rows": INT, "length": INT, "inputs": _map_of(STR, MAX_SPECS), "one_class": STR})
_REFERENCE = _object({"rows": INT, "inputs": _ENTRY, "outputs": _ENTRY, "outputs_1row": _ENTRY,
                      "sweep_inputs": _ENTRY, "sweep_outputs": _ENTRY, "sweep": _list_of(_SWEEP_SHAPE, 64),
                      "labels": _ENTRY,
                      "synthetic": _SYNTHETIC},
                     required=("inputs", "outputs", "outputs_1row"))
FIELDS: dict[str, Check] = {
    "schema_version": INT, "created_utc": STR, "versions": _map_of(STR), "backend": STR, "device": STR,
    "device_name": STR, "cpu_features": NAME, "signature": _SIGNATURE, "task": _TASK,
    "artifacts": _list_of(_ARTIFACT, MAX_ARTIFACTS), "skipped": _map_of(STR, MAX_ARTIFACTS), "label": NAME,
    "trace": _list_of(_TRACE), "metrics": _map_of(NUMBER), "training": DICT, "reference": _REFERENCE,
    "custom_objects": _list_of(DICT, 10_000), "attachments": _list_of(_ENTRY, 256), "packages": _map_of(STR, 64),
}
REQUIRED = ("schema_version", "signature", "artifacts", "reference")
# kerasio 0.1 (schema 1) wrote these instead of signature/task; they are translated after this check.
FIELDS_1 = {**FIELDS, "feature_names": _list_of(STR), "class_names": _list_of(STR), "input": DICT, "outputs": DICT}
REQUIRED_1 = ("schema_version", "feature_names", "class_names", "artifacts", "reference")


# Unknown field names found by the running validation (a newer kerasio's additions, anywhere in the manifest).
_UNKNOWN: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("kerasio_unknown_fields", default=None)


def validate_manifest(data: Mapping[str, Any], *, schema: int) -> None:
    """Check every known field's type and the required ones' presence; warn once about unknown fields."""
    fields, required = (FIELDS_1, REQUIRED_1) if schema == 1 else (FIELDS, REQUIRED)
    found: list[str] = []
    token = _UNKNOWN.set(found)
    try:
        _check_fields(data, fields, required, "")
    finally:
        _UNKNOWN.reset(token)
    unknown = sorted(set(found))
    if unknown:
        warnings.warn(f"kerasio.json has fields this kerasio does not know, ignored: {printable(str(unknown))[:200]} "
                      "(written by a newer kerasio?)", ManifestWarning, stacklevel=4)
    if schema != 1:
        _cross_check(data)


def _cross_check(data: Mapping[str, Any]) -> None:
    """Facts that must agree, so that later code can index by them."""
    formats = [a["format"] for a in data.get("artifacts", [])]
    if len(set(formats)) != len(formats):
        twice = sorted({f for f in formats if formats.count(f) > 1})
        raise _fail("artifacts", "a list with one entry per format", f"{twice[0]!r} listed {formats.count(twice[0])} times")
    iospec, task = data["signature"], data.get("task") or {}
    if not iospec["inputs"] or not iospec["outputs"]:
        raise _fail("signature", "a signature with at least one input and one output", iospec)
    outputs = {spec["name"]: spec for spec in iospec["outputs"]}
    names = iospec.get("feature_names")
    if names is not None:
        first = iospec["inputs"][0]
        width = first["shape"][1] if len(iospec["inputs"]) == 1 and len(first["shape"]) == 2 else None
        if width is None or len(names) != width:
            raise _fail("signature.feature_names", f"one name per column of the input ({width})", names)
    if task.get("kind") in ("classification", "regression"):
        output = task.get("output")
        if output not in outputs:
            raise _fail("task.output", f"one of the signature's outputs {sorted(outputs)}", output)
        if task["kind"] == "classification":
            shape = outputs[output]["shape"]
            classes = 2 if task.get("binary") else (shape[-1] if len(shape) >= 2 else None)
            if len(task.get("class_names", [])) != classes:
                raise _fail("task.class_names", f"one name per class of output {output!r} ({classes})",
                            task.get("class_names"))


