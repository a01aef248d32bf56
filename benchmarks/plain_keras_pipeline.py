"""The anchor: the same six stages written by hand with plain Keras/TensorFlow.

Same data, same model and 5 epochs; ``model.save``, ``model.export``, reload
both, predict and compare, as a careful user would write it without kerasio.
Usage: python benchmarks/plain_keras_pipeline.py OUT_DIR
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import tensorflow as tf  # noqa: E402

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/plain_keras"
os.makedirs(out, exist_ok=True)
csv = os.path.join(os.path.dirname(__file__), "..", "kerasio", "recipe", "datasets", "default.csv")
frame = pd.read_csv(csv)
y_names = frame.pop("species")
classes = sorted(y_names.unique())
x = frame.to_numpy("float32")
y = y_names.map({c: i for i, c in enumerate(classes)}).to_numpy()
rng = np.random.default_rng(0)
test = np.concatenate([rng.permutation(np.flatnonzero(y == c))[: round(0.2 * (y == c).sum())] for c in range(3)])
train = np.setdiff1d(np.arange(len(y)), test)

keras.utils.set_random_seed(0)
norm = keras.layers.Normalization()
norm.adapt(x[train])
model = keras.Sequential([
    keras.Input((10,), name="features"), norm,
    keras.layers.Dense(32, activation="relu"), keras.layers.Dropout(0.1),
    keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.1),
    keras.layers.Dense(3, activation="softmax"),
])
model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
model.fit(x[train], y[train], epochs=5, batch_size=32, validation_data=(x[test], y[test]), verbose=0)
reference = model.predict(x[test], verbose=0)

model.save(os.path.join(out, "model.keras"))
model.export(os.path.join(out, "serving", "1"), verbose=False)
reloaded = keras.models.load_model(os.path.join(out, "model.keras"))
served = tf.saved_model.load(os.path.join(out, "serving", "1"))
np.testing.assert_allclose(reloaded.predict(x[test], verbose=0), reference, atol=1e-6)
np.testing.assert_allclose(served.serve(x[test]).numpy(), reference, atol=1e-6)
print("predicted", classes[int(np.argmax(reloaded.predict(x[test][:1], verbose=0)))])
