"""Distributed training: each strategy trains, exports and verifies, within 0.02 accuracy of one device.

Every run is a real ``kerasio run`` in fresh processes: MirroredStrategy over the CPU split into 2 logical
devices, MultiWorkerMirroredStrategy over 2 worker processes on 127.0.0.1, and Keras's JAX DataParallel over
2 host devices (XLA_FLAGS). The single-device reference is the session's own training run (same seed, epochs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import EPOCHS

import kerasio
from kerasio.errors import InputError


def _kerasio(args: list[str], tmp_path: Path, *, env: dict[str, str] | None = None, timeout: float = 400):
    scratch = tmp_path / "tmp"  # TMPDIR of the run: every temporary directory it makes must be gone after
    scratch.mkdir(exist_ok=True)
    full = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(scratch), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "kerasio", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, cwd=tmp_path)
    return proc, scratch


def _trained(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[dict, Path]:
    out = tmp_path / "bundle"
    proc, scratch = _kerasio(["run", "--epochs", str(EPOCHS), "--formats", "keras,savedmodel", "--out", str(out),
                              "--json", *args], tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["published"] and summary["verification"]["ok"]
    ours = [p.name for p in scratch.iterdir() if not p.name.startswith("__autograph_generated_file")]  # TF's own
    assert ours == [], f"temporary files left behind: {ours}"
    return summary, out


def _check(summary: dict, out: Path, pipeline, *, strategy: str, replicas: int, workers: int) -> None:
    record = kerasio.read_manifest(out).training["distribution"]
    assert record == {**record, "strategy": strategy, "replicas": replicas, "workers": workers,
                      "global_batch_size": 32, "per_replica_batch_size": 32 // replicas}
    single = pipeline.metrics["test_accuracy"]
    assert abs(summary["metrics"]["test_accuracy"] - single) <= 0.02, (summary["metrics"], single)
    # Export and verify are unchanged: a second, independent verification of the published bundle passes.
    report = kerasio.verify(out)
    assert report.ok and {c.format for c in report.checks} == {"keras", "savedmodel"}


def test_mirrored_on_two_logical_cpus(tmp_path, pipeline):
    summary, out = _trained(["--strategy", "mirrored", "--replicas", "2"], tmp_path)
    _check(summary, out, pipeline, strategy="mirrored", replicas=2, workers=1)
    assert kerasio.read_manifest(out).training["distribution"]["devices"] == ["/device:CPU:0", "/device:CPU:1"]


def test_multiworker_cluster_of_two_processes_on_loopback(tmp_path, pipeline):
    summary, out = _trained(["--strategy", "multiworker", "--workers", "2"], tmp_path)
    _check(summary, out, pipeline, strategy="multiworker", replicas=2, workers=2)
    assert kerasio.read_manifest(out).training["distribution"]["task"] == "worker:0"  # the chief wrote it
    leftover = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "a worker of the cluster outlived the command"


def test_jax_dataparallel_on_two_host_devices(tmp_path, pipeline):
    summary, out = _trained(["--strategy", "dataparallel", "--replicas", "2"], tmp_path,
                            env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    _check(summary, out, pipeline, strategy="dataparallel", replicas=2, workers=1)
    assert kerasio.read_manifest(out).backend == "jax"


def test_strategy_errors_are_clear_and_create_nothing(tmp_path):
    out = tmp_path / "never"
    cases = [
        (["--strategy", "dataparallel"], {}, "runs on Keras's jax backend, and this process uses tensorflow"),
        (["--strategy", "multiworker"], {}, "needs TF_CONFIG"),
        (["--strategy", "multiworker"], {"TF_CONFIG": "{not json"}, "TF_CONFIG is not a valid cluster"),
        (["--strategy", "mirrored", "--workers", "2"], {}, "--workers starts a multi-worker cluster"),
        (["--strategy", "mirrored", "--replicas", "3", "--batch-size", "32"], {},
         "batch size 32 does not split evenly over 3 replicas"),
        (["--strategy", "default", "--replicas", "2"], {}, "the default strategy trains on one device"),
    ]
    for args, env, message in cases:
        proc, _ = _kerasio(["run", "--out", str(out), "--epochs", "1", *args], tmp_path, env=env)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr and "Traceback" not in proc.stderr, (args, proc.stderr[-2000:])
        assert not out.exists() or not any(out.iterdir()), args


def test_fit_refuses_a_model_built_outside_the_strategy(pipeline):
    split = pipeline.split
    model = kerasio.recipe.build_classifier(10, 3, x_adapt=split.x_train)  # built on one device
    with pytest.raises(InputError, match="built outside the mirrored strategy's scope"):
        kerasio.recipe.fit(model, split.x_train, split.y_train, epochs=1, strategy="mirrored")
    with pytest.raises(InputError, match="unknown strategy 'ring'; choose one of default, mirrored"):
        kerasio.recipe.fit(model, split.x_train, split.y_train, epochs=1, strategy="ring")


def test_fit_builds_under_the_strategy_when_given_a_builder(pipeline):
    split = pipeline.split
    history = kerasio.recipe.fit(lambda: kerasio.recipe.build_classifier(10, 3, x_adapt=split.x_train), split.x_train,
                          split.y_train, epochs=1, strategy="mirrored", validation_data=(split.x_test, split.y_test))
    import tensorflow as tf

    assert isinstance(history.model.distribute_strategy, tf.distribute.MirroredStrategy)
    assert 0.5 < history.history["val_accuracy"][-1] <= 1.0


def test_local_cluster_stops_every_worker_when_one_fails(tmp_path):
    """A chief blocked in a collective would wait forever for a dead peer: the launcher stops it."""
    from kerasio.recipe.distribute import launch_local_cluster

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\n"
                    "case \"$TF_CONFIG\" in *'\"index\": 1'*) echo 'worker 1: lost its data' >&2; exit 3;; esac\n"
                    f"echo $$ > {tmp_path}/chief.pid; exec sleep 600\n")
    fake.chmod(0o755)
    lines: list[str] = []
    start = time.monotonic()
    code = launch_local_cluster(["run"], 2, python=str(fake), echo=lines.append)
    assert code == 3 and time.monotonic() - start < 30
    assert "worker 1 of the local cluster failed (exit 3)" in lines[0] and "lost its data" in lines[0]
    chief = int((tmp_path / "chief.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(chief, 0)


def test_local_cluster_times_out_without_leaving_processes(tmp_path):
    from kerasio.recipe.distribute import launch_local_cluster

    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\necho $$ >> {tmp_path}/pids; exec sleep 600\n")
    fake.chmod(0o755)
    lines: list[str] = []
    assert launch_local_cluster(["run"], 2, python=str(fake), echo=lines.append, timeout=2) == 124
    assert "did not finish within 2 s" in lines[0]
    for pid in map(int, (tmp_path / "pids").read_text().split()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_dataparallel_cuts_uneven_batches_instead_of_failing(tmp_path):
    """JAX shards every batch evenly: 799 training rows and 201 test rows, in memory and streamed, still train."""
    import pandas as pd

    from kerasio.recipe.data import DEFAULT_DATA

    env = {"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    base = ["run", "--strategy", "dataparallel", "--replicas", "2", "--epochs", "1", "--formats", "keras"]
    proc, _ = _kerasio([*base, "--test-size", "201", "--out", str(tmp_path / "a")], tmp_path, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "on 200 of 201 rows (a multiple of 2 for dataparallel)" in proc.stdout
    odd = tmp_path / "odd.csv"
    pd.read_csv(DEFAULT_DATA).iloc[:999].to_csv(odd, index=False)
    proc, _ = _kerasio([*base, "--data", str(odd), "--label", "species", "--streaming", "--out", str(tmp_path / "b")],
                       tmp_path, env=env)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert kerasio.read_manifest(tmp_path / "b").training["data"]["streaming"]
