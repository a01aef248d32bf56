"""Hostile ONNX and LiteRT files: refused by the audit before their runtime reads them, or stopped by the worker's
limits where no audit can tell (a loop). Controls run the raw runtime and show the attack is real."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from bundles import copy_bundle
from hostile import (
    assert_contained,
    cli,
    onnx_constant_of_shape,
    onnx_custom_op,
    onnx_loop_forever,
    onnx_many_initializers,
    onnx_recursive_function,
    onnx_sparse_bomb,
    onnx_wider_output,
    swap,
    tflite_custom_op,
    tflite_signature_out_of_range,
    tflite_while_long,
    tflite_while_self,
)

import kerasio

X = np.ones((2, 10), np.float32)


@pytest.mark.parametrize("build, match", [
    (onnx_constant_of_shape, r"node 'ConstantOfShape' allocates 100,000,000,000 elements from constant inputs"),
    (onnx_sparse_bomb, r"sparse initializer 'sparse_values' is 4,000,000,000,000 bytes once densified"),
    (onnx_custom_op, r"node 'Exfiltrate' is in domain 'com.attacker', not a standard ONNX domain"),
    (onnx_recursive_function, r"ONNX function 'Loopy' calls itself"),
    (onnx_many_initializers, r"more than 1,000,000 nodes or 100,000 initializers"),
], ids=["constant-of-shape", "sparse", "custom-domain", "recursive-function", "many-initializers"])
def test_onnx_bombs_and_custom_ops_are_refused_before_onnxruntime_sees_them(tmp_path, build, match):
    build(tmp_path / "model.onnx")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=match):
        kerasio.load(tmp_path / "model.onnx", trust=True)


def test_onnxruntime_itself_would_build_the_constant_bomb(tmp_path):
    """The control for the constant bomb: onnxruntime folds it at session creation, in a capped process."""
    onnx_constant_of_shape(tmp_path / "model.onnx")
    code = ("import resource, onnxruntime\nresource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            f"onnxruntime.InferenceSession({str(tmp_path / 'model.onnx')!r}).run(None, "
            "{'features': __import__('numpy').ones((1, 10), 'float32')})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and ("alloc" in out.stderr.lower() or "memory" in out.stderr.lower()), out.stderr[-500:]


def test_an_onnx_loop_that_never_ends_is_stopped_at_the_time_limit(tmp_path):
    onnx_loop_forever(tmp_path / "model.onnx")
    with kerasio.load(tmp_path / "model.onnx", limits=kerasio.Limits(timeout=5)) as model:
        assert model.isolated  # a bare file is never the caller's own
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"time limit \(5 s a step\)"):
            model.run(X)


def test_an_output_wider_than_the_signature_is_refused_not_indexed(bundle, tmp_path):
    """The class names say 3; an artifact that returns 5 columns would index past them (an IndexError in predict)."""
    b = swap(copy_bundle(bundle, tmp_path / "b"), "onnx", onnx_wider_output)
    with pytest.raises(kerasio.errors.ArtifactError, match=r"returned output 'probabilities' as float32\[2, 5\], but the "
                                                    r"signature declares probabilities: float32\[None, 3\]"):
        with kerasio.load(b, format="onnx") as model:
            model.predict(X)
    np.save(tmp_path / "rows.npy", X)
    assert_contained(cli("predict", str(b), "--format", "onnx", "--input", str(tmp_path / "rows.npy")),
                     message=r"returned output 'probabilities'")


@pytest.mark.parametrize("build, match", [
    (tflite_while_self, r"subgraph 0 calls itself \(through its control flow\)"),
    (tflite_signature_out_of_range, r"signature 0 names tensor 9999 of subgraph 0, which has \d+"),
    (tflite_custom_op, r"uses custom op 'FlexWriteFile'"),
], ids=["while-self", "signature-out-of-range", "custom-op"])
def test_litert_files_that_would_crash_the_interpreter_are_refused(bundle, tmp_path, build, match):
    src = bundle / kerasio.read_manifest(bundle).artifact("litert").path
    build(src, tmp_path / "model.tflite")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=match):
        kerasio.load(tmp_path / "model.tflite", trust=True)


def test_the_raw_interpreter_trusts_an_out_of_range_index(bundle, tmp_path):
    """The control: the interpreter itself reads the index (its own check is the last line before memory)."""
    src = bundle / kerasio.read_manifest(bundle).artifact("litert").path
    tflite_signature_out_of_range(src, tmp_path / "model.tflite")
    code = ("from ai_edge_litert.interpreter import Interpreter\n"
            f"Interpreter(model_path={str(tmp_path / 'model.tflite')!r}).get_signature_runner('serving_default')"
            "(features=__import__('numpy').ones((1, 10), 'float32'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "tensor_index" in out.stderr, out.stderr[-500:]


def test_a_litert_loop_that_never_ends_is_stopped_at_the_time_limit(bundle, tmp_path):
    b = swap(copy_bundle(bundle, tmp_path / "b"), "litert",
             lambda p: tflite_while_long(bundle / kerasio.read_manifest(bundle).artifact("litert").path, p))
    np.save(tmp_path / "rows.npy", X)
    result = cli("predict", str(b), "--format", "litert", "--input", str(tmp_path / "rows.npy"), "--timeout", "5")
    assert_contained(result, within=90, message=r"time limit \(5 s a step\)")
