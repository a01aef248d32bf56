"""What crosses the boundary to a worker process: typed requests and answers, and the one mapping of a failure.

Each request is a small typed, immutable record (a ``NamedTuple``: a tenth
of a dataclass's cost at import, which every ``kerasio`` start pays) with its
operation's name (``op``); it travels as one JSON line (:func:`to_message`) and is rebuilt on
the other side (:func:`from_message`, which refuses an operation it does not
know). Arrays never travel in a message: they go as ``.npz`` files whose paths
do. A worker answers every request with an :class:`Answer`: ``ok`` and a value,
or the error's text, its kerasio class and, for a resource limit, which limit.
:func:`answer_error` is the one place that maps a failed answer back to its
exception, for the verifier, the loader, the exporter and the jobs alike.
"""
# No `from __future__ import annotations`: NamedTuple would compile every string annotation at import (4 ms).

from pathlib import Path
from typing import Any, NamedTuple

from kerasio import errors
from kerasio.errors import KerasioError, WorkerError
from kerasio.spec.limits import Limits

__all__ = ["CheckRequest", "OpenRequest", "RunRequest", "JobRequest", "WarmRequest", "RehearseRequest",
           "StatusRequest", "Request", "CheckResult", "Opened", "Answer", "to_message", "from_message",
           "answer_error", "WARM", "RUNTIME_MODULES", "ARTIFACT_OPS"]


class CheckRequest(NamedTuple):
    """Load one artifact and run the reference inputs (an ``.npz``) through it on each device."""

    format: str
    path: str
    iospec: dict[str, Any]  # the manifest's, as a dict
    inputs: str
    device: str = "auto"  # auto|cpu|gpu|all
    precision: str = "highest"  # highest|fast
    trust: bool = False
    imports: tuple[str, ...] = ()  # modules to import first (custom layers)
    allow_ops: tuple[str, ...] = ()  # SavedModel ops accepted beyond the allowlist
    fast_math: bool = True  # on a GPU, also run with TF32 allowed, for the drift report
    sweep: str = ""  # the shape sweep's inputs (an ``.npz`` keyed ``<i>/<input>``), run after the reference's
    sweep_shapes: int = 0
    calibrate: bool = False  # also run the reference batch again, and with every float input moved by one ulp

    @property
    def op(self) -> str:
        return "check"


class OpenRequest(NamedTuple):
    """Load an artifact and keep it, for :class:`RunRequest`; answered with :class:`Opened`."""

    format: str
    path: str
    iospec: dict[str, Any] | None = None
    device: str = "cpu"
    trust: bool = False
    imports: tuple[str, ...] = ()
    allow_ops: tuple[str, ...] = ()

    @property
    def op(self) -> str:
        return "open"


class RunRequest(NamedTuple):
    """Run named inputs (an ``.npz``) through an opened artifact; answered with the outputs' ``.npz`` path."""

    path: str
    inputs: str
    rows: int = 0  # a large batch of the caller's rows earns more time under the limits

    @property
    def op(self) -> str:
        return "run"


class JobRequest(NamedTuple):
    """Run the registered job ``name`` (:mod:`kerasio.process.jobs`) with JSON keyword arguments."""

    name: str
    kwargs: dict[str, Any]

    @property
    def op(self) -> str:
        return "job"


class WarmRequest(NamedTuple):
    """Import these modules now (the runtimes start lean), so that the import overlaps the caller's work."""

    modules: tuple[str, ...] = ()

    @property
    def op(self) -> str:
        return "warm"


class RehearseRequest(NamedTuple):
    """Save, load and run a two-unit model in each format, so that the real checks find everything warm."""

    formats: tuple[str, ...] = ()

    @property
    def op(self) -> str:
        return "rehearse"


class StatusRequest(NamedTuple):
    """What confines the worker (sandbox, limits); answered with a dict."""

    @property
    def op(self) -> str:
        return "status"


Request = CheckRequest | OpenRequest | RunRequest | JobRequest | WarmRequest | RehearseRequest | StatusRequest
_REQUESTS: dict[str, Any] = {"check": CheckRequest, "open": OpenRequest, "run": RunRequest, "job": JobRequest,
                              "warm": WarmRequest, "rehearse": RehearseRequest, "status": StatusRequest}
# What a worker imports at start for the runtime it will serve (so that the import overlaps the caller's work).
WARM = {"keras": ("keras",), "tensorflow": ("tensorflow",), "onnxruntime": ("onnxruntime",),
        "litert": ("ai_edge_litert.interpreter",), "openvino": ("openvino",)}
RUNTIME_MODULES = frozenset(m for modules in WARM.values() for m in modules)
# Requests that load or run an artifact: these get the limits' deadline (the rest are kerasio's own imports).
ARTIFACT_OPS = ("check", "open", "run")


class CheckResult(NamedTuple):
    """One device's run of a checked artifact.

    The outputs are ``<outputs>-full.npz``, ``<outputs>-one.npz`` and, for the sweep, ``<outputs>-sweep.npz``
    (keyed ``<i>/<output>``), with ``sweep_errors`` the runtime's first error line for each shape it refused.
    """

    device: str
    runtime: str
    backend: str
    device_name: str
    precision: str
    load_seconds: float
    outputs: str
    run_seconds: float
    fast_outputs: str | None = None  # the same, with TF32 allowed (a GPU only)
    packages: dict[str, str] = {}  # allowlisted packages the loader imported for the config's classes: {name: version}
    sweep_errors: dict[str, str] = {}  # {"<i>" or "one" (the 1-row batch): error} for each shape it refused
    noise: dict[str, dict[str, float | None]] = {}  # calibrate: per float output (kerasio.spec.tolerances.measure_noise)
    ran_at: str = ""  # the precision the runtime says it ran at (OpenVINO's inference precision), where it says


class Opened(NamedTuple):
    """An artifact a worker opened: the signature it runs with, and what runs it where."""

    iospec: dict[str, Any]
    runtime: str
    backend: str
    device: str
    info: dict[str, Any]


class Answer(NamedTuple):
    """A worker's answer: ``ok`` and a ``value``, or the error's text, kerasio class and limit."""

    ok: bool
    value: Any = None
    error: str = ""
    type: str = ""
    limit: str = ""

    def to_message(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True} if self.value is None else {"ok": True, "value": self.value}
        message = {"ok": False, "error": self.error, "type": self.type}
        return {**message, "limit": self.limit} if self.limit else message

    @classmethod
    def from_message(cls, message: Any) -> "Answer":
        if not isinstance(message, dict) or not isinstance(message.get("ok"), bool):
            return cls(False, error=f"the worker gave an answer kerasio cannot read: {str(message)[:200]}",
                       type="WorkerError")
        if message["ok"]:
            return cls(True, message.get("value"))
        return cls(False, error=str(message.get("error", "the worker failed")), type=str(message.get("type", "")),
                   limit=str(message.get("limit") or ""))


def to_message(request: Request) -> dict[str, Any]:
    """A request as the JSON object that travels (``op`` first)."""
    return {"op": request.op, **request._asdict()}


def from_message(message: dict[str, Any]) -> Request:
    """The request a JSON object stands for; :class:`WorkerError` for an unknown operation or field."""
    op = message.get("op")
    kind = _REQUESTS.get(op) if isinstance(op, str) else None
    if kind is None:
        raise WorkerError(f"the worker knows the operations {', '.join(_REQUESTS)}; received: op={op!r}")
    known = set(kind._fields)
    unknown = sorted(set(message) - known - {"op", "out_dir", "cpu_seconds"})
    if unknown:
        raise WorkerError(f"a {op} request has no field {unknown[0]!r}; received: fields={unknown}")
    values = {k: tuple(v) if isinstance(v, list) and k in ("imports", "allow_ops", "modules", "formats") else v
              for k, v in message.items() if k in known}
    return kind(**values)


def answer_error(answer: Answer, limits: Limits | None = None, *, copy: str | Path | None = None,
                 shown: str | Path | None = None) -> KerasioError:
    """The exception a failed answer stands for: its kerasio class (``ArtifactError`` for any other type).

    ``copy`` (the checked private copy the worker loaded) is replaced by
    ``shown`` (the artifact in the bundle) in the message. A limit the worker
    reported becomes :meth:`Limits.hit`, which names the limit and how to raise it.
    """
    text = answer.error or "the worker failed"
    if copy is not None and shown is not None:
        text = text.replace(str(copy), str(shown))
    if answer.type == "ResourceLimitError":
        return (limits or Limits.from_env().resolved()).hit(answer.limit or "memory", text.split(". ")[0][:300])
    kind = getattr(errors, answer.type, None)
    if not (isinstance(kind, type) and issubclass(kind, KerasioError)):
        kind = errors.ArtifactError
    return kind(text)
