"""The TensorFlow backend, and the TensorFlow graph helpers every TensorFlow-run format traces with."""
from __future__ import annotations

import contextlib
import re
from typing import Any, Callable, ContextManager, Iterator

from kerasio.backends.base import Backend, Forward, register
from kerasio.backends.environment import to_numpy

__all__ = ["TensorFlowBackend", "graph_forward", "tf_input_specs", "tf_input_names"]


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def gpu_available(self) -> bool:
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))

    def gpu_name(self) -> str:
        import tensorflow as tf

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return str(details.get("device_name", "GPU"))

    def precision(self, fast: bool) -> ContextManager[Any]:
        return _tf32(fast)

    def forward(self, model: Any, iospec: Any) -> Forward:
        """A concrete function with the signature's dtypes, strings included."""
        import tensorflow as tf

        names = iospec.input_names
        # No autograph: the forward pass has no Python control flow on tensors, and transpiling it (and the
        # signature helpers it calls) costs ~0.5 s per trace.
        concrete = tf.function(graph_forward(model, iospec), autograph=False).get_concrete_function(
            *tf_input_specs(iospec))

        def run(inputs):
            out = concrete(*[tf.constant(inputs[n]) for n in names])
            return {k: to_numpy(v) for k, v in out.items()}

        return run


@contextlib.contextmanager
def _tf32(fast: bool) -> Iterator[None]:
    """``tf.config.experimental.enable_tensor_float_32_execution`` while inside, restored after."""
    import tensorflow as tf

    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(fast)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def graph_forward(model, iospec) -> Callable[..., dict]:
    """Positional tensors in input order -> ``{output name: tensor}``: what every TensorFlow graph traces."""
    names = iospec.input_names

    def forward(*tensors):
        return iospec.name_outputs(model(iospec.call_structure(dict(zip(names, tensors))), training=False))

    return forward


def tf_input_specs(iospec) -> list:
    """One ``tf.TensorSpec`` per input, named as the model names it (TF-valid), with its dtype (strings too)."""
    import tensorflow as tf

    return [tf.TensorSpec(list(s.shape), tf.string if s.dtype == "string" else tf.as_dtype(s.dtype), name=name)
            for s, name in zip(iospec.inputs, tf_input_names(iospec))]


def tf_input_names(iospec) -> list[str]:
    """The TF-valid names of the inputs, in order (TF refuses spaces and most punctuation in placeholder names)."""
    names = []
    for i, spec in enumerate(iospec.inputs):
        clean = re.sub(r"[^A-Za-z0-9_.\-/]", "_", spec.name)
        names.append(clean if re.match(r"[A-Za-z0-9.]", clean) else f"input_{i}")
    return names


BACKEND = register(TensorFlowBackend())
