"""A Keras backend as a plug-in: the same verbs for each, registered like the formats.

Each backend module (:mod:`~kerasio.backends.tensorflow`, ``jax``, ``torch``)
subclasses :class:`Backend` and registers one instance; the verifier, the
worker and the exporter call the verbs below and never name a backend. A
backend kerasio has no module for (Keras's ``numpy`` or ``openvino``) runs
through the base class's generic verbs: eager calls on the CPU.

Example:
    >>> class NumpyBackend(Backend):  # doctest: +SKIP
    ...     name = "numpy"
    >>> register(NumpyBackend())  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, ContextManager, Iterator, Mapping

import numpy as np

from kerasio.backends.environment import PRECISIONS, cpu_name, keras_backend, to_numpy
from kerasio.spec.iospec import complete_outputs

__all__ = ["Backend", "REGISTRY", "register", "get_backend", "available_devices", "device_name", "precision_policy",
           "device_scope", "keras_forward", "outputs_from_run"]

Forward = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class Backend:
    """The verbs kerasio needs of a Keras backend; a subclass overrides what its framework does differently.

    Attributes:
        name: Keras's name for it (``KERAS_BACKEND``).
    """

    name: str = ""

    def devices(self) -> list[str]:
        """``["cpu"]``, plus ``"gpu"`` when this backend sees one here (imports the framework)."""
        return ["cpu", "gpu"] if self.gpu_available() else ["cpu"]

    def device_name(self, device: str) -> str:
        """A human-readable name for ``device``, for reports: the CPU's model, or the GPU's."""
        if device == "gpu":
            try:
                return self.gpu_name()
            except Exception:  # a name is informative only
                return "GPU"
        return cpu_name()

    def gpu_available(self) -> bool:
        """Whether this backend sees a GPU (the default :meth:`devices` asks)."""
        return False

    def gpu_name(self) -> str:
        """The first GPU's model (the default :meth:`device_name` asks)."""
        return "GPU"

    def precision(self, fast: bool) -> ContextManager[Any]:
        """Allow TF32 matmuls (``fast``) or pin full float32 while inside."""
        return contextlib.nullcontext()

    def forward(self, model: Any, iospec: Any) -> Forward:
        """A compiled inference function: ``{input name: array}`` in, ``{output name: array}`` out."""
        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            out = iospec.name_outputs(model(iospec.call_structure(inputs), training=False))
            return {k: to_numpy(v) for k, v in out.items()}

        return run

    def device_scope(self, device: str) -> ContextManager[Any]:
        """Place Keras variables and ops on ``cpu`` or ``gpu``."""
        import keras

        return keras.device(f"{device}:0")

    def __repr__(self) -> str:
        return f"<backend {self.name}>"


REGISTRY: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Add a backend to the registry (module import time)."""
    if backend.name in REGISTRY and type(REGISTRY[backend.name]) is not type(backend):
        raise ValueError(f"backend {backend.name!r} is registered twice")
    REGISTRY[backend.name] = backend
    return backend


def get_backend(name: str | None = None) -> Backend:
    """The registered backend ``name`` (default: the active one); another name gets the generic verbs."""
    name = name or keras_backend()
    found = REGISTRY.get(name)
    if found is None:
        found = Backend()
        found.name = name
    return found


def available_devices(backend: str | None = None) -> list[str]:
    """``["cpu"]`` plus ``"gpu"`` when the Keras ``backend`` (default: the active one) sees a GPU.

    Runtimes other than Keras's backends (onnxruntime, LiteRT) answer through
    their format's :meth:`~kerasio.formats.Format.available_devices`.
    """
    return get_backend(backend).devices()


def device_name(device: str, backend: str | None = None) -> str:
    """A human-readable name for ``device`` (the GPU's model where known)."""
    return get_backend(backend).device_name(device)


@contextlib.contextmanager
def precision_policy(mode: str = "highest", backend: str | None = None) -> Iterator[str]:
    """Pin full float32 matmuls (``highest``) or allow TF32 (``fast``) while inside.

    The backend's own policy applies, and TensorFlow's too wherever TensorFlow
    is imported (a SavedModel or LiteRT check runs TensorFlow under any Keras
    backend). Yields the mode that was applied, which the verify report records.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; received: precision={mode!r}")
    chosen = get_backend(backend)
    fast = mode == "fast"
    with contextlib.ExitStack() as stack:
        if chosen.name != "tensorflow" and "tensorflow" in sys.modules:
            stack.enter_context(get_backend("tensorflow").precision(fast))
        stack.enter_context(chosen.precision(fast))
        yield "tf32-allowed" if fast else "float32-pinned"


def device_scope(device: str) -> ContextManager[Any]:
    """Place Keras variables and ops on ``cpu`` or ``gpu`` for the active backend."""
    return get_backend().device_scope(device)


def keras_forward(model: Any, iospec: Any) -> Forward:
    """A compiled inference function for a Keras model under the active backend (see :meth:`Backend.forward`).

    ``model.predict`` spends ~50 ms per call on batching machinery; each
    backend's forward traces the pass once and costs well under a millisecond
    for a small batch.
    """
    return get_backend().forward(model, iospec)


def outputs_from_run(model: Any, iospec: Any, inputs: Mapping[str, np.ndarray]) -> None:
    """Name a subclassed model's outputs from an eager call on (at most) 2 rows of ``inputs`` (already coerced)."""
    raw = model(iospec.call_structure({k: v[:2] for k, v in inputs.items()}), training=False)
    if isinstance(raw, Mapping):
        complete_outputs(iospec, {k: to_numpy(v) for k, v in raw.items()})
    elif isinstance(raw, (list, tuple)):
        complete_outputs(iospec, [to_numpy(v) for v in raw])
    else:
        complete_outputs(iospec, to_numpy(raw))
