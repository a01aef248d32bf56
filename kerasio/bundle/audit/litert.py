"""Audit a LiteRT (``.tflite``) flatbuffer before the interpreter sees it.

The interpreter trusts the file's indices: an operator naming a tensor past
the end, a signature naming a tensor of another subgraph, or a ``WHILE`` whose
body is its own subgraph makes it read out of bounds or recurse until it
crashes the process (a SIGSEGV, found by an attacker's corpus). So, reading
the flatbuffer with its own schema (no interpreter):

* every operator's code must be a builtin (a custom op, Flex ones included,
  runs a kernel kerasio has not audited);
* every tensor, buffer and subgraph index must be in range, and every
  subgraph a control-flow op names (``WHILE``, ``IF``, ``CALL_ONCE``, the
  StableHLO ops with bodies) must exist and may not reach the subgraph that
  calls it (no recursion);
* buffers lie inside the file, and no tensor declares more elements than the
  artifact's size can justify;
* the walk is bounded: at most ``MAX_VISITS`` objects (a DAG that points the
  same vector at itself a million times cannot make it quadratic).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from kerasio.errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_litert", "MAX_VISITS"]

MAX_VISITS = 5_000_000
MAX_SUBGRAPHS = 10_000
MAX_ALLOCATION = 4 << 30


def _schema() -> Any:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def audit_litert(path: Path) -> None:
    """Refuse what the rules above forbid.

    Raises:
        UnsafeArtifactError: naming the subgraph, operator or index and why.
        ArtifactError: a buffer that is not a LiteRT flatbuffer at all.
    """
    data = path.read_bytes()
    try:
        _Walk(_schema(), data, path).run()
    except (UnsafeArtifactError, ArtifactError):
        raise
    except (struct.error, IndexError, ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise ArtifactError(f"{path}: not a readable LiteRT flatbuffer (an offset points outside the file); "
                            f"re-export it. Received: {type(exc).__name__}: {str(exc)[:160]}") from None


class _Walk:
    def __init__(self, schema: Any, data: bytes, path: Path):
        self.s, self.data, self.path = schema, data, path
        self.visits = 0
        self.allocation = max(MAX_ALLOCATION, 16 * len(data))

    def tick(self, n: int = 1) -> None:
        self.visits += n
        if self.visits > MAX_VISITS:
            raise UnsafeArtifactError(f"{self.path}: the flatbuffer holds more than {MAX_VISITS:,} objects; no model "
                                      f"kerasio exports comes close. Refusing to load. Received: > {MAX_VISITS:,}")

    def refuse(self, what: str) -> UnsafeArtifactError:
        return UnsafeArtifactError(f"{self.path}: {what}; the LiteRT interpreter would read out of bounds or recurse "
                                   f"until it crashed. Refusing to load. Re-export it. Received: {what}")

    def run(self) -> None:
        s = self.s
        if len(self.data) < 8 or not s.Model.ModelBufferHasIdentifier(self.data, 0):
            raise ArtifactError(f"{self.path}: not a LiteRT flatbuffer (no TFL3 identifier); re-export it. "
                                f"Received: {self.data[4:8]!r}")
        model = s.Model.GetRootAs(self.data, 0)
        codes = [self.opcode(model.OperatorCodes(i)) for i in range(self._len(model.OperatorCodesLength()))]
        n_sub = self._len(model.SubgraphsLength())
        if n_sub > MAX_SUBGRAPHS or n_sub == 0:
            raise self.refuse(f"{n_sub} subgraphs")
        n_buf = self._len(model.BuffersLength())
        for i in range(n_buf):
            self.tick()
            buffer = model.Buffers(i)
            offset, size = int(buffer.Offset()), int(buffer.Size())
            if (offset or size) and (offset < 0 or size < 0 or offset + size > len(self.data)):
                raise self.refuse(f"buffer {i} lies outside the file (offset {offset}, size {size})")
        calls: dict[int, set[int]] = {}
        for g in range(n_sub):
            calls[g] = self.subgraph(model.Subgraphs(g), g, codes, n_sub, n_buf)
        self.no_recursion(calls)
        for k in range(self._len(model.SignatureDefsLength())):
            self.tick()
            sig = model.SignatureDefs(k)
            index = int(sig.SubgraphIndex())
            if not 0 <= index < n_sub:
                raise self.refuse(f"signature {k} names subgraph {index} of {n_sub}")
            tensors = model.Subgraphs(index).TensorsLength()
            for maps in ((sig.Inputs, sig.InputsLength()), (sig.Outputs, sig.OutputsLength())):
                for j in range(self._len(maps[1])):
                    self.tick()
                    t = int(maps[0](j).TensorIndex())
                    if not 0 <= t < tensors:
                        raise self.refuse(f"signature {k} names tensor {t} of subgraph {index}, which has {tensors}")

    def _len(self, n: int) -> int:
        n = int(n)
        if n < 0 or n * 4 > len(self.data):
            raise ArtifactError(f"{self.path}: a vector claims {n} entries, more than the file can hold; re-export it. "
                                f"Received: {n} entries")
        return n

    def opcode(self, code: Any) -> int:
        self.tick()
        builtin = max(int(code.BuiltinCode()), int(code.DeprecatedBuiltinCode()))
        if builtin == self.s.BuiltinOperator.CUSTOM:
            name = (code.CustomCode() or b"?").decode("utf-8", "replace")[:80]
            raise UnsafeArtifactError(f"{self.path}: uses custom op {name!r}, which runs a kernel outside LiteRT's "
                                      f"builtins that kerasio has not audited; refusing to load. Received: custom op "
                                      f"{name!r}")
        return builtin

    def subgraph(self, sub: Any, g: int, codes: list[int], n_sub: int, n_buf: int) -> set[int]:
        n_tensors = self._len(sub.TensorsLength())
        for t in range(n_tensors):
            self.tick()
            tensor = sub.Tensors(t)
            if not 0 <= int(tensor.Buffer()) < max(n_buf, 1):
                raise self.refuse(f"tensor {t} of subgraph {g} names buffer {tensor.Buffer()} of {n_buf}")
            count = 1
            for d in range(self._len(tensor.ShapeLength())):
                count *= max(int(tensor.Shape(d)), 0)
            if count * 4 > self.allocation:
                raise UnsafeArtifactError(f"{self.path}: tensor {t} of subgraph {g} declares {count:,} elements, more "
                                          f"than this artifact's size can justify; refusing to load. Received: "
                                          f"{count:,} elements")
        for io, length in ((sub.Inputs, sub.InputsLength()), (sub.Outputs, sub.OutputsLength())):
            for j in range(self._len(length)):
                self.tick()
                if not 0 <= int(io(j)) < n_tensors:
                    raise self.refuse(f"subgraph {g} names tensor {io(j)} of {n_tensors} as its input or output")
        called: set[int] = set()
        for k in range(self._len(sub.OperatorsLength())):
            self.tick()
            op = sub.Operators(k)
            index = int(op.OpcodeIndex())
            if not 0 <= index < len(codes):
                raise self.refuse(f"operator {k} of subgraph {g} names op code {index} of {len(codes)}")
            for io, length in ((op.Inputs, op.InputsLength()), (op.Outputs, op.OutputsLength()),
                               (op.Intermediates, op.IntermediatesLength())):
                for j in range(self._len(length)):
                    self.tick()
                    t = int(io(j))
                    if t != -1 and not 0 <= t < n_tensors:  # -1: an optional input left out
                        raise self.refuse(f"operator {k} of subgraph {g} names tensor {t} of {n_tensors}")
            for target in self.subgraphs_called(op, codes[index]):
                if not 0 <= target < n_sub:
                    raise self.refuse(f"operator {k} of subgraph {g} calls subgraph {target} of {n_sub}")
                called.add(target)
        return called

    def subgraphs_called(self, op: Any, code: int) -> list[int]:
        """The subgraph indices an operator's options name (control flow and StableHLO bodies)."""
        s, B = self.s, self.s.BuiltinOperator
        table: dict[int, tuple[Any, tuple[str, ...], bool]] = {
                 B.WHILE: (s.WhileOptions, ("CondSubgraphIndex", "BodySubgraphIndex"), False),
                 B.IF: (s.IfOptions, ("ThenSubgraphIndex", "ElseSubgraphIndex"), False),
                 B.CALL_ONCE: (s.CallOnceOptions, ("InitSubgraphIndex",), False)}
        hlo: tuple[tuple[str, tuple[str, ...]], ...] = (("STABLEHLO_WHILE", ("CondSubgraphIndex", "BodySubgraphIndex")),
                             ("STABLEHLO_REDUCE", ("BodySubgraphIndex",)),
                             ("STABLEHLO_REDUCE_WINDOW", ("BodySubgraphIndex",)),
                             ("STABLEHLO_SORT", ("ComparatorSubgraphIndex",)),
                             ("STABLEHLO_SCATTER", ("UpdateComputationSubgraphIndex",)),
                             ("STABLEHLO_COMPOSITE", ("DecompositionSubgraphIndex",)),
                             ("STABLEHLO_CASE", ("BranchSubgraphIndices",)))
        for name, names in hlo:
            code_value = getattr(B, name, None)
            cls = getattr(s, {"STABLEHLO_COMPOSITE": "StableHLOCompositeOptions"}.get(
                name, "Stablehlo" + "".join(w.title() for w in name.split("_")[1:]) + "Options"), None)
            if code_value is not None and cls is not None:
                table[code_value] = (cls, names, True)
        if code not in table:
            return []
        cls, fields, second = table[code]
        table_obj = op.BuiltinOptions2() if second else op.BuiltinOptions()
        if table_obj is None:
            if code in (B.WHILE, B.IF, B.CALL_ONCE):
                raise self.refuse(f"a {code} control-flow operator without its options")
            return []
        options = cls()
        options.Init(table_obj.Bytes, table_obj.Pos)
        out = []
        for field in fields:
            if field == "BranchSubgraphIndices":
                out += [int(options.BranchSubgraphIndices(i)) for i in range(self._len(options.BranchSubgraphIndicesLength()))]
            else:
                out.append(int(getattr(options, field)()))
        return out

    def no_recursion(self, calls: dict[int, set[int]]) -> None:
        for start, children in calls.items():
            seen, stack = set(), list(children)
            while stack:
                g = stack.pop()
                self.tick()
                if g == start:
                    raise self.refuse(f"subgraph {start} calls itself (through its control flow)")
                if g not in seen:
                    seen.add(g)
                    stack.extend(calls.get(g, ()))
