"""Publishing under concurrency and failure: one writer at a time, leftovers cleaned, write errors named."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bundles import copy_bundle

import kerasio
from kerasio.bundle.fsutil import hash_artifact, sha256_file
from kerasio.bundle.layout import flat_name
from kerasio.cli import main

_WRITE = textwrap.dedent("""
    import json, os, sys, time
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, kerasio
    from kerasio.backends.environment import lean_imports
    with lean_imports():  # as the CLI starts Keras: without matplotlib and the other backends (2 s of 10 here)
        import keras
    def write(bundle, seed, count):
        for i in range(count):
            keras.utils.set_random_seed(seed * 100 + i)
            inp = keras.Input((4,), name="x")
            model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="p")(inp))
            x = np.random.default_rng(i).normal(size=(8, 4)).astype("float32")
            print("exporting", flush=True)
            start = time.perf_counter()
            result = kerasio.export(model, bundle, reference_inputs=x, formats="keras,savedmodel,h5")
            sm, k = result.manifest.artifact("savedmodel"), result.manifest.artifact("keras")
            print(json.dumps({"version": sm.path, "sha256": sm.sha256, "keras": k.path, "keras_sha256": k.sha256,
                              "seconds": time.perf_counter() - start}),
                  flush=True)
""")

# Usage: writer.py BUNDLE SEED [COUNT]: COUNT exports of a fresh model each (formats keras, savedmodel, h5), one JSON
# line per reported success.
WRITER = _WRITE + "write(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 1)\n"

# Usage: zygote.py: imports kerasio and Keras once (no TensorFlow op has run yet, so no runtime threads exist), then
# for each stdin line "BUNDLE SEED OUT [CRASH_AT]" forks one writer (one export, as writer.py does; its output in
# OUT), prints "pid N", waits for it and prints "exit N CODE" (as subprocess reports it: -9 for a SIGKILL). Each
# writer is a process of its own, killed as any would be; only the 7 s TensorFlow import is not paid again.
ZYGOTE = _WRITE + textwrap.dedent("""
    for line in sys.stdin:
        bundle, seed, out, *crash = line.split()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if crash:
                    os.environ["KERASIO_CRASH_AT"] = crash[0]
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                write(bundle, int(seed), 1)
                code = 0
            except BaseException:
                import traceback
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print("pid", pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print("exit", pid, -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status), flush=True)
""")


def _successes(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


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
        results += _successes(out)
    assert len(results) == 8
    versions = sorted(flat_name(r["version"]) for r in results)
    assert versions == sorted(f"serving/{n}" for n in range(1, 9))  # every reported success is there, none overwritten
    for r in results:  # ... with the bytes it reported, where TF Serving looks
        assert hash_artifact(bundle / flat_name(r["version"]))[0] == r["sha256"]
    assert kerasio.verify(bundle, record=False).ok  # the last writer's manifest is consistent with the files
    assert not [p.name for p in bundle.iterdir() if p.name.startswith(".kerasio-staging")]
    assert len(list((bundle / "generations").iterdir())) == 3  # the newest 3 generations are kept


def test_the_next_writer_removes_what_killed_writers_left(pipeline, tmp_path):
    bundle = tmp_path / "b"
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    (bundle / ".kerasio-staging-4242424-deadbeef" / "serving" / "2").mkdir(parents=True)
    (bundle / ".serving.old-12345678").mkdir()
    (bundle / ".kerasio.json.tmp-abcdef12").write_text("{")
    (bundle / "generations" / "7").mkdir()  # a killed writer's generation, renamed but never published
    (bundle / "generations" / ".old-1-0badf00d").mkdir()
    (bundle / "model.keras").unlink()  # a writer killed after its swap, before its links
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    assert sorted(p.name for p in bundle.iterdir() if p.name.startswith(".")) == [".kerasio.lock"]
    # 7 was never published (no reader ever saw it named), so its number is free again
    assert sorted(p.name for p in (bundle / "generations").iterdir()) == ["1", "2"]
    assert os.path.samefile(bundle / "model.keras", bundle / "generations/2/model.keras")


def test_an_unwritable_out_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["run", "--out", str(blocker / "seed"), "--epochs", "1"]) == 2
    captured = capsys.readouterr()
    assert "[3/6] train" not in captured.out  # nothing was trained for nothing
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "cannot write the bundle there" in err[0], err


FULL_DISK = textwrap.dedent("""
    # Runs inside a private mount namespace on a small tmpfs: export once, then fill the disk to several levels and
    # export again; print one JSON line of what happened at each level. (HDF5 writing into a full disk once left its
    # library broken, and the process died of SIGSEGV: h5 and weights are among the formats.)
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, keras, kerasio
    from kerasio.bundle.fsutil import hash_artifact
    disk, bundle = sys.argv[1], os.path.join(sys.argv[1], "b")
    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), name="x")
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="p")(keras.layers.Dense(256)(inp)))
    x = np.ones((4, 16), np.float32)
    kerasio.export(model, bundle, reference_inputs=x, formats="keras,savedmodel,h5,weights")
    def state():
        return {p: hash_artifact(os.path.join(bundle, p))[0] for p in sorted(os.listdir(bundle)) if p != ".kerasio.lock"}
    results = []
    for free_kb in (0, 16, 64, 128, 256, 384, 512, 768, 1024, 1536):
        filler = os.path.join(disk, "filler")
        if os.path.exists(filler):
            os.remove(filler)
        before, manifest_before = state(), open(os.path.join(bundle, "kerasio.json")).read()
        st = os.statvfs(disk)
        with open(filler, "wb") as f:
            f.write(b"\\0" * max(0, st.f_bavail * st.f_frsize - free_kb * 1024))
        try:
            kerasio.export(model, bundle, reference_inputs=x, formats="keras,savedmodel,h5,weights")
            outcome = "published"
        except kerasio.KerasioError as exc:
            outcome = type(exc).__name__ + ": " + str(exc)
        os.remove(filler)
        unchanged = state() == before and open(os.path.join(bundle, "kerasio.json")).read() == manifest_before
        report = kerasio.verify(bundle, in_process=True, record=False)
        results.append({"free_kb": free_kb, "outcome": outcome, "unchanged": unchanged, "verifies": report.ok,
                        "staging_left": [p for p in os.listdir(bundle) if p.startswith(".kerasio-staging")]})
    print(json.dumps(results))
""")


def _in_namespace(*cmd: str) -> list[str]:
    """``cmd`` as root of a new user and mount namespace (unshare -rm), where it may mount a tmpfs."""
    return ["unshare", "-rm", *cmd]


def test_a_full_disk_is_named_and_the_bundle_is_left_as_it_was(tmp_path):
    """A real 12 MiB tmpfs, filled to ten levels: each failed export is one line naming the cause; nothing is lost."""
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK)
    disk = tmp_path / "disk"
    disk.mkdir()
    shell = f"mount -t tmpfs -o size=12m kerasio-test {disk} && exec {sys.executable} {script} {disk}"
    out = subprocess.run(_in_namespace("sh", "-c", shell), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TMPDIR": str(disk)})
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout.strip().splitlines()[-1])
    failed = [r for r in results if r["outcome"] != "published"]
    assert len(failed) >= 4, results  # the low levels cannot hold a new generation
    for r in results:
        assert r["verifies"] and not r["staging_left"], r
        if r["outcome"] != "published":
            assert r["unchanged"], r  # the previous bundle stays intact, byte for byte
            assert r["outcome"].startswith("ArtifactError: ") and "\n" not in r["outcome"], r
            assert "No space left on device; free some disk space or choose another --out" in r["outcome"], r


def _as_nobody(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as an unprivileged user (root ignores permissions); as a normal user, run it as is."""
    if os.geteuid() != 0:
        return cmd
    return ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", *cmd]


@pytest.fixture
def public_tmp():
    """A world-readable scratch directory (pytest's is private to its owner, so nobody could not enter it)."""
    import shutil
    import tempfile

    path = tempfile.mkdtemp(prefix="kerasio-perm-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_permission_denied_is_one_line_before_training_and_leaves_the_bundle(keras_bundle, public_tmp):
    import stat

    home = os.path.join(public_tmp, "home")
    os.mkdir(home)
    os.chmod(home, 0o777)
    env = {**os.environ, "HOME": home, "TMPDIR": home, "KERAS_HOME": home}
    locked = os.path.join(public_tmp, "locked")
    os.mkdir(locked)  # owned by root, 0755: nobody cannot write here
    out = subprocess.run(_as_nobody([sys.executable, "-m", "kerasio", "run", "--out", os.path.join(locked, "seed")]),
                         capture_output=True, text=True, timeout=600, env=env, cwd=public_tmp)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "[3/6] train" not in out.stdout  # refused before training
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "Permission denied; choose a writable --out or fix its permissions" in err[0], err
    # An existing bundle that the caller may read but not write: export fails in one line, the bundle is intact.
    bundle = os.path.join(public_tmp, "bundle")
    copy_bundle(keras_bundle, bundle)
    for root, dirs, files in os.walk(bundle):
        for name in dirs + files:
            os.chmod(os.path.join(root, name), stat.S_IMODE(os.lstat(os.path.join(root, name)).st_mode) | 0o444
                     | (0o111 if name in dirs else 0))
    os.chmod(bundle, 0o755)
    before = {p.relative_to(bundle).as_posix(): sha256_file(p) for p in Path(bundle).rglob("*") if p.is_file()}
    code = ("import numpy as np, keras, kerasio, sys\n"
            "inp = keras.Input((10,), name='features')\n"
            "m = keras.Model(inp, keras.layers.Dense(3, activation='softmax')(inp))\n"
            "try:\n    kerasio.export(m, sys.argv[1], reference_inputs=np.ones((2, 10), 'float32'))\n"
            "except kerasio.KerasioError as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run(_as_nobody([sys.executable, "-c", code, bundle]), capture_output=True, text=True,
                         timeout=600, env=env, cwd=public_tmp)
    assert out.stdout.startswith("ArtifactError ") and "Permission denied" in out.stdout, out.stdout + out.stderr[-2000:]
    assert "choose a writable --out or fix its permissions" in out.stdout
    after = {p.relative_to(bundle).as_posix(): sha256_file(p) for p in Path(bundle).rglob("*") if p.is_file()}
    assert after == before
    assert kerasio.verify(bundle, in_process=True, record=False).ok


CRASH_POINTS = ["saved:keras", "saved:savedmodel", "saved:h5", "staged", "generation-renamed", "manifest-swapped",
                "linked:model.keras", "linked:serving", "linked:model.h5", "linked:reference_inputs.npz",
                "linked:reference_outputs.npz", "linked:reference_outputs_1row.npz", "pruned"]


def _check_bundle_after_kill(bundle, reported):
    """Every published state verifies; no half-written version is visible; every reported success is there."""
    report = kerasio.verify(bundle, in_process=True, record=False)
    assert report.ok, report.table()
    loaded = kerasio.load(bundle)
    assert loaded.sha256 == kerasio.read_manifest(bundle).artifact("keras").sha256
    for version in (bundle / "serving").iterdir():
        if version.name.isdigit():  # what TF Serving would load: complete, and the bytes of its generation
            assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir(), version
    for r in reported:
        assert hash_artifact(bundle / flat_name(r["version"]))[0] == r["sha256"], r


def _kill_runs(bundle, zygote_script, plans, rng_seed):
    """One writer per plan, each forked from a zygote of its own: a named crash point (``KERASIO_CRASH_AT``) or a
    SIGKILL after a delay."""
    import random
    import signal
    import time

    rng = random.Random(rng_seed)
    reported, interrupted = [], 0
    with open(bundle.parent / f"{bundle.name}.zygote.err", "w") as err, \
            subprocess.Popen([sys.executable, str(zygote_script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=err, text=True) as zygote:

        def one(i, plan):
            out = bundle.parent / f"{bundle.name}.writer{i}.out"
            zygote.stdin.write(f"{bundle} {10 + i} {out} {plan if isinstance(plan, str) else ''}\n")
            zygote.stdin.flush()
            said = zygote.stdout.readline().split()
            assert said[:1] == ["pid"], (said, Path(err.name).read_text()[-2000:])
            pid = int(said[1])
            if isinstance(plan, float):
                deadline = time.monotonic() + 600
                while not (out.is_file() and "exporting" in out.read_text()) and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(rng.uniform(0, plan * seconds))
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:  # it finished first (a zombie still has its pid until reaped)
                    pass
            ended = zygote.stdout.readline().split()
            assert ended[:2] == ["exit", str(pid)], ended
            return int(ended[2]), out.read_text()

        def checked(i, plan):
            try:
                return one(i, plan)
            except BaseException:
                zygote.kill()  # not left waiting on a writer that will never report
                raise

        code, text = checked(0, None)
        assert code == 0, text[-2000:]
        seconds = _successes(text)[0]["seconds"]  # how long one export takes here: kill within that
        for i, plan in enumerate(plans, start=1):
            code, text = checked(i, plan)
            if isinstance(plan, str):
                assert code == -signal.SIGKILL, (plan, text[-2000:])
            reported += _successes(text)
            interrupted += not _successes(text)
            # Kill within the quickest export seen: the other test process (pytest -n) loads this machine unevenly,
            # so a moment drawn from a slow export would often land after one.
            seconds = min([seconds] + [r["seconds"] for r in _successes(text)])
            _check_bundle_after_kill(bundle, reported)
        zygote.stdin.close()
    return interrupted


def test_kill_9_at_32_points_through_an_export(tmp_path):
    """13 named points (after each artifact, each commit step and each link) and 19 random moments."""
    import concurrent.futures

    script, zygote = tmp_path / "writer.py", tmp_path / "zygote.py"
    script.write_text(WRITER)
    zygote.write_text(ZYGOTE)
    plans = CRASH_POINTS + [1.0] * 19  # at a random moment within one export's duration
    halves = [plans[0::2], plans[1::2]]  # two bundles at once, one per core
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_kill_runs, tmp_path / f"b{k}", zygote, half, k) for k, half in enumerate(halves)]
        interrupted = sum(future.result() for future in futures)
    # Most random kills land inside the export (the rest after it reported success, which is then checked too);
    # the crash points after the swap leave a published export that was killed before it could report.
    assert interrupted >= 24, interrupted
    for k in range(2):  # the next writer after all those kills publishes, and leaves nothing behind
        bundle = tmp_path / f"b{k}"
        subprocess.run([sys.executable, str(script), str(bundle), "99"], check=True, capture_output=True, timeout=600)
        _check_bundle_after_kill(bundle, [])
        hidden = [p for p in [*bundle.iterdir(), *(bundle / "serving").iterdir(), *(bundle / "generations").iterdir()]
                  if p.name.startswith(".") and p.name != ".kerasio.lock"]
        assert hidden == []
        assert len(list((bundle / "generations").iterdir())) <= 3


READER = textwrap.dedent("""
    # Usage: reader.py BUNDLE STOPFILE: load and run the bundle until STOPFILE exists; print a JSON summary.
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import numpy as np, kerasio
    import kerasio.backends.environment
    kerasio.backends.environment.LEAN = True  # Keras starts as under the CLI, without what kerasio never uses
    bundle, stop = sys.argv[1], sys.argv[2]
    loads, errors, mixed, shas = 0, [], 0, set()
    while not os.path.exists(stop) or loads == 0:
        try:
            m = kerasio.load(bundle)
            x, y = m.manifest.reference_arrays(bundle)  # the references of the manifest that was loaded
            got = m.run(x)["p"]
            if not np.allclose(got, y["p"], atol=1e-5):
                mixed += 1  # a model from one export paired with another export's references
            shas.add(m.sha256)
            loads += 1
        except Exception as exc:
            errors.append(type(exc).__name__ + ": " + str(exc)[:300])
    print(json.dumps({"loads": loads, "errors": errors, "mixed": mixed, "shas": sorted(shas)}))
""")


def test_eight_readers_during_re_exports_never_see_a_mix(tmp_path):
    """6 readers through the API and 2 through the CLI, while 2 writers re-export, keeping only 1 generation."""
    import time

    bundle, stop = tmp_path / "b", tmp_path / "stop"
    writer, reader = tmp_path / "writer.py", tmp_path / "reader.py"
    writer.write_text(WRITER)
    reader.write_text(READER)
    env = {**os.environ, "KERASIO_KEEP_GENERATIONS": "1"}  # prune as hard as possible
    first = _successes(subprocess.run([sys.executable, str(writer), str(bundle), "1"], check=True, text=True,
                                      capture_output=True, timeout=600, env=env).stdout)
    readers = [subprocess.Popen([sys.executable, str(reader), str(bundle), str(stop)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for _ in range(6)]
    rows = tmp_path / "rows.csv"
    rows.write_text("f0,f1,f2,f3\n1,2,3,4\n")
    cli_runs = []

    def cli_reader():
        while not stop.exists():
            run = subprocess.run([sys.executable, "-m", "kerasio", "predict", str(bundle), "--input", str(rows)],
                                 capture_output=True, text=True, timeout=600, env=env)
            cli_runs.append((run.returncode, run.stderr.strip().splitlines()[-1:] if run.returncode else []))

    import threading

    threads = [threading.Thread(target=cli_reader) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(3)
    writers = [subprocess.Popen([sys.executable, str(writer), str(bundle), str(2 + k), "4"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for k in range(2)]
    published = list(first)
    for proc in writers:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-2000:]
        published += _successes(out)
    stop.write_text("")
    for t in threads:
        t.join(timeout=600)
    summaries = []
    for proc in readers:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert len(published) == 9
    assert [s["errors"] for s in summaries] == [[]] * 6  # no spurious IntegrityError, no missing file
    assert [s["mixed"] for s in summaries] == [0] * 6
    assert sum(s["loads"] for s in summaries) >= 30
    assert {sha for s in summaries for sha in s["shas"]} <= {r["keras_sha256"] for r in published}
    assert len({sha for s in summaries for sha in s["shas"]}) >= 2  # the readers really did overlap re-exports
    assert len(cli_runs) >= 2 and all(code == 0 for code, _ in cli_runs), cli_runs
    for r in published:  # every reported success is present, with the bytes it reported
        assert hash_artifact(bundle / flat_name(r["version"]))[0] == r["sha256"]


def test_a_failure_after_the_swap_keeps_the_export_and_the_next_writer_completes_it(pipeline, tmp_path, monkeypatch):
    import kerasio.bundle.publish as publish

    bundle = tmp_path / "b"
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")

    real = publish.sync_conveniences

    def full_after_the_swap(target, manifest):  # the repair before staging still works; the new links fail
        if manifest.artifact("keras").path.startswith("generations/2/"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(target, manifest)

    monkeypatch.setattr(publish, "sync_conveniences", full_after_the_swap)
    with pytest.warns(UserWarning, match=r"the export is published, but its top-level links .*\(No space left"):
        result = kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    assert result.manifest.artifact("keras").path == "generations/2/model.keras"
    assert not os.path.samefile(bundle / "model.keras", bundle / "generations/2/model.keras")  # links not made
    assert kerasio.load(bundle).sha256 == result.manifest.artifact("keras").sha256  # kerasio reads the manifest
    monkeypatch.undo()
    kerasio.export(pipeline.model, bundle, reference_inputs=pipeline.split.x_test[:4], formats="keras")
    assert os.path.samefile(bundle / "model.keras", bundle / "generations/3/model.keras")


def test_a_loaded_model_keeps_its_generation_until_it_is_gone(pipeline, tmp_path, monkeypatch):
    """Found by the 8-reader test: references read after load() must not vanish under a pruning writer."""
    import gc

    monkeypatch.setenv("KERASIO_KEEP_GENERATIONS", "1")
    bundle, x = tmp_path / "b", pipeline.split.x_test[:20]

    def export():
        kerasio.export(pipeline.model, bundle, reference_inputs=x, formats="keras", verify=False)

    export()
    loaded = kerasio.load(bundle)
    mine = loaded.path.parent
    export()
    export()  # two newer exports with one generation kept: the loaded one is skipped, not removed
    assert mine.is_dir()
    inputs, outputs = loaded.manifest.reference_arrays(bundle)
    assert np.array_equal(loaded.run(inputs)["probabilities"], outputs["probabilities"])
    del loaded, inputs, outputs
    gc.collect()
    export()  # released: the next writer prunes it
    assert not mine.exists()
