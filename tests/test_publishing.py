"""Publishing under concurrency and failure: one writer at a time, leftovers cleaned, write errors named."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
from bundles import copy_bundle, named  # noqa: F401

import kerasio
from kerasio.cli import main
from kerasio.fsutil import sha256_file

WRITER = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras, kerasio
    keras.utils.set_random_seed(int(sys.argv[2]))
    inp = keras.Input((4,), name="x")
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="p")(inp))
    result = kerasio.export(model, sys.argv[1], reference_inputs=np.ones((3, 4), np.float32), formats="keras,savedmodel")
    art = result.manifest.artifact("savedmodel")
    print(json.dumps({"version": art.path, "sha256": art.sha256}))
""")


def test_eight_concurrent_writers_each_get_their_own_version(tmp_path):
    bundle = tmp_path / "shared"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    procs = [subprocess.Popen([sys.executable, str(script), str(bundle), str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    versions = sorted(r["version"] for r in results)
    assert versions == [f"serving/{n}" for n in range(1, 9)]  # every reported success is there, none overwritten
    for r in results:  # ... with the bytes it reported
        from kerasio.fsutil import hash_artifact

        assert hash_artifact(bundle / r["version"])[0] == r["sha256"]
    assert kerasio.verify(bundle, record=False).ok  # the last writer's manifest is consistent with the files
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".kerasio-staging")]


def test_the_next_writer_removes_what_killed_writers_left(pipeline, tmp_path):
    bundle = tmp_path / "b"
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    (bundle / ".kerasio-staging-4242424-deadbeef" / "serving" / "2").mkdir(parents=True)
    (bundle / ".serving.old-12345678").mkdir()
    (bundle / ".kerasio.json.tmp-abcdef12").write_text("{")
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == [".kerasio.lock"]


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["run", "--out", str(blocker / "seed"), "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert "[3/6] train" not in captured.out  # nothing was trained for nothing
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot write the bundle there" in err[0], err


def test_a_full_disk_is_named_and_the_bundle_is_left_as_it_was(keras_bundle, pipeline, tmp_path, monkeypatch):

    out = tmp_path / "b"
    copy_bundle(keras_bundle, out)
    before = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()
              and p.name != ".kerasio.lock"}
    export_module = sys.modules["kerasio.export"]

    def full(src, dest):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))

    monkeypatch.setattr(export_module, "place", full)
    with pytest.raises(kerasio.ArtifactError, match=r"cannot write the bundle \(nothing was published; it is as it "
                                                    r"was\): No space left on device; free some disk space or choose "
                                                    r"another --out"):
        kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, formats="keras,savedmodel")
    after = {p.relative_to(out).as_posix(): sha256_file(p) for p in out.rglob("*") if p.is_file()
             and p.name != ".kerasio.lock"}
    assert after == before
