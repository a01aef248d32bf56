"""Bring your own model file: `kerasio export MODEL`, inputs made from the signature, `kerasio compare A B`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zoo
from bundles import named
from hostile import first_dense, keras_with_config

import kerasio
from kerasio.cli import main
from kerasio.options import SyntheticInputs
from kerasio.spec.synth import OOV_TOKEN, hints_from_model, synthesize

KINDS = ("mlp", "cnn", "text", "multi_input")  # numeric, image, string and multi-input models


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """Each kind saved as a user's script would save it: a .keras file, and its reference inputs as an .npz."""
    root = tmp_path_factory.mktemp("byom")
    files = {}
    for kind in KINDS:
        model, x = zoo.ZOO[kind]()
        path = root / f"{kind}.keras"
        model.save(path)
        arrays = x if isinstance(x, dict) else {model.inputs[0].name: x}
        np.savez(root / f"{kind}.npz", **arrays)
        files[kind] = (path, root / f"{kind}.npz", model)
    return files


@pytest.mark.parametrize("kind", KINDS)
def test_export_of_a_model_file_without_inputs_verifies_every_format_it_can_carry(model_files, kind, tmp_path, capsys):
    path, _, model = model_files[kind]
    out = tmp_path / "bundle"
    assert main(["export", str(path), "--out", str(out), "--formats", "all"]) == 0
    text = capsys.readouterr().out
    assert "| Format " in text and "| Result |" in text  # the tables of run's stages 4 and 5
    assert " ".join(text.split()).count("reference: SYNTHETIC, made from the signature (seed 0, 64 rows)") == 1
    manifest = kerasio.read_manifest(out)
    assert manifest.reference["synthetic"]["seed"] == 0 and set(manifest.reference["synthetic"]["inputs"]) == \
        set(manifest.iospec.input_names)
    assert manifest.training["exported_from"] == {"file": str(path), "sha256": kerasio.bundle.fsutil.sha256_file(path)}
    x, y = manifest.reference_arrays(out)
    assert len(next(iter(x.values()))) == 64
    iospec = manifest.iospec  # the stored reference is the model's own outputs on those inputs
    expected = {k: np.asarray(v) for k, v in iospec.name_outputs(model(iospec.call_structure(x))).items()}
    for name, value in y.items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)
    report = kerasio.verify(out, record=False)
    assert report.ok and {c.format for c in report.checks} == {a.format for a in manifest.artifacts}
    assert main(["inspect", str(out)]) == 0
    assert "warning     reference: SYNTHETIC" in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_export_of_a_model_file_with_its_inputs_keeps_them(model_files, kind, tmp_path, capsys):
    path, inputs, _ = model_files[kind]
    out = tmp_path / "bundle"
    assert main(["export", str(path), "--out", str(out), "--inputs", str(inputs), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["verification"]["ok"] and "synthetic" not in data["reference"]
    manifest = kerasio.read_manifest(out)
    x, _ = manifest.reference_arrays(out)
    with np.load(inputs) as given:
        for name in manifest.iospec.input_names:
            np.testing.assert_array_equal(x[name], given[name])
    assert manifest.synthetic_notes() == []


def test_synthetic_ids_stay_inside_the_embedding_and_the_vocabularies():
    """Without the layers' hints an integer input gets 0..9, which indexes past a 5-row Embedding: the hints keep
    every id inside it, the padding where the rows end, and every token in its vocabulary but one."""
    import keras

    ids = keras.Input((None,), dtype="int32", name="ids")
    words = keras.Input((1,), dtype="string", name="words")
    tags = keras.Input((3,), dtype="string", name="tags")
    vectorize = keras.layers.TextVectorization(max_tokens=12, output_sequence_length=4)
    vectorize.adapt(["red green blue", "green cyan", "blue magenta red"])
    lookup = keras.layers.StringLookup(vocabulary=["x", "y", "z"])
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(5, 2, mask_zero=True, name="embed")(ids))
    model = keras.Model({"ids": ids, "words": words, "tags": tags}, keras.layers.Concatenate()(
        [h, keras.ops.cast(vectorize(words), "float32"), keras.ops.cast(lookup(tags), "float32")]))
    iospec = kerasio.IOSpec.from_dict(kerasio.spec.iospec.derive_iospec(model).to_dict())
    settings = SyntheticInputs(rows=40, seed=3, length=6)
    plain, _ = synthesize(iospec, {}, settings)
    assert plain["ids"].max() >= 5  # the control: these would index past the embedding
    with pytest.raises(Exception, match=r"indices|out of range|not in \[0, 5\)"):
        keras.layers.Embedding(5, 2)(plain["ids"])
    x, made = synthesize(iospec, hints_from_model(model, iospec), settings)
    assert x["ids"].shape == (40, 6) and x["ids"].max() < 5
    assert (x["ids"][0] > 0).all() and (x["ids"] == 0).any()  # one row whole, padding where the others end
    padded = x["ids"] == 0
    assert (np.diff(padded.astype(int), axis=1) >= 0).all()  # padding only after a row's last id
    vocabulary = set(vectorize.get_vocabulary()[2:])
    sentence_words = [w for s in x["words"][:, 0] for w in str(s).split()]
    assert set(sentence_words) - vocabulary == {OOV_TOKEN} and sentence_words.count(OOV_TOKEN) == 1
    assert set(x["tags"].ravel()) - {"x", "y", "z"} == {OOV_TOKEN}
    assert "Embedding 'embed', input_dim 5, mask_zero" in made["ids"]
    assert "TextVectorization" in made["words"] and "StringLookup" in made["tags"]
    model(x)  # the model takes every synthetic row


def test_a_rescaling_normalization_or_value_range_sets_the_float_range():
    import keras

    image = keras.Input((4, 4, 3), name="image")
    raw = keras.Input((3,), name="raw")
    plain = keras.Input((2,), name="plain")
    norm = keras.layers.Normalization(mean=[100.0, -5.0, 0.0], variance=[4.0, 1.0, 9.0])
    out = keras.layers.Concatenate()([keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image)), norm(raw), plain])
    model = keras.Model({"image": image, "raw": raw, "plain": plain}, out)
    iospec = kerasio.spec.iospec.derive_iospec(model)
    x, made = synthesize(iospec, hints_from_model(model, iospec),
                         SyntheticInputs(rows=500, value_ranges={"plain": (10, 20)}))
    assert 0 <= x["image"].min() and x["image"].max() <= 255 and x["image"].max() > 200
    assert abs(x["raw"][:, 0].mean() - 100) < 0.5 and abs(x["raw"][:, 0].std() - 2) < 0.3
    assert 10 <= x["plain"].min() and x["plain"].max() <= 20
    assert made["plain"].startswith("uniform in [10, 20] (--value-range)")


def test_a_classifier_whose_synthetic_rows_land_in_one_class_says_so(tmp_path):
    import keras

    inp = keras.Input((3,), name="x")
    dense = keras.layers.Dense(2, activation="softmax", name="probs")
    model = keras.Model(inp, dense(inp))
    dense.set_weights([np.zeros((3, 2), np.float32), np.array([5.0, -5.0], np.float32)])  # always class 0
    result = kerasio.export(model, tmp_path / "b", reference_inputs=None, verify=False)
    assert "100% of the synthetic rows land in class '0': the reference exercises one branch of the model only" \
        in " ".join(result.table().split())
    assert kerasio.read_manifest(tmp_path / "b").reference["synthetic"]["one_class"].startswith("100%")


def test_a_hostile_model_file_gets_the_refusal_load_gives_and_nothing_is_written(keras_bundle, tmp_path, capsys):
    bomb = keras_with_config(keras_bundle / "model.keras", tmp_path / "bomb.keras",
                             lambda c: first_dense(c)["config"].update(units=10**9))
    with pytest.raises(kerasio.errors.UnsafeArtifactError) as refused:
        kerasio.load(bomb)
    out = tmp_path / "out"
    assert main(["export", str(bomb), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"kerasio: error: {refused.value}" and "Traceback" not in err
    assert "its config implies" in err and not out.exists()


def test_a_savedmodel_is_not_a_model_file_and_export_points_to_compare(keras_bundle, tmp_path, capsys):
    assert main(["export", str(named(keras_bundle, "savedmodel")), "--out", str(tmp_path / "o")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "a savedmodel artifact cannot be rebuilt as a Keras model" in err
    assert "kerasio compare MODEL.keras" in err


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A model's .keras and its own ONNX, as a colleague would hand them over."""
    model, x = zoo.mlp()
    bundle = tmp_path_factory.mktemp("pair") / "b"
    kerasio.export(model, bundle, reference_inputs=x, formats="keras,onnx", verify=False)
    return bundle


def test_compare_says_a_keras_file_and_its_own_onnx_agree(pair, capsys):
    assert main(["compare", str(named(pair, "keras")), str(named(pair, "onnx"))]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "agree: " in out and "(1 of 1 outputs within the tolerance)" in out
    assert "inputs: SYNTHETIC, made from A's signature (seed 0): x: standard normal; 64 rows" in out
    assert "tolerance: atol 1e-05, rtol 1e-05 (onnxruntime has its own kernels and summation order)" in out


def test_compare_says_a_tampered_copy_differs(pair, tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    path = tmp_path / "colleague.onnx"  # a bare file handed over, one weight moved
    graph = onnx.load(named(pair, "onnx"))
    first = max(graph.graph.initializer, key=lambda i: numpy_helper.to_array(i).size)  # the first Dense's kernel
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) + 0.5, first.name))
    onnx.save(graph, path)
    np.savez(tmp_path / "x.npz", x=zoo.mlp()[1])
    assert main(["compare", str(named(pair, "keras")), str(path), "--inputs", str(tmp_path / "x.npz"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert not data["ok"] and data["outputs"][0]["name"] == "probs" and data["outputs"][0]["max_abs_diff"] > 1e-3
    assert data["inputs"] == str(tmp_path / "x.npz") and data["rows"] == len(zoo.mlp()[1])


def test_compare_through_the_api_matches_outputs_by_position_when_names_differ(pair, tmp_path):
    """A graph someone else converted keeps the converter's names: inputs and outputs are then matched by position,
    and the result says so."""
    import onnx

    path = tmp_path / "renamed.onnx"
    graph = onnx.load(named(pair, "onnx"))
    for node in graph.graph.node:
        node.input[:] = ["input_1" if n == "x" else n for n in node.input]
        node.output[:] = ["output_0" if n == "probs" else n for n in node.output]
    graph.graph.input[0].name, graph.graph.output[0].name = "input_1", "output_0"
    onnx.save(graph, path)
    with kerasio.load(named(pair, "keras")) as mine, kerasio.load(path) as theirs:
        result = mine.compare(theirs, zoo.mlp()[1])
    assert result.ok and result.outputs[0]["b_name"] == "output_0"
    assert "inputs matched by position, their names differ: A's 'x' -> B's 'input_1'" in result.notes
    assert "outputs matched by position, their names differ: A's 'probs' -> B's 'output_0'" in result.notes
    assert "| probs / output_0 |" in result.table()


def test_bundles_from_export_load_in_this_process(model_files, tmp_path):
    """kerasio wrote every artifact of the bundle: it is the caller's own, like any export."""
    path, _, _ = model_files["mlp"]
    kerasio.export(path, tmp_path / "b", verify=False)  # the API takes the file too
    with kerasio.load(tmp_path / "b") as loaded:
        assert not loaded.isolated
    assert Path(kerasio.read_manifest(tmp_path / "b").training["exported_from"]["file"]) == path


def test_the_pipelines_stage_6_predicts_every_test_row_from_the_loaded_file(pipeline):
    """run_pipeline(...).prediction holds a label for each of the 200 test rows; their accuracy is the trained
    model's (the seed's stage 6)."""
    prediction = pipeline.prediction
    truth = [pipeline.dataset.class_names[int(y)] for y in pipeline.split.y_test]
    assert len(prediction["labels"]) == len(truth) == 200
    assert set(prediction["labels"]) <= set(pipeline.dataset.class_names)
    assert prediction["accuracy"] == pytest.approx(np.mean([a == b for a, b in zip(prediction["labels"], truth)]))
    assert prediction["equals_trained_accuracy"] and \
        prediction["accuracy"] == pytest.approx(pipeline.metrics["test_accuracy"], abs=1e-6)
    loaded = kerasio.load(pipeline.bundle)
    assert list(loaded.predict(pipeline.split.x_test)) == prediction["labels"]  # the file's own labels


@pytest.mark.parametrize("a,b", [("keras", "litert"), ("savedmodel", "h5")])
def test_compare_takes_any_two_formats(bundle, a, b, capsys):
    """A LiteRT file against its .keras, a SavedModel against an .h5: each pair agrees within the looser row."""
    assert main(["compare", str(named(bundle, a)), str(named(bundle, b)), "--rows", "16"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "agree: " in out and "16 rows" in out and f"({a}," in out and f"({b}," in out
