"""Notebook display (_repr_html_) of the trace, export, verification, loaded model and manifest; all escaped."""
from __future__ import annotations

import re

import pytest

import kerasio
from kerasio.present.html import trace_svg
from kerasio.recipe.trace import TraceRecords


def test_trace_renders_as_svg_charts_and_a_table(pipeline):
    page = pipeline.trace._repr_html_()
    assert page.count("<svg") == 2 and 'data-name="loss"' in page and 'data-name="val_accuracy"' in page
    assert page.count("<tr>") == 1 + len(pipeline.trace.records)
    points = re.search(r'data-name="loss"[^>]*points="([^"]+)"', page).group(1).split()
    assert len(points) == len(pipeline.trace.records)  # one point per epoch


def test_verification_colours_pass_and_fail(keras_bundle):
    report = kerasio.verify(keras_bundle, in_process=True, record=False)
    page = report._repr_html_()
    assert page.count('<span class="pass">PASS</span>') == len(report.checks) + 1  # each check, and the verdict
    report.checks[0].passed = False
    report.checks[0].error = "<script>alert(1)</script> broke"
    page = report._repr_html_()
    assert '<span class="fail">FAIL</span>' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; broke" in page


def test_export_loaded_model_and_manifest_render(pipeline, tmp_path, keras_bundle):
    result = kerasio.export(pipeline.model, tmp_path / "b", reference_inputs=pipeline.split.x_test[:8],
                            formats="keras,litert", verify="in-process")
    page = result._repr_html_()
    assert "Exported to" in page and result.manifest.artifact("keras").sha256 in page and "PASS" in page
    loaded = kerasio.load(keras_bundle)
    assert loaded.sha256 in loaded._repr_html_() and "features: float32[None, 10]" in loaded._repr_html_()
    page = kerasio.read_manifest(pipeline.bundle)._repr_html_()  # the pipeline recorded a trace
    assert "Artifacts" in page and "<svg" in page and "versicolor" in page


def test_hostile_names_are_escaped_in_the_chart():
    svg = trace_svg([{"epoch": 1, "loss": 1.0}, {"epoch": 2, "loss": 0.5}], key='loss"><script>')
    assert "<script>" not in svg
    assert trace_svg([{"epoch": 1, "loss": float("nan")}]) == '<p class="note">(no loss to chart)</p>'


@pytest.mark.parametrize("records", [[], [{"epoch": 1}]])
def test_an_empty_trace_still_renders(records):
    assert "Epoch trace" in TraceRecords(records)._repr_html_()
