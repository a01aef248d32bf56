"""Hostile SavedModels: the audit judges what TensorFlow's loader will run (every function of the library), and
what no audit can see (a loop, an allocation computed at run time) is stopped by the worker's limits.

Each attack has a control that runs it through plain TensorFlow and shows it does what it was built to do, so that
the kerasio assertion that follows cannot pass for want of a working attack."""
from __future__ import annotations

import os

import numpy as np
import pytest
from bundles import copy_bundle
from hostile import (
    SECRET,
    SECRET_NAME,
    assert_contained,
    cli,
    sm_fill_at_run_time,
    sm_fill_constant,
    sm_object_graph_bypass,
    sm_read_file,
    sm_recursive,
    sm_saver_prefix,
    sm_splat,
    sm_unlinked_initializer,
    sm_while_forever,
    swap,
)

import kerasio
from kerasio.bundle.audit import audit_saved_model

X = np.ones((2, 10), np.float32)


@pytest.fixture
def canary(tmp_path):
    (tmp_path / "outside").mkdir()
    (tmp_path / "secret.txt").write_text(SECRET)
    return tmp_path / "outside" / "canary"


def _bundle(keras_bundle, tmp_path, build):
    return swap(copy_bundle(keras_bundle, tmp_path / "b"), "savedmodel", build)


def _named(bundle):
    return bundle / kerasio.read_manifest(bundle).artifact("savedmodel").path


def test_an_object_graph_signature_that_differs_from_the_signature_def_is_audited(keras_bundle, tmp_path, canary):
    import tensorflow as tf

    b = _bundle(keras_bundle, tmp_path, lambda p: sm_object_graph_bypass(p, canary, tmp_path / "secret.txt"))
    tf.saved_model.load(str(_named(b))).signatures["serving_default"](features=tf.constant(X))
    assert canary.read_text() == SECRET  # the control: TensorFlow calls the object graph's function
    canary.unlink()
    for trust in (False, True):  # the audit runs in whichever process loads it
        with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"the SavedModel's signature 'serving_default' runs op "
                                                              r"'(ReadFile|WriteFile)' \(in function '__inference_evil"):
            kerasio.load(b, format="savedmodel", trust=trust)
    assert not canary.exists()
    assert_contained(cli("predict", str(b), "--format", "savedmodel", "--input", str(tmp_path / "rows.npy")),
                     canary=canary)


def test_a_resource_initializer_unlinked_from_the_init_op_is_audited(keras_bundle, tmp_path, canary):
    import tensorflow as tf

    b = _bundle(keras_bundle, tmp_path, lambda p: sm_unlinked_initializer(p, canary, tmp_path / "secret.txt"))
    tf.saved_model.load(str(_named(b)))
    assert canary.read_text() == SECRET  # the control: TensorFlow's loader runs _initialize, linked or not
    canary.unlink()
    with pytest.raises(kerasio.errors.UnsafeArtifactError,
                       match=r"function '__inference__initializer_\d+' runs op '(ReadFile|WriteFile)'"):
        kerasio.load(b, format="savedmodel")
    report = kerasio.verify(b, formats="savedmodel", record=False)
    assert not report.ok and "runs op" in report.checks[0].error and not canary.exists()


def test_the_savers_restore_may_read_only_the_prefix_the_loader_gives(tmp_path):
    sm_saver_prefix(tmp_path / "sm", tmp_path / "elsewhere")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"the saver's function '__inference__traced_restore_\d+' "
                                                          r"runs RestoreV2 on a path written into the graph"):
        audit_saved_model(tmp_path / "sm")


@pytest.mark.parametrize("build, match", [
    (sm_splat, r"constant .* declares 8,589,934,592 bytes but holds \d+ \(one value repeated over a huge shape\)"),
    (sm_fill_constant, r"Fill node .* allocates a tensor of shape \[100000, 100000\] \(10,000,000,000 elements\)"),
    (sm_recursive, r"function '__inference_\w*serve_\d+' calls itself"),
], ids=["splat", "fill", "recursion"])
def test_constant_bombs_and_recursion_are_refused_before_tensorflow_builds_anything(tmp_path, build, match):
    build(tmp_path / "sm")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=match):
        kerasio.load(tmp_path / "sm", trust=True)


def test_a_loop_that_never_ends_is_stopped_at_the_time_limit(keras_bundle, tmp_path):
    b = _bundle(keras_bundle, tmp_path, sm_while_forever)
    np.save(tmp_path / "rows.npy", X)
    with kerasio.load(b, format="savedmodel", limits=kerasio.Limits(timeout=6)) as model:
        assert model.isolated
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"reached the untrusted worker's time limit \(6 s a step\) "
                                                             r"and was stopped.*--timeout SECONDS") as info:
            model.run(X)
        with pytest.raises(kerasio.errors.WorkerError, match=r"this artifact's worker was stopped when it reached its wall "
                                                      r"time limit.*load the artifact again"):
            model.run(X)  # the stopped worker is not silently reused
    assert info.value.limit == "wall time"
    assert_contained(cli("predict", str(b), "--format", "savedmodel", "--input", str(tmp_path / "rows.npy"),
                         "--timeout", "6"), within=120, message=r"time limit \(6 s a step\)")


def test_the_cpu_time_limit_is_enforced_by_the_kernel(keras_bundle, tmp_path):
    b = _bundle(keras_bundle, tmp_path, sm_while_forever)
    with kerasio.load(b, format="savedmodel", limits=kerasio.Limits(timeout=300, cpu=4)) as model:
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"CPU-time limit \(4 s a step\)") as info:
            model.run(X)
    assert info.value.limit == "CPU time"


def test_an_allocation_computed_at_run_time_hits_the_memory_limit(keras_bundle, tmp_path):
    b = _bundle(keras_bundle, tmp_path, sm_fill_at_run_time)
    with kerasio.load(b, format="savedmodel", limits=kerasio.Limits(memory="4G")) as model:
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"memory limit \(4.0 GiB\).*--max-memory SIZE") as info:
            model.run(X)
    assert info.value.limit == "memory"


def test_the_worker_can_read_no_environment(keras_bundle, tmp_path, monkeypatch):
    """With ReadFile allowed (the escape hatch), neither the worker's own environ nor this process's is readable,
    and the worker's environment holds no secret of the caller's to read in the first place."""
    monkeypatch.setenv(SECRET_NAME, SECRET)
    for i, target in enumerate(("/proc/self/environ", f"/proc/{os.getpid()}/environ")):
        (tmp_path / str(i)).mkdir()
        b = _bundle(keras_bundle, tmp_path / str(i), lambda p, t=target: sm_read_file(p, t))
        with pytest.raises(kerasio.errors.ArtifactError, match=r"Permission denied|PermissionDenied") as info:
            with kerasio.load(b, format="savedmodel", allow_ops=["ReadFile"]) as model:
                model.run(X)
        assert SECRET not in str(info.value)
        # The control: in this process (trusted), the same artifact reads the file.
        assert np.isfinite(kerasio.load(b, format="savedmodel", allow_ops=["ReadFile"], trust=True).run(X)
                           ["probabilities"]).all()
