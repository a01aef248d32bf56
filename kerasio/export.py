"""Stage 4: write a bundle (every format that can carry the model + manifest), crash-safely.

Everything is first written into a hidden staging directory inside the
bundle, hashed and (optionally) verified there; :func:`kerasio.bundle.publish.commit`
then publishes it as a new generation with one atomic swap of the manifest. An
interrupted or failed export leaves the existing bundle as it was. SavedModel
versions are never overwritten.
"""
from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kerasio.backends.base import available_devices, device_name, keras_forward, outputs_from_run, precision_policy
from kerasio.backends.environment import cpu_features, default_backend, keras_backend, quiet_framework_logs
from kerasio.bundle.arrays import save_arrays
from kerasio.bundle.audit.keras import variables_bytes
from kerasio.bundle.audit.packages import is_keras_module, named_packages
from kerasio.bundle.fsutil import (
    bundle_lock,
    clean_stale,
    hash_artifact,
    staging_dir,
    writable_error,
    write_text_atomic,
)
from kerasio.bundle.layout import MANIFEST_NAME, OPTIONAL_REFERENCE_FILES, REFERENCE_FILES, flat_name
from kerasio.bundle.manifest import Artifact, Manifest, hash_entry, library_versions
from kerasio.bundle.publish import commit, crash_point, repair
from kerasio.errors import (
    ArtifactError,
    InputError,
    KerasioError,
    LegacyFormatWarning,
    UnsafeArtifactError,
    UnsupportedFormatError,
    VerificationError,
)
from kerasio.formats import REGISTRY, ExportContext, Format, explicit, resolve_formats
from kerasio.loading import load_model_file
from kerasio.options import BundleInfo, VerifyOptions, check_format_options, verify_options
from kerasio.present.html import STYLE, escape, table
from kerasio.present.text import first_error_line, render_table, wrap_notes
from kerasio.process.session import Session
from kerasio.spec.iospec import IOSpec, _all_layers, derive_iospec, mark_probabilities
from kerasio.spec.quantization import value_text
from kerasio.spec.sweep import sweep_shapes
from kerasio.spec.synth import SyntheticInputs, dominant_class, hints_from_model, synthesize
from kerasio.spec.task import resolve_task
from kerasio.verify import (
    VERIFICATION_FILE,
    VerifyReport,
    check_request,
    importable_custom_modules,
    plugin_modules,
    verify_staged,
)

__all__ = ["export", "ExportResult", "choose_formats", "LARGE"]

LARGE = 1 << 30  # bytes of weights above which export writes first, then verifies, to bound its memory


class ExportResult:
    """The manifest written, how long each artifact took, what was skipped and why, and the verification."""

    def __init__(self, bundle: Path, manifest: Manifest, seconds: dict[str, float], skipped: dict[str, str],
                 report: Any = None, details: dict[str, str] | None = None):
        self.bundle, self.manifest, self.seconds, self.skipped = bundle, manifest, seconds, skipped
        self.report = report  # a VerifyReport when export(..., verify=True)
        self.details = dict(details or {})  # a skipped format's full converter or loader text (CLI: --debug)

    def table(self, width: int = 100) -> str:
        """The written artifacts as a text table, skipped formats with their reasons below, at most ``width`` wide."""

        rows = [[a.format, flat_name(a.path), _size(a.size), a.sha256[:12], f"{self.seconds.get(a.format, 0):.2f}"]
                for a in self.manifest.artifacts]
        notes = [f"  {name} skipped: {why}" for name, why in self.skipped.items()]
        notes += [f"  {line}" for line in self.manifest.synthetic_notes()]
        failing = [c for c in (self.report.failures() if self.report is not None else []) if c.quantization]
        notes += [f"  {c.format} PUBLISHED BELOW ITS GATES (named explicitly): {c.error or _gate_failures(c)}"
                  for c in failing]
        text = render_table(["Format", "Path", "Size", "sha256", "Seconds"], rows, width=width)
        return text + ("\n" + "\n".join(wrap_notes(notes, width=width)) if notes else "")

    def _repr_html_(self) -> str:
        rows = [[a.format, a.path, _size(a.size), a.sha256, f"{self.seconds.get(a.format, 0):.2f}"]
                for a in self.manifest.artifacts]
        skipped = "".join(f"<li>{escape(k)} skipped: {escape(v)}</li>" for k, v in self.skipped.items())
        verified = "" if self.report is None else self.report._repr_html_()
        return (f'{STYLE}<div class="kerasio"><h4>Exported to {escape(self.bundle)}</h4>'
                + table(["Format", "Path", "Size", "sha256", "Seconds"], rows)
                + (f'<ul class="note">{skipped}</ul>' if skipped else "") + verified + "</div>")

    def __repr__(self) -> str:
        return f"ExportResult({self.bundle}, formats={[a.format for a in self.manifest.artifacts]})"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def export(
    model: Any,
    bundle_dir: str | Path,
    *,
    reference_inputs: Any = None,
    formats: str | Sequence[str] | None = None,
    input_signature: Any = None,
    info: BundleInfo | None = None,
    verify: bool | str | VerifyOptions = False,
    trust: bool = False,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export any Keras model to ``bundle_dir`` in several formats, with a manifest.

    Args:
        model: a built Keras model: Sequential, functional (any inputs and
            outputs: images, strings, dicts, several heads) or subclassed; or the path of a model file (a
            ``.keras`` file, a legacy ``.h5``, a ``weights`` directory with its architecture), audited as an
            untrusted file (:func:`~kerasio.loading.load_model_file`) before it is built in this process.
        bundle_dir: the bundle directory (created if needed).
        reference_inputs: inputs whose outputs are stored as the verification
            reference: an array, a list (one array per input), a dict keyed by
            input name, or a DataFrame (its columns become the feature names). ``None`` (or a
            :class:`~kerasio.options.SyntheticInputs` to choose rows, seed, value ranges) makes seeded inputs
            from the signature and the layers that take each input (:mod:`kerasio.spec.synth`); the manifest
            records them as synthetic, and the export table and ``inspect`` say so.
        formats: names, comma-separated names or ``"all"``; default ``keras,savedmodel``.
            A format that cannot carry the model is skipped with its reason;
            a format named explicitly that cannot is an error.
        input_signature: explicit input specs (:class:`~kerasio.TensorSpec`) for a subclassed model
            (Keras's own name for them, as in ``model.export``).
        info: what the bundle records besides the model (:class:`~kerasio.BundleInfo`: task, feature and
            class names, label, trace, metrics, training, attachments).
        verify: verify every artifact before publishing it (``result.report``). Without it, each artifact is still
            probed in this process (reloaded, run on the reference inputs, compared against the tolerance table)
            before anything is published. Under ``formats="all"`` or the defaults, an artifact that fails its own
            round trip is not published: it is skipped with the cause in one line (``result.skipped``; the full
            text in ``result.details``). Otherwise, if any fails, raise :class:`~kerasio.errors.VerificationError`
            (its ``report`` says why) and leave the bundle as it was. ``True`` (or ``"fresh-process"``) loads
            them in a fresh interpreter started before the first artifact is written; ``"in-process"`` loads them
            here (faster, but weaker); a :class:`~kerasio.VerifyOptions` says how (tolerances, and a session started earlier).
        trust: you vouch for the formats that can run code when loaded: the pickle format is written only then.
        format_options: options of one format, by format name (``{"weights": {"max_shard_size": 2}}``); each
            format lists its own (``kerasio --help``).
        progress: called with one line per artifact as it is written, and per check as it completes.

    Returns:
        An :class:`ExportResult` whose ``manifest`` lists every artifact's hash.

    Example:
        >>> result = export(model, "saved_models/demo", reference_inputs=x_test)  # doctest: +SKIP
        >>> [a.format for a in result.manifest.artifacts]  # doctest: +SKIP
        ['keras', 'savedmodel']
    """
    checks = verify_options(verify)
    info = info or BundleInfo()
    options = check_format_options(format_options)
    bundle = Path(bundle_dir)
    lock: Any = None
    stage: Path | None = None
    with contextlib.ExitStack() as workers:
        session = checks.session if checks is not None and checks.session is not None else \
            workers.enter_context(Session())
        source: dict[str, str] = {}
        if isinstance(model, (str, Path)):  # a model file: audited as an untrusted one, then built here
            if checks is not None and not checks.in_process:
                session.start(checks.backend)  # the verifier's import overlaps the audit and the build
            model, shown, digest = load_model_file(model, trust=trust, stack=workers)
            source = {"file": str(shown), "sha256": digest}
        custom = _custom_objects(model)
        weights_bytes = variables_bytes(list(getattr(model, "weights", [])))
        # Checks go to a fresh worker as each artifact is written (a __main__ class cannot: verify says why).
        # A model over LARGE checks its artifacts after all are written, one at a time: the verifier's copy and the
        # converters' would otherwise be in memory together.
        early = checks if checks is not None and not checks.in_process and weights_bytes <= LARGE and not any(
            c.get("module") == "__main__" for c in custom) else None
        if early is not None:
            session.start(early.backend)  # started first: its import overlaps everything below
        synthetic = reference_inputs if isinstance(reference_inputs, SyntheticInputs) else \
            SyntheticInputs() if reference_inputs is None else None
        iospec = derive_iospec(model, None if synthetic else reference_inputs, input_signature=input_signature,
                               feature_names=info.feature_names)
        made: dict[str, str] = {}
        if synthetic is not None:  # made from the signature and the layers that take each input, seeded
            x_ref, made = synthesize(iospec, hints_from_model(model, iospec), synthetic)
        x_ref = iospec.coerce(x_ref if synthetic else reference_inputs, source="reference_inputs")
        if not len(next(iter(x_ref.values()))):
            raise ArtifactError(f"{bundle}: reference_inputs has no rows; pass at least one example. Received: 0 rows")
        with precision_policy("highest"):  # the references are full float32, as every check is (TF32 off on GPUs)
            forward = _reference_forward(model, iospec, x_ref)
            reference_outputs = forward(x_ref)
            reference_one_row = forward({k: v[:1] for k, v in x_ref.items()})
            sweep, sweep_refused = sweep_shapes(iospec, x_ref, forward)
        mark_probabilities(iospec, reference_outputs)
        resolved = resolve_task(info.task, iospec, info.class_names)
        described = _synthetic_record(synthetic, made, resolved, reference_outputs) if synthetic else None
        chosen, skipped = choose_formats(formats, iospec, trust=trust)
        device = "gpu" if "gpu" in available_devices() else "cpu"  # where Keras placed the model
        attachments = dict(info.attachments or {})
        taken = {Path(f.filename).name for f in REGISTRY.values()} | set(REFERENCE_FILES.values()) | {MANIFEST_NAME}
        for name in attachments:
            if not name or "/" in name or "\\" in name or name.startswith(".") or name in taken:
                raise ArtifactError(f"{bundle}: attachment name {name!r} must be a plain file name that no artifact, "
                                    f"reference file or the manifest uses. Rename it. Received: {name!r}")
        seconds: dict[str, float] = {}
        details: dict[str, str] = {}  # a skipped format's full converter or loader text (the CLI's --debug)
        try:
            bundle.mkdir(parents=True, exist_ok=True)
            lock = bundle_lock(bundle)
            lock.acquire()  # one writer at a time: each export gets its own serving/<n>, none is lost
            clean_stale(bundle)  # what killed writers left behind
            repair(bundle)  # links a killed writer had not made yet
            stage = staging_dir(bundle)
            save_arrays(stage / REFERENCE_FILES["inputs"], x_ref)
            save_arrays(stage / REFERENCE_FILES["outputs"], reference_outputs)
            save_arrays(stage / REFERENCE_FILES["outputs_1row"], reference_one_row)
            save_arrays(stage / REFERENCE_FILES["sweep_inputs"],
                        {f"{i}/{k}": v for i, (shape, _) in enumerate(sweep) for k, v in shape.inputs.items()})
            labels = _reference_labels(info, x_ref)
            if labels is not None:
                save_arrays(stage / REFERENCE_FILES["labels"], {"labels": labels})
            save_arrays(stage / REFERENCE_FILES["sweep_outputs"],
                        {f"{i}/{k}": v for i, (_, out) in enumerate(sweep) for k, v in out.items()})
            artifacts = []
            # Hash each artifact on a second thread while the next one is written
            # (hashlib and file reads release the GIL): for a 300 MB model this hides
            # most of the hashing behind the SavedModel export.
            with ThreadPoolExecutor(max_workers=1) as hasher:
                pending = []
                written: dict[str, Path] = {}  # what a later format may start from (LiteRT from the SavedModel)
                for fmt in chosen:
                    ctx = ExportContext(iospec=iospec, task=resolved, reference_inputs=x_ref,
                                        options=options.get(fmt.name, {}), written=written,
                                        weights_bytes=weights_bytes)
                    rel = fmt.relpath(bundle, ctx)
                    dest = stage / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    start = time.perf_counter()
                    try:
                        info_written = _save(fmt, model, dest, ctx, bundle, rel, session)
                    except ArtifactError as exc:
                        if explicit(formats):
                            raise
                        cause = exc.__cause__ or exc
                        # A KeyError's text is only its key ("tf.float8_e4m3fn"): say what kind of error it was.
                        full = str(cause) if isinstance(cause, (ValueError, KerasioError)) else \
                            f"{type(cause).__name__}: {cause}"
                        doing = "Keras could not write it" if fmt.runtime == "keras" else "its converter failed"
                        skipped[fmt.name] = f"{doing}: {first_error_line(full)}"
                        details[fmt.name] = full
                        if dest.is_dir():
                            shutil.rmtree(dest, ignore_errors=True)
                        else:
                            dest.unlink(missing_ok=True)
                        continue
                    seconds[fmt.name] = time.perf_counter() - start
                    if weights_bytes > LARGE:  # a converter's frozen copy of the weights sits in reference cycles
                        gc.collect()
                    written[fmt.name] = dest
                    crash_point(f"saved:{fmt.name}")
                    if progress is not None:
                        progress(f"{fmt.name:<10} wrote {flat_name(rel)} in {seconds[fmt.name]:.2f} s")
                    pending.append((fmt.name, rel, info_written, hasher.submit(hash_artifact, dest)))
                    if early is not None:  # the worker checks it while the next one is written
                        _submit_check(session, fmt, dest, stage, iospec, custom, trust, early, len(sweep))
                for name, rel, info_written, digest_size_files in pending:
                    digest, size, files = digest_size_files.result()
                    artifacts.append(Artifact(format=name, path=rel, size=size, sha256=digest, files=files,
                                              info=info_written))
            for name, given in list(attachments.items()):  # a callable is resolved now, after the artifacts
                content = given() if callable(given) else given
                if content is None:
                    del attachments[name]
                else:
                    (stage / name).write_bytes(content)
            if not artifacts:
                raise UnsupportedFormatError(
                    f"{bundle}: none of the formats could carry this model, so nothing was written: "
                    + "; ".join(f"{k}: {v}" for k, v in skipped.items()) + ". Received: formats=" + repr(formats))
            manifest = Manifest(
                iospec=iospec, task=resolved, artifacts=artifacts, skipped=skipped, versions=library_versions(),
                backend=keras_backend(), device=device, device_name=device_name(device),
                cpu_features=cpu_features(), label=info.label, trace=list(info.trace), metrics=dict(info.metrics or {}),
                training={**dict(info.training or {}), **({"exported_from": source} if source else {})},
                reference={"rows": int(len(next(iter(x_ref.values())))),
                           **{key: hash_entry(stage, name) for key, name in REFERENCE_FILES.items()
                              if key not in OPTIONAL_REFERENCE_FILES or (stage / name).is_file()},
                           "sweep": [{"name": shape.name, "shapes": shape.shapes()} for shape, _ in sweep]
                           + [{"name": name, "refused": why} for name, why in sweep_refused.items()],
                           **({"synthetic": described} if described else {})},
                custom_objects=custom, attachments=[hash_entry(stage, name) for name in attachments],
                packages=named_packages(c["module"] for c in custom),
            )
            report = None
            manifest.write(stage)  # the staged export is a bundle of its own: verified as one, published as one
            # Probe, then publish: the staged bundle (same layout) is verified before anything is published, so
            # an artifact that fails never replaces the one already in the bundle. Without verify=..., each artifact
            # is still probed, in this process: none is published that fails its own round trip.
            probe = checks if checks is not None else VerifyOptions(mode="in-process")
            with warnings.catch_warnings():
                if checks is None:  # the h5 writer warned already; its in-process reload would say it again
                    warnings.simplefilter("ignore", LegacyFormatWarning)
                report = verify_staged(stage, manifest, probe, shown=bundle, trust=trust, session=session,
                                       progress=progress)
            if not report.ok and not explicit(formats):
                report = _drop_failed(stage, bundle, manifest, report, skipped, details)
            below_gates = [c for c in report.failures() if _below_gates_only(c)]
            if not report.ok and (len(below_gates) < len(report.failures()) or report.resume is not None):
                raise VerificationError(
                    f"{bundle}: nothing was published, the bundle is as it was; the new artifacts failed "
                    f"verification: {report.failure_text()}", report=report)
            if checks is None and not below_gates:
                report = None  # a probe, not the verification the caller asked for; kept to show a gate's FAIL
            manifest = commit(stage, bundle, manifest)  # one atomic swap of the manifest publishes the generation
            stage = None  # it is the new generation now
            if report is not None:
                write_text_atomic(bundle / VERIFICATION_FILE, report.to_json(indent=2))
        except OSError as exc:  # a full disk, a read-only file system, a permission: say so, publish nothing
            what = ("write the bundle (nothing was published; it is as it was)" if stage is not None
                    else "write the bundle")
            raise writable_error(bundle, exc, what) from None
        finally:
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)
            if lock is not None and lock.is_locked:
                lock.release()
    return ExportResult(bundle, manifest, seconds, skipped, report, details)


def _drop_failed(stage: Path, bundle: Path, manifest: Manifest, report: VerifyReport, skipped: dict[str, str],
                 details: dict[str, str]) -> VerifyReport:
    """Unpublish (from the staged bundle) every artifact whose own round trip failed; record each one's reason.

    The remaining artifacts passed; the manifest is rewritten without the dropped ones, which ``skipped`` now
    names with the cause in one line. A failed resume check is not a format's: it stays a failure.
    """
    failed = {c.format: c for c in report.failures()}
    if not failed or len(failed) == len(manifest.artifacts):
        return report  # nothing to drop, or nothing would be left: the caller raises with every cause
    for name, check in failed.items():
        skipped[name] = _probe_reason(check, stage, bundle)  # the manifest's skipped is this very dict
        details[name] = check.error or VerifyReport(bundle=str(bundle), checks=[check]).failure_text()
        art = manifest.artifact(name)
        target = stage / art.path
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    manifest.artifacts = [a for a in manifest.artifacts if a.format not in failed]
    manifest.write(stage)
    report.checks = [c for c in report.checks if c.format not in failed]
    return report


def _gate_failures(check: Any) -> str:
    return "; ".join(f"{g['metric']} {value_text(g['metric'], g['value'])} ({g['rule']})"
                     for g in check.quantization["gates"] if g["passed"] is False)


def _below_gates_only(check: Any) -> bool:
    """A quantized artifact that ran and matches in shape and kind but misses its gates: named explicitly, it is
    published with its figures shown as FAIL (the caller asked for it); anything else failing is not."""
    return bool(check.quantization) and not check.error and all(o["passed"] for o in check.outputs)


def _reference_labels(info: BundleInfo, x_ref: dict[str, Any]) -> np.ndarray | None:
    """``info.labels`` as one class index per reference row (None when not given); InputError if they do not fit."""
    if info.labels is None:
        return None
    labels = np.asarray(info.labels)
    rows = len(next(iter(x_ref.values())))
    if labels.ndim != 1 or len(labels) != rows or labels.dtype.kind not in "iu":
        raise InputError(f"labels must be one class index per reference row ({rows} integers); received an array of "
                         f"shape {labels.shape} and dtype {labels.dtype}. Pass the reference rows' class indices.")
    return labels.astype(np.int64)


def _synthetic_record(settings: SyntheticInputs, made: dict[str, str], task: Any,
                      outputs: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record of a reference made from the signature: seed, sizes, each input's source, warnings."""
    record: dict[str, Any] = {"seed": settings.seed, "rows": settings.rows, "length": settings.length,
                              "inputs": made}
    if task.is_classification:
        name, share = dominant_class(outputs[str(task.output)], list(task.class_names or []) or None)
        if share > 0.95:
            record["one_class"] = (f"{share:.0%} of the synthetic rows land in class {name!r}: the reference "
                                   "exercises one branch of the model only; pass real inputs (--inputs FILE)")
    return record


def _probe_reason(check: Any, stage: Path, bundle: Path) -> str:
    """Why a format's round trip failed, in one line, without the staging directory's name."""
    if check.error:
        text = check.error
        for prefix in (f"{stage / check.artifact}: ", str(stage)):
            text = text.replace(prefix, "")
        said, _, received = text.partition("Received: ")
        first = said.split(". ")[0].rstrip(". ")
        if not first or "re-export it" in first or "could not load it" in first:  # the loader's own words then
            first = received or said
        return f"its artifact was written but does not reload: {first_error_line(first)}"
    bad = [o for o in check.outputs if not o["passed"]]
    what = "; ".join(f"output {o['name']!r}: {o.get('detail') or str(o['mismatches']) + ' values outside'} "
                     f"(max abs diff {o['max_abs_diff']:.2e})" if o.get("max_abs_diff") is not None else
                     f"output {o['name']!r}: {o.get('detail') or 'differs'}" for o in bad)
    return (f"its artifact reloads with different outputs on {check.backend}/{check.device}: {what}; "
            f"tolerance atol {check.atol:g}, rtol {check.rtol:g}")[:400]


def _reference_forward(model: Any, iospec: IOSpec, x_ref: dict[str, Any]) -> Any:
    """The compiled forward pass; a subclassed model's outputs are first named from a 2-row eager call.

    Functional and Sequential models name their outputs symbolically, so they skip that call.
    """
    try:
        if iospec.model_kind == "subclassed":
            outputs_from_run(model, iospec, x_ref)
        return keras_forward(model, iospec)
    except KerasioError:
        raise
    except Exception as exc:  # the model itself refused the reference inputs
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ArtifactError(
            f"the model could not run on the reference inputs ({type(exc).__name__}: {first}). Pass inputs the "
            f"model accepts, or an explicit input_signature. Received: inputs {iospec.describe()}"
        ) from None


def _submit_check(session: Session, fmt: Format, dest: Path, stage: Path, iospec: IOSpec,
                  custom: list[dict[str, Any]], trust: bool, checks: VerifyOptions, sweep: int) -> None:
    """Send ``dest``'s check to the session's worker for its backend now; verify collects it.

    The request is the one :func:`~kerasio.verify.verify_staged` would send (same imports, device, precision and
    allowed ops), so that the answer it collects is the one it would have asked for.
    """
    worker = session.start(fmt.worker_backend(checks.backend or default_backend()))
    imports = (*checks.imports, *importable_custom_modules(custom), *plugin_modules([fmt.name]))
    session.submit(worker, check_request(fmt.name, dest, iospec.to_dict(), stage / REFERENCE_FILES["inputs"], checks,
                                         trust=trust, imports=imports,
                                         sweep=(stage / REFERENCE_FILES["sweep_inputs"], sweep)))


def choose_formats(formats: str | Sequence[str] | None, iospec: IOSpec | None = None, *,
                   trust: bool = False) -> tuple[list[Format], dict[str, str]]:
    """Resolve format names; return ``(formats to write, {skipped name: why})``.

    A format that needs trust (pickle) is skipped from ``"all"`` without
    ``trust``, and refused when named explicitly. A format that cannot
    carry this signature is skipped with its reason, or refused with
    :class:`UnsupportedFormatError` when named explicitly.
    """
    chosen = resolve_formats(formats)
    named = explicit(formats)
    skipped: dict[str, str] = {}
    for fmt in list(chosen):
        if fmt.needs_trust and not trust:
            if named:
                raise UnsafeArtifactError(
                    f"format {fmt.name!r} is written only with explicit trust: loading it runs arbitrary code. "
                    f"Pass trust=True (CLI: --trust). Received: formats={formats!r}"
                )
            skipped[fmt.name] = "pass trust=True (--trust) to write it"
            chosen.remove(fmt)
            continue
        reason = fmt.supports(iospec) if iospec is not None else None
        if reason:
            if named:
                raise UnsupportedFormatError(
                    f"format {fmt.name!r} cannot carry this model: {reason}. Drop it from --formats (or use "
                    f"formats='all', which skips it and records why). Received: formats={formats!r}, "
                    f"model {iospec.describe() if iospec else ''}"
                )
            skipped[fmt.name] = reason
            chosen.remove(fmt)
    return chosen, skipped


def _save(fmt: Format, model: Any, dest: Path, ctx: ExportContext, bundle: Path, rel: str,
          session: Session) -> dict[str, Any]:
    final = bundle / rel
    try:
        with warnings.catch_warnings(), quiet_framework_logs():
            warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf2onnx)(\.|$)")
            if fmt.save_backend and fmt.save_backend != keras_backend():
                written = _save_under(fmt.save_backend, fmt, model, dest, ctx, session)
            else:
                written = fmt.save(model, dest, ctx) or {}
            return {**fmt.describe(dest), **written}
    except KerasioError:
        raise
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise  # the disk or the permissions, not the format: export reports it as such
        raise _format_failed(fmt, final, bundle, exc) from exc
    except Exception as exc:
        # TensorFlow and h5py report a full disk in their own exception types; the cause is still the disk.
        cause = next((code for code in _WRITE_ERRNOS if os.strerror(code) in str(exc)), None)
        if cause is not None:
            raise OSError(cause, os.strerror(cause), str(final)) from exc
        raise _format_failed(fmt, final, bundle, exc) from exc


def _save_under(backend: str, fmt: Format, model: Any, dest: Path, ctx: ExportContext,
                session: Session) -> dict[str, Any]:
    """A format that must be written under another backend (a SavedModel of a JAX model): the model's ``.keras``
    file, loaded by a worker of that backend, saved there (the registered job ``save_format``)."""
    with tempfile.TemporaryDirectory(prefix=f"kerasio-{fmt.name}-") as tmp:
        keras_file, references = Path(tmp) / "model.keras", Path(tmp) / "references.npz"
        model.save(keras_file)
        save_arrays(references, ctx.reference_inputs)
        try:
            return dict(session.job("save_format", backend=backend, keras_file=str(keras_file), format=fmt.name,
                                    dest=str(dest), iospec=ctx.iospec.to_dict(), task=ctx.task.to_dict(),
                                    references=str(references), options=ctx.options,
                                    imports=importable_custom_modules(_custom_objects(model))))
        except KerasioError as exc:  # the worker's own words are the cause (a skip's one-line reason)
            raise ArtifactError(f"{dest}: {backend} could not build the {fmt.name} artifact from the {model.name!r} "
                                f"model's .keras file; drop {fmt.name!r} from the formats. Received: {exc}") from exc


def _format_failed(fmt: Format, final: Path, bundle: Path, exc: Exception) -> ArtifactError:
    first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return ArtifactError(
        f"{final}: exporting format {fmt.name!r} failed. Nothing in {bundle} was changed; "
        f"drop {fmt.name!r} from --formats or fix the model. Received: {type(exc).__name__}: {first_line}"
    )


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def _custom_objects(model: Any) -> list[dict[str, Any]]:
    """Classes in the model that are not Keras's own (a fresh process must import them to reload)."""
    import keras

    seen = {}
    for obj in [model, *_all_layers(model)]:
        cls = type(obj)
        if not is_keras_module(cls.__module__):  # keras_hub's are not Keras's
            seen[cls.__name__] = {
                "class": cls.__name__, "module": cls.__module__,
                "registered_name": keras.saving.get_registered_name(cls),
            }
    return list(seen.values())
