"""The verification and prediction worker's Landlock sandbox: a payload that slips past the audit (an op allowed
with --allow-op, a trusted pickle) still cannot write or read outside it. Each case has a control: the same
payload, run in this unsandboxed process, does write or read, so the sandbox is what stopped it."""
from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys

import pytest
from bundles import copy_bundle, named

import kerasio
from kerasio.bundle.fsutil import hash_artifact


def _landlock_abi() -> int:
    from kerasio.process.sandbox import abi_version

    try:
        return abi_version()
    except OSError as exc:  # pragma: no cover - only on kernels without Landlock
        pytest.skip(f"this kernel has no Landlock: {exc}")


@pytest.fixture(autouse=True)
def _needs_landlock():
    _landlock_abi()


def _swap_savedmodel(bundle, tmp_path, side_effect):
    """Replace the bundle's SavedModel by one with the same outputs plus ``side_effect``, and re-hash it."""
    import shutil

    import tensorflow as tf

    model = kerasio.load(bundle).model

    class Payload(tf.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, 10], tf.float32, name="features")])
        def serve(self, features):
            probabilities = self.model(features)
            return {"probabilities": side_effect(probabilities)}

    module = Payload()
    target = named(bundle, "savedmodel")
    shutil.rmtree(target)
    tf.saved_model.save(module, str(target), signatures={"serving_default": module.serve})
    manifest = json.loads((bundle / "kerasio.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["format"] == "savedmodel")
    art["sha256"], art["size"], art["files"] = hash_artifact(target)
    (bundle / "kerasio.json").write_text(json.dumps(manifest))
    return bundle


def test_verify_reports_the_sandbox(keras_bundle):
    report = kerasio.verify(keras_bundle, formats="keras", record=False)
    assert report.ok
    assert report.sandbox["tensorflow"].startswith(f"landlock ABI {_landlock_abi()}: writes only its temporary")
    assert "sandbox (tensorflow): landlock ABI" in report.table() and report.to_dict()["sandbox"] == report.sandbox
    assert kerasio.verify(keras_bundle, formats="keras", in_process=True, record=False).sandbox == {
        "tensorflow": "off: in-process verification"}


def test_an_allowed_write_op_cannot_write_outside_the_sandbox(keras_bundle, tmp_path, capsys):
    import tensorflow as tf

    canary = tmp_path / "outside" / "canary"
    canary.parent.mkdir()

    def write(probabilities):
        with tf.control_dependencies([tf.io.write_file(str(canary), "pwned")]):
            return tf.identity(probabilities)

    b = _swap_savedmodel(copy_bundle(keras_bundle, tmp_path / "b"), tmp_path, write)
    report = kerasio.verify(b, options=kerasio.VerifyOptions(allow_ops=["WriteFile"]), formats="savedmodel", record=False)
    assert not report.ok and "PermissionDeniedError" in report.checks[0].error, report.table()
    assert report.sandbox["tensorflow"].startswith("landlock")
    assert not canary.exists()  # the payload ran, and could not write
    rows = tmp_path / "rows.npy"
    import numpy as np

    np.save(rows, np.ones((2, 10), np.float32))
    out = subprocess.run([sys.executable, "-m", "kerasio", "predict", str(b), "--format", "savedmodel", "--allow-op",
                          "WriteFile", "--input", str(rows)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr[-2000:]
    assert "PermissionDeniedError" in out.stderr and "Traceback" not in out.stderr
    assert not canary.exists()
    # The control: the same artifact, verified in this unsandboxed process, does write.
    control = kerasio.verify(b, options=kerasio.VerifyOptions(allow_ops=["WriteFile"]), formats="savedmodel",
                             in_process=True, record=False, trust=True)
    assert control.ok and canary.exists()


def test_an_allowed_read_op_cannot_read_outside_the_sandbox(keras_bundle, tmp_path):
    import tensorflow as tf

    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t")

    def read(probabilities):
        return probabilities + 0.0 * tf.cast(tf.strings.length(tf.io.read_file(str(secret))), tf.float32)

    b = _swap_savedmodel(copy_bundle(keras_bundle, tmp_path / "b"), tmp_path, read)
    report = kerasio.verify(b, options=kerasio.VerifyOptions(allow_ops=["ReadFile"]), formats="savedmodel", record=False)
    assert not report.ok and "PermissionDeniedError" in report.checks[0].error, report.table()
    control = kerasio.verify(b, options=kerasio.VerifyOptions(allow_ops=["ReadFile"]), formats="savedmodel",
                             in_process=True, record=False, trust=True)
    assert control.ok  # here the read works: only the sandbox stopped it


class _Payload:
    """Unpickling this writes a file (the classic pickle attack), then yields nothing usable."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.path}",))


def test_a_trusted_pickle_cannot_write_outside_the_sandbox(keras_bundle, tmp_path):
    canary = tmp_path / "outside" / "canary"
    canary.parent.mkdir()
    b = copy_bundle(keras_bundle, tmp_path / "b")
    (b / "model.pkl").write_bytes(pickle.dumps(_Payload(canary)))
    manifest = json.loads((b / "kerasio.json").read_text())
    digest, size, _ = hash_artifact(b / "model.pkl")
    manifest["artifacts"].append({"format": "pickle", "path": "model.pkl", "size": size, "sha256": digest})
    (b / "kerasio.json").write_text(json.dumps(manifest))
    report = kerasio.verify(b, formats="pickle", trust=True, record=False)
    assert not report.ok and not canary.exists(), report.table()
    with pytest.raises(kerasio.errors.ArtifactError, match=r"model\.pkl: the pickle holds an object of type int, not a Keras "
                                                    r"model"):
        kerasio.load(b, format="pickle", trust=True)  # the control: in this process the payload runs
    assert canary.read_text().strip() == "pwned"


def test_sandbox_off_is_reported(keras_bundle, monkeypatch):
    monkeypatch.setenv("KERASIO_SANDBOX", "off")
    report = kerasio.verify(keras_bundle, formats="keras", record=False)
    assert report.ok and list(report.sandbox) == ["tensorflow"]
    assert report.sandbox["tensorflow"].startswith("off: KERASIO_SANDBOX=off; limits: memory ")  # limits stay on
