"""Stage 4: the bundle on disk, its manifest, and crash-safe writing."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.bundle.fsutil import hash_artifact, sha256_file
from kerasio.bundle.layout import MANIFEST_NAME, SCHEMA_VERSION
from kerasio.formats import REGISTRY


def test_manifest_fields(bundle, pipeline):
    data = json.loads((bundle / MANIFEST_NAME).read_text())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["created_utc"].endswith("+00:00")
    for lib in ("kerasio", "keras", "tensorflow", "numpy", "python"):
        assert data["versions"][lib], lib
    assert data["backend"] == "tensorflow" and data["device"] == "cpu"
    sig = data["signature"]
    assert sig["inputs"] == [{"name": "features", "dtype": "float32", "shape": [None, 10], "activation": None,
                              "probabilities": False}]
    assert sig["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [None, 3],
                               "activation": "softmax", "probabilities": True}]
    assert sig["model_kind"] == "sequential" and sig["compute_dtype"] == "float32"
    assert "Normalization" in sig["layers"] and "Dense" in sig["layers"]
    assert data["task"] == {"kind": "classification", "output": "probabilities",
                            "class_names": list(pipeline.dataset.class_names), "binary": False}
    assert sig["feature_names"] == list(pipeline.dataset.feature_names)
    assert data["skipped"] == {}
    assert len(data["trace"]) == 3 and data["trace"][0]["observation"]
    assert 0.8 < data["metrics"]["test_accuracy"] <= 1.0
    assert data["training"]["config"]["epochs"] == 3 and data["training"]["data"]["source"] == "embedded"
    assert data["reference"]["rows"] == 200


def test_every_format_recorded_with_size_and_hash(bundle):
    manifest = kerasio.read_manifest(bundle)
    assert sorted(a.format for a in manifest.artifacts) == sorted(n for n, f in REGISTRY.items() if not f.quantized)
    for art in manifest.artifacts:
        digest, size, _ = hash_artifact(bundle / art.path)
        assert (art.sha256, art.size) == (digest, size), art.format
        assert size > 0


def test_reference_arrays_are_the_models_outputs(bundle, pipeline):
    manifest = kerasio.read_manifest(bundle)
    x, y = manifest.reference_arrays(bundle)
    assert np.array_equal(x["features"], pipeline.split.x_test)
    assert y["probabilities"].shape == (200, 3) and np.allclose(y["probabilities"].sum(1), 1, atol=1e-5)
    assert manifest.reference["inputs"]["sha256"] == sha256_file(bundle / "reference_inputs.npz")
    with np.load(bundle / "reference_inputs.npz", allow_pickle=False) as z:  # named arrays, no pickle
        assert z.files == ["features"]


def test_keras_zip_members(bundle):
    names = zipfile.ZipFile(bundle / "model.keras").namelist()
    assert {"metadata.json", "config.json", "model.weights.h5"} <= set(names)


def test_savedmodel_serving_layout_and_signatures(bundle):
    manifest = kerasio.read_manifest(bundle)
    art = manifest.artifact("savedmodel")
    assert art.path == "generations/1/serving/1"  # TF Serving's serving/1 is a hardlink tree of it
    assert os.path.samefile(bundle / art.path / "saved_model.pb", bundle / "serving/1/saved_model.pb")
    assert (bundle / "serving/1/saved_model.pb").is_file()
    assert (bundle / "serving/1/assets.extra/tf_serving_warmup_requests").is_file()
    sigs = art.info["signatures"]
    assert sigs["serving_default"]["inputs"] == {"features": {"dtype": "float32", "shape": [None, 10]}}
    assert sigs["serving_default"]["outputs"] == {
        "probabilities": {"dtype": "float32", "shape": [None, 3]},
        "class_id": {"dtype": "int64", "shape": [None]},
    }
    assert sigs["predict_labels"]["outputs"]["labels"]["dtype"] == "string"
    assert "output_0" not in json.dumps(sigs)


def test_serving_versions_are_never_overwritten(pipeline, tmp_path):
    out = tmp_path / "b"
    kwargs = dict(reference_inputs=pipeline.split.x_test[:5], formats="savedmodel")
    kerasio.export(pipeline.model, out, **kwargs)
    first = sha256_file(out / "serving/1/saved_model.pb")
    result = kerasio.export(pipeline.model, out, **kwargs)
    assert result.manifest.artifact("savedmodel").path == "generations/2/serving/2"
    assert sorted(p.name for p in (out / "serving").iterdir()) == ["1", "2"]
    assert sha256_file(out / "serving/1/saved_model.pb") == first
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [".kerasio.lock"], "staging left behind"


def test_failed_export_leaves_existing_bundle_untouched(keras_bundle, pipeline, tmp_path, monkeypatch):

    out = tmp_path / "b"
    copy_bundle(keras_bundle, out)
    before = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    fmt = REGISTRY["onnx"]

    def crash(*args, **kwargs):
        raise RuntimeError("converter crashed halfway")

    monkeypatch.setattr(fmt, "save", crash)
    with pytest.raises(kerasio.errors.ArtifactError, match=r"exporting format 'onnx' failed\. Nothing in .* was changed.*"
                                                    r"Received: RuntimeError: converter crashed halfway"):
        kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, formats="keras,onnx")
    after = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_interrupted_export_leaves_existing_bundle_untouched(keras_bundle, pipeline, tmp_path, monkeypatch):
    """A KeyboardInterrupt mid-export (after some artifacts were staged) changes nothing."""

    out = tmp_path / "b"
    copy_bundle(keras_bundle, out)
    before = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    monkeypatch.setattr(REGISTRY["h5"], "save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, formats="keras,savedmodel,h5")
    after = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not (out / "serving" / "2").exists()


def test_pickle_needs_trust_to_be_written(pipeline, tmp_path):
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match="written only with explicit trust"):
        kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test, formats="pickle")
    result = kerasio.export(pipeline.model, tmp_path / "c", reference_inputs=pipeline.split.x_test[:4],
                            formats="all")
    assert "pickle" in result.skipped and "pickle" not in [a.format for a in result.manifest.artifacts]


def test_h5_export_warns_legacy(pipeline, tmp_path):
    with pytest.warns(kerasio.errors.LegacyFormatWarning, match="legacy"):
        kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test[:4], formats="h5")


def test_weights_can_be_sharded(pipeline, tmp_path):
    result = kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test[:4],
                            formats="weights", format_options={"weights": {"max_shard_size": 1e-05}})  # 10 KB shards
    files = sorted(os.listdir(tmp_path / "b" / "weights"))
    assert "model.weights.json" in files and sum(f.endswith(".weights.h5") for f in files) > 1
    assert result.manifest.artifact("weights").info["sharded"] is True
    loaded = kerasio.load(tmp_path / "b", format="weights")
    x, y = kerasio.read_manifest(tmp_path / "b").reference_arrays(tmp_path / "b")
    assert np.array_equal(loaded.run(x)["probabilities"], y["probabilities"])


def test_onnx_io_names(bundle):
    info = kerasio.read_manifest(bundle).artifact("onnx").info
    assert info["inputs"] == ["features"] and info["outputs"] == ["probabilities"]


def test_unknown_format_is_named(pipeline, tmp_path):
    with pytest.raises(kerasio.errors.ArtifactError, match=r"unknown format 'tflite'; known formats are keras, savedmodel"):
        kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test, formats="tflite")


def test_h5_export_does_not_strip_the_optimizer_from_later_saves(pipeline, tmp_path):
    """Keras's legacy writer mutates the model's compile config; kerasio restores it."""
    kerasio.export(pipeline.model, tmp_path / "a", reference_inputs=pipeline.split.x_test[:4], formats="h5")
    kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test[:4], formats="keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "b" / "model.keras").read("config.json"))
    assert config["compile_config"]["optimizer"]["class_name"] == "Adam"
    assert kerasio.load(tmp_path / "b").model.optimizer.__class__.__name__ == "Adam"


@pytest.mark.parametrize("mode", [True, "in-process"])
def test_export_can_verify_what_it_wrote(pipeline, tmp_path, mode):
    result = kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test,
                            formats="keras,onnx", verify=mode)
    assert result.report.ok, result.report.table()
    assert result.report.mode == ("in-process" if mode == "in-process" else "fresh-process")
    assert {c.format for c in result.report.checks} == {"keras", "onnx"}


def test_export_rejects_unknown_verify_mode(pipeline, tmp_path):
    with pytest.raises(ValueError, match=r"verify must be True, False, 'fresh-process' or 'in-process'"):
        kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test, verify="maybe")


def test_ctrl_c_during_commit_is_deferred_until_the_bundle_is_consistent(pipeline, keras_bundle, tmp_path,
                                                                          monkeypatch):
    """SIGINT between the generation's rename and the manifest swap waits until both are done."""
    import signal

    import kerasio.bundle.publish as publish

    out = tmp_path / "b"
    copy_bundle(keras_bundle, out)
    real = publish.crash_point
    seen = []

    def interrupt_inside_the_commit(name):
        seen.append(name)
        if name == "generation-renamed":
            os.kill(os.getpid(), signal.SIGINT)  # arrives between the rename and the swap
        real(name)

    monkeypatch.setattr(publish, "crash_point", interrupt_inside_the_commit)
    with pytest.raises(KeyboardInterrupt):
        kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, formats="keras,savedmodel")
    assert seen[:3] == ["staged", "generation-renamed", "manifest-swapped"]  # raised only after the swap
    manifest = kerasio.read_manifest(out)
    assert manifest.artifact("savedmodel").path == "generations/2/serving/2"
    for art in manifest.artifacts:
        art.check(out)  # the manifest matches what is on disk


def test_export_verify_publishes_nothing_when_an_artifact_fails(pipeline, keras_bundle, tmp_path, monkeypatch):
    """export(verify=...) checks the staged artifacts first; a failing one never replaces a good one."""

    out = tmp_path / "b"
    copy_bundle(keras_bundle, out)
    before = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    fmt = REGISTRY["savedmodel"]
    real_load = fmt.load

    def drifting_load(path, **kwargs):  # a SavedModel whose outputs are off by 1e-3
        runner = real_load(path, **kwargs)
        inner = runner._fn
        runner._fn = lambda x: {k: v + 1e-3 if k == "probabilities" else v for k, v in inner(x).items()}
        return runner

    monkeypatch.setattr(fmt, "load", drifting_load)
    with pytest.raises(kerasio.errors.VerificationError,
                       match=r"nothing was published, the bundle is as it was; the new artifacts failed verification: "
                             r"serving/2 \(savedmodel, tensorflow, cpu\): output 'probabilities' \d+ values outside "
                             r"the tolerance \(on reference batch, batch 1, batch 2, batch 7\), max abs diff 1\.00e-03, "
                             r"would pass at atol 1\.00e-03, argmax agreement 100\.0%; tolerance atol 1\.00e-06, "
                             r"rtol 1\.00e-06") as info:
        kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, formats="keras,savedmodel",
                       verify="in-process")
    assert [c.format for c in info.value.report.failures()] == ["savedmodel"]
    after = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_an_early_verifier_is_used_and_left_open(pipeline, tmp_path):
    """A Session started before the export owns the fresh interpreter; export uses it and does not close it."""
    with kerasio.Session() as session:
        v = session.start()
        result = kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test,
                                verify=kerasio.VerifyOptions(session=session))
        assert result.report.ok and result.report.mode == "fresh-process"
        assert v.proc.poll() is None  # still running: the caller owns it
        again = kerasio.verify(tmp_path / "b", session=session, record=False)
        assert again.ok
    assert v.proc.returncode == 0  # closed with the block, and exited cleanly


def test_litert_converts_the_bundles_own_savedmodel_or_writes_its_own(pipeline, tmp_path):
    """With a SavedModel in the same export, LiteRT converts that one (a classification's class_id comes along);
    alone, it writes a SavedModel of its own first. Both reproduce the model."""
    x = pipeline.split.x_test[:8]
    expected = np.asarray(pipeline.model(x))
    for formats, source in (("savedmodel,litert", "savedmodel"), ("litert", "its own SavedModel")):
        out = tmp_path / formats.replace(",", "_")
        result = kerasio.export(pipeline.model, out, reference_inputs=x, formats=formats, verify="in-process")
        art = result.manifest.artifact("litert")
        assert art.info["converted_from"] == source
        assert ("class_id" in art.info["outputs"]) == (source == "savedmodel"), art.info
        got = kerasio.load(out, format="litert").run(x)
        np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
        assert not [p for p in out.rglob(".litert-*")]  # the converter's scratch is gone
