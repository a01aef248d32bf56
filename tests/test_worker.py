"""A verifying worker that dies or hangs becomes one clear error, and the remaining checks go on in a new one."""
from __future__ import annotations

import pytest

import kerasio
from kerasio.cli import main
from kerasio.process.client import Worker
from kerasio.process.protocol import WarmRequest

# Imported by the worker (verify(imports=...)): it misbehaves once, while the marker file exists.
MISBEHAVING = '''
import os, pathlib, time
marker = pathlib.Path(os.environ["KERASIO_TEST_MARKER"])
if marker.exists():
    marker.unlink()
    if os.environ.get("KERASIO_TEST_HANG"):
        time.sleep(120)
    else:
        os._exit(3)
'''


@pytest.fixture
def misbehaving(tmp_path, monkeypatch):
    (tmp_path / "misbehaving_module.py").write_text(MISBEHAVING)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = tmp_path / "marker"
    marker.write_text("once")
    monkeypatch.setenv("KERASIO_TEST_MARKER", str(marker))
    # The module removes its marker, outside the worker's own directory: the sandbox would refuse that (and the
    # module would then raise instead of dying). These tests are about a dying worker, not the sandbox.
    monkeypatch.setenv("KERASIO_SANDBOX", "off")
    return marker


def test_a_worker_that_dies_is_reported_and_replaced(keras_bundle, misbehaving):
    report = kerasio.verify(keras_bundle, options=kerasio.VerifyOptions(imports=["misbehaving_module"]), record=False)
    first, second = report.checks
    assert first.error_type == "WorkerError" and not first.passed
    assert "the verification worker (backend tensorflow) died during its warm (exit code 3); the remaining " \
           "checks run in a new one" in first.error
    assert "\n" not in first.error  # one line
    assert second.passed, second.error  # the savedmodel check ran in a fresh worker
    assert report.worker_failure() == first.error


def test_cli_exits_2_with_one_line_when_the_worker_dies(keras_bundle, misbehaving, capsys):
    assert main(["verify", str(keras_bundle), "--import", "misbehaving_module"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kerasio: error: the verification worker (backend tensorflow) died")


def test_a_hung_worker_is_stopped_after_the_timeout(keras_bundle, misbehaving, monkeypatch):
    monkeypatch.setenv("KERASIO_TEST_HANG", "1")
    monkeypatch.setenv("KERASIO_WORKER_TIMEOUT", "20")
    report = kerasio.verify(keras_bundle, options=kerasio.VerifyOptions(imports=["misbehaving_module"]), record=False)
    first, second = report.checks
    assert first.error_type == "WorkerError"
    assert "gave no answer to its warm in 20 s and was stopped" in first.error
    assert second.passed, second.error


def test_a_request_to_a_killed_worker_is_a_worker_error_not_a_broken_pipe():
    worker = Worker(None)
    try:
        worker.request(WarmRequest())
        worker.proc.kill()
        worker.proc.wait()
        with pytest.raises(kerasio.errors.WorkerError,
                           match=r"died during a warm request \(exit code -9\).*Its last words: no output"):
            worker.request(WarmRequest())
    finally:
        worker.close()


LEAN_START = '''
import json, sys
import numpy as np
from kerasio.process.server import handle
assert handle({"op": "warm", "modules": ["keras"]}) == {"ok": True}
skipped = [m for m in ("matplotlib", "jax", "torch") if m in sys.modules]
import keras
handle({"op": "warm", "modules": ["plots_things"]})  # a module the caller named, as verify(imports=...) does
print(json.dumps({"skipped_but_imported": skipped, "named_module": "plots_things" in sys.modules,
                  "predicts": keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]).predict_on_batch(
                      np.ones((1, 2), "float32")).shape == (1, 1)}))
'''


def test_the_worker_starts_keras_lean_and_a_named_module_still_imports_anything(tmp_path):
    """The runtime's warm import skips the optional packages Keras and TensorFlow pull in (matplotlib, and JAX and
    torch when they are not the backend); a custom-layer module the caller names may still import them."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    (tmp_path / "plots_things.py").write_text("import matplotlib\nimport matplotlib.pyplot\n")
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", LEAN_START], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"skipped_but_imported": [], "named_module": True,
                                                              "predicts": True}
