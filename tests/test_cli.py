"""The kerasio command: subcommands, one-line errors with exit 2, no TensorFlow at start-up."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from bundles import copy_bundle

import kerasio
from kerasio.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, env=None, cwd=None):
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "kerasio", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd or ROOT, timeout=600)


def test_help_does_not_import_tensorflow():
    code = ("import sys, runpy; sys.argv=['kerasio','--help']\n"
            "try:\n    runpy.run_module('kerasio.cli', run_name='__main__')\nexcept SystemExit: pass\n"
            "print('TF' if 'tensorflow' in sys.modules or 'keras' in sys.modules else 'CLEAN')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert "usage: kerasio" in out.stdout and out.stdout.strip().endswith("CLEAN")


def test_import_kerasio_does_not_import_tensorflow():
    code = "import sys, kerasio; print(sorted(m for m in ('tensorflow', 'keras', 'jax', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_inspect_does_not_import_tensorflow(bundle):
    code = ("import sys; from kerasio.cli import main; rc = main(['inspect', sys.argv[1]]);"
            "print('TF' if 'tensorflow' in sys.modules else 'CLEAN', rc)")
    out = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip().endswith("CLEAN 0"), out.stderr
    for fmt in ("keras", "savedmodel", "h5", "weights", "onnx", "litert", "openvino", "torch", "pickle"):
        assert f"| {fmt}" in out.stdout
    text = " ".join(out.stdout.split())  # the notes are wrapped at 100 columns
    assert "serving_default(features: float32[None,10]) -> class_id: int64[None], probabilities: float32[None,3]" \
        in text
    assert "predict_labels(features: float32[None,10]) -> labels: string[None]" in text
    assert "| Epoch | Loss ↓ | Accuracy ↑" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 100


def test_run_verify_predict_end_to_end(tmp_path):
    out = tmp_path / "seed"
    res = run_cli("run", "--out", str(out), "--epochs", "2")
    assert res.returncode == 0, res.stderr
    for stage in ("[1/6] data", "[2/6] split", "[3/6] train", "[4/6] export", "[5/6] verify", "[6/6] predict"):
        assert stage in res.stdout
    assert "model loaded from" in res.stdout and "PASS" in res.stdout and "FAIL" not in res.stdout
    text = res.stdout  # each artifact's line as it is written, each check's as it completes, then the tables
    wrote, checked = text.index("keras      wrote model.keras in"), text.index("keras      checked: PASS on cpu")
    assert text.index("[4/6] export") < wrote < checked < text.index("| Format     | Path")
    too_wide = [line for line in res.stdout.splitlines() if len(line) > 100]
    assert too_wide == []  # every table, chart and stage line fits in 100 columns
    assert (out / "serving" / "1" / "saved_model.pb").is_file()
    # stage 6: the loaded file predicts every test row; their accuracy is the trained model's
    stage6 = text[text.index("[6/6] predict"):]
    assert stage6.startswith("[6/6] predict  200 test rows with the loaded keras artifact")
    labels = re.search(r"\n {9}200 labels: \[(?:setosa|versicolor|virginica)(?:, (?:setosa|versicolor|virginica)){4,}, "
                       r"\.\.\.\]\n", stage6)
    assert labels, stage6
    said = re.search(r"accuracy (\d\.\d{4}) from these predictions; the trained model's test accuracy (\d\.\d{4}): "
                     r"equal", stage6)
    assert said and said.group(1) == said.group(2), stage6
    assert "trace: input [sepal_length=" in stage6 and "-> model loaded from" in stage6 and "-> predicted" in stage6

    res = run_cli("verify", str(out), "--json")
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["ok"] and {c["format"] for c in report["checks"]} == {"keras", "savedmodel"}

    manifest = kerasio.read_manifest(out)
    rows = pd.DataFrame(np.load(out / "reference_inputs.npz")["features"][:4], columns=manifest.feature_names)
    rows["species"] = "?"
    rows.to_csv(tmp_path / "new.csv", index=False)
    res = run_cli("predict", str(out), "--input", str(tmp_path / "new.csv"), "--output", str(tmp_path / "p.csv"))
    assert res.returncode == 0, res.stderr
    pred = pd.read_csv(tmp_path / "p.csv")
    assert list(pred.columns) == ["label"] + [f"p_{c}" for c in manifest.class_names]
    assert set(pred["label"]) <= set(manifest.class_names)
    assert np.allclose(pred.iloc[:, 1:].sum(1), 1, atol=1e-5)


def test_same_seed_same_weights_across_runs(tmp_path):
    """Reproducible: two CLI runs with one seed write bit-identical weights."""

    weights = []
    for name in ("a", "b"):
        res = run_cli("run", "--out", str(tmp_path / name), "--epochs", "2", "--no-verify", "--seed", "7")
        assert res.returncode == 0, res.stderr
        loaded = kerasio.load(tmp_path / name)
        weights.append(loaded.model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    assert main(["run", "--data", str(tmp_path / "none.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kerasio: error: ") and "none.csv: no such file" in err
    assert "Traceback" not in err

    assert main(["verify", str(tmp_path)]) == 2
    assert "not a kerasio bundle" in capsys.readouterr().err


def test_cli_error_from_subprocess_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,x,c\n2,3,d\n")
    res = run_cli("run", "--data", str(bad), "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.strip() == (f"kerasio: error: {bad}: column 'b' is not numeric (data row 1 holds 'x'). "
                                  "Convert it to numbers or drop the column.")
    assert not (tmp_path / "o").exists()


def test_verify_failure_exits_1(keras_bundle, tmp_path, capsys):

    b = tmp_path / "b"
    copy_bundle(keras_bundle, b)
    data = bytearray((b / "model.keras").read_bytes())
    data[100] ^= 0xFF
    (b / "model.keras").write_bytes(bytes(data))
    assert main(["verify", str(b), "--in-process", "--format", "keras"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "does not match" in captured.out
    assert "verification failed for generations/1/model.keras" in captured.err


def test_predict_wrong_columns_exit_2(keras_bundle, tmp_path, capsys):
    (tmp_path / "rows.csv").write_text("x,y\n1,2\n")
    assert main(["predict", str(keras_bundle), "--input", str(tmp_path / "rows.csv")]) == 2
    assert "missing feature column(s) ['sepal_length'" in capsys.readouterr().err


def test_own_csv_with_label(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 4))
    y = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    frame = pd.DataFrame(x, columns=list("abcd"))
    frame["target"] = y
    frame.to_csv(tmp_path / "own.csv", index=False)
    res = run_cli("run", "--data", str(tmp_path / "own.csv"), "--label", "target", "--out", str(tmp_path / "own"),
                  "--epochs", "2", "--in-process", "--json")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["verification"]["ok"] and summary["prediction"]["label"] in ("yes", "no")
    assert kerasio.read_manifest(tmp_path / "own").class_names == ["no", "yes"] or \
        kerasio.read_manifest(tmp_path / "own").class_names == ["yes", "no"]


def test_inspect_json(bundle, capsys):
    assert main(["inspect", str(bundle), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["manifest"]["schema_version"] == 2 and len(data["manifest"]["artifacts"]) == 9


def test_bad_formats_fail_before_training(tmp_path, capsys):
    assert main(["run", "--formats", "keras,pickle", "--out", str(tmp_path / "o")]) == 2
    assert "format 'pickle' is written only with explicit trust" in capsys.readouterr().err
    assert main(["run", "--formats", "keras,tflite", "--out", str(tmp_path / "o")]) == 2
    assert "unknown format 'tflite'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_publishes_nothing_when_verification_fails(tmp_path, capsys, monkeypatch):
    from kerasio.formats import REGISTRY

    fmt = REGISTRY["savedmodel"]
    real_load = fmt.load

    def drifting_load(path, **kwargs):
        runner = real_load(path, **kwargs)
        inner = runner._fn
        runner._fn = lambda x: {k: v + 1e-3 if k == "probabilities" else v for k, v in inner(x).items()}
        return runner

    monkeypatch.setattr(fmt, "load", drifting_load)
    out = tmp_path / "seed"
    assert main(["run", "--out", str(out), "--epochs", "1", "--in-process"]) == 1
    captured = capsys.readouterr()
    assert "NOT published, the new artifacts failed verification" in " ".join(captured.out.split())  # wrapped
    assert "[6/6] predict  skipped: nothing was published" in captured.out
    assert captured.err.startswith("kerasio: verification failed, nothing was published: serving/1 (savedmodel")
    assert not (out / "kerasio.json").exists() and not (out / "model.keras").exists()


def test_version_and_every_option_has_help(capsys):
    import argparse

    from kerasio._version import __version__
    from kerasio.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"kerasio {__version__}"
    missing = []

    def walk(parser, name):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    walk(sub, sub_name)
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append((name, action.option_strings or action.dest))

    walk(build_parser(), "kerasio")
    assert missing == []


@pytest.mark.parametrize("argv, message", [
    (["--hidden", "64,x"], "--hidden takes positive integers separated by commas, e.g. 64,32; received: '64,x'"),
    (["--hidden", "0"], "--hidden takes positive integers"),
    (["--test-size", "1.5"], "--test-size takes a fraction between 0 and 1 or a row count; received: '1.5'"),
])
def test_run_hyperparameter_options_are_checked(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_run_takes_the_architecture_and_training_options(tmp_path):
    out = tmp_path / "b"
    assert main(["run", "--out", str(out), "--epochs", "1", "--hidden", "8,4", "--dropout", "0", "--batch-size",
                 "64", "--learning-rate", "0.005", "--test-size", "150", "--formats", "keras", "--json"]) == 0
    manifest = kerasio.read_manifest(out)
    config = manifest.training["config"]
    assert config["hidden"] == [8, 4] and config["dropout"] == 0 and config["batch_size"] == 64
    assert config["learning_rate"] == 0.005 and config["test_size"] == 150
    assert manifest.reference["rows"] == 150
    dense = [layer for layer in kerasio.load(out).model.layers if layer.__class__.__name__ == "Dense"]
    assert [layer.units for layer in dense] == [8, 4, 3]
    assert (out / "trace.png").read_bytes()[:4] == b"\x89PNG"  # drawn by the verification worker


def test_verify_and_export_tables_fit_in_100_columns(bundle, capsys):
    assert main(["verify", str(bundle), "--in-process", "--trust-pickle"]) == 0
    out = capsys.readouterr().out
    assert "| onnx" in out and "| litert" in out and "precision: float32-pinned" in out
    assert max(len(line) for line in out.splitlines()) <= 100, out


def test_predict_no_header_reads_columns_in_feature_order(bundle, tmp_path, capsys):
    manifest = kerasio.read_manifest(bundle)
    x = manifest.reference_arrays(bundle)[0]["features"][:4]
    named = tmp_path / "named.csv"
    pd.DataFrame(x[:, ::-1], columns=manifest.feature_names[::-1]).to_csv(named, index=False)  # names, shuffled
    bare = tmp_path / "bare.csv"
    pd.DataFrame(x).to_csv(bare, index=False, header=False)  # positions, no header
    assert main(["predict", str(bundle), "--input", str(named), "--in-process"]) == 0
    by_name = capsys.readouterr().out
    assert main(["predict", str(bundle), "--input", str(bare), "--no-header", "--in-process"]) == 0
    assert capsys.readouterr().out == by_name  # the same predictions, whichever way the columns were matched
    (tmp_path / "narrow.csv").write_text("1,2,3\n")
    assert main(["predict", str(bundle), "--input", str(tmp_path / "narrow.csv"), "--no-header",
                 "--in-process"]) == 2
    assert "3 columns, but the model takes 10 features (sepal_length, " in capsys.readouterr().err
    (tmp_path / "text.csv").write_text(",".join(["1"] * 9 + ["x"]) + "\n")
    assert main(["predict", str(bundle), "--input", str(tmp_path / "text.csv"), "--no-header",
                 "--in-process"]) == 2
    assert "row 1, column 10 holds 'x', not a number" in capsys.readouterr().err


def test_verify_prints_each_check_as_it_completes(keras_bundle, capsys):
    assert main(["verify", str(keras_bundle), "--in-process"]) == 0
    out = capsys.readouterr().out
    assert out.index("  keras      checked: PASS on cpu, max abs diff 0") < out.index("  savedmodel checked: PASS") \
        < out.index("| Format")


def test_quiet_prints_one_line(keras_bundle, capsys):
    assert main(["-q", "verify", str(keras_bundle), "--in-process"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"2 of 2 checks passed (in-process) for {keras_bundle}"]


def test_no_framework_noise_and_each_warning_once_on_stderr(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    res = subprocess.run([sys.executable, "-m", "kerasio", "run", "--out", str(tmp_path / "b"), "--epochs", "1",
                          "--formats", "all"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    both = res.stdout + res.stderr
    for noise in ("WARNING:tensorflow", "WARNING:absl", "deprecated", "Assets written", ".kerasio-staging",
                  "oneDNN", "cudart", "Traceback"):
        assert noise not in both, noise
    err = res.stderr.strip().splitlines()
    assert err == ["kerasio: warning: HDF5 (.h5) is Keras's legacy format; prefer .keras for round trips."]


def test_a_reader_that_goes_away_gets_no_traceback(bundle, tmp_path):
    """`kerasio predict B --input rows.csv | head -1`: the pipe closes early; kerasio stops quietly (exit 141, as
    cat does). 20,000 rows of predictions (about 900 KB), written 500 rows at a time, cannot all fit in a pipe's
    buffer (64 KiB) before the reader goes away, so some write always meets the closed pipe. (A single write that
    began while the reader was there may complete without an error: what is written after it cannot.)
    """
    manifest = kerasio.read_manifest(bundle)
    x = manifest.reference_arrays(bundle)[0]["features"]
    rows = pd.DataFrame(np.tile(x, (20_000 // len(x) + 1, 1))[:20_000], columns=manifest.feature_names)
    rows.to_csv(tmp_path / "rows.csv", index=False)
    command = [sys.executable, "-m", "kerasio", "predict", str(bundle), "--input", str(tmp_path / "rows.csv"),
               "--chunk-rows", "500"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    header = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away after the header
    stderr = proc.stderr.read().decode()
    assert header.startswith(b"label,p_"), (header, stderr)
    assert proc.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr and "error" not in stderr, stderr
