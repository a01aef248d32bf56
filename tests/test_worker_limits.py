"""The untrusted worker's own confinement, shown with a payload that runs as soon as it is loaded (a pickle the
caller trusted): a scrubbed environment, no network, a crash that stays in the worker, and limits on open files
and on the size of what it writes. Each has a control: the same payload in the caller's process does what it was
built to do."""
from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from bundles import copy_bundle
from hostile import SECRET, SECRET_NAME, add_pickle

import kerasio
from kerasio.process.sandbox import abi_version

X = np.ones((2, 10), np.float32)


def _pickled(keras_bundle, tmp_path, code):
    return add_pickle(copy_bundle(keras_bundle, tmp_path / "b"), code)


def _in_worker(bundle, **limits):
    with kerasio.loading.load_isolated(bundle, format="pickle", trust=True, limits=kerasio.Limits(**limits)) as model:
        model.run(X)


def test_the_worker_environment_holds_no_secret_of_the_callers(keras_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv(SECRET_NAME, SECRET)
    b = _pickled(keras_bundle, tmp_path, f"import os\nraise ValueError('env=' + os.environ.get({SECRET_NAME!r}, "
                                         "'absent') + ' home=' + os.environ.get('HOME', ''))")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"ValueError: env=absent home=/") as info:
        _in_worker(b)
    assert SECRET not in str(info.value) and "kerasio-verify-" in str(info.value)  # HOME is its own directory
    with pytest.raises(kerasio.errors.ArtifactError, match=f"env={SECRET}"):  # the control: here the payload finds it
        kerasio.load(b, format="pickle", trust=True)


def test_the_worker_cannot_connect_anywhere(keras_bundle, tmp_path):
    try:
        if abi_version() < 4:
            pytest.skip("this kernel's Landlock has no network rules (ABI < 4)")
    except OSError as exc:
        pytest.skip(f"no Landlock: {exc}")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    seen: list[object] = []
    threading.Thread(target=lambda: seen.append(server.accept()), daemon=True).start()
    port = server.getsockname()[1]
    b = _pickled(keras_bundle, tmp_path, "import socket\ns = socket.socket()\ns.settimeout(5)\n"
                                         f"s.connect(('127.0.0.1', {port}))\nraise ValueError('connected')")
    with pytest.raises(kerasio.errors.ArtifactError, match=r"Permission denied"):
        _in_worker(b)
    assert not seen
    with pytest.raises(kerasio.errors.ArtifactError, match=r"connected"):  # the control: from here it connects
        kerasio.load(b, format="pickle", trust=True)
    server.close()


def test_a_crash_stays_in_the_worker(keras_bundle, tmp_path):
    b = _pickled(keras_bundle, tmp_path, "import ctypes\nctypes.string_at(0)")
    with pytest.raises(kerasio.errors.WorkerError,
                       match=r"died during the load of model\.pkl \(pickle\) \(exit code -11\)") as info:
        _in_worker(b)
    assert "\n" not in str(info.value)


def test_open_files_are_limited(keras_bundle, tmp_path):
    b = _pickled(keras_bundle, tmp_path, "kept = [open('/dev/null') for _ in range(500)]\nraise ValueError('opened')")
    with pytest.raises(kerasio.errors.ResourceLimitError, match=r"open-files limit \(64\)") as info:
        _in_worker(b, files=64)
    assert info.value.limit == "open files"
    with pytest.raises(kerasio.errors.ArtifactError, match=r"opened"):  # the control: no such limit here
        kerasio.load(b, format="pickle", trust=True)


def test_what_the_worker_writes_is_limited_in_size(keras_bundle):
    rows = np.ones((200_000, 10), np.float32)  # 2.4 MB of probabilities, over the limit
    with kerasio.loading.load_isolated(keras_bundle, limits=kerasio.Limits(file_size="1M")) as model:
        with pytest.raises(kerasio.errors.ResourceLimitError, match=r"file-size limit \(1.0 MiB\)") as info:
            model.run(rows)
        assert info.value.limit == "file size"
    with kerasio.loading.load_isolated(keras_bundle, limits=kerasio.Limits(file_size="64M")) as model:  # the control
        assert model.run(rows)["probabilities"].shape == (200_000, 3)
