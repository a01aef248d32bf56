"""Custom registered layers in fresh processes, and exact training resumption."""
from __future__ import annotations

import json
import zipfile

import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.bundle.layout import MANIFEST_NAME
from kerasio.bundle.manifest import hash_entry
from kerasio.recipe.resume import resume_check, resume_in_fresh_process


@pytest.fixture(scope="module")
def custom_bundle(tmp_path_factory):
    import keras
    from custom_layers import Scale

    data = kerasio.recipe.load_dataset()
    split = kerasio.recipe.split_dataset(data, seed=0)
    norm = keras.layers.Normalization()
    norm.adapt(split.x_train)
    model = keras.Sequential([keras.Input((10,), name="features"), norm, Scale(0.5),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    out = tmp_path_factory.mktemp("custom") / "b"
    kerasio.export(model, out, reference_inputs=split.x_test, formats="keras,savedmodel,onnx")
    return out


def test_custom_layer_recorded_and_verified_in_fresh_process(custom_bundle):
    manifest = kerasio.read_manifest(custom_bundle)
    assert manifest.custom_objects == [
        {"class": "Scale", "module": "custom_layers", "registered_name": "kerasio_test>Scale"}]
    report = kerasio.verify(custom_bundle, record=False)
    assert report.ok, report.table()
    assert report.mode == "fresh-process"


def test_unregistered_custom_class_is_named(custom_bundle, monkeypatch):
    import keras

    registry = keras.saving.get_custom_objects()
    monkeypatch.delitem(registry, "kerasio_test>Scale")
    with pytest.raises(kerasio.errors.UnsafeArtifactError,
                       match=r"custom class 'kerasio_test>Scale' \(module 'custom_layers'\) is not registered.*"
                             r"register_keras_serializable.*--import MODULE"):
        kerasio.load(custom_bundle)


def test_fresh_process_without_the_module_fails_clearly(custom_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(custom_bundle, b)
    data = json.loads((b / MANIFEST_NAME).read_text())
    data["custom_objects"][0]["module"] = "module_this_process_never_imported"
    (b / MANIFEST_NAME).write_text(json.dumps(data))
    report = kerasio.verify(b, formats="keras", record=False)
    assert not report.ok
    assert "custom class 'kerasio_test>Scale'" in report.checks[0].error
    # Naming the module makes the fresh process import it, and the check passes.
    assert kerasio.verify(b, options=kerasio.VerifyOptions(imports=["custom_layers"]), formats="keras", record=False).ok


def test_resume_is_bit_exact(bundle):
    result = resume_in_fresh_process(bundle)  # a fresh interpreter: nothing of this process helps
    assert result["passed"] and result["max_weight_diff"] == 0.0, result
    assert result["max_optimizer_diff"] == 0.0 and result["epochs"] == 3


def test_resume_fails_when_optimizer_state_is_dropped(bundle, tmp_path):
    import h5py

    b = tmp_path / "b"
    copy_bundle(bundle, b)
    work = tmp_path / "unzipped"
    with zipfile.ZipFile(b / "model.keras") as z:
        z.extractall(work)
    with h5py.File(work / "model.weights.h5", "a") as f:
        for name in list(f["optimizer/vars"]):
            del f["optimizer/vars"][name]
    with zipfile.ZipFile(b / "model.keras", "w") as z:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            z.write(work / name, name)
    manifest = kerasio.read_manifest(b)
    art = manifest.artifact("keras")
    art.sha256, art.size = hash_entry(b, "model.keras")["sha256"], (b / "model.keras").stat().st_size
    manifest.write(b)
    result = resume_check(b)
    assert not result.passed
    assert result.max_optimizer_diff > 0 or result.max_weight_diff > 0
    assert "diverged" in result.detail and "Skipping variable loading for optimizer" in result.detail
    report = kerasio.verify(b, formats="keras", in_process=True, record=False, trust=True)
    report.resume = result.to_dict()
    with pytest.raises(kerasio.errors.VerificationError, match="resume check failed"):
        report.raise_for_failure()


def test_resume_needs_training_record(keras_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    manifest = kerasio.read_manifest(b)
    manifest.training = {}
    manifest.write(b)
    with pytest.raises(kerasio.errors.ArtifactError, match="records no training config or data"):
        resume_check(b)
    result = resume_in_fresh_process(b)  # the worker reports the same error as a failed result
    assert result["passed"] is False and "records no training config or data" in result["detail"]
