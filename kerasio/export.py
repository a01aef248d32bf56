"""Stage 4: write a bundle (every requested format + manifest), crash-safely.

Everything is first written into a hidden staging directory inside the
bundle. Only when every artifact has been written and hashed are they renamed
into place, the manifest last; an interrupted or failed export leaves the
existing bundle as it was. SavedModel versions are never overwritten.
"""
from __future__ import annotations

import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ArtifactError, KerasioError, UnsafeArtifactError, VerificationError
from .formats import ExportContext, resolve_formats
from .fsutil import hash_artifact, interrupts_deferred, place, staging_dir, write_text_atomic
from .manifest import (
    REFERENCE_INPUTS, REFERENCE_ONE_ROW, REFERENCE_OUTPUTS, Artifact, Manifest, hash_entry, library_versions,
)
from .runtime import available_devices, compile_keras, device_name, keras_backend

__all__ = ["export", "ExportResult", "choose_formats"]


class ExportResult:
    """The manifest written, how long each artifact took, and the verification (if asked)."""

    def __init__(self, bundle: Path, manifest: Manifest, seconds: dict[str, float], skipped: dict[str, str],
                 report=None):
        self.bundle, self.manifest, self.seconds, self.skipped = bundle, manifest, seconds, skipped
        self.report = report  # a VerifyReport when export(..., verify=True)

    def table(self) -> str:
        from .trace import render_table

        rows = [[a.format, a.path, _size(a.size), a.sha256[:12], f"{self.seconds.get(a.format, 0):.2f}"]
                for a in self.manifest.artifacts]
        rows += [[name, "-", "-", "-", f"skipped: {why}"] for name, why in self.skipped.items()]
        return render_table(["Format", "Path", "Size", "sha256", "Seconds"], rows)

    def __repr__(self) -> str:
        return f"ExportResult({self.bundle}, formats={[a.format for a in self.manifest.artifacts]})"


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def export(
    model,
    bundle_dir: str | Path,
    *,
    reference_inputs: np.ndarray,
    formats: str | Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    label: str = "label",
    trace: Sequence[dict[str, Any]] = (),
    metrics: dict[str, float] | None = None,
    training: dict[str, Any] | None = None,
    trust_pickle: bool = False,
    max_shard_size: float | None = None,
    verify: bool | str = False,
    workers: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``model`` to ``bundle_dir`` in several formats with a manifest.

    Args:
        model: a built Keras model that takes ``[None, n_features]`` float32.
        bundle_dir: the bundle directory (created if needed).
        reference_inputs: rows whose outputs are stored as the verification reference.
        formats: names, comma-separated names or ``"all"``; default ``keras,savedmodel``.
        feature_names, class_names: recorded in the manifest (defaults ``f0..``, ``0..``).
        trust_pickle: the pickle format is written only when this is true.
        max_shard_size: shard the ``weights`` format above this many GB.
        verify: verify every artifact before publishing it (``result.report``);
            if any fails, raise :class:`VerificationError` and leave the bundle
            as it was. ``True`` (or ``"fresh-process"``) loads them in a fresh
            interpreter started before the first artifact is written, so its
            TensorFlow import overlaps the export; ``"in-process"`` loads them
            here (faster and lighter for very large models, but weaker).
        workers: verification workers already started, by backend (the
            pipeline starts one before training); they are not closed here.

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
    x_ref = np.ascontiguousarray(reference_inputs, dtype=np.float32)
    n_features = int(x_ref.shape[1])
    if model.input_shape[-1] != n_features:
        raise ArtifactError(
            f"reference inputs have {n_features} features but the model takes {model.input_shape[-1]}."
        )
    feature_names = list(feature_names or [f"f{i}" for i in range(n_features)])
    chosen, skipped = choose_formats(formats, trust_pickle=trust_pickle)
    device = "gpu" if "gpu" in available_devices() else "cpu"  # where Keras placed the model
    forward = compile_keras(model)
    reference_outputs = forward(x_ref)
    reference_one_row = forward(x_ref[:1])
    class_names = list(class_names or [str(i) for i in range(reference_outputs.shape[1])])
    ctx = ExportContext(feature_names=feature_names, class_names=class_names, reference_inputs=x_ref,
                        max_shard_size=max_shard_size)
    workers = dict(workers or {})
    own_worker = None
    if verify and verify != "in-process" and not workers:
        from .worker import Worker

        own_worker = Worker(None, warm=["keras"])
        workers[own_worker.backend] = own_worker
    bundle.mkdir(parents=True, exist_ok=True)
    stage = staging_dir(bundle)
    seconds: dict[str, float] = {}
    try:
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
                info = _save(fmt, model, dest, ctx, bundle / rel)
                seconds[fmt.name] = time.perf_counter() - start
                pending.append((fmt.name, rel, info, hasher.submit(hash_artifact, dest)))
            for name, rel, info, digest_size_files in pending:
                digest, size, files = digest_size_files.result()
                artifacts.append(Artifact(format=name, path=rel, size=size, sha256=digest, files=files, info=info))
        np.save(stage / REFERENCE_INPUTS, x_ref)
        np.save(stage / REFERENCE_OUTPUTS, reference_outputs)
        np.save(stage / REFERENCE_ONE_ROW, reference_one_row)
        manifest = Manifest(
            feature_names=feature_names,
            class_names=class_names,
            artifacts=artifacts,
            versions=library_versions(),
            backend=keras_backend(),
            device=device,
            device_name=device_name(device),
            input={"name": "features", "dtype": "float32", "shape": [None, n_features]},
            outputs={
                "probabilities": {"dtype": "float32", "shape": [None, len(class_names)]},
                "class_id": {"dtype": "int64", "shape": [None]},
            },
            label=label,
            trace=list(trace),
            metrics=dict(metrics or {}),
            training=dict(training or {}),
            reference={
                "rows": int(len(x_ref)),
                "inputs": hash_entry(stage, REFERENCE_INPUTS),
                "outputs": hash_entry(stage, REFERENCE_OUTPUTS),
                "outputs_1row": hash_entry(stage, REFERENCE_ONE_ROW),
            },
            custom_objects=_custom_objects(model),
        )
        report = None
        if verify:
            # Verify the staged bundle (same layout) before anything is published: an
            # artifact that fails never replaces the one already in the bundle.
            from .verify import VERIFICATION_FILE, verify as run_verify

            manifest.write(stage)
            report = run_verify(stage, workers=workers, record=False,
                                in_process=verify == "in-process", trust_pickle=trust_pickle,
                                check_hashes=False)  # hashed from these very files a moment ago
            report.bundle = str(bundle)
            if not report.ok:
                error = VerificationError(
                    f"{bundle}: nothing was published, the bundle is as it was; the new artifacts failed "
                    f"verification: {report.failure_text()}")
                error.report = report
                raise error
        with interrupts_deferred():  # the renames and the manifest land together or not at all
            for rel in [a.path for a in artifacts] + [REFERENCE_INPUTS, REFERENCE_OUTPUTS, REFERENCE_ONE_ROW]:
                place(stage / rel, bundle / rel)
            manifest.write(bundle)  # last: readers only ever see a complete bundle
        if report is not None:
            write_text_atomic(bundle / VERIFICATION_FILE, report.to_json(indent=2))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if own_worker is not None:
            own_worker.close()
    return ExportResult(bundle, manifest, seconds, skipped, report)


def choose_formats(formats, *, trust_pickle: bool = False):
    """Resolve format names; return ``(formats to write, {skipped name: why})``.

    A format that needs trust (pickle) is skipped from ``"all"`` without
    ``trust_pickle``, and refused when named explicitly.
    """
    chosen = resolve_formats(formats)
    skipped: dict[str, str] = {}
    for fmt in [f for f in chosen if f.needs_trust and not trust_pickle]:
        if formats not in ("all", ["all"]):
            raise UnsafeArtifactError(
                f"format {fmt.name!r} is written only with explicit trust: loading it runs arbitrary code. "
                "Pass trust_pickle=True (CLI: --trust-pickle)."
            )
        skipped[fmt.name] = "pass trust_pickle=True (--trust-pickle) to write it"
        chosen.remove(fmt)
    return chosen, skipped


def _save(fmt, model, dest: Path, ctx: ExportContext, final: Path) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(keras|tensorflow|tf2onnx)(\.|$)")
            written = fmt.save(model, dest, ctx) or {}
            return {**fmt.describe(dest), **written}
    except KerasioError:
        raise
    except Exception as exc:
        first_line = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise ArtifactError(
            f"{final}: exporting format {fmt.name!r} failed ({type(exc).__name__}: {first_line}). "
            f"Nothing in {final.parent if fmt.name != 'savedmodel' else final.parent.parent} was changed; "
            f"drop {fmt.name!r} from --formats or fix the model."
        ) from exc


def _custom_objects(model) -> list[dict[str, str]]:
    """Classes in the model that are not Keras's own (they must be importable to reload)."""
    seen = {}
    for layer in getattr(model, "layers", []):
        cls = type(layer)
        if not cls.__module__.startswith("keras"):
            import keras

            seen[cls.__name__] = {
                "class": cls.__name__, "module": cls.__module__,
                "registered_name": keras.saving.get_registered_name(cls),
            }
    return list(seen.values())
