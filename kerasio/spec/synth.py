"""Reference inputs made from a model's signature, for a user who has a model file and no data at hand.

``export(model, out, reference_inputs=None)`` (CLI: ``kerasio export MODEL`` without ``--inputs``) makes seeded
inputs from the I/O spec, and from what the layers that first consume each input imply:

* floats: standard normal, or uniform over ``value_ranges[name]``; after ``Normalization``, normal with its adapted
  mean and variance; after ``Rescaling`` (through a ``Resizing``), the input range that maps to [0, 1] (or to
  [-1, 1] for a negative offset): [0, 255] for ``1/255``;
* integers feeding an ``Embedding`` (any layer with ``input_dim``, keras_hub's ``vocabulary_size``) or a
  ``CategoryEncoding``: within its size; ``IntegerLookup``: values from its vocabulary plus one out of it;
* strings feeding ``TextVectorization``: sentences of words drawn from its vocabulary, plus one out-of-vocabulary
  token; ``StringLookup``: tokens from its vocabulary, plus one out of it;
* booleans and masks: both values, as padding (a prefix of each row kept, one row whole); an ``Embedding`` with
  ``mask_zero`` gets its padding ids (0) where the rows end, and inputs of the same sequence length share it;
* a dynamic axis after the batch: ``length`` (16; the shape sweep then checks 8 and 24), or a ``Resizing``'s size.

The manifest records that the reference is synthetic, with the seed and what each input was made from. Plain
numpy; the model's layers are read by their attributes (``input_dim``, ``get_vocabulary()``, ``mean``), never
imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from kerasio.errors import InputError
from kerasio.spec.iospec import IOSpec, TensorSpec

__all__ = ["SyntheticInputs", "Hint", "hints_from_model", "synthesize", "OOV_TOKEN", "dominant_class"]

OOV_TOKEN = "kerasio_oov_token"  # a word no vocabulary holds: exercises the out-of-vocabulary path


@dataclass(frozen=True)
class SyntheticInputs:
    """How export makes reference inputs from the signature: pass as ``reference_inputs`` (or ``None``).

    Attributes:
        rows: how many rows (the batch of the reference).
        seed: the generator's seed (recorded in the manifest).
        value_ranges: ``{input name: (low, high)}``: a float input drawn uniformly there instead.
        length: the size of each dynamic axis after the batch (a sequence length).
    """

    rows: int = 64
    seed: int = 0
    value_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    length: int = 16

    def __post_init__(self) -> None:
        if not (isinstance(self.rows, int) and self.rows >= 1 and isinstance(self.length, int) and self.length >= 2):
            raise InputError(f"synthetic inputs need rows >= 1 and length >= 2; received: rows={self.rows!r}, "
                             f"length={self.length!r}")
        for name, pair in self.value_ranges.items():
            try:
                low, high = (float(v) for v in pair)
            except (TypeError, ValueError):
                low, high = 1.0, 0.0
            if not low < high:
                raise InputError(f"a value range is two numbers, low < high (--value-range {name}=0,255); "
                                 f"received: {name}={pair!r}")


@dataclass
class Hint:
    """What the layer consuming an input implies about its values; ``source`` says which layer, for the manifest."""

    kind: str  # normal, uniform, integers, vocabulary, sentences, mask, bool
    source: str = ""
    low: float = 0.0
    high: float = 1.0
    mean: Any = None
    std: Any = None
    vocabulary: list[Any] = field(default_factory=list)
    padded: bool = False  # integer ids with 0 as padding where a row ends (Embedding mask_zero)
    size: tuple[int, ...] = ()  # the spatial size a Resizing implies for dynamic image axes


def hints_from_model(model: Any, iospec: IOSpec) -> dict[str, Hint]:
    """For each input of a functional model, what its first consuming layers imply (see the module's doc).

    A subclassed model's layers cannot be traced to its inputs: its inputs get the dtype's defaults.
    """
    inputs = list(getattr(model, "inputs", None) or [])
    names = iospec.input_names
    if len(inputs) != len(names):
        return {}
    if iospec.input_structure == "dict" and all(getattr(t, "name", None) in names for t in inputs):
        pairs = [(t.name, t) for t in inputs]  # a dict's tensors may come in another order than the spec's names
    else:
        pairs = list(zip(names, inputs))
    hints = {}
    for name, tensor in pairs:
        hint = _hint_for(model, tensor, depth=0)
        if hint is not None:
            hints[name] = hint
    return hints


def _consumers(model: Any, tensor: Any) -> list[tuple[Any, Any, int]]:
    """The layers of ``model`` that take ``tensor``: (layer, node, its position among the node's inputs)."""
    found = []
    for layer in getattr(model, "layers", []):
        for node in getattr(layer, "_inbound_nodes", []):
            for i, given in enumerate(getattr(node, "input_tensors", []) or []):
                if given is tensor:
                    found.append((layer, node, i))
    return found


def _hint_for(model: Any, tensor: Any, depth: int) -> Hint | None:
    if depth > 4:
        return None
    resize: tuple[int, ...] = ()
    for layer, node, position in _consumers(model, tensor):
        kind = type(layer).__name__
        where = f"{kind} {layer.name!r}"
        if kind == "Resizing":  # an image of any size: the range comes from what follows
            resize = (int(layer.height), int(layer.width))
            outs = list(getattr(node, "output_tensors", []) or [])
            after = _hint_for(model, outs[0], depth + 1) if outs else None
            hint = after or Hint("uniform", f"{where}, an image", 0.0, 255.0)
            hint.size = resize
            return hint
        if kind == "Rescaling":
            scale, offset = float(np.asarray(layer.scale).ravel()[0]), float(np.asarray(layer.offset).ravel()[0])
            low, high = (-1.0, 1.0) if offset < 0 else (0.0, 1.0)
            if scale:
                a, b = (low - offset) / scale, (high - offset) / scale
                return Hint("uniform", f"{where}, scale {scale:g}, offset {offset:g}", min(a, b), max(a, b))
        if kind == "Normalization":
            mean, var = np.asarray(layer.mean, np.float64), np.asarray(layer.variance, np.float64)
            return Hint("normal", where, mean=mean,
                        std=np.sqrt(np.maximum(var, 0.0)))
        if kind == "Discretization":
            bins = np.asarray(getattr(layer, "bin_boundaries", None) or [0.0], np.float64)
            return Hint("uniform", f"{where}, its bin boundaries", float(bins.min()) - 1, float(bins.max()) + 1)
        if kind in ("TextVectorization", "StringLookup", "IntegerLookup") and hasattr(layer, "get_vocabulary"):
            vocabulary = [v for v in layer.get_vocabulary() if v not in ("", "[UNK]", -1)]
            if vocabulary:
                hint_kind = "sentences" if kind == "TextVectorization" else "vocabulary"
                return Hint(hint_kind, f"{where}, {len(vocabulary)} words", vocabulary=vocabulary)
        if kind == "CategoryEncoding" and getattr(layer, "num_tokens", None):
            return Hint("integers", f"{where}, num_tokens {layer.num_tokens}", 0, int(layer.num_tokens))
        size = getattr(layer, "input_dim", None) or getattr(layer, "vocabulary_size", None)
        if isinstance(size, (int, np.integer)) and size > 0:
            padded = bool(getattr(layer, "mask_zero", False))
            return Hint("integers", f"{where}, input_dim {int(size)}" + (", mask_zero" if padded else ""),
                        1 if padded else 0, int(size), padded=padded)
        inner = list(getattr(layer, "inputs", None) or [])
        if inner and position < len(inner) and hasattr(layer, "layers"):  # a nested functional model (keras_hub)
            nested = _hint_for(layer, inner[position], depth + 1)
            if nested is not None:
                return nested
    return None


def synthesize(iospec: IOSpec, hints: Mapping[str, Hint], settings: SyntheticInputs
               ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Seeded inputs for every input of ``iospec``, and what each was made from (for the manifest)."""
    rng = np.random.default_rng(settings.seed)
    lengths = rng.integers(1, settings.length + 1, settings.rows)  # the kept prefix of each row, shared
    lengths[0] = settings.length  # one row whole
    arrays, said = {}, {}
    for spec in iospec.inputs:
        hint = hints.get(spec.name)
        if spec.name in settings.value_ranges:
            low, high = (float(v) for v in settings.value_ranges[spec.name])
            hint = Hint("uniform", "--value-range", low, high, size=hint.size if hint else ())
        shape = _shape(spec, settings, hint)
        arrays[spec.name], said[spec.name] = _values(spec, shape, hint, rng, lengths)
    return arrays, said


def _shape(spec: TensorSpec, settings: SyntheticInputs, hint: Hint | None) -> tuple[int, ...]:
    dims = list(spec.shape[1:])
    if hint is not None and hint.size and len(dims) >= 3 and dims[0] is None and dims[1] is None:
        dims[0], dims[1] = hint.size  # an image of any size: the size its Resizing makes
    return (settings.rows, *(settings.length if d is None else int(d) for d in dims))


def _values(spec: TensorSpec, shape: tuple[int, ...], hint: Hint | None, rng: np.random.Generator,
            lengths: np.ndarray) -> tuple[np.ndarray, str]:
    """One input's array and a line saying what it was made from."""
    where = f" ({hint.source})" if hint is not None and hint.source else ""
    kept = _kept(shape, lengths)
    if spec.dtype == "string":
        if hint is not None and hint.vocabulary:
            words = np.asarray([str(w) for w in hint.vocabulary])
            if hint.kind == "sentences":
                flat = [" ".join(rng.choice(words, rng.integers(1, 7))) for _ in range(int(np.prod(shape)))]
                flat[-1] += f" {OOV_TOKEN}"
                out = np.asarray(flat, dtype=str).reshape(shape)
                return out, f"sentences of its vocabulary's words and one out-of-vocabulary token{where}"
            out = rng.choice(words, shape).astype(object)  # a fixed-width str array would cut the token short
            out.flat[-1] = OOV_TOKEN
            return out.astype(str), f"tokens of its vocabulary and one out of it{where}"
        out = np.asarray([f"word{i}" for i in rng.integers(0, 100, int(np.prod(shape)))]).reshape(shape)
        return out, "words word0..word99 (no vocabulary found)"
    if spec.dtype == "bool":
        if kept is not None:
            return kept, "a padding mask: a prefix of each row True, one row all True"
        out = rng.random(shape) < 0.5
        out.flat[:2] = [True, False]
        return out, "True and False"
    if spec.dtype.startswith(("int", "uint")):
        info = np.iinfo(np.dtype(spec.dtype))
        if hint is not None and hint.kind == "vocabulary":
            values = np.asarray(hint.vocabulary).astype(spec.dtype)
            out = rng.choice(values, shape)
            out.flat[-1] = max(int(values.max()) + 1, info.min) if values.max() < info.max else info.min
            return out, f"values of its vocabulary and one out of it{where}"
        if hint is not None and hint.kind == "integers":
            out = rng.integers(int(hint.low), int(hint.high), shape, dtype=np.int64)
            if hint.padded and kept is not None:
                out = np.where(kept, out, 0)
                return out.astype(spec.dtype), f"ids in [1, {int(hint.high)}), 0 as padding where rows end{where}"
            return out.astype(spec.dtype), f"integers in [{int(hint.low)}, {int(hint.high)}){where}"
        if hint is not None and hint.kind == "uniform":
            low, high = max(int(np.ceil(hint.low)), info.min), min(int(np.floor(hint.high)), info.max)
            return rng.integers(low, high + 1, shape).astype(spec.dtype), f"integers in [{low}, {high}]{where}"
        low = 0
        high = min(10, int(info.max) + 1)
        if kept is not None and spec.name.lower().endswith("mask"):
            return kept.astype(spec.dtype), "a padding mask: a prefix of each row 1, one row all 1"
        return rng.integers(low, high, shape).astype(spec.dtype), f"integers in [{low}, {high}) (no layer implies a range)"
    dtype = np.dtype(spec.dtype if spec.dtype.startswith("float") else "float32")
    if hint is not None and hint.kind == "uniform":
        out = rng.uniform(hint.low, hint.high, shape)
        return out.astype(dtype), f"uniform in [{hint.low:g}, {hint.high:g}]{where}"
    if hint is not None and hint.kind == "normal":
        try:
            out = rng.normal(0.0, 1.0, shape) * np.broadcast_to(hint.std, shape) + np.broadcast_to(hint.mean, shape)
            return out.astype(dtype), f"normal with the layer's mean and variance{where}"
        except ValueError:  # statistics of another shape than the input's: the plain default
            pass
    return rng.normal(0.0, 1.0, shape).astype(dtype), "standard normal"


def _kept(shape: tuple[int, ...], lengths: np.ndarray) -> np.ndarray | None:
    """For a ``[rows, length, ...]`` input, which positions each row keeps (the shared prefix lengths)."""
    if len(shape) < 2:
        return None
    keep = np.arange(shape[1])[None, :] < np.minimum(lengths, shape[1])[:, None]
    return keep.reshape(keep.shape + (1,) * (len(shape) - 2)) & np.ones(shape, bool) if len(shape) > 2 else keep


def dominant_class(probabilities: np.ndarray, class_names: list[str] | None = None) -> tuple[str, float]:
    """The class most rows land in, and the share of rows it takes (from a classifier's output)."""
    array = np.asarray(probabilities)
    labels = (array.reshape(len(array), -1)[:, 0] >= 0.5).astype(int) if array.ndim == 1 or array.shape[-1] == 1 \
        else array.argmax(-1).reshape(-1)
    counts = np.bincount(labels)
    top = int(counts.argmax())
    name = class_names[top] if class_names and top < len(class_names) else str(top)
    return name, float(counts[top] / max(len(labels), 1))
