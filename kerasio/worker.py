"""Run artifact checks in a fresh interpreter: ``python -m kerasio.worker``.

Verification loads artifacts in a process that never saw the exporting model,
so nothing left in memory (a custom class registered only by the exporter, a
cached graph) can hide a broken artifact. The worker speaks JSON lines on
stdin/stdout; arrays travel as ``.npy`` files. It can be started before the
artifacts exist, so that its TensorFlow import overlaps training.
"""
from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import KerasioError

__all__ = ["run_check", "handle", "Worker"]


def _device_context(runtime: str, device: str):
    if runtime.startswith("keras"):
        from .runtime import device_scope

        return device_scope(device)
    if runtime == "tensorflow":
        import tensorflow as tf

        return tf.device("/GPU:0" if device == "gpu" else "/CPU:0")
    return contextlib.nullcontext()


def run_check(request: dict[str, Any]) -> dict[str, Any]:
    """Load one artifact and run the reference inputs through it on each device.

    Request keys: ``format``, ``path``, ``inputs`` (an ``.npy`` path), ``out_dir``,
    ``device`` (``auto|cpu|gpu|all``), ``precision`` (``highest|fast``),
    ``trust``, ``imports`` (modules to import first, e.g. custom layers),
    ``fast_math`` (also run with TF32 allowed on a GPU, for the drift report).
    Returns per-device result dicts with the paths of the outputs written.
    """
    from .formats import get_format
    from .runtime import device_name, keras_backend, precision_policy, resolve_devices

    for module in request.get("imports", ()):
        importlib.import_module(module)
    fmt = get_format(request["format"])
    path = Path(request["path"])
    x = np.load(request["inputs"], allow_pickle=False)
    runtime = fmt.runtime if fmt.runtime != "keras" else f"keras/{keras_backend()}"
    backend = keras_backend() if fmt.runtime == "keras" else fmt.runtime  # tensorflow, onnxruntime, litert
    results = []
    big = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*"))) > 64 << 20
    for device in resolve_devices(request.get("device", "auto"), backend):  # litert: CPU only
        kwargs = {"trust": bool(request.get("trust"))}
        if fmt.runtime == "onnxruntime":
            kwargs["providers"] = ["CUDAExecutionProvider"] if device == "gpu" else ["CPUExecutionProvider"]
        modes = [request.get("precision", "highest")]
        if device == "gpu" and request.get("fast_math", True) and "fast" not in modes:
            modes.append("fast")
        entry: dict[str, Any] = {"device": device, "runtime": runtime, "backend": backend,
                                 "device_name": device_name(device, backend),
                                 "precision": "float32-pinned" if modes[0] == "highest" else "tf32-allowed"}
        with _device_context(runtime, device):
            start = time.perf_counter()
            runner = fmt.load(path, **kwargs)
            entry["load_seconds"] = time.perf_counter() - start
            for mode in modes:  # the policy applies when the graph runs (JAX: when it is traced)
                with precision_policy(mode, backend):
                    start = time.perf_counter()
                    full = np.asarray(runner.predict_proba(x))
                    one = np.asarray(runner.predict_proba(x[:1]))
                out = Path(request["out_dir"]) / f"{fmt.name}-{device}-{mode}.npz"
                np.savez(out, full=full, one=one)
                if mode == modes[0]:
                    entry.update(outputs=str(out), run_seconds=time.perf_counter() - start)
                else:
                    entry["fast_outputs"] = str(out)
        del runner  # free this copy of the weights before the next load
        if big:  # Keras models hold reference cycles; a full collection costs ~0.1 s, so only when it pays
            gc.collect()
        results.append(entry)
    return {"ok": True, "results": results}


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """Answer one request; errors become ``{"ok": False, "error": ...}``, never an exception.

    The same function serves the fresh worker and ``verify(in_process=True)``,
    so both report a broken artifact the same way and go on to the next one.
    """
    op = request.get("op", "check")
    try:
        if op == "warm":
            for module in request.get("modules", ()):
                with contextlib.suppress(ImportError):
                    importlib.import_module(module)
            return {"ok": True}
        if op == "resume":
            from .resume import resume_check

            return {"ok": True, "result": resume_check(request["bundle"]).to_dict()}
        return run_check(request)
    except KerasioError as exc:
        return {"ok": False, "error": str(exc), "type": type(exc).__name__}
    except Exception as exc:  # report, do not die: the next artifact still gets checked
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc)[:500]}", "type": type(exc).__name__}


def _serve() -> None:
    """The worker loop: one JSON request per line in, one JSON answer per line out."""
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library chatter goes to stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        protocol.write(json.dumps(handle(request)) + "\n")


class Worker:
    """A fresh ``python -m kerasio.worker`` process for one Keras backend.

    Args:
        backend: ``KERAS_BACKEND`` for the child (``None`` keeps the parent's).
        warm: modules to import at once (e.g. ``["tensorflow", "keras"]``), so
            the import runs while the caller does other work.
    """

    def __init__(self, backend: str | None = None, *, warm: Sequence[str] = ("keras",), imports: Sequence[str] = ()):
        from .runtime import backend_env, default_backend

        self.backend = backend = backend or default_backend()
        env = backend_env(backend)
        # The child sees the same import path as this process (this kerasio, the user's
        # modules), but none of its in-memory state.
        root = str(Path(__file__).resolve().parent.parent)
        paths = [root, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self.tmp = tempfile.TemporaryDirectory(prefix="kerasio-verify-")
        self._stderr = open(Path(self.tmp.name) / "stderr.log", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kerasio.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, env=env, text=True, bufsize=1,
        )
        self._send({"op": "warm", "modules": [*imports, *warm]}, wait=False)
        self._pending = 1

    def _send(self, message: dict[str, Any], *, wait: bool = True) -> dict[str, Any] | None:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._receive() if wait else None

    def _receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            tail = self._stderr.read()[-2000:]
            raise KerasioError(f"the verification worker exited unexpectedly (backend {self.backend}):\n{tail}")
        return json.loads(line)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        while self._pending:
            self._receive()
            self._pending -= 1
        message.setdefault("out_dir", self.tmp.name)
        return self._send(message)

    def close(self) -> None:
        """Tell the worker to exit and return at once.

        A process that imported TensorFlow takes most of a second to tear down;
        nobody needs to wait for that, so a daemon thread reaps it.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.proc.stdin.close()
        threading.Thread(target=self._reap, daemon=True).start()
        self._stderr.close()
        self.tmp.cleanup()  # the worker no longer reads or writes there

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    _serve()
