"""Real architectures that nobody here wrote, at sizes CI can afford: the zoo of the real-architectures tests.

Each entry builds a model with Keras's or keras_hub's own code (``weights=None``: there is no network) and
seeded reference inputs. The keras.applications CNNs use the library's own builders (``ResNet``, ``DenseNet``,
``ConvNeXt``, ``NASNet``) with fewer blocks and narrower layers than the published sizes, so each family's own
layers (depthwise and residual blocks, dense concatenation, squeeze-excite with hard-swish, LayerScale, NAS
cells) are all there; ``benchmarks/bench_real.py`` runs the published sizes. ``build(name)`` returns
``(model, reference_inputs)``.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

SEED = 7
# The keras.applications families: depthwise, residual, dense, squeeze-excite/hard-swish, LayerScale, NAS.
APPLICATIONS = ("mobilenet_v2", "resnet", "densenet", "mobilenet_v3", "convnext", "nasnet")
_BUILDERS: dict[str, Callable[[bool], tuple[Any, Any]]] = {}


def zoo_model(name: str) -> Callable[[Callable[[bool], tuple[Any, Any]]], Callable[[bool], tuple[Any, Any]]]:
    def add(fn: Callable[[bool], tuple[Any, Any]]) -> Callable[[bool], tuple[Any, Any]]:
        _BUILDERS[name] = fn
        return fn
    return add


# The README's test command (and so CI) runs every model: 374 s of wall time on their own on the 2-core development
# machine (NASNet 110 s, MobileNetV2 65 s, MobileNetV3 62 s of it, mostly in the converters and the CLI's sandboxed
# predict); benchmarks/bench_real.py times every model, at these sizes or the published ones (--full).
def names() -> list[str]:
    return list(_BUILDERS)


def build(name: str, full: bool = False) -> tuple[Any, Any]:
    """The model and its reference inputs; ``full`` the published size (benchmarks), else a small one."""
    import keras

    keras.utils.set_random_seed(SEED)
    model, x = _BUILDERS[name](full)
    if name in APPLICATIONS:
        trained_like(model, x)
    return model, x


def trained_like(model: Any, x: Any) -> Any:
    """Give biases seeded values and batch norms the statistics of real activations, as training would.

    At initialisation (zero biases, unit variances) several of these networks answer every image alike
    (MobileNet's activations saturate at ReLU6's 6 and its softmax is 1/10 everywhere), and a reference that
    cannot tell inputs apart proves nothing. One forward pass in training mode with the batch norms' momentum at
    0 sets each one's moving statistics to those of its own inputs on ``x``.
    """
    import keras

    rng = np.random.default_rng(SEED)
    for weight in model.weights:
        name = weight.path.rsplit("/", 1)[-1]
        if name == "gamma":
            weight.assign(rng.uniform(0.5, 1.5, tuple(weight.shape)).astype(weight.dtype))
        elif name in ("beta", "bias"):
            weight.assign(rng.normal(0.0, 0.2, tuple(weight.shape)).astype(weight.dtype))
    norms = [layer for layer in model._flatten_layers(include_self=False, recursive=True)
             if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    model(x, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
        # A channel that barely varied over the few calibration images would be scaled up by 1/sqrt(eps) and make
        # the network amplify float32 rounding a thousandfold; training never leaves such statistics.
        layer.moving_variance.assign(layer.moving_variance.numpy() + 0.5)
    return model


def _images(side: int, rows: int = 4, channels: int = 3) -> np.ndarray:
    """Images that differ as photographs do (each its own colour, contrast and gradient), not only in noise:
    after global pooling, pure noise images all look alike to a network."""
    rng = np.random.default_rng(SEED)
    ramp = np.linspace(-1.0, 1.0, side, dtype="float32")
    colour = rng.uniform(40, 215, (rows, 1, 1, channels))
    slope = rng.uniform(-60, 60, (rows, 1, 1, channels)) * ramp[None, :, None, None]
    noise = rng.normal(0, 1, (rows, side, side, channels)) * rng.uniform(5, 40, (rows, 1, 1, 1))
    return np.clip(colour + slope + noise, 0, 255).astype("float32")


@zoo_model("mobilenet_v2")  # depthwise-separable convolutions, inverted residuals, ReLU6
def _mobilenet_v2(full: bool) -> tuple[Any, Any]:
    import keras

    side = 96 if full else 32
    model = keras.applications.MobileNetV2(input_shape=(side, side, 3), alpha=1.0 if full else 0.35,
                                           weights=None, classes=10 if not full else 1000)
    return model, _images(side) / 127.5 - 1.0


@zoo_model("resnet")  # residual bottleneck stacks with batch norm
def _resnet(full: bool) -> tuple[Any, Any]:
    import keras
    from keras.src.applications import resnet

    side = 64 if full else 32
    if full:
        return keras.applications.ResNet50(input_shape=(side, side, 3), weights=None), _images(side)

    def stacks(x: Any) -> Any:
        x = resnet.stack_residual_blocks_v1(x, 8, 1, stride1=1, name="conv2")
        return resnet.stack_residual_blocks_v1(x, 16, 1, name="conv3")

    model = resnet.ResNet(stacks, preact=False, use_bias=True, weights=None, input_shape=(side, side, 3),
                          classes=10, name="resnet_small")
    return model, _images(side)


@zoo_model("densenet")  # dense blocks: every layer's output concatenated into the next
def _densenet(full: bool) -> tuple[Any, Any]:
    import keras
    from keras.src.applications import densenet

    side = 64 if full else 32
    if full:
        return keras.applications.DenseNet121(input_shape=(side, side, 3), weights=None), _images(side)
    model = densenet.DenseNet([1, 1, 1, 1], weights=None, input_shape=(side, side, 3), classes=10,
                              name="densenet_small")
    return model, _images(side)


@zoo_model("mobilenet_v3")  # squeeze-excite blocks and hard-swish (the non-minimalistic variant)
def _mobilenet_v3(full: bool) -> tuple[Any, Any]:
    import keras

    side = 96 if full else 32
    model = keras.applications.MobileNetV3Small(input_shape=(side, side, 3), alpha=1.0 if full else 0.75,
                                                minimalistic=False, weights=None, classes=1000 if full else 10,
                                                include_preprocessing=True)
    return model, _images(side)


@zoo_model("convnext")  # LayerScale, depthwise 7x7, LayerNormalization, GELU
def _convnext(full: bool) -> tuple[Any, Any]:
    import keras
    from keras.src.applications import convnext

    side = 64 if full else 32
    if full:
        return keras.applications.ConvNeXtTiny(input_shape=(side, side, 3), weights=None), _images(side)
    model = convnext.ConvNeXt(depths=[1, 1, 1, 1], projection_dims=[8, 16, 32, 64], weights=None,
                              input_shape=(side, side, 3), classes=10, name="convnext_small")
    return model, _images(side)


@zoo_model("nasnet")  # NASNet cells found by architecture search: separable convolutions, cropping, adds
def _nasnet(full: bool) -> tuple[Any, Any]:
    import keras
    from keras.src.applications import nasnet

    side = 64 if full else 32
    if full:
        return keras.applications.NASNetMobile(input_shape=(side, side, 3), weights=None), _images(side)
    model = nasnet.NASNet(input_shape=(side, side, 3), penultimate_filters=96, num_blocks=1, stem_block_filters=8,
                          weights=None, classes=10, name="nasnet_small")
    return model, _images(side) / 127.5 - 1.0


def _bert_sizes(full: bool) -> dict[str, int]:
    if full:  # BERT tiny (keras_hub's bert_tiny_en_uncased preset's architecture)
        return dict(vocabulary_size=30522, num_layers=2, num_heads=2, hidden_dim=128, intermediate_dim=512,
                    max_sequence_length=512)
    return dict(vocabulary_size=64, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
                max_sequence_length=16)


def _token_inputs(vocab: int, rows: int = 4, length: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    mask = np.ones((rows, length), dtype=bool)
    mask[1, length // 2:] = False  # a padded row
    return {"token_ids": np.where(mask, rng.integers(1, vocab, (rows, length)), 0).astype("int32"),
            "segment_ids": np.zeros((rows, length), dtype="int32"), "padding_mask": mask}


@zoo_model("bert_backbone")  # keras_hub: dict inputs (token_ids, segment_ids, padding_mask), dict outputs
def _bert_backbone(full: bool) -> tuple[Any, Any]:
    import keras_hub

    sizes = _bert_sizes(full)
    model = keras_hub.models.BertBackbone(**sizes, dropout=0.0)
    return model, _token_inputs(sizes["vocabulary_size"])


_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "model", "is", "saved", "and", "loaded", "again",
          "a", "file", "from", "colleague", "verify", "it", "##s", "outputs"]


@zoo_model("bert_classifier")  # keras_hub task model with its preprocessor (a WordPiece vocabulary of its own)
def _bert_classifier(full: bool) -> tuple[Any, Any]:
    import keras_hub

    sizes = _bert_sizes(full) | {"vocabulary_size": len(_VOCAB)}
    backbone = keras_hub.models.BertBackbone(**sizes, dropout=0.0)
    tokenizer = keras_hub.tokenizers.BertTokenizer(vocabulary=_VOCAB)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=12)
    model = keras_hub.models.BertTextClassifier(backbone, num_classes=3, preprocessor=preprocessor, dropout=0.0)
    texts = ["the model is saved", "and loaded again", "a file from a colleague", "verify its outputs"]
    return model, {k: np.asarray(v) for k, v in preprocessor(texts).items()}


@zoo_model("transformer")  # a transformer block: MultiHeadAttention, dot-product Attention, LayerNorm, residuals
def _transformer(full: bool) -> tuple[Any, Any]:
    import keras
    from keras import layers

    length, dim = (64, 128) if full else (12, 16)
    tokens = keras.Input((length, dim), name="tokens")
    x = layers.MultiHeadAttention(num_heads=2, key_dim=dim // 2, name="mha")(tokens, tokens)
    x = layers.LayerNormalization(name="ln1")(tokens + x)
    attended = layers.Attention(use_scale=True, name="attention")([x, x])
    x = layers.LayerNormalization(name="ln2")(x + attended)
    x = layers.Dense(dim * 2, activation="gelu")(x)
    x = layers.GlobalAveragePooling1D()(layers.Dense(dim)(x))
    model = keras.Model(tokens, layers.Dense(4, activation="softmax", name="probs")(x), name="transformer_block")
    return model, np.random.default_rng(SEED).normal(size=(4, length, dim)).astype("float32")


@zoo_model("masked_lstm")  # Embedding(mask_zero=True) + LSTM: the mask travels through the recurrent loop
def _masked_lstm(full: bool) -> tuple[Any, Any]:
    import keras
    from keras import layers

    vocab, length = (20000, 128) if full else (50, 10)
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = layers.Embedding(vocab, 32 if full else 8, mask_zero=True)(ids)
    x = layers.LSTM(64 if full else 8)(x)
    model = keras.Model(ids, layers.Dense(3, activation="softmax", name="probs")(x), name="masked_lstm")
    rng = np.random.default_rng(SEED)
    x_ref = rng.integers(1, vocab, (4, length)).astype("int32")
    x_ref[1, length // 2:] = 0  # padding, masked out
    return model, x_ref


def _dense_model(full: bool) -> tuple[Any, np.ndarray]:
    import keras
    from keras import layers

    width = 1024 if full else 64
    model = keras.Sequential([keras.Input((32,), name="features"), layers.Dense(width, activation="relu"),
                              layers.Dense(width, activation="relu"), layers.Dense(5, activation="softmax")],
                             name="dense_mlp")
    return model, np.random.default_rng(SEED).normal(size=(8, 32)).astype("float32")


def _quantized(mode: str) -> Callable[[bool], tuple[Any, Any]]:
    def make(full: bool) -> tuple[Any, Any]:
        model, x_ref = _dense_model(full)
        model.quantize(mode)
        return model, x_ref
    return make


for _mode in ("int8", "int4", "float8"):  # Keras's own model.quantize
    zoo_model(f"quantized_{_mode}")(_quantized(_mode))


@zoo_model("quantized_gptq")  # Keras's own GPTQ (4-bit weights calibrated on token data), on an embedding model
def _gptq(full: bool) -> tuple[Any, Any]:
    import keras
    from keras import layers

    vocab, length, dim = 64, 8, 32
    ids = keras.Input((length,), dtype="int32", name="token_ids")
    embed = layers.Embedding(vocab, dim, name="embed")
    block = keras.Sequential([keras.Input((length, dim)), layers.Dense(dim * 2, activation="relu"),
                              layers.Dense(dim)], name="block")
    x = layers.GlobalAveragePooling1D()(block(embed(ids)))
    model = keras.Model(ids, layers.Dense(3, activation="softmax", name="probs")(x), name="gptq_tokens")
    rng = np.random.default_rng(SEED)
    calibration = rng.integers(1, vocab, (32, length)).astype("int32")
    # The layer structure goes through the model's hook, not GPTQConfig(quantization_layer_structure=...): the
    # config holds the layers themselves, and every quantized layer serializes its config, so model.save()
    # recurses without end (Keras 3.15: RecursionError in serialize_keras_object).
    model.get_quantization_layer_structure = lambda mode: {"pre_block_layers": [embed], "sequential_blocks": [block]}
    config = keras.quantizers.GPTQConfig(dataset=calibration, tokenizer=_NoTokenizer(), weight_bits=4,
                                         num_samples=8, sequence_length=length, group_size=-1)
    model.quantize("gptq", config=config)
    return model, rng.integers(1, vocab, (4, length)).astype("int32")


class _NoTokenizer:
    """GPTQ asks for a tokenizer; the calibration data here is token ids already, which it never tokenizes."""

    def tokenize(self, text: Any) -> Any:
        raise TypeError("the calibration data is token ids")
