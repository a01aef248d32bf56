"""Backends, devices and the precision policy, imported lazily.

Nothing here imports TensorFlow, JAX or PyTorch at module import time: each
function imports what it needs when it is called, and a missing runtime raises
:class:`~kerasio.errors.BackendUnavailableError` naming what to install.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from .errors import BackendUnavailableError

__all__ = [
    "require", "import_keras_quietly", "lean_imports", "default_backend", "keras_backend", "available_devices",
    "resolve_devices", "precision_policy", "device_scope", "keras_forward", "device_name", "backend_env", "to_numpy",
    "graph_forward", "tf_input_specs", "tf_input_names", "outputs_from_run", "cpu_features",
]

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


def available_devices(backend: str | None = None) -> list[str]:
    """``["cpu"]`` plus ``"gpu"`` when the Keras ``backend`` (default: the active one) sees a GPU.

    Runtimes other than Keras's backends (onnxruntime, LiteRT) answer through
    their format's :meth:`~kerasio.formats.Format.available_devices`.
    """
    backend = backend or keras_backend()
    gpu = False
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    elif backend == "jax":
        import jax

        gpu = any(d.platform == "gpu" for d in jax.devices())
    elif backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
    return ["cpu", "gpu"] if gpu else ["cpu"]


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


def device_name(device: str, backend: str | None = None) -> str:
    """A human-readable name for ``device`` (the GPU's model where known)."""
    backend = backend or keras_backend()
    if device == "gpu":
        try:
            if backend == "torch":
                import torch

                return torch.cuda.get_device_name(0)
            if backend == "jax":
                import jax

                return next(d.device_kind for d in jax.devices() if d.platform == "gpu")
            import tensorflow as tf

            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
            return details.get("device_name", "GPU")
        except Exception:  # a name is informative only
            return "GPU"
    return _cpu_name()


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


def _cpu_name() -> str:
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
def precision_policy(mode: str = "highest", backend: str | None = None) -> Iterator[str]:
    """Pin full float32 matmuls (``highest``) or allow TF32 (``fast``) while inside.

    * TensorFlow: ``tf.config.experimental.enable_tensor_float_32_execution``.
    * JAX: ``jax.default_matmul_precision("highest" | "tensorfloat32")``.
    * PyTorch: ``torch.backends.cuda.matmul.allow_tf32`` and cuDNN's flag.

    Yields the mode that was applied, which the verify report records.
    """
    if mode not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}; received: precision={mode!r}")
    backend = backend or keras_backend()
    fast = mode == "fast"
    with contextlib.ExitStack() as stack:
        if backend == "tensorflow" or "tensorflow" in sys.modules:
            import tensorflow as tf

            before = tf.config.experimental.tensor_float_32_execution_enabled()
            tf.config.experimental.enable_tensor_float_32_execution(fast)
            stack.callback(tf.config.experimental.enable_tensor_float_32_execution, before)
        if backend == "jax":
            import jax

            stack.enter_context(jax.default_matmul_precision("tensorfloat32" if fast else "highest"))
        if backend == "torch":
            import torch

            before_mm, before_cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast

            def restore_torch():
                torch.backends.cuda.matmul.allow_tf32 = before_mm
                torch.backends.cudnn.allow_tf32 = before_cudnn

            stack.callback(restore_torch)
        yield "tf32-allowed" if fast else "float32-pinned"


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
        deprecation._PRINT_DEPRECATION_WARNINGS = False
    try:
        yield
    finally:
        for logger, level in zip(loggers, before):
            logger.setLevel(level)
        if deprecation is not None and printing is not None:
            deprecation._PRINT_DEPRECATION_WARNINGS = printing


@contextlib.contextmanager
def device_scope(device: str):
    """Place Keras variables and ops on ``cpu`` or ``gpu`` for the active backend.

    PyTorch's CPU is named ``cpu``, not ``cpu:0``: under ``cpu:0`` Keras's torch backend turns a
    non-trainable integer variable (a Normalization layer's count) into a plain tensor, and loading fails
    with "Only Tensors of floating point and complex dtype can require gradients".
    """
    import keras

    with keras.device("cpu" if device == "cpu" and keras.backend.backend() == "torch" else f"{device}:0"):
        yield


def keras_forward(model, signature) -> Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]:
    """A compiled inference function for a Keras model: ``{input name: array}`` in, ``{output name: array}`` out.

    ``model.predict`` spends ~50 ms per call on batching machinery; this traces
    the forward pass once per backend (TensorFlow: a concrete function with the
    signature's dtypes, strings included) and costs well under a millisecond
    for a small batch.
    """
    backend = keras_backend()
    names = signature.input_names
    if backend == "tensorflow":
        import tensorflow as tf

        # No autograph: the forward pass has no Python control flow on tensors, and transpiling it (and the
        # signature helpers it calls) costs ~0.5 s per trace.
        concrete = tf.function(graph_forward(model, signature), autograph=False).get_concrete_function(
            *tf_input_specs(signature))

        def run_tf(inputs):
            out = concrete(*[tf.constant(inputs[n]) for n in names])
            return {k: to_numpy(v) for k, v in out.items()}

        return run_tf
    if backend == "jax":
        import jax

        step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])

        def run_jax(inputs):  # the variables' current values: the model may train on after this
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            out = signature.name_outputs(step(trainable, frozen, signature.call_structure(inputs)))
            return {k: to_numpy(v) for k, v in out.items()}

        return run_jax
    if backend == "torch":
        import torch
        from keras.src.backend.torch.core import get_device

        def run_torch(inputs):
            with torch.no_grad():
                tensors = {n: torch.as_tensor(np.asarray(inputs[n]), device=get_device()) for n in names}
                out = signature.name_outputs(model(signature.call_structure(tensors), training=False))
            return {k: v.detach().cpu().numpy() for k, v in out.items()}

        return run_torch

    def run_other(inputs):
        out = signature.name_outputs(model(signature.call_structure(inputs), training=False))
        return {k: to_numpy(v) for k, v in out.items()}

    return run_other


def graph_forward(model, signature) -> Callable[..., dict]:
    """Positional tensors in input order -> ``{output name: tensor}``: what every TensorFlow graph traces."""
    names = signature.input_names

    def forward(*tensors):
        return signature.name_outputs(model(signature.call_structure(dict(zip(names, tensors))), training=False))

    return forward


def tf_input_specs(signature) -> list:
    """One ``tf.TensorSpec`` per input, named as the model names it (TF-valid), with its dtype (strings too)."""
    import tensorflow as tf

    return [tf.TensorSpec(list(s.shape), tf.string if s.dtype == "string" else tf.as_dtype(s.dtype), name=name)
            for s, name in zip(signature.inputs, tf_input_names(signature))]


def tf_input_names(signature) -> list[str]:
    """The TF-valid names of the inputs, in order (TF refuses spaces and most punctuation in placeholder names)."""
    names = []
    for i, spec in enumerate(signature.inputs):
        clean = re.sub(r"[^A-Za-z0-9_.\-/]", "_", spec.name)
        names.append(clean if re.match(r"[A-Za-z0-9.]", clean) else f"input_{i}")
    return names


def to_numpy(value) -> np.ndarray:
    """A backend tensor as numpy; TensorFlow's string tensors (bytes) become str arrays."""
    from .signature import as_str_array

    array = np.asarray(value.numpy() if hasattr(value, "numpy") else value)
    return as_str_array(array) if array.dtype.kind in "SO" else array


def outputs_from_run(model, signature, inputs) -> None:
    """Name a subclassed model's outputs from an eager call on (at most) 2 rows of ``inputs`` (already coerced)."""
    from .signature import complete_outputs

    raw = model(signature.call_structure({k: v[:2] for k, v in inputs.items()}), training=False)
    if isinstance(raw, Mapping):
        complete_outputs(signature, {k: to_numpy(v) for k, v in raw.items()})
    elif isinstance(raw, (list, tuple)):
        complete_outputs(signature, [to_numpy(v) for v in raw])
    else:
        complete_outputs(signature, to_numpy(raw))


def backend_env(backend: str | None) -> dict[str, str]:
    """The environment for a subprocess that should use ``backend``."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend:
        env["KERAS_BACKEND"] = backend
    return env
