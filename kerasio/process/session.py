"""One object owns the worker processes of a call: checks as futures, opened artifacts, registered jobs.

An export, a verification, an isolated load, the resume check and the
pipeline each hold a :class:`Session`; it starts a worker for a backend when
first asked (or at once, with :meth:`start`, so that its TensorFlow import
overlaps the caller's work), and :meth:`close` stops every one of them: no
process outlives the call that started it.

Workers for the caller's own files (an export's staged artifacts) are
shared by the whole session. A worker for artifacts that are not the caller's
own is *sandboxed* (limits, Landlock, a scrubbed environment; see
:class:`~kerasio.process.client.Worker`): it reads only the paths it was
started with, and :meth:`end` stops it when the call that needed it is done,
so that it never sees a second bundle.

Example:
    >>> with Session() as session:  # doctest: +SKIP
    ...     session.start()  # the import overlaps what follows
    ...     kerasio.export(model, "saved_models/m", reference_inputs=x, verify=True, session=session)
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import default_backend
from kerasio.bundle.arrays import load_arrays, save_arrays
from kerasio.errors import ArtifactError
from kerasio.formats import Runner
from kerasio.process.client import Worker
from kerasio.process.protocol import CheckRequest, CheckResult, JobRequest, Opened, OpenRequest, RunRequest
from kerasio.spec.iospec import IOSpec
from kerasio.spec.limits import Limits

__all__ = ["Session", "PendingCheck", "PendingJob"]


class PendingCheck:
    """A check sent to a worker: :meth:`result` waits for its typed results (one per device) or raises its error."""

    def __init__(self, worker: Worker, ticket: int, request: CheckRequest, shown: str | Path | None = None):
        self.worker, self.ticket, self.request, self.shown = worker, ticket, request, shown

    def result(self) -> list[CheckResult]:
        answer = self.worker.collect(self.ticket)
        value = self.worker.value(answer, copy=self.request.path, shown=self.shown)
        return [CheckResult(**r) for r in value]


class PendingJob:
    """A job sent to a shared worker: :meth:`result` waits for its value or raises its error."""

    def __init__(self, worker: Worker, ticket: int):
        self.worker, self.ticket = worker, ticket

    def result(self) -> Any:
        return self.worker.value(self.worker.collect(self.ticket))


class Session:
    """The worker processes of one call, by Keras backend.

    Args:
        imports: modules every worker imports first (custom layers; modules that register jobs).
        warm: runtimes each worker imports at start (``keras``, ``onnxruntime``).
        rehearse: formats a worker saves and loads once with a tiny model while idle (the pipeline trains meanwhile).
    """

    def __init__(self, *, imports: Sequence[str] = (), warm: Sequence[str] = ("keras",),
                 rehearse: Sequence[str] = ()):
        self.imports, self.warm, self.rehearse = list(imports), list(warm), list(rehearse)
        self._shared: dict[str, Worker] = {}
        self._sandboxed: dict[tuple[str, tuple[str, ...]], Worker] = {}
        self._pending: dict[str, PendingCheck] = {}
        self.closed = False

    def start(self, backend: str | None = None) -> Worker:
        """The shared worker for ``backend`` (default: the backend a fresh process would use), started if need be."""
        backend = backend or default_backend()
        worker = self._shared.get(backend)
        if worker is None or worker.proc.poll() is not None:
            if worker is not None:
                worker.close()  # it died: its files go, and a new one takes its place
            worker = self._shared[backend] = Worker(backend, warm=self.warm, imports=self.imports,
                                                    rehearse=self.rehearse)
        return worker

    def has(self, backend: str) -> bool:
        """Whether a shared worker for ``backend`` is already running (started by :meth:`start`)."""
        worker = self._shared.get(backend)
        return worker is not None and worker.proc.poll() is None

    def sandboxed(self, backend: str, readable: Sequence[str | Path], *, limits: Limits | None = None,
                  device: str = "auto", imports: Sequence[str] = (), warm: Sequence[str] = ("keras",)) -> Worker:
        """A confined worker that may read only ``readable``, under ``limits``; stopped by :meth:`end`."""
        key = (backend, tuple(str(p) for p in readable))
        worker = self._sandboxed.get(key)
        if worker is None or worker.proc.poll() is not None:
            if worker is not None:
                worker.close()
            worker = self._sandboxed[key] = Worker(backend, warm=warm, imports=[*self.imports, *imports],
                                                   sandbox=list(key[1]), limits=limits, device=device)
        return worker

    def open(self, worker: Worker, request: OpenRequest, *, shown: str | Path, scratch: Path) -> Runner:
        """Load an artifact in ``worker`` and return a :class:`~kerasio.formats.Runner` that runs it there.

        Each call's inputs and outputs travel as ``.npz`` files in ``scratch`` (a directory the worker may
        read), removed as soon as they are read; errors name ``shown``, not the worker's private copy.
        """
        opened = Opened(**worker.call(request, copy=request.path, shown=shown))
        iospec = IOSpec.from_dict(opened.iospec)
        calls = itertools.count()

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            if worker.closed:
                raise ArtifactError(f"{shown}: this model was closed (its worker has stopped); load it again. "
                                    f"Received: a call after close()")
            sent = scratch / f"inputs-{next(calls)}.npz"
            save_arrays(sent, inputs)
            rows = len(next(iter(inputs.values()))) if inputs else 0
            try:
                outputs = Path(worker.call(RunRequest(request.path, str(sent), rows), copy=request.path, shown=shown))
            finally:
                sent.unlink(missing_ok=True)
            try:  # each chunk's files go as soon as they are read: a long prediction does not fill the disk
                return load_arrays(outputs, iospec.output_names, list(iospec.outputs))
            finally:
                outputs.unlink(missing_ok=True)

        return Runner(run, format=request.format, path=Path(shown), runtime=opened.runtime, backend=opened.backend,
                      iospec=iospec, device=opened.device, info={**opened.info, "sandbox": worker.sandbox_status})

    def submit(self, worker: Worker, request: CheckRequest, *, shown: str | Path | None = None) -> PendingCheck:
        """Send a check to ``worker`` now; the :class:`PendingCheck` is kept by path for :meth:`pending`."""
        check = PendingCheck(worker, worker.submit(request), request, shown)
        self._pending[request.path] = check
        return check

    def has_pending(self, worker: Worker) -> bool:
        """Whether a check sent early (:meth:`submit`) still waits for ``worker``."""
        return any(check.worker is worker for check in self._pending.values())

    def pending(self, path: str | Path) -> PendingCheck | None:
        """The check already sent for the artifact at ``path`` (export sends each as soon as it is written)."""
        return self._pending.pop(str(path), None)

    def job(self, name: str, *, backend: str | None = None, **kwargs: Any) -> Any:
        """Run the registered job ``name`` in a worker of its own (``backend``), stopped when it is done.

        A job's worker never checks an artifact: a SavedModel built from the model's ``.keras`` file is verified
        in a process that never held that model. Returns the job's value, or raises its error.
        """
        with Worker(backend, warm=(), imports=self.imports) as worker:
            return worker.call(JobRequest(name, kwargs))

    def submit_job(self, name: str, *, backend: str | None = None, **kwargs: Any) -> PendingJob:
        """Send the registered job ``name`` to the shared worker of ``backend`` now (it runs while that worker
        would otherwise be idle); :meth:`PendingJob.result` waits for it."""
        worker = self.start(backend)
        return PendingJob(worker, worker.submit(JobRequest(name, kwargs)))

    def discard(self, worker: Worker) -> None:
        """Stop a worker that failed (died, or hit a limit): the next request for its backend starts a new one."""
        for table in (self._shared, self._sandboxed):
            for key, known in list(table.items()):
                if known is worker:
                    del table[key]  # type: ignore[arg-type]
        self._pending = {p: c for p, c in self._pending.items() if c.worker is not worker}
        worker.close()

    def end(self, readable: Sequence[str | Path]) -> None:
        """Stop the sandboxed workers started for ``readable`` (the call that needed them is done)."""
        wanted = tuple(str(p) for p in readable)
        for key in [k for k in self._sandboxed if k[1] == wanted]:
            self.discard(self._sandboxed[key])

    def release(self) -> None:
        """Tell idle workers to exit without waiting (their exit overlaps the caller's next step)."""
        for worker in [*self._shared.values(), *self._sandboxed.values()]:
            worker.release()

    def close(self) -> None:
        """Stop every worker of the session and wait until each has exited."""
        for worker in [*self._shared.values(), *self._sandboxed.values()]:
            worker.close()
        self._shared.clear()
        self._sandboxed.clear()
        self._pending.clear()
        self.closed = True

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
