"""Run artifact checks in a fresh interpreter: ``python -m kerasio.worker``.

Verification loads artifacts in a process that never saw the exporting model,
so nothing left in memory (a custom class registered only by the exporter, a
cached graph) can hide a broken artifact. The worker speaks JSON lines on
stdin/stdout; arrays travel as ``.npy`` files. It can be started before the
artifacts exist, so that its TensorFlow import overlaps training.

A worker for artifacts that are not the caller's own (``sandbox=``) is
*untrusted*: it starts with a scrubbed environment, under the resource limits
of :class:`~kerasio.limits.Limits` and the Landlock sandbox of
:mod:`kerasio.sandbox`; each request that touches the artifact has a wall-time
deadline and a CPU-time limit, and its resident memory is watched. A limit hit
is a :class:`~kerasio.errors.ResourceLimitError`.
"""
from __future__ import annotations

import collections
import contextlib
import errno
import gc
import importlib
import itertools
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import KerasioError, ResourceLimitError, WorkerError
from .fsutil import clean_stale_temp
from .limits import Limits, memory_error, memory_text
from .protocol import answer_error
from .runtime import lean_imports

__all__ = ["run_check", "handle", "Worker", "scrubbed_env", "WARM"]

# What a worker imports at start for the runtime it will serve (so that the import overlaps the caller's work).
WARM = {"keras": ("keras",), "tensorflow": ("tensorflow",), "onnxruntime": ("onnxruntime",),
        "litert": ("ai_edge_litert.interpreter",)}
_RUNTIMES = frozenset(m for modules in WARM.values() for m in modules)
# Requests that load or run an artifact: these get the limits' deadline (the rest are kerasio's own imports).
_ARTIFACT_OPS = ("check", "open", "run")


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
    from .runtime import default_backend, device_name, precision_policy, resolve_devices
    from .signature import Signature

    for module in request.get("imports", ()):
        importlib.import_module(module)
    fmt = get_format(request["format"])
    signature = Signature.from_dict(request["signature"])
    path = Path(request["path"])
    x = load_arrays(Path(request["inputs"]), signature.input_names)
    first = {k: v[:1] for k, v in x.items()}
    backend = default_backend()  # Keras's, read without importing it: an ONNX check never loads Keras
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
                                 "device_name": device_name(device, runner.backend),
                                 "precision": "float32-pinned" if modes[0] == "highest" else "tf32-allowed",
                                 "load_seconds": time.perf_counter() - start}
        for mode in modes:  # the policy applies when the graph runs (JAX: when it is traced)
            with precision_policy(mode, runner.backend):
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
            "device": runner.device, "info": _json_safe(runner.info)}


def _json_safe(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as JSON can carry it (a runtime's facts may include objects)."""
    return json.loads(json.dumps(info, default=str))


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
    A failure to allocate memory, open a file or write a large enough file is
    answered as the limit it hit (``"limit"``), whatever the runtime wrapped it in.
    """
    op = request.get("op", "check")
    try:
        if op == "warm":
            for module in request.get("modules", ()):
                # the runtimes start lean; a module the caller named (custom layers) imports whatever it needs
                with contextlib.suppress(ImportError), lean_imports(module in _RUNTIMES):
                    importlib.import_module(module)
            return {"ok": True}
        if op == "rehearse":
            return rehearse(request.get("formats", ()))
        if op == "status":
            return {"ok": True, "sandbox": os.environ.get("KERASIO_SANDBOX_STATUS", "off"),
                    "limits": os.environ.get("KERASIO_LIMITS_STATUS", "")}
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
    except ResourceLimitError as exc:
        return {"ok": False, "error": str(exc), "type": "ResourceLimitError", "limit": exc.limit}
    except BaseException as exc:  # report, do not die: the next artifact still gets checked
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        limit = _limit_of(exc)
        if limit:
            return {"ok": False, "error": f"{type(exc).__name__}: {_first_line(exc)}", "type": "ResourceLimitError",
                    "limit": limit}
        if isinstance(exc, KerasioError):
            return {"ok": False, "error": str(exc), "type": type(exc).__name__}
        return {"ok": False, "error": f"{type(exc).__name__}: {_first_line(exc)}", "type": type(exc).__name__}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def _limit_of(exc: BaseException) -> str:
    """Which resource limit ``exc`` reports, if any (``memory``, ``open files``, ``file size``)."""
    if memory_error(exc):
        return "memory"
    code = getattr(exc, "errno", None)
    text = str(exc)
    if code in (errno.EMFILE, errno.ENFILE) or "Too many open files" in text:
        return "open files"
    if code == errno.EFBIG or "File too large" in text:
        return "file size"
    return ""


def _serve() -> None:
    """The worker loop: one JSON request per line in, one JSON answer per line out.

    A request may carry ``cpu_seconds``: the worker then limits its own CPU
    time for that request (``RLIMIT_CPU``, counted from what it has used so
    far), so a graph that spins is stopped by the kernel even if it never
    returns to Python. On ``exit`` (or when its parent closes the pipe) the
    worker leaves with ``os._exit`` at once: every answer is written and
    flushed, every file it wrote is complete, and an orderly interpreter
    shutdown would only spend most of a second tearing TensorFlow down while
    its parent waits.
    """
    import resource

    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library chatter goes to stderr
    with contextlib.suppress(AttributeError, ValueError, OSError):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the file-size limit fails with EFBIG instead
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "exit":
            break
        budget = request.get("cpu_seconds")
        if budget:
            used = resource.getrusage(resource.RUSAGE_SELF)
            soft = int(used.ru_utime + used.ru_stime + float(budget)) + 1
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.getrlimit(resource.RLIMIT_CPU)[1]))
        answer = handle(request)
        if budget:
            with contextlib.suppress(ValueError, OSError):
                hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
                resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        protocol.write(json.dumps(answer) + "\n")
    protocol.flush()
    sys.stderr.flush()
    os._exit(0)


def _timeout() -> float:
    """Seconds to wait for one answer of a trusted worker (``KERASIO_WORKER_TIMEOUT``; default 30 minutes)."""
    try:
        return float(os.environ.get("KERASIO_WORKER_TIMEOUT", 1800))
    except ValueError:
        return 1800.0


# The environment an untrusted worker sees: what the interpreter, the runtimes and their devices need, nothing
# else (a secret in the parent's environment never reaches a process that runs a stranger's graph).
_ENV_NAMES = frozenset({"PATH", "LANG", "LANGUAGE", "TZ", "LD_LIBRARY_PATH", "PYTHONHASHSEED", "PYTHONUTF8",
                        "PYTHONIOENCODING", "PYTHONDONTWRITEBYTECODE", "PYTHONWARNINGS", "SYSTEMROOT",
                        "TF_CPP_MIN_LOG_LEVEL", "TF_CPP_MAX_VLOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS",
                        "TF_NUM_INTEROP_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_FORCE_GPU_ALLOW_GROWTH",
                        "TF_GPU_ALLOCATOR", "TF_XLA_FLAGS", "TF_DETERMINISTIC_OPS", "TF_CUDNN_DETERMINISTIC",
                        "XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                        "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                        "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "JAX_PLATFORMS", "JAX_ENABLE_X64",
                        "KERAS_BACKEND"})
_ENV_PREFIXES = ("LC_", "KERASIO_")


def scrubbed_env(env: dict[str, str]) -> dict[str, str]:
    """Only the variables an untrusted worker needs (see ``_ENV_NAMES``); everything else is dropped."""
    kept = {k: v for k, v in env.items() if k in _ENV_NAMES or k.startswith(_ENV_PREFIXES) or k == "PYTHONPATH"}
    kept.setdefault("PATH", os.defpath)
    kept["MALLOC_ARENA_MAX"] = "4"  # glibc reserves 64 MiB of address space per thread arena otherwise
    return kept


def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU a runtime may open (its device nodes), without importing anything."""
    return os.path.exists("/dev/nvidiactl") or bool(os.environ.get("KERASIO_ASSUME_GPU"))


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
            Python environment. It then starts with a scrubbed environment, under ``limits``, confined with
            Landlock (:mod:`kerasio.sandbox`), and may write only its own temporary directory;
            :attr:`sandbox_status` says what applied.
        limits: the resource limits of an untrusted worker (default: :class:`Limits` for a small artifact).
        device: the device the artifacts will run on (``cpu`` lets the address space be capped even where a
            GPU exists; a GPU runtime needs it uncapped, and its resident memory is watched instead).
    """

    def __init__(self, backend: str | None = None, *, warm: Sequence[str] = ("keras",), imports: Sequence[str] = (),
                 rehearse: Sequence[str] = (), sandbox: Sequence[str] | None = None, limits: Limits | None = None,
                 device: str = "auto"):
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
        self.untrusted = sandbox is not None
        self.limits = (limits or Limits.from_env()).resolved() if self.untrusted else None
        self._status: str | None = "off: the artifacts are the caller's own" if sandbox is None else None
        self._stopped_for = ""  # the limit the parent stopped the worker for, if it did
        self._rss_watch = False  # set for an untrusted worker whose address space a GPU runtime needs uncapped
        if sandbox is not None:
            env = scrubbed_env(env)
            command = self._sandboxed(env, list(sandbox), device)
        self.proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, env=env, text=True, bufsize=1)
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self._fd, self._buffer = self._out.fileno(), b""  # answers are read from the raw pipe, with a deadline
        self.timeout = _timeout()
        self._in_flight: collections.deque[tuple[int, bool]] = collections.deque()  # (ticket, answer wanted)
        self._answers: dict[int, dict[str, Any]] = {}
        self._what: dict[int, str] = {}
        self._deadline: dict[int, float] = {}  # seconds each request may take, from when the worker starts on it
        self._tickets = itertools.count()
        self.submit({"op": "warm", "modules": [*imports, *warm]}, keep=False)
        if rehearse:  # only when the caller has idle time to give (the pipeline trains meanwhile)
            self.submit({"op": "rehearse", "formats": list(rehearse)}, keep=False)

    def _sandboxed(self, env: dict[str, str], readable: list[str], device: str) -> list[str]:
        """The command line of a confined worker; its temp files, home and Keras config live in its own dir."""
        import shutil

        from .sandbox import mode

        keras_home = Path(self.tmp.name) / "keras"
        keras_home.mkdir()
        user_config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
        if user_config.is_file():  # the user's floatx and image_data_format still apply
            shutil.copyfile(user_config, keras_home / "keras.json")
        env.update(KERAS_HOME=str(keras_home), TMPDIR=self.tmp.name, HOME=self.tmp.name)
        gpu = device != "cpu" and gpu_present()
        assert self.limits is not None
        self._rss_watch = gpu  # where the address space stays uncapped, the parent watches resident memory
        config = {"mode": mode(), "read": readable, "write": [self.tmp.name], "gpu": gpu,
                  "limits": self.limits.rlimits(address_space=not gpu)}
        return [sys.executable, str(Path(__file__).with_name("sandbox.py")), json.dumps(config)]

    @property
    def sandbox_status(self) -> str:
        """What confines this worker: ``landlock ABI n: ...``, ``unavailable: <reason>`` or ``off: <why>``."""
        if self._status is None:
            answer = self.request({"op": "status"})
            self._status = str(answer.get("sandbox", "unknown"))
            if self.limits is not None:
                watched = "; resident memory watched" if self._rss_watch else ""
                self._status += f"; limits: {self.limits.describe()}{watched}"
        return self._status

    def _send(self, message: dict[str, Any]) -> None:
        if self._stopped_for:
            raise WorkerError(
                f"this artifact's worker was stopped when it reached its {self._stopped_for} limit, and holds nothing "
                "any more; load the artifact again (a new worker), with a higher limit if it needs one. Received: a "
                f"{message.get('op', 'check')} request after the {self._stopped_for} limit")
        try:
            self._in.write(json.dumps(message) + "\n")
            self._in.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(f"a {message.get('op', 'check')} request") from None

    def _receive(self, what: str = "a request", deadline_s: float | None = None) -> dict[str, Any]:
        """One answer line; :class:`WorkerError` when the worker died or gave none in time.

        An untrusted worker's artifact requests get the limits' deadline and
        raise :class:`ResourceLimitError` when it passes (or when the worker's
        resident memory passes the memory limit); the others get
        ``KERASIO_WORKER_TIMEOUT``.
        """
        limit = deadline_s if deadline_s is not None else self.timeout
        deadline = time.monotonic() + limit
        watch = self.limits is not None and self._rss_watch
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self._stop("wall time")
                if deadline_s is not None and self.limits is not None:
                    raise self.limits.hit("wall time", what)
                raise WorkerError(
                    f"the verification worker (backend {self.backend}) gave no answer to {what} in "
                    f"{limit:.0f} s and was stopped; the remaining checks run in a new one. Raise "
                    f"KERASIO_WORKER_TIMEOUT for very large models. Received: no answer after {limit:.0f} s")
            ready, _, _ = select.select([self._fd], [], [], min(left, 0.1 if watch else 1.0))
            if watch and self._resident() > int(self.limits.memory or 0):  # type: ignore[union-attr]
                self._stop("memory")
                raise self.limits.hit("memory", what)  # type: ignore[union-attr]
            if not ready:
                continue
            chunk = os.read(self._fd, 1 << 16)
            if not chunk:
                raise self._died(what)
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def _resident(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _stop(self, why: str) -> None:
        self._stopped_for = why
        self.proc.kill()
        self.proc.wait()

    def _died(self, what: str) -> KerasioError:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._stderr.seek(0)
        noise = re.compile(r"^([IWE]\d{4} |WARNING: All log messages)")  # TensorFlow's C++ start-up lines
        lines = [line.strip() for line in self._stderr.read().splitlines() if line.strip() and not noise.match(line)]
        last = lines[-1][:300] if lines else "no output"
        if self.limits is not None:
            if code == -signal.SIGXCPU:
                return self.limits.hit("CPU time", what)
            if code == -signal.SIGXFSZ:
                return self.limits.hit("file size", what)
            if code != 0 and any(memory_text(line) for line in lines[-20:]):  # a runtime that aborts on bad_alloc
                return self.limits.hit("memory", what)
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
        op = message.get("op", "check")
        verb = {"check": "the check", "open": "the load", "run": "a run"}.get(op)
        self._what[ticket] = (f"{verb} of {Path(message['path']).name}"
                              + (f" ({message['format']})" if "format" in message else "")
                              if verb and "path" in message else f"its {op}")
        if self.limits is not None and op in _ARTIFACT_OPS:
            steps = 3 if op == "check" else 1  # a check loads, then runs the full batch and one row
            rows = int(message.get("rows", 0) or 0)
            steps *= max(1, -(-rows // 16_384))  # a large batch of the caller's rows earns more time
            self._deadline[ticket] = float(self.limits.timeout or 0) * steps
            message["cpu_seconds"] = self.limits.cpu_seconds * steps
        self._send(message)
        self._in_flight.append((ticket, keep))
        return ticket

    def collect(self, ticket: int) -> dict[str, Any]:
        """The answer to ``ticket``, reading (and keeping) the answers sent before it."""
        while ticket not in self._answers:
            if not self._in_flight:
                raise KeyError(f"no request with ticket {ticket} is in flight")
            sent, keep = self._in_flight[0]
            answer = self._receive(self._what.get(sent, "a request"), self._deadline.pop(sent, None))
            self._in_flight.popleft()
            if keep:
                self._answers[sent] = answer
        return self._answers.pop(ticket)

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.collect(self.submit(message))

    def raise_for(self, answer: dict[str, Any], *, copy: str | Path | None = None,
                  shown: str | Path | None = None) -> dict[str, Any]:
        """``answer`` if it succeeded; else raise its error (see :func:`answer_error`)."""
        if not answer.get("ok"):
            raise answer_error(answer, self.limits, copy=copy, shown=shown)
        return answer

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
