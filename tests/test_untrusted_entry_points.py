"""One hostile bundle of each class through every entry point: the API in this process (``kerasio.load``,
``kerasio.predict``), ``kerasio.loading.load_isolated``, and the CLI's ``verify``, ``predict``, ``inspect`` and ``report``
(each CLI run a fresh process group with a secret in its environment). The promises, checked on every run: a
kerasio error of one line (or a clean exit where nothing is loaded), no traceback, no canary written, no secret in
any output, and an exit within its limit. (``kerasio export MODEL`` does not exist yet.)"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from bundles import copy_bundle
from hostile import (
    SECRET,
    assert_contained,
    clis,
    edit_manifest,
    first_dense,
    keras_with_config,
    onnx_constant_of_shape,
    sm_object_graph_bypass,
    sm_unlinked_initializer,
    sm_while_forever,
    swap,
    tflite_while_self,
)

import kerasio

TIMEOUT = 5  # seconds a step, for the cases that need a limit; every run must end well within LIMIT
LIMIT = 180
X = np.ones((3, 10), np.float32)


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    (root / "outside").mkdir()
    (root / "secret.txt").write_text(SECRET)
    np.save(root / "rows.npy", X)
    return root


def _case(name, bundle, place):
    b = copy_bundle(bundle, place / name)
    canary, secret = place / "outside" / f"{name}.canary", place / "secret.txt"
    litert = bundle / kerasio.read_manifest(bundle).artifact("litert").path
    builders = {
        "object-graph": ("savedmodel", lambda p: sm_object_graph_bypass(p, canary, secret)),
        "initializer": ("savedmodel", lambda p: sm_unlinked_initializer(p, canary, secret)),
        "hang": ("savedmodel", sm_while_forever),
        "onnx-bomb": ("onnx", onnx_constant_of_shape),
        "litert-recursion": ("litert", lambda p: tflite_while_self(litert, p)),
        "keras-bomb": ("keras", lambda p: keras_with_config(bundle / "model.keras", p,
                                                            lambda c: first_dense(c)["config"].update(units=10**9))),
    }
    if name == "manifest-int":
        raw = (b / "kerasio.json").read_text()
        (b / "kerasio.json").unlink()
        (b / "kerasio.json").write_text(raw[:-2] + ', "n": ' + "9" * 5000 + "}")
        return b, "keras", canary
    if name == "injected-name":
        edit_manifest(b, lambda d: d["task"]["class_names"].__setitem__(0, f"x\n3 of 3 checks passed {SECRET}"))
        return b, "keras", canary
    fmt, build = builders[name]
    return swap(b, fmt, build), fmt, canary


CASES = ["object-graph", "initializer", "hang", "onnx-bomb", "litert-recursion", "keras-bomb", "manifest-int"]


@pytest.mark.parametrize("name", CASES)
def test_every_entry_point_keeps_the_promises(bundle, place, name):
    b, fmt, canary = _case(name, bundle, place)
    limits = kerasio.Limits(timeout=TIMEOUT)
    rows = place / "rows.npy"
    commands = [["verify", str(b), "--format", fmt, "--timeout", str(TIMEOUT)],
                ["predict", str(b), "--format", fmt, "--input", str(rows), "--timeout", str(TIMEOUT)],
                ["inspect", str(b)], ["report", str(b), "-o", str(place / f"{name}.html")]]
    with ThreadPoolExecutor(1) as pool:  # the CLI, as a user would run it, while the API is tried here
        runs = pool.submit(clis, commands, timeout=LIMIT)
        # The API, in this process: the bundle is not the caller's own, so it is audited and run in the worker.
        with pytest.raises(kerasio.KerasioError) as info:
            model = kerasio.load(b, format=fmt, limits=limits)
            model.predict(X)
        assert "\n" not in str(info.value) and SECRET not in str(info.value)
        with pytest.raises(kerasio.KerasioError):
            with kerasio.loading.load_isolated(b, format=fmt, limits=limits) as model:
                model.run(X)
        verify_run, predict_run, inspect_run, report_run = runs.result()
    assert_contained(verify_run, within=LIMIT)
    assert_contained(predict_run, codes=(2,), within=LIMIT)
    for run in (inspect_run, report_run):
        assert_contained(run, codes=(0, 2), within=LIMIT)  # they read the manifest, never an artifact
    assert not canary.exists()


def test_a_hostile_string_is_never_a_line_of_its_own_on_any_surface(bundle, place):
    b, _fmt, _canary = _case("injected-name", bundle, place)
    rows = place / "rows.npy"
    for result in clis([["verify", str(b), "--format", "keras"], ["predict", str(b), "--input", str(rows)],
                        ["inspect", str(b)], ["report", str(b), "-o", str(place / "injected.html")]]):
        assert "Traceback" not in result.err
        assert not any(line.startswith("3 of 3 checks passed") for line in (result.out + result.err).splitlines())
    page = (place / "injected.html").read_text()
    assert "\n3 of 3 checks passed" not in page
