"""The checks every real architecture goes through (tests/real_zoo.py builds them): imported by the two test files
that split the zoo between the two test processes.

For each model: ``export(formats="all")`` (which probes every artifact's round trip before publishing it), then a
fresh-process ``verify`` of the published bundle; every format is verified or skipped with the reason asserted;
``load(...).run(x)`` matches ``model(x)``; the SavedModel keeps the input names and dtypes; ``inspect`` and the
CLI's ``predict`` work on it.
"""
from __future__ import annotations

import numpy as np
import real_zoo
from zoo import assert_swept, eager_outputs

import kerasio
from kerasio.cli import main
from kerasio.formats import REGISTRY

PICKLE = "pass trust=True (--trust) to write it"
NOT_RELOADED = "its artifact was written but does not reload: "
H5_LEGACY_NAME = NOT_RELOADED + "Keras's legacy loader cannot rebuild class '{}': a legacy HDF5 config names it"
TF2ONNX_UNSUPPORTED = "its converter failed: tf2onnx: Unsupported ops"
# model: {format: start of the skip reason}; every format not named here is published and verified.
EXPECTED = {
    "mobilenet_v2": {},
    "resnet": {},
    "densenet": {},
    "mobilenet_v3": {"h5": NOT_RELOADED + "ValueError: Only input tensors may be passed as positional arguments"},
    "convnext": {"h5": "Keras's legacy HDF5 loader cannot rebuild layer 'LayerScale'", "onnx": TF2ONNX_UNSUPPORTED},
    "nasnet": {},
    "bert_backbone": {"h5": H5_LEGACY_NAME.format("BertBackbone")},
    "bert_classifier": {"h5": H5_LEGACY_NAME.format("BertTextClassifier")},
    "transformer": {"h5": "Keras's legacy HDF5 loader cannot rebuild layer 'Attention'", "onnx": TF2ONNX_UNSUPPORTED},
    "masked_lstm": {"h5": H5_LEGACY_NAME.format("NotEqual"),
                    "litert": "LiteRT's builtins cannot run Keras 3's recurrent loop (LSTM)"},
    "quantized_int8": {"litert": "its converter failed: 'tfl.fully_connected' op operand #0 must be tensor of "
                                 "32-bit float or QI8 type",
                       # OpenVINO's int8 path computes other outputs (Keras's own export too: 0.21 off)
                       "openvino": "its artifact reloads with different outputs on openvino/cpu: output"},
    "quantized_int4": {"litert": "its artifact reloads with different outputs on litert/cpu: output"},
    "quantized_float8": {"h5": "Keras's legacy HDF5 loader cannot restore float8 quantization",
                         "onnx": "its converter failed: KeyError: tf.float8_e4m3fn",
                         "litert": "its converter failed: ",
                         "openvino": NOT_RELOADED + "RuntimeError: Exception from src/inference"},
    # Keras 3.15 saves a GPTQ model it cannot reload (its own model.save / load_model): kerasio keeps the rest.
    "quantized_gptq": {"keras": NOT_RELOADED + "ValueError: A total of 3 objects could not be loaded",
                       "h5": "Keras could not write it: Unable to synchronously create dataset (name already exists)",
                       "weights": NOT_RELOADED},
}


# Also verified again as a bundle from elsewhere (a sandboxed worker of its own), besides export's fresh-process
# verification: one of each half (the others would only repeat the same loads at CI's expense).
SANDBOXED_AGAIN = ("resnet", "bert_classifier")


def export_and_verify(name, tmp_path_factory):
    """What the fixtures of both files return: the model, its inputs, the bundle, the export and the verification.

    ``export(formats="all", verify=True)`` verifies every artifact in a fresh process before publishing it (the
    checks of the written artifacts run while the next ones are written); what fails its own round trip is left
    out, with its reason.
    """
    model, x = real_zoo.build(name)
    out = tmp_path_factory.mktemp(name) / "bundle"
    result = kerasio.export(model, out, reference_inputs=x, formats="all", verify=True)
    report = kerasio.verify(out, record=False) if name in SANDBOXED_AGAIN else result.report
    return name, model, x, out, result, report


def test_exported_with_every_format_verified_or_skipped_for_its_reason(real):
    name, _, _, out, result, report = real
    expected = {"pickle": PICKLE, "torch": PICKLE, **EXPECTED[name]}  # both are written only with trust
    manifest = kerasio.read_manifest(out)
    assert set(result.skipped) == set(expected), result.skipped
    for fmt, reason in expected.items():
        assert result.skipped[fmt].startswith(reason), (fmt, result.skipped[fmt])
        assert manifest.skipped[fmt] == result.skipped[fmt]
        assert "\n" not in result.skipped[fmt] and len(result.skipped[fmt]) <= 400  # one line each
        assert f"{fmt} skipped: {result.skipped[fmt][:30]}" in result.table()
    if name == "quantized_int8":  # the one-line reason above; the converter's whole MLIR text kept for --debug
        assert "loc(" in result.details["litert"] and len(result.details["litert"]) > len(result.skipped["litert"])
    published = {a.format for a in manifest.artifacts}
    assert published == {n for n, f in REGISTRY.items() if not f.quantized} - set(expected)
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} >= {"kerasio.json"}
    assert report.ok, report.table()
    assert {c.format for c in report.checks} == published
    assert report.mode == "fresh-process"
    assert all(c.runtime and c.max_abs_diff is not None for c in report.checks)
    assert_swept(manifest, report)


def test_load_run_matches_the_model(real):
    name, model, x, out, _, report = real
    expected = eager_outputs(model, x)
    loaded = kerasio.load(out)  # the artifact load prefers (.keras; the SavedModel where Keras cannot reload it)
    got = loaded.run(x)
    check = next(c for c in report.checks if c.format == loaded.format)
    for spec in loaded.iospec.outputs:
        ref = expected.get(spec.name, expected.get(None))
        diff = np.abs(got[spec.name].astype(np.float64) - ref.astype(np.float64))
        # The stored reference comes from the traced graph; an eager call of a deep network rounds differently
        # (Grappler fuses batch norms into convolutions): up to ~1e-6 here.
        assert (diff <= check.atol + 1e-5 + (check.rtol + 1e-5) * np.abs(ref)).all(), (name, diff.max())


def test_savedmodel_keeps_input_names_and_dtypes(real):
    name, model, x, out, _, _ = real
    manifest = kerasio.read_manifest(out)
    sig = manifest.artifact("savedmodel").info["signatures"]["serving_default"]
    assert {k: v["dtype"] for k, v in sig["inputs"].items()} == {s.name: s.dtype for s in manifest.iospec.inputs}
    names = list(x) if isinstance(x, dict) else [manifest.iospec.input_names[0]]
    assert sorted(sig["inputs"]) == sorted(names)


def test_inspect_and_cli_predict(real, tmp_path, capsys):
    name, model, x, out, result, _ = real
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    for fmt, why in result.skipped.items():
        assert f"{fmt} skipped: {why[:40]}" in text
    loaded = kerasio.load(out)
    arrays = x if isinstance(x, dict) else {loaded.iospec.input_names[0]: x}
    np.savez(tmp_path / "in.npz", **arrays)
    assert main(["predict", str(out), "--input", str(tmp_path / "in.npz"), "--output", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz", allow_pickle=False) as z:
        for output, value in loaded.run(x).items():
            np.testing.assert_array_equal(z[output], value)
