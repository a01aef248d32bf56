"""Hostile and corrupt files: each guard has a test that builds the bad file."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.bundle.layout import MANIFEST_NAME
from kerasio.cli import main


def _small_model(*layers):
    import keras

    model = keras.Sequential([keras.Input((10,), name="features"), *layers,
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_lambda_layer_is_refused_before_construction(tmp_path):
    import keras

    model = _small_model(keras.layers.Lambda(lambda x: x * 2))
    model.save(tmp_path / "lam.keras")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"lam\.keras: the model contains a Lambda object"):
        kerasio.load(tmp_path / "lam.keras")


def test_path_traversal_member_is_refused(keras_bundle, tmp_path):
    src = zipfile.ZipFile(keras_bundle / "model.keras")
    evil = tmp_path / "evil.keras"
    with zipfile.ZipFile(evil, "w") as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
        z.writestr("../../escape.txt", "pwned")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"member '\.\./\.\./escape\.txt' escapes the archive"):
        kerasio.load(evil)


def test_zip_bomb_is_refused(keras_bundle, tmp_path):
    src = zipfile.ZipFile(keras_bundle / "model.keras")
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name in src.namelist():
            z.writestr(name, src.read(name))
        z.writestr("assets/zeros.bin", b"\0" * (32 << 20))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"member 'assets/zeros\.bin' expands \d+x \(a zip bomb\?\)"):
        kerasio.load(bomb)


@pytest.mark.parametrize("payload, match", [
    (b"not a zip at all", r"not a valid \.keras archive"),
    (None, r"not a valid \.keras archive|Keras could not load it"),
])
def test_corrupt_keras_file(keras_bundle, tmp_path, payload, match):
    path = tmp_path / "bad.keras"
    data = (keras_bundle / "model.keras").read_bytes()
    path.write_bytes(payload if payload is not None else data[: len(data) // 2])  # truncated
    with pytest.raises(kerasio.errors.ArtifactError, match=match):
        kerasio.load(path)


def test_config_json_garbage(keras_bundle, tmp_path):
    src = zipfile.ZipFile(keras_bundle / "model.keras")
    path = tmp_path / "garbage.keras"
    with zipfile.ZipFile(path, "w") as z:
        for name in src.namelist():
            z.writestr(name, b"{nope" if name == "config.json" else src.read(name))
    with pytest.raises(kerasio.errors.ArtifactError, match=r"garbage\.keras: config\.json: not valid JSON; re-export the model"):
        kerasio.load(path)


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('KERASIO_PWNED', '/tmp/kerasio-pwned')}",))


def test_pickle_refused_without_trust_and_nothing_runs(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("KERASIO_PWNED", str(marker))
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"model\.pkl: refusing to load a pickle: unpickling "
                                                                 r"runs arbitrary code.*trust=True \(CLI: --trust\)"):
        kerasio.load(path)
    assert not marker.exists()


def test_pickle_accepted_with_trust(bundle):
    manifest = kerasio.read_manifest(bundle)
    x, y = manifest.reference_arrays(bundle)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match="refusing to load a pickle"):
        kerasio.load(bundle, format="pickle")
    loaded = kerasio.load(bundle, format="pickle", trust=True)
    assert np.array_equal(loaded.run(x)["probabilities"], y["probabilities"])


def test_verify_refuses_pickle_without_trust(bundle):
    rep = kerasio.verify(bundle, formats="pickle", in_process=True, record=False)
    assert not rep.ok and "refusing to load a pickle" in rep.checks[0].error


def test_h5_external_link_is_refused(bundle, tmp_path):
    import h5py

    path = tmp_path / "linked.h5"
    shutil.copy(bundle / "model.h5", path)
    with h5py.File(path, "a") as f:
        f["model_weights/evil"] = h5py.ExternalLink("/etc/passwd", "/")
    with pytest.warns(kerasio.errors.LegacyFormatWarning):
        with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"'model_weights/evil' is an external link"):
            kerasio.load(path, trust=True)


def test_h5_weights_only_file_is_named(bundle, tmp_path):
    path = tmp_path / "w.h5"
    shutil.copy(bundle / "weights" / "model.weights.h5", path)
    with pytest.warns(kerasio.errors.LegacyFormatWarning):
        with pytest.raises(kerasio.errors.ArtifactError, match=r"w\.h5: HDF5 file has no model_config"):
            kerasio.load(path, format="h5", trust=True)


def test_manifest_with_future_schema(keras_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    data = json.loads((b / MANIFEST_NAME).read_text())
    data["schema_version"] = 99
    (b / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(kerasio.errors.ArtifactError, match=r"schema_version 99 is not supported"):
        kerasio.load(b)


def test_manifest_not_json(keras_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    (b / MANIFEST_NAME).write_text("{")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"kerasio\.json: not valid JSON"):
        kerasio.verify(b)


def test_savedmodel_with_file_ops_is_refused(tmp_path):
    import tensorflow as tf

    target = tmp_path / "written-by-model.txt"

    class Hostile(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            tf.io.write_file(str(target), "pwned")
            return {"probabilities": tf.nn.softmax(features[:, :3]), "class_id": tf.argmax(features[:, :3], -1)}

    module = Hostile()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    with pytest.raises(kerasio.errors.UnsafeArtifactError,
                       match=r"sm: the SavedModel's signature 'serving_default' runs op 'WriteFile' \(in function "
                             r"'__inference_serve_\d+'\), which a Keras model's inference never needs.*"
                             r"--allow-op WriteFile\)\. Received: op='WriteFile'"):
        kerasio.load(tmp_path / "sm", trust=True)
    assert not target.exists()


def test_onnx_with_external_data_is_refused(bundle, tmp_path):
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../../../etc/passwd"
    onnx.save(model, str(tmp_path / "ext.onnx"))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"reads external data from '\.\./\.\./\.\./\.\./etc/passwd'"):
        kerasio.load(tmp_path / "ext.onnx")


def _onnx_with_external_constant(tmp_path, nested: bool):
    """A tiny valid ONNX graph whose Constant node (optionally inside an If branch) reads sidecar.bin."""
    import onnx
    from onnx import TensorProto, helper

    value = helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0])
    value.ClearField("float_data")
    value.data_location = TensorProto.EXTERNAL
    entry = value.external_data.add()
    entry.key, entry.value = "location", "sidecar.bin"
    (tmp_path / "sidecar.bin").write_bytes(np.float32(5.0).tobytes())
    const = helper.make_node("Constant", [], ["c"], value=value, name="secret_constant")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    if nested:
        branch = helper.make_graph([const], "then", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["c2"])], "else", [],
                                  [helper.make_tensor_value_info("c2", TensorProto.FLOAT, [1])])
        cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
        nodes = [helper.make_node("Constant", [], ["flag"], value=cond),
                 helper.make_node("If", ["flag"], ["c"], then_branch=branch, else_branch=other, name="branching")]
    else:
        nodes = [const]
    nodes.append(helper.make_node("Add", ["x", "c"], ["y"]))
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("nested", [False, True], ids=["constant-node", "constant-in-if-branch"])
def test_onnx_external_data_anywhere_is_refused_before_loading(tmp_path, nested):
    import onnxruntime

    path = _onnx_with_external_constant(tmp_path, nested)
    # onnxruntime itself would read the sidecar, which no hash covers: the guard is what stops it.
    assert onnxruntime.InferenceSession(str(path)).run(["y"], {"x": np.ones(1, np.float32)})[0][0] == 6.0
    match = (r"node 'branching' attribute 'then_branch' subgraph: node 'secret_constant' attribute 'value' reads "
             if nested else r"graph: node 'secret_constant' attribute 'value' reads ") + \
        r"external data from 'sidecar\.bin', which no hash covers; refusing to load"
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=match):
        kerasio.load(path)


def _keras_with_extra_members(keras_bundle, tmp_path, members: int, size: int):
    """The real model.keras plus ``members`` deflated members of ``size`` zero bytes each."""
    import zipfile

    path = tmp_path / "model.keras"
    with zipfile.ZipFile(keras_bundle / "model.keras") as src, \
            zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        zeros = bytes(size)
        for i in range(members):
            dst.writestr(f"assets/pad_{i}.bin", zeros)
    return path


def test_many_small_members_that_expand_in_total_are_refused(keras_bundle, tmp_path):
    """256 members of exactly 1 MiB each pass a per-member check; their total cannot."""
    path = _keras_with_extra_members(keras_bundle, tmp_path, 256, 1 << 20)
    assert path.stat().st_size < 1 << 20  # under 1 MB on disk, 256 MiB when extracted
    with pytest.raises(kerasio.errors.UnsafeArtifactError,
                       match=r"the archive expands to \d+ bytes from \d+ \(\d+x; limits: 20x and \d+ bytes\); refusing "
                             r"to load before anything is extracted.*Received: 259 members"):
        kerasio.load(path)


def test_member_count_is_capped_and_configurable(keras_bundle, tmp_path, monkeypatch):
    path = _keras_with_extra_members(keras_bundle, tmp_path, 60, 10)
    monkeypatch.setenv("KERASIO_MAX_ARCHIVE_MEMBERS", "50")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"has 63 members, over the limit of 50; refusing to load"):
        kerasio.load(path)
    monkeypatch.setenv("KERASIO_MAX_ARCHIVE_MEMBERS", "100")
    assert kerasio.load(path, trust=True).format == "keras"  # the same file under a raised limit: the padding is harmless


def _point_keras_artifact_at(bundle_dir, rel):
    data = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    next(a for a in data["artifacts"] if a["format"] == "keras")["path"] = rel
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(data))


@pytest.mark.parametrize("rel", ["../outside/model.keras", "/tmp/outside/model.keras", "./model.keras",
                                 "serving/../../outside/model.keras", ""])
def test_manifest_paths_outside_the_bundle_are_refused_unopened(keras_bundle, tmp_path, rel):
    import hashlib

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(b / "model.keras", outside / "model.keras")
    secret = hashlib.sha256((outside / "model.keras").read_bytes()).hexdigest()
    if isinstance(rel, str) and rel.startswith("/tmp/outside"):
        rel = str(outside / "model.keras")
    _point_keras_artifact_at(b, rel)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"is not a relative path inside the bundle; refusing to "
                                                          r"open anything outside it") as info:
        kerasio.load(b)
    assert secret[:12] not in str(info.value)  # nothing outside was hashed, let alone printed
    report = kerasio.verify(b, formats="keras", record=False)
    assert not report.ok and "refusing to open anything outside it" in report.checks[0].error


def test_symlinked_artifact_is_refused(keras_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    target = named(b, "keras")  # what the manifest names, not the top-level convenience link
    (tmp_path / "real.keras").write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(tmp_path / "real.keras")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"model\.keras: is a symbolic link; kerasio never follows"):
        kerasio.load(b)


def test_symlink_inside_a_savedmodel_is_refused(keras_bundle, tmp_path):
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    (tmp_path / "secret.txt").write_text("not yours")
    (named(b, "savedmodel") / "assets.extra/extra").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(kerasio.errors.UnsafeArtifactError,
                       match=r"assets\.extra/extra: is a symbolic link inside the artifact '1'; kerasio reads only "
                             r"regular files"):
        kerasio.load(b, format="savedmodel")


def test_fifo_named_like_the_artifact_fails_fast_instead_of_hanging(keras_bundle, tmp_path):
    """A FIFO would block open() forever; it is refused from lstat, in a process that must finish."""
    import subprocess
    import sys

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    fifo = named(b, "keras")
    fifo.unlink()
    os.mkfifo(fifo)
    code = ("import kerasio, sys\ntry:\n    kerasio.load(sys.argv[1])\nexcept kerasio.errors.UnsafeArtifactError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(b)], capture_output=True, text=True, timeout=120)
    assert "artifact 'keras' is a FIFO, not a file or directory; refusing to open it" in out.stdout, out.stderr[-500:]


def _hostile_savedmodel(tmp_path, body):
    import tensorflow as tf

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([10, 3]))

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            probabilities = tf.nn.softmax(features @ self.w)
            return {"probabilities": body(probabilities)}

    module = Hostile()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.serve})
    return tmp_path / "sm"


def test_savedmodel_that_saves_files_from_its_signature_is_refused_and_writes_nothing(tmp_path, capsys):
    """SaveV2 inside serving_default: the outputs are untouched, so only the audit can catch it."""
    import tensorflow as tf

    canary = tmp_path / "outside" / "canary"

    def body(probabilities):
        tf.raw_ops.SaveV2(prefix=str(canary), tensor_names=["x"], shape_and_slices=[""], tensors=[probabilities])
        return probabilities

    sm = _hostile_savedmodel(tmp_path, body)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"signature 'serving_default' runs op 'SaveV2'"):
        kerasio.load(sm, trust=True)  # the audit runs in whichever process loads it
    assert main(["predict", str(sm), "--input", str(tmp_path / "none.npy")]) == 2
    assert "runs op 'SaveV2'" in capsys.readouterr().err
    assert not canary.parent.exists()  # the canary: nothing was written
    loaded = kerasio.load(sm, allow_ops=["SaveV2"], trust=True)  # the explicit escape hatch, for a file you trust
    assert loaded.format == "savedmodel" and not canary.parent.exists()  # loading alone still runs nothing


def test_savedmodel_that_reads_outside_files_with_tf_data_is_refused(tmp_path):
    import tensorflow as tf

    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t\n")

    def body(probabilities):
        line = tf.data.experimental.get_single_element(tf.data.TextLineDataset(str(secret)).take(1))
        return probabilities + 0.0 * tf.cast(tf.strings.length(line), tf.float32)

    sm = _hostile_savedmodel(tmp_path, body)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"signature 'serving_default' runs op '(TextLineDataset\w*|"
                                                          r"DatasetToSingleElement|\w*Dataset\w*)'"):
        kerasio.load(sm, trust=True)


def test_allowed_ops_are_recorded_in_the_report(keras_bundle):
    report = kerasio.verify(keras_bundle, options=kerasio.VerifyOptions(allow_ops=["PrintV2"]), formats="savedmodel",
                            in_process=True, record=False)
    assert report.ok and report.allowed_ops == ["PrintV2"] and report.to_dict()["allowed_ops"] == ["PrintV2"]
    assert "SavedModel ops allowed by the caller beyond the inference allowlist: ['PrintV2']" in report.table()
