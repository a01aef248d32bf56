"""Hostile or corrupt manifests and reference arrays: every one a clear ArtifactError naming the field, never a traceback."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.bundle.layout import MANIFEST_NAME
from kerasio.bundle.manifest import hash_entry
from kerasio.cli import main


@pytest.fixture
def hostile(keras_bundle, tmp_path):
    """A copy of a good bundle and a function that rewrites its manifest."""
    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)

    def rewrite(change):
        data = json.loads((b / MANIFEST_NAME).read_text())
        change(data)
        (b / MANIFEST_NAME).write_text(json.dumps(data))
        return b

    return rewrite


def _set(path, value):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _drop(path):
    def change(data):
        node = data
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
    return change


CASES = [
    (_set(["artifacts"], "model.keras"), r"field 'artifacts' must be a list"),
    (_set(["artifacts", 0, "size"], "44624"), r"field 'artifacts\[0\]\.size' must be an integer"),
    (_set(["artifacts", 0, "size"], True), r"field 'artifacts\[0\]\.size' must be an integer"),
    (_set(["artifacts", 0, "sha256"], "abc"), r"field 'artifacts\[0\]\.sha256' must be a sha256"),
    (_drop(["artifacts", 0, "path"]), r"required field 'artifacts\[0\]\.path' is missing"),
    (_set(["artifacts", 0, "path"], 7), r"field 'artifacts\[0\]\.path' must be a string"),
    (_drop(["signature"]), r"required field 'signature' is missing"),
    (_set(["signature", "inputs", 0, "shape"], "10"), r"field 'signature\.inputs\[0\]\.shape' must be a list"),
    (_set(["signature", "inputs", 0, "shape", 1], -3), r"field 'signature\.inputs\[0\]\.shape\[1\]' must be a dimension"),
    (_set(["signature", "inputs"], []), r"field 'signature' must be a signature with at least one input"),
    (_set(["signature", "input_structure"], "tuple"), r"field 'signature\.input_structure' must be one of single"),
    (_set(["task", "class_names"], "abc"), r"field 'task\.class_names' must be a list"),
    (_set(["task", "class_names"], ["a", "b"]), r"field 'task\.class_names' must be one name per class of output "
                                                r"'probabilities' \(3\)"),
    (_set(["task", "output"], "logits"), r"field 'task\.output' must be one of the signature's outputs"),
    (_set(["signature", "feature_names"], ["a"]), r"field 'signature\.feature_names' must be one name per column"),
    (_set(["reference", "outputs"], {"path": "reference_outputs.npz"}),
     r"required field 'reference\.outputs\.sha256' is missing"),
    (_set(["metrics", "test_accuracy"], "high"), r"field 'metrics\.test_accuracy' must be a number"),
    (_set(["skipped", "onnx"], 3), r"field 'skipped\.onnx' must be a string"),
    (_set(["schema_version"], "2"), r"schema_version '2' is not supported"),
    (_set(["schema_version"], 3), r"schema_version 3 is not supported by this kerasio"),
]


@pytest.mark.parametrize("change, match", CASES, ids=[m.split("'")[1] if "'" in m else m[:20] for _, m in CASES])
def test_malformed_manifest_is_a_clear_error_on_every_surface(hostile, capsys, change, match):
    b = hostile(change)
    for call in (kerasio.read_manifest, kerasio.load, kerasio.verify):
        with pytest.raises(kerasio.errors.ArtifactError, match=match):
            call(b)
    with pytest.raises(kerasio.errors.ArtifactError, match=match):
        kerasio.predict(b, np.zeros((1, 10), np.float32))
    for argv in (["inspect", str(b)], ["verify", str(b)], ["predict", str(b), "--input", str(b / "kerasio.json")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("kerasio: error: ") and "Traceback" not in err[0]


@pytest.mark.parametrize("root", ["[]", '"bundle"', "null", "{", "\x00\x01"])
def test_manifest_that_is_not_an_object(hostile, root):
    b = hostile(lambda data: None)
    (b / MANIFEST_NAME).write_text(root)
    with pytest.raises(kerasio.errors.ArtifactError, match=r"kerasio\.json: (not valid JSON|the manifest is not a JSON object)"):
        kerasio.read_manifest(b)


def test_deeply_nested_manifest(hostile):
    b = hostile(lambda data: None)
    (b / MANIFEST_NAME).write_text('{"schema_version": 2, "training": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"nested too deeply to parse|nested more than 64 levels"):
        kerasio.read_manifest(b)
    (b / MANIFEST_NAME).write_text('{"schema_version": 2, "training": ' + "[" * 100 + "]" * 100 + "}")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"nested more than 64 levels deep"):
        kerasio.read_manifest(b)


def test_unknown_fields_are_ignored_with_one_warning(hostile):
    b = hostile(_set(["provenance"], {"signed_by": "a future kerasio"}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = kerasio.verify(b, formats="keras", in_process=True, record=False, trust=True)
    assert report.ok
    notes = [w for w in caught if issubclass(w.category, kerasio.errors.ManifestWarning)]
    assert len(notes) == 1 and "['provenance']" in str(notes[0].message)


def _replace_reference(b, name, payload: bytes):
    (b / name).write_bytes(payload)
    data = json.loads((b / MANIFEST_NAME).read_text())
    key = {"reference_inputs.npz": "inputs", "reference_outputs.npz": "outputs"}[name]
    data["reference"][key] = hash_entry(b, name)
    (b / MANIFEST_NAME).write_text(json.dumps(data))


def _npz(**arrays) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_reference_arrays_that_lie_are_refused(hostile):
    import io
    import zipfile

    b = hostile(lambda data: None)
    good = np.zeros((200, 10), np.float32)
    # 1. an object array: would need pickle
    _replace_reference(b, "reference_inputs.npz", _npz(features=np.array([object()] * 3, dtype=object)))
    with pytest.raises(kerasio.errors.ArtifactError, match=r"array 'features\.npy': holds Python objects"):
        kerasio.verify(b, in_process=True)
    # 2. a header that claims 36 TiB
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**7, 10**6)})
    blob = io.BytesIO()
    with zipfile.ZipFile(blob, "w") as z:
        z.writestr("features.npy", np.lib.format.MAGIC_PREFIX + b"\x01\x00" + header.getvalue()[8:] + b"\0" * 64)
    _replace_reference(b, "reference_inputs.npz", blob.getvalue())
    with pytest.raises(kerasio.errors.ArtifactError, match=r"header claims \d+ bytes of data .* truncated or forged"):
        kerasio.verify(b, in_process=True)
    # 3. truncated
    _replace_reference(b, "reference_inputs.npz", _npz(features=good)[:-500])
    with pytest.raises(kerasio.errors.ArtifactError, match=r"reference_inputs\.npz: unreadable reference arrays"):
        kerasio.verify(b, in_process=True)
    # 4. the wrong shape for the signature
    _replace_reference(b, "reference_inputs.npz", _npz(features=np.zeros((200, 9), np.float32)))
    with pytest.raises(kerasio.errors.ArtifactError, match=r"array 'features' is float32\[200, 9\], which does not match the "
                                                    r"signature's features: float32\[None, 10\]"):
        kerasio.verify(b, in_process=True)
    # 5. the wrong number of rows
    _replace_reference(b, "reference_inputs.npz", _npz(features=np.zeros((199, 10), np.float32)))
    with pytest.raises(kerasio.errors.ArtifactError, match=r"199 rows, but the manifest records 200"):
        kerasio.verify(b, in_process=True)


def test_control_characters_never_reach_the_terminal(hostile, capsys):
    b = hostile(_set(["label"], "species\x1b[2J\x1b]0;pwned\x07"))
    assert main(["inspect", str(b)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "species\\x1b[2J" in out
    b = hostile(_set(["artifacts", 0, "sha256"], "\x1b[31m" + "0" * 59))
    assert main(["verify", str(b)]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[31m" in err
