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

from .errors import KerasioError

__all__ = ["run_check", "handle", "Worker"]


def run_check(request: dict[str, Any]) -> dict[str, Any]:
    """Load one artifact and run the reference inputs through it on each device.

    Request keys: ``format``, ``path``, ``signature`` (the manifest's, as a
    dict), ``inputs`` (an ``.npz`` of named arrays), ``out_dir``, ``device``
    (``auto|cpu|gpu|all``), ``precision`` (``highest|fast``), ``trust``,
    ``imports`` (modules to import first, e.g. custom layers), ``fast_math``
    (also run with TF32 allowed on a GPU, for the drift report). Returns
    per-device result dicts with the paths of the outputs written. The format
    owns its runtime and devices; nothing here names one.
    """
    from .formats import get_format
    from .manifest import load_arrays, save_arrays
    from .runtime import device_name, keras_backend, precision_policy, resolve_devices
    from .signature import Signature

    for module in request.get("imports", ()):
        importlib.import_module(module)
    fmt = get_format(request["format"])
    signature = Signature.from_dict(request["signature"])
    path = Path(request["path"])
    x = load_arrays(Path(request["inputs"]), signature.input_names)
    first = {k: v[:1] for k, v in x.items()}
    backend = keras_backend()
    results = []
    big = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*"))) > 64 << 20
    devices = resolve_devices(request.get("device", "auto"), fmt.available_devices(backend), runtime=fmt.runtime)
    for device in devices:
        modes = [request.get("precision", "highest")]
        if device == "gpu" and request.get("fast_math", True) and "fast" not in modes:
            modes.append("fast")
        start = time.perf_counter()
        runner = fmt.load(path, signature=signature, device=device, trust=bool(request.get("trust")))
        entry: dict[str, Any] = {"device": device, "runtime": runner.runtime, "backend": runner.backend,
                                 "device_name": device_name(device, backend),
                                 "precision": "float32-pinned" if modes[0] == "highest" else "tf32-allowed",
                                 "load_seconds": time.perf_counter() - start}
        for mode in modes:  # the policy applies when the graph runs (JAX: when it is traced)
            with precision_policy(mode, backend):
                start = time.perf_counter()
                full, one = runner.run(x), runner.run(first)
            stem = Path(request["out_dir"]) / f"{fmt.name}-{device}-{mode}"
            save_arrays(stem.with_name(stem.name + "-full.npz"), full)
            save_arrays(stem.with_name(stem.name + "-one.npz"), one)
            if mode == modes[0]:
                entry.update(outputs=str(stem), run_seconds=time.perf_counter() - start)
            else:
                entry["fast_outputs"] = str(stem)
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
        if op == "call":  # a kerasio function run in this fresh process (e.g. the training replay of --resume)
            module, _, name = str(request["target"]).partition(":")
            if not module.startswith("kerasio."):
                raise ValueError(f"the worker only calls kerasio functions; received: target={request['target']!r}")
            result = getattr(importlib.import_module(module), name)(*request.get("args", ()))
            return {"ok": True, "result": result.to_dict() if hasattr(result, "to_dict") else result}
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
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self._send({"op": "warm", "modules": [*imports, *warm]})
        self._pending = 1

    def _send(self, message: dict[str, Any]) -> None:
        self._in.write(json.dumps(message) + "\n")
        self._in.flush()

    def _receive(self) -> dict[str, Any]:
        line = self._out.readline()
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
        self._send(message)
        return self._receive()

    def close(self) -> None:
        """Tell the worker to exit and return at once.

        A process that imported TensorFlow takes most of a second to tear down;
        nobody needs to wait for that, so a daemon thread reaps it.
        """
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                self._in.write(json.dumps({"op": "exit"}) + "\n")
                self._in.close()
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
