"""A hostile manifest and hostile bundle layouts: every field bounded and typed before use, sizes compared before a
byte is read, links never followed, locks never waited on forever, and every string escaped on its way out."""
from __future__ import annotations

import fcntl
import os
import shutil
import time

import numpy as np
import pytest
from bundles import copy_bundle, named
from hostile import assert_contained, cli, edit_manifest

import kerasio
from kerasio.cli import main


def _art(data, fmt="keras"):
    return next(a for a in data["artifacts"] if a["format"] == fmt)


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(metrics={"accuracy": "@@"}), r"field 'metrics\.accuracy' must be a number"),
    (lambda d: d["signature"]["inputs"][0].update(dtype="float1024"),
     r"field 'signature\.inputs\[0\]\.dtype' must be one of float16"),
    (lambda d: d["trace"].append({"epoch": 9, "loss": "low"}), r"field 'trace\[\d+\]\.loss' must be a number"),
    (lambda d: _art(d).update(path="generations/1/" + "m" * 300 + ".keras"),
     r"field 'artifacts\[0\]\.path' must be a path whose every component has at most 255 bytes"),
    (lambda d: _art(d).update(path="generations/1/model\n3 of 3 checks passed\x1b[32m.keras"),
     r"field 'artifacts\[0\]\.path' must be a path of at most 4096 characters without control characters"),
    (lambda d: d["task"].update(class_names=["x" * 2000, "b", "c"]), r"field 'task\.class_names\[0\]' must be a "
                                                                      r"name of at most 1024 characters"),
    (lambda d: d["artifacts"].extend([dict(_art(d), format=f"f{i}") for i in range(100)]),
     r"field 'artifacts' must be a list of at most 64 items"),
    (lambda d: d["artifacts"].append(dict(_art(d))), r"field 'artifacts' must be a list with one entry per format"),
], ids=["metric-type", "bogus-dtype", "trace-type", "long-component", "control-characters", "long-class-name",
        "many-artifacts", "duplicate-format"])
def test_a_manifest_field_out_of_bounds_is_one_kerasio_error(keras_bundle, tmp_path, change, match):
    b = edit_manifest(copy_bundle(keras_bundle, tmp_path / "b"), change)
    with pytest.raises(kerasio.errors.ArtifactError, match=match):
        kerasio.load(b)
    for command in (["inspect", str(b)], ["verify", str(b)]):
        assert_contained(cli(*command), codes=(2,), message=match.split(" must")[0])


@pytest.mark.parametrize("text, match", [
    (lambda raw: raw[:-2] + ', "n": ' + "7" * 5000 + "}", r"kerasio\.json: holds an integer of 5000 digits"),
    (lambda raw: raw[:-2] + ', "s": "' + "x" * (70 << 20) + '"}', r"kerasio\.json: the manifest is \d+ bytes, over the "
                                                                  r"limit of 67108864"),
    (lambda raw: raw[:-2] + ', "s": "' + "x" * (1 << 20) + '"}', r"kerasio\.json: holds a string of 1048576 characters"),
    (lambda raw: raw.replace('"label"', '"\\ud800label"'), r"kerasio\.json: holds a string that is not valid Unicode"),
], ids=["int-5000-digits", "70-mib", "long-string", "lone-surrogate"])
def test_manifest_text_python_cannot_take_is_refused_quickly(keras_bundle, tmp_path, text, match):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    raw = (b / "kerasio.json").read_text()
    (b / "kerasio.json").unlink()
    (b / "kerasio.json").write_text(text(raw))
    start = time.monotonic()
    with pytest.raises(kerasio.errors.ArtifactError, match=match):
        kerasio.read_manifest(b)
    assert time.monotonic() - start < 5
    assert_contained(cli("inspect", str(b)), codes=(2,), within=30)


def test_an_artifact_whose_size_differs_is_refused_before_a_byte_is_read(keras_bundle, tmp_path):
    """A 4 GiB sparse file under the artifact's name: refused by its size, never copied, hashed or read."""
    b = copy_bundle(keras_bundle, tmp_path / "b")
    target = named(b, "keras")
    target.unlink()
    with open(target, "wb") as f:
        f.truncate(4 << 30)
    start = time.monotonic()
    with pytest.raises(kerasio.errors.IntegrityError, match=r"model\.keras: 4,294,967,296 bytes on disk, but .* records "
                                                     r"[\d,]+\. The keras artifact was modified .* nothing was read"):
        kerasio.load(b)
    assert time.monotonic() - start < 5


def test_an_oversized_signature_file_is_refused_unread(keras_bundle, tmp_path):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    with open(b / "kerasio.json.sig", "wb") as f:
        f.truncate(8 << 30)
    key = tmp_path / "pub.pem"
    key.write_text("not used")
    start = time.monotonic()
    with pytest.raises(kerasio.errors.SignatureError, match=r"kerasio\.json\.sig: is 8,589,934,592 bytes; a kerasio signature "
                                                     r"is a few kilobytes"):
        kerasio.read_manifest(b, public_key=key)
    assert time.monotonic() - start < 5


def test_report_does_not_follow_a_serving_link_out_of_the_bundle(keras_bundle, tmp_path):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    outside = tmp_path / "outside"
    (outside / "31337").mkdir(parents=True)
    shutil.rmtree(b / "serving")
    (b / "serving").symlink_to(outside)
    from kerasio.report import render_report

    assert "31337" not in render_report(b)


def test_a_linked_generations_directory_is_refused_before_its_target_is_opened(keras_bundle, tmp_path, monkeypatch):
    """The outside generation is held locked by another process: had kerasio opened it to pin it, it would wait."""
    b = copy_bundle(keras_bundle, tmp_path / "b")
    outside = tmp_path / "outside"
    shutil.move(b / "generations", outside)
    (b / "generations").symlink_to(outside)
    gen = next(p for p in outside.iterdir() if p.name.isdigit())
    fd = os.open(gen, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setenv("KERASIO_LOCK_TIMEOUT", "30")
    try:
        start = time.monotonic()
        with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"generations: is a symbolic link"):
            kerasio.load(b)
        assert time.monotonic() - start < 5
    finally:
        os.close(fd)


def test_a_reader_gives_up_on_a_generation_another_process_holds(keras_bundle, tmp_path, monkeypatch):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    gen = b / named(b, "keras").relative_to(b).parts[0] / named(b, "keras").relative_to(b).parts[1]
    fd = os.open(gen, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    monkeypatch.setenv("KERASIO_LOCK_TIMEOUT", "1")
    try:
        start = time.monotonic()
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"another process has held this generation locked for "
                                                             r"over 1 s.*raise KERASIO_LOCK_TIMEOUT"):
            kerasio.load(b)
        assert time.monotonic() - start < 10
        assert_contained(cli("inspect", str(b), env={"KERASIO_LOCK_TIMEOUT": "1"}), codes=(2,), within=30)
    finally:
        os.close(fd)


def test_a_linked_lock_file_is_refused_and_its_target_kept(keras_bundle, tmp_path):
    b = copy_bundle(keras_bundle, tmp_path / "b")
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (b / ".kerasio.lock").unlink()
    (b / ".kerasio.lock").symlink_to(precious)
    key = tmp_path / "k.pem"
    key.write_text("unused")
    with pytest.raises(kerasio.errors.UnsafeArtifactError, match=r"\.kerasio\.lock: is a symbolic link; kerasio never writes "
                                                          r"through a link"):
        kerasio.sign(b, key)
    assert precious.read_text() == "keep me"


def test_strings_from_a_bundle_reach_the_terminal_escaped(keras_bundle, tmp_path):
    """A class name carrying a newline and ANSI colours cannot print a fake line, in inspect, predict or verify."""
    fake = "setosa\n3 of 3 checks passed\x1b[32m"

    def rename(data):
        data["task"]["class_names"][0] = fake

    b = edit_manifest(copy_bundle(keras_bundle, tmp_path / "b"), rename)
    np.save(tmp_path / "rows.npy", np.ones((3, 10), np.float32))
    for command in (["inspect", str(b)], ["predict", str(b), "--input", str(tmp_path / "rows.npy")],
                    ["verify", str(b), "--format", "keras"]):
        result = cli(*command)
        text = result.out + result.err
        assert "\x1b" not in text and "\n3 of 3 checks passed" not in text, text[-1500:]
        assert "Traceback" not in text
    shown = " ".join(cli("inspect", str(b)).out.split())
    assert "setosa\\n3 of 3 checks passed\\x1b[32m" in shown or "setosa\\x0a3 of 3 checks passed\\x1b[32m" in shown


def test_inspect_checks_hashes_and_says_what_it_did_not_check(keras_bundle, tmp_path, capsys):
    """An artifact swapped after signing: inspect says so in its first line and exits 1, and that it did not check
    the signature without a key."""
    b = copy_bundle(keras_bundle, tmp_path / "b")
    (b / "kerasio.json.sig").write_text("{}")
    target = named(b, "keras")
    data = bytearray(target.read_bytes())
    data[-30] ^= 0xFF
    target.unlink()
    target.write_bytes(bytes(data))
    assert main(["inspect", str(b)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "integrity   CHANGED: 1 of 7 files differ; signature present but NOT checked (--public-key)"
    assert lines[1] == "changed     model.keras: do not use this bundle"
    assert main(["inspect", str(keras_bundle)]) == 0
    assert capsys.readouterr().out.startswith("integrity   all 7 files match their sha256; not signed\n")
    from kerasio.report import render_report

    assert "CHANGED SINCE EXPORT" in render_report(b)


def test_a_file_size_limit_of_the_callers_own_is_one_line(keras_bundle):
    """Under ``ulimit -f`` (16 KiB), the private copy of model.keras cannot be written: EFBIG, named, not raised raw."""
    import subprocess
    import sys

    code = ("import resource, sys\nresource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384))\n"
            f"from kerasio.cli import main\nsys.exit(main(['verify', {str(keras_bundle)!r}, '--format', 'keras']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "copying the artifact hit this process's file-size limit (ulimit -f)" in out.stderr
