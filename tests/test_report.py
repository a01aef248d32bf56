"""kerasio report: one self-contained page, rendered by a real headless Chromium (installed by .ci/run)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from bundles import copy_bundle

import kerasio
from kerasio.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.fixture
def chromium():
    if CHROMIUM is None:
        if os.environ.get("KERASIO_REQUIRE_CHROMIUM"):  # CI installs it: there, its absence is a failure
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install chromium); CI runs this test")
    return CHROMIUM


@pytest.fixture
def report(pipeline, tmp_path):
    b = copy_bundle(pipeline.bundle, tmp_path / "b")
    assert kerasio.verify(b, formats="keras,savedmodel", in_process=True).ok  # recorded: the page shows it
    assert main(["report", str(b), "-o", str(tmp_path / "report.html")]) == 0
    return b, tmp_path / "report.html"


def test_the_page_is_self_contained_and_holds_every_section(report):
    bundle, page = report
    text = page.read_text()
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", text)  # nothing to fetch
    assert "<script" not in text
    manifest = kerasio.read_manifest(bundle)
    for needle in ["Signature", "features: float32[None, 10]", "Training trace", "Artifacts",
                   manifest.artifact("keras").sha256, "Latest verification", '<span class="pass">PASS</span>',
                   "SavedModel versions (serving/)", "saved_model_cli show --dir", "tensorflow_model_server",
                   "&quot;signature_name&quot;: &quot;serving_default&quot;", "onnx", "trace.png"]:
        assert needle in text, needle


def test_chromium_renders_the_text_and_the_charts(report, chromium, tmp_path):
    _bundle, page = report
    profile = tmp_path / "profile"
    run = [chromium, *FLAGS, f"--user-data-dir={profile}", "--window-size=1100,2600"]
    dom = subprocess.run([*run, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "kerasio report: b" in dom.stdout and "Latest verification" in dom.stdout
    assert len(re.findall(r"<polyline[^>]+class=\"series\"", dom.stdout)) == 4  # loss, val_loss, acc, val_acc
    shot = tmp_path / "shot.png"
    out = subprocess.run([*run, f"--screenshot={shot}", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.is_file(), out.stderr[-2000:]
    from matplotlib.image import imread

    pixels = (imread(shot)[..., :3] * 255).round()
    blue = ((abs(pixels - [31, 119, 180]).sum(axis=-1)) < 30).sum()  # the training curves
    orange = ((abs(pixels - [255, 127, 14]).sum(axis=-1)) < 30).sum()  # the validation curves
    green = ((abs(pixels - [10, 122, 47]).sum(axis=-1)) < 40).sum()  # PASS
    assert blue > 200 and orange > 200 and green > 20, (blue, orange, green)


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a kerasio bundle" in err[0]
