"""What a researcher sees while training: each epoch's row as the epoch ends, and a progress bar within long
epochs, driven through a real pseudo-terminal (a pipe would hide the bar, and could hide buffering)."""
from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time

import numpy as np
import pandas as pd

import kerasio


def _big_csv(path, rows=100_000, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 10)).astype(np.float32)
    y = np.argmax(x[:, :3] + 0.1 * rng.normal(size=(rows, 3)), axis=1)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(10)])
    frame["label"] = np.array(["a", "b", "c"])[y]
    frame.to_csv(path, index=False)
    return path


def _run_in_pty(argv, timeout=600):
    """Run ``argv`` with its stdout and stderr on a pseudo-terminal; return [(seconds since start, chunk)]."""
    leader, follower = pty.openpty()
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL, close_fds=True,
                            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    os.close(follower)
    chunks = []
    try:
        while time.monotonic() - start < timeout:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if ready:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the follower side closed: the process is done
                    break
                if not data:
                    break
                chunks.append((time.monotonic() - start, data.decode("utf-8", "replace")))
            elif proc.poll() is not None:
                break
    finally:
        os.close(leader)
        proc.wait(timeout=60)
    return proc.returncode, chunks


def _first_time(chunks, pattern):
    seen = ""
    for t, text in chunks:
        seen += text
        if re.search(pattern, seen):
            return t
    return None


def test_each_epoch_row_appears_as_its_epoch_ends_with_a_bar_within_long_epochs(tmp_path):
    data = _big_csv(tmp_path / "big.csv")
    code, chunks = _run_in_pty([sys.executable, "-m", "kerasio", "run", "--data", str(data), "--epochs", "3",
                                "--out", str(tmp_path / "b"), "--formats", "keras", "--no-verify"])
    text = "".join(c for _, c in chunks)
    assert code == 0, text[-3000:]
    rows = [_first_time(chunks, rf"\| {n} +\| \d") for n in (1, 2, 3)]
    export = _first_time(chunks, r"\[4/6\] export")
    assert None not in rows and export is not None, text[-3000:]
    # Rows arrive one by one, an epoch apart (each epoch is 2,500 batches here), not all at the end.
    assert rows[0] < rows[1] < rows[2] < export
    assert rows[1] - rows[0] > 1.0 and rows[2] - rows[1] > 1.0, rows
    # Within those epochs (longer than 2 s) the bar showed batches out of the epoch's total, the ETA and the loss.
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)  # the terminal's colour and cursor codes
    assert re.search(r"epoch [1-3] \S+ \d+/2500 \d+:\d\d:\d\d loss \d\.\d{4}", plain), plain[-3000:]
    # ... and was gone once each epoch ended: the final screen has the rows, not a bar.
    assert "| 3     |" in text


def test_predict_over_a_large_file_shows_rows_done_and_rows_per_second(tmp_path, bundle):
    features = kerasio.read_manifest(bundle).feature_names
    rows = 400_000
    x = np.random.default_rng(1).normal(size=(rows, len(features))).astype(np.float32)
    pd.DataFrame(x, columns=features).to_csv(tmp_path / "big.csv", index=False)
    code, chunks = _run_in_pty([sys.executable, "-m", "kerasio", "predict", str(bundle), "--input",
                                str(tmp_path / "big.csv"), "--output", str(tmp_path / "out.csv")])
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(c for _, c in chunks))
    assert code == 0, text[-3000:]
    assert re.search(r"predict .*\d+/400000 [\d,]+ rows/s", text), text[-3000:]  # the bar, while it ran
    assert re.search(r"wrote 400,000 predictions to .*out\.csv \([\d,]+ rows/s; model ", text), text[-3000:]
    assert len(pd.read_csv(tmp_path / "out.csv")) == rows
