"""Stage 3: the classifier and its deterministic training loop.

Training is made resumable bit-for-bit: the batch order and the dropout masks of
epoch ``e`` depend only on ``(seed, e)``, never on how many random numbers were
drawn before. So ``N`` epochs, save, load, ``1`` more epoch gives exactly the
weights of ``N + 1`` uninterrupted epochs (``verify --resume`` checks this).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from kerasio.errors import InputError
from kerasio.recipe.distribute import Distribution, resolve_strategy

__all__ = ["build_classifier", "fit", "set_determinism", "TrainConfig"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a pipeline run; stored in the manifest for ``--resume``."""

    epochs: int = 5
    batch_size: int = 32
    hidden: tuple[int, ...] = (32, 16)
    dropout: float = 0.1
    learning_rate: float = 0.01
    seed: int = 0
    test_size: int | float = 0.2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", ()))
        return cls(**d)

    def build(self, n_features: int, n_classes: int, x_adapt: Any = None, *, mean: Any = None,
              variance: Any = None):
        """Seed everything and build the classifier this config describes.

        The pipeline and ``verify --resume`` both build through here, so a
        replayed run is the same model by construction.
        """
        set_determinism(self.seed)
        return build_classifier(n_features, n_classes, x_adapt=x_adapt, hidden=self.hidden, dropout=self.dropout,
                                learning_rate=self.learning_rate, seed=self.seed, mean=mean, variance=variance)


def set_determinism(seed: int) -> None:
    """Seed Python, numpy and the backend, and ask TensorFlow for deterministic ops."""
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()


def build_classifier(
    n_features: int,
    n_classes: int,
    *,
    x_adapt: np.ndarray | None = None,
    hidden: Sequence[int] = (32, 16),
    dropout: float = 0.1,
    learning_rate: float = 0.01,
    seed: int = 0,
    feature_names: Sequence[str] | None = None,
    mean: Any = None,
    variance: Any = None,
):
    """Return a compiled ``keras.Sequential`` classifier that takes raw features.

    The first layer is a ``Normalization`` adapted on ``x_adapt`` (the training
    features), so every exported artifact accepts raw, unscaled rows.

    Args:
        n_features: width of the ``features`` input.
        n_classes: size of the softmax output.
        x_adapt: training features for the normalisation statistics.
        mean, variance: the statistics themselves, per feature, instead of ``x_adapt``.
        hidden: units of each hidden ``Dense`` layer (ReLU).
        dropout: dropout rate after each hidden layer (0 disables it).
        learning_rate: Adam's learning rate.
        seed: seeds the initialisers and dropout.

    Example:
        >>> model = build_classifier(10, 3, x_adapt=np.ones((4, 10), "float32"))
        >>> model.output_shape
        (None, 3)
    """
    import keras
    from keras import layers

    if mean is not None:  # statistics gathered on a streamed pass (load_dataset(..., streaming=True))
        norm = layers.Normalization(name="normalize", mean=np.asarray(mean, "float32"),
                                    variance=np.asarray(variance, "float32"))
    else:
        norm = layers.Normalization(name="normalize")
    if x_adapt is not None and mean is None:
        norm.adapt(np.asarray(x_adapt, dtype="float32"))
    stack = [keras.Input((n_features,), name="features"), norm]
    for i, units in enumerate(hidden):
        stack.append(layers.Dense(
            units, activation="relu", name=f"hidden_{i + 1}",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i),
        ))
        if dropout:
            stack.append(layers.Dropout(dropout, seed=seed + 100 + i, name=f"dropout_{i + 1}"))
    stack.append(layers.Dense(
        n_classes, activation="softmax", name="probabilities",
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 99),
    ))
    model = keras.Sequential(stack, name="kerasio_classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def fit(
    model: Any,
    x: Any,
    y: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int = 32,
    seed: int = 0,
    initial_epoch: int = 0,
    validation_data: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: Sequence[Any] = (),
    verbose: int = 0,
    strategy: Any = None,
):
    """``model.fit`` with an epoch-indexed batch order and dropout seed, on one device or under a strategy.

    Args:
        model: a compiled Keras model, or a function of no arguments that builds
            and compiles one. Under a ``strategy`` the model must be built in its
            scope: pass the function (it is called in the scope) or a model you
            built under that very strategy object.
        x, y: numpy arrays (batched here in an order fixed by ``(seed, epoch)``),
            or ``x`` a ``tf.data.Dataset`` / ``PyDataset`` of ``(x, y)`` batches
            and ``y`` ``None`` (streamed data, see :func:`~kerasio.load_dataset`).
        strategy: ``None``/``"default"``, ``"mirrored"``, ``"multiworker"``,
            ``"dataparallel"``, a ``tf.distribute.Strategy``, a
            ``keras.distribution.Distribution`` or a resolved
            :class:`~kerasio.recipe.distribute.Distribution`. ``batch_size`` is
            the global batch.

    Returns:
        The Keras ``History``; ``history.model`` is the trained model.

    Raises:
        InputError: a model built outside the strategy's scope, a batch that does
            not split evenly over the replicas, or a strategy this backend or machine cannot run.
    """

    dist = strategy if isinstance(strategy, Distribution) else resolve_strategy(strategy)
    with dist.scope():
        if callable(model) and not hasattr(model, "fit"):
            model = model()
        _check_built_under(model, dist)
        if y is None:  # already batched: a tf.data.Dataset or a PyDataset
            data, extra = x, []
        else:
            dist.check_batch(batch_size)
            data = _EpochBatches(x, y, batch_size=batch_size, seed=seed, epoch=initial_epoch,
                                 multiple=dist.batch_multiple)
            extra = [data.callback()]
        validation_data = _evenly(validation_data, dist.batch_multiple)
        return model.fit(
            data,
            epochs=epochs,
            initial_epoch=initial_epoch,
            validation_data=validation_data,
            callbacks=[_ReseedDropout(seed), *extra, *callbacks],
            verbose=verbose,
            shuffle=False,
        )


def _evenly(data: Any, multiple: int) -> Any:
    """In-memory validation data cut to a multiple of ``multiple`` rows (JAX shards every batch evenly)."""
    if multiple <= 1 or not isinstance(data, tuple):
        return data
    keep = len(data[1]) - len(data[1]) % multiple
    return tuple(part[:keep] for part in data)


def _check_built_under(model: Any, dist: Any) -> None:
    """A TensorFlow model remembers the strategy it was built under; fitting it under another one cannot work."""
    built_under = getattr(model, "_distribute_strategy", None)
    if dist.name == "default" or not hasattr(dist.engine, "extended"):
        return
    if built_under is not dist.engine:
        raise InputError(f"the model {getattr(model, 'name', '?')!r} was built outside the {dist.name} strategy's "
                         "scope, so its variables live on one device. Build and compile it under that strategy: "
                         "pass fit() a function that builds the model, or build it in `with strategy.scope():`. "
                         f"Received: strategy={dist.name}")


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch])


def steps_per_epoch(rows: int, batch_size: int, multiple: int = 1) -> int:
    """Batches per epoch of :func:`fit` on ``rows`` in-memory rows (each epoch leaves out ``rows % multiple``)."""
    return math.ceil((rows - rows % multiple) / batch_size)


def _EpochBatches(x, y, *, batch_size: int, seed: int, epoch: int, multiple: int = 1):
    """A ``PyDataset`` whose order in epoch ``e`` is a function of ``(seed, e)`` only.

    With ``multiple`` > 1, each epoch leaves out its last ``len(x) % multiple``
    rows (different ones each epoch), so that every batch splits evenly.
    """
    rows = len(x) - len(x) % multiple
    import keras

    class EpochBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = epoch
            self._order = _epoch_rng(seed, self.epoch).permutation(len(x))[:rows]

        def __len__(self):
            return steps_per_epoch(len(x), batch_size, multiple)

        def __getitem__(self, i):
            idx = self._order[i * batch_size:(i + 1) * batch_size]
            return x[idx], y[idx]

        def set_epoch(self, e):
            self.epoch = e
            self._order = _epoch_rng(seed, e).permutation(len(x))[:rows]

        def callback(self):
            owner = self

            class _SetEpoch(keras.callbacks.Callback):
                def on_epoch_begin(self, e, logs=None):
                    owner.set_epoch(e)

            return _SetEpoch()

    return EpochBatches()


def _ReseedDropout(seed: int):
    import keras

    class ReseedDropout(keras.callbacks.Callback):
        """Sets every seed generator's state from ``(seed, epoch)`` at each epoch start."""

        def on_epoch_begin(self, epoch, logs=None):
            for i, layer in enumerate(self.model.layers):
                gen = getattr(layer, "seed_generator", None)
                if gen is not None:
                    gen.state.assign(np.array([seed * 1009 + i, epoch * 7919], dtype=gen.state.dtype))

    return ReseedDropout()
