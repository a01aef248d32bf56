"""Hostile Keras files: what Keras would construct is read from the config as data and checked first. A config
that implies more parameter bytes than its weight file holds, a weight dataset that declares more than it stores,
too many objects or levels, a number Python cannot parse, a class from a package trusted by its name only, a layer
that runs or reads what its config names: each is refused before any layer is built."""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import h5py
import pytest
from hostile import first_dense, keras_h5_shape_bomb, keras_with_config, layers_of

import kerasio


@pytest.fixture(scope="module")
def model_keras(keras_bundle):
    return keras_bundle / "model.keras"


def test_a_config_that_implies_40_gb_over_a_small_weight_file_is_refused_unbuilt(model_keras, tmp_path):
    path = keras_with_config(model_keras, tmp_path / "bomb.keras",
                             lambda c: first_dense(c)["config"].update(units=10**9))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"bomb\.keras: its config implies [\d,]+ bytes of "
                                                          r"parameters, but its weight file holds [\d,]+; loading it "
                                                          r"would allocate memory that no weight fills"):
        kerasio.load(path, trust=True)  # refused in the caller's own process too: it never allocates


def test_keras_itself_would_allocate_the_bomb(model_keras, tmp_path):
    """The control: Keras builds the model from its config before it reads a single weight."""
    path = keras_with_config(model_keras, tmp_path / "bomb.keras",
                             lambda c: first_dense(c)["config"].update(units=10**9))
    code = ("import resource, keras\nresource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))\n"
            f"keras.saving.load_model({str(path)!r})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and ("OOM" in out.stderr or "alloc" in out.stderr.lower()), out.stderr[-800:]


def test_an_embedding_the_weights_do_not_hold_is_refused(tmp_path):
    import keras

    inp = keras.Input((4,), dtype="int32", name="ids")
    model = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Flatten()(keras.layers.Embedding(50, 8)(inp))))
    model.save(tmp_path / "e.keras")

    def grow(config):
        next(layer for layer in layers_of(config) if layer["class_name"] == "Embedding")["config"]["input_dim"] = 10**8

    path = keras_with_config(tmp_path / "e.keras", tmp_path / "bomb.keras", grow)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"its config implies [\d,]+ bytes of parameters"):
        kerasio.load(path, trust=True)


def test_an_hdf5_dataset_that_declares_more_than_it_stores_is_refused(model_keras, tmp_path):
    path = keras_h5_shape_bomb(model_keras, tmp_path / "bomb.keras")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"HDF5 dataset '.*' declares 40,000,000,000 bytes but stores "
                                                          r"0; reading it would allocate memory the file does not fill"):
        kerasio.load(path, trust=True)


def test_a_legacy_h5_and_a_weights_architecture_are_checked_the_same_way(bundle, tmp_path):
    import shutil

    h5 = tmp_path / "model.h5"
    shutil.copy(bundle / "model.h5", h5)
    with h5py.File(h5, "a") as f:
        config = json.loads(f.attrs["model_config"])
        first_dense(config)["config"]["units"] = 10**9
        f.attrs["model_config"] = json.dumps(config)
    with pytest.warns(kerasio.errors.LegacyFormatWarning), pytest.raises(kerasio.errors.UnsafeArtifactError,
                                                                  match=r"model\.h5: its config implies"):
        kerasio.load(h5, trust=True)
    weights = tmp_path / "weights"
    shutil.copytree(bundle / "weights", weights)
    config = json.loads((weights / "architecture.json").read_text())
    first_dense(config)["config"]["units"] = 10**9
    (weights / "architecture.json").write_text(json.dumps(config))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"architecture\.json: its config implies"):
        kerasio.load(weights, trust=True)


def _pad(config, count):
    config["config"]["padding"] = [{"class_name": "Zeros", "module": "keras.initializers", "config": {}}
                                   for _ in range(count)]


@pytest.mark.parametrize("change, kind, match", [
    (lambda c: _pad(c, 250_000), kerasio.errors.UnsafeArtifactError, r"the config has more than 200000 objects"),
    (lambda c: json.dumps(c)[:-1] + ', "deep": ' + "[" * 990 + "]" * 990 + "}", kerasio.errors.ArtifactError,
     r"config\.json: nested more than 128 levels deep"),
    (lambda c: json.dumps(c)[:-1] + ', "n": ' + "9" * 5000 + "}", kerasio.errors.ArtifactError,
     r"config\.json: holds an integer of 5000 digits \(the limit is 40\); refusing it"),
], ids=["many-objects", "depth-990", "int-5000-digits"])
def test_configs_out_of_bounds_are_refused_as_kerasio_errors(model_keras, tmp_path, change, kind, match):
    path = keras_with_config(model_keras, tmp_path / "bad.keras", change)
    with pytest.raises(kind, match=match):
        kerasio.load(path, trust=True)


@pytest.mark.parametrize("obj, match", [
    ({"module": "keras_hub.src.models.bert.bert_backbone", "class_name": "BertBackbone", "registered_name": None},
     r"class 'BertBackbone' comes from keras_hub \(module 'keras_hub.src.models.bert.bert_backbone'\), which is "
     r"allowlisted but either not installed here or does not register that class"),
    ({"module": "keras_hub.src.evil", "class_name": "Evil", "registered_name": "keras_hub>Evil"},
     r"class 'keras_hub>Evil' comes from keras_hub .*does not register that class"),
    ({"module": "kerasfoo.layers", "class_name": "Dense", "registered_name": None}, r"custom class 'Dense' \(module "
                                                                                     r"'kerasfoo\.layers'\) is not "
                                                                                     r"registered"),
    ({"module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None},
     r"contains a TFSMLayer layer, which loads or runs code that its config names"),
    ({"module": "keras.src.utils.file_utils", "class_name": "get_file", "registered_name": None},
     r"names keras\.src\.utils\.file_utils\.get_file, which is not a layer, op, initializer"),
], ids=["keras-hub-by-name", "keras-hub-unknown-class", "keras-prefix", "tfsm-layer", "not-a-keras-class"])
def test_only_an_explicit_list_of_classes_is_trusted(model_keras, tmp_path, obj, match):
    def inject(config):
        layer = first_dense(config)
        layer.update({k: v for k, v in obj.items()})

    path = keras_with_config(model_keras, tmp_path / "bad.keras", inject)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=match):
        kerasio.load(path, trust=True)


def test_a_function_that_is_not_computation_is_refused_as_an_activation(model_keras, tmp_path):
    path = keras_with_config(model_keras, tmp_path / "bad.keras", lambda c: first_dense(c)["config"].update(
        activation={"module": "keras.utils", "class_name": "function", "config": "get_file", "registered_name": None}))
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"names function keras\.utils\.get_file as an activation, "
                                                          r"loss or metric; only Keras's computational functions"):
        kerasio.load(path, trust=True)


def test_a_layer_that_names_a_file_in_its_config_is_refused(tmp_path):
    import keras
    import numpy as np

    (tmp_path / "secret.txt").write_text("alpha\nbeta\n")
    text = keras.layers.TextVectorization(max_tokens=10, output_sequence_length=2)
    text.adapt(["a b", "c d"])
    model = keras.Sequential([keras.Input((1,), dtype="string"), text])
    model.save(tmp_path / "t.keras")

    def point(config):
        layer = next(layer for layer in layers_of(config) if layer["class_name"] == "TextVectorization")
        layer["config"]["vocabulary"] = str(tmp_path / "secret.txt")

    path = keras_with_config(tmp_path / "t.keras", tmp_path / "bad.keras", point)
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"names a file in its config \(vocabulary='.*secret\.txt'\), "
                                                          r"which Keras would open at load"):
        kerasio.load(path, trust=True)
    assert np.asarray(model(np.array([["a b"]]))).shape == (1, 2)


def test_a_registered_custom_class_still_loads(tmp_path):
    """The control: the explicit list stays out of the way of what the caller imported."""
    import custom_layers  # noqa: F401 - registers Scale
    import keras
    import numpy as np

    model = keras.Sequential([keras.Input((3,), name="x"), custom_layers.Scale(3.0), keras.layers.Dense(2)])
    x = np.ones((2, 3), np.float32)
    kerasio.export(model, tmp_path / "b", reference_inputs=x, verify=False)
    loaded = kerasio.load(tmp_path / "b")
    assert not loaded.isolated and np.allclose(loaded.run(x)[loaded.iospec.output_names[0]], model(x))
    with zipfile.ZipFile(tmp_path / "b" / "model.keras") as z:
        assert "kerasio_test>Scale" in z.read("config.json").decode()
