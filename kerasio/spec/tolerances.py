"""The one tolerance table, and the per-output comparison it governs.

A row matches a check by format, backend, device, the model's compute dtype
and the precision mode (``*`` = any); the most specific matching row wins. A
float output passes when every element satisfies ``|a - b| <= atol + rtol * |b|``
(``b`` the reference); integer, bool and string outputs must match exactly;
probability outputs must also agree on the argmax of every row. The README
prints this table (``python -m kerasio.spec.tolerances`` renders it).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np

from kerasio.errors import InputError

__all__ = ["Tolerance", "TOLERANCES", "tolerance_for", "markdown_table", "OutputComparison", "compare_output",
           "compare_cases", "STATISTICS", "check_statistic", "nudged", "measure_noise", "judge_noise", "LOOSER"]


STATISTICS = ("elementwise", "max", "mean", "median", "quantile:Q")


def check_statistic(statistic: str) -> str:
    """``statistic`` if it is one kerasio knows (``quantile:0.99``: any quantile in (0, 1]); else InputError."""
    if statistic in STATISTICS[:4]:
        return statistic
    if statistic.startswith("quantile:"):
        try:
            q = float(statistic.split(":", 1)[1])
        except ValueError:
            q = -1.0
        if 0 < q <= 1:
            return statistic
    raise InputError(f"the error statistic must be one of elementwise, max, mean, median or quantile:Q with "
                     f"0 < Q <= 1 (quantile:0.99); received: {statistic!r}")


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
    statistic: str = "elementwise"  # or max, mean, median, quantile:Q (see compare_cases)
    output: str = "*"  # a row for one named output only

    def __post_init__(self) -> None:
        check_statistic(self.statistic)

    def specificity(self) -> int:
        return sum(v != "*" for v in (self.format, self.backend, self.device, self.compute, self.precision,
                                      self.output))

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
                  exported_on: str = "cpu", same_cpu: bool = True, extra: Sequence[Tolerance] = (),
                  output: str = "*") -> Tolerance:
    """The most specific row that matches the check.

    ``exported_by`` and ``exported_on`` are the manifest's backend and device,
    and ``same_cpu`` whether this CPU has the exporting CPU's instruction set
    (the manifest's ``cpu_features``): only the same backend on the same
    device of the same CPU is ``same`` (bit-identical rows). Another CPU may
    take other kernels (AVX-512 or not) and round differently. ``extra`` are
    a format's own rows (:attr:`kerasio.formats.Format.tolerances`), consulted
    first: they win a tie with the table's. ``output``: the named output the row is for (a row may name one).
    """
    same = backend == exported_by and device == exported_on and same_cpu
    key = (fmt, "same" if same else backend, device, compute, precision, output)
    rows = [t for t in (*extra, *TOLERANCES)
            if all(v in ("*", k) for v, k in zip((t.format, t.backend, t.device, t.compute, t.precision, t.output),
                                                 key))]
    if not rows:  # a compute dtype the table does not know (float64, ...): the float32 default
        return TOLERANCES[-1]
    return max(rows, key=Tolerance.specificity)


def markdown_table() -> str:
    lines = ["| format | backend | device | compute | precision | atol | rtol | statistic | why |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in TOLERANCES:
        atol = "0 (bit-identical)" if t.atol == 0 and t.rtol == 0 else f"{t.atol:g}"
        lines.append(f"| {t.format} | {t.backend} | {t.device} | {t.compute} | {t.precision} | {atol} | "
                     f"{t.rtol:g} | {t.statistic} | {t.reason} |")
    return "\n".join(lines)


@dataclass
class OutputComparison:
    """How one named output of a reloaded artifact compares with the reference, over every input shape checked.

    The error figures are over all compared elements (the reference batch, its first row alone and each shape of
    the sweep): absolute ``|a - b|`` and relative ``|a - b| / |b|`` (``b`` the reference), max, mean, median and
    99th percentile; ``max_ulp``: the largest distance in units in the last place of the reference's float type.
    ``required_atol`` is the smallest atol that would have passed with the row's rtol kept, ``required_rtol`` the
    smallest rtol with its atol kept (``None``: no rtol can, as where the reference is 0 and the value is not).
    """

    name: str
    dtype: str
    exact: bool  # integer, bool and string outputs must match exactly
    passed: bool
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    mismatches: int = 0  # elements outside the tolerance (or different, when exact)
    argmax_agreement: float | None = None
    detail: str = ""
    statistic: str = "elementwise"
    elements: int = 0
    mean_abs_diff: float | None = None
    median_abs_diff: float | None = None
    p99_abs_diff: float | None = None
    mean_rel_diff: float | None = None
    median_rel_diff: float | None = None
    p99_rel_diff: float | None = None
    max_ulp: int | None = None
    nan: int = 0  # NaN values in the artifact's output
    inf: int = 0
    reference_nan: int = 0
    reference_inf: int = 0
    required_atol: float | None = None
    required_rtol: float | None = None
    failed_shapes: list[str] = field(default_factory=list)  # the sweep's shapes on which this output failed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_output(name: str, reference: np.ndarray, actual: np.ndarray, *, atol: float, rtol: float,
                   probabilities: bool = False, statistic: str = "elementwise") -> OutputComparison:
    """Compare one output; floats within the tolerance under ``statistic``, everything else exactly."""
    return compare_cases(name, [("", reference, actual)], atol=atol, rtol=rtol, probabilities=probabilities,
                         statistic=statistic)


def compare_cases(name: str, cases: Sequence[tuple[str, np.ndarray, np.ndarray]], *, atol: float, rtol: float,
                  probabilities: bool = False, statistic: str = "elementwise") -> OutputComparison:
    """Compare one output over several input shapes: ``(shape name, reference, actual)`` each.

    ``elementwise`` (the default) passes when every element satisfies ``|a - b| <= atol + rtol * |b|``; ``max``,
    ``mean``, ``median`` and ``quantile:Q`` pass when that statistic of the absolute errors is within atol or that
    of the relative errors within rtol (Polygraphy's ``check_error_stat``). Whatever the statistic, a NaN or an
    infinity the reference does not have is a failure, a shape that differs is one, and a probability output's
    argmax must agree on every row.
    """
    statistic = check_statistic(statistic)
    reference0 = np.asarray(cases[0][1])
    kind = reference0.dtype.kind
    dtype = "string" if kind in "USO" else reference0.dtype.name
    exact = kind not in "fc"
    failed: list[str] = []
    problems: list[str] = []
    abs_parts, rel_parts, ref_parts, ulp_parts = [], [], [], []
    mismatches = elements = 0
    nan = inf = ref_nan = ref_inf = 0
    agree_rows = agree_total = 0
    for case, reference, actual in cases:
        reference, actual = np.asarray(reference), np.asarray(actual)
        where = f"{case}: " if case else ""
        if reference.shape != actual.shape:
            failed.append(case)
            mismatches += int(reference.size)
            problems.append(f"{where}shape {tuple(actual.shape)} differs from the reference {tuple(reference.shape)}")
            continue
        elements += int(reference.size)
        if exact:
            ref = reference.astype(str) if kind in "USO" else reference
            act = actual.astype(str) if kind in "USO" or actual.dtype.kind in "USO" else actual
            bad = int(np.count_nonzero(np.asarray(ref != act)))
            if bad:
                failed.append(case)
                problems.append(f"{where}{bad} of {reference.size} values differ")
            mismatches += bad
            continue
        ref64, act64 = reference.astype(np.float64), actual.astype(np.float64)
        ref_nan += int(np.isnan(ref64).sum())
        ref_inf += int(np.isinf(ref64).sum())
        nan += int(np.isnan(act64).sum())
        inf += int(np.isinf(act64).sum())
        same = (ref64 == act64) | (np.isnan(ref64) & np.isnan(act64))  # equal infinities and NaN for NaN agree
        new_nan = int(np.count_nonzero(np.isnan(act64) & ~np.isnan(ref64)))
        new_inf = int(np.count_nonzero(np.isinf(act64) & ~same))
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.where(same, 0.0, np.abs(act64 - ref64))
        finite = np.isfinite(diff)
        if not finite.all():
            failed.append(case)
            lost = max(int(np.count_nonzero(~finite)) - new_nan - new_inf, 0)
            said = [f"{new_nan} NaN" * bool(new_nan), f"{new_inf} infinities" * bool(new_inf)]
            text = " and ".join(p for p in said if p)
            problems.append(where + "; ".join(p for p in (
                f"{text} where the reference has none" * bool(text),
                f"{lost} finite values where the reference is NaN or infinite" * bool(lost)) if p))
            mismatches += int(np.count_nonzero(~finite))
        d, r = diff[finite], np.abs(ref64[finite])
        r = np.where(np.isfinite(r), r, 0.0)  # an infinity matched exactly: no relative scale to speak of
        abs_parts.append(d)
        ref_parts.append(r)
        rel_parts.append(d / np.maximum(r, 1e-12))
        ulp_parts.append(_ulp(reference[finite], actual.astype(reference.dtype)[finite]))
        if statistic == "elementwise":
            bad = int(np.count_nonzero(d > atol + rtol * r))
            if bad:
                failed.append(case)
            mismatches += bad
        if probabilities and reference.ndim >= 2:
            agree_rows += int(np.count_nonzero(actual.reshape(-1, actual.shape[-1]).argmax(-1)
                                               == reference.reshape(-1, reference.shape[-1]).argmax(-1)))
            agree_total += int(np.prod(reference.shape[:-1]))
    agreement = agree_rows / agree_total if agree_total else None
    if exact:
        return OutputComparison(name, dtype, True, not problems, mismatches=mismatches, detail="; ".join(problems),
                                statistic=statistic, elements=elements, failed_shapes=_named(failed))
    d = np.concatenate(abs_parts) if abs_parts else np.zeros(0)
    rel = np.concatenate(rel_parts) if rel_parts else np.zeros(0)
    r = np.concatenate(ref_parts) if ref_parts else np.zeros(0)
    ulps = np.concatenate(ulp_parts) if ulp_parts else np.zeros(0, dtype=np.int64)
    stat_abs, stat_rel = _statistic(d, statistic), _statistic(rel, statistic)
    if statistic == "elementwise":
        within = mismatches == 0
        up = 1 + 1e-12  # the exact minimum can miss by a rounding of its own: the figure is one that passes
        need_atol = float(np.max(d - rtol * r, initial=0.0)) * up
        over = d > atol
        if np.any(over & (r == 0)):
            need_rtol: float | None = None
        else:
            need_rtol = float(np.max((d[over] - atol) / r[over], initial=0.0)) * up
    else:
        within = stat_abs <= atol or stat_rel <= rtol
        need_atol = 0.0 if stat_rel <= rtol else stat_abs
        need_rtol = 0.0 if stat_abs <= atol else stat_rel
        if not within:
            problems.append(f"{statistic} abs error {stat_abs:.2e} > atol {atol:g} and {statistic} rel error "
                            f"{stat_rel:.2e} > rtol {rtol:g}")
            failed.extend(c for c, _, _ in cases)
    if agreement is not None and agreement < 1.0:
        problems.append(f"argmax differs on {agree_total - agree_rows} of {agree_total} rows")
    passed = within and not problems
    return OutputComparison(
        name, dtype, False, passed, max_abs_diff=_stat(d, np.max), max_rel_diff=_stat(rel, np.max),
        mismatches=mismatches, argmax_agreement=agreement, detail="; ".join(problems), statistic=statistic,
        elements=elements, mean_abs_diff=_stat(d, np.mean), median_abs_diff=_stat(d, np.median),
        p99_abs_diff=_stat(d, lambda a: np.quantile(a, 0.99)), mean_rel_diff=_stat(rel, np.mean),
        median_rel_diff=_stat(rel, np.median), p99_rel_diff=_stat(rel, lambda a: np.quantile(a, 0.99)),
        max_ulp=int(ulps.max()) if ulps.size else 0, nan=nan, inf=inf, reference_nan=ref_nan,
        reference_inf=ref_inf, required_atol=need_atol, required_rtol=need_rtol,
        failed_shapes=_named(failed),
    )


def _named(cases: list[str]) -> list[str]:
    return list(dict.fromkeys(c for c in cases if c))


def _stat(values: np.ndarray, fn: Any) -> float:
    return float(fn(values)) if values.size else 0.0


def _statistic(values: np.ndarray, statistic: str) -> float:
    if not values.size:
        return 0.0
    if statistic in ("elementwise", "max"):
        return float(values.max())
    if statistic == "mean":
        return float(values.mean())
    if statistic == "median":
        return float(np.median(values))
    return float(np.quantile(values, float(statistic.split(":", 1)[1])))


_INT_OF = {2: np.int16, 4: np.int32, 8: np.int64}


def _ulp(reference: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Units in the last place between two float arrays of one dtype (its bit patterns, ordered as numbers)."""
    if reference.dtype.kind != "f" or reference.dtype.itemsize not in _INT_OF or not reference.size:
        return np.zeros(0, dtype=np.int64)
    as_int = _INT_OF[reference.dtype.itemsize]
    magnitude = np.int64(np.iinfo(as_int).max)

    def ordered(a: np.ndarray) -> np.ndarray:
        bits = np.ascontiguousarray(a).view(as_int).astype(np.int64)
        return np.where(bits < 0, -(bits & magnitude), bits)  # -0.0 and +0.0 are both 0

    with np.errstate(over="ignore"):
        return np.abs(ordered(reference) - ordered(actual))


# -- calibration: the model's own numerical noise, measured on the device -------------------------------------------

LOOSER = 1000  # a tolerance that admits errors this many times the noise would hide a real difference


def nudged(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """Every float input moved up by one ulp (``np.nextafter``); None when no input is a float."""
    if not any(v.dtype.kind == "f" for v in inputs.values()):
        return None
    return {k: np.nextafter(v, np.inf).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in inputs.items()}


def measure_noise(base: dict[str, np.ndarray], again: dict[str, np.ndarray],
                  moved: dict[str, np.ndarray] | None) -> dict[str, dict[str, float | None]]:
    """Per float output: ``repeat`` (max abs change running the same input again), ``ulp`` and ``ulp_rel`` (max abs
    and relative change when every float input moves by one ulp; None without a float input), and ``scale``
    (the median magnitude of the output, where a relative tolerance is read)."""
    noise: dict[str, dict[str, float | None]] = {}
    for name, out in base.items():
        if np.asarray(out).dtype.kind != "f":
            continue
        b = np.asarray(out, np.float64)
        finite = np.isfinite(b)
        repeat = np.abs(np.asarray(again[name], np.float64) - b)[finite]
        entry: dict[str, float | None] = {"repeat": _stat(repeat, np.max), "ulp": None, "ulp_rel": None,
                                          "scale": _stat(np.abs(b[finite]), np.median)}
        if moved is not None and np.shape(moved[name]) == b.shape:
            change = np.abs(np.asarray(moved[name], np.float64) - b)[finite]
            entry["ulp"] = _stat(change, np.max)
            entry["ulp_rel"] = _stat(change / np.maximum(np.abs(b[finite]), 1e-30), np.max)
        noise[name] = entry
    return noise


def judge_noise(noise: dict[str, float | None], atol: float, rtol: float) -> str:
    """Whether a tolerance row fits the measured noise of one output: '' when it does, else why not.

    The noise is the larger of the repeat and the one-ulp change. A row is *tighter than the noise* when the noise
    exceeds both its atol and, relatively, its rtol (the check could fail on the model's own rounding), and *looser
    than 1000x the noise* when the error it admits at the output's median magnitude (``atol + rtol * scale``) is
    over :data:`LOOSER` times the noise (a real difference that size would pass). A bit-identical row (atol and
    rtol 0) claims the same bits from the same inputs, so it is held to the repeat alone: it is too tight only
    where the runtime is not deterministic.
    """
    if atol == 0 and rtol == 0:
        repeat = noise.get("repeat") or 0.0
        return f"tighter than the noise: running the same input again changes the output by {repeat:.2e}, and " \
               "the row asks for identical bits" if repeat > 0 else ""
    absolute = max(noise.get("repeat") or 0.0, noise.get("ulp") or 0.0)
    relative = noise.get("ulp_rel") or 0.0
    allowed = atol + rtol * (noise.get("scale") or 0.0)
    if absolute > atol and relative > rtol:
        return f"tighter than the noise: the model's own noise {absolute:.2e} (relative {relative:.2e}) exceeds " \
               f"atol {atol:g} and rtol {rtol:g}"
    if allowed > 0 and allowed > LOOSER * absolute:
        times = f"{allowed / absolute:.0f}x" if absolute else "any multiple of"
        return f"looser than {LOOSER}x the noise: it admits {allowed:.2e} at the median output magnitude, " \
               f"{times} the noise {absolute:.2e}"
    return ""


if __name__ == "__main__":
    print(markdown_table())
