"""The one tolerance table, and the per-output comparison it governs.

A row matches a check by format, backend, device, the model's compute dtype
and the precision mode (``*`` = any); the most specific matching row wins. A
float output passes when every element satisfies ``|a - b| <= atol + rtol * |b|``
(``b`` the reference); integer, bool and string outputs must match exactly;
probability outputs must also agree on the argmax of every row. The README
prints this table (``python -m kerasio.spec.tolerances`` renders it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "markdown_table", "OutputComparison", "compare_output"]


@dataclass(frozen=True)
class Tolerance:
    format: str
    backend: str
    device: str
    compute: str
    precision: str
    atol: float
    rtol: float
    reason: str

    def specificity(self) -> int:
        return sum(v != "*" for v in (self.format, self.backend, self.device, self.compute, self.precision))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BIT = "same file, same kernels, same machine: identical weights and graph, so bit-identical"
# Backends: "same" is the backend that exported the bundle (the manifest's), on its device, reloading its own file;
# tensorflow, jax and torch rows cover backend-agnostic formats reloaded under another Keras backend or on another
# device; onnxruntime and litert are the converted formats' own runtimes.
TOLERANCES: tuple[Tolerance, ...] = (
    Tolerance("keras", "same", "cpu", "*", "*", 0.0, 0.0, _BIT),
    Tolerance("h5", "same", "cpu", "*", "*", 0.0, 0.0, "legacy HDF5 stores the same weights: bit-identical"),
    Tolerance("weights", "same", "cpu", "*", "*", 0.0, 0.0,
              "same weights into the same architecture: bit-identical"),
    Tolerance("pickle", "same", "cpu", "*", "*", 0.0, 0.0, "a pickle wraps the .keras bytes: bit-identical"),
    Tolerance("savedmodel", "*", "cpu", "float32", "*", 1e-6, 1e-6,
              "TensorFlow may fuse ops differently in the serving graph (Grappler); float32 rounding only"),
    Tolerance("onnx", "*", "*", "float32", "*", 1e-5, 1e-5, "onnxruntime has its own kernels and summation order"),
    Tolerance("litert", "*", "*", "float32", "*", 1e-5, 1e-5, "LiteRT's CPU kernels (XNNPACK) sum in another order"),
    Tolerance("*", "tensorflow", "cpu", "float32", "*", 1e-6, 1e-6,
              "reloaded by TensorFlow on the CPU, exported by another backend or on a GPU: sums in another order"),
    Tolerance("*", "jax", "cpu", "float32", "*", 1e-6, 1e-6, "XLA's CPU matmuls order sums differently from TF's"),
    Tolerance("*", "torch", "cpu", "float32", "*", 1e-6, 1e-6, "PyTorch's CPU matmuls order sums differently"),
    Tolerance("*", "*", "gpu", "float32", "float32-pinned", 1e-5, 1e-5,
              "GPU float32 (TF32 pinned off) reorders reductions"),
    Tolerance("*", "*", "gpu", "*", "tf32-allowed", 1e-2, 1e-2,
              "TF32 matmuls keep 10 mantissa bits (~1e-3 relative per product); only with --precision fast"),
    Tolerance("*", "*", "*", "float16", "*", 1e-3, 1e-3,
              "mixed_float16: float16 keeps ~3 decimal digits, and another runtime may round each op differently"),
    Tolerance("*", "*", "*", "bfloat16", "*", 1e-2, 1e-2, "mixed_bfloat16: bfloat16 keeps ~2 decimal digits"),
    # Keras's own quantization (model.quantize): the compute column is the mode. Reloads by the exporting backend
    # on its device stay bit-identical (the rows above); these cover every other runtime.
    Tolerance("*", "*", "*", "int8", "*", 1e-5, 1e-5,
              "int8 weights: the integer matmul is exact everywhere; the per-call input quantization and the float "
              "dequantization reorder float32 sums only (zoo: <= 6e-8 across TF, JAX, PyTorch, onnxruntime). An "
              "input rounded to the other int8 step moves an output by ~1e-3: a FAIL to look at, not noise"),
    Tolerance("*", "*", "*", "int4", "*", 1e-5, 1e-5,
              "int4 weights, unpacked with bitwise ops then as int8: exact integer work, float32 rounding around it "
              "(zoo: <= 6e-8)"),
    Tolerance("*", "*", "*", "float8", "*", 1e-5, 1e-5,
              "float8 (e4m3) weights and inputs with float32 scales: the casts are exact in each runtime, the "
              "scaling is float32 (zoo: <= 3e-8)"),
    Tolerance("*", "*", "*", "gptq", "*", 1e-5, 1e-5,
              "GPTQ 4-bit weights dequantized to float32 before the matmul: float32 reordering only (zoo: <= 3e-8)"),
    Tolerance("*", "*", "*", "float32", "*", 1e-6, 1e-6, "default for any other case: float32 rounding only"),
)


def tolerance_for(fmt: str, backend: str, device: str, compute: str = "float32",
                  precision: str = "float32-pinned", *, exported_by: str = "tensorflow",
                  exported_on: str = "cpu", same_cpu: bool = True, extra: Sequence[Tolerance] = ()) -> Tolerance:
    """The most specific row that matches the check.

    ``exported_by`` and ``exported_on`` are the manifest's backend and device,
    and ``same_cpu`` whether this CPU has the exporting CPU's instruction set
    (the manifest's ``cpu_features``): only the same backend on the same
    device of the same CPU is ``same`` (bit-identical rows). Another CPU may
    take other kernels (AVX-512 or not) and round differently. ``extra`` are
    a format's own rows (:attr:`kerasio.formats.Format.tolerances`), consulted
    first: they win a tie with the table's.
    """
    same = backend == exported_by and device == exported_on and same_cpu
    key = (fmt, "same" if same else backend, device, compute, precision)
    rows = [t for t in (*extra, *TOLERANCES)
            if all(v in ("*", k) for v, k in zip((t.format, t.backend, t.device, t.compute, t.precision), key))]
    if not rows:  # a compute dtype the table does not know (float64, ...): the float32 default
        return TOLERANCES[-1]
    return max(rows, key=Tolerance.specificity)


def markdown_table() -> str:
    lines = ["| format | backend | device | compute | precision | atol | rtol | why |",
             "|---|---|---|---|---|---|---|---|"]
    for t in TOLERANCES:
        atol = "0 (bit-identical)" if t.atol == 0 and t.rtol == 0 else f"{t.atol:g}"
        lines.append(f"| {t.format} | {t.backend} | {t.device} | {t.compute} | {t.precision} | {atol} | "
                     f"{t.rtol:g} | {t.reason} |")
    return "\n".join(lines)


@dataclass
class OutputComparison:
    """How one named output of a reloaded artifact compares with the reference."""

    name: str
    dtype: str
    exact: bool  # integer, bool and string outputs must match exactly
    passed: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatches: int = 0  # elements outside the tolerance (or different, when exact)
    argmax_agreement: float | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, *, atol: float, rtol: float,
                   probabilities: bool = False) -> OutputComparison:
    """Compare one output; floats within ``atol + rtol * |reference|``, everything else exactly."""
    reference, actual = np.asarray(reference), np.asarray(actual)
    kind = reference.dtype.kind
    dtype = "string" if kind in "USO" else reference.dtype.name
    if reference.shape != actual.shape:
        return OutputComparison(name, dtype, kind not in "fc", False, mismatches=int(reference.size),
                                detail=f"shape {tuple(actual.shape)} differs from the reference {tuple(reference.shape)}")
    if kind not in "fc":
        ref = reference.astype(str) if kind in "USO" else reference
        act = actual.astype(str) if kind in "USO" or actual.dtype.kind in "USO" else actual
        bad = int(np.count_nonzero(np.asarray(ref != act)))
        return OutputComparison(name, dtype, True, bad == 0, mismatches=bad,
                                detail="" if bad == 0 else f"{bad} of {reference.size} values differ")
    ref64, act64 = reference.astype(np.float64), actual.astype(np.float64)
    diff = np.abs(act64 - ref64)
    nan_mismatch = np.isnan(ref64) != np.isnan(act64)
    diff = np.where(np.isnan(ref64) & np.isnan(act64), 0.0, diff)
    bad = int(np.count_nonzero((diff > atol + rtol * np.abs(ref64)) | nan_mismatch | np.isnan(diff)))
    rel = diff / np.maximum(np.abs(ref64), 1e-12)
    agreement = None
    if probabilities and reference.ndim >= 2:
        agreement = float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
    passed = bad == 0 and (agreement is None or agreement == 1.0)
    return OutputComparison(
        name, dtype, False, passed, max_abs_diff=float(np.nanmax(diff, initial=0.0)),
        max_rel_diff=float(np.nanmax(rel, initial=0.0)), mismatches=bad,
        argmax_agreement=agreement,
    )


if __name__ == "__main__":
    print(markdown_table())
