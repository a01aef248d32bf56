"""Audit a model file's config as plain JSON before any Keras object is built.

Nothing here imports Keras except to ask which custom classes are registered.
The guards: a ``.keras`` file must be a sane zip (no path tricks, no zip bomb),
its config must name only Keras classes or classes registered in this process,
and ``Lambda`` layers (which carry Python bytecode) are refused.
"""
from __future__ import annotations

import contextlib
import contextvars
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


# The ops a Keras model's inference may execute: tensor math, neural-network kernels, array manipulation,
# control flow, reading its own variables, and the string and lookup ops of text preprocessing. Anything else
# (file I/O, tf.data readers, Python calls, SaveV2, summaries, printing) is refused unless the caller allows it
# by name (--allow-op). Measured on the test zoo's SavedModels and widened to the common TensorFlow kernels.
INFERENCE_OPS = frozenset("""
Abs Acos Acosh Add AddN AddV2 All Any ArgMax ArgMin Asin Asinh Assert Atan Atan2 Atanh AvgPool AvgPool3D
BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd Bincount BroadcastArgs BroadcastTo Bucketize Cast Ceil CheckNumerics
ClipByValue Complex ComplexAbs Concat ConcatV2 Const Conv Conv2D Conv2DBackpropInput Conv3D Conv3DBackpropInputV2 Cos
Cosh Cumprod Cumsum DecodeBase64 DecodeImage DecodeJpeg DecodePng DenseBincount DepthToSpace DepthwiseConv2dNative
Diag DiagPart Digamma Dilation2D Div DivNoNan Einsum Elu EnsureShape Equal Erf Erfc Exp ExpandDims Expm1 Fill Floor
FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd GatherV2 Greater GreaterEqual
HashTableV2 Identity IdentityN If Imag ImageProjectiveTransformV3 InvertPermutation IsFinite IsInf IsNan LRN
LeakyRelu Less LessEqual Lgamma LinSpace Log Log1p LogSoftmax LogicalAnd LogicalNot LogicalOr LookupTableFindV2
LookupTableSizeV2 MatMul MatrixBandPart MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiagV3 Max MaxPool MaxPool3D MaxPoolV2
Maximum Mean Min Minimum MirrorPad Mod Mul MulNoNan MutableHashTableV2 Neg NoOp NonMaxSuppressionV5 NotEqual OneHot
OnesLike Pack Pad PadV2 PartitionedCall Placeholder PlaceholderWithDefault Pow PreventGradient Prod RaggedBincount
RaggedGather RaggedRange RaggedTensorFromVariant RaggedTensorToSparse RaggedTensorToTensor RaggedTensorToVariant
RandomStandardNormal RandomUniform Range Rank ReadVariableOp Real RealDiv Reciprocal ReduceJoin RegexReplace Relu Relu6
Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor ResourceGather Reverse ReverseV2 Roll Round
Rsqrt ScaleAndTranslate ScatterNd Select SelectV2 Selu Shape ShapeN Sigmoid Sign Sin Sinh Size Slice Snapshot Softmax
Softplus Softsign SpaceToDepth SparseBincount SparseSegmentMean SparseSegmentSqrtN SparseSegmentSum SparseToDense
Split SplitV Sqrt Square SquaredDifference Squeeze StatefulPartitionedCall StatelessIf StatelessRandomGetKeyCounter
StatelessRandomGetKeyCounterAlg StatelessRandomNormalV2 StatelessRandomUniformV2 StatelessWhile StaticRegexReplace
StopGradient StridedSlice StringJoin StringLength StringLower StringNGrams StringSplitV2 StringStrip
StringToHashBucketFast StringToHashBucketStrong StringToNumber StringUpper Sub Substr Sum Tan Tanh TensorListElementShape
TensorListFromTensor TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack TensorListReserve
TensorListSetItem TensorListStack TensorScatterAdd TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv TruncateMod
UnicodeDecode UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript Unique UniqueV2 Unpack VarHandleOp VarIsInitializedOp
Where While Xdivy Xlog1py Xlogy ZerosLike
""".split())
# Run once when the SavedModel loads: filling lookup tables (a text model's vocabulary) and variables.
INIT_OPS = INFERENCE_OPS | {"LookupTableImportV2", "InitializeTableV2", "AssignVariableOp"}
# The saver's restore path, run by TensorFlow's loader: it reads the bundle's own variables/ files.
RESTORE_OPS = INIT_OPS | {"RestoreV2"}

_EXTRA_OPS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("kerasio_allowed_ops", default=frozenset())


@contextlib.contextmanager
def allowing_ops(ops: Any) -> Iterator[None]:
    """Accept these op names in SavedModels while inside (the explicit ``--allow-op`` escape hatch)."""
    token = _EXTRA_OPS.set(_EXTRA_OPS.get() | frozenset(ops or ()))
    try:
        yield
    finally:
        _EXTRA_OPS.reset(token)


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
    """Refuse a SavedModel whose executed graph uses any op outside the allowlist; run before TensorFlow loads it.

    Walks, without building anything, every function reachable from every
    serving signature, from the load-time initializer and from the variable
    restore op, nested function bodies (``While``, ``If``, calls) included.
    Functions nothing reaches (the saver's save path) are never executed by a
    load or a call, and are not judged. Returns the op types reached.

    Raises:
        UnsafeArtifactError: naming the op, the function it is in and the path that reaches it.
    """
    proto = read_saved_model_proto(path)
    extra = _EXTRA_OPS.get()
    reached: set[str] = set()
    for meta in proto.meta_graphs:
        graph = meta.graph_def
        library = {f.signature.name: f for f in graph.library.function}
        nodes = {n.name: n for n in graph.node}
        walks = [(f"signature {key!r}", INFERENCE_OPS, [t.name for t in sig.outputs.values()])
                 for key, sig in meta.signature_def.items() if key != "__saved_model_init_op"]
        if "__saved_model_init_op" in meta.signature_def:
            init = meta.signature_def["__saved_model_init_op"]
            walks.append(("load-time initializer", INIT_OPS, [t.name for t in init.outputs.values()]))
        if meta.saver_def.restore_op_name:
            walks.append(("variable restore", RESTORE_OPS, [meta.saver_def.restore_op_name]))
        for where, allowed, roots in walks:
            for op, fn in _ops_reached(roots, nodes, library):
                reached.add(op)
                if op not in allowed and op not in extra:
                    raise UnsafeArtifactError(
                        f"{path}: the SavedModel's {where} runs op {op!r} (in {fn}), which a Keras model's inference "
                        "never needs (file I/O, tf.data readers, Python calls and saving ops are refused); refusing "
                        f"to load it. If you trust this file, allow the op by name (--allow-op {op}). "
                        f"Received: op={op!r}")
        for fn in library.values():
            for node in fn.node_def:
                stream = node.attr.get("output_stream")
                if node.op == "PrintV2" and stream is not None and stream.s.startswith(b"file://"):
                    raise UnsafeArtifactError(f"{path}: the graph prints to a file; refusing to load. Re-export it "
                                              f"without file output. Received: {stream.s.decode()[:200]}")
    return reached


def _ops_reached(roots: list[str], nodes: dict[str, Any], library: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(op, where)`` for every op executed from ``roots`` (tensor or node names of the top-level graph)."""
    def called(attrs: Any) -> list[str]:
        names = []
        for value in attrs.values():
            if value.HasField("func"):
                names.append(value.func.name)
            names.extend(f.name for f in value.list.func)
        return names

    stack: list[tuple[str, str]] = [("node", r.lstrip("^").split(":")[0]) for r in roots]
    seen: set[tuple[str, str]] = set()
    while stack:
        kind, name = item = stack.pop()
        if item in seen:
            continue
        seen.add(item)
        if kind == "node":
            node = nodes.get(name)
            if node is None:
                continue
            if node.op in library:
                stack.append(("fn", node.op))
            else:
                yield node.op, f"the top-level graph node {name!r}"
            stack.extend(("fn", f) for f in called(node.attr))
            stack.extend(("node", i.lstrip("^").split(":")[0]) for i in node.input)
        elif name in library:
            for node_def in library[name].node_def:
                if node_def.op in library:
                    stack.append(("fn", node_def.op))
                else:
                    yield node_def.op, f"function {name!r}"
                stack.extend(("fn", f) for f in called(node_def.attr))
