"""A format kerasio does not ship, written as a user would: one module, registered on import.

``npzdense`` stores a stack of Dense layers as numpy arrays and runs them with
numpy alone (its own runtime). The test that uses it touches no other file.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from kerasio.bundle.arrays import load_arrays, save_arrays
from kerasio.errors import ArtifactError
from kerasio.formats import ExportContext, Format, Runner, register
from kerasio.spec.iospec import IOSpec
from kerasio.spec.tolerances import Tolerance

ACTIVATIONS = {
    "linear": lambda z: z,
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "softmax": lambda z: (lambda e: e / e.sum(axis=-1, keepdims=True))(np.exp(z - z.max(axis=-1, keepdims=True))),
}


class NpzDenseFormat(Format):
    name = "npzdense"
    filename = "dense"  # a directory: weights.npz and activations.json
    runtime = "numpy"
    description = "a stack of Dense layers as numpy arrays, run by numpy (a test's plug-in format)"
    options = {"dtype": "the weights' dtype (default float32)"}
    tolerances = (Tolerance("npzdense", "*", "*", "*", "*", 1e-5, 1e-5,
                            "numpy's matmul sums in another order than the Keras backend's"),)

    def supports(self, iospec: IOSpec) -> str | None:
        if len(iospec.inputs) != 1 or len(iospec.outputs) != 1:
            return "one input and one output only"
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        dense = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
        if any(type(layer).__name__ != "Dense" for layer in dense):
            raise ArtifactError(f"{dest}: npzdense carries Dense layers only")
        dtype = ctx.options.get("dtype", "float32")
        arrays = {}
        for i, layer in enumerate(dense):
            kernel, bias = layer.get_weights()
            arrays[f"kernel_{i}"], arrays[f"bias_{i}"] = kernel.astype(dtype), bias.astype(dtype)
        dest.mkdir(parents=True)
        save_arrays(dest / "weights.npz", arrays)
        (dest / "activations.json").write_text(json.dumps([layer.get_config()["activation"] for layer in dense]))
        return {"layers": len(dense)}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu", trust: bool = False) -> Runner:
        activations = json.loads((path / "activations.json").read_text())
        if not isinstance(activations, list) or not all(a in ACTIVATIONS for a in activations):
            raise ArtifactError(f"{path}: activations.json names an activation npzdense does not run")
        names = [f"{kind}_{i}" for i in range(len(activations)) for kind in ("kernel", "bias")]
        weights = load_arrays(path / "weights.npz", names)
        assert iospec is not None, "npzdense artifacts live in bundles (the manifest's signature names the I/O)"
        spec = iospec

        def run(inputs: Any) -> dict[str, np.ndarray]:
            z = np.asarray(inputs[spec.input_names[0]], np.float32)
            for i, activation in enumerate(activations):
                z = ACTIVATIONS[activation](z @ weights[f"kernel_{i}"] + weights[f"bias_{i}"])
            return {spec.output_names[0]: z.astype(np.float32)}

        return Runner(run, format=self.name, path=path, runtime="numpy", backend="numpy", iospec=spec, device=device)

    def available_devices(self, backend: str) -> list[str]:
        return ["cpu"]


FORMAT = register(NpzDenseFormat())
