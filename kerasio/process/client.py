"""The parent's side of a worker process: :class:`Worker` starts ``python -m kerasio.process`` and talks to it.

Verification loads artifacts in a process that never saw the exporting model,
so nothing left in memory (a custom class registered only by the exporter, a
cached graph) can hide a broken artifact. A worker for artifacts that are not
the caller's own (``sandbox=``) starts with a scrubbed environment, under the
resource limits of :class:`~kerasio.spec.limits.Limits` and the Landlock sandbox
of :mod:`kerasio.process.sandbox`. Callers hold workers through a
:class:`~kerasio.process.session.Session`, never directly.
"""
from __future__ import annotations

import collections
import contextlib
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

from kerasio.backends.environment import backend_env, default_backend
from kerasio.bundle.fsutil import clean_stale_temp
from kerasio.errors import KerasioError, WorkerError
from kerasio.process.protocol import (
    ARTIFACT_OPS,
    Answer,
    CheckRequest,
    RehearseRequest,
    Request,
    RunRequest,
    StatusRequest,
    WarmRequest,
    answer_error,
    to_message,
)
from kerasio.process.sandbox import mode
from kerasio.spec.limits import Limits, memory_text

__all__ = ["scrubbed_env", "gpu_present", "Worker"]


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
    """A fresh ``python -m kerasio.process`` process for one Keras backend.

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
            Landlock (:mod:`kerasio.process.sandbox`), and may write only its own temporary directory;
            :attr:`sandbox_status` says what applied.
        limits: the resource limits of an untrusted worker (default: :class:`Limits` for a small artifact).
        device: the device the artifacts will run on (``cpu`` lets the address space be capped even where a
            GPU exists; a GPU runtime needs it uncapped, and its resident memory is watched instead).
    """

    def __init__(self, backend: str | None = None, *, warm: Sequence[str] = ("keras",), imports: Sequence[str] = (),
                 rehearse: Sequence[str] = (), sandbox: Sequence[str] | None = None, limits: Limits | None = None,
                 device: str = "auto"):

        self.backend = backend = backend or default_backend()
        env = backend_env(backend)
        # The child sees the same import path as this process (this kerasio, the user's
        # modules), but none of its in-memory state.
        root = str(Path(__file__).resolve().parents[2])
        paths = [root, *(p for p in sys.path if p and os.path.isdir(p))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        clean_stale_temp("kerasio-verify-")  # left by verifications that were killed
        self.tmp = tempfile.TemporaryDirectory(prefix=f"kerasio-verify-{os.getpid()}-")
        self._stderr = open(Path(self.tmp.name) / "stderr.log", "w+")
        command = [sys.executable, "-m", "kerasio.process"]
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
        self._answers: dict[int, Answer] = {}
        self._what: dict[int, str] = {}
        self._deadline: dict[int, float] = {}  # seconds each request may take, from when the worker starts on it
        self._tickets = itertools.count()
        self.closed = False  # set by close(): a request after it is refused
        self.submit(WarmRequest(tuple(imports) + tuple(warm)), keep=False)
        if rehearse:  # only when the caller has idle time to give (the pipeline trains meanwhile)
            self.submit(RehearseRequest(tuple(rehearse)), keep=False)

    def _sandboxed(self, env: dict[str, str], readable: list[str], device: str) -> list[str]:
        """The command line of a confined worker; its temp files, home and Keras config live in its own dir."""
        import shutil


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
            status = self.call(StatusRequest())
            self._status = str(status.get("sandbox", "unknown"))
            if self.limits is not None:
                watched = "; resident memory watched" if self._rss_watch else ""
                self._status += f"; limits: {self.limits.describe()}{watched}"
        return self._status

    def _send(self, message: dict[str, Any]) -> None:  # a request as it travels
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

    def _receive(self, what: str = "a request", deadline_s: float | None = None) -> Answer:
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
        try:
            return Answer.from_message(json.loads(line))
        except ValueError:
            return Answer(False, error=f"the worker wrote a line that is not JSON: {line[:200]!r}", type="WorkerError")

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

    def submit(self, request: Request, *, keep: bool = True) -> int:
        """Send a request without waiting; return the ticket :meth:`collect` takes."""
        message = {**to_message(request), "out_dir": self.tmp.name}
        ticket = next(self._tickets)
        verb = {"check": "the check", "open": "the load", "run": "a run"}.get(request.op)
        path = getattr(request, "path", None)
        fmt = getattr(request, "format", None)
        self._what[ticket] = (f"{verb} of {Path(path).name}" + (f" ({fmt})" if fmt else "")
                              if verb and path else f"its {request.op}")
        if self.limits is not None and request.op in ARTIFACT_OPS:
            steps = 3 if isinstance(request, CheckRequest) else 1  # a check loads, then runs the full batch and one row
            rows = request.rows if isinstance(request, RunRequest) else 0
            steps *= max(1, -(-rows // 16_384))  # a large batch of the caller's rows earns more time
            self._deadline[ticket] = float(self.limits.timeout or 0) * steps
            message["cpu_seconds"] = self.limits.cpu_seconds * steps
        self._send(message)
        self._in_flight.append((ticket, keep))
        return ticket

    def collect(self, ticket: int) -> Answer:
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

    def request(self, request: Request) -> Answer:
        """Send ``request`` and wait for its answer."""
        return self.collect(self.submit(request))

    def value(self, answer: Answer, *, copy: str | Path | None = None, shown: str | Path | None = None) -> Any:
        """``answer``'s value if it succeeded; else raise its error (see :func:`answer_error`)."""
        if not answer.ok:
            raise answer_error(answer, self.limits, copy=copy, shown=shown)
        return answer.value

    def call(self, request: Request, *, copy: str | Path | None = None, shown: str | Path | None = None) -> Any:
        """Send ``request``, wait, and return its value or raise its error."""
        return self.value(self.request(request), copy=copy, shown=shown)

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
        self.closed = True
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
