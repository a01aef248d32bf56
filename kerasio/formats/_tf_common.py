"""Shared by the formats exported through a TensorFlow graph (savedmodel, onnx, litert)."""
from __future__ import annotations

from typing import Any, Callable

from ..signature import Signature
from ..task import Task


def input_specs(signature: Signature) -> list[Any]:
    """One ``tf.TensorSpec`` per input, named as the model names it (TF-valid), with its dtype (strings too)."""
    import tensorflow as tf

    from ..runtime import _tf_dtype, _tf_name

    return [tf.TensorSpec(list(s.shape), _tf_dtype(tf, s.dtype), name=_tf_name(s.name, i))
            for i, s in enumerate(signature.inputs)]


def tf_names(signature: Signature) -> list[str]:
    """The TF-valid names of the inputs, in order (what a serving signature is called with)."""
    from ..runtime import _tf_name

    return [_tf_name(s.name, i) for i, s in enumerate(signature.inputs)]


def forward_function(model: Any, signature: Signature, task: Task | None = None) -> Callable[..., dict[str, Any]]:
    """Positional tensors in input order -> ``{output name: tensor}``; a classification adds ``class_id``."""
    import tensorflow as tf

    names = signature.input_names

    def forward(*tensors: Any) -> dict[str, Any]:
        outputs = signature.name_outputs(model(signature.call_structure(dict(zip(names, tensors))), training=False))
        if task is not None and task.is_classification:
            probs = outputs[str(task.output)]
            outputs["class_id"] = class_ids(tf, probs, task)
        return outputs

    return forward


def endpoint(fn: Callable[..., Any], signature: Signature) -> Any:
    """``fn`` as a ``tf.function`` over the signature's specs, without autograph (nothing to convert; ~0.5 s saved)."""
    import tensorflow as tf

    return tf.function(fn, input_signature=input_specs(signature), autograph=False)


def class_ids(tf: Any, probs: Any, task: Task) -> Any:
    if task.binary:
        return tf.cast(tf.reshape(probs, [-1]) >= 0.5, tf.int64)
    return tf.argmax(probs, axis=-1, output_type=tf.int64)
