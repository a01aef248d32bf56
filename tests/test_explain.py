"""verify --explain: the first layer where an artifact leaves the original, named from the artifact's own tensors."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundles import copy_bundle, named
from hostile import rehash

import kerasio
from kerasio.cli import main
from kerasio.spec.divergence import LayerOutput, compare_layers, locate_tensors, read_layers

TAMPERED = "d5"  # a layer in the middle of the residual stack below


def _model():
    """A 20-layer functional model: Dense layers, LayerNormalization, residual Adds and a softmax head, with
    distinct weights in every layer (equal constants would be shared by the ONNX graph)."""
    import keras

    keras.utils.set_random_seed(11)
    x = keras.Input((12,), name="features")
    h = keras.layers.Dense(24, activation="relu", name="d0")(x)
    for i in range(1, 10):
        y = keras.layers.Dense(24, activation="tanh" if i % 2 else "relu", name=f"d{i}")(h)
        if i % 3 == 0:
            y = keras.layers.LayerNormalization(name=f"ln{i}")(y)
        h = keras.layers.Add(name=f"add{i}")([h, y]) if i % 2 == 0 else y
    h = keras.layers.Dense(16, activation="relu", name="head")(keras.layers.Dense(16, name="neck")(h))
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(h)
    return keras.Model(x, out)


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    model = _model()
    assert len(model.layers) == 21  # the input and 20 layers
    x = np.random.default_rng(4).normal(size=(40, 12)).astype(np.float32)
    bundle = tmp_path_factory.mktemp("explain") / "b"
    kerasio.export(model, bundle, reference_inputs=x, formats="keras,savedmodel,onnx,litert", verify=False)
    return model, bundle


def _layer_names(model) -> list[str]:
    return [layer.name for layer in model.layers[1:]]


def _tampered_model(model):
    """The same model with one layer's kernel moved by 0.5: what a compromised conversion would ship."""
    import keras

    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    layer = twin.get_layer(TAMPERED)
    layer.kernel.assign(layer.kernel.numpy() + 0.5)
    return twin


def test_a_tampered_onnx_layer_is_named_with_the_last_layer_that_agrees(deep, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, bundle = deep
    b = copy_bundle(bundle, tmp_path / "b")
    path = named(b, "onnx")
    graph = onnx.load(path)
    kernel = model.get_layer(TAMPERED).kernel.numpy()
    hits = [i for i in graph.graph.initializer if np.array_equal(numpy_helper.to_array(i), kernel)]
    assert len(hits) == 1  # the attacker finds the layer's weights by their values, whatever they are named
    hits[0].CopyFrom(numpy_helper.from_array(kernel + 0.5, hits[0].name))
    onnx.save(graph, path)
    rehash(b, "onnx")

    report = kerasio.verify(b, formats="onnx", options=kerasio.VerifyOptions(explain=True), record=False)
    check = report.checks[0]
    assert not check.passed and check.explanation["method"] == "intermediates"
    assert check.explanation["first_diverging"] == TAMPERED
    assert check.explanation["last_agreeing"] == "add4"  # d5 reads add4's output, which still agrees
    statuses = {v["layer"]: v["status"] for v in check.explanation["layers"]}
    names = _layer_names(model)
    assert all(statuses[n] == "agree" for n in names[:names.index(TAMPERED)])
    assert statuses[TAMPERED] == "diverge" and statuses["probabilities"] == "diverge"
    first = next(v for v in check.explanation["layers"] if v["layer"] == TAMPERED)
    assert first["layer_class"] == "Dense" and first["shape"] == [40, 24] and first["max_abs_diff"] > 1e-2
    assert f"onnx: first diverging layer: '{TAMPERED}' (Dense, output [40, 24])" in report.table()
    assert "last agreeing layer: 'add4' (Add)" in report.table()
    assert f"| {TAMPERED} " in report.explanations() and "| diverge |" in report.explanations()
    assert json.loads(report.to_json())["checks"][0]["explanation"]["first_diverging"] == TAMPERED


def test_a_tampered_savedmodel_layer_is_named_through_the_cli(deep, tmp_path, capsys):
    from kerasio.formats import ExportContext, get_format

    model, bundle = deep
    b = copy_bundle(bundle, tmp_path / "b")
    manifest = kerasio.read_manifest(b)
    target = named(b, "savedmodel")
    shutil.rmtree(target)
    ctx = ExportContext(iospec=manifest.iospec, task=manifest.task, reference_inputs=manifest.reference_arrays(b)[0])
    get_format("savedmodel").save(_tampered_model(model), target, ctx)
    rehash(b, "savedmodel")

    assert main(["verify", str(b), "--format", "savedmodel", "--explain"]) == 1
    out = capsys.readouterr().out
    assert f"savedmodel: first diverging layer: '{TAMPERED}' (Dense, output [40, 24])" in " ".join(out.split())
    assert "Layers of savedmodel (intermediates, on the reference batch, atol 1e-6, rtol 1e-6)" in out
    rows = [line for line in out.splitlines() if line.startswith(f"| {TAMPERED} ")]
    assert len(rows) == 1 and "| diverge |" in rows[0]


def test_explain_on_passing_artifacts_reads_every_layer_and_each_agrees(deep, capsys):
    model, bundle = deep
    report = kerasio.verify(bundle, formats=["litert", "keras"], options=kerasio.VerifyOptions(explain=True),
                            record=False)
    assert report.ok, report.table()
    by_format = {c.format: c.explanation for c in report.checks}
    assert "the .keras file is the original" in by_format["keras"]["summary"]
    litert = by_format["litert"]
    assert litert["first_diverging"] is None and litert["summary"].startswith("every layer read agrees")
    read = [v["layer"] for v in litert["layers"] if v["status"] == "agree"]
    assert {"d0", TAMPERED, "add4", "probabilities"} <= set(read)  # the output layer: the signature's output
    assert main(["verify", str(bundle), "--format", "onnx", "--explain"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert re.search(r"onnx: every layer read agrees within atol 1e-05, rtol 1e-05: (19|20) of 20 layers read "
                     r"\(intermediates\)", out), out  # a linear Dense may be folded into the next op's
    assert "| neck | Dense | 40x16 | unread |" in out or "| neck | Dense | 40x16 | agree |" in out


def test_bisect_exports_prefixes_and_finds_a_converters_error_not_a_tampered_file(deep, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, bundle = deep
    b = copy_bundle(bundle, tmp_path / "b")
    path = named(b, "onnx")
    graph = onnx.load(path)
    kernel = model.get_layer(TAMPERED).kernel.numpy()
    hit = next(i for i in graph.graph.initializer if np.array_equal(numpy_helper.to_array(i), kernel))
    hit.CopyFrom(numpy_helper.from_array(kernel + 0.5, hit.name))
    onnx.save(graph, path)
    rehash(b, "onnx")
    report = kerasio.verify(b, formats="onnx", options=kerasio.VerifyOptions(explain_method="bisect"), record=False)
    explanation = report.checks[0].explanation
    assert explanation["method"] == "bisect" and explanation["first_diverging"] is None
    assert "the whole model exported again in this format agrees: the difference is in the artifact itself" in \
        explanation["summary"]


def test_mixed_float16_in_onnx_against_the_float32_row_names_the_first_layer_both_ways(tmp_path):
    """A real failure kerasio knows: float16 compute held to float32 tolerances. Reading the ONNX graph's tensors
    and bisecting with prefixes exported again name the same first diverging layer."""
    import keras

    keras.config.set_dtype_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(5)
        x = keras.Input((16,), name="features")
        h = x
        for i in range(4):
            h = keras.layers.Dense(32, activation="relu", name=f"h{i}")(h)
        out = keras.layers.Dense(4, activation="softmax", name="probabilities", dtype="float32")(h)
        model = keras.Model(x, out)
    finally:
        keras.config.set_dtype_policy("float32")
    data = np.random.default_rng(6).normal(size=(64, 16)).astype(np.float32)
    bundle = tmp_path / "b"
    kerasio.export(model, bundle, reference_inputs=data, formats="keras,onnx", verify=False)
    tight = kerasio.VerifyOptions(atol=1e-7, rtol=0)
    read = kerasio.verify(bundle, formats="onnx", options=tight, record=False).checks[0]
    assert not read.passed and read.explanation["method"] == "intermediates"
    first = read.explanation["first_diverging"]
    names = [v["layer"] for v in read.explanation["layers"]]
    assert first in names and all(v["status"] == "agree" for v in read.explanation["layers"][:names.index(first)])
    bisected = kerasio.verify(bundle, formats="onnx", options=kerasio.VerifyOptions(
        atol=1e-7, rtol=0, explain_method="bisect"), record=False).checks[0]
    assert bisected.explanation["method"] == "bisect" and bisected.explanation["first_diverging"] == first


def test_tensors_are_found_by_the_op_of_the_original_trace_and_a_fused_tensor_counts_for_its_last_layer():
    ops = {"dense": "functional_1/dense_1/Relu", "bn": "functional_1/bn_1/batchnorm/add_1",
           "dense_1": "functional_1/dense_1_2/Relu", "out": "functional_1/out_1/Softmax"}
    names = ["StatefulPartitionedCall/functional_1/dense_1/Relu",  # the SavedModel nests the graph
             "functional_1/bn_1/batchnorm/mul_1;functional_1/bn_1/batchnorm/add_1;functional_1/dense_1_2/MatMul;"
             "functional_1/dense_1_2/Relu",  # LiteRT fused bn into dense_1: the value is dense_1's
             "functional_1/dense_1_2/Relu:0", "functional_1/out_1/Softmax__12", "functional_1/dense_1/MatMul"]
    found = locate_tensors(ops, names)
    assert found == {"dense": [names[0]], "dense_1": [names[1], names[2]]}  # not dense's MatMul, not Softmax__12
    layers = [LayerOutput(k, "Dense", np.ones((2, 3), np.float32), op) for k, op in ops.items()]
    fetched = {names[0]: np.ones((2, 3)), names[1]: np.ones((3, 3)), names[2]: np.ones((2, 3))}
    values, where = read_layers(layers, names, lambda wanted: {n: fetched[n] for n in wanted if n in fetched})
    assert where == {"dense": names[0], "dense_1": names[2]}  # a folded weight has the name, not the shape
    result = compare_layers(layers, {**values, "dense": np.full((2, 3), 1.5)}, fmt="litert", method="intermediates",
                            inputs="reference batch", atol=1e-6, rtol=0)
    assert [v.status for v in result.layers] == ["diverge", "unread", "agree", "unread"]
    assert result.first_diverging.layer == "dense" and result.last_agreeing is None
    assert "no earlier layer agrees" in result.summary()


def test_a_subclassed_models_top_level_layers_are_recorded_in_the_order_they_run():
    import keras

    from kerasio.formats._keras_common import layer_outputs
    from kerasio.spec.iospec import derive_iospec

    class Twice(keras.Model):
        def __init__(self):
            super().__init__()
            self.second = keras.layers.Dense(2, name="second")
            self.first = keras.layers.Dense(3, name="first")

        def call(self, x):
            return self.second(keras.ops.relu(self.first(x)))

    model = Twice()
    iospec = derive_iospec(model, np.ones((4, 5), np.float32))
    x = {iospec.input_names[0]: np.ones((4, 5), np.float32)}
    recorded = layer_outputs(model, iospec, x)
    assert [(r.key, r.value.shape) for r in recorded] == [("first", (4, 3)), ("second", (4, 2))]
    assert "call" not in vars(model.first)  # the recording wrappers are gone


RUN_WITHOUT_KERASIO = ("import runpy, sys\n"
                       "try:\n    runpy.run_path('reproduce.py', run_name='__main__')\n"
                       "except SystemExit as exc:\n    code = exc.code\n"
                       "print('kerasio imported' if any(m.split('.')[0] == 'kerasio' for m in sys.modules) "
                       "else 'kerasio not imported')\nsys.exit(code)\n")


def _reproduce(kit: Path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_KERASIO], cwd=kit, capture_output=True, text=True,
                          timeout=300)


def test_a_failing_check_writes_a_kit_that_reproduces_it_without_kerasio(deep, tmp_path):
    import onnx
    from onnx import numpy_helper

    model, bundle = deep
    b = copy_bundle(bundle, tmp_path / "b")
    path = named(b, "onnx")
    graph = onnx.load(path)
    kernel = model.get_layer(TAMPERED).kernel.numpy()
    hit = next(i for i in graph.graph.initializer if np.array_equal(numpy_helper.to_array(i), kernel))
    hit.CopyFrom(numpy_helper.from_array(kernel + 0.5, hit.name))
    onnx.save(graph, path)
    rehash(b, "onnx")
    report = kerasio.verify(b, formats="onnx")  # recorded: the kit goes next to verification.json
    check = report.checks[0]
    kit = b / "repro" / "onnx-cpu"
    assert check.repro == str(kit) and (b / "verification.json").is_file()
    assert sorted(p.name for p in kit.iterdir()) == ["actual.npz", "artifact", "check.json", "expected.npz",
                                                     "inputs.npz", "reproduce.py"]
    assert (kit / "artifact" / "model.onnx").read_bytes() == path.read_bytes()
    assert json.loads((kit / "check.json").read_text())["explanation"]["first_diverging"] == TAMPERED
    with np.load(kit / "inputs.npz") as f:
        np.testing.assert_array_equal(f["features"], kerasio.read_manifest(b).reference_arrays(b)[0]["features"])
    ran = _reproduce(kit)
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "REPRODUCED: probabilities outside the tolerance" in ran.stdout and "kerasio not imported" in ran.stdout
    said = re.search(r"probabilities: max abs diff (\S+),", ran.stdout)
    output = check.outputs[0]
    assert said and float(said.group(1)) == pytest.approx(output["max_abs_diff"], rel=1e-5)
    assert f"onnx: reproduction kit {kit} (python {kit}/reproduce.py runs it without kerasio)" in \
        report.table(width=1000)


def test_every_formats_script_runs_its_artifact_with_its_runtime_alone(bundle, tmp_path):
    """Each format's own loader code, written into a kit for a passing artifact: every script agrees (exit 0)."""
    import subprocess
    import sys

    from kerasio.repro import write_kit

    manifest = kerasio.read_manifest(bundle)
    x, y = manifest.reference_arrays(bundle)
    formats = [a.format for a in manifest.artifacts]
    assert set(formats) == {"keras", "savedmodel", "h5", "weights", "onnx", "litert", "openvino", "torch", "pickle"}
    kits = {}
    for art in manifest.artifacts:
        check = {"format": art.format, "artifact": art.path, "device": "cpu", "atol": 1e-5, "rtol": 1e-5}
        kits[art.format] = write_kit(tmp_path / "kits", check=check, iospec=manifest.iospec,
                                     artifact=bundle / art.path, shown=bundle / art.path, case="reference batch",
                                     inputs=x, expected=y, actual=None)
    running = {name: subprocess.Popen([sys.executable, "-c", RUN_WITHOUT_KERASIO], cwd=kit, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name, kit in kits.items()}
    for name, proc in running.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name}: {out}{err[-1500:]}"
        assert "not reproduced: every output agrees within the tolerance" in out and "kerasio not imported" in out
