"""No process started by a kerasio command outlives it.

Each command runs in a new session; when it returns, that session must hold no
process (a child outlives its parent in the parent's session, even once
re-parented to init). The verification worker is the child to watch.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

KERASIO = [sys.executable, "-m", "kerasio"]


def session_processes(sid: int) -> list[str]:
    """``pid command`` of every live process in session ``sid`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(f"{entry.name} {stat[stat.index('(') + 1:stat.rindex(')')]}")
    return found


def run_in_new_session(args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``args`` as a session leader; return its result and what of its session is alive once it has exited.

    Output goes to files, not pipes: reading a pipe to EOF would also wait for
    any child that inherited it, and so hide exactly what this looks for.
    """
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(args, start_new_session=True, stdout=out, stderr=err, text=True,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        proc.wait(timeout=600)
        left = session_processes(proc.pid)  # the session id is the leader's pid
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, proc.returncode, out.read(), err.read()), left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists processes through /proc (Linux)")
def test_no_process_outlives_run_verify_or_predict(tmp_path, bundle):
    out = tmp_path / "seed"
    ran, left = run_in_new_session([*KERASIO, "run", "--out", str(out), "--epochs", "1"])
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert left == [], f"kerasio run left {left} running"
    checked, left = run_in_new_session([*KERASIO, "verify", str(out)])
    assert checked.returncode == 0 and "2 of 2 checks passed (fresh-process)" in checked.stdout, checked.stderr
    assert left == [], f"kerasio verify left {left} running"
    rows = tmp_path / "rows.npy"
    import numpy as np

    np.save(rows, np.load(out / "reference_inputs.npz")["features"][:3])
    predicted, left = run_in_new_session([*KERASIO, "predict", str(out), "--input", str(rows)])
    assert predicted.returncode == 0 and predicted.stdout.startswith("label,"), predicted.stderr[-2000:]
    assert left == [], f"kerasio predict left {left} running"


def test_the_session_scan_sees_a_left_behind_child():
    """The check above can fail: a command that leaves a child behind is caught."""
    code = "import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3)'])"
    ran, left = run_in_new_session([sys.executable, "-c", code])
    assert ran.returncode == 0 and len(left) == 1 and "python" in left[0]
