"""The one tolerance table: how far a reloaded artifact may drift, and why.

A row matches a check by format, backend and device (``*`` = any); the most
specific matching row wins. Every check also requires 100% argmax agreement.
``atol`` bounds the max absolute difference of the softmax probabilities;
``rtol`` is reported and bounds ``|diff| / max(|ref|, 1e-6)`` only where set.
The README prints this table (``python -m kerasio.tolerances`` renders it).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "markdown_table"]


@dataclass(frozen=True)
class Tolerance:
    format: str
    backend: str
    device: str
    atol: float
    reason: str

    def specificity(self) -> int:
        return sum(v != "*" for v in (self.format, self.backend, self.device))


# Backends: "tensorflow" is the exporting backend; a row for jax/torch covers
# backend-agnostic formats reloaded under another Keras backend.
TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("keras", "tensorflow", "cpu", 0.0,
              "same file, same kernels, same machine: the weights and graph are identical, so bit-identical"),
    Tolerance("h5", "tensorflow", "cpu", 0.0, "legacy HDF5 stores the same float32 weights: bit-identical"),
    Tolerance("weights", "tensorflow", "cpu", 0.0, "same weights into the same architecture: bit-identical"),
    Tolerance("pickle", "tensorflow", "cpu", 0.0, "a pickle wraps the .keras bytes: bit-identical"),
    Tolerance("savedmodel", "*", "cpu", 1e-6,
              "TensorFlow may fuse ops differently in the serving graph (Grappler); float32 rounding only"),
    Tolerance("onnx", "*", "*", 1e-5, "onnxruntime has its own kernels and summation order"),
    Tolerance("litert", "*", "*", 1e-5, "LiteRT's own CPU kernels (XNNPACK) sum in another order"),
    Tolerance("*", "jax", "cpu", 1e-6, "XLA's CPU matmuls order sums differently from TensorFlow's"),
    Tolerance("*", "torch", "cpu", 1e-6, "PyTorch's CPU matmuls order sums differently from TensorFlow's"),
    Tolerance("*", "*", "gpu", 1e-5,
              "GPU float32 (TF32 pinned off) reorders reductions; TF32 drift (~1e-3) is reported, not accepted"),
    Tolerance("*", "*", "*", 1e-6, "default for any other case: float32 rounding only"),
)


def tolerance_for(fmt: str, backend: str, device: str) -> Tolerance:
    """The most specific row that matches ``(format, backend, device)``."""
    rows = [
        t for t in TOLERANCES
        if t.format in ("*", fmt) and t.backend in ("*", backend) and t.device in ("*", device)
    ]
    return max(rows, key=Tolerance.specificity)


def markdown_table() -> str:
    lines = ["| format | backend | device | max abs diff | why |", "|---|---|---|---|---|"]
    for t in TOLERANCES:
        atol = "0 (bit-identical)" if t.atol == 0 else f"{t.atol:g}"
        lines.append(f"| {t.format} | {t.backend} | {t.device} | {atol} | {t.reason} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
