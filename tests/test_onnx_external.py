"""ONNX graphs whose weights live beside them (models over 2 GB): kerasio writes the external data inside the
bundle, lists and hashes it, and audits every external tensor before onnxruntime opens the graph. The threshold is
lowered here so that a small model takes the same path."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from bundles import copy_bundle, named
from hostile import rehash

import kerasio
from kerasio.errors import UnsafeArtifactError


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(9)
    x = keras.Input((32,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="wide")(x)
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(keras.layers.Dense(64, name="mid")(h))
    model = keras.Model(x, out)
    data = np.random.default_rng(9).normal(size=(24, 32)).astype(np.float32)
    bundle = tmp_path_factory.mktemp("ext") / "b"
    result = kerasio.export(model, bundle, reference_inputs=data, formats="keras,onnx", verify=True,
                            format_options={"onnx": {"external_data_above": 1000}})
    return model, bundle, result


def _graph(bundle: Path) -> Path:
    return named(bundle, "onnx") / "model.onnx"


def test_the_weights_go_beside_the_graph_listed_hashed_and_verified(external, tmp_path):
    import onnx

    model, bundle, result = external
    art = result.manifest.artifact("onnx")
    assert art.path.endswith("/onnx") and sorted(art.files) == ["model.onnx", "model.onnx.data"]
    assert art.info["external_data"] == "model.onnx.data" and art.info["route"] == "frozen, weights streamed beside the graph"
    proto = onnx.load(str(_graph(bundle)), load_external_data=False)
    outside = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert outside and all({e.key: e.value for e in t.external_data}["location"] == "model.onnx.data"
                           for t in outside)
    assert result.report.ok
    theirs = copy_bundle(bundle, tmp_path / "theirs")  # not exported here: checked in the sandboxed worker
    (theirs / "kerasio.json").write_text((theirs / "kerasio.json").read_text() + " ")
    report = kerasio.verify(theirs, formats="onnx", record=False)
    assert report.ok and report.sandbox["tensorflow"].startswith(("landlock", "off: Landlock"))
    x = kerasio.read_manifest(bundle).reference_arrays(bundle)[0]
    with kerasio.load(theirs, format="onnx") as loaded:
        assert loaded.isolated
        np.testing.assert_allclose(loaded.run(x)["probabilities"], np.asarray(model(x["features"])), atol=1e-5)


def test_a_file_added_beside_the_graph_or_a_changed_weight_fails_the_hash(external, tmp_path):
    _, bundle, _ = external
    b = copy_bundle(bundle, tmp_path / "b")
    (named(b, "onnx") / "extra.data").write_bytes(b"\0" * 64)
    with pytest.raises(kerasio.errors.IntegrityError):
        kerasio.load(b, format="onnx")
    c = copy_bundle(bundle, tmp_path / "c")
    data = named(c, "onnx") / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0xFF
    data.unlink()
    data.write_bytes(bytes(raw))
    with pytest.raises(kerasio.errors.IntegrityError, match=r"model\.onnx\.data"):
        kerasio.load(c, format="onnx")


def _rewritten(bundle: Path, tmp_path: Path, change) -> Path:
    """A copy whose graph ``change`` edited (external entries of its first external initializer), re-hashed."""
    import onnx

    b = copy_bundle(bundle, tmp_path / "b")
    graph = _graph(b)
    proto = onnx.load(str(graph), load_external_data=False)
    tensor = next(t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    change(b, tensor)
    graph.unlink()
    onnx.save(proto, str(graph))
    try:
        rehash(b, "onnx")  # an attacker records the new hashes: the audit, not the hash, must refuse it
    except UnsafeArtifactError:
        pass  # kerasio's own hashing refuses a link inside an artifact before anything else does
    return b


def _set(tensor, key: str, value: str) -> None:
    entry = next((e for e in tensor.external_data if e.key == key), None)
    if entry is None:
        entry = tensor.external_data.add()
        entry.key = key
    entry.value = value


@pytest.mark.parametrize("case,pattern", [
    ("outside", r"must be a regular file beside it in its own directory, named plainly"),
    ("link", r"must be a regular file beside it in its own directory, named plainly"),
    ("past", r"reads bytes [\d,]+ to [\d,]+ of 'model\.onnx\.data', a [\d,]+-byte file: onnxruntime would read past"),
    ("short", r"reads 4 bytes of external data for a tensor of shape"),
])
def test_a_hostile_external_reference_is_refused_before_onnxruntime_opens_it(external, tmp_path, case, pattern):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4096, dtype=np.float32).tobytes())

    def change(b, tensor):
        if case == "outside":
            _set(tensor, "location", "../../../secret.bin")
        elif case == "link":
            (named(b, "onnx") / "other.data").symlink_to(secret)
            _set(tensor, "location", "other.data")
        elif case == "past":
            _set(tensor, "offset", str(10**9))
        else:
            _set(tensor, "length", "4")

    b = _rewritten(external[1], tmp_path, change)
    with pytest.raises((UnsafeArtifactError, kerasio.errors.IntegrityError), match=pattern if case != "link" else
                       r"link|regular file|beside it|modified or corrupted"):
        kerasio.load(b, format="onnx")


def test_external_data_in_a_bare_graph_is_refused_as_unlisted(external, tmp_path):
    """A model.onnx handed over alone, naming a data file beside it: no manifest lists that file, and the checked
    copy holds only the graph, so the data is never read."""
    _, bundle, _ = external
    folder = tmp_path / "handed"
    shutil.copytree(named(bundle, "onnx"), folder)
    with pytest.raises(UnsafeArtifactError, match=r"reads external data from 'model\.onnx\.data', which no hash "
                                                  r"covers"):
        kerasio.load(folder / "model.onnx")
