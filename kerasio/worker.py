"""Run artifact checks in a fresh interpreter: ``python -m kerasio.worker``.

Verification loads artifacts in a process that never saw the exporting model,
so nothing left in memory (a custom class registered only by the exporter, a
cached graph) can hide a broken artifact. The worker speaks JSON lines on
stdin/stdout; arrays travel as ``.npy`` files. It can be started before the
artifacts exist, so that its TensorFlow import overlaps training.
"""
from __future__ import annotations

import collections
import contextlib
import gc
import importlib
import itertools
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import KerasioError, WorkerError
from .fsutil import clean_stale_temp

__all__ = ["run_check", "handle", "Worker"]


def run_check(request: dict[str, Any]) -> dict[str, Any]:
    """Load one artifact and run the reference inputs through it on each device.

    Request keys: ``format``, ``path``, ``signature`` (the manifest's, as a
    dict), ``inputs`` (an ``.npz`` of named arrays), ``out_dir``, ``device``
    (``auto|cpu|gpu|all``), ``precision`` (``highest|fast``), ``trust``,
    ``imports`` (modules to import first, e.g. custom layers), ``allow_ops``
    (SavedModel ops accepted beyond the allowlist), ``fast_math`` (also run
    with TF32 allowed on a GPU, for the drift report). Returns
    per-device result dicts with the paths of the outputs written. The format
    owns its runtime and devices; nothing here names one.
    """
    from .audit import allowing_ops
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
        with allowing_ops(request.get("allow_ops", ())):
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


_OPEN: dict[str, Any] = {}  # path -> Runner: the artifacts `kerasio predict` opened in this worker


def open_artifact(request: dict[str, Any]) -> dict[str, Any]:
    """Load an artifact for ``run`` requests; answer with the signature it runs with."""
    from .audit import allowing_ops
    from .formats import get_format
    from .signature import Signature

    for module in request.get("imports", ()):
        importlib.import_module(module)
    signature = Signature.from_dict(request["signature"]) if request.get("signature") else None
    with allowing_ops(request.get("allow_ops", ())):
        runner = get_format(request["format"]).load(Path(request["path"]), signature=signature,
                                                    device=request.get("device", "cpu"),
                                                    trust=bool(request.get("trust")))
    _OPEN[request["path"]] = runner
    return {"ok": True, "signature": runner.signature.to_dict(), "runtime": runner.runtime, "backend": runner.backend,
            "device": runner.device, "info": runner.info}


def run_artifact(request: dict[str, Any]) -> dict[str, Any]:
    """Run named inputs (an ``.npz``) through an opened artifact; write the named outputs next to them."""
    from .manifest import load_arrays, save_arrays

    runner = _OPEN[request["path"]]
    x = load_arrays(Path(request["inputs"]), runner.signature.input_names)
    out = Path(request["out_dir"]) / f"outputs-{next(_RUNS)}.npz"
    save_arrays(out, runner.run(x))
    return {"ok": True, "outputs": str(out)}


_RUNS = itertools.count()


def rehearse(formats: Sequence[str]) -> dict[str, Any]:
    """Save, load and run a two-unit model in each format, so that the real checks find everything warm.

    The first ``.keras`` load and run in a process pays lazy imports and
    TensorFlow's first trace (0.18 s against 0.08 s warm). The pipeline asks
    for this while it trains, when the worker would otherwise be idle.
    """
    import keras

    from .formats import ExportContext, get_format
    from .signature import derive_signature, mark_probabilities
    from .task import resolve_task

    done = []
    with tempfile.TemporaryDirectory(prefix="kerasio-rehearse-") as tmp:
        inp = keras.Input((2,), name="features")
        model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="probabilities")(inp))
        x = {"features": np.zeros((2, 2), np.float32)}
        signature = derive_signature(model)
        mark_probabilities(signature, {"probabilities": np.full((2, 2), 0.5, np.float32)})
        ctx = ExportContext(signature=signature, task=resolve_task("auto", signature), reference_inputs=x,
                            warmup_records=1)
        for name in formats:
            fmt = get_format(name)
            if fmt.needs_trust or fmt.legacy or fmt.supports(signature):
                continue
            dest = Path(tmp) / name / (Path(fmt.filename).name or name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fmt.save(model, dest, ctx)
            fmt.load(dest, signature=signature).run(x)
            done.append(name)
    return {"ok": True, "rehearsed": done}


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
        if op == "rehearse":
            return rehearse(request.get("formats", ()))
        if op == "status":
            return {"ok": True, "sandbox": os.environ.get("KERASIO_SANDBOX_STATUS", "off")}
        if op == "open":
            return open_artifact(request)
        if op == "run":
            return run_artifact(request)
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
    """The worker loop: one JSON request per line in, one JSON answer per line out.

    On ``exit`` (or when its parent closes the pipe) the worker leaves with
    ``os._exit`` at once: every answer is written and flushed, every file it
    wrote is complete, and an orderly interpreter shutdown would only spend
    most of a second tearing TensorFlow down while its parent waits.
    """
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library chatter goes to stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        protocol.write(json.dumps(handle(request)) + "\n")
    protocol.flush()
    sys.stderr.flush()
    os._exit(0)


def _timeout() -> float:
    """Seconds to wait for one answer (``KERASIO_WORKER_TIMEOUT``; default 30 minutes: a huge model loads slowly)."""
    try:
        return float(os.environ.get("KERASIO_WORKER_TIMEOUT", 1800))
    except ValueError:
        return 1800.0


class Worker:
    """A fresh ``python -m kerasio.worker`` process for one Keras backend.

    Requests are answered in the order they were sent, so several can be in
    flight: :meth:`submit` returns a ticket and :meth:`collect` waits for its
    answer (export sends a check as soon as an artifact is written, and writes
    the next one while the worker verifies).

    Args:
        backend: ``KERAS_BACKEND`` for the child (``None`` keeps the parent's).
        warm: modules to import at once (e.g. ``["tensorflow", "keras"]``), so
            the import runs while the caller does other work.
        imports: modules to import first (custom layers).
        rehearse: formats to save, load and run once with a tiny model while idle.
        sandbox: for artifacts that are not the caller's own: the paths the worker may read besides the
            Python environment. It is then confined with Landlock (:mod:`kerasio.sandbox`) and may write only
            its own temporary directory; :attr:`sandbox_status` says what applied.
    """

    def __init__(self, backend: str | None = None, *, warm: Sequence[str] = ("keras",), imports: Sequence[str] = (),
                 rehearse: Sequence[str] = (), sandbox: Sequence[str] | None = None):
        from .runtime import backend_env, default_backend

        self.backend = backend = backend or default_backend()
        env = backend_env(backend)
        # The child sees the same import path as this process (this kerasio, the user's
        # modules), but none of its in-memory state.
        root = str(Path(__file__).resolve().parent.parent)
        paths = [root, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        clean_stale_temp("kerasio-verify-")  # left by verifications that were killed
        self.tmp = tempfile.TemporaryDirectory(prefix=f"kerasio-verify-{os.getpid()}-")
        self._stderr = open(Path(self.tmp.name) / "stderr.log", "w+")
        command = [sys.executable, "-m", "kerasio.worker"]
        self._status: str | None = "off: the artifacts are the caller's own" if sandbox is None else None
        if sandbox is not None:
            from .sandbox import mode

            if mode() == "off":
                self._status = "off: KERASIO_SANDBOX=off"
            else:
                command = self._sandboxed(env, list(sandbox), mode())
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, text=True, bufsize=1)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self._fd, self._buffer = self._out.fileno(), b""  # answers are read from the raw pipe, with a deadline
        self.timeout = _timeout()
        self._in_flight: collections.deque[tuple[int, bool]] = collections.deque()  # (ticket, answer wanted)
        self._answers: dict[int, dict[str, Any]] = {}
        self._what: dict[int, str] = {}
        self._tickets = itertools.count()
        self.submit({"op": "warm", "modules": [*imports, *warm]}, keep=False)
        if rehearse:  # only when the caller has idle time to give (the pipeline trains meanwhile)
            self.submit({"op": "rehearse", "formats": list(rehearse)}, keep=False)

    def _sandboxed(self, env: dict[str, str], readable: list[str], mode: str) -> list[str]:
        """The command line of a Landlock-confined worker; its temp files and Keras config live in its own dir."""
        import shutil

        keras_home = Path(self.tmp.name) / "keras"
        keras_home.mkdir()
        user_config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
        if user_config.is_file():  # the user's floatx and image_data_format still apply
            shutil.copyfile(user_config, keras_home / "keras.json")
        env.update(KERAS_HOME=str(keras_home), TMPDIR=self.tmp.name)
        config = {"mode": mode, "read": readable, "write": [self.tmp.name]}
        return [sys.executable, str(Path(__file__).with_name("sandbox.py")), json.dumps(config)]

    @property
    def sandbox_status(self) -> str:
        """What confines this worker: ``landlock ABI n: ...``, ``unavailable: <reason>`` or ``off: <why>``."""
        if self._status is None:
            self._status = str(self.request({"op": "status"}).get("sandbox", "unknown"))
        return self._status

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._in.write(json.dumps(message) + "\n")
            self._in.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(f"a {message.get('op', 'check')} request") from None

    def _receive(self, what: str = "a request") -> dict[str, Any]:
        """One answer line, or :class:`WorkerError` when the worker died or gave none within ``timeout`` seconds."""
        deadline = time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.proc.kill()
                self.proc.wait()
                raise WorkerError(
                    f"the verification worker (backend {self.backend}) gave no answer to {what} in "
                    f"{self.timeout:.0f} s and was stopped; the remaining checks run in a new one. Raise "
                    f"KERASIO_WORKER_TIMEOUT for very large models. Received: no answer after {self.timeout:.0f} s")
            ready, _, _ = select.select([self._fd], [], [], min(left, 1.0))
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise self._died(what)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _died(self, what: str) -> WorkerError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.seek(0)
        noise = re.compile(r"^([IWE]\d{4} |WARNING: All log messages)")  # TensorFlow's C++ start-up lines
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip() and not noise.match(line)]
        last = lines[-1][:300] if lines else "no output"
        return WorkerError(
            f"the verification worker (backend {self.backend}) died during {what} (exit code {code}); the "
            f"remaining checks run in a new one. Its last words: {last}. Received: exit code {code}")

    @property
    def busy(self) -> bool:
        """Whether a request is still being worked on (its answer not yet read)."""
        return bool(self._in_flight)

    def submit(self, message: dict[str, Any], *, keep: bool = True) -> int:
        """Send a request without waiting; return the ticket :meth:`collect` takes."""
        message.setdefault("out_dir", self.tmp.name)
        ticket = next(self._tickets)
        self._what[ticket] = (f"the check of {Path(message['path']).name} ({message['format']})"
                              if "format" in message else f"its {message.get('op', 'request')}")
        self._send(message)
        self._in_flight.append((ticket, keep))
        return ticket

    def collect(self, ticket: int) -> dict[str, Any]:
        """The answer to ``ticket``, reading (and keeping) the answers sent before it."""
        while ticket not in self._answers:
            if not self._in_flight:
                raise KeyError(f"no request with ticket {ticket} is in flight")
            sent, keep = self._in_flight[0]
            answer = self._receive(self._what.get(sent, "a request"))
            self._in_flight.popleft()
            if keep:
                self._answers[sent] = answer
        return self._answers.pop(ticket)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.collect(self.submit(message))

    def release(self) -> None:
        """Tell an idle worker to exit, without waiting: its exit overlaps whatever the caller does next.

        :meth:`close` (or the context manager) still waits for it.
        """
        if self.proc.poll() is None and not self.busy:
            with contextlib.suppress(OSError, ValueError):
                self._in.write(json.dumps({"op": "exit"}) + "\n")
                self._in.flush()
                self._in.close()

    def close(self) -> None:
        """Stop the worker and wait until it has exited: no process outlives the command that started it.

        An idle worker is told to exit and leaves at once (``os._exit``, no
        TensorFlow teardown: a few milliseconds). One still busy with its
        warm-up import (the export failed early, say) has nothing worth
        finishing and is killed.
        """
        if self.proc.poll() is None:
            if self.busy:
                self.proc.kill()
            else:
                with contextlib.suppress(OSError, ValueError):
                    self._in.write(json.dumps({"op": "exit"}) + "\n")
                    self._in.flush()
        with contextlib.suppress(OSError, ValueError):
            self._in.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._stderr.close()
        self.tmp.cleanup()  # the worker no longer reads or writes there

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    _serve()
