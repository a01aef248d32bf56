"""Stage 5: reload every artifact and prove it reproduces the original outputs.

For each artifact in the manifest: check its sha256, load it with the runtime
that would really consume it (in a fresh interpreter by default), run the
stored reference inputs (the full batch and a single row) and compare with the
stored reference outputs against the tolerance table.
"""
from __future__ import annotations

import contextlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import BackendUnavailableError, KerasioError, VerificationError
from .formats import get_format
from .fsutil import write_text_atomic
from .manifest import read_manifest
from .runtime import default_backend, keras_backend
from .tolerances import tolerance_for
from .trace import render_table

__all__ = ["verify", "VerifyReport", "Check", "compare", "VERIFICATION_FILE"]

VERIFICATION_FILE = "verification.json"


@dataclass
class Check:
    """The outcome of verifying one artifact on one device."""

    artifact: str
    format: str
    runtime: str = ""
    backend: str = ""
    device: str = ""
    device_name: str = ""
    precision: str = ""
    rows: int = 0
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    argmax_agreement: float | None = None
    atol: float | None = None
    tolerance_reason: str = ""
    passed: bool = False
    seconds: float = 0.0
    error: str = ""
    tf32_drift: float | None = None
    device_drift: float | None = None

    @property
    def status(self) -> str:
        return "PASS" if self.passed else "FAIL"


@dataclass
class VerifyReport:
    """Per-artifact checks; renders as a table, a DataFrame or JSON."""

    bundle: str
    checks: list[Check] = field(default_factory=list)
    resume: dict[str, Any] | None = None
    mode: str = "fresh-process"

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks) and (
            self.resume is None or self.resume.get("passed", False))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def table(self) -> str:
        rows = []
        for c in self.checks:
            rows.append([
                c.format, c.artifact, c.backend, c.device, c.precision,
                _sci(c.max_abs_diff), _sci(c.max_rel_diff),
                "-" if c.argmax_agreement is None else f"{c.argmax_agreement:.1%}",
                "bit-identical" if c.atol == 0 else _sci(c.atol), c.status,
            ])
        text = render_table(
            ["Format", "Artifact", "Backend", "Device", "Precision", "Max abs diff", "Max rel diff",
             "Argmax agree", "Tolerance", "Result"], rows)
        devices = {c.device: c.device_name for c in self.checks if c.device}
        notes = [f"  devices: {', '.join(f'{d} = {n}' for d, n in devices.items())}"] if devices else []
        notes += [f"  {c.format}: {c.error}" for c in self.checks if c.error]
        notes += [f"  {c.format} on {c.device}: TF32 (fast-math) drift {c.tf32_drift:.2e} (information only)"
                  for c in self.checks if c.tf32_drift is not None]
        notes += [f"  {c.format}: CPU vs GPU drift {c.device_drift:.2e}" for c in self.checks if c.device_drift is not None]
        if self.resume is not None:
            r = self.resume
            notes.append(f"  resume: {'PASS' if r.get('passed') else 'FAIL'} - {r.get('detail', '')}")
        return text + ("\n" + "\n".join(notes) if notes else "")

    __str__ = table

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "mode": self.mode,
                "checks": [asdict(c) | {"status": c.status} for c in self.checks], "resume": self.resume}

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(c) | {"status": c.status} for c in self.checks])

    def failure_text(self) -> str:
        """One line naming each failing artifact with its diff and tolerance (empty when all pass)."""
        parts = [_failure_text(c) for c in self.failures()]
        if self.resume is not None and not self.resume.get("passed"):
            parts.append(f"{self.bundle}: resume check failed: {self.resume.get('detail')}")
        return "; ".join(parts)

    def raise_for_failure(self) -> "VerifyReport":
        """Raise :class:`VerificationError` naming each failing artifact; else return self."""
        if not self.ok:
            raise VerificationError(self.failure_text() or f"{self.bundle}: nothing was verified")
        return self


def _failure_text(c: Check) -> str:
    if c.error:
        return f"{c.artifact} ({c.format}): {c.error}"
    return (f"{c.artifact} ({c.format}, {c.backend}, {c.device}): max abs diff {_sci(c.max_abs_diff)} exceeds "
            f"tolerance {_sci(c.atol)}, argmax agreement {c.argmax_agreement:.1%}")


def _sci(v: float | None) -> str:
    return "-" if v is None else ("0" if v == 0 else f"{v:.2e}")


def compare(reference: np.ndarray, actual: np.ndarray) -> tuple[float, float, float]:
    """``(max abs diff, max rel diff, argmax agreement)`` of two probability arrays."""
    reference = np.asarray(reference, np.float64)
    actual = np.asarray(actual, np.float64)
    if reference.shape != actual.shape:
        raise VerificationError(f"output shape {actual.shape} differs from the reference {reference.shape}")
    diff = np.abs(actual - reference)
    rel = diff / np.maximum(np.abs(reference), 1e-6)
    agree = float(np.mean(actual.argmax(-1) == reference.argmax(-1)))
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0)), agree


def verify(
    bundle: str | Path,
    *,
    formats: str | Sequence[str] | None = None,
    in_process: bool = False,
    device: str = "auto",
    backend: str | None = None,
    precision: str = "highest",
    trust_pickle: bool = False,
    imports: Sequence[str] = (),
    resume: bool = False,
    workers: dict[str | None, Any] | None = None,
    record: bool = True,
    check_hashes: bool = True,
) -> VerifyReport:
    """Reload every artifact of a bundle and compare its outputs with the reference.

    Args:
        bundle: a bundle directory written by :func:`kerasio.export`.
        formats: only these formats (default: every artifact in the manifest).
        in_process: load in this interpreter instead of a fresh one (faster,
            but a custom class registered here could hide a broken artifact).
        device: ``auto`` (GPU when the backend sees one), ``cpu``, ``gpu`` or
            ``all`` (every device, plus the CPU-vs-GPU drift).
        backend: Keras backend for the backend-agnostic formats (``keras``,
            ``h5``, ``weights``, ``pickle``): ``tensorflow``, ``jax`` or ``torch``.
            SavedModel and LiteRT always run in TensorFlow, ONNX in onnxruntime.
        precision: ``highest`` pins float32 matmuls (the default policy);
            ``fast`` allows TF32 on GPUs.
        trust_pickle: allow loading the pickle artifact.
        imports: modules to import before loading (custom layers).
        resume: also check that ``model.keras`` resumes training bit-exactly.
        workers: already-started :class:`~kerasio.worker.Worker` objects by
            backend (the pipeline starts one early); they are not closed.
        record: write the report to ``<bundle>/verification.json``.
        check_hashes: check each artifact's sha256 before loading it. Only
            ``export(verify=True)``, which hashed the files a moment earlier,
            turns this off.

    Returns:
        A :class:`VerifyReport`; call ``.raise_for_failure()`` to assert.

    Example:
        >>> report = verify("saved_models/seed")  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    x_ref, y_ref = manifest.reference_arrays(bundle)
    y_one = manifest.reference_one_row(bundle)
    wanted = None
    if formats:
        wanted = [formats] if isinstance(formats, str) else list(formats)
        wanted = [w for part in wanted for w in part.split(",")]
        for name in wanted:
            manifest.artifact(name)  # clear error for a format the bundle lacks
    arts = [a for a in manifest.artifacts if wanted is None or a.format in wanted]
    imports = list(imports) + _importable_custom_modules(manifest)
    report = VerifyReport(bundle=str(bundle), mode="in-process" if in_process else "fresh-process")
    default = default_backend()
    workers = dict(workers or {})
    with tempfile.TemporaryDirectory(prefix="kerasio-ref-") as tmp, contextlib.ExitStack() as stack:
        inputs = Path(tmp) / "inputs.npy"
        np.save(inputs, x_ref)

        def ask(child_backend: str, request: dict[str, Any]) -> dict[str, Any]:
            """Send a request to this process (in_process, same backend) or to a fresh worker."""
            from .worker import Worker, handle

            if in_process and child_backend == keras_backend():
                return handle(request)
            if child_backend not in workers:
                workers[child_backend] = stack.enter_context(Worker(child_backend, warm=("keras",), imports=imports))
            return workers[child_backend].request(request)

        for art in arts:
            fmt = get_format(art.format)
            start = time.perf_counter()
            # Backend-agnostic formats run on the requested backend; SavedModel and LiteRT
            # need TensorFlow; ONNX runs in onnxruntime beside whichever backend is up.
            child_backend = "tensorflow" if fmt.runtime in ("tensorflow", "litert") else (backend or default)
            try:
                if child_backend == "tensorflow" and not _importable("tensorflow"):
                    raise BackendUnavailableError(
                        f"verifying the {fmt.name} artifact needs tensorflow, which cannot be imported here. "
                        "Install it (pip install tensorflow) or verify the other formats (--format keras)."
                    )
                path = art.check(bundle) if check_hashes else bundle / art.path
                answer = ask(child_backend, {
                    "format": art.format, "path": str(path), "inputs": str(inputs), "device": device,
                    "precision": precision, "trust": trust_pickle, "imports": imports, "out_dir": tmp})
                if not answer["ok"]:
                    raise KerasioError(answer["error"])
                report.checks.extend(_judge(art, answer["results"], y_ref, y_one, start))
            except KerasioError as exc:
                report.checks.append(Check(artifact=art.path, format=art.format, rows=len(x_ref), error=str(exc),
                                           backend=child_backend, seconds=time.perf_counter() - start))
        if resume:
            answer = ask(backend or default, {"op": "resume", "bundle": str(bundle)})
            report.resume = answer["result"] if answer["ok"] else {"passed": False, "detail": answer["error"]}
    if record:
        with contextlib.suppress(OSError):
            write_text_atomic(bundle / VERIFICATION_FILE, report.to_json(indent=2))
    return report


def _judge(art, results: list[dict[str, Any]], reference: np.ndarray, reference_one: np.ndarray,
           start: float) -> list[Check]:
    checks = []
    outputs = {}
    for res in results:
        with np.load(res["outputs"]) as data:
            full, one = data["full"], data["one"]
        outputs[res["device"]] = full
        abs_full, rel_full, agree = compare(reference, full)
        abs_one, rel_one, agree_one = compare(reference_one, one)
        tol = tolerance_for(art.format, res["backend"], res["device"])
        check = Check(
            artifact=art.path, format=art.format, runtime=res["runtime"], backend=res["backend"],
            device=res["device"], device_name=res["device_name"], precision=res["precision"],
            rows=len(reference), max_abs_diff=max(abs_full, abs_one), max_rel_diff=max(rel_full, rel_one),
            argmax_agreement=min(agree, agree_one), atol=tol.atol, tolerance_reason=tol.reason,
            seconds=time.perf_counter() - start,
        )
        check.passed = check.max_abs_diff <= tol.atol and check.argmax_agreement == 1.0
        if "fast_outputs" in res:
            with np.load(res["fast_outputs"]) as data:
                check.tf32_drift = compare(reference, data["full"])[0]
        checks.append(check)
    if "cpu" in outputs and "gpu" in outputs:
        drift = compare(outputs["cpu"], outputs["gpu"])[0]
        for c in checks:
            c.device_drift = drift
    return checks


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _importable_custom_modules(manifest) -> list[str]:
    """Modules of custom classes that this process has already imported (the exporter's).

    A fresh verifier imports only these, never a module merely named in a
    file: the manifest is data, not an instruction to run code.
    """
    import sys

    return sorted({c["module"] for c in manifest.custom_objects
                   if c.get("module") in sys.modules and c["module"] != "__main__"})
