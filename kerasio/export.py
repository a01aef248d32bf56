"""Stage 4: write a bundle (every format that can carry the model + manifest), crash-safely.

Everything is first written into a hidden staging directory inside the
bundle, hashed and (optionally) verified there; :func:`kerasio.publish.commit`
then publishes it as a new generation with one atomic swap of the manifest. An
interrupted or failed export leaves the existing bundle as it was. SavedModel
versions are never overwritten.
"""
from __future__ import annotations

import errno
import os
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .errors import ArtifactError, KerasioError, UnsafeArtifactError, UnsupportedFormatError, VerificationError
from .formats import REGISTRY, ExportContext, Format, explicit, resolve_formats
from .fsutil import (
    bundle_lock,
    clean_stale,
    hash_artifact,
    staging_dir,
    writable_error,
    write_text_atomic,
)
from .manifest import MANIFEST_NAME, REFERENCE_FILES, Artifact, Manifest, hash_entry, library_versions, save_arrays
from .publish import commit, crash_point, flat_name, repair
from .runtime import (
    available_devices,
    cpu_features,
    device_name,
    keras_backend,
    keras_forward,
    outputs_from_run,
    precision_policy,
    quiet_framework_logs,
)
from .signature import Signature, derive_signature, mark_probabilities
from .task import resolve_task

__all__ = ["export", "ExportResult", "choose_formats"]


class ExportResult:
    """The manifest written, how long each artifact took, what was skipped and why, and the verification."""

    def __init__(self, bundle: Path, manifest: Manifest, seconds: dict[str, float], skipped: dict[str, str],
                 report: Any = None):
        self.bundle, self.manifest, self.seconds, self.skipped = bundle, manifest, seconds, skipped
        self.report = report  # a VerifyReport when export(..., verify=True)

    def table(self, width: int = 100) -> str:
        """The written artifacts as a text table, skipped formats with their reasons below, at most ``width`` wide."""
        from .tables import render_table, wrap_notes

        rows = [[a.format, flat_name(a.path), _size(a.size), a.sha256[:12], f"{self.seconds.get(a.format, 0):.2f}"]
                for a in self.manifest.artifacts]
        notes = [f"  {name} skipped: {why}" for name, why in self.skipped.items()]
        text = render_table(["Format", "Path", "Size", "sha256", "Seconds"], rows, width=width)
        return text + ("\n" + "\n".join(wrap_notes(notes, width=width)) if notes else "")

    def _repr_html_(self) -> str:
        from .html import STYLE, escape, table

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
    reference_inputs: Any,
    formats: str | Sequence[str] | None = None,
    task: str = "auto",
    input_signature: Any = None,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    label: str = "label",
    trace: Sequence[dict[str, Any]] = (),
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    max_shard_size: float | None = None,
    verify: bool | str = False,
    rtol: float | None = None,
    atol: float | None = None,
    verifier: Any = None,
    workers: dict[str, Any] | None = None,
    attachments: Mapping[str, bytes | Callable[[], bytes | None]] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export any Keras model to ``bundle_dir`` in several formats, with a manifest.

    Args:
        model: a built Keras model: Sequential, functional (any inputs and
            outputs: images, strings, dicts, several heads) or subclassed.
        bundle_dir: the bundle directory (created if needed).
        reference_inputs: inputs whose outputs are stored as the verification
            reference: an array, a list (one array per input), a dict keyed by
            input name, or a DataFrame (its columns become the feature names).
        formats: names, comma-separated names or ``"all"``; default ``keras,savedmodel``.
            A format that cannot carry the model is skipped with its reason;
            a format named explicitly that cannot is an error.
        task: ``auto`` (a single softmax output or sigmoid unit is a
            classification), ``classification``, ``regression`` or ``raw``.
        input_signature: explicit input specs (:class:`~kerasio.TensorSpec`) for a subclassed model.
        feature_names: column names of a single 2-D input (default ``f0, f1, ...``).
        class_names: names of the classes of a classification (default ``0, 1, ...``).
        trust_pickle: the pickle format is written only when this is true.
        max_shard_size: shard the ``weights`` format above this many GB.
        verify: verify every artifact before publishing it (``result.report``);
            if any fails, raise :class:`VerificationError` and leave the bundle
            as it was. ``True`` (or ``"fresh-process"``) loads them in a fresh
            interpreter started before the first artifact is written;
            ``"in-process"`` loads them here (faster, but weaker).
        rtol, atol: override the tolerance table for that verification.
        verifier: a verifying interpreter started earlier with :func:`kerasio.verifier`
            (its import then overlaps your work instead of this export); not closed here.
        workers: verification workers already started, by backend (not closed here).
        attachments: extra files for the bundle, by file name (``trace.csv``, a plot, notes): bytes, or a
            callable returning bytes (or ``None`` to skip), called once the artifacts are written. They go
            into the same generation, hashed and listed in the manifest's ``attachments``.
        progress: called with one line per artifact as it is written, and per check as it completes.

    Returns:
        An :class:`ExportResult` whose ``manifest`` lists every artifact's hash.

    Example:
        >>> result = export(model, "saved_models/demo", reference_inputs=x_test)  # doctest: +SKIP
        >>> [a.format for a in result.manifest.artifacts]  # doctest: +SKIP
        ['keras', 'savedmodel']
    """
    if verify not in (False, True, "fresh-process", "in-process"):
        raise ValueError(f"verify must be True, False, 'fresh-process' or 'in-process'; received: verify={verify!r}")
    bundle = Path(bundle_dir)
    signature = derive_signature(model, reference_inputs, input_signature=input_signature,
                                 feature_names=feature_names)
    x_ref = signature.coerce(reference_inputs, source="reference_inputs")
    if not len(next(iter(x_ref.values()))):
        raise ArtifactError(f"{bundle}: reference_inputs has no rows; pass at least one example. Received: 0 rows")
    with precision_policy("highest"):  # the references are full float32, as every check is (TF32 off on GPUs)
        forward = _reference_forward(model, signature, x_ref)
        reference_outputs = forward(x_ref)
        reference_one_row = forward({k: v[:1] for k, v in x_ref.items()})
    mark_probabilities(signature, reference_outputs)
    resolved = resolve_task(task, signature, class_names)
    chosen, skipped = choose_formats(formats, signature, trust_pickle=trust_pickle)
    device = "gpu" if "gpu" in available_devices() else "cpu"  # where Keras placed the model
    ctx = ExportContext(signature=signature, task=resolved, reference_inputs=x_ref, max_shard_size=max_shard_size)
    workers = dict(workers or {})
    if verifier is not None:
        workers.setdefault(verifier.backend, verifier)
    own_worker = None
    if verify and verify != "in-process" and not workers:
        from .worker import Worker

        own_worker = Worker(None, warm=["keras"])  # started first: its import overlaps everything below
        workers[own_worker.backend] = own_worker
    attachments = dict(attachments or {})
    taken = {Path(f.filename).name for f in REGISTRY.values()} | set(REFERENCE_FILES.values()) | {MANIFEST_NAME}
    for name in attachments:
        if not name or "/" in name or "\\" in name or name.startswith(".") or name in taken:
            raise ArtifactError(f"{bundle}: attachment name {name!r} must be a plain file name that no artifact, "
                                f"reference file or the manifest uses. Rename it. Received: {name!r}")
    seconds: dict[str, float] = {}
    custom = _custom_objects(model)
    submitted: dict[str, Any] = {}
    lock: Any = None
    stage: Path | None = None
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
        artifacts = []
        # Hash each artifact on a second thread while the next one is written
        # (hashlib and file reads release the GIL): for a 300 MB model this hides
        # most of the hashing behind the SavedModel export.
        with ThreadPoolExecutor(max_workers=1) as hasher:
            pending = []
            for fmt in chosen:
                rel = fmt.relpath(bundle)
                dest = stage / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                start = time.perf_counter()
                try:
                    info = _save(fmt, model, dest, ctx, bundle / rel)
                except ArtifactError as exc:
                    if explicit(formats):
                        raise
                    skipped[fmt.name] = f"its converter failed: {exc.__cause__ or exc}"[:400]
                    if dest.is_dir():
                        shutil.rmtree(dest, ignore_errors=True)
                    else:
                        dest.unlink(missing_ok=True)
                    continue
                seconds[fmt.name] = time.perf_counter() - start
                crash_point(f"saved:{fmt.name}")
                if progress is not None:
                    progress(f"{fmt.name:<10} wrote {flat_name(rel)} in {seconds[fmt.name]:.2f} s")
                pending.append((fmt.name, rel, info, hasher.submit(hash_artifact, dest)))
                if verify and verify != "in-process":  # the worker checks it while the next one is written
                    _submit_check(fmt, dest, stage, signature, custom, workers, submitted, trust_pickle)
            for name, rel, info, digest_size_files in pending:
                digest, size, files = digest_size_files.result()
                artifacts.append(Artifact(format=name, path=rel, size=size, sha256=digest, files=files, info=info))
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
            signature=signature, task=resolved, artifacts=artifacts, skipped=skipped, versions=library_versions(),
            backend=keras_backend(), device=device, device_name=device_name(device), cpu_features=cpu_features(),
            label=label,
            trace=list(trace), metrics=dict(metrics or {}), training=dict(training or {}),
            reference={"rows": int(len(next(iter(x_ref.values())))),
                       **{key: hash_entry(stage, name) for key, name in REFERENCE_FILES.items()}},
            custom_objects=custom, attachments=[hash_entry(stage, name) for name in attachments],
        )
        report = None
        manifest.write(stage)  # the staged export is a bundle of its own: verified as one, published as one
        if verify:
            # Verify the staged bundle (same layout) before anything is published: an
            # artifact that fails never replaces the one already in the bundle.
            from .verify import VERIFICATION_FILE
            from .verify import verify as run_verify

            report = run_verify(stage, workers=workers, record=False, in_process=verify == "in-process",
                                trust_pickle=trust_pickle, check_hashes=False, rtol=rtol, atol=atol,
                                submitted=submitted, progress=progress)
            report.bundle = str(bundle)
            if not report.ok:
                error = VerificationError(
                    f"{bundle}: nothing was published, the bundle is as it was; the new artifacts failed "
                    f"verification: {report.failure_text()}")
                error.report = report  # type: ignore[attr-defined]
                raise error
        manifest = commit(stage, bundle, manifest)  # one atomic swap of the manifest publishes the generation
        stage = None  # it is the new generation now
        if report is not None:
            write_text_atomic(bundle / VERIFICATION_FILE, report.to_json(indent=2))
    except OSError as exc:  # a full disk, a read-only file system, a permission: say so, publish nothing
        what = "write the bundle (nothing was published; it is as it was)" if stage is not None else "write the bundle"
        raise writable_error(bundle, exc, what) from None
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        if lock is not None and lock.is_locked:
            lock.release()
        if own_worker is not None:
            own_worker.close()
    return ExportResult(bundle, manifest, seconds, skipped, report)


def _reference_forward(model: Any, signature: Signature, x_ref: dict[str, Any]) -> Any:
    """The compiled forward pass; a subclassed model's outputs are first named from a 2-row eager call.

    Functional and Sequential models name their outputs symbolically, so they skip that call.
    """
    try:
        if signature.model_kind == "subclassed":
            outputs_from_run(model, signature, x_ref)
        return keras_forward(model, signature)
    except KerasioError:
        raise
    except Exception as exc:  # the model itself refused the reference inputs
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise ArtifactError(
            f"the model could not run on the reference inputs ({type(exc).__name__}: {first}). Pass inputs the "
            f"model accepts, or an explicit input_signature. Received: inputs {signature.describe()}"
        ) from None


def _submit_check(fmt: Format, dest: Path, stage: Path, signature: Signature, custom: list[dict[str, Any]],
                  workers: dict[str, Any], submitted: dict[str, Any], trust: bool) -> None:
    """Send ``dest``'s check to a worker already running for its backend (else verify starts one later)."""
    from functools import partial

    from .runtime import default_backend
    from .verify import check_request, importable_custom_modules

    worker = workers.get(fmt.worker_backend(default_backend()))
    if worker is None or any(c.get("module") == "__main__" for c in custom):
        return  # verify reports a __main__ class with its own clear message
    ticket = worker.submit(check_request(fmt.name, dest, signature.to_dict(), stage / REFERENCE_FILES["inputs"],
                                         trust=trust, imports=importable_custom_modules(custom)))
    submitted[fmt.name] = partial(worker.collect, ticket)


def choose_formats(formats: str | Sequence[str] | None, signature: Signature | None = None, *,
                   trust_pickle: bool = False) -> tuple[list[Format], dict[str, str]]:
    """Resolve format names; return ``(formats to write, {skipped name: why})``.

    A format that needs trust (pickle) is skipped from ``"all"`` without
    ``trust_pickle``, and refused when named explicitly. A format that cannot
    carry this signature is skipped with its reason, or refused with
    :class:`UnsupportedFormatError` when named explicitly.
    """
    chosen = resolve_formats(formats)
    named = explicit(formats)
    skipped: dict[str, str] = {}
    for fmt in list(chosen):
        if fmt.needs_trust and not trust_pickle:
            if named:
                raise UnsafeArtifactError(
                    f"format {fmt.name!r} is written only with explicit trust: loading it runs arbitrary code. "
                    f"Pass trust_pickle=True (CLI: --trust-pickle). Received: formats={formats!r}"
                )
            skipped[fmt.name] = "pass trust_pickle=True (--trust-pickle) to write it"
            chosen.remove(fmt)
            continue
        reason = fmt.supports(signature) if signature is not None else None
        if reason:
            if named:
                raise UnsupportedFormatError(
                    f"format {fmt.name!r} cannot carry this model: {reason}. Drop it from --formats (or use "
                    f"formats='all', which skips it and records why). Received: formats={formats!r}, "
                    f"model {signature.describe() if signature else ''}"
                )
            skipped[fmt.name] = reason
            chosen.remove(fmt)
    return chosen, skipped


def _save(fmt: Format, model: Any, dest: Path, ctx: ExportContext, final: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings(), quiet_framework_logs():
            warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf2onnx)(\.|$)")
            written = fmt.save(model, dest, ctx) or {}
            return {**fmt.describe(dest), **written}
    except KerasioError:
        raise
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise  # the disk or the permissions, not the format: export reports it as such
        raise _format_failed(fmt, final, exc) from exc
    except Exception as exc:
        # TensorFlow and h5py report a full disk in their own exception types; the cause is still the disk.
        cause = next((code for code in _WRITE_ERRNOS if os.strerror(code) in str(exc)), None)
        if cause is not None:
            raise OSError(cause, os.strerror(cause), str(final)) from exc
        raise _format_failed(fmt, final, exc) from exc


def _format_failed(fmt: Format, final: Path, exc: Exception) -> ArtifactError:
    first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    where = final.parent if fmt.name != "savedmodel" else final.parent.parent
    return ArtifactError(
        f"{final}: exporting format {fmt.name!r} failed. Nothing in {where} was changed; "
        f"drop {fmt.name!r} from --formats or fix the model. Received: {type(exc).__name__}: {first_line}"
    )


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS})


def _custom_objects(model: Any) -> list[dict[str, Any]]:
    """Classes in the model that are not Keras's own (a fresh process must import them to reload)."""
    import keras

    from .signature import _all_layers

    seen = {}
    for obj in [model, *_all_layers(model)]:
        cls = type(obj)
        if not cls.__module__.startswith("keras"):
            seen[cls.__name__] = {
                "class": cls.__name__, "module": cls.__module__,
                "registered_name": keras.saving.get_registered_name(cls),
            }
    return list(seen.values())
