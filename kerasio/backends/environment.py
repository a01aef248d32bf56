"""The frameworks' environment, read without importing them: which backend, what to install, quiet and lean imports.

Nothing here imports TensorFlow, JAX or PyTorch at module import time: each
function imports what it needs when it is called, and a missing runtime raises
:class:`~kerasio.errors.BackendUnavailableError` naming what to install.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Iterator, Sequence

import numpy as np

from kerasio.errors import BackendUnavailableError
from kerasio.spec.iospec import as_str_array

__all__ = ["PRECISIONS", "require", "keras_backend", "default_backend", "lean_imports", "import_keras_quietly",
           "quiet_framework_logs", "resolve_devices", "cpu_features", "cpu_name", "to_numpy", "backend_env",
           "OPTIONAL_AT_START"]
PRECISIONS = ("highest", "fast")


_INSTALL = {
    "tensorflow": "pip install tensorflow",
    "onnxruntime": "pip install 'kerasio[onnx]'",
    "onnx": "pip install 'kerasio[onnx]'",
    "tf2onnx": "pip install 'kerasio[onnx]'",
    "jax": "pip install 'kerasio[jax]'",
    "torch": "pip install torch",
    "tensorflow_serving": "pip install tensorflow-serving-api",
    "ai_edge_litert": "pip install 'kerasio[litert]'",
}


def require(module: str, purpose: str):
    """Import ``module`` or raise a clear error saying what needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        hint = _INSTALL.get(top, f"pip install {top}")
        raise BackendUnavailableError(
            f"{purpose} needs {top}, which cannot be imported here ({exc}). Install it ({hint}) "
            "or leave this format out (--formats / --format)."
        ) from None


def keras_backend() -> str:
    """The Keras backend this process uses (imports Keras)."""
    import keras

    return keras.backend.backend()


# What TensorFlow and Keras import at start only because it is installed, for features kerasio never uses (Keras's
# image-gallery plot, TFLite's JAX converter, the backends not in use): 2.3 of the 10 s that importing Keras took on
# this project's 2-core machine. Skipped where kerasio owns the process: the worker, and the CLI (LEAN below).
OPTIONAL_AT_START = ("matplotlib", "jax", "jaxlib", "torch")


LEAN = False  # set by the CLI's entry point; a notebook or script importing kerasio keeps Keras exactly as it is


class _Skip:
    """A meta-path finder that answers ``names`` as not installed; the optional imports above fall back cleanly."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"{name} is not imported while kerasio starts its runtime", name=name)


@contextlib.contextmanager
def lean_imports(enabled: bool = True) -> Iterator[None]:
    """While inside, :data:`OPTIONAL_AT_START` (except the Keras backend's own) cannot be imported. Only for the
    runtime's start: a module imported afterwards (a custom layer's, matplotlib for ``trace.png``) may use any.
    ``enabled=False`` changes nothing."""
    if not enabled:
        yield
        return
    finder = _Skip(tuple(n for n in OPTIONAL_AT_START if not n.startswith(default_backend())))
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def import_keras_quietly() -> None:
    """Import Keras (and TensorFlow) with TensorFlow's native start-up lines hidden.

    TF 2.21 prints oneDNN and CUDA-stub notices from C++ before its logging is
    set up, ignoring ``TF_CPP_MIN_LOG_LEVEL``. They are shown only if the import
    fails. Python warnings are untouched. Under the CLI (:data:`LEAN`), without
    the optional imports of :func:`lean_imports`.
    """
    import tempfile

    if "keras" in sys.modules:
        return
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            with lean_imports(LEAN):
                import keras  # noqa: F401
        except Exception:
            os.dup2(saved, 2)
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def default_backend() -> str:
    """The backend a fresh process would use, read without importing Keras.

    Keras takes ``KERAS_BACKEND`` first, then ``~/.keras/keras.json``
    (``KERAS_HOME`` moves it), then TensorFlow.
    """
    import json

    if "keras" in sys.modules:
        return keras_backend()
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend", "tensorflow")
    except (OSError, ValueError):
        return "tensorflow"


def resolve_devices(device: str, seen: Sequence[str], runtime: str = "") -> list[str]:
    """Map ``auto|cpu|gpu|all`` to the devices to run on, given the devices a runtime ``seen``."""
    if device == "auto":
        return ["gpu"] if "gpu" in seen else ["cpu"]
    if device == "all":
        return list(seen)
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be auto, cpu, gpu or all; received: device={device!r}")
    if device not in seen:
        raise BackendUnavailableError(
            f"--device {device} asked for, but {runtime or 'this runtime'} sees no GPU here. "
            f"Use --device auto or cpu. Received: device={device!r}"
        )
    return [device]


def cpu_features() -> str:
    """A short fingerprint of this CPU's model and instruction-set flags (``/proc/cpuinfo``).

    Two machines whose CPUs report the same name (a VM says only "AMD EPYC")
    may still differ in AVX-512 and so in the kernels TensorFlow picks; only
    the same fingerprint lets a reload be held to bit-identity.
    """
    import hashlib
    import platform

    model, flags = "", ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = " ".join(sorted(value.split()))
                if model and flags:
                    break
    except OSError:
        pass
    text = f"{model or platform.processor()}|{flags}|{platform.machine()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


@contextlib.contextmanager
def quiet_framework_logs():
    """Hold back the converters' chatter while kerasio writes an artifact.

    TensorFlow's "Assets written to <staging path>", its deprecation notices
    from inside tf2onnx (printed once per call, so twice per export) and
    Keras's absl warning that HDF5 is legacy (kerasio says that once, itself)
    are not the user's concern. Errors still come through.
    """
    import logging

    names = ("tensorflow", "absl", "tf2onnx", "keras")
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    deprecation = sys.modules.get("tensorflow.python.util.deprecation")
    printing = getattr(deprecation, "_PRINT_DEPRECATION_WARNINGS", None)
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    if deprecation is not None:
        setattr(deprecation, "_PRINT_DEPRECATION_WARNINGS", False)  # TensorFlow's private switch
    try:
        yield
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)
        if deprecation is not None and printing is not None:
            setattr(deprecation, "_PRINT_DEPRECATION_WARNINGS", printing)


def to_numpy(value) -> np.ndarray:
    """A backend tensor as numpy; TensorFlow's string tensors (bytes) become str arrays."""

    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return as_str_array(array) if array.dtype.kind in "SO" else array


def backend_env(backend: str | None) -> dict[str, str]:
    """The environment for a subprocess that should use ``backend``."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend:
        env["KERAS_BACKEND"] = backend
    return env
