"""Quantized artifacts (LiteRT float16 and int8, ONNX int8 dynamic and static, Keras int8, int4, float8), each
verified against the float model with task-level gates: distortion, decisions and the accuracy lost."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import zoo

import kerasio
from kerasio.cli import main
from kerasio.errors import InputError
from kerasio.formats import REGISTRY, resolve_formats
from kerasio.spec.quantization import figures, gates_for, judge

QUANTIZED = ("litert-fp16", "litert-int8", "onnx-int8", "onnx-int8-static", "keras-int8", "keras-int4", "keras-float8")
CALIBRATED = ("litert-int8", "onnx-int8-static")


def test_the_figures_on_known_outputs():
    reference = {"probs": np.array([[0.7, 0.2, 0.1], [0.45, 0.4, 0.15], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])}
    actual = {"probs": np.array([[0.7, 0.2, 0.1], [0.40, 0.45, 0.15], [0.1, 0.1, 0.8], [0.3, 0.6, 0.1]])}
    got = figures(reference, actual, probabilities=["probs"], decision="probs", labels=np.array([0, 0, 2, 1]))
    out = got["outputs"]["probs"]
    err = actual["probs"] - reference["probs"]
    assert out["mse"] == pytest.approx(np.mean(err ** 2))
    assert out["snr_db"] == pytest.approx(10 * np.log10(np.sum(reference["probs"] ** 2) / np.sum(err ** 2)))
    assert 0.99 < out["cosine"] < 1 and out["kl"] > 0
    d = got["decisions"]
    assert (d["top1_agreement"], d["flips"], d["flips_near_ties_only"]) == (0.75, 1, True)  # row 1: 0.45 vs 0.40
    assert d["largest_flipped_margin"] == pytest.approx(0.05) and (d["top_k"], d["top_k_set_changes"]) == (2, 0)
    assert (d["float_accuracy"], d["accuracy"], d["accuracy_drop"]) == (1.0, 0.75, 0.25)
    gates = judge(got, gates_for("classification"))
    assert [(g["metric"], g["passed"]) for g in gates] == [("top1_agreement", False), ("accuracy_drop", False)]
    without = judge(figures(reference, actual, probabilities=["probs"], decision="probs", labels=None),
                    gates_for("classification"))
    assert without[1]["metric"] == "accuracy_drop" and without[1]["passed"] is None  # no labels: not applied
    with pytest.raises(InputError, match=r"unknown gate metric 'top_one'"):
        gates_for("classification", {"top_one": 0.9})


def test_quantized_variants_are_named_explicitly_and_not_in_all():
    assert not any(f.quantized for f in resolve_formats("all"))
    assert {name for name, f in REGISTRY.items() if f.quantized} == set(QUANTIZED)


@pytest.fixture(scope="module")
def quantized(pipeline, tmp_path_factory):
    """Every quantized variant of the seed model, the test rows' labels known, verified in a fresh process."""
    out = tmp_path_factory.mktemp("q") / "b"
    info = kerasio.BundleInfo(class_names=pipeline.dataset.class_names, labels=pipeline.split.y_test)
    result = kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, info=info,
                            formats=["keras", *QUANTIZED], verify=True)
    return out, result


def test_every_variant_is_judged_by_its_gates_with_the_figures_in_the_report(quantized):
    out, result = quantized
    report = result.report
    manifest = kerasio.read_manifest(out)
    assert manifest.reference_labels(out) is not None and len(manifest.reference_labels(out)) == 200
    by = {c.format: c for c in report.checks}
    assert set(by) == {"keras", *QUANTIZED} and by["keras"].quantization is None and by["keras"].passed
    for name in QUANTIZED:
        check, info = by[name], manifest.artifact(name).info["quantization"]
        q = check.quantization
        assert q["scheme"] == REGISTRY[name].quantized == info["scheme"] and check.tolerance_source == "gates"
        assert set(q["outputs"]["probabilities"]) == {"mse", "snr_db", "cosine", "kl"}
        assert q["decisions"]["rows"] == 200 and "accuracy" in q["decisions"] and "float_accuracy" in q["decisions"]
        assert [g["metric"] for g in q["gates"]] == ["top1_agreement", "accuracy_drop"]
        assert check.passed == all(g["passed"] for g in q["gates"])  # the gates decide, nothing else
        assert info["gates"] == ["top1_agreement >= 99%", "accuracy_drop <= 1 points"]
        assert ("representative_sha256" in info) == (name in CALIBRATED)
    assert by["litert-fp16"].passed and by["onnx-int8"].passed  # float16 weights, dynamic int8: no decision moves
    text = " ".join(report.table().split())
    assert "litert-fp16 (float16 weights (LiteRT post-training float16 quantization), float32 compute and I/O): " \
           "gates top1_agreement 100.00% (>= 99%: PASS); accuracy_drop 0.00 points (<= 1 points: PASS)" in text
    assert "litert-fp16 'probabilities': MSE" in text and "litert-fp16 decisions: 0 of 200 rows flip" in text
    html = report._repr_html_()
    assert "Quantized artifacts against the float model: gates" in html and "top1_agreement" in html
    below = [c.format for c in report.checks if not c.passed]  # named explicitly: published, FAIL shown
    assert [a.format for a in manifest.artifacts] == ["keras", *QUANTIZED]
    for name in below:
        assert f"{name} PUBLISHED BELOW ITS GATES (named explicitly)" in " ".join(result.table().split())
    assert json.loads((out / "verification.json").read_text())["ok"] == (not below)


def test_gates_are_overridden_per_call_and_recorded(quantized, capsys):
    out, _ = quantized
    loose = kerasio.verify(out, formats=list(QUANTIZED), record=False,
                           options=kerasio.VerifyOptions(gates={"top1_agreement": 0.5, "accuracy_drop": 0.5}))
    assert loose.ok and all(g["reason"] == "given by the caller" for c in loose.checks for g in c.quantization["gates"])
    assert main(["verify", str(out), "--format", "onnx-int8", "--gate", "top1_agreement=1.01", "--json"]) == 1
    check = json.loads(capsys.readouterr().out)["checks"][0]
    assert check["status"] == "FAIL" and check["quantization"]["gates"][0]["rule"] == ">= 101%"
    assert main(["verify", str(out), "--format", "onnx-int8", "--gate", "top1=0.9"]) == 2
    assert "unknown gate metric 'top1'" in capsys.readouterr().err


def test_a_variant_below_its_gates_is_published_only_when_named_and_never_silently(pipeline, tmp_path, capsys):
    path = tmp_path / "seed.keras"
    pipeline.model.save(path)
    np.save(tmp_path / "x.npy", pipeline.split.x_test)
    np.save(tmp_path / "y.npy", pipeline.split.y_test)
    out = tmp_path / "b"
    assert main(["export", str(path), "--out", str(out), "--inputs", str(tmp_path / "x.npy"), "--labels",
                 str(tmp_path / "y.npy"), "--formats", "keras,onnx-int8", "--gate", "top1_agreement=1.01"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"onnx-int8 PUBLISHED BELOW ITS GATES \(named explicitly\): top1_agreement \d+\.\d\d% "
                     r"\(>= 101%\)", " ".join(captured.out.split())), captured.out
    assert "kerasio: published below its gates: " in captured.err
    assert [a.format for a in kerasio.read_manifest(out).artifacts] == ["keras", "onnx-int8"]


def test_a_regression_is_held_to_its_signal_to_noise_ratio(tmp_path):
    model, x = zoo.regression()
    result = kerasio.export(model, tmp_path / "b", reference_inputs=x, formats="keras,keras-int8,litert-fp16",
                            verify=True)
    for check in result.report.checks[1:]:
        gate = check.quantization["gates"]
        assert [g["metric"] for g in gate] == ["snr_db"] and "decisions" not in check.quantization
        assert check.passed == (gate[0]["value"] >= 30)


def test_the_report_page_shows_the_gates_the_distortion_and_the_decisions(quantized, tmp_path):
    out, result = quantized
    page = tmp_path / "report.html"
    assert main(["report", str(out), "-o", str(page)]) == 0
    html = page.read_text()
    assert "Quantized artifacts against the float model: gates" in html and "Distortion per output" in html
    assert "Decisions" in html and "top1_agreement" in html and "litert-int8" in html
    assert html.count("<tr>") >= len(QUANTIZED) * 3  # a gate row, an output row and a decision row each, at least
