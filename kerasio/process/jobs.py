"""Registered jobs: the only code a worker runs besides checking, opening and running artifacts.

A job is a function registered by name with :func:`job`, in a module that
both the caller and the worker import (the worker imports the modules its
session names, as it imports custom layers). The worker answers a request for
any other name with a :class:`~kerasio.errors.WorkerError`: a request can
choose among the registered jobs, never name a function to import. (The
built-in ones are below; the training pipeline registers its own.)

Example:
    >>> @job("mine.double")  # doctest: +SKIP
    ... def double(x: int) -> int:
    ...     return 2 * x
    >>> with Session() as s:  # doctest: +SKIP
    ...     s.job("mine.double", x=2, imports=["mine"])
    4
"""
from __future__ import annotations

import importlib
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from kerasio.bundle.arrays import load_arrays, save_arrays
from kerasio.errors import WorkerError
from kerasio.formats import ExportContext, get_format
from kerasio.spec.iospec import IOSpec
from kerasio.spec.synth import SyntheticInputs, hints_from_model, synthesize
from kerasio.spec.task import Task

__all__ = ["JOBS", "job", "get_job", "save_format", "synthesize_inputs"]

JOBS: dict[str, Callable[..., Any]] = {}
F = TypeVar("F", bound=Callable[..., Any])


def job(name: str) -> Callable[[F], F]:
    """Register the decorated function as the worker job ``name`` (its keyword arguments must be JSON)."""
    def register(fn: F) -> F:
        known = JOBS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (fn.__module__, fn.__qualname__):
            raise ValueError(f"worker job {name!r} is registered twice ({known.__module__} and {fn.__module__})")
        JOBS[name] = fn
        return fn
    return register


def get_job(name: str) -> Callable[..., Any]:
    """The job registered as ``name``; :class:`WorkerError` for any other."""
    try:
        return JOBS[name]
    except KeyError:
        raise WorkerError(
            f"the worker runs only registered jobs, and {name!r} is not one (registered: {', '.join(sorted(JOBS))}). "
            "Register it with @kerasio.process.jobs.job in a module the session imports. "
            f"Received: job={name!r}") from None


@job("save_format")
def save_format(keras_file: str, format: str, dest: str, iospec: dict[str, Any], task: dict[str, Any],
                references: str, options: dict[str, Any], imports: Sequence[str] = ()) -> dict[str, Any]:
    """Save a format that must be written under this worker's backend, from the caller's just-written ``.keras``.

    A ``.keras`` file is backend-agnostic, so this model has the caller's
    weights; the artifact is made by the same code as on the caller's backend,
    and verified against the caller's reference outputs. ``imports``: the modules
    that register the model's custom classes (the caller imported them already).
    """
    import keras

    for module in imports:
        importlib.import_module(module)

    spec = IOSpec.from_dict(iospec)
    model = keras.saving.load_model(keras_file, compile=False)
    ctx = ExportContext(iospec=spec, task=Task.from_dict(task),
                        reference_inputs=load_arrays(Path(references), spec.input_names, list(spec.inputs)),
                        options=options)
    return get_format(format).save(model, Path(dest), ctx)


@job("synthesize")
def synthesize_inputs(path: str, format: str, iospec: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Inputs made from the signature of the Keras model at ``path`` and from its layers (:mod:`kerasio.spec.synth`).

    Run by the worker that opened the model: an untrusted model's layers are read where it is confined. The
    arrays go to an ``.npz`` in the worker's temporary directory; returns its path and what each input was made from.
    """
    spec = IOSpec.from_dict(iospec)
    model = get_format(format).load(Path(path), iospec=spec).model
    made = SyntheticInputs(rows=int(settings["rows"]), seed=int(settings["seed"]), length=int(settings["length"]),
                           value_ranges={k: (float(v[0]), float(v[1])) for k, v in settings["value_ranges"].items()})
    arrays, said = synthesize(spec, hints_from_model(model, spec), made)
    out = Path(tempfile.mkdtemp(prefix="kerasio-synth-")) / "inputs.npz"
    save_arrays(out, arrays)
    return {"inputs": str(out), "made": said}
