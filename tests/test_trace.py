"""Stage 3: the classifier, deterministic training and the epoch trace."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import kerasio
from kerasio.recipe.trace import TRACE_KEYS, ascii_chart, observe, trace_table


def test_classifier_structure(pipeline):
    model = pipeline.model
    assert model.__class__.__name__ == "Sequential"
    assert model.inputs[0].name == "features"
    assert model.layers[0].__class__.__name__ == "Normalization"
    # Normalization was adapted on the training features: raw rows go in.
    mean = np.asarray(model.layers[0].mean).ravel()
    assert np.allclose(mean, pipeline.split.x_train.mean(0), rtol=1e-4)
    assert model.output_shape == (None, 3)
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.optimizer.__class__.__name__ == "Adam"


def test_pipeline_learns(pipeline):
    assert pipeline.metrics["test_accuracy"] > 0.8


def test_same_seed_same_weights(tmp_path):
    ds = kerasio.recipe.load_dataset()
    split = kerasio.recipe.split_dataset(ds, seed=3)
    weights = []
    for _ in range(2):
        from kerasio.recipe.model import set_determinism

        set_determinism(3)
        model = kerasio.recipe.build_classifier(10, 3, x_adapt=split.x_train, seed=3)
        kerasio.recipe.fit(model, split.x_train, split.y_train, epochs=2, seed=3)
        weights.append(model.get_weights())
    assert all(np.array_equal(a, b) for a, b in zip(*weights))


def test_epoch_trace_callback_writes_files(tmp_path):
    import keras

    ds = kerasio.recipe.load_dataset()
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    trace = kerasio.recipe.EpochTrace(csv_path=tmp_path / "t.csv", json_path=tmp_path / "t.json")
    assert isinstance(trace, keras.callbacks.Callback)
    model.fit(ds.x[:100], ds.y[:100], epochs=2, validation_split=0.2, verbose=0, callbacks=[trace])
    assert [r["epoch"] for r in trace.records] == [1, 2]
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert len(rows) == 2 and list(rows[0]) == list(TRACE_KEYS)
    assert float(rows[1]["loss"]) == pytest.approx(trace.records[1]["loss"])
    assert json.loads((tmp_path / "t.json").read_text()) == trace.records
    assert trace.records[0]["val_loss"] is not None and trace.records[0]["learning_rate"] == pytest.approx(0.001)
    assert trace.records[0]["observation"] == "starts learning"
    frame = trace.to_frame()
    assert list(frame.columns) == list(TRACE_KEYS) and len(frame) == 2


def test_trace_without_validation_has_no_val_columns():
    records = [{"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": None, "val_accuracy": None, "seconds": 0.1,
                "observation": "starts learning"}]
    table = trace_table(records)
    assert "Val loss" not in table and table.splitlines()[0].startswith("| Epoch | Loss ↓ | Accuracy ↑")


@pytest.mark.parametrize("prev, cur, expected", [
    ([], {"loss": 1.0, "accuracy": 0.4}, "starts learning"),
    ([{"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0}], {"loss": 0.7, "accuracy": 0.7, "val_loss": 0.8},
     "loss down, accuracy up"),
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.3}], {"loss": 0.29, "accuracy": 0.91, "val_loss": 0.29},
     "good convergence"),
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.3}], {"loss": 0.299, "accuracy": 0.90, "val_loss": 0.3},
     "training stabilizes"),
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.30}], {"loss": 0.25, "accuracy": 0.92, "val_loss": 0.35},
     "loss down, accuracy up"),  # one rise of val_loss is not a trend
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.30}, {"loss": 0.28, "accuracy": 0.91, "val_loss": 0.32}],
     {"loss": 0.25, "accuracy": 0.92, "val_loss": 0.35}, "overfitting: val_loss rising"),
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.30}], {"loss": 0.305, "accuracy": 0.90, "val_loss": 0.30},
     "loss flat (noise)"),
    ([{"loss": 0.30, "accuracy": 0.90, "val_loss": 0.30}], {"loss": 0.40, "accuracy": 0.85, "val_loss": 0.30},
     "learning rate too high"),
])
def test_observations(prev, cur, expected):
    assert observe(prev, cur) == expected


def _observed(records):
    seen = []
    for r in records:
        r = dict(r)
        r["observation"] = observe(seen, r)
        seen.append(r)
    return [r["observation"] for r in seen]


def _noisy_run(epochs=50, seed=0):
    """A healthy 50-epoch run: loss and val_loss fall with +-0.5% noise, validation accuracy above training's."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for e in range(epochs):
        loss = 1.0 * 0.93 ** e + 0.05
        out.append({"epoch": e + 1, "loss": loss * (1 + rng.normal(0, 0.005)),
                    "accuracy": min(0.989, 0.5 + 0.02 * e), "val_loss": loss * 0.95 * (1 + rng.normal(0, 0.005)),
                    "val_accuracy": min(0.992, 0.52 + 0.02 * e)})
    return out


def test_a_healthy_50_epoch_run_says_neither_overfitting_nor_learning_rate():
    """The run the issue reported (val accuracy above training's): noise alone triggered 18 + 15 false alarms."""
    observations = _observed(_noisy_run())
    assert not [o for o in observations if "overfitting" in o or "learning rate" in o], observations


def test_a_50_epoch_run_with_each_problem_names_each():
    records = _noisy_run()
    for i, e in enumerate(range(30, 36)):  # val_loss climbs for 6 epochs while loss keeps falling
        records[e]["val_loss"] = records[29]["val_loss"] * (1.03 + 0.03 * i)
    records[44]["loss"] = records[43]["loss"] * 1.3  # a real jump of the training loss
    observations = _observed(records)
    overfit = [i + 1 for i, o in enumerate(observations) if "overfitting" in o]
    too_high = [i + 1 for i, o in enumerate(observations) if "learning rate" in o]
    assert overfit == [32, 33, 34, 35, 36], observations
    assert too_high == [45], observations


def test_50_epochs_fit_in_100_columns():
    records = _noisy_run()
    for r, note in zip(records, _observed(records)):
        r["observation"], r["seconds"] = note, 12.5
    records[3]["observation"] = "an observation far longer than the column has room for, in any case"
    for text in (trace_table(records), ascii_chart(records), ascii_chart(records, key="accuracy")):
        assert max(len(line) for line in text.splitlines()) <= 100, text
    chart = ascii_chart(records)
    assert " 1 " in chart.splitlines()[-2] + " " and chart.splitlines()[-2].rstrip().endswith("50")  # first, last


def test_plot_is_a_figure_with_both_curves_and_a_png():
    from kerasio.recipe.trace import TraceRecords

    trace = TraceRecords(_noisy_run(12))
    fig = trace.plot()
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.lines] == ["loss", "val_loss"]
    assert [line.get_label() for line in acc_ax.lines] == ["accuracy", "val_accuracy"]
    assert list(loss_ax.lines[0].get_xdata()) == list(range(1, 13))
    png = trace.png_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_ascii_chart_places_points():
    records = [{"epoch": i + 1, "loss": v, "val_loss": None} for i, v in enumerate([1.0, 0.5, 0.25])]
    chart = ascii_chart(records, height=5)
    lines = chart.splitlines()
    assert lines[0].startswith("  1.0000 |") and lines[0].rstrip().endswith("*")  # epoch 1 at the top
    assert lines[4].startswith("  0.2500 |") and lines[4].rstrip().endswith("*")  # epoch 3 at the bottom
    assert "loss *" in lines[-1] and "val_loss" not in lines[-1]


def test_pipeline_trace_rendered(pipeline):
    assert len(pipeline.trace.records) == 3
    table = pipeline.trace.table()
    assert table.splitlines()[0].startswith("| Epoch | Loss ↓ | Accuracy ↑ | Val loss | Val acc")
    assert "starts learning" in table


def test_run_writes_the_trace_into_the_bundle_and_lists_it(pipeline):
    import os

    from kerasio.bundle.fsutil import sha256_file
    from kerasio.bundle.layout import flat_name

    bundle = pipeline.bundle
    manifest = kerasio.read_manifest(bundle)
    assert [flat_name(a["path"]) for a in manifest.attachments] == ["trace.csv", "trace.json", "trace.png"]
    for entry in manifest.attachments:
        assert sha256_file(bundle / entry["path"]) == entry["sha256"]
        assert os.path.samefile(bundle / entry["path"], bundle / flat_name(entry["path"]))
    rows = list(csv.DictReader((bundle / "trace.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [r["epoch"] for r in pipeline.trace.records]
    assert json.loads((bundle / "trace.json").read_text()) == pipeline.trace.records
    assert (bundle / "trace.png").read_bytes()[:4] == b"\x89PNG"


def test_attachment_names_that_would_clash_are_refused(pipeline, tmp_path):
    for name in ("model.keras", "kerasio.json", "../up.txt", ".hidden"):
        with pytest.raises(kerasio.errors.ArtifactError, match=r"attachment name .* must be a plain file name"):
            kerasio.export(pipeline.model, tmp_path / "b", info=kerasio.BundleInfo(attachments={name: b"x"}),
                           reference_inputs=pipeline.split.x_test[:4])
    assert not (tmp_path / "b" / "kerasio.json").exists()


def test_without_matplotlib_the_png_is_skipped_with_a_note(tmp_path, monkeypatch):
    from kerasio.bundle.layout import flat_name
    from kerasio.recipe import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "plot_available", lambda: False)
    lines = []
    result = kerasio.run_pipeline(config=kerasio.TrainConfig(epochs=1), out=tmp_path / "b", formats="keras",
                                  verify=False, echo=lines.append)
    assert any("trace.png skipped: matplotlib is not installed (pip install 'kerasio[notebooks]')" in line
               for line in lines)
    names = [flat_name(a["path"]) for a in kerasio.read_manifest(result.bundle).attachments]
    assert names == ["trace.csv", "trace.json"] and not (result.bundle / "trace.png").exists()
