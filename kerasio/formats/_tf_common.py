"""Shared by the formats exported through a TensorFlow graph (savedmodel, onnx, litert)."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from kerasio.backends.tensorflow import graph_forward, tf_input_specs
from kerasio.formats._keras_common import recording_layers
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


def layer_ops(model: Any, iospec: IOSpec) -> dict[str, str]:
    """Each top-level layer's output op in a TensorFlow trace of ``model``'s forward pass, keyed as
    :func:`~kerasio.formats._keras_common.layer_outputs` keys them.

    The trace is the one the graph formats were converted from (:func:`forward_function` under :func:`endpoint`),
    so its scopes get the names TensorFlow gave them there: ``functional_1/dense_1_2/Relu`` for a layer ``dense_1``.
    """
    with recording_layers(model) as records:
        endpoint(forward_function(model, iospec), iospec).get_concrete_function()
    ops = {}
    for key, _, tensor in records:
        name = getattr(tensor, "name", "") or ""
        ops[key] = name[:-2] if name.endswith(":0") else name
    return ops


def class_ids(tf: Any, probs: Any, task: Task) -> Any:
    if task.binary:
        return tf.cast(tf.reshape(probs, [-1]) >= 0.5, tf.int64)
    return tf.argmax(probs, axis=-1, output_type=tf.int64)


def write_saved_model(model: Any, dest: Path, endpoints: Mapping[str, Any]) -> None:
    """A Keras ``ExportArchive`` of ``endpoints`` (name -> ``tf.function``), written to ``dest``.

    The archive saves the variables the endpoints use. The model itself is tracked (``archive.track(model)``, as
    ``model.export`` does) only when an endpoint also uses a resource that is not a variable (a lookup table), or
    under another backend than TensorFlow: tracking makes TensorFlow walk every layer and trace the model's
    ``_default_save_signature`` once more, about half of ``write_out`` (MobileNetV2: 10.7 s against 5.3 s).
    """
    import keras

    def write(track: bool) -> None:
        archive = keras.export.ExportArchive()
        if track:
            archive.track(model)
        for name, fn in endpoints.items():
            archive.add_endpoint(name, fn)
        archive.write_out(str(dest), verbose=False)

    if keras.backend.backend() != "tensorflow":
        write(track=True)
        return
    try:
        write(track=False)
    except AssertionError as exc:  # TensorFlow's words for a captured resource that nothing tracks
        if "untracked" not in str(exc):
            raise
        shutil.rmtree(dest, ignore_errors=True)
        write(track=True)
