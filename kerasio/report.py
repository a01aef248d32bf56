"""``kerasio report``: one self-contained HTML page about a bundle (no network fetch, no script).

It holds the signature, the trace chart and table, the artifacts with sizes
and hashes, the latest verification, the SavedModel versions and the library
versions, and a TF Serving snippet (``saved_model_cli`` and a REST body).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.fsutil import write_text_atomic
from kerasio.bundle.layout import SIGNATURE_NAME, flat_name
from kerasio.bundle.reader import read_manifest
from kerasio.formats.tf_serving import rest_body
from kerasio.present.html import STYLE, escape, escape_lines, status, table, trace_svg
from kerasio.verify import last_report

__all__ = ["write_report", "render_report"]


def render_report(bundle: str | Path, *, public_key: str | Path | None = None) -> str:
    """The report page for ``bundle`` as an HTML string."""

    bundle = Path(bundle)
    manifest = read_manifest(bundle, public_key=public_key)
    sig = manifest.iospec
    last = last_report(bundle)
    integrity = manifest.integrity(bundle)  # what verify checks first: every file's size and sha256
    changed = [p for p, state in integrity.items() if state != "ok"]

    signed = (f"verified with {public_key}" if public_key is not None else
              f"{SIGNATURE_NAME} present but not checked (pass --public-key)"
              if (bundle / SIGNATURE_NAME).is_file() else "not signed")
    state = (f'<span class="fail">CHANGED SINCE EXPORT: {len(changed)} of {len(integrity)} files differ from the '
             f"manifest ({escape(', '.join(flat_name(p) for p in changed))})</span>" if changed else
             f'<span class="pass">all {len(integrity)} files match the manifest</span>')
    parts = [f"<h1>kerasio report: {escape(bundle.name or bundle)}</h1>",
             f"<p>Integrity: {state}. Signature: {escape(signed)}.</p>",
             f'<p class="note">{escape(bundle.resolve())} &middot; created {escape(manifest.created_utc)} &middot; '
             f"schema {escape(manifest.schema_version)}</p>"]
    facts: list[list[Any]] = [[f"input {s.name}", s.describe()] for s in sig.inputs]
    facts += [[f"output {s.name}", s.describe() + (" (probabilities)" if s.probabilities else "")]
              for s in sig.outputs]
    facts.append(["task", manifest.task.kind])
    if manifest.task.is_classification:
        facts.append(["classes", ", ".join(manifest.class_names)])
    if sig.feature_names:
        facts.append(["feature columns", ", ".join(sig.feature_names)])
    facts += [[k, f"{v:.4f}"] for k, v in manifest.metrics.items() if isinstance(v, (int, float))]
    parts += ["<h2>Signature</h2>", table(["", ""], facts)]
    if manifest.trace:
        rows = [[r.get("epoch"), r.get("loss"), r.get("accuracy"), r.get("val_loss"), r.get("val_accuracy"),
                 r.get("observation", "")] for r in manifest.trace]
        parts += ["<h2>Training trace</h2>", trace_svg(manifest.trace, key="loss", width=560),
                  trace_svg(manifest.trace, key="accuracy", width=560),
                  table(["Epoch", "Loss", "Accuracy", "Val loss", "Val acc", "Observation"], rows)]
    rows = [[a.format, flat_name(a.path), a.size, a.sha256, "ok" if integrity.get(a.path) == "ok" else "CHANGED"]
            for a in manifest.artifacts]
    rows += [[e["path"].rsplit("/", 1)[-1], flat_name(e["path"]), e.get("size", "-"), e["sha256"], "-"]
             for e in manifest.attachments]
    parts += ["<h2>Artifacts</h2>", table(["Format", "Path", "Bytes", "sha256", "Bytes now"], rows)]
    if manifest.skipped:
        parts.append("<ul>" + "".join(f"<li>{escape(k)} skipped: {escape(v)}</li>"
                                      for k, v in manifest.skipped.items()) + "</ul>")
    parts.append("<h2>Latest verification</h2>")
    if last:
        rows = [[c.get("format"), c.get("backend"), c.get("device"), c.get("max_abs_diff"), c.get("status")]
                for c in last.get("checks", [])]
        parts += [f"<p>{status('PASS' if last.get('ok') else 'FAIL')} ({escape(last.get('mode'))})</p>",
                  table(["Format", "Backend", "Device", "Max abs diff", "Result"], rows, status_column=4)]
        parts += _quantized_parts(last)
    else:
        parts.append('<p class="note">never verified: run kerasio verify</p>')
    serving = _serving_versions(bundle)
    versions: list[list[Any]] = [["SavedModel versions (serving/)", ", ".join(map(str, serving)) or "-"]]
    versions += [[k, v] for k, v in manifest.versions.items()]
    parts += ["<h2>Versions</h2>", table(["", ""], versions)]
    if any(a.format == "savedmodel" for a in manifest.artifacts):
        x = manifest.reference_arrays(bundle)[0]
        first = {k: v[:1] for k, v in x.items()}
        body = json.dumps(rest_body(dict(zip(tf_input_names(sig), first.values()))), indent=2)
        model_dir = bundle.resolve() / "serving"
        parts += ["<h2>Serving with TF Serving</h2>",
                  f"<pre>saved_model_cli show --dir {escape(model_dir)}/{serving[-1] if serving else 1} --all\n"
                  f"tensorflow_model_server --rest_api_port=8501 --model_name=model "
                  f"--model_base_path={escape(model_dir)}</pre>",
                  "<p>REST request (the first reference row): <code>POST /v1/models/model:predict</code></p>",
                  f"<pre>{escape_lines(body)}</pre>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>kerasio report: {escape(bundle.name or bundle)}</title>{STYLE}"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:24px auto;padding:0 12px}"
            "pre{background:#f6f6f6;padding:8px;overflow-x:auto}</style></head>"
            f'<body class="kerasio">{"".join(parts)}</body></html>')


def _serving_versions(bundle: Path) -> list[int]:
    """The SavedModel versions under ``serving/``, read without following a link out of the bundle."""
    import os
    import stat

    base = bundle / "serving"
    try:
        if not stat.S_ISDIR(os.lstat(base).st_mode):
            return []  # a symbolic link (or anything else) is not the bundle's own serving directory
        names = os.listdir(base)
    except OSError:
        return []
    return sorted(int(n) for n in names[:100_000] if n.isdigit() and len(n) < 12
                  and stat.S_ISDIR(os.lstat(base / n).st_mode))


def write_report(bundle: str | Path, out: str | Path | None = None, *, public_key: str | Path | None = None) -> Path:
    """Write the report page (default ``<bundle>/report.html``, replaced atomically); return its path."""

    target = Path(out) if out else Path(bundle) / "report.html"
    write_text_atomic(target, render_report(bundle, public_key=public_key))
    return target


def _quantized_parts(last: dict[str, Any]) -> list[str]:
    """The quantized checks of a report: each gate with its value, and each output's distortion and decisions."""
    gated = [c for c in last.get("checks", []) if isinstance(c.get("quantization"), dict)]
    if not gated:
        return []
    gates = [[c.get("format"), g.get("metric"), g.get("value"), g.get("rule"),
              "-" if g.get("passed") is None else "PASS" if g.get("passed") else "FAIL"]
             for c in gated for g in c["quantization"].get("gates") or [] if isinstance(g, dict)]
    outputs = [[c.get("format"), name, o.get("mse"), o.get("snr_db"), o.get("cosine"), o.get("kl", "-")]
               for c in gated for name, o in (c["quantization"].get("outputs") or {}).items() if isinstance(o, dict)]
    decisions = [[c.get("format"), d.get("top1_agreement"), d.get("flips"), d.get("flips_near_ties_only"),
                  d.get("accuracy", "-"), d.get("float_accuracy", "-")]
                 for c in gated for d in [c["quantization"].get("decisions")] if isinstance(d, dict)]
    parts = ["<h3>Quantized artifacts against the float model: gates</h3>",
             table(["Format", "Gate", "Value", "Rule", "Result"], gates, status_column=4),
             "<h3>Distortion per output</h3>",
             table(["Format", "Output", "MSE", "SNR (dB)", "Cosine", "KL"], outputs)]
    if decisions:
        parts += ["<h3>Decisions</h3>", table(["Format", "Top-1 agreement", "Rows that flip", "Only near ties",
                                               "Accuracy", "Float accuracy"], decisions)]
    return parts
