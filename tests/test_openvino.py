"""The OpenVINO IR format: exported from the traced forward pass, verified at f32 in the OpenVINO runtime, audited
as untrusted (a custom op, constants outside the weights, entities, links) before the runtime reads it."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from bundles import copy_bundle, named
from hostile import rehash

import kerasio
from kerasio.errors import UnsafeArtifactError


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(2)
    x = keras.Input((6,), name="features")
    h = keras.layers.Dense(12, activation="relu", name="hidden")(x)
    h = keras.layers.Dense(12, activation="tanh", name="middle")(h)
    out = keras.layers.Dense(3, activation="softmax", name="probabilities")(h)
    model = keras.Model(x, out)
    data = np.random.default_rng(2).normal(size=(30, 6)).astype(np.float32)
    bundle = tmp_path_factory.mktemp("ov") / "b"
    kerasio.export(model, bundle, reference_inputs=data, formats="keras,openvino", verify=False)
    return model, bundle


def _xml(bundle: Path) -> Path:
    return named(bundle, "openvino") / "model.xml"


def _edited(ov_bundle, tmp_path, change) -> Path:
    """A copy of the bundle whose IR XML ``change`` rewrote (text in, text out), re-hashed: the audit decides."""
    _, bundle = ov_bundle
    tmp_path.mkdir(parents=True, exist_ok=True)
    b = copy_bundle(bundle, tmp_path / "b")
    xml = _xml(b)
    text = xml.read_text()
    xml.unlink()
    xml.write_text(change(text))
    rehash(b, "openvino")
    return b


def test_export_verifies_in_a_sandboxed_worker_and_says_the_precision_it_ran_at(ov_bundle, tmp_path):
    _, bundle = ov_bundle
    manifest = kerasio.read_manifest(bundle)
    art = manifest.artifact("openvino")
    assert sorted(art.files) == ["model.bin", "model.xml"]  # both hashed
    assert art.info["inputs"] == ["features"] and art.info["outputs"] == ["probabilities"]
    other = copy_bundle(bundle, tmp_path / "theirs")  # not exported here: the sandboxed worker checks it
    kerasio.bundle.fsutil.write_text_atomic(other / "kerasio.json", (other / "kerasio.json").read_text() + " ")
    report = kerasio.verify(other, formats="openvino", record=False)
    check = report.checks[0]
    assert report.ok and check.runtime == "openvino" and check.ran_at == "f32"
    assert report.sandbox["tensorflow"].startswith(("landlock", "off: Landlock"))
    assert "openvino ran at f32 (its runtime's inference precision)" in " ".join(report.table().split())
    assert check.max_abs_diff <= 1e-5 and check.shapes[:3] == ["reference batch 30", "batch 1", "batch 2"]


def test_load_run_matches_the_model_and_explain_reads_the_ir_layer_by_layer(ov_bundle, tmp_path):
    model, bundle = ov_bundle
    x = kerasio.read_manifest(bundle).reference_arrays(bundle)[0]
    with kerasio.load(bundle, format="openvino") as loaded:
        np.testing.assert_allclose(loaded.run(x)["probabilities"], np.asarray(model(x["features"])), atol=1e-5)
    # a tampered weight in the .bin: found by its bytes, as an attacker would, and the layer named
    b = copy_bundle(bundle, tmp_path / "b")
    weights = named(b, "openvino") / "model.bin"
    data = bytearray(weights.read_bytes())
    kernel = model.get_layer("middle").kernel.numpy()
    at = bytes(data).find(kernel.T.astype(np.float32).tobytes()) if bytes(data).find(kernel.tobytes()) < 0 else \
        bytes(data).find(kernel.tobytes())
    assert at >= 0
    data[at:at + kernel.nbytes] = (np.frombuffer(bytes(data[at:at + kernel.nbytes]), np.float32) + 0.5).tobytes()
    weights.unlink()
    weights.write_bytes(bytes(data))
    rehash(b, "openvino")
    report = kerasio.verify(b, formats="openvino", record=False)
    assert not report.ok and report.checks[0].explanation["first_diverging"] == "middle"
    assert report.checks[0].explanation["last_agreeing"] == "hidden"


def test_a_custom_op_is_refused_before_the_runtime_reads_the_ir(ov_bundle, tmp_path):
    b = _edited(ov_bundle, tmp_path, lambda t: t.replace('type="Tanh" version="opset1"',
                                                         'type="Tanh" version="my_extension"', 1))
    with pytest.raises(UnsafeArtifactError, match=r"model\.xml: layer '.*' is a 'Tanh' op of 'my_extension', not of "
                                                  r"a standard opset: a custom op runs an extension library"):
        kerasio.load(b, format="openvino")


def test_a_constant_past_the_weights_file_is_refused(ov_bundle, tmp_path):
    def past(text):
        return re.sub(r'offset="(\d+)" size="(\d+)"', lambda m: f'offset="{10**9}" size="{m.group(2)}"', text, count=1)

    b = _edited(ov_bundle, tmp_path, past)
    with pytest.raises(UnsafeArtifactError, match=r"claims bytes 1,000,000,000 to [\d,]+ of a [\d,]+-byte \.bin: "
                                                  r"the runtime would read past the weights"):
        kerasio.load(b, format="openvino")


def test_a_constant_whose_shape_outgrows_its_bytes_is_refused(ov_bundle, tmp_path):
    def grow(text):
        return re.sub(r'element_type="f32" shape="(\d+), (\d+)"', 'element_type="f32" shape="100000, 100000"', text,
                      count=1)

    b = _edited(ov_bundle, tmp_path, grow)
    with pytest.raises(UnsafeArtifactError, match=r"and 40,000,000,000 bytes for its shape"):
        kerasio.load(b, format="openvino")


def test_an_xml_built_to_exhaust_memory_is_refused_before_it_is_parsed(ov_bundle, tmp_path):
    from kerasio.bundle.audit.openvino import MAX_XML_BYTES

    padding = "<!--" + "x" * (MAX_XML_BYTES + 1) + "-->"  # a comment: valid XML that only costs memory
    b = _edited(ov_bundle, tmp_path, lambda t: t.replace("<layers>", padding + "<layers>", 1))
    with pytest.raises(UnsafeArtifactError, match=r"model\.xml: [\d,]+ bytes of IR XML, over the 67,108,864 kerasio "
                                                  r"reads"):
        kerasio.load(b, format="openvino")


def test_entities_links_and_paths_are_refused(ov_bundle, tmp_path):
    lol = '<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>\n'
    b = _edited(ov_bundle, tmp_path / "1", lambda t: lol + t.split("\n", 1)[1])
    with pytest.raises(UnsafeArtifactError, match=r"declares a DTD or entities"):
        kerasio.load(b, format="openvino")
    b = _edited(ov_bundle, tmp_path / "2", lambda t: t.replace('<data element_type=',
                                                               '<data path="/etc/passwd" element_type=', 1))
    with pytest.raises(UnsafeArtifactError, match=r"attribute path='/etc/passwd' names a file or URL outside the IR"):
        kerasio.load(b, format="openvino")
    _, bundle = ov_bundle
    (tmp_path / "3").mkdir()
    c = copy_bundle(bundle, tmp_path / "3" / "b")
    weights = named(c, "openvino") / "model.bin"
    outside = tmp_path / "elsewhere.bin"
    shutil.copyfile(weights, outside)
    weights.unlink()
    weights.symlink_to(outside)
    with pytest.raises(kerasio.errors.KerasioError, match=r"link|regular file"):
        kerasio.verify(c, formats="openvino", record=False).raise_for_failure()
