"""Audit a SavedModel's graph before TensorFlow builds anything from it: judge what the loader can execute.

``tf.saved_model.load`` does not run the ``signature_def`` map: it rebuilds
the object graph and calls *its* functions (the signatures it exposes are the
object graph's), runs every restored resource's ``_create_resource`` and
``_initialize`` functions at load, and restores variables from the checkpoint.
TF Serving runs the saver's restore op and the init op of the top-level
graph. Which of the library's functions a given loader reaches depends on
links a hostile file controls, so the audit does not follow links: it judges
**every function in the library and every node of the top-level graph**.

* Every op must be on the allowlist of what inference needs (tensor math,
  neural-network kernels, array ops, control flow, reading its own variables,
  string and lookup ops for text, the initialisation of tables and variables).
* The saver's ops (``SaveV2``, ``RestoreV2``, ``MergeV2Checkpoints``,
  ``ShardedFilename``) are allowed only in the functions that the saver's own
  save and restore nodes reach, and nowhere else, and only on a prefix that
  the loader feeds (the function's argument: the bundle's ``variables/``),
  never a path written into the graph.
* Every function a node calls must be in the library; no function may call
  itself, directly or through others; calls nest at most ``MAX_CALL_DEPTH``.
* A constant may not declare more data than it holds beyond ``MAX_SPLAT``
  bytes (a "splat" of one value over billions of elements), nor may an op that
  allocates a constant-shaped tensor (``Fill``, random ops, ``BroadcastTo``)
  ask for more than the artifact's size can justify.
* Asset file names must be plain names inside ``assets/``.
* The checkpoint's variables may not declare more bytes than its data files hold.

Errors name the op, the function it is in and why.
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Any, Iterator

from kerasio.errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_saved_model", "read_saved_model_proto", "allowing_ops", "INFERENCE_OPS", "INIT_OPS", "SAVER_OPS",
           "MAX_CALL_DEPTH", "MAX_FUNCTIONS"]

# The ops a Keras model's inference may execute: tensor math, neural-network kernels, array manipulation,
# control flow, reading its own variables, and the string and lookup ops of text preprocessing. Anything else
# (file I/O, tf.data readers, Python calls, SaveV2, summaries, printing) is refused unless the caller allows it
# by name (--allow-op). Measured on the test zoo's SavedModels and widened to the common TensorFlow kernels.
INFERENCE_OPS = frozenset("""
Abs Acos Acosh Add AddN AddV2 All Any ArgMax ArgMin Asin Asinh Assert Atan Atan2 Atanh AvgPool AvgPool3D
BatchMatMul BatchMatMulV2 BatchMatMulV3 BiasAdd Bincount BitwiseAnd BitwiseOr BitwiseXor BroadcastArgs BroadcastTo
Bucketize Cast Ceil CheckNumerics ClipByValue Complex ComplexAbs Concat ConcatV2 Const Conv Conv2D Conv2DBackpropInput
Conv3D Conv3DBackpropInputV2 Cos Cosh Cumprod Cumsum DecodeBase64 DecodeImage DecodeJpeg DecodePng DenseBincount
DepthToSpace DepthwiseConv2dNative Diag DiagPart Digamma Dilation2D Div DivNoNan Einsum Elu EnsureShape Equal Erf Erfc
Exp ExpandDims Expm1 Fill Floor FloorDiv FloorMod FusedBatchNorm FusedBatchNormV2 FusedBatchNormV3 Gather GatherNd
GatherV2 Greater GreaterEqual HashTableV2 Identity IdentityN If Imag ImageProjectiveTransformV3 InvertPermutation
IsFinite IsInf IsNan LRN LeakyRelu LeftShift Less LessEqual Lgamma LinSpace Log Log1p LogSoftmax LogicalAnd LogicalNot
LogicalOr LookupTableFindV2 LookupTableSizeV2 MatMul MatrixBandPart MatrixDiagPartV3 MatrixDiagV3 MatrixSetDiagV3 Max
MaxPool MaxPool3D MaxPoolV2 Maximum Mean Min Minimum MirrorPad Mod Mul MulNoNan MutableHashTableV2 Neg NoOp
NonMaxSuppressionV5 NotEqual OneHot OnesLike Pack Pad PadV2 PartitionedCall Placeholder PlaceholderWithDefault Pow
PreventGradient Prod RaggedBincount RaggedGather RaggedRange RaggedTensorFromVariant RaggedTensorToSparse
RaggedTensorToTensor RaggedTensorToVariant RandomStandardNormal RandomUniform Range Rank ReadVariableOp Real RealDiv
Reciprocal ReduceJoin RegexReplace Relu Relu6 Reshape ResizeArea ResizeBicubic ResizeBilinear ResizeNearestNeighbor
ResourceGather Reverse ReverseV2 RightShift Roll Round Rsqrt ScaleAndTranslate ScatterNd Select SelectV2 Selu Shape
ShapeN Sigmoid Sign Sin Sinh Size Slice Snapshot Softmax Softplus Softsign SpaceToDepth SparseBincount
SparseSegmentMean SparseSegmentSqrtN SparseSegmentSum SparseToDense Split SplitV Sqrt Square SquaredDifference Squeeze
StatefulPartitionedCall StatelessIf StatelessRandomGetKeyCounter StatelessRandomGetKeyCounterAlg
StatelessRandomNormalV2 StatelessRandomUniformV2 StatelessWhile StaticRegexReplace StopGradient StridedSlice
StringJoin StringLength StringLower StringNGrams StringSplitV2 StringStrip StringToHashBucketFast
StringToHashBucketStrong StringToNumber StringUpper Sub Substr Sum Tan Tanh TensorListElementShape TensorListFromTensor
TensorListGetItem TensorListLength TensorListPopBack TensorListPushBack TensorListReserve TensorListSetItem
TensorListStack TensorScatterAdd TensorScatterUpdate Tile TopKV2 Transpose TruncateDiv TruncateMod UnicodeDecode
UnicodeDecodeWithOffsets UnicodeEncode UnicodeScript Unique UniqueV2 Unpack VarHandleOp VarIsInitializedOp Where While
Xdivy Xlog1py Xlogy ZerosLike
""".split())
# Run when the SavedModel loads: creating and filling lookup tables (a text model's vocabulary), assigning variables,
# and the checkpoint functions of restored resources (a table's export and import).
INIT_OPS = INFERENCE_OPS | {"LookupTableImportV2", "LookupTableExportV2", "InitializeTableV2", "AssignVariableOp"}
# The saver's own save and restore functions: they read or write the checkpoint at the prefix the loader feeds.
SAVER_OPS = INIT_OPS | {"RestoreV2", "SaveV2", "MergeV2Checkpoints", "ShardedFilename", "StaticRegexFullMatch",
                        "DisableCopyOnRead"}
_CHECKPOINT_IO = {"RestoreV2": [0], "SaveV2": [0], "MergeV2Checkpoints": [0, 1], "ShardedFilename": [0]}
# On a path to a checkpoint prefix, between the saver function's argument and the op that reads or writes it.
_PREFIX_PATH = {"Identity": [0], "StringJoin": [0], "ShardedFilename": [0], "Select": [1, 2], "SelectV2": [1, 2],
                "Pack": None}  # None: every input
# Ops that allocate a tensor whose shape is their first input (the output's size is known when that is a constant).
_SHAPED = {"Fill", "RandomUniform", "RandomStandardNormal", "StatelessRandomUniformV2", "StatelessRandomNormalV2",
           "BroadcastTo", "TruncatedNormal", "RandomUniformInt", "Empty"}
MAX_CALL_DEPTH = 64
MAX_FUNCTIONS = 100_000
MAX_NODES = 10_000_000
MAX_SPLAT = 64 << 20  # a constant may repeat a few values over at most this many bytes
MAX_ALLOCATION = 4 << 30  # an op with a constant shape may allocate this much, or 16x the artifact's size
_DTYPE_BYTES = {1: 4, 2: 8, 3: 4, 4: 1, 5: 2, 6: 1, 7: 0, 8: 8, 9: 8, 10: 1, 14: 2, 17: 2, 18: 16, 19: 2, 22: 4, 23: 8}

_EXTRA_OPS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("kerasio_allowed_ops", default=frozenset())


@contextlib.contextmanager
def allowing_ops(ops: Any) -> Iterator[None]:
    """Accept these op names in SavedModels while inside (the explicit ``--allow-op`` escape hatch)."""
    token = _EXTRA_OPS.set(_EXTRA_OPS.get() | frozenset(ops or ()))
    try:
        yield
    finally:
        _EXTRA_OPS.reset(token)


def read_saved_model_proto(path: Path) -> Any:
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
    """Refuse a SavedModel whose functions or top-level graph use anything outside the rules above.

    Returns the op types found.

    Raises:
        UnsafeArtifactError: naming the op (or call, constant, asset), where it is and why it is refused.
    """
    proto = read_saved_model_proto(path)
    extra = _EXTRA_OPS.get()
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    allocation = max(MAX_ALLOCATION, 16 * size)
    if len(proto.meta_graphs) > 8:
        raise UnsafeArtifactError(f"{path}: {len(proto.meta_graphs)} meta graphs; a SavedModel has one. Refusing "
                                  f"to load. Received: {len(proto.meta_graphs)}")
    found: set[str] = set()
    for meta in proto.meta_graphs:
        graph = meta.graph_def
        functions = list(graph.library.function)
        if len(functions) > MAX_FUNCTIONS or len(graph.node) + sum(len(f.node_def) for f in functions) > MAX_NODES:
            raise UnsafeArtifactError(f"{path}: the graph has {len(functions)} functions and more than {MAX_NODES} "
                                      f"nodes; no Keras model needs that many. Refusing to load. Received: "
                                      f"{len(functions)} functions")
        library = {f.signature.name: f for f in functions}
        calls = {name: _calls(f.node_def, library, path, f"function {name!r}") for name, f in library.items()}
        _calls(graph.node, library, path, "the top-level graph")
        _no_recursion(calls, path)
        saver_only = _saver_functions(meta, graph, calls, library)
        exposed = _object_graph_functions(meta) & saver_only
        if exposed:
            raise UnsafeArtifactError(
                f"{path}: the object graph exposes the saver's function {sorted(exposed)[0][:120]!r} as a callable; it "
                "reads or writes checkpoint files at a path its caller gives. Refusing to load. Re-export it. "
                f"Received: {sorted(exposed)[0][:120]!r}")
        reached_by = _reached_by(meta, graph, calls)
        for name, fn in library.items():
            allowed = SAVER_OPS if name in saver_only else INIT_OPS
            where = f"{reached_by[name]} runs" if name in reached_by else f"function {name[:120]!r} runs"
            inside = f" (in function {name[:120]!r})" if name in reached_by else ""
            nodes = {n.name: n for n in fn.node_def}
            for node in nodes.values():
                found.add(node.op)
                _judge(node, allowed, extra, path, where, inside, library)
                _bounded(node, path, f"function {name!r}", allocation, nodes)
            if name in saver_only:
                _prefixes_are_fed(fn, path)
        top = {n.name: n for n in graph.node}
        saver_nodes = _saver_nodes(meta, graph)
        for node in graph.node:
            found.add(node.op)
            allowed = SAVER_OPS if node.name in saver_nodes else INIT_OPS
            _judge(node, allowed, extra, path, "top-level graph runs", f" (node {node.name[:120]!r})", library)
            _bounded(node, path, "the top-level graph", allocation, top)
        for asset in meta.asset_file_def:
            name = asset.filename
            if not name or "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
                raise UnsafeArtifactError(f"{path}: asset {name[:200]!r} is not a plain file name inside assets/; "
                                          f"refusing to load (TensorFlow would open it). Re-export it. "
                                          f"Received: {name[:200]!r}")
    _checkpoint_is_backed(path)
    return found


def _calls(nodes: Any, library: dict[str, Any], path: Path, where: str) -> set[str]:
    """The library functions these nodes call; a call to a function that is not in the library is refused."""
    out: set[str] = set()
    for node in nodes:
        if node.op in library:
            out.add(node.op)
        for value in node.attr.values():
            names = ([value.func.name] if value.HasField("func") else []) + [f.name for f in value.list.func]
            for name in names:
                if name not in library:
                    raise UnsafeArtifactError(
                        f"{path}: {where} node {node.name[:120]!r} ({node.op}) calls function {name[:120]!r}, which "
                        "the SavedModel does not define (it would resolve to something kerasio has not audited); "
                        f"refusing to load. Re-export it. Received: function {name[:120]!r}")
                out.add(name)
    return out


def _no_recursion(calls: dict[str, set[str]], path: Path) -> None:
    """No function may reach itself, and calls nest at most MAX_CALL_DEPTH deep (iterative DFS)."""
    depth: dict[str, int] = {}
    for root in calls:
        if root in depth:
            continue
        stack: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(calls[root])))]
        on_path = {root}
        while stack:
            name, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.discard(name)
                depth[name] = 1 + max((depth.get(c, 0) for c in calls[name]), default=0)
                if depth[name] > MAX_CALL_DEPTH:
                    raise UnsafeArtifactError(
                        f"{path}: function {name[:120]!r} nests calls {depth[name]} deep, over the limit of "
                        f"{MAX_CALL_DEPTH}; a Keras model's graph nests a few levels. Refusing to load. "
                        f"Received: depth {depth[name]}")
                continue
            if child in on_path:
                raise UnsafeArtifactError(
                    f"{path}: function {child[:120]!r} calls itself (through {name[:120]!r}); TensorFlow would recurse "
                    f"until it crashed. Refusing to load. Received: a recursive call")
            if child not in depth:
                on_path.add(child)
                stack.append((child, iter(sorted(calls.get(child, ())))))


def _reached_by(meta: Any, graph: Any, calls: dict[str, set[str]]) -> dict[str, str]:
    """For the messages: each function and the first signature (or loader path) that reaches it."""
    nodes = {n.name: n for n in graph.node}
    starts: list[tuple[str, set[str]]] = []
    for key, sig in sorted(meta.signature_def.items()):
        label = "load-time initializer" if key == "__saved_model_init_op" else f"signature {key!r}"
        roots: set[str] = set()
        seen: set[str] = set()
        stack = [t.name.split(":")[0] for t in sig.outputs.values()]
        while stack:
            name = stack.pop().lstrip("^").split(":")[0]
            if name in seen or name not in nodes:
                continue
            seen.add(name)
            node = nodes[name]
            roots.update(v.func.name for v in node.attr.values() if v.HasField("func"))
            stack.extend(node.input)
        starts.append((label, roots))
    objects = meta.object_graph_def.nodes
    index = next((c.node_id for c in objects[0].children if c.local_name == "signatures"), None) if objects else None
    if index is not None and 0 <= index < len(objects):  # the signatures the Python loader exposes
        for child in objects[index].children:
            if not 0 <= child.node_id < len(objects):
                continue
            target = objects[child.node_id]
            if target.WhichOneof("kind") == "bare_concrete_function":
                starts.append((f"signature {child.local_name!r}", {target.bare_concrete_function.concrete_function_name}))
    out: dict[str, str] = {}
    for label, roots in starts:
        stack = list(roots)
        while stack:
            name = stack.pop()
            if name in out or name not in calls:
                continue
            out[name] = label
            stack.extend(calls[name])
    return out


def _object_graph_functions(meta: Any) -> set[str]:
    """The functions the object graph names (what the Python loader restores as callables)."""
    graph = meta.object_graph_def
    names = set(graph.concrete_functions)
    for node in graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
    return names


def _saver_nodes(meta: Any, graph: Any) -> set[str]:
    """The top-level nodes of the saver: its save and restore calls and its filename placeholder."""
    saver = meta.saver_def
    names = {saver.restore_op_name, saver.save_tensor_name, saver.filename_tensor_name}
    return {n.lstrip("^").split(":")[0] for n in names if n}


def _saver_functions(meta: Any, graph: Any, calls: dict[str, set[str]], library: dict[str, Any]) -> set[str]:
    """Functions reached from the saver's own nodes and from nothing else (so saver ops may appear in them)."""
    nodes = {n.name: n for n in graph.node}

    def reach(starts: set[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(starts)
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            seen.add(name)
            stack.extend(calls.get(name, ()))
        return seen

    def called_by(node: Any) -> set[str]:
        out = {node.op} if node.op in library else set()
        for value in node.attr.values():
            if value.HasField("func"):
                out.add(value.func.name)
            out.update(f.name for f in value.list.func)
        return out

    saver_nodes = _saver_nodes(meta, graph)
    from_saver = reach({f for name in saver_nodes if name in nodes for f in called_by(nodes[name])})
    others = reach({f for node in graph.node if node.name not in saver_nodes for f in called_by(node)})
    # A function that no top-level node calls (a restored object's function: a signature, a resource's
    # initializer, a layer's call) is reached by the Python loader through the object graph.
    others |= reach(set(library) - from_saver - {f for fs in calls.values() for f in fs})
    return from_saver - others


def _judge(node: Any, allowed: frozenset[str] | set[str], extra: frozenset[str], path: Path, where: str,
           inside: str, library: dict[str, Any]) -> None:
    op = node.op
    if op in library or op in allowed or op in extra:
        if op == "PrintV2":
            stream = node.attr.get("output_stream")
            if stream is not None and stream.s.startswith(b"file://"):
                raise UnsafeArtifactError(f"{path}: the graph prints to a file; refusing to load. Re-export it "
                                          f"without file output. Received: {stream.s.decode(errors='replace')[:200]}")
        return
    why = ("only the saver's own save and restore functions may run (it reads or writes checkpoint files)"
           if op in SAVER_OPS else
           "a Keras model's inference never needs (file I/O, tf.data readers, Python calls and saving ops are "
           "refused)")
    raise UnsafeArtifactError(
        f"{path}: the SavedModel's {where} op {op[:120]!r}{inside}, which {why}; refusing to load it. If you "
        f"trust this file, allow the op by name (--allow-op {op[:120]}). Received: op={op[:120]!r}")


def _prefixes_are_fed(fn: Any, path: Path) -> None:
    """In a saver function, every checkpoint path must come from the function's argument (what the loader feeds)."""
    args = {a.name for a in fn.signature.input_arg}
    nodes = {n.name: n for n in fn.node_def}
    for node in fn.node_def:
        for index in _CHECKPOINT_IO.get(node.op, []):
            if index < len(node.input) and not _fed(node.input[index], nodes, args, set()):
                raise UnsafeArtifactError(
                    f"{path}: the saver's function {fn.signature.name[:120]!r} runs {node.op} on a path written into "
                    f"the graph (node {node.name[:120]!r}), not on the variables/ prefix the loader gives it: it would "
                    f"read or write a file outside the bundle. Refusing to load. Re-export it. Received: {node.op}")


def _fed(tensor: str, nodes: dict[str, Any], args: set[str], seen: set[str]) -> bool:
    name = tensor.lstrip("^").split(":")[0]
    if name in args:
        return True
    if name in seen or name not in nodes:
        return False
    seen.add(name)
    node = nodes[name]
    through = _PREFIX_PATH.get(node.op, [])
    inputs = [i for i in node.input if not i.startswith("^")]
    picked = inputs if through is None else [inputs[i] for i in through if i < len(inputs)]
    return bool(picked) and all(_fed(i, nodes, args, seen) for i in picked)


def _bounded(node: Any, path: Path, where: str, allocation: int, nodes: dict[str, Any]) -> None:
    """Constants may not splat a few values over more than MAX_SPLAT bytes; constant shapes stay under ``allocation``."""
    if node.op == "Const":
        value = node.attr.get("value")
        if value is None or not value.HasField("tensor"):
            return
        tensor = value.tensor
        declared = _elements(tensor.tensor_shape) * _DTYPE_BYTES.get(tensor.dtype, 8)
        held = len(tensor.tensor_content) or tensor.ByteSize()
        if declared > max(held * 2, MAX_SPLAT):
            raise UnsafeArtifactError(
                f"{path}: constant {node.name[:120]!r} in {where} declares {declared:,} bytes but holds {held:,} (one "
                "value repeated over a huge shape); building it would exhaust memory. Refusing to load. Re-export it. "
                f"Received: {declared:,} bytes declared")
        return
    if node.op in _SHAPED and node.input:
        shape = nodes.get(node.input[0].lstrip("^").split(":")[0])
        if shape is None or shape.op != "Const":
            return  # computed at run time: the worker's memory limit bounds it
        dims = _int_values(shape.attr["value"].tensor)
        count = 1
        for d in dims:
            count *= max(int(d), 0)
        if count * 4 > allocation:
            raise UnsafeArtifactError(
                f"{path}: {node.op} node {node.name[:120]!r} in {where} allocates a tensor of shape {dims[:8]} "
                f"({count:,} elements), more than this artifact's size can justify; refusing to load. Re-export it. "
                f"Received: {count:,} elements")


def _elements(shape: Any) -> int:
    count = 1
    for dim in shape.dim:
        count *= max(int(dim.size), 0)
    return count


def _int_values(tensor: Any) -> list[int]:
    import numpy as np

    if tensor.tensor_content:
        dtype = np.int64 if tensor.dtype == 9 else np.int32
        return [int(v) for v in np.frombuffer(tensor.tensor_content[:8 * 64], dtype=dtype)]
    return [int(v) for v in (list(tensor.int64_val) or list(tensor.int_val))]


def _checkpoint_is_backed(path: Path) -> None:
    """The variables' declared bytes (the checkpoint index) must not exceed what the data files hold."""
    index = path / "variables" / "variables.index"
    if not index.is_file():
        return
    import numpy as np
    import tensorflow as tf

    held = sum(p.stat().st_size for p in (path / "variables").glob("variables.data-*") if p.is_file())
    try:
        reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
        shapes, dtypes = reader.get_variable_to_shape_map(), reader.get_variable_to_dtype_map()
    except Exception as exc:  # TensorFlow's own errors for a corrupt index
        raise ArtifactError(f"{index}: the checkpoint index is unreadable; re-export it. Received: "
                            f"{str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from None
    declared = 0
    for name, shape in shapes.items():
        dtype = dtypes.get(name)
        size = getattr(dtype, "size", 0) if dtype is not None and dtype != tf.string else 0
        declared += int(np.prod(shape, dtype=np.int64)) * int(size)
    if declared > held + (1 << 20):
        raise UnsafeArtifactError(
            f"{path}: the checkpoint's variables declare {declared:,} bytes but its data files hold {held:,}; restoring "
            "them would allocate memory the files do not fill. Refusing to load. Re-export it. "
            f"Received: {declared:,} bytes declared")
