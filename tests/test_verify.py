"""Stage 5: every artifact reloaded in a fresh process and compared with the original."""
from __future__ import annotations

import json

import numpy as np
import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.bundle.arrays import save_arrays
from kerasio.bundle.layout import MANIFEST_NAME
from kerasio.bundle.manifest import hash_entry
from kerasio.formats import REGISTRY
from kerasio.spec.tolerances import TOLERANCES, compare_output, markdown_table, tolerance_for
from kerasio.verify import VERIFICATION_FILE


@pytest.fixture(scope="module")
def report(bundle):
    """Fresh-process verification of every format in the session bundle."""
    return kerasio.verify(bundle, trust=True)


def _independent_outputs(fmt: str, path, x):
    """The artifact's outputs computed with its own runtime directly: no kerasio code involved."""
    import pickle

    import keras
    import onnxruntime
    import tensorflow as tf

    if fmt in ("keras", "h5"):
        return keras.saving.load_model(path, compile=False)(x, training=False).numpy()
    if fmt == "weights":
        model = keras.models.model_from_json((path / "architecture.json").read_text())
        model.load_weights(path / "model.weights.h5")
        return model(x, training=False).numpy()
    if fmt == "pickle":
        with open(path, "rb") as f:
            return pickle.load(f)(x, training=False).numpy()
    if fmt == "savedmodel":
        return tf.saved_model.load(str(path)).signatures["serving_default"](features=tf.constant(x))[
            "probabilities"].numpy()
    if fmt == "onnx":
        return onnxruntime.InferenceSession(str(path)).run(["probabilities"], {"features": x})[0]
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=str(path)).get_signature_runner("serving_default")(features=x)["probabilities"]
    if fmt == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path / "model.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        return compiled({"features": x})["probabilities"]
    if fmt == "torch":
        import torch

        return torch.export.load(str(path)).module()(torch.from_numpy(x)).detach().numpy()
    raise AssertionError(f"no independent loader for {fmt}")


FULL = sorted(name for name, fmt in REGISTRY.items() if not fmt.quantized)  # what formats="all" writes


@pytest.mark.parametrize("fmt", FULL)
def test_verdict_matches_independently_computed_outputs(report, bundle, pipeline, fmt):
    """The report's figures are what the format's own runtime really returns, against the trained model."""
    x = pipeline.split.x_test
    original = pipeline.model(x, training=False).numpy()  # eager Keras, not kerasio's compiled function
    art = kerasio.read_manifest(bundle).artifact(fmt)
    reloaded = _independent_outputs(fmt, bundle / art.path, x)
    true_diff = float(np.max(np.abs(reloaded.astype(np.float64) - original)))
    check = next(c for c in report.checks if c.format == fmt)
    tol = tolerance_for(fmt, check.backend, "cpu", extra=REGISTRY[fmt].tolerances)
    assert check.passed, check
    assert true_diff <= tol.atol + tol.rtol + 1e-6  # the artifact really is within the stated tolerance
    assert check.max_abs_diff <= max(true_diff, 1e-6) * 2 + 1e-7  # and the report does not understate it
    assert (reloaded.argmax(1) == original.argmax(1)).all() and check.argmax_agreement == 1.0
    assert check.precision == "float32-pinned" and check.device == "cpu" and report.mode == "fresh-process"
    assert [o["name"] for o in check.outputs] == ["probabilities"]


def test_runtimes_are_the_real_consumers(report):
    runtimes = {c.format: c.runtime for c in report.checks}
    assert runtimes["savedmodel"] == "tensorflow"
    assert runtimes["onnx"] == "onnxruntime"
    assert runtimes["litert"] == "litert"
    assert runtimes["keras"] == "keras/tensorflow"


def test_report_renders(report, bundle):
    table = report.table()
    assert [h.strip() for h in table.splitlines()[0].split("|")[1:3]] == ["Format", "Runtime"]
    assert "exact" in table and "PASS" in table  # the bit-identical formats' tolerance
    assert max(len(line) for line in table.splitlines()) <= 100
    frame = report.to_frame()
    assert set(frame["format"]) == set(FULL) and frame["passed"].all()
    data = json.loads(report.to_json())
    assert data["ok"] is True and len(data["checks"]) == len(FULL)
    recorded = json.loads((bundle / VERIFICATION_FILE).read_text())
    assert recorded["ok"] is True


def test_in_process_matches(bundle):
    rep = kerasio.verify(bundle, formats=["keras", "savedmodel"], in_process=True, record=False)
    assert rep.ok and rep.mode == "in-process"


def test_one_changed_byte_fails_verify_and_load(keras_bundle, tmp_path):

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    path = b / "model.keras"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(kerasio.errors.IntegrityError, match=r"model\.keras: sha256 .* does not match .* nothing was loaded"):
        kerasio.load(b)
    with pytest.raises(kerasio.errors.IntegrityError, match=r"model\.keras: sha256"):
        kerasio.load(path)  # a bare file inside a bundle is checked against its manifest too
    rep = kerasio.verify(b, in_process=True, record=False)
    bad = [c for c in rep.checks if not c.passed]
    assert [c.format for c in bad] == ["keras"] and "does not match" in bad[0].error
    with pytest.raises(kerasio.errors.VerificationError, match=r"model\.keras \(keras\): .*does not match"):
        rep.raise_for_failure()


def test_changed_file_inside_savedmodel_is_named(keras_bundle, tmp_path):

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    target = next((b / "serving/1/variables").glob("variables.data-*"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(kerasio.errors.IntegrityError, match=r"serving/1/variables/variables\.data-.*does not match"):
        kerasio.load(b, format="savedmodel")


def test_reduced_precision_reference_fails_strict_tolerance(keras_bundle, tmp_path):
    """Reference outputs from a bfloat16 run must not pass the float32 tolerances."""

    import ml_dtypes

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    manifest = kerasio.read_manifest(b)
    x, y = manifest.reference_arrays(b)
    low = y["probabilities"].astype(ml_dtypes.bfloat16).astype(np.float32)  # what a reduced-precision run stores
    save_arrays(b / "reference_outputs.npz", {"probabilities": low})
    manifest.reference["outputs"] = hash_entry(b, "reference_outputs.npz")
    manifest.write(b)
    rep = kerasio.verify(b, formats="keras", in_process=True, record=False, trust=True)
    check = rep.checks[0]
    assert not check.passed and not check.error, check.error
    assert check.max_abs_diff > 1e-4
    with pytest.raises(kerasio.errors.VerificationError,
                       match=r"output 'probabilities' \d+ values outside the tolerance \(on reference batch\), max abs diff "
                             r"\d\.\d\de-0\d, would pass at atol \d\.\d\de-0\d.*"
                             r"tolerance atol 0, rtol 0"):
        rep.raise_for_failure()
    # An explicit, looser tolerance is used and recorded as such.
    loose = kerasio.verify(b, options=kerasio.VerifyOptions(atol=0.01, rtol=0), formats="keras", in_process=True,
                           record=False, trust=True)
    assert loose.ok and loose.checks[0].tolerance_source == "override" and loose.checks[0].atol == 1e-2
    assert "given by the caller" in loose.to_json()


def test_tampered_reference_is_refused(keras_bundle, tmp_path):

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    save_arrays(b / "reference_outputs.npz", {"probabilities": np.zeros((200, 3), np.float32)})
    with pytest.raises(kerasio.errors.IntegrityError, match="reference_outputs.npz: sha256"):
        kerasio.verify(b, in_process=True)


def test_verify_unknown_and_missing_format(keras_bundle):
    with pytest.raises(kerasio.errors.ArtifactError, match=r"no 'onnx' artifact; it has \['keras', 'savedmodel'\]"):
        kerasio.verify(keras_bundle, formats="onnx")


def test_not_a_bundle(tmp_path):
    with pytest.raises(kerasio.errors.ArtifactError, match=rf"not a kerasio bundle \(no {MANIFEST_NAME}\)"):
        kerasio.verify(tmp_path)


def test_float_comparison_uses_atol_plus_rtol():
    ref = np.array([[2.5e5], [1.0]], np.float32)
    near = ref + np.array([[0.05], [0.0]], np.float32)  # 2e-7 relative on the large value
    assert not compare_output("price", ref, near, atol=1e-5, rtol=0).passed  # absolute alone fails it
    ok = compare_output("price", ref, near, atol=1e-5, rtol=1e-6)
    assert ok.passed and ok.max_abs_diff == pytest.approx(float(near[0, 0]) - 2.5e5) and ok.argmax_agreement is None


def test_probability_outputs_also_need_argmax_agreement():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    act = np.array([[0.7, 0.25, 0.05], [0.5, 0.1, 0.4]])
    out = compare_output("p", ref, act, atol=1.0, rtol=0, probabilities=True)
    assert out.argmax_agreement == 0.5 and not out.passed  # within atol, yet a label flipped
    assert compare_output("p", ref, act, atol=1.0, rtol=0).passed  # not a probability output: no argmax rule


@pytest.mark.parametrize("ref, act, bad", [
    (np.array([1, 2, 3]), np.array([1, 2, 4]), 1),
    (np.array([True, False]), np.array([True, True]), 1),
    (np.array(["cat", "dog"]), np.array(["cat", "dog"]), 0),
    (np.array(["cat", "dog"]), np.array(["cat", "cow"]), 1),
])
def test_integer_bool_and_string_outputs_match_exactly(ref, act, bad):
    out = compare_output("o", ref, act, atol=1e9, rtol=1e9)  # no tolerance loosens an exact output
    assert out.exact and out.mismatches == bad and out.passed == (bad == 0)


def test_shape_mismatch_is_a_failure_with_a_reason():
    out = compare_output("o", np.zeros((4, 3)), np.zeros((4, 2)), atol=1, rtol=1)
    assert not out.passed and "shape (4, 2) differs from the reference (4, 3)" in out.detail


def test_tolerance_table_rules():
    assert tolerance_for("keras", "tensorflow", "cpu").atol == 0.0
    assert tolerance_for("savedmodel", "tensorflow", "cpu").atol == 1e-6
    assert tolerance_for("keras", "jax", "cpu").atol == 1e-6
    assert tolerance_for("keras", "tensorflow", "gpu").atol == 1e-5
    assert tolerance_for("onnx", "onnxruntime", "cpu", "float16").rtol == 1e-3  # mixed_float16 row
    assert tolerance_for("keras", "tensorflow", "cpu", "float16").atol == 0.0  # same file, same kernels
    assert tolerance_for("keras", "torch", "gpu", "float32", "tf32-allowed").atol == 1e-2
    assert all(t.reason for t in TOLERANCES)
    assert "| keras | same | cpu | * | * | 0 (bit-identical) | 0 |" in markdown_table()
    # a bundle exported by JAX: TensorFlow reloading its .keras is another backend, JAX its own
    assert tolerance_for("keras", "tensorflow", "cpu", exported_by="jax").atol == 1e-6
    assert tolerance_for("keras", "jax", "cpu", exported_by="jax").atol == 0.0
    # exported on a GPU (found on an H200): the CPU's check is another device's kernels, not bit-identical
    assert tolerance_for("keras", "jax", "cpu", exported_by="jax", exported_on="gpu").atol == 1e-6
    assert tolerance_for("keras", "jax", "gpu", exported_by="jax", exported_on="gpu").atol == 1e-5
    # another CPU (found here: the committed v1 bundle, made on a host that also says "AMD EPYC", reloads 1.2e-7 off)
    assert tolerance_for("keras", "tensorflow", "cpu", same_cpu=False).atol == 1e-6


def test_bit_identity_needs_the_exporting_cpu(keras_bundle, tmp_path):
    """The same bundle is held to bit-identity here, and to the cross-CPU row when its manifest names another CPU."""
    from kerasio.backends.environment import cpu_features

    assert kerasio.read_manifest(keras_bundle).cpu_features == cpu_features()
    here = kerasio.verify(keras_bundle, formats="keras", in_process=True, record=False)
    assert here.ok and (here.checks[0].atol, here.checks[0].rtol) == (0.0, 0.0)
    b = copy_bundle(keras_bundle, tmp_path / "b")
    data = json.loads((b / "kerasio.json").read_text())
    data["cpu_features"] = "0123456789abcdef"
    (b / "kerasio.json").write_text(json.dumps(data))
    elsewhere = kerasio.verify(b, formats="keras", record=False)
    assert elsewhere.ok and (elsewhere.checks[0].atol, elsewhere.checks[0].rtol) == (1e-6, 1e-6), elsewhere.table()


def test_readme_tolerance_table_is_current():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme
