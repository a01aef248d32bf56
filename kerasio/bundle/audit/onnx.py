"""Audit an ONNX model before onnxruntime sees it: what the session will build and run.

* No tensor anywhere (initializers, sparse initializers, ``Constant`` values
  and other attributes, ``If``/``Loop``/``Scan`` bodies, local functions) may
  read external data, except an initializer of a graph kerasio wrote with its
  weights beside it (an ``onnx/`` directory artifact, which a hash covers whole,
  and of which a checked copy holds only the files the manifest lists): there,
  its location must be a plain file name in that directory, a regular file (no
  link), and its ``offset`` and ``length`` must lie inside the file and hold
  exactly the bytes the tensor's shape declares.
* Every node's op must be a standard one (domains ``ai.onnx`` and
  ``ai.onnx.ml``, known to the ``onnx`` package's schemas) or a function the
  model defines; custom domains, which load native kernels, are refused.
  Local functions may not call themselves.
* Sizes are bounded before anything is allocated: every initializer holds the
  data its shape declares (a sparse initializer is densified by onnxruntime:
  its dense size is bounded); a ``ConstantOfShape``, ``Expand``, ``Tile``,
  ``Range`` or random op whose shape is a constant may not ask for more than
  the artifact's size can justify; a ``Loop`` with a constant trip count runs
  at most ``MAX_TRIPS`` times; the graph has at most ``MAX_NODES`` nodes and
  ``MAX_INITIALIZERS`` initializers, nested at most ``MAX_NESTING`` deep.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from kerasio.errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_onnx", "read_onnx", "DOMAINS", "MAX_NODES", "MAX_INITIALIZERS"]

DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
MAX_NODES = 1_000_000
MAX_INITIALIZERS = 100_000
MAX_NESTING = 32
MAX_TRIPS = 100_000_000
MAX_ALLOCATION = 4 << 30  # or 16x the artifact's size, whichever is larger
_ITEMSIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 14: 8, 15: 16, 16: 2,
             17: 1, 18: 1, 19: 1, 20: 1, 21: 1, 22: 1, 23: 1}
_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")


def read_onnx(path: Path) -> Any:
    """The model proto, without external data; a clear error for anything protobuf cannot parse."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, RecursionError and others for garbage
        raise ArtifactError(f"{path}: not a readable ONNX model; re-export it. Received: "
                            f"{type(exc).__name__}: {str(exc)[:200]}") from None


def audit_onnx(path: Path, *, external: bool = False) -> Any:
    """Refuse what the rules above forbid; return the parsed model (its external data not read).

    ``external``: the graph is the ``model.onnx`` of a directory artifact, whose initializers may keep their
    bytes in files beside it (checked as above); anywhere else, external data is refused.

    Raises:
        UnsafeArtifactError: naming the node, tensor or function and why.
    """
    import onnx

    model = read_onnx(path)
    allocation = max(MAX_ALLOCATION, 16 * path.stat().st_size)
    functions = {(f.domain, f.name): f for f in model.functions}
    _no_recursive_functions(functions, path)
    nodes = initializers = 0
    graphs = [(model.graph, "graph", 0)] + [(f, f"function {f.name!r}", 0) for f in model.functions]
    while graphs:
        graph, scope, depth = graphs.pop()
        if depth > MAX_NESTING:
            raise UnsafeArtifactError(f"{path}: {scope} nests subgraphs more than {MAX_NESTING} deep; refusing to "
                                      f"load. Re-export it. Received: depth > {MAX_NESTING}")
        tensors = list(getattr(graph, "initializer", []))
        initializers += len(tensors) + len(getattr(graph, "sparse_initializer", []))
        nodes += len(graph.node)
        if nodes > MAX_NODES or initializers > MAX_INITIALIZERS:
            raise UnsafeArtifactError(
                f"{path}: the model has more than {MAX_NODES:,} nodes or {MAX_INITIALIZERS:,} initializers; "
                f"onnxruntime would take very long to build it. Refusing to load. Received: {nodes:,} nodes, "
                f"{initializers:,} initializers")
        for tensor in tensors:  # only the main graph's initializers may keep their bytes beside it
            _check_tensor(onnx, tensor, f"{scope}: initializer {tensor.name[:120]!r}", path,
                          external=external and depth == 0 and scope == "graph")
        for sparse in getattr(graph, "sparse_initializer", []):
            for part in (sparse.values, sparse.indices):
                _external(onnx, part, f"{scope}: sparse initializer {part.name[:120]!r}", path)
            dense = int(np.prod(list(sparse.dims), dtype=np.float64)) * _ITEMSIZE.get(sparse.values.data_type, 8)
            if dense > allocation:
                raise UnsafeArtifactError(
                    f"{path}: {scope}: sparse initializer {sparse.values.name[:120]!r} is {dense:,.0f} bytes once "
                    f"densified (shape {list(sparse.dims)[:8]}); onnxruntime would allocate it at load. Refusing to "
                    f"load. Received: dims {list(sparse.dims)[:8]}")
        for value in [*getattr(graph, "input", []), *getattr(graph, "output", []), *getattr(graph, "value_info", [])]:
            _check_declared(value, scope, path, allocation)
        constants = {t.name: t for t in tensors}
        for node in graph.node:
            where = f"{scope}: node {(node.name[:120] or node.op_type)!r}"
            _check_op(onnx, node, functions, where, path)
            for attr in node.attribute:
                for tensor in [attr.t, *attr.tensors] if attr.HasField("t") or attr.tensors else []:
                    _check_tensor(onnx, tensor, f"{where} attribute {attr.name!r}", path)
                    if node.op_type == "Constant":
                        constants[node.output[0] if node.output else ""] = tensor
                for sub in [attr.g, *attr.graphs] if attr.HasField("g") or attr.graphs else []:
                    graphs.append((sub, f"{where} attribute {attr.name!r} subgraph", depth + 1))
            _check_allocation(node, constants, where, path, allocation)
    return model


def _external(onnx: Any, tensor: Any, where: str, path: Path, allowed: bool = False) -> int | None:
    """None for a tensor whose bytes are in the proto; the bytes an allowed external tensor reads (checked)."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    keys = {e.key: e.value for e in tensor.external_data}
    location = keys.get("location", "?")
    if not allowed:
        raise UnsafeArtifactError(
            f"{path}: {where} reads external data from {location[:200]!r}, which no hash covers; refusing to load. "
            f"Re-export it without external data. Received: location={location[:200]!r}")
    target = path.parent / location
    plain = location not in ("", ".", "..") and "/" not in location and "\\" not in location and \
        not location.startswith(".") and location != path.name
    if not plain or target.is_symlink() or not target.is_file():
        raise UnsafeArtifactError(
            f"{path}: {where} reads external data from {location[:200]!r}: a graph's external data must be a regular "
            "file beside it in its own directory, named plainly (no path, no link); refusing to load. "
            f"Received: location={location[:200]!r}")
    try:
        offset, length = int(keys.get("offset", "0")), int(keys.get("length", "-1"))
    except ValueError:
        offset, length = -1, -1
    size = target.stat().st_size
    if length < 0:
        length = size - offset
    if offset < 0 or length < 0 or offset + length > size:
        raise UnsafeArtifactError(
            f"{path}: {where} reads bytes {offset:,} to {offset + length:,} of {location!r}, a {size:,}-byte file: "
            f"onnxruntime would read past it. Refusing to load. Received: offset={offset}, length={length}")
    return length


def _check_tensor(onnx: Any, tensor: Any, where: str, path: Path, *, external: bool = False) -> None:
    """External data only where allowed; a tensor holds the bytes its shape declares (onnxruntime would read past
    them, or allocate what nothing fills)."""
    outside = _external(onnx, tensor, where, path, external)
    elements = int(np.prod(list(tensor.dims), dtype=np.float64)) if tensor.dims else 1
    itemsize = _ITEMSIZE.get(tensor.data_type, 0)
    if outside is not None:
        held = outside
        if held != elements * itemsize:
            raise UnsafeArtifactError(
                f"{path}: {where} reads {held:,} bytes of external data for a tensor of shape {list(tensor.dims)[:8]} "
                f"({elements * itemsize:,.0f} bytes); refusing to load. Received: length={held}")
    elif tensor.raw_data:
        held = len(tensor.raw_data)
    else:
        held = max((len(getattr(tensor, f)) for f in _TYPED_FIELDS), default=0) * max(itemsize, 1)
    declared = elements * itemsize
    if declared > max(held, 1 << 20) * 2:
        raise UnsafeArtifactError(
            f"{path}: {where} declares {declared:,.0f} bytes (shape {list(tensor.dims)[:8]}) but holds {held:,}; "
            f"onnxruntime would allocate what no data fills. Refusing to load. Re-export it. "
            f"Received: {declared:,.0f} bytes declared")


def _check_declared(value: Any, scope: str, path: Path, allocation: int) -> None:
    shape = value.type.tensor_type.shape if value.type.HasField("tensor_type") else None
    if shape is None:
        return
    fixed = [d.dim_value for d in shape.dim if d.HasField("dim_value")]
    if fixed and float(np.prod(fixed, dtype=np.float64)) * 4 > allocation:
        raise UnsafeArtifactError(
            f"{path}: {scope}: tensor {value.name[:120]!r} declares shape {fixed[:8]}, more than this artifact's size "
            f"can justify; refusing to load. Received: shape {fixed[:8]}")


def _check_op(onnx: Any, node: Any, functions: dict[tuple[str, str], Any], where: str, path: Path) -> None:
    domain = node.domain or ""
    if (domain, node.op_type) in functions:
        return
    if domain not in DOMAINS:
        raise UnsafeArtifactError(
            f"{path}: {where} is in domain {domain[:120]!r}, not a standard ONNX domain (ai.onnx, ai.onnx.ml): a "
            f"custom op, which loads a native kernel kerasio has not audited. Refusing to load. "
            f"Received: domain={domain[:120]!r}")
    if not onnx.defs.has(node.op_type, domain):
        raise UnsafeArtifactError(f"{path}: {where} is not a standard ONNX op; refusing to load. Re-export it. "
                                  f"Received: op_type={node.op_type[:120]!r}")


def _no_recursive_functions(functions: dict[tuple[str, str], Any], path: Path) -> None:
    def callees(fn: Any) -> Iterator[tuple[str, str]]:
        stack = [fn]
        while stack:
            graph = stack.pop()
            for node in graph.node:
                if (node.domain or "", node.op_type) in functions:
                    yield (node.domain or "", node.op_type)
                for attr in node.attribute:
                    stack.extend([attr.g] if attr.HasField("g") else [])
                    stack.extend(attr.graphs)

    edges = {key: set(callees(fn)) for key, fn in functions.items()}
    for start in edges:
        seen, stack = set(), list(edges[start])
        while stack:
            key = stack.pop()
            if key == start:
                raise UnsafeArtifactError(f"{path}: ONNX function {start[1][:120]!r} calls itself; onnxruntime would "
                                          "inline it forever. Refusing to load. Received: a recursive function")
            if key not in seen:
                seen.add(key)
                stack.extend(edges.get(key, ()))


# Ops whose output size is set by a constant input: (input index, how the size follows from its values).
_SHAPE_INPUT = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1}


def _check_allocation(node: Any, constants: dict[str, Any], where: str, path: Path, allocation: int) -> None:
    from onnx import numpy_helper

    def values(index: int) -> np.ndarray | None:
        if index >= len(node.input) or node.input[index] not in constants:
            return None
        try:
            return numpy_helper.to_array(constants[node.input[index]]).reshape(-1)[:64]
        except Exception:
            return None

    count: float | None = None
    if node.op_type in _SHAPE_INPUT:
        found = values(_SHAPE_INPUT[node.op_type])
        if found is not None:
            count = float(np.prod(np.maximum(found.astype(np.float64), 0)))
    elif node.op_type in ("RandomNormal", "RandomUniform", "EyeLike"):
        shape = next((list(a.ints) for a in node.attribute if a.name == "shape"), None)
        if shape:
            count = float(np.prod(np.maximum(np.array(shape, np.float64), 0)))
    elif node.op_type == "Range":
        bounds = [values(i) for i in range(3)]
        if all(b is not None and b.size for b in bounds):
            start, limit, delta = (float(b[0]) for b in bounds)  # type: ignore[index]
            count = abs((limit - start) / delta) if delta else float("inf")
    elif node.op_type == "Loop":
        trips = values(0)
        if trips is not None and trips.size and float(trips[0]) > MAX_TRIPS:
            raise UnsafeArtifactError(f"{path}: {where} runs {float(trips[0]):,.0f} times, over the limit of "
                                      f"{MAX_TRIPS:,}; refusing to load. Received: trip count {float(trips[0]):,.0f}")
    if count is not None and count * 4 > allocation:
        raise UnsafeArtifactError(
            f"{path}: {where} allocates {count:,.0f} elements from constant inputs, more than this artifact's size can "
            f"justify; onnxruntime would exhaust memory. Refusing to load. Received: {count:,.0f} elements")
