"""Shared by the formats exported through a TensorFlow graph (savedmodel, onnx, litert)."""
from __future__ import annotations

from typing import Any, Callable

from kerasio.backends.tensorflow import graph_forward, tf_input_specs
from kerasio.spec.iospec import IOSpec
from kerasio.spec.task import Task


def forward_function(model: Any, iospec: IOSpec, task: Task | None = None) -> Callable[..., dict[str, Any]]:
    """:func:`~kerasio.backends.tensorflow.graph_forward`, and for a classification a ``class_id`` output too."""
    import tensorflow as tf

    plain = graph_forward(model, iospec)
    if task is None or not task.is_classification:
        return plain

    def forward(*tensors: Any) -> dict[str, Any]:
        outputs = plain(*tensors)
        outputs["class_id"] = class_ids(tf, outputs[str(task.output)], task)
        return outputs

    return forward


def endpoint(fn: Callable[..., Any], iospec: IOSpec) -> Any:
    """``fn`` as a ``tf.function`` over the signature's specs, without autograph (nothing to convert; ~0.5 s saved)."""
    import tensorflow as tf

    return tf.function(fn, input_signature=tf_input_specs(iospec), autograph=False)


def class_ids(tf: Any, probs: Any, task: Task) -> Any:
    if task.binary:
        return tf.cast(tf.reshape(probs, [-1]) >= 0.5, tf.int64)
    return tf.argmax(probs, axis=-1, output_type=tf.int64)
