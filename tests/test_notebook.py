"""Every notebook runs top to bottom in a real Jupyter kernel (and is committed without outputs)."""
from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(NOTEBOOKS.glob("*.ipynb"))


def _execute(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("KERASIO_NOTEBOOK_OUT", str(tmp_path / "out"))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    text = "".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")) for c in code
                   for out in c.outputs)
    html = "".join(str(out.get("data", {}).get("text/html", "")) for c in code for out in c.outputs)
    images = sum("image/png" in out.get("data", {}) for c in code for out in c.outputs)
    return text, html, images


def test_there_are_three_notebooks():
    assert [p.name for p in ALL] == ["01_quickstart.ipynb", "02_bring_your_own_model.ipynb", "03_serving.ipynb"]


@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_is_committed_without_outputs(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and not any(c.outputs or c.execution_count for c in code)


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    text, _html, images = _execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    assert "| Epoch | Loss ↓ | Accuracy ↑" in text
    assert "PASS" in text and "FAIL" not in text
    assert images >= 1  # trace.plot()
    assert (tmp_path / "out" / "kerasio.json").is_file()


def test_bring_your_own_model_runs_top_to_bottom(tmp_path, monkeypatch):
    text, html, _images = _execute("02_bring_your_own_model.ipynb", tmp_path, monkeypatch)
    assert "image: float32[None, 28, 28, 1]" in text and "review: string[None, 1]" in text
    assert "litert: " in text  # a skip reason, shown
    assert '<span class="pass">PASS</span>' in html and '<span class="fail">' not in html
    assert (tmp_path / "out" / "cnn" / "kerasio.json").is_file() and (tmp_path / "out" / "text" / "kerasio.json").is_file()


def test_serving_runs_top_to_bottom(tmp_path, monkeypatch):
    text, _html, _images = _execute("03_serving.ipynb", tmp_path, monkeypatch)
    assert "serving_default" in text and "predict_labels" in text
    assert "100 warmup records" in text
    assert "Result for output key probabilities" in text and "kerasio:" in text
