"""Devices, backends and the precision policy (the GPU half runs in benchmarks/gpu_check.sh)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kerasio
from kerasio.backends.base import precision_policy
from kerasio.backends.environment import resolve_devices

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def jax_report(bundle):
    pytest.importorskip("jax", reason="CI installs the jax extra; run pip install -e '.[jax]'")
    return kerasio.verify(bundle, options=kerasio.VerifyOptions(backend="jax"),
                          formats=["keras", "h5", "weights", "savedmodel", "onnx"], record=False)


def test_jax_backend_verifies_a_tensorflow_trained_bundle(jax_report):
    assert jax_report.ok, jax_report.table()
    by_format = {c.format: c for c in jax_report.checks}
    for fmt in ("keras", "h5", "weights"):
        assert by_format[fmt].backend == "jax" and by_format[fmt].runtime == "keras/jax"
        assert by_format[fmt].atol == 1e-6 and by_format[fmt].argmax_agreement == 1.0
    # Runtime-bound formats stay with their own runtime, and the report says so.
    assert by_format["savedmodel"].backend == "tensorflow"
    assert by_format["onnx"].runtime == "onnxruntime"


def test_jax_cli(bundle):
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, "-m", "kerasio", "verify", str(bundle), "--backend", "jax", "--format",
                          "keras", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["checks"][0]["backend"] == "jax" and report["checks"][0]["status"] == "PASS"


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_other_backend_verifies_loads_and_predicts(bundle, backend):
    """A TensorFlow-trained bundle, on JAX and on PyTorch: verified, then loaded and predicted on the CPU device.

    PyTorch once failed at ``load`` only (its CPU named ``cpu:0``), while ``verify`` passed.
    """
    pytest.importorskip(backend, reason="CI installs the jax and torch extras")
    code = (
        "import json, sys, kerasio\n"
        "report = kerasio.verify(sys.argv[1], formats=['keras', 'h5', 'weights'], in_process=True, "
        "options=kerasio.VerifyOptions(device='cpu'), "
        "record=False)\n"
        "loaded = kerasio.load(sys.argv[1], device='cpu')\n"
        "x = kerasio.read_manifest(sys.argv[1]).reference_arrays(sys.argv[1])[0]['features']\n"
        "print(json.dumps({'ok': report.ok, 'backends': sorted({c.backend for c in report.checks}),"
        " 'diff': max(c.max_abs_diff for c in report.checks), 'runtime': loaded.runner.runtime,"
        " 'labels': [str(v) for v in kerasio.predict(loaded, x)]}))\n")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": backend})
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["ok"] and found["backends"] == [backend] and found["diff"] <= 1e-6
    assert found["runtime"] == f"keras/{backend}"
    manifest = kerasio.read_manifest(bundle)
    x = manifest.reference_arrays(bundle)[0]["features"]
    assert found["labels"] == [str(v) for v in kerasio.predict(kerasio.load(bundle), x)]


def test_without_tensorflow(bundle):
    """import kerasio and .keras verification work where only Keras + JAX are installed."""
    pytest.importorskip("jax")
    out = subprocess.run([sys.executable, str(HERE / "no_tensorflow.py"), str(bundle)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["tensorflow_imported"] is False
    assert found["keras_ok"] is True and found["backends"] == ["jax"] and found["max_abs_diff"] <= 1e-6
    assert "the savedmodel artifact needs tensorflow, which cannot be imported here" in found["savedmodel_error"]
    assert len(found["labels"]) == 3


def test_report_records_pinned_precision(bundle):
    report = kerasio.verify(bundle, formats="keras,savedmodel", in_process=True, record=False)
    assert {c.precision for c in report.checks} == {"float32-pinned"}
    assert all(c.device == "cpu" and c.device_name for c in report.checks)
    fast = kerasio.verify(bundle, options=kerasio.VerifyOptions(precision="fast"), formats="keras", in_process=True, record=False)
    assert fast.checks[0].precision == "tf32-allowed"


def test_precision_policy_sets_and_restores_tensorflow_flag():
    import tensorflow as tf

    tf.config.experimental.enable_tensor_float_32_execution(True)
    with precision_policy("highest", "tensorflow") as mode:
        assert mode == "float32-pinned"
        assert tf.config.experimental.tensor_float_32_execution_enabled() is False
    assert tf.config.experimental.tensor_float_32_execution_enabled() is True
    with precision_policy("fast", "tensorflow") as mode:
        assert mode == "tf32-allowed" and tf.config.experimental.tensor_float_32_execution_enabled() is True
    with pytest.raises(ValueError, match="precision must be one of"):
        with precision_policy("half", "tensorflow"):
            pass


def test_precision_policy_for_jax():
    jax = pytest.importorskip("jax")
    with precision_policy("highest", "jax"):
        assert jax.config.jax_default_matmul_precision == "highest"
    with precision_policy("fast", "jax"):
        assert jax.config.jax_default_matmul_precision == "tensorfloat32"


def test_devices_on_a_cpu_machine(bundle):
    from kerasio.formats import REGISTRY

    seen = REGISTRY["keras"].available_devices("tensorflow")
    assert seen == ["cpu"] and REGISTRY["litert"].available_devices("tensorflow") == ["cpu"]
    assert resolve_devices("auto", seen) == ["cpu"] and resolve_devices("all", seen) == ["cpu"]
    assert resolve_devices("auto", ["cpu", "gpu"]) == ["gpu"]
    with pytest.raises(kerasio.errors.BackendUnavailableError, match="sees no GPU here. Use --device auto or cpu"):
        resolve_devices("gpu", seen, runtime="keras")
    report = kerasio.verify(bundle, options=kerasio.VerifyOptions(device="all"), formats="keras", in_process=True, record=False)
    assert [c.device for c in report.checks] == ["cpu"] and report.checks[0].device_drift is None
    gpu = kerasio.verify(bundle, options=kerasio.VerifyOptions(device="gpu"), formats="keras", in_process=True, record=False)
    assert not gpu.ok and "sees no GPU here" in gpu.checks[0].error


def test_default_backend_is_read_without_importing_keras(monkeypatch):
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    code = "import sys, kerasio.backends.environment as r; print(r.default_backend(), 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ})
    assert out.stdout.split() == ["jax", "False"]


def test_gpu_check_script_runs_to_completion_on_cpu(bundle, tmp_path):
    """benchmarks/gpu_check.sh is the prepared GPU run; without a GPU it must still finish (--device auto)."""
    pytest.importorskip("jax")
    root = HERE.parent
    # A small throughput batch: this checks that the script runs, not how fast (benchmarks/ measure that).
    env = {**os.environ, "BUNDLE": str(bundle), "OUT": str(tmp_path), "PYTHON": sys.executable, "ROWS": "2000",
           "CALLS": "1"}
    out = subprocess.run(["bash", str(root / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device_requested"] == "auto"
    jax_run = next(r for r in summary["runs"] if r.get("backend") == "jax")
    assert jax_run["verify_ok"] and {c["format"] for c in jax_run["checks"]} == {"keras", "h5", "weights"}
    assert all(c["precision"] == "float32-pinned" for c in jax_run["checks"])
    assert jax_run["throughput"]["cpu"]["rows_per_s"] > 0 and jax_run["throughput"]["cpu"]["rows"] == 2000
