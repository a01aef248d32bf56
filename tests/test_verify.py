"""Stage 5: every artifact reloaded in a fresh process and compared with the original."""
from __future__ import annotations

import json

import numpy as np
import pytest

import kerasio
from kerasio.formats import REGISTRY
from kerasio.manifest import MANIFEST_NAME, hash_entry
from kerasio.tolerances import TOLERANCES, markdown_table, tolerance_for
from kerasio.verify import VERIFICATION_FILE, compare


@pytest.fixture(scope="module")
def report(bundle):
    """Fresh-process verification of every format in the session bundle."""
    return kerasio.verify(bundle, trust_pickle=True)


@pytest.mark.parametrize("fmt", sorted(REGISTRY))
def test_each_format_verifies_in_a_fresh_process(report, fmt):
    check = next(c for c in report.checks if c.format == fmt)
    assert check.passed, check
    assert check.argmax_agreement == 1.0
    assert check.max_abs_diff <= tolerance_for(fmt, check.backend, "cpu").atol
    assert check.precision == "float32-pinned" and check.device == "cpu"
    assert report.mode == "fresh-process"


def test_runtimes_are_the_real_consumers(report):
    runtimes = {c.format: c.runtime for c in report.checks}
    assert runtimes["savedmodel"] == "tensorflow"
    assert runtimes["onnx"] == "onnxruntime"
    assert runtimes["litert"] == "litert"
    assert runtimes["keras"] == "keras/tensorflow"


def test_same_cpu_round_trips_are_bit_identical(report):
    for c in report.checks:
        if c.format in ("keras", "h5", "weights", "pickle"):
            assert c.max_abs_diff == 0.0, c.format


def test_report_renders(report, bundle):
    table = report.table()
    assert [h.strip() for h in table.splitlines()[0].split("|")[1:3]] == ["Format", "Artifact"]
    assert "bit-identical" in table and "PASS" in table
    frame = report.to_frame()
    assert set(frame["format"]) == set(REGISTRY) and frame["passed"].all()
    data = json.loads(report.to_json())
    assert data["ok"] is True and len(data["checks"]) == len(REGISTRY)
    recorded = json.loads((bundle / VERIFICATION_FILE).read_text())
    assert recorded["ok"] is True


def test_in_process_matches(bundle):
    rep = kerasio.verify(bundle, formats=["keras", "savedmodel"], in_process=True, record=False)
    assert rep.ok and rep.mode == "in-process"


def test_one_changed_byte_fails_verify_and_load(keras_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(keras_bundle, b)
    path = b / "model.keras"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(kerasio.IntegrityError, match=r"model\.keras: sha256 .* does not match .* nothing was loaded"):
        kerasio.load(b)
    with pytest.raises(kerasio.IntegrityError, match=r"model\.keras: sha256"):
        kerasio.load(path)  # a bare file inside a bundle is checked against its manifest too
    rep = kerasio.verify(b, in_process=True, record=False)
    bad = [c for c in rep.checks if not c.passed]
    assert [c.format for c in bad] == ["keras"] and "does not match" in bad[0].error
    with pytest.raises(kerasio.VerificationError, match=r"model\.keras \(keras\): .*does not match"):
        rep.raise_for_failure()


def test_changed_file_inside_savedmodel_is_named(keras_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(keras_bundle, b)
    target = next((b / "serving/1/variables").glob("variables.data-*"))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(kerasio.IntegrityError, match=r"serving/1/variables/variables\.data-.*does not match"):
        kerasio.load(b, format="savedmodel")


def test_reduced_precision_reference_fails_strict_tolerance(keras_bundle, tmp_path):
    """Reference outputs from a bfloat16 run must not pass the float32 tolerances."""
    import shutil

    import ml_dtypes

    b = tmp_path / "b"
    shutil.copytree(keras_bundle, b)
    manifest = kerasio.read_manifest(b)
    x, y = manifest.reference_arrays(b)
    low = y.astype(ml_dtypes.bfloat16).astype(np.float32)  # what a reduced-precision run stores
    np.save(b / "reference_outputs.npy", low)
    manifest.reference["outputs"] = hash_entry(b, "reference_outputs.npy")
    manifest.write(b)
    rep = kerasio.verify(b, formats="keras", in_process=True, record=False)
    check = rep.checks[0]
    assert not check.passed and not check.error, check.error
    assert check.max_abs_diff > 1e-4
    with pytest.raises(kerasio.VerificationError, match=r"max abs diff \d\.\d\de-0\d exceeds tolerance 0"):
        rep.raise_for_failure()


def test_tampered_reference_is_refused(keras_bundle, tmp_path):
    import shutil

    b = tmp_path / "b"
    shutil.copytree(keras_bundle, b)
    np.save(b / "reference_outputs.npy", np.zeros((200, 3), np.float32))
    with pytest.raises(kerasio.IntegrityError, match="reference_outputs.npy: sha256"):
        kerasio.verify(b, in_process=True)


def test_verify_unknown_and_missing_format(keras_bundle):
    with pytest.raises(kerasio.ArtifactError, match=r"no 'onnx' artifact; it has \['keras', 'savedmodel'\]"):
        kerasio.verify(keras_bundle, formats="onnx")


def test_not_a_bundle(tmp_path):
    with pytest.raises(kerasio.ArtifactError, match=rf"not a kerasio bundle \(no {MANIFEST_NAME}\)"):
        kerasio.verify(tmp_path)


def test_compare_measures():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    act = np.array([[0.7, 0.25, 0.05], [0.5, 0.1, 0.4]])
    max_abs, max_rel, agree = compare(ref, act)
    assert max_abs == pytest.approx(0.4) and agree == 0.5 and max_rel == pytest.approx(4.0)


def test_tolerance_table_rules():
    assert tolerance_for("keras", "tensorflow", "cpu").atol == 0.0
    assert tolerance_for("savedmodel", "tensorflow", "cpu").atol == 1e-6
    assert tolerance_for("keras", "jax", "cpu").atol == 1e-6
    assert tolerance_for("keras", "tensorflow", "gpu").atol == 1e-5
    assert all(t.reason for t in TOLERANCES)
    assert "| keras | tensorflow | cpu | 0 (bit-identical) |" in markdown_table()


def test_readme_tolerance_table_is_current():
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme
