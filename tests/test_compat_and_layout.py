"""A schema-1 bundle (kerasio 0.1) still loads, verifies and predicts; the core never imports the recipe."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import kerasio
from kerasio.cli import main

V1 = Path(__file__).parent / "fixtures" / "v1_bundle"


def test_v1_bundle_verifies_loads_and_predicts(tmp_path, capsys):
    bundle = tmp_path / "v1"
    shutil.copytree(V1, bundle)
    manifest = kerasio.read_manifest(bundle)
    assert manifest.schema_version == 1
    assert manifest.iospec.input_names == ["features"] and manifest.iospec.output_names == ["probabilities"]
    assert manifest.task.kind == "classification" and manifest.class_names == ["versicolor", "setosa", "virginica"]
    report = kerasio.verify(bundle, record=False)
    assert report.ok and {c.format for c in report.checks} == {"keras", "savedmodel"}, report.table()
    x = np.load(bundle / "reference_inputs.npy")
    y = np.load(bundle / "reference_outputs.npy")
    labels, probs = kerasio.predict(bundle, x, probabilities=True, trust=True)  # a fixture of ours, made elsewhere
    # Written on another machine: its CPU fingerprint is unknown, so the table's cross-CPU row applies, not bit-identity.
    tol = kerasio.spec.tolerances.tolerance_for("keras", "tensorflow", "cpu", same_cpu=False)
    assert tol.atol == 1e-6 and np.abs(probs - y).max() <= tol.atol + tol.rtol * np.abs(y).max()
    assert list(labels) == [manifest.class_names[i] for i in y.argmax(1)]
    sm = kerasio.load(bundle, format="savedmodel", trust=True).run(x)["probabilities"]
    assert np.abs(sm - y).max() <= 1e-6
    assert main(["inspect", str(bundle)]) == 0
    assert "(schema 1)" in capsys.readouterr().out


def test_artifact_core_does_not_import_the_recipe():
    code = ("import sys, kerasio, kerasio.export, kerasio.verify, kerasio.loading, kerasio.predict, kerasio.process.server, "
            "kerasio.bundle.manifest, kerasio.formats; "
            "print(sorted(m for m in sys.modules if m.startswith('kerasio.recipe')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    core = [p for p in (Path(kerasio.__file__).parent).rglob("*.py")
            if "recipe" not in p.parts and p.name not in ("__init__.py", "cli.py")]
    offenders = [str(p) for p in core if "recipe" in p.read_text(encoding="utf-8")]
    assert offenders == []


def test_package_names_resolve():
    assert set(kerasio.__all__) >= set(kerasio._LAZY)
    assert callable(kerasio.verify) and callable(kerasio.export) and callable(kerasio.predict)
    assert kerasio.recipe.load_dataset.__module__ == "kerasio.recipe.data"
