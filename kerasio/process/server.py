"""The worker's side: run artifact checks and registered jobs in a fresh interpreter (``python -m kerasio.process``).

Verification loads artifacts in a process that never saw the exporting model,
so nothing left in memory (a custom class registered only by the exporter, a
cached graph) can hide a broken artifact. The worker speaks JSON lines on
stdin/stdout; arrays travel as ``.npy`` files. It can be started before the
artifacts exist, so that its TensorFlow import overlaps training.

A worker for artifacts that are not the caller's own (``sandbox=``) is
*untrusted*: it starts with a scrubbed environment, under the resource limits
of :class:`~kerasio.spec.limits.Limits` and the Landlock sandbox of
:mod:`kerasio.process.sandbox`; each request that touches the artifact has a wall-time
deadline and a CPU-time limit, and its resident memory is watched. A limit hit
is a :class:`~kerasio.errors.ResourceLimitError`.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import importlib
import itertools
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kerasio.backends.base import device_name, precision_policy
from kerasio.backends.environment import default_backend, lean_imports, resolve_devices
from kerasio.bundle.arrays import load_arrays, save_arrays
from kerasio.bundle.audit import allowing_ops
from kerasio.errors import KerasioError, ResourceLimitError, WorkerError
from kerasio.formats import ExportContext, get_format
from kerasio.process import explain as _explain  # noqa: F401  (registers the job)
from kerasio.process.jobs import get_job
from kerasio.process.protocol import (
    RUNTIME_MODULES,
    Answer,
    CheckRequest,
    CheckResult,
    JobRequest,
    Opened,
    OpenRequest,
    RehearseRequest,
    Request,
    RunRequest,
    StatusRequest,
    WarmRequest,
    from_message,
)
from kerasio.spec.iospec import IOSpec, derive_iospec, mark_probabilities
from kerasio.spec.limits import memory_error
from kerasio.spec.task import resolve_task
from kerasio.spec.tolerances import measure_noise, nudged

__all__ = ["run_check", "answer", "handle", "serve"]


def run_check(request: CheckRequest, out_dir: Path) -> list[dict[str, Any]]:
    """Load one artifact and run the reference inputs through it on each device.

    Returns one :class:`CheckResult` (as a dict) per device, with the paths of
    the outputs written under ``out_dir``. The format owns its runtime and
    devices; nothing here names one.
    """
    for module in request.imports:
        importlib.import_module(module)
    fmt = get_format(request.format)
    iospec = IOSpec.from_dict(request.iospec)
    path = Path(request.path)
    x = load_arrays(Path(request.inputs), iospec.input_names)
    first = {k: v[:1] for k, v in x.items()}
    sweep = _sweep_inputs(request, iospec)
    backend = default_backend()  # Keras's, read without importing it: an ONNX check never loads Keras
    results = []
    big = sum(p.stat().st_size for p in ([path] if path.is_file() else path.rglob("*"))) > 64 << 20
    devices = resolve_devices(request.device, fmt.available_devices(backend), runtime=fmt.runtime)
    for device in devices:
        modes = [request.precision]
        if device == "gpu" and request.fast_math and "fast" not in modes:
            modes.append("fast")
        start = time.perf_counter()
        with allowing_ops(request.allow_ops):
            runner = fmt.load(path, iospec=iospec, device=device, trust=request.trust)
        load_seconds = time.perf_counter() - start
        stems: list[str] = []
        run_seconds = 0.0
        swept: dict[str, Any] = {}
        sweep_errors: dict[str, str] = {}
        noise: dict[str, Any] = {}
        for mode in modes:  # the policy applies when the graph runs (JAX: when it is traced)
            with precision_policy(mode, runner.backend):
                start = time.perf_counter()
                full = runner.run(x)  # the reference batch must run: what every other shape is checked after
                if mode == modes[0]:  # the 1-row batch and the sweep: a shape the runtime refuses is a finding
                    ran = _run_shapes(runner, [first, *sweep])
                    one = ran[0][0] or {}
                    swept = {f"{i}/{k}": v for i, (out, _) in enumerate(ran[1:]) if out for k, v in out.items()}
                    sweep_errors = {("one" if i == 0 else str(i - 1)): err for i, (_, err) in enumerate(ran) if err}
                    if request.calibrate:  # the model's own noise on this device, before run_seconds is read
                        moved = nudged(x)
                        noise = measure_noise(full, runner.run(x), runner.run(moved) if moved else None)
                else:
                    one = runner.run(first)
            stem = out_dir / f"{fmt.name}-{device}-{mode}"
            save_arrays(stem.with_name(stem.name + "-full.npz"), full)
            save_arrays(stem.with_name(stem.name + "-one.npz"), one)
            if mode == modes[0]:
                save_arrays(stem.with_name(stem.name + "-sweep.npz"), swept)
                run_seconds = time.perf_counter() - start
            stems.append(str(stem))
        results.append(CheckResult(
            device=device, runtime=runner.runtime, backend=runner.backend,
            device_name=device_name(device, runner.backend),
            precision="float32-pinned" if modes[0] == "highest" else "tf32-allowed", load_seconds=load_seconds,
            outputs=stems[0], run_seconds=run_seconds, fast_outputs=stems[1] if len(stems) > 1 else None,
            packages=dict(runner.info.get("packages") or {}), sweep_errors=sweep_errors, noise=noise,
            ran_at=str(runner.info.get("inference_precision") or ""))._asdict())
        del runner  # free this copy of the weights before the next load
        if big:  # Keras models hold reference cycles; a full collection costs ~0.1 s, so only when it pays
            gc.collect()
    return results


def _sweep_inputs(request: CheckRequest, iospec: IOSpec) -> list[dict[str, Any]]:
    """The sweep's inputs, one dict per shape (none for a request without a sweep)."""
    if not request.sweep_shapes:
        return []
    names = [f"{i}/{n}" for i in range(request.sweep_shapes) for n in iospec.input_names]
    arrays = load_arrays(Path(request.sweep), names)
    return [{n: arrays[f"{i}/{n}"] for n in iospec.input_names} for i in range(request.sweep_shapes)]


def _run_shapes(runner: Any, shapes: list[dict[str, Any]]) -> list[tuple[dict[str, Any] | None, str]]:
    """Each input shape through ``runner``: its outputs, or None and the runtime's first error line.

    A runtime that refuses a shape (an ONNX graph with a fixed axis) answers with its own error: that is a
    finding of the check, reported with the shape, not a failure of the worker.
    """
    ran: list[tuple[dict[str, Any] | None, str]] = []
    for inputs in shapes:
        try:
            ran.append((runner.run(inputs), ""))
        except MemoryError:
            raise
        except Exception as exc:  # the runtime's own refusal, in any runtime's exception type
            said = getattr(exc, "runtime_error", None)  # the runtime's words, not the Runner's advice around them
            ran.append((None, said or f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
    return ran


_OPEN: dict[str, Any] = {}  # path -> Runner: the artifacts `kerasio predict` opened in this worker


def open_artifact(request: OpenRequest) -> dict[str, Any]:
    """Load an artifact for ``run`` requests; answer with the signature it runs with (an :class:`Opened`)."""
    for module in request.imports:
        importlib.import_module(module)
    iospec = IOSpec.from_dict(request.iospec) if request.iospec else None
    with allowing_ops(request.allow_ops):
        runner = get_format(request.format).load(Path(request.path), iospec=iospec, device=request.device,
                                                 trust=request.trust)
    _OPEN[request.path] = runner
    return Opened(iospec=runner.iospec.to_dict(), runtime=runner.runtime, backend=runner.backend,
                  device=runner.device, info=_json_safe(runner.info))._asdict()


def _json_safe(info: dict[str, Any]) -> dict[str, Any]:
    """``info`` as JSON can carry it (a runtime's facts may include objects)."""
    return json.loads(json.dumps(info, default=str))


def run_artifact(request: RunRequest, out_dir: Path) -> str:
    """Run named inputs (an ``.npz``) through an opened artifact; write the named outputs next to them."""
    runner = _OPEN[request.path]
    x = load_arrays(Path(request.inputs), runner.iospec.input_names)
    out = out_dir / f"outputs-{next(_RUNS)}.npz"
    save_arrays(out, runner.run(x))
    return str(out)


_RUNS = itertools.count()


def rehearse(formats: Sequence[str]) -> list[str]:
    """Save, load and run a two-unit model in each format, so that the real checks find everything warm.

    The first ``.keras`` load and run in a process pays lazy imports and
    TensorFlow's first trace (0.18 s against 0.08 s warm). The pipeline asks
    for this while it trains, when the worker would otherwise be idle.
    """
    import keras

    done = []
    with tempfile.TemporaryDirectory(prefix="kerasio-rehearse-") as tmp:
        inp = keras.Input((2,), name="features")
        model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="probabilities")(inp))
        x = {"features": np.zeros((2, 2), np.float32)}
        iospec = derive_iospec(model)
        mark_probabilities(iospec, {"probabilities": np.full((2, 2), 0.5, np.float32)})
        ctx = ExportContext(iospec=iospec, task=resolve_task("auto", iospec), reference_inputs=x,
                            options={"warmup_records": 1})
        for name in formats:
            fmt = get_format(name)
            if fmt.needs_trust or fmt.legacy or fmt.supports(iospec):
                continue
            dest = Path(tmp) / name / (Path(fmt.filename).name or name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fmt.save(model, dest, ctx)
            fmt.load(dest, iospec=iospec).run(x)
            done.append(name)
    return done


def answer(request: Request, out_dir: Path) -> Answer:
    """Answer one request; an error becomes a failed :class:`Answer`, never an exception.

    The same function serves the fresh worker and ``verify(in_process=True)``,
    so both report a broken artifact the same way and go on to the next one.
    A failure to allocate memory, open a file or write a large enough file is
    answered as the limit it hit, whatever the runtime wrapped it in.
    """
    try:
        if isinstance(request, WarmRequest):
            for module in request.modules:
                # the runtimes start lean; a module the caller named (custom layers) imports whatever it needs
                with contextlib.suppress(ImportError), lean_imports(module in RUNTIME_MODULES):
                    importlib.import_module(module)
            return Answer(True)
        if isinstance(request, RehearseRequest):
            return Answer(True, rehearse(request.formats))
        if isinstance(request, StatusRequest):
            return Answer(True, {"sandbox": os.environ.get("KERASIO_SANDBOX_STATUS", "off"),
                                 "limits": os.environ.get("KERASIO_LIMITS_STATUS", "")})
        if isinstance(request, OpenRequest):
            return Answer(True, open_artifact(request))
        if isinstance(request, RunRequest):
            return Answer(True, run_artifact(request, out_dir))
        if isinstance(request, JobRequest):  # only a registered job: a request never names code to import
            result = get_job(request.name)(**request.kwargs)
            return Answer(True, result.to_dict() if hasattr(result, "to_dict") else result)
        return Answer(True, run_check(request, out_dir))
    except ResourceLimitError as exc:
        return Answer(False, error=str(exc), type="ResourceLimitError", limit=exc.limit)
    except BaseException as exc:  # report, do not die: the next artifact still gets checked
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        limit = _limit_of(exc)
        if limit:
            return Answer(False, error=f"{type(exc).__name__}: {_first_line(exc)}", type="ResourceLimitError",
                          limit=limit)
        if isinstance(exc, KerasioError):
            return Answer(False, error=str(exc), type=type(exc).__name__)
        return Answer(False, error=f"{type(exc).__name__}: {_first_line(exc)}", type=type(exc).__name__)


def handle(message: dict[str, Any]) -> dict[str, Any]:
    """Answer one request as it travels (a JSON object in, a JSON object out; see :mod:`~kerasio.process.protocol`)."""
    try:
        request = from_message(message)
    except WorkerError as exc:
        return Answer(False, error=str(exc), type="WorkerError").to_message()
    return answer(request, Path(message.get("out_dir") or tempfile.gettempdir())).to_message()


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


def serve() -> None:
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
        reply = handle(request)
        if budget:
            with contextlib.suppress(ValueError, OSError):
                hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
                resource.setrlimit(resource.RLIMIT_CPU, (hard, hard))
        protocol.write(json.dumps(reply) + "\n")
    protocol.flush()
    sys.stderr.flush()
    os._exit(0)
