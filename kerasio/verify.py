"""Stage 5: reload every artifact and prove it reproduces the original outputs.

For each artifact in the manifest: check its sha256, load it with the runtime
that would really consume it (in a fresh interpreter by default), run the
stored reference inputs (the full batch and a single row) and compare every
named output with the stored reference outputs against the tolerance table.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import cpu_features, default_backend, keras_backend
from kerasio.bundle.arrays import load_arrays, save_arrays
from kerasio.bundle.fsutil import write_text_atomic
from kerasio.bundle.manifest import Artifact, Manifest
from kerasio.bundle.reader import read_pinned
from kerasio.bundle.trust import trusted
from kerasio.bundle.validation import MAX_MANIFEST_BYTES, check_depth
from kerasio.errors import (
    BackendUnavailableError,
    KerasioError,
    ResourceLimitError,
    UnsafeArtifactError,
    VerificationError,
    WorkerError,
)
from kerasio.formats import get_format
from kerasio.options import VerifyOptions, in_mode
from kerasio.present.html import STYLE, escape, table
from kerasio.present.html import status as html_status
from kerasio.present.text import render_table, wrap_notes
from kerasio.process.client import Worker
from kerasio.process.protocol import CheckRequest, CheckResult, JobRequest, answer_error
from kerasio.process.server import answer
from kerasio.process.session import Session
from kerasio.repro import write_kit
from kerasio.spec.limits import Limits
from kerasio.spec.quantization import figures, gates_for, judge, value_text
from kerasio.spec.tolerances import compare_cases, judge_noise, tolerance_for

__all__ = ["verify", "verify_staged", "VerifyReport", "Check", "VERIFICATION_FILE", "importable_custom_modules",
           "plugin_modules", "check_request"]

VERIFICATION_FILE = "verification.json"


@dataclass
class Check:
    """The outcome of verifying one artifact on one device, with one comparison per named output."""

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
    argmax_agreement: float | None = None  # over the probability outputs only; None when there are none
    atol: float | None = None
    rtol: float | None = None
    tolerance_source: str = "table"  # or "override" (verify(rtol=, atol=) / --rtol --atol)
    tolerance_reason: str = ""
    outputs: list[dict[str, Any]] = field(default_factory=list)
    passed: bool = False
    seconds: float = 0.0
    error: str = ""
    error_type: str = ""  # the kerasio exception behind ``error`` (WorkerError: the verifier died, not a mismatch)
    tf32_drift: float | None = None
    device_drift: float | None = None
    packages: dict[str, str] = field(default_factory=dict)  # allowlisted packages the loader imported (keras_hub)
    shapes: list[str] = field(default_factory=list)  # every input shape checked: the reference's, batch 1, the sweep
    rejected_shapes: dict[str, str] = field(default_factory=dict)  # sweep shapes the runtime refused: its error
    explanation: dict[str, Any] | None = None  # the layer-by-layer comparison (kerasio.spec.divergence.Divergence)
    repro: str = ""  # the reproduction kit's directory (kerasio.repro), for a failing check
    calibration: dict[str, Any] | None = None  # verify --calibrate: per output, the noise and whether the row fits
    ran_at: str = ""  # the precision the runtime itself reports (OpenVINO's inference precision hint, applied)
    quantization: dict[str, Any] | None = None  # a quantized artifact: scheme, distortion, decisions, gates

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
    allowed_ops: list[str] = field(default_factory=list)  # SavedModel ops the caller allowed (--allow-op)
    sandbox: dict[str, str] = field(default_factory=dict)  # what confined the worker of each backend

    def worker_failure(self) -> str:
        """The first check that could not run: the verifying interpreter died, hung or hit a limit ('' if none)."""
        return next((c.error for c in self.checks if c.error_type in ("WorkerError", "ResourceLimitError")), "")

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks) and (
            self.resume is None or self.resume.get("passed", False))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def _notes(self) -> list[str]:
        """The lines under the table: devices, precision, sandbox, allowed ops, errors, drifts, resume."""
        devices = {c.device: c.device_name for c in self.checks if c.device}
        notes = [f"  devices: {', '.join(f'{d} = {n}' for d, n in devices.items())}"] if devices else []
        precisions = sorted({c.precision for c in self.checks if c.precision})
        if precisions:
            ran = sorted({f"{c.format} ran at {c.ran_at} (its runtime's inference precision)" for c in self.checks
                          if c.ran_at})
            notes.append(f"  precision: {', '.join(precisions)}" + (f"; {', '.join(ran)}" if ran else ""))
        notes += [f"  sandbox ({backend}): {status}" for backend, status in self.sandbox.items()]
        imported = {name: version for c in self.checks for name, version in c.packages.items()}
        if imported:
            notes.append("  imported for the model's classes (allowlisted): "
                         + ", ".join(f"{name} {version}" for name, version in sorted(imported.items())))
        if self.allowed_ops:
            notes.append(f"  SavedModel ops allowed by the caller beyond the inference allowlist: {self.allowed_ops}")
        if any(c.tolerance_source == "override" for c in self.checks):
            notes.append("  * tolerance given by the caller (rtol/atol), not the table")
        notes += [f"  {c.format}: {c.error}" for c in self.checks if c.error]
        notes += [f"  {c.format}: output {o['name']!r}: {_output_text(o)}" for c in self.checks for o in c.outputs
                  if not o["passed"]]
        notes += [line for c in self.checks if c.quantization for line in _quantization_text(c)]
        notes += [f"  {c.format}: {c.explanation['summary']}" for c in self.checks if c.explanation]
        notes += [_calibration_text(c.format, name, n) for c in self.checks for name, n in (c.calibration or {}).items()]
        notes += [f"  {c.format}: reproduction kit {c.repro} (python {c.repro}/reproduce.py runs it without kerasio)"
                  if not c.repro.startswith("not written") else f"  {c.format}: reproduction kit {c.repro}"
                  for c in self.checks if c.repro]
        shapes = next((c.shapes for c in self.checks if c.shapes), [])
        if shapes:
            notes.append(f"  shapes checked: {', '.join(shapes)}")
        chosen = sorted({f"{c.format} {o['name']}: {o['statistic']}" for c in self.checks for o in c.outputs
                         if o.get("statistic", "elementwise") != "elementwise"})
        notes.append("  statistic: " + (", ".join(chosen) + "; the others elementwise" if chosen else
                                        "elementwise (every element within atol + rtol * |reference|)"))
        if any(c.outputs for c in self.checks):
            notes.append("  Needs: the smallest atol that would have passed (rtol kept); ULP: units in the last "
                         "place of the reference's float type")
        notes += [f"  {c.format} on {c.device}: TF32 (fast-math) drift {c.tf32_drift:.2e} (information only)"
                  for c in self.checks if c.tf32_drift is not None]
        notes += [f"  {c.format}: CPU vs GPU drift {c.device_drift:.2e}" for c in self.checks if c.device_drift is not None]
        if self.resume is not None:
            r = self.resume
            notes.append(f"  resume: {'PASS' if r.get('passed') else 'FAIL'} - {r.get('detail', '')}")
        return notes

    def _repr_html_(self) -> str:
        rows = [[c.format, c.artifact, c.backend, c.device, _sci(c.max_abs_diff), _sci(c.max_rel_diff),
                 _ulp_text(c), _argmax_text(c), _tolerance_text(c), _needs_text(c), len(c.shapes), c.status]
                for c in self.checks]
        notes = "".join(f"<li>{escape(n.strip())}</li>" for n in self._notes())
        verdict = html_status("PASS" if self.ok else "FAIL")
        return (f'{STYLE}<div class="kerasio"><h4>Verification of {escape(self.bundle)}: {verdict} '
                f"({sum(c.passed for c in self.checks)} of {len(self.checks)} checks, {escape(self.mode)})</h4>"
                + table(["Format", "Artifact", "Backend", "Device", "Max abs diff", "Max rel diff", "Max ULP",
                         "Argmax agree", "atol/rtol", "Would pass at", "Shapes", "Result"], rows, status_column=11)
                + "<h5>Error statistics, per output, over every shape checked</h5>"
                + table(list(_STAT_HEAD), self._stat_rows()) + self._gates_html()
                + (f'<ul class="note">{notes}</ul>' if notes else "") + "</div>")

    def _gates_html(self) -> str:
        """The quantized checks' gates, one row each: metric, value, rule, PASS/FAIL (none: '')."""
        rows = [[c.format, g["metric"], value_text(g["metric"], g["value"]), g["rule"],
                 "-" if g["passed"] is None else "PASS" if g["passed"] else "FAIL"]
                for c in self.checks if c.quantization for g in c.quantization["gates"]]
        if not rows:
            return ""
        return "<h5>Quantized artifacts against the float model: gates</h5>" + \
            table(["Format", "Gate", "Value", "Rule", "Result"], rows, status_column=4)

    def _stat_rows(self) -> list[list[Any]]:
        """One row per check and float output: the error statistics a reviewer reads a verdict from."""
        rows = []
        for c in self.checks:
            for o in c.outputs:
                if o.get("max_abs_diff") is None:
                    continue
                rows.append([c.format if len({x.device for x in self.checks}) < 2 else f"{c.format}/{c.device}",
                             o["name"], _sci(o.get("mean_abs_diff")), _sci(o.get("median_abs_diff")),
                             _sci(o.get("p99_abs_diff")), _sci(o.get("mean_rel_diff")), _sci(o.get("p99_rel_diff")),
                             f"{o.get('nan', 0)}/{o.get('inf', 0)}"])
        return rows

    def table(self, width: int = 100) -> str:
        """The checks as a text table, the per-output error statistics below, then notes; at most ``width`` wide."""

        several = len({c.device for c in self.checks if c.device}) > 1
        rows = []
        for c in self.checks:
            rows.append([
                c.format, f"{c.backend}/{c.device}" if several and c.device else c.backend,
                _sci(c.max_abs_diff), _sci(c.max_rel_diff), _ulp_text(c), _argmax_text(c),
                _tolerance_text(c) + ("*" if c.tolerance_source == "override" else ""), _needs_text(c), c.status,
            ])
        text = render_table(["Format", "Runtime", "Max abs", "Max rel", "ULP", "Argmax", "atol/rtol", "Needs",
                             "Result"], rows, width=width)
        stats = self._stat_rows()
        if stats:
            text += "\n" + render_table(list(_STAT_HEAD), stats, width=width)
        notes = self._notes()
        return text + ("\n" + "\n".join(wrap_notes(notes, width=width)) if notes else "")

    def explanations(self, width: int = 100, around: int = 3) -> str:
        """Each explained check's layers as a table: every layer up to the first diverging one and ``around``
        after it (a long model's agreeing tail is counted, not listed); '' when nothing was explained."""
        parts = []
        for c in self.checks:
            ex = c.explanation or {}
            layers = ex.get("layers") or []
            if not layers:
                continue
            first = next((i for i, v in enumerate(layers) if v["status"] == "diverge"), None)
            shown = layers if first is None else layers[:first + 1 + around]
            rows = [[v["layer"], v["layer_class"], "x".join(map(str, v["shape"])), v["status"],
                     _sci(v.get("max_abs_diff")), _sci(v.get("mean_abs_diff"))] for v in shown]
            head = f"Layers of {c.format} ({ex['method']}, on the {ex['inputs']}, atol {_short(ex['atol'])}, " \
                   f"rtol {_short(ex['rtol'])})"
            text = render_table(["Layer", "Class", "Output", "Status", "Max abs", "Mean abs"], rows, width=width)
            more = f"\n  ... {len(layers) - len(shown)} more layers" if len(shown) < len(layers) else ""
            parts.append(f"{head}\n{text}{more}")
        return "\n".join(parts)

    __str__ = table

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": self.bundle, "ok": self.ok, "mode": self.mode, "allowed_ops": self.allowed_ops,
                "sandbox": self.sandbox,
                "checks": [asdict(c) | {"status": c.status} for c in self.checks], "resume": self.resume}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame([asdict(c) | {"status": c.status} for c in self.checks])

    def failure_text(self) -> str:
        """One line naming each failing artifact and output with its diff and tolerance (empty when all pass)."""
        parts = [_failure_text(c) for c in self.failures()]
        if self.resume is not None and not self.resume.get("passed"):
            parts.append(f"{self.bundle}: resume check failed: {self.resume.get('detail')}")
        return "; ".join(parts)

    def raise_for_failure(self) -> "VerifyReport":
        """Raise :class:`VerificationError` naming each failing artifact; else return self."""
        if not self.ok:
            raise VerificationError(self.failure_text() or f"{self.bundle}: nothing was verified", report=self)
        return self


def _output_text(o: dict[str, Any]) -> str:
    """Why one output failed: its own finding (a shape, a NaN), else how far outside the tolerance, and where."""
    where = f" (on {', '.join(o['failed_shapes'])})" if o.get("failed_shapes") else ""
    if o.get("detail"):
        return o["detail"] + where
    text = f"{o['mismatches']} values outside the tolerance{where}, max abs diff {_sci(o['max_abs_diff'])}"
    if o.get("required_atol") is not None:
        text += f", would pass at atol {_sci(o['required_atol'])}"
    if o.get("argmax_agreement") is not None:
        text += f", argmax agreement {o['argmax_agreement']:.1%}"
    return text


def _failure_text(c: Check) -> str:
    if c.error:
        return f"{c.artifact} ({c.format}): {c.error}"
    if c.quantization and all(o["passed"] for o in c.outputs):
        failed = [g for g in c.quantization["gates"] if g["passed"] is False]
        return (f"{c.artifact} ({c.format}, {c.backend}, {c.device}): quantized below its gates: " + "; ".join(
            f"{g['metric']} {value_text(g['metric'], g['value'])} ({g['rule']})" for g in failed))
    bad = [o for o in c.outputs if not o["passed"]]
    where = ", ".join(f"output {o['name']!r} {_output_text(o)}" for o in bad)
    return (f"{c.artifact} ({c.format}, {c.backend}, {c.device}): {where}; tolerance atol {_sci(c.atol)}, "
            f"rtol {_sci(c.rtol)}")


def last_report(bundle: str | Path) -> dict[str, Any] | None:
    """``<bundle>/verification.json`` (not hashed: a report, not evidence) if it is a sane report, else ``None``."""

    path = Path(bundle) / VERIFICATION_FILE
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_MANIFEST_BYTES:
            return None
        last = json.loads(path.read_text(encoding="utf-8"))
        check_depth(last)
        checks = last.get("checks") if isinstance(last, dict) else None
        if not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks):
            return None
        for c in checks:
            if not isinstance(c.get("max_abs_diff"), (int, float, type(None))):
                return None
        return last
    except (OSError, ValueError, RecursionError, KerasioError):
        return None


def _tell(progress: Callable[[str], None] | None, c: Check) -> None:
    """One line per check as it completes, for a live display."""
    if progress is not None:
        detail = f"max abs diff {_sci(c.max_abs_diff)}" if not c.error else c.error.split(". ")[0][:60]
        progress(f"{c.format:<10} checked: {c.status} on {c.device or '-'}, {detail}")


_STAT_HEAD = ("Format", "Output", "abs mean", "abs med", "abs p99", "rel mean", "rel p99", "NaN/Inf")


def _ulp_text(c: Check) -> str:
    ulps = [o["max_ulp"] for o in c.outputs if o.get("max_ulp") is not None]
    return str(max(ulps)) if ulps else "-"


def _needs_text(c: Check) -> str:
    """The smallest atol that would have passed every output (with the row's rtol kept): ``Needs`` in the table."""
    needed = [o["required_atol"] for o in c.outputs if o.get("required_atol") is not None]
    return _sci(max(needed)) if needed else "-"


def _tolerance_text(c: Check) -> str:
    if c.tolerance_source == "gates":
        return "gates"
    return "exact" if c.atol == 0 and c.rtol == 0 else f"{_short(c.atol)}/{_short(c.rtol)}"


def _quantization_text(c: Check) -> list[str]:
    """A quantized check in a few lines: its scheme, each gate with its value, the distortion and the decisions."""
    q = c.quantization or {}
    lines = [f"  {c.format} ({q.get('scheme')}): gates "
             + "; ".join(f"{g['metric']} {value_text(g['metric'], g['value'])} ({g['rule']}: "
                         f"{'not applied: no labels' if g['passed'] is None else 'PASS' if g['passed'] else 'FAIL'})"
                         for g in q.get("gates", []))]
    for name, o in (q.get("outputs") or {}).items():
        kl = f", KL {o['kl']:.2e}" if "kl" in o else ""
        lines.append(f"  {c.format} {name!r}: MSE {o['mse']:.2e}, SNR {o['snr_db']:.1f} dB, cosine {o['cosine']:.5f}"
                     + kl)
    d = q.get("decisions")
    if d:
        changes = f", top-{d['top_k']} set changed on {d['top_k_set_changes']}" if "top_k" in d else ""
        where = "none" if not d["flips"] else ("only near ties" if d["flips_near_ties_only"] else "not only near ties")
        largest = "" if d["largest_flipped_margin"] is None else f", largest flipped {d['largest_flipped_margin']:.3f}"
        lines.append(f"  {c.format} decisions: {d['flips']} of {d['rows']} rows flip ({where}: float top-2 margin "
                     f"<= {d['near_tie']:g}{largest}){changes}"
                     + (f"; accuracy {d['accuracy']:.4f} against the float model's {d['float_accuracy']:.4f}"
                        if "accuracy" in d else ""))
    return lines


def _argmax_text(c: Check) -> str:
    return "-" if c.argmax_agreement is None else f"{c.argmax_agreement:.1%}"


def _short(v: float | None) -> str:
    """A tolerance in few characters: 1e-05 -> 1e-5, 0.0001 -> 1e-4, 0 -> 0."""
    if v is None:
        return "-"
    if v == 0:
        return "0"
    mantissa, exponent = f"{v:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _sci(v: float | None) -> str:
    return "-" if v is None else ("0" if v == 0 else f"{v:.2e}")


def verify(
    bundle: str | Path,
    *,
    formats: str | Sequence[str] | None = None,
    options: VerifyOptions | None = None,
    in_process: bool = False,
    trust: bool = False,
    session: Session | None = None,
    public_key: str | Path | None = None,
    record: bool = True,
    progress: Callable[[str], None] | None = None,
) -> VerifyReport:
    """Reload every artifact of a bundle and compare each of its outputs with the reference.

    Args:
        bundle: a bundle directory written by :func:`kerasio.export`.
        formats: only these formats (default: every artifact in the manifest).
        options: how to verify (:class:`~kerasio.VerifyOptions`: device, backend, precision, tolerances,
            imports, allowed ops, limits).
        in_process: load in this interpreter instead of a fresh one (``options.mode = "in-process"``): faster,
            but a custom class registered here could hide a broken artifact. Only for a bundle that is yours
            (:mod:`kerasio.bundle.trust`: exported here, signed by ``public_key``, or ``trust=True``).
        trust: you vouch for the bundle: it may be verified in this process, and its pickle loaded.
        session: a :class:`~kerasio.Session` started earlier (or ``options.session``); it stays open. A bundle
            that is not yours is still checked in a sandboxed worker of its own, stopped when this returns.
        public_key: require a valid signature of the manifest by this key (``kerasio sign``) before anything
            else is read; :class:`~kerasio.errors.SignatureError` otherwise.
        record: write the report to ``<bundle>/verification.json``.
        progress: called with one line per check as it completes (a live display).

    Returns:
        A :class:`VerifyReport`; call ``.raise_for_failure()`` to assert.

    Example:
        >>> report = verify("saved_models/seed")  # doctest: +SKIP
        >>> report.ok  # doctest: +SKIP
        True
    """
    options = in_mode(options, in_process)
    bundle = Path(bundle)
    if options.repro_dir is None and record:  # a failing check's kit goes next to the report
        options = replace(options, repro_dir=bundle / "repro")
    with contextlib.ExitStack() as pins:  # the generation it reads stays pinned until the report is done
        manifest = read_pinned(bundle, pins, public_key)
        references = _references(bundle, manifest)  # bounded and checked: a lying array is refused first
        if options.in_process and not trusted(manifest, trust=trust, public_key=public_key):
            raise UnsafeArtifactError(
                f"{bundle}: verifying in this process runs the bundle's artifacts here, and this bundle is not yours "
                "(kerasio did not export it under this account, and no public key vouches for it). Verify it in the "
                "sandboxed worker (drop in_process / --in-process), or pass trust=True (--trust) if you vouch for it. "
                "Received: in_process=True")
        report = _verify(bundle, manifest, references, formats, options, trust=trust,
                         session=session or options.session, staged=False, progress=progress)
        if record:
            with contextlib.suppress(OSError):
                write_text_atomic(bundle / VERIFICATION_FILE, report.to_json(indent=2))
        return report


def verify_staged(stage: Path, manifest: Manifest, options: VerifyOptions, *, shown: Path, trust: bool,
                  session: Session, progress: Callable[[str], None] | None = None) -> VerifyReport:
    """An export's check of its staged bundle, before anything is published (the report names ``shown``).

    The staged files are the caller's own, written and hashed a moment ago:
    they are checked in the session's shared workers (where export already sent
    each check as its artifact was written), without hashing them again.
    """
    return _verify(stage, manifest, _references(stage, manifest), None, options, trust=trust, session=session,
                   staged=True, progress=progress, shown=shown)


Sweep = list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]
References = tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray], Sweep, "np.ndarray | None"]


def _references(bundle: Path, manifest: Manifest) -> References:
    """The reference inputs, outputs, 1-row outputs, sweep and labels, each array's header checked before it is
    read."""
    x_ref, y_ref = manifest.reference_arrays(bundle)
    return (x_ref, y_ref, manifest.reference_one_row(bundle), manifest.reference_sweep(bundle),
            manifest.reference_labels(bundle))


def _verify(bundle: Path, manifest: Manifest, references: References, formats: str | Sequence[str] | None,
            options: VerifyOptions, *, trust: bool, session: Session | None, staged: bool,
            progress: Callable[[str], None] | None, shown: Path | None = None) -> VerifyReport:
    x_ref, y_ref, y_one, sweep, labels = references
    wanted = None
    if formats:
        wanted = [formats] if isinstance(formats, str) else list(formats)
        wanted = [w for part in wanted for w in part.split(",")]
        for name in wanted:
            manifest.artifact(name)  # clear error for a format the bundle lacks
    arts = [a for a in manifest.artifacts if wanted is None or a.format in wanted]
    imports = (*options.imports, *importable_custom_modules(manifest.custom_objects),
               *plugin_modules(a.format for a in arts))
    report = VerifyReport(bundle=str(shown or bundle), mode=options.mode, allowed_ops=sorted(set(options.allow_ops)))
    requested = options.backend or default_backend()
    rows = len(next(iter(x_ref.values())))
    iospec = manifest.iospec.to_dict()
    with tempfile.TemporaryDirectory(prefix=f"kerasio-verify-{os.getpid()}-ref-") as tmp, \
            contextlib.ExitStack() as stack:
        if session is None:
            session = stack.enter_context(Session())
        if not staged:  # this call's sandboxed workers never outlive it, nor see another bundle
            stack.callback(session.end, [tmp])
        inputs = Path(tmp) / "inputs.npz"
        save_arrays(inputs, x_ref)
        sweep_inputs = Path(tmp) / "sweep.npz"
        save_arrays(sweep_inputs, {f"{i}/{k}": v for i, (_, x, _) in enumerate(sweep) for k, v in x.items()})
        bounds = (options.limits or Limits.from_env()).resolved(max((a.size for a in arts), default=0))

        cases = {"reference batch": x_ref, "batch 1": {k: v[:1] for k, v in x_ref.items()},
                 **{name: x for name, x, _ in sweep}}
        originals: dict[str, Path] = {}

        def original() -> Path:
            """The bundle's ``.keras`` file, the original an explanation compares layers with (a checked copy)."""
            if "keras" not in originals:
                art = manifest.artifact("keras")
                originals["keras"] = bundle / art.path if staged else \
                    art.materialize(bundle, Path(tmp) / "original-keras")
            return originals["keras"]

        def explain(c: Check, art: Artifact, path: Path) -> dict[str, Any]:
            """The first layer where the artifact at ``path`` leaves the original, on the input ``c`` failed on.

            The ``explain`` job runs where the check ran (the sandboxed worker, for a bundle that is not yours),
            on TensorFlow for a converted graph, at most :data:`EXPLAIN_ROWS` rows.
            """
            why = _unexplainable(art, manifest, report)
            if why:
                return {"summary": f"no layer-by-layer explanation: {why}"}
            case = _failing_case(c)
            inputs = Path(tmp) / f"explain-{len(report.checks)}-{art.format}.npz"
            save_arrays(inputs, {k: v[:EXPLAIN_ROWS] for k, v in cases.get(case, x_ref).items()})
            fmt = get_format(art.format)
            backend = "tensorflow" if fmt.runtime != "keras" else c.backend
            request = JobRequest("explain", {
                "original": str(original()), "artifact": str(path), "format": art.format, "iospec": iospec,
                "inputs": str(inputs), "case": case, "atol": c.atol or 0.0, "rtol": c.rtol or 0.0,
                "method": options.explain_method, "device": c.device or "cpu", "trust": trust,
                "allow_ops": list(options.allow_ops)})
            try:
                if options.in_process and backend == keras_backend():
                    reply = answer(request, Path(tmp))
                    if not reply.ok:
                        raise answer_error(reply)
                    return dict(reply.value)
                return dict(worker_for(backend).call(request))
            except KerasioError as exc:
                return {"summary": f"no layer-by-layer explanation: {' '.join(str(exc).split())[:300]}"}

        expected = {"reference batch": y_ref, "batch 1": y_one, **{name: y for name, _, y in sweep}}

        def kit(c: Check, art: Artifact, path: Path, actual: dict[str, dict[str, np.ndarray]]) -> None:
            """Write ``c``'s reproduction kit (:mod:`kerasio.repro`) on the input it first failed on."""
            case = next(iter(c.rejected_shapes)) if c.rejected_shapes else _failing_case(c)
            try:
                where = write_kit(Path(options.repro_dir or ""), check=asdict(c), iospec=manifest.iospec,
                                  artifact=path, shown=bundle / art.path, case=case, inputs=cases[case],
                                  expected=expected[case], actual=actual.get(case), imports=imports)
                c.repro = str(where)
            except (OSError, KerasioError) as exc:
                c.repro = f"not written: {exc}"

        def worker_for(child_backend: str) -> Worker:
            if staged:
                return session.start(child_backend)
            # Artifacts of an existing bundle are not the caller's own: the worker reads only their checked
            # copies (in tmp), writes only its own directory and runs under limits sized for the largest artifact.
            return session.sandboxed(child_backend, [tmp], limits=bounds, device=options.device, imports=imports)

        for art in arts:
            fmt = get_format(art.format)
            start = time.perf_counter()
            child_backend = fmt.worker_backend(requested)
            worker: Worker | None = None
            try:
                if not _importable(child_backend):  # a Keras backend's name is its module's
                    raise BackendUnavailableError(
                        f"verifying the {fmt.name} artifact needs {child_backend}, which cannot be imported here. "
                        f"Install it (pip install {child_backend}) or verify the other formats (--format keras). "
                        f"Received: backend={child_backend!r}"
                    )
                if fmt.runtime == "keras" and not options.in_process:
                    _refuse_main_classes(manifest, art)
                # The worker loads a private copy made from the very reads that were hashed.
                path = bundle / art.path if staged else \
                    art.materialize(bundle, Path(tmp) / f"artifact-{len(report.checks)}-{art.format}")
                request = check_request(art.format, path, iospec, inputs, options, trust=trust, imports=imports,
                                        sweep=(sweep_inputs, len(sweep)))
                if options.in_process and child_backend == keras_backend():
                    report.sandbox.setdefault(child_backend, "off: in-process verification")
                    reply = answer(request, Path(tmp))
                    if not reply.ok:
                        raise answer_error(reply, copy=path, shown=bundle / art.path)
                    results = [CheckResult(**r) for r in reply.value]
                else:
                    pending = session.pending(path) if staged else None
                    if pending is None:
                        worker = worker_for(child_backend)
                        pending = session.submit(worker, request, shown=bundle / art.path)
                    worker = pending.worker
                    report.sandbox.setdefault(child_backend, worker.sandbox_status)
                    results = pending.result()
                    session.pending(path)  # collected: no longer waiting on that worker
                judged = _judge(manifest, art, results, (y_ref, y_one, sweep, labels), start, options)
                for c, actual in judged:  # a quantized check fails on its gates, not on elementwise values
                    if not c.quantization and (options.explain or (options.explain is None and not staged
                                                                   and _fails_on_values(c))):
                        c.explanation = explain(c, art, path)
                    if options.repro_dir is not None and not staged and not c.quantization and \
                            (_fails_on_values(c) or c.rejected_shapes):
                        kit(c, art, path, actual)
                    report.checks.append(c)
                    _tell(progress, c)
                if worker is not None and art.size > FRESH_WORKER_ABOVE and not session.has_pending(worker):
                    session.discard(worker)  # its allocators keep what it freed: the next large artifact starts clean
            except KerasioError as exc:
                report.checks.append(Check(artifact=art.path, format=art.format, rows=rows, error=str(exc),
                                           error_type=type(exc).__name__, backend=child_backend,
                                           seconds=time.perf_counter() - start))
                _tell(progress, report.checks[-1])
                if worker is not None and isinstance(exc, (WorkerError, ResourceLimitError)):
                    session.discard(worker)  # the next check starts a new worker
    return report


def _judge(manifest: Manifest, art: Artifact, results: list[CheckResult],
           expected: tuple[dict[str, np.ndarray], dict[str, np.ndarray], Sweep, np.ndarray | None], start: float,
           options: VerifyOptions) -> list[tuple[Check, dict[str, dict[str, np.ndarray]]]]:
    """Each device's outputs against the reference at every shape checked, output by output, under its row.

    A quantized artifact's statistics are reported the same way, but its verdict is its gates
    (:mod:`kerasio.spec.quantization`): NaN, infinities or another shape still fail it.
    Returns each device's check with the artifact's outputs at each shape it ran (by shape name), for the kit.
    """
    iospec = manifest.iospec
    reference, reference_one, sweep, labels = expected
    quantized = get_format(art.format).quantized
    rtol, atol = options.rtol, options.atol
    checks = []
    outputs: dict[str, dict[str, np.ndarray]] = {}
    same_cpu = bool(manifest.cpu_features) and manifest.cpu_features == cpu_features()
    for res in results:
        full = load_arrays(Path(res.outputs + "-full.npz"), iospec.output_names)
        errors = dict(res.sweep_errors or {})
        one_error = errors.pop("one", None)
        one = {} if one_error else load_arrays(Path(res.outputs + "-one.npz"), iospec.output_names)
        ran = [i for i in range(len(sweep)) if str(i) not in errors]
        swept = load_arrays(Path(res.outputs + "-sweep.npz"),
                            [f"{i}/{n}" for i in ran for n in iospec.output_names]) if sweep else {}
        outputs[res.device] = full
        actual = {"reference batch": full, **({"batch 1": one} if one else {}),
                  **{sweep[i][0]: {n: swept[f"{i}/{n}"] for n in iospec.output_names} for i in ran}}
        per_output, rows_used = [], []
        for s in iospec.outputs:
            row = tolerance_for(art.format, res.backend, res.device, iospec.compute, res.precision,
                                exported_by=manifest.backend or "tensorflow", exported_on=manifest.device or "cpu",
                                same_cpu=same_cpu, extra=get_format(art.format).tolerances, output=s.name)
            rows_used.append(row)
            cases = [("reference batch", reference[s.name], full[s.name])]
            cases += [("batch 1", reference_one[s.name], one[s.name])] if one else []
            cases += [(sweep[i][0], sweep[i][2][s.name], swept[f"{i}/{s.name}"]) for i in ran]
            per_output.append(compare_cases(  # a quantized output's error is by design: only its gates judge it
                s.name, cases, atol=float("inf") if quantized else row.atol if atol is None else float(atol),
                rtol=row.rtol if rtol is None else float(rtol), probabilities=s.probabilities and not quantized,
                statistic=options.statistic_for(s.name) or row.statistic))
        tol = rows_used[0] if rows_used else tolerance_for(art.format, res.backend, res.device, iospec.compute)
        use_atol = tol.atol if atol is None else float(atol)
        use_rtol = tol.rtol if rtol is None else float(rtol)
        floats = [o for o in per_output if o.max_abs_diff is not None]
        agreements = [o.argmax_agreement for o in per_output if o.argmax_agreement is not None]
        rejected = {"batch 1": one_error} if one_error else {}
        rejected.update({sweep[int(i)][0]: text for i, text in errors.items() if i.isdigit() and int(i) < len(sweep)})
        check = Check(
            artifact=art.path, format=art.format, runtime=res.runtime, backend=res.backend,
            device=res.device, device_name=res.device_name, precision=res.precision,
            rows=len(next(iter(reference.values()))),
            max_abs_diff=max((o.max_abs_diff or 0.0 for o in floats), default=None),
            max_rel_diff=max((o.max_rel_diff or 0.0 for o in floats), default=None),
            argmax_agreement=min(agreements) if agreements else None, atol=use_atol, rtol=use_rtol,
            tolerance_source="table" if rtol is None and atol is None else "override",
            tolerance_reason=tol.reason if rtol is None and atol is None else "given by the caller",
            outputs=[o.to_dict() for o in per_output], passed=all(o.passed for o in per_output) and not rejected,
            seconds=time.perf_counter() - start, packages=dict(res.packages or {}),
            shapes=[f"reference batch {len(next(iter(reference.values())))}", "batch 1", *(n for n, _, _ in sweep)],
            rejected_shapes=rejected, ran_at=res.ran_at,
        )
        if rejected:
            check.error = "refused input shapes the original model accepts: " + "; ".join(
                f"{name} ({text})" for name, text in rejected.items())
        if quantized:
            measured = figures(reference, full, probabilities=[s.name for s in iospec.outputs if s.probabilities],
                               decision=manifest.task.output if manifest.task.is_classification else None,
                               labels=labels)
            gated = judge(measured, gates_for(manifest.task.kind, options.gates))
            check.quantization = {"scheme": quantized, **measured, "gates": gated, "labels": labels is not None}
            check.passed = check.passed and all(g["passed"] is not False for g in gated)
            check.atol, check.tolerance_source = None, "gates"
            check.tolerance_reason = "a quantized artifact is judged by its gates against the float model"
        if res.noise:  # --calibrate: does each output's row fit the noise measured on this device?
            check.calibration = {}
            for name, n in res.noise.items():
                row = rows_used[iospec.output_names.index(name)]
                a, r = (row.atol if atol is None else float(atol)), (row.rtol if rtol is None else float(rtol))
                check.calibration[name] = {**n, "atol": a, "rtol": r, "flag": judge_noise(n, a, r)}
        if res.fast_outputs:
            fast = load_arrays(Path(res.fast_outputs + "-full.npz"), iospec.output_names)
            check.tf32_drift = _max_float_diff(reference, fast)
        checks.append((check, actual))
    if "cpu" in outputs and "gpu" in outputs:
        drift = _max_float_diff(outputs["cpu"], outputs["gpu"])
        for c, _ in checks:
            c.device_drift = drift
    return checks


EXPLAIN_ROWS = 64  # an explanation runs at most this many rows of the failing input through every layer
# An artifact this large is checked by a worker of its own: a process keeps the memory it freed (its allocators'
# pools), so a second large artifact in the same worker would add to the first (8.5 GB against 4.8 GB at most,
# for four artifacts of a 2.2 GB model).
FRESH_WORKER_ABOVE = 1 << 30


def _fails_on_values(c: Check) -> bool:
    """A check that ran and disagrees on some output's values (not one that could not run, or refused a shape)."""
    return not c.passed and not c.error and any(not o["passed"] and o.get("max_abs_diff") is not None
                                                for o in c.outputs)


def _unexplainable(art: Artifact, manifest: Manifest, report: VerifyReport) -> str:
    """Why ``art`` cannot be explained layer by layer here ('' when it can): its original must be a sound .keras."""
    if art.format == "keras":
        return "the .keras file is the original that the other formats' layers are compared with"
    if not any(a.format == "keras" for a in manifest.artifacts):
        return "the bundle has no .keras file to stand for the original model (export it with the keras format)"
    if any(k.format == "keras" and not k.passed for k in report.checks):
        return "the bundle's .keras file fails its own check, so it cannot stand for the original"
    return ""


def _calibration_text(fmt: str, output: str, n: dict[str, Any]) -> str:
    ulp = "no float input to move" if n.get("ulp") is None else f"one-ulp input change {_sci(n['ulp'])}"
    verdict = f"tolerance row {n['flag']}" if n.get("flag") else f"tolerance atol {_short(n['atol'])}, rtol " \
                                                                   f"{_short(n['rtol'])} fits it"
    return f"  calibration {fmt} {output!r}: noise: repeat {_sci(n.get('repeat'))}, {ulp}; {verdict}"


def _failing_case(c: Check) -> str:
    """The input shape a check first failed on (the reference batch when no shape is named)."""
    failing = next((o for o in c.outputs if not o["passed"] and o.get("failed_shapes")), None)
    return failing["failed_shapes"][0] if failing else "reference batch"


def _max_float_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    diffs = [float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)), initial=0.0))
             for k in a if a[k].dtype.kind == "f" and a[k].shape == b[k].shape]
    return max(diffs, default=0.0)


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _refuse_main_classes(manifest: Manifest, art: Artifact) -> None:
    """A class defined in ``__main__`` (a script or notebook) cannot be imported by a fresh process."""
    local = [c["class"] for c in manifest.custom_objects if c.get("module") == "__main__"]
    if local:
        raise KerasioError(
            f"{art.path}: custom class(es) {local} were defined in __main__ (a script or a notebook cell), which "
            "a fresh verifying process cannot import, so it cannot rebuild the model. Move them to a module and "
            "pass VerifyOptions(imports=['that_module']) (CLI: --import MODULE), or verify in this "
            f"process with in_process=True (CLI: --in-process). Received: module='__main__' for {local}"
        )


def check_request(fmt: str, path: Path, iospec: dict[str, Any], inputs: Path, options: VerifyOptions, *,
                  trust: bool, imports: Sequence[str], sweep: tuple[Path, int] | None = None) -> CheckRequest:
    """The worker request that checks one artifact under ``options`` (export sends the same one early).

    ``sweep``: the sweep's inputs (an ``.npz`` keyed ``<i>/<input>``) and how many shapes it holds.
    """
    return CheckRequest(fmt, str(path), iospec, str(inputs), device=options.device, precision=options.precision,
                        trust=trust, imports=tuple(imports), allow_ops=tuple(options.allow_ops),
                        calibrate=options.calibrate,
                        sweep=str(sweep[0]) if sweep and sweep[1] else "", sweep_shapes=sweep[1] if sweep else 0)


def plugin_modules(formats: Iterable[str]) -> list[str]:
    """Modules of plug-in formats (registered from outside kerasio) that this process has imported.

    A fresh worker imports them too, as it imports custom layers' modules: a
    format is one module, and the worker learns of it only by importing it.
    """
    modules = {type(get_format(name)).__module__ for name in formats}
    return sorted(m for m in modules if not m.startswith("kerasio.") and m in sys.modules)


def importable_custom_modules(custom_objects: Sequence[Mapping[str, Any]]) -> list[str]:
    """Modules of custom classes that this process has already imported (the exporter's).

    A fresh verifier imports only these, never a module merely named in a
    file: the manifest is data, not an instruction to run code.
    """
    return sorted({c["module"] for c in custom_objects
                   if c.get("module") in sys.modules and c["module"] != "__main__"})
