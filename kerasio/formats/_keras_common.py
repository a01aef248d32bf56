"""Shared by the formats that Keras itself reloads (keras, h5, weights, pickle)."""
from __future__ import annotations

import contextlib
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from kerasio.backends.base import available_devices, device_scope, keras_forward
from kerasio.backends.environment import keras_backend, to_numpy
from kerasio.bundle.audit.keras import variables_bytes
from kerasio.errors import ArtifactError, UnsafeArtifactError
from kerasio.formats.base import Format, Runner
from kerasio.spec.divergence import LayerOutput
from kerasio.spec.iospec import IOSpec, derive_iospec

KERAS_CALL = """
import keras


def call(model, inputs):
    \"\"\"The model called as kerasio calls it (one array, a list in input order, or a dict); outputs by name.\"\"\"
    if INPUT_STRUCTURE == "dict":
        x = {name: inputs[name] for name in INPUT_NAMES}
    elif INPUT_STRUCTURE == "list":
        x = [inputs[name] for name in INPUT_NAMES]
    else:
        x = inputs[INPUT_NAMES[0]]
    with keras.device(f"{DEVICE}:0"):
        raw = model(x, training=False)
    if isinstance(raw, dict):
        raw = [raw[name] for name in OUTPUT_NAMES]
    elif not isinstance(raw, (list, tuple)):
        raw = [raw]
    return {name: keras.ops.convert_to_numpy(value) for name, value in zip(OUTPUT_NAMES, raw)}
"""


class KerasReloaded(Format):
    """A format that Keras itself reloads (keras, h5, weights, pickle): its runner holds a Keras model."""

    runtime = "keras"
    repro_code = KERAS_CALL + """

def run(path, inputs):
    return call(keras.saving.load_model(path, compile=False), inputs)
"""

    def intermediates(self, runner: Runner, inputs: Mapping[str, np.ndarray],
                      layers: Sequence[LayerOutput]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """The reloaded model's own layer outputs, layer by layer: the same layers as the original's, by name."""
        values = {layer.key: layer.value for layer in layer_outputs(runner.model, runner.iospec, inputs)}
        return values, {key: "the reloaded model's own layer" for key in values}


def keras_runner(model: Any, fmt: str, path: Path, iospec: IOSpec | None, device: str, **info: Any) -> Runner:
    """A :class:`Runner` over a reloaded Keras model, on ``device``, named by ``signature``."""

    if iospec is None:  # a bare file: a functional model names its own inputs and outputs
        iospec = derive_iospec(model)
    backend = keras_backend()
    with device_scope(device):
        forward = keras_forward(model, iospec)
    # Where the CPU is the only device, every op runs there anyway: skip entering a scope per call (~0.1 ms).
    scoped = device == "gpu" or "gpu" in available_devices(backend)
    return Runner(forward, format=fmt, path=path, runtime=f"keras/{backend}", backend=backend, iospec=iospec,
                  device=device, model=model, info=info, context=(lambda: device_scope(device)) if scoped else None)


def guarded_load(path: Path, device: str, load: Callable[[], Any]) -> Any:
    """Run a Keras loader on ``device``, turning its errors into kerasio errors that name the file."""

    try:
        with warnings.catch_warnings(), device_scope(device):
            warnings.filterwarnings("ignore", message=".*legacy.*")
            warnings.filterwarnings("ignore", message=".*[Cc]ompiled the loaded model.*")
            return load()
    except (TypeError, ValueError) as exc:
        text = str(exc)
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text) or \
            re.search(r"Unknown (?:layer|object|class): '([^']+)'", text)
        if missing:
            raise UnsafeArtifactError(
                f"{path}: custom class {missing.group(1)!r} is not registered in this process. Decorate it "
                "with @keras.saving.register_keras_serializable() and import its module before loading "
                f"(CLI: --import MODULE). Received: {text.splitlines()[0][:200]}"
            ) from None
        if "safe_mode" in text or "lambda" in text.lower():
            raise UnsafeArtifactError(f"{path}: refused by Keras safe mode; replace the Lambda by a registered "
                                      f"custom layer. Received: {text.splitlines()[0][:300]}") from None
        raise ArtifactError(f"{path}: Keras could not load it; re-export it. "
                            f"Received: {type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable; the file is corrupt or truncated, re-export it. "
                            f"Received: {exc}") from None


def require_room_for_hdf5(model: Any, dest: Path) -> None:
    """``OSError(ENOSPC)`` now, before HDF5 writes ``model``'s weights where they would not fit.

    On a full disk HDF5 fails inside its own cleanup: h5py only prints those errors, leaves the library's state
    broken, and the process later dies of SIGSEGV (seen with Keras's ``save_weights`` on a filled tmpfs). Refusing
    up front keeps the failure an error that export names. The room asked for is the weights' bytes and 4 KiB of
    HDF5 headers per variable, plus 64 KiB.
    """
    import errno
    import os

    weights = list(model.weights)
    need = 64 * 1024 + 4096 * len(weights) + variables_bytes(weights)
    stat = os.statvfs(dest.parent)
    if stat.f_bavail * stat.f_frsize < need:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dest))


@contextlib.contextmanager
def recording_layers(model: Any) -> Iterator[list[tuple[str, str, Any]]]:
    """While inside, each top-level layer of ``model`` records its output as it runs.

    Yields the records, ``(key, layer class, tensor)`` in the order the layers first ran: the key is the layer's
    name (``name[i]`` for the i-th of several outputs). Each layer's ``call`` is wrapped by an instance attribute
    that passes everything through, so a functional model's graph and a subclassed model's own ``call`` both run
    as they are; the wrappers are removed on the way out. A layer that runs twice keeps its last output: an
    unbuilt model's first call is a symbolic one that builds it, and a shared layer is read where it ran last.
    """
    import keras

    records: list[tuple[str, str, Any]] = []
    wrapped = [layer for layer in getattr(model, "layers", []) if type(layer).__name__ != "InputLayer"]

    def wrap(layer: Any) -> Callable[..., Any]:
        inner = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            flat = keras.tree.flatten(out)
            for i, tensor in enumerate(flat):
                key = layer.name if len(flat) == 1 else f"{layer.name}[{i}]"
                at = next((j for j, r in enumerate(records) if r[0] == key), None)
                if at is None:
                    records.append((key, type(layer).__name__, tensor))
                else:
                    records[at] = (key, type(layer).__name__, tensor)
            return out

        return call

    for layer in wrapped:
        layer.call = wrap(layer)
    try:
        yield records
    finally:
        for layer in wrapped:
            with contextlib.suppress(AttributeError):
                del layer.call


def layer_outputs(model: Any, iospec: IOSpec, inputs: Mapping[str, np.ndarray]) -> list[LayerOutput]:
    """Every top-level layer's output on ``inputs``, in the order the layers ran (an eager call, not a trace)."""
    with recording_layers(model) as records:
        model(iospec.call_structure(dict(inputs)), training=False)
    return [LayerOutput(key, cls, to_numpy(tensor)) for key, cls, tensor in records if _is_tensor(tensor)]


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "shape") and hasattr(value, "dtype")
