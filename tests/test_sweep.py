"""The shape sweep (every dynamic axis at other sizes) and the error statistics of every check."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hostile import edit_manifest, rehash

import kerasio
from kerasio.errors import InputError
from kerasio.spec.iospec import IOSpec
from kerasio.spec.sweep import candidate_shapes, sweep_shapes
from kerasio.spec.tolerances import TOLERANCES, Tolerance, compare_cases, compare_output, tolerance_for

TEXT = IOSpec.from_dict({
    "inputs": [{"name": "token_ids", "dtype": "int32", "shape": [None, None]},
               {"name": "padding_mask", "dtype": "bool", "shape": [None, None]},
               {"name": "title", "dtype": "string", "shape": [None]}],
    "outputs": [{"name": "logits", "dtype": "float32", "shape": [None, 2]}],
    "input_structure": "dict", "output_structure": "single",
})


def _text_inputs() -> dict[str, np.ndarray]:
    return {"token_ids": np.arange(30, dtype=np.int32).reshape(5, 6),
            "padding_mask": np.arange(30).reshape(5, 6) % 4 != 3,
            "title": np.array(["a", "b", "c", "d", "e"])}


def test_the_sweep_varies_each_dynamic_axis_with_its_linked_inputs_and_tiles_the_batch():
    shapes = {s.name: s for s, _ in candidate_shapes(TEXT, _text_inputs())}
    assert list(shapes) == ["batch 2", "batch 7", "axis 1 = 3 (token_ids, padding_mask)",
                            "axis 1 = 9 (token_ids, padding_mask)"]
    x = _text_inputs()
    batch7 = shapes["batch 7"].inputs
    assert batch7["token_ids"].shape == (7, 6) and list(batch7["title"]) == ["a", "b", "c", "d", "e", "a", "b"]
    np.testing.assert_array_equal(batch7["token_ids"][5], x["token_ids"][0])  # fewer rows than asked: tiled
    cut, longer = shapes["axis 1 = 3 (token_ids, padding_mask)"].inputs, \
        shapes["axis 1 = 9 (token_ids, padding_mask)"].inputs
    np.testing.assert_array_equal(cut["token_ids"], x["token_ids"][:2, :3])  # a sequence is cut ...
    np.testing.assert_array_equal(longer["padding_mask"][:, 6:], x["padding_mask"][:2, :3])  # ... or repeated
    assert longer["token_ids"].shape == longer["padding_mask"].shape == (2, 9)  # linked axes change together
    assert list(cut["title"]) == ["a", "b"] and cut["title"].dtype.kind == "U"  # a string batch is subsampled


def test_a_size_the_original_model_refuses_is_replaced_or_left_out_with_its_reason():
    def forward(inputs):  # a model with a maximum sequence length of 8 (a position embedding, say)
        if inputs["token_ids"].shape[1] > 8:
            raise ValueError("sequence length 9 exceeds the maximum of 8\nmore lines")
        return {"logits": np.zeros((len(inputs["title"]), 2), np.float32)}

    accepted, refused = sweep_shapes(TEXT, _text_inputs(), forward)
    assert [s.name for s, _ in accepted] == ["batch 2", "batch 7", "axis 1 = 3 (token_ids, padding_mask)",
                                             "axis 1 = 5 (token_ids, padding_mask)"]  # the fallback: one shorter
    assert refused == {"axis 1 = 9 (token_ids, padding_mask)":
                       "the model itself refuses it (ValueError: sequence length 9 exceeds the maximum of 8)"}


def test_statistics_ulp_and_the_tolerance_that_would_have_passed():
    ref = np.linspace(1, 2, 1000, dtype=np.float32).reshape(100, 10)
    act = ref.copy()
    act[0, 0] = np.nextafter(ref[0, 0], np.float32(3))  # one ulp
    act[1, :] += np.float32(1e-3)  # one row far off
    out = compare_output("y", ref, act, atol=1e-5, rtol=0)
    assert not out.passed and out.mismatches == 10 and out.elements == 1000 and out.max_ulp > 1000
    d = np.abs(act.astype(np.float64) - ref)
    assert out.mean_abs_diff == pytest.approx(d.mean()) and out.median_abs_diff == 0.0
    assert out.p99_abs_diff == pytest.approx(np.quantile(d, 0.99))
    assert out.max_rel_diff == pytest.approx((d / ref).max())
    assert compare_output("y", ref, act, atol=out.required_atol, rtol=0).passed  # the figure is the real minimum
    assert not compare_output("y", ref, act, atol=out.required_atol * 0.99, rtol=0).passed
    assert compare_output("y", ref, act, atol=1e-5, rtol=out.required_rtol).passed  # with the atol kept
    assert not compare_output("y", ref, act, atol=1e-5, rtol=out.required_rtol * 0.99).passed
    assert compare_output("y", ref[:1], act[:1], atol=0, rtol=0).max_ulp == 1
    # The same errors under other statistics: the mean and the median pass where every element does not.
    assert compare_output("y", ref, act, atol=1e-4, rtol=0, statistic="mean").passed
    assert compare_output("y", ref, act, atol=0, rtol=0, statistic="median").passed
    assert not compare_output("y", ref, act, atol=1e-4, rtol=0, statistic="quantile:0.995").passed
    maxed = compare_output("y", ref, act, atol=1e-4, rtol=0, statistic="max")
    assert not maxed.passed and "max abs error 1.00e-03 > atol 0.0001" in maxed.detail


def test_a_nan_or_infinity_the_reference_lacks_fails_under_every_statistic_and_names_the_shape():
    ref = np.array([[1.0, np.inf, np.nan, -np.inf]], np.float32)
    same = compare_output("y", ref, ref.copy(), atol=0, rtol=0)
    assert same.passed and same.reference_nan == 1 and same.reference_inf == 2  # equal infinities, NaN for NaN
    act = ref.copy()
    act[0, 0] = np.nan
    act[0, 3] = np.inf
    for statistic in ("elementwise", "mean", "median"):
        out = compare_cases("y", [("reference batch", ref, ref), ("batch 7", ref, act)], atol=1, rtol=1,
                            statistic=statistic)
        assert not out.passed and out.failed_shapes == ["batch 7"]
        assert (out.nan, out.inf, out.reference_nan, out.reference_inf) == (3, 4, 2, 4)  # over both shapes
        assert "batch 7: 1 NaN and 1 infinities where the reference has none" in out.detail
    lost = compare_output("y", ref, np.ones_like(ref), atol=1, rtol=1)
    assert not lost.passed and "3 finite values where the reference is NaN or infinite" in lost.detail


def test_a_tolerance_row_may_choose_its_statistic_per_output_and_bad_statistics_are_refused():
    mine = Tolerance("onnx", "*", "*", "float32", "*", 1e-3, 0.0, "a noisy logits head", statistic="mean",
                     output="logits")
    assert tolerance_for("onnx", "onnxruntime", "cpu", extra=[mine], output="logits") is mine
    assert tolerance_for("onnx", "onnxruntime", "cpu", extra=[mine], output="probabilities").statistic == \
        "elementwise"
    assert all(t.statistic == "elementwise" for t in TOLERANCES)
    with pytest.raises(InputError, match=r"error statistic must be one of elementwise, max, mean, median or "
                                         r"quantile:Q .*received: 'p99'"):
        kerasio.VerifyOptions(statistic={"logits": "p99"})
    with pytest.raises(InputError, match=r"received: 'quantile:1.5'"):
        Tolerance("*", "*", "*", "*", "*", 0, 0, "", statistic="quantile:1.5")
    assert kerasio.VerifyOptions(statistic={"logits": "max"}).statistic_for("logits") == "max"
    assert kerasio.VerifyOptions(statistic="median").statistic_for("anything") == "median"


@pytest.fixture(scope="module")
def sequence_bundle(tmp_path_factory) -> Path:
    """A variable-length sequence model (batch and time dynamic) exported as keras, savedmodel and onnx."""
    import keras

    keras.utils.set_random_seed(3)
    seq = keras.Input((None, 4), name="seq")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(8, activation="tanh")(seq))
    model = keras.Model(seq, keras.layers.Dense(3, activation="softmax", name="probabilities")(h))
    x = np.random.default_rng(3).random((20, 8, 4), dtype=np.float32)
    bundle = tmp_path_factory.mktemp("seq") / "b"
    result = kerasio.export(model, bundle, reference_inputs=x, formats="keras,savedmodel,onnx", verify=True)
    assert result.report.ok, result.report.table()
    return bundle


def test_every_format_verifies_at_every_shape_of_the_sweep(sequence_bundle):
    manifest = kerasio.read_manifest(sequence_bundle)
    assert [s["name"] for s in manifest.reference["sweep"]] == ["batch 2", "batch 7", "axis 1 = 4 (seq)",
                                                                "axis 1 = 12 (seq)"]
    assert manifest.reference["sweep_inputs"]["sha256"] and manifest.integrity(sequence_bundle)[
        manifest.reference["sweep_outputs"]["path"]] == "ok"  # hashed like the other references
    last = kerasio.verify(sequence_bundle, record=False)
    assert last.ok and {tuple(c.shapes) for c in last.checks} == {
        ("reference batch 20", "batch 1", "batch 2", "batch 7", "axis 1 = 4 (seq)", "axis 1 = 12 (seq)")}
    text = last.table()
    assert "shapes checked: reference batch 20, batch 1, batch 2, batch 7, axis 1 = 4 (seq)" in text
    assert all(len(line) <= 100 for line in text.splitlines())
    onnx = next(c for c in last.checks if c.format == "onnx")
    stats = onnx.outputs[0]
    assert stats["elements"] == 3 * (20 + 1 + 2 + 7 + 2 + 2) and stats["nan"] == 0 and stats["max_ulp"] >= 0
    assert {"mean_abs_diff", "p99_rel_diff", "required_atol"} <= set(last.to_frame().iloc[0]["outputs"][0])


@pytest.mark.parametrize("axis,fixed,named", [(1, 8, ["axis 1 = 4 (seq)", "axis 1 = 12 (seq)"]),
                                              (0, 20, ["batch 1", "batch 2", "batch 7", "axis 1 = 4 (seq)",
                                                       "axis 1 = 12 (seq)"])])
def test_an_onnx_graph_with_an_axis_baked_in_fails_the_sweep_naming_the_axis_and_size(sequence_bundle, tmp_path,
                                                                                      axis, fixed, named):
    import onnx
    from bundles import copy_bundle
    from bundles import named as artifact_path

    bundle = copy_bundle(sequence_bundle, tmp_path / "b")
    path = artifact_path(bundle, "onnx")
    graph = onnx.load(path)
    graph.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = fixed  # what a careless export writes
    onnx.save(graph, path)
    rehash(bundle, "onnx")
    report = kerasio.verify(bundle, formats="onnx", record=False,
                            options=kerasio.VerifyOptions(repro_dir=tmp_path / "kits"))
    check = report.checks[0]
    assert not report.ok and list(check.rejected_shapes) == named
    assert f"Got: {4 if axis else 1} Expected: {fixed}" in check.rejected_shapes[named[0]]
    with pytest.raises(kerasio.errors.VerificationError,
                       match=rf"model\.onnx \(onnx\): refused input shapes the original model accepts: "
                             rf"{named[0].replace('(', '.').replace(')', '.')} \(InvalidArgument: "):
        report.raise_for_failure()
    kit = Path(check.repro)  # the kit runs the refused shape through onnxruntime alone
    with np.load(kit / "inputs.npz") as f:
        assert f["seq"].shape[axis] != fixed  # the first shape the runtime refused
    assert not (kit / "actual.npz").exists()
    ran = subprocess.run([sys.executable, "reproduce.py"], cwd=kit, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 1 and "REPRODUCED: onnxruntime refused the inputs: InvalidArgument" in ran.stdout
    if axis == 1:  # a bundle from before the sweep (no extra references) verifies as it did: and misses this
        edit_manifest(bundle, lambda m: [m["reference"].pop(k) for k in ("sweep", "sweep_inputs", "sweep_outputs")])
        old = kerasio.verify(bundle, formats="onnx", record=False)
        assert old.ok and old.checks[0].shapes == ["reference batch 20", "batch 1"], old.table()


def test_calibration_judges_a_row_against_the_noise_both_ways():
    from kerasio.spec.tolerances import judge_noise, measure_noise, nudged

    x = {"a": np.array([1.0, 2.0], np.float32), "ids": np.array([1, 2])}
    moved = nudged(x)
    assert moved["a"][0] == np.nextafter(np.float32(1), np.float32(2)) and moved["ids"] is x["ids"]
    assert nudged({"ids": x["ids"]}) is None  # nothing to move: no float input
    base = {"y": np.array([0.5, 0.25]), "label": np.array([1, 0])}
    noise = measure_noise(base, base, {"y": base["y"] + 1e-7, "label": base["label"]})
    assert set(noise) == {"y"} and noise["y"]["repeat"] == 0 and noise["y"]["ulp"] == pytest.approx(1e-7, rel=0.01)
    assert noise["y"]["scale"] == pytest.approx(0.375)
    assert judge_noise(noise["y"], 1e-6, 1e-6) == ""  # 1.4e-6 admitted at |y| ~ 0.4: 14x the noise
    assert judge_noise(noise["y"], 1e-3, 0).startswith("looser than 1000x the noise: it admits 1.00e-03")
    assert judge_noise(noise["y"], 1e-9, 1e-9).startswith("tighter than the noise: the model's own noise 1.00e-07")
    assert judge_noise(noise["y"], 0, 0) == ""  # bit-identical rows are held to the repeat alone ...
    shaky = {**noise["y"], "repeat": 3e-8}
    assert judge_noise(shaky, 0, 0).startswith("tighter than the noise: running the same input again changes")


def test_verify_calibrate_reports_the_noise_and_flags_rows_through_the_cli(sequence_bundle, capsys):
    from kerasio.cli import main

    assert main(["verify", str(sequence_bundle), "--format", "onnx", "--calibrate", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["checks"][0]
    measured = check["calibration"]["probabilities"]
    assert measured["repeat"] == 0 and measured["ulp"] > 0 and measured["flag"] == ""  # onnxruntime, 1e-5 rows
    assert main(["verify", str(sequence_bundle), "--format", "onnx", "--calibrate", "--atol", "0.1", "--rtol", "0"]) \
        == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "calibration onnx 'probabilities': noise: repeat 0, one-ulp input change" in out
    assert "tolerance row looser than 1000x the noise: it admits 1.00e-01 at the median output magnitude" in out
    assert main(["verify", str(sequence_bundle), "--format", "onnx", "--calibrate", "--atol", "1e-12",
                 "--rtol", "1e-12"]) == 1  # the check itself fails at this tolerance, and calibration says why
    assert "tolerance row tighter than the noise" in " ".join(capsys.readouterr().out.split())
