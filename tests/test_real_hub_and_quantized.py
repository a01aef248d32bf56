"""keras_hub models with dict inputs, a transformer block, a masked LSTM and Keras's own quantization.

Besides the shared checks (tests/real_checks.py): keras_hub's classes verify in a fresh process with no --import
(the allowlist), and every skip is held against the library's own route: where kerasio skips a format, Keras's
own ``model.export`` fails or is wrong too.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
import real_zoo
from real_checks import (  # noqa: F401  (the shared tests, collected here for this half of the zoo)
    export_and_verify,
    test_exported_with_every_format_verified_or_skipped_for_its_reason,
    test_inspect_and_cli_predict,
    test_load_run_matches_the_model,
    test_savedmodel_keeps_input_names_and_dtypes,
)

import kerasio

OTHERS = [n for n in real_zoo.names() if n not in real_zoo.APPLICATIONS]


@pytest.fixture(scope="module", params=OTHERS)
def real(request, tmp_path_factory):
    return export_and_verify(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def hub_bundle(tmp_path_factory):
    model, x = real_zoo.build("bert_classifier")
    out = tmp_path_factory.mktemp("hub") / "bundle"
    kerasio.export(model, out, reference_inputs=x, formats="keras,savedmodel")
    return out


def test_keras_hub_is_recorded_and_imported_by_a_fresh_process_without_import(hub_bundle):
    import keras_hub

    manifest = kerasio.read_manifest(hub_bundle)
    assert manifest.packages == {"keras_hub": keras_hub.__version__}
    assert any(c["module"].startswith("keras_hub.") for c in manifest.custom_objects)
    # A new interpreter that has never imported keras_hub, as `kerasio verify` from a shell is: no --import.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.run([sys.executable, "-m", "kerasio", "verify", str(hub_bundle)], capture_output=True,
                         text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"imported for the model's classes (allowlisted): keras_hub {keras_hub.__version__}" in run.stdout
    inspect = subprocess.run([sys.executable, "-m", "kerasio", "inspect", str(hub_bundle)], capture_output=True,
                             text=True, env=env, timeout=120)
    assert f"packages    keras_hub {keras_hub.__version__} (allowlisted" in inspect.stdout


def test_a_package_off_the_allowlist_is_not_imported_on_a_configs_word(tmp_path):
    """A config naming module 'this' (the standard library's Zen, which prints when imported) is refused unread."""
    from kerasio.bundle.audit.keras import audit_config
    from kerasio.bundle.audit.packages import REGISTERING_PACKAGES, named_packages

    assert "this" not in REGISTERING_PACKAGES and "this" not in sys.modules
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Zen", "module": "this", "registered_name": "this>Zen", "config": {}}]}}
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"custom class 'this>Zen' \(module 'this'\) is "
                                                                 r"not registered in this process"):
        audit_config(config, tmp_path / "x.keras")
    assert "this" not in sys.modules
    assert named_packages(["this", "keras_hubx.layers", "os.path"]) == {}
    assert set(named_packages(["keras_hub.src.models.bert.bert_backbone"])) == {"keras_hub"}


def _keras_export(model, path, fmt):
    model.export(str(path), format=fmt, verbose=False)
    return path


# Where Keras's own call raises: what it says.
_KERAS_REFUSES = {("quantized_int8", "litert"): "tfl.fully_connected", ("quantized_float8", "onnx"): "float8",
                  ("quantized_float8", "litert"): "", ("convnext", "h5"): "LayerScale",
                  ("transformer", "h5"): "Attention", ("quantized_float8", "h5"): "Shape mismatch",
                  ("quantized_float8", "openvino"): "Unsupported operation of type: Convert"}


@pytest.mark.parametrize("name, fmt", [("convnext", "onnx"), ("transformer", "onnx"), ("masked_lstm", "litert"),
                                       ("quantized_int8", "litert"), ("quantized_int4", "litert"),
                                       ("quantized_float8", "onnx"), ("quantized_float8", "litert"),
                                       ("convnext", "h5"), ("transformer", "h5"), ("quantized_float8", "h5"),
                                       ("quantized_int8", "openvino"), ("quantized_float8", "openvino")])
def test_every_skip_holds_against_keras_own_export(name, fmt, tmp_path):
    """Where kerasio skips a format, Keras's own call (model.export(format=...), or model.save and load_model for
    .h5) fails, or writes a file its runtime cannot run, or one that computes something else."""
    import keras

    model, x = real_zoo.build(name)
    model(x)  # Keras's exporter wants a model that has been called
    path = tmp_path / f"model.{ {'onnx': 'onnx', 'litert': 'tflite', 'h5': 'h5', 'openvino': 'xml'}[fmt] }"
    try:
        if fmt == "h5":
            model.save(path)
            keras.saving.load_model(path, compile=False)
        else:
            _keras_export(model, path, fmt)
        if fmt == "openvino":  # the runtime compiles what Keras wrote, at f32 as kerasio runs it
            import openvino as ov

            compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except Exception as exc:  # Keras's own call refused
        assert (name, fmt) in _KERAS_REFUSES and _KERAS_REFUSES[name, fmt] in str(exc), exc
        return
    assert (name, fmt) not in _KERAS_REFUSES, f"Keras's own {fmt} route worked for {name}: kerasio must too"
    if fmt == "openvino":
        got = next(iter(compiled(x).values()))
        assert np.max(np.abs(got - np.asarray(model(x)))) > 1e-2  # OpenVINO's int8 path computes other outputs
        return
    if fmt == "onnx":
        import onnxruntime as ort

        with pytest.raises(Exception, match=r"INVALID_GRAPH|NOT_IMPLEMENTED|Could not find an implementation"):
            ort.InferenceSession(str(path))
        return
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner()
    if name == "masked_lstm":
        with pytest.raises(RuntimeError, match=r"Select TensorFlow op\(s\).*not supported by this interpreter"):
            runner(**{next(iter(runner.get_input_details())): x})
        return
    got = next(iter(runner(**{next(iter(runner.get_input_details())): x}).values()))
    assert np.max(np.abs(got - np.asarray(model(x)))) > 1e-2  # LiteRT's int4 unpacking computes other outputs


def test_the_former_false_skip_now_converts(tmp_path):
    """ONNX of an Embedding(mask_zero=True) + LSTM: Keras's route converts it, so kerasio does, and it verifies."""
    model, x = real_zoo.build("masked_lstm")
    out = tmp_path / "b"
    result = kerasio.export(model, out, reference_inputs=x, formats="onnx", verify=True)
    assert result.report.ok and [c.format for c in result.report.checks] == ["onnx"]
    assert result.manifest.artifact("onnx").info["route"] == "frozen"


def test_a_named_format_that_fails_its_round_trip_fails_loudly_and_publishes_nothing(tmp_path):
    """formats named explicitly are not quietly dropped: the export fails naming the cause, the bundle stays."""
    model, x = real_zoo.build("masked_lstm")
    out = tmp_path / "b"
    kerasio.export(model, out, reference_inputs=x, formats="keras")
    before = (out / "kerasio.json").read_bytes()
    with pytest.raises(kerasio.errors.VerificationError,
                       match=r"nothing was published, the bundle is as it was.*model\.h5 \(h5\).*Keras's legacy "
                             r"loader cannot rebuild class 'NotEqual'"):
        kerasio.export(model, out, reference_inputs=x, formats="keras,h5")  # no verify=: the probe still runs
    assert (out / "kerasio.json").read_bytes() == before
    assert [a.format for a in kerasio.read_manifest(out).artifacts] == ["keras"]
    assert kerasio.verify(out, record=False).ok


def test_converter_messages_are_one_line_with_the_full_text_kept():
    from kerasio.present.text import first_error_line

    mlir = ('<unknown>:0: error: loc(callsite(fused["BatchMatMulV3:", "m/MatMul@__inference_f_1"] at '
            'fused["StatefulPartitionedCall:", "S"])): \'tfl.fully_connected\' op operand #0 must be tensor of '
            "32-bit float\n<unknown>:0: note: see current operation: %0 = ...\n" + "more MLIR\n" * 50)
    assert first_error_line(mlir) == "'tfl.fully_connected' op operand #0 must be tensor of 32-bit float"
    assert first_error_line("loc(\"x\"): error: 'tfl.cast' bad\nnotes") == "'tfl.cast' bad"
    assert first_error_line("KeyError: tf.float8_e4m3fn") == "KeyError: tf.float8_e4m3fn"
    assert first_error_line("x" * 500).endswith("...") and len(first_error_line("x" * 500)) == 300
