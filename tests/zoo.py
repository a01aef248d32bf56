"""A zoo of the model kinds research code really uses, as Keras's own saving tests do.

Each builder returns ``(model, reference_inputs)``. The models are small and
untrained (random weights reproduce just as well as trained ones), except the
text model, whose vocabulary is adapted. The subclassed model lives in this
module, which is importable, so a fresh verifying process can import it too.
"""
from __future__ import annotations

import keras
import numpy as np
from keras import layers

ROWS = 16


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def mlp():
    """Functional MLP, no Normalization, softmax head."""
    inp = keras.Input((8,), name="x")
    h = layers.Dense(16, activation="relu")(inp)
    out = layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="mlp")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, _rng().normal(size=(ROWS, 8)).astype("float32")


def cnn():
    """A small CNN on 28x28x1 images."""
    inp = keras.Input((28, 28, 1), name="image")
    h = layers.Conv2D(4, 3, activation="relu")(inp)
    h = layers.MaxPooling2D()(h)
    h = layers.Flatten()(h)
    out = layers.Dense(10, activation="softmax", name="digit")(h)
    model = keras.Model(inp, out, name="cnn")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model, _rng(1).random((ROWS, 28, 28, 1)).astype("float32")


TEXTS = ["a great movie", "terrible plot and acting", "great acting", "not good", "what a film",
         "boring", "loved it", "the worst", "fine", "great great great", "bad", "superb cast",
         "awful", "good fun", "meh", "a classic"]


def text():
    """TextVectorization on a string input, binary sigmoid head."""
    vectorize = layers.TextVectorization(max_tokens=40, output_sequence_length=6, name="vectorize")
    vectorize.adapt(TEXTS)
    inp = keras.Input((1,), dtype="string", name="review")
    h = vectorize(inp)
    h = layers.Embedding(40, 4)(h)
    h = layers.GlobalAveragePooling1D()(h)
    out = layers.Dense(1, activation="sigmoid", name="positive")(h)
    model = keras.Model(inp, out, name="text")
    model.compile("adam", "binary_crossentropy")
    return model, np.array(TEXTS, dtype=str)[:, None]


def multi_input():
    """A dict of two inputs: numeric features and an integer id through an Embedding."""
    numeric = keras.Input((4,), name="numeric")
    item = keras.Input((1,), dtype="int32", name="item_id")
    e = layers.Flatten()(layers.Embedding(50, 3)(item))
    h = layers.Concatenate()([numeric, e])
    out = layers.Dense(1, name="score")(layers.Dense(8, activation="relu")(h))
    model = keras.Model({"numeric": numeric, "item_id": item}, out, name="multi_input")
    model.compile("adam", "mse")
    rng = _rng(2)
    return model, {"numeric": rng.normal(size=(ROWS, 4)).astype("float32"),
                   "item_id": rng.integers(0, 50, size=(ROWS, 1)).astype("int32")}


def two_heads():
    """One input, two named output heads: a class and a value."""
    inp = keras.Input((6,), name="features")
    h = layers.Dense(12, activation="relu")(inp)
    model = keras.Model(inp, {"kind": layers.Dense(4, activation="softmax", name="kind")(h),
                              "amount": layers.Dense(1, name="amount")(h)}, name="two_heads")
    model.compile("adam", {"kind": "sparse_categorical_crossentropy", "amount": "mse"})
    return model, _rng(3).normal(size=(ROWS, 6)).astype("float32")


def regression():
    """One linear output around 2.5e5 (house prices), compiled with the 'mse' metric."""
    inp = keras.Input((5,), name="features")
    h = layers.Dense(16, activation="relu")(inp)
    out = layers.Dense(1, name="price", bias_initializer=keras.initializers.Constant(2.5e5))(h)
    model = keras.Model(inp, out, name="regression")
    model.compile("adam", "mse", metrics=["mse"])
    return model, _rng(4).normal(size=(ROWS, 5)).astype("float32") * 3


@keras.saving.register_keras_serializable(package="kerasio_zoo")
class Scale(layers.Layer):
    """A custom layer with a trainable weight."""

    def build(self, input_shape):
        self.gain = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gain")

    def call(self, x):
        return x * self.gain


@keras.saving.register_keras_serializable(package="kerasio_zoo")
class Subclassed(keras.Model):
    """A subclassed model: custom layer, dense head, no keras.Input anywhere."""

    def __init__(self, units=8, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.units, self.classes = units, classes
        self.scale = Scale()
        self.hidden = layers.Dense(units, activation="relu")
        self.head = layers.Dense(classes, activation="softmax")

    def call(self, x):
        return self.head(self.hidden(self.scale(x)))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "classes": self.classes}


def subclassed():
    model = Subclassed(name="subclassed")
    x = _rng(5).normal(size=(ROWS, 7)).astype("float32")
    model(x[:1])
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, x


def lstm():
    """An LSTM over (batch, time, features) with a variable time length."""
    inp = keras.Input((None, 8), name="sequence")
    h = layers.LSTM(12)(inp)
    out = layers.Dense(3, activation="softmax", name="probs")(h)
    model = keras.Model(inp, out, name="lstm")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, _rng(6).normal(size=(ROWS, 5, 8)).astype("float32")


def mixed_float16():
    """Computes in float16 (the mixed_float16 policy), softmax in float32 as Keras advises."""
    inp = keras.Input((10,), name="features")
    h = layers.Dense(32, activation="relu", dtype="mixed_float16")(inp)
    h = layers.Dense(3, dtype="mixed_float16")(h)
    out = layers.Activation("softmax", dtype="float32", name="probs")(h)
    model = keras.Model(inp, out, name="mixed_float16")
    model.compile("adam", "sparse_categorical_crossentropy")
    return model, _rng(7).normal(size=(ROWS, 10)).astype("float32")


def batchnorm_dropout():
    """BatchNormalization and Dropout: training-only behaviour must not leak into inference."""
    model = keras.Sequential([
        keras.Input((12,), name="features"),
        layers.Dense(16),
        layers.BatchNormalization(),
        layers.Activation("relu"),
        layers.Dropout(0.5),
        layers.Dense(2, activation="softmax", name="probs"),
    ], name="batchnorm_dropout")
    model.compile("adam", "sparse_categorical_crossentropy")
    x = _rng(8).normal(size=(64, 12)).astype("float32")
    model.fit(x, np.arange(64) % 2, epochs=1, verbose=0)  # moves the BatchNorm statistics off their init
    return model, x[:ROWS]


def eager_outputs(model, x):
    """The original model's outputs, by name, from a plain eager call (not kerasio's compiled function)."""
    raw = model(x, training=False)
    if isinstance(raw, dict):
        return {k: np.asarray(v) for k, v in raw.items()}
    return {None: np.asarray(raw)}


ZOO = {f.__name__: f for f in (mlp, cnn, text, multi_input, two_heads, regression, subclassed, lstm,
                               mixed_float16, batchnorm_dropout)}


def assert_swept(manifest, report):
    """Every check ran the whole shape sweep: batches of 1, 2 and 7 rows, and each dynamic axis after the batch
    at other lengths (unless the model itself refused one, which the manifest then records)."""
    swept = [s["name"] for s in manifest.reference["sweep"] if "shapes" in s]
    assert {"batch 2", "batch 7"} <= set(swept), swept
    dynamic = any(None in spec.shape[1:] for spec in manifest.iospec.inputs)
    assert any(name.startswith("axis ") for name in swept) == dynamic or manifest.sweep_refused(), swept
    for check in report.checks:
        assert check.shapes[1:] == ["batch 1", *swept], (check.format, check.shapes)
