"""Hostile or corrupt files in every format, each re-hashed into the manifest so that the format's own loader
meets them, through every surface: the API, verify (fresh process), predict (the sandboxed worker) and inspect.
Each case asserts the kerasio error type and message; no surface may print a traceback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from bundles import copy_bundle, named

import kerasio
from kerasio.bundle.fsutil import hash_artifact
from kerasio.cli import main


def _rehash(bundle, fmt):
    """Record the (altered) artifact's current hashes in the manifest: integrity passes, the loader decides."""
    manifest = json.loads((bundle / "kerasio.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == fmt)
    art["sha256"], art["size"], art["files"] = hash_artifact(bundle / art["path"])
    (bundle / "kerasio.json").write_text(json.dumps(manifest))


def _garbage(path):
    path.unlink()
    path.write_bytes(b"\x00garbage\xff" * 64)


def _truncate(path):
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 3])


def _onnx_fails_at_run_time(path):
    """A valid ONNX graph whose Reshape cannot hold the data: onnxruntime fails when it runs, not when it loads."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    for node in graph.node:  # the node that produced the output now feeds a Reshape that produces it
        node.output[:] = [f"{out}_before" if name == out else name for name in node.output]
    graph.initializer.append(helper.make_tensor("bad_shape", TensorProto.INT64, [2], [7, 5]))
    graph.node.append(helper.make_node("Reshape", [f"{out}_before", "bad_shape"], [out]))
    path.unlink()
    onnx.save(model, str(path))


def _weights_without_architecture(path):
    (path / "architecture.json").unlink()


def _weights_garbage(path):
    _garbage(path / "model.weights.h5")


def _h5_empty_model(path):
    import h5py

    path.unlink()
    with h5py.File(path, "w") as f:
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": 7}})


CASES = {
    # format: [(id, how to break it, error type, message regex)]
    "keras": [("garbage", _garbage, kerasio.errors.ArtifactError, r"model\.keras: not a valid \.keras archive"),
              ("truncated", _truncate, kerasio.errors.ArtifactError, r"model\.keras: not a valid \.keras archive")],
    "h5": [("garbage", _garbage, kerasio.errors.ArtifactError, r"model\.h5: not a readable HDF5 file; re-export it"),
           ("bad-config", _h5_empty_model, kerasio.errors.ArtifactError, r"model\.h5: ")],
    "weights": [("no-architecture", _weights_without_architecture, kerasio.errors.ArtifactError,
                 r"weights.*architecture\.json"),
                ("garbage-weights", _weights_garbage, kerasio.errors.ArtifactError, r"weights")],
    "onnx": [("garbage", _garbage, kerasio.errors.ArtifactError, r"model\.onnx: "),
             ("fails-at-run-time", _onnx_fails_at_run_time, kerasio.errors.ArtifactError,
              r"model\.onnx: onnxruntime failed to run the onnx artifact")],
    "litert": [("garbage", _garbage, kerasio.errors.ArtifactError, r"model\.tflite: "),
               ("truncated", _truncate, kerasio.errors.ArtifactError, r"model\.tflite: ")],
    "savedmodel": [("garbage-graph", lambda p: _garbage(p / "saved_model.pb"), kerasio.errors.ArtifactError,
                    r"serving/\d+/saved_model\.pb: not a readable SavedModel proto"),
                   ("no-variables", lambda p: shutil.rmtree(p / "variables"), kerasio.errors.ArtifactError, r"serving/\d+")],
}
PARAMS = [pytest.param(fmt, how, kind, match, id=f"{fmt}-{name}") for fmt, cases in CASES.items()
          for name, how, kind, match in cases]


@pytest.fixture(scope="module")
def rows(tmp_path_factory, bundle):
    path = tmp_path_factory.mktemp("rows") / "rows.npy"
    np.save(path, kerasio.read_manifest(bundle).reference_arrays(bundle)[0]["features"][:3])
    return path


@pytest.mark.parametrize("fmt, how, kind, match", PARAMS)
def test_a_broken_artifact_is_a_kerasio_error_on_every_surface(bundle, tmp_path, rows, capsys, fmt, how, kind,
                                                               match):
    b = copy_bundle(bundle, tmp_path / "b")
    target = named(b, fmt)
    how(target)
    _rehash(b, fmt)
    # The API: load, or (for errors that appear only when the artifact runs) predict; in this process (trusted), so
    # that the format's own loader meets the file (the untrusted path is the CLI's, below).
    with pytest.raises(kind, match=match):
        kerasio.predict(kerasio.load(b, format=fmt, trust=True), np.load(rows))
    # verify, in a fresh (sandboxed) worker: a FAIL row that names the cause, exit code 1, no traceback.
    assert main(["verify", str(b), "--format", fmt, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["checks"][0]["status"] == "FAIL" and report["checks"][0]["error"], report
    assert "Traceback" not in report["checks"][0]["error"]
    # predict, through the sandboxed worker: one line on stderr, exit code 2.
    assert main(["predict", str(b), "--format", fmt, "--input", str(rows)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kerasio: error: ") and "Traceback" not in err[0], err
    # inspect reads only the manifest: it still works.
    assert main(["inspect", str(b)]) == 0


def test_unknown_fields_inside_an_artifact_entry_are_ignored_with_a_warning(bundle_copy):
    """A newer kerasio may add fields to artifact entries; this one warns once and goes on (forward compatibility)."""
    manifest = json.loads((bundle_copy / "kerasio.json").read_text())
    manifest["artifacts"][0]["compression"] = "zstd"
    (bundle_copy / "kerasio.json").write_text(json.dumps(manifest))
    with pytest.warns(kerasio.errors.ManifestWarning, match=r"compression"):
        loaded = kerasio.load(bundle_copy)
    assert loaded.sha256 == manifest["artifacts"][0]["sha256"]


def test_an_empty_manifest_and_a_symlinked_generations_directory(bundle, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    outside = tmp_path / "outside"
    shutil.move(b / "generations", outside)
    os.symlink(outside, b / "generations")  # every artifact path now goes through a link out of the bundle
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"generations: is a symbolic link; kerasio never follows "
                                                          r"links out of a bundle"):
        kerasio.load(b)
    (b / "kerasio.json").unlink()
    (b / "kerasio.json").write_bytes(b"")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"kerasio\.json: not valid JSON"):
        kerasio.read_manifest(b)


def test_a_manifest_naming_a_generation_that_is_gone(bundle, tmp_path):
    b = copy_bundle(bundle, tmp_path / "b")
    shutil.rmtree(b / "generations")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"generations: artifact 'keras' listed in the manifest is "
                                                    r"missing\. Re-export the bundle"):
        kerasio.load(b)
    out = subprocess.run([sys.executable, "-m", "kerasio", "verify", str(b), "--format", "keras"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and "Traceback" not in out.stdout + out.stderr
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "listed in the manifest is missing" in err[0], err
