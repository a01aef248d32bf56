"""The epoch trace: a Keras callback that records each epoch and explains it.

``EpochTrace`` follows Keras's callback lifecycle (like ``CSVLogger``): it opens
on ``on_train_begin``, appends a stable-keyed record on ``on_epoch_end`` and
optionally streams it to CSV and JSON files, flushed every epoch.
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Iterable

from kerasio.errors import InputError
from kerasio.present.html import STYLE, table, trace_svg
from kerasio.present.text import render_table
from kerasio.process.jobs import job

__all__ = ["EpochTrace", "observe", "trace_table", "ascii_chart", "TRACE_KEYS", "render_png", "plot_available",
           "trace_header", "trace_row"]

TRACE_KEYS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds", "observation")


def _callback_base():
    import keras

    return keras.callbacks.Callback


class _Records:
    """Rendering shared by the callback and by traces read back from a manifest."""

    records: list[dict[str, Any]]

    def to_frame(self):
        """The trace as a pandas DataFrame, one row per epoch."""
        import pandas as pd

        return pd.DataFrame(self.records, columns=list(TRACE_KEYS))

    def table(self, width: int = 100) -> str:
        """``Epoch | Loss ↓ | Accuracy ↑ | Observation`` as a text table, at most ``width`` columns."""
        return trace_table(self.records, width=width)

    def _repr_html_(self) -> str:
        """In a notebook: the loss and accuracy charts (inline SVG) above the table."""

        rows = [[r.get("epoch"), _fmt(r.get("loss")), _fmt(r.get("accuracy")), _fmt(r.get("val_loss")),
                 _fmt(r.get("val_accuracy")), f"{r.get('seconds') or 0:.2f}", r.get("observation", "")]
                for r in self.records]
        return (f'{STYLE}<div class="kerasio"><h4>Epoch trace ({len(self.records)} epochs)</h4>'
                f'{trace_svg(self.records, key="loss")}{trace_svg(self.records, key="accuracy")}'
                + table(["Epoch", "Loss ↓", "Accuracy ↑", "Val loss", "Val acc", "Time (s)", "Observation"], rows)
                + "</div>")

    def chart(self, **kwargs) -> str:
        """An ASCII chart of the loss (and val_loss) per epoch."""
        return ascii_chart(self.records, **kwargs)

    def plot(self):
        """A matplotlib Figure: loss and val_loss, accuracy and val_accuracy, per epoch.

        Needs matplotlib (``pip install 'kerasio[notebooks]'``); uses no global
        pyplot state, so it is safe in scripts, threads and notebooks (a Figure
        displays itself in Jupyter).
        """
        try:
            from matplotlib.figure import Figure
            from matplotlib.ticker import MaxNLocator
        except ImportError:
            raise InputError("trace.plot() needs matplotlib: pip install 'kerasio[notebooks]'. "
                             "Received: matplotlib is not installed") from None
        fig = Figure(figsize=(9, 3.4), layout="constrained")
        epochs = [r["epoch"] for r in self.records]
        for ax, key, title in zip(fig.subplots(1, 2), ("loss", "accuracy"), ("Loss (lower is better)",
                                                                             "Accuracy (higher is better)")):
            for name, style in ((key, "-o"), (f"val_{key}", "--s")):
                values = [r.get(name) for r in self.records]
                if any(v is not None for v in values):
                    ax.plot(epochs, [float("nan") if v is None else v for v in values], style, markersize=3,
                            label=name)
            ax.set_title(title)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend()
        return fig

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=TRACE_KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.records)
        return buffer.getvalue()

    def json_text(self) -> str:
        return json.dumps(self.records, indent=2) + "\n"

    def png_bytes(self, dpi: int = 110) -> bytes:
        """:meth:`plot` as PNG bytes (needs matplotlib)."""
        buffer = io.BytesIO()
        self.plot().savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
        return buffer.getvalue()

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.csv_text(), encoding="utf-8")
        return path

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.json_text(), encoding="utf-8")
        return path


def plot_available() -> bool:
    """Whether matplotlib can be imported (without importing it)."""
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


@job("recipe.render_png")
def render_png(records: list[dict[str, Any]], path: str) -> str:
    """Write the trace's chart as a PNG at ``path``; return the path.

    The pipeline asks its verification worker to do this (a registered job): that
    interpreter imports matplotlib while training keeps this one busy, so the
    0.9 s of a cold matplotlib import never lands on the pipeline's own time.
    """
    Path(path).write_bytes(TraceRecords(records).png_bytes())
    return path


class TraceRecords(_Records):
    """A trace read back from disk or a manifest (no Keras needed)."""

    def __init__(self, records: Iterable[dict[str, Any]]):
        self.records = [dict(r) for r in records]


def EpochTrace(csv_path: str | Path | None = None, json_path: str | Path | None = None):
    """Create a ``keras.callbacks.Callback`` that records the epoch trace.

    Usable on any Keras model: ``model.fit(..., callbacks=[trace])``. After
    training, ``trace.records`` holds one dict per epoch with the keys
    :data:`TRACE_KEYS`; ``trace.table()``, ``trace.chart()`` and
    ``trace.to_frame()`` render it.

    Args:
        csv_path: if given, each epoch is appended to this CSV and flushed.
        json_path: if given, the whole trace is rewritten here every epoch.

    Example:
        >>> trace = EpochTrace()
        >>> model.fit(x, y, epochs=2, callbacks=[trace])  # doctest: +SKIP
        >>> print(trace.table())  # doctest: +SKIP
    """
    return _make_class()(csv_path, json_path)


_CLASS = None


def _make_class():
    # The class derives from keras.callbacks.Callback, built on first use so that
    # importing kerasio.trace does not import Keras (and TensorFlow).
    global _CLASS
    if _CLASS is not None:
        return _CLASS

    base: Any = _callback_base()  # keras.callbacks.Callback, known only once Keras is imported

    class _EpochTrace(base, _Records):
        def __init__(self, csv_path=None, json_path=None):
            super().__init__()
            self.csv_path = Path(csv_path) if csv_path else None
            self.json_path = Path(json_path) if json_path else None
            self.records: list[dict[str, Any]] = []
            self._csv: Any = None
            self._writer: Any = None
            self._start = 0.0

        def on_train_begin(self, logs=None):
            # A resumed fit (initial_epoch > 0) keeps the earlier records.
            if self.csv_path is not None:
                fresh = not self.records
                self._csv = self.csv_path.open("w" if fresh else "a", newline="", encoding="utf-8")
                self._writer = csv.DictWriter(self._csv, fieldnames=TRACE_KEYS)
                if fresh:
                    self._writer.writeheader()

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            record = {
                "epoch": epoch + 1,
                "loss": _num(logs.get("loss")),
                "accuracy": _num(logs.get("accuracy", logs.get("acc"))),
                "val_loss": _num(logs.get("val_loss")),
                "val_accuracy": _num(logs.get("val_accuracy", logs.get("val_acc"))),
                "learning_rate": _num(logs.get("learning_rate", self._learning_rate())),
                "seconds": round(time.perf_counter() - self._start, 4),
            }
            record["observation"] = observe(self.records, record)
            self.records.append(record)
            if self._writer is not None:
                self._writer.writerow(record)
                self._csv.flush()
            if self.json_path is not None:
                self.write_json(self.json_path)

        def on_train_end(self, logs=None):
            if self._csv is not None:
                self._csv.close()
                self._csv = self._writer = None

        def _learning_rate(self):
            optimizer = getattr(self.model, "optimizer", None)
            lr: Any = getattr(optimizer, "learning_rate", None)
            try:
                return float(lr.numpy() if hasattr(lr, "numpy") else lr)
            except (TypeError, ValueError):
                return None

    _EpochTrace.__name__ = _EpochTrace.__qualname__ = "EpochTrace"
    _CLASS = _EpochTrace
    return _CLASS


def _num(value) -> float | None:
    if value is None:
        return None
    try:
        return round(float(value), 6)
    except (TypeError, ValueError):
        return None


def observe(previous: list[dict[str, Any]], record: dict[str, Any]) -> str:
    """A one-line reading of an epoch's numbers, given the epochs before it.

    Read off trends, not single-epoch noise: "overfitting" only when
    ``val_loss`` has risen two epochs running (by more than 1% in all) while
    ``loss`` fell over the same epochs; "learning rate too high" only when
    ``loss`` jumps by more than 5% and its 3-epoch mean rises too.
    """
    loss, acc = record.get("loss"), record.get("accuracy")
    if loss is None:
        return "no loss reported"
    if not previous:
        return "starts learning" if (acc or 0) > 0 else "starts training"
    history = [*previous, record]
    losses = [r.get("loss") for r in history]
    prev = previous[-1]
    recent = [float(v) for v in losses[-3:] if v is not None]
    if len(history) >= 3 and len(recent) == 3:
        found = [r.get("val_loss") for r in history[-3:]]
        vals = [float(v) for v in found if v is not None]
        if len(vals) == 3 and vals[0] < vals[1] < vals[2] and vals[2] > vals[0] * 1.01 and recent[2] < recent[0]:
            return "overfitting: val_loss rising"
    d_loss = loss - prev["loss"]
    rel = abs(d_loss) / max(prev["loss"], 1e-12)
    if d_loss > 0 and rel > 0.05 and _mean(losses[-3:]) > _mean(losses[-4:-1]):
        return "learning rate too high"
    if d_loss > 0:
        return "loss flat (noise)" if rel <= 0.05 else "loss jumps once"
    if rel < 0.01:
        return "training stabilizes"
    if rel < 0.05 and (acc or 0) >= 0.85:
        return "good convergence"
    if (acc or 0) - (prev.get("accuracy") or 0) > 0:
        return "loss down, accuracy up"
    return "loss decreases"


def _mean(values: list[Any]) -> float:
    numbers = [v for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else 0.0


OBSERVATION_WIDTH = 28  # the tables then fit in 100 columns (the live one under a 9-column indent)
_LIVE = (("Epoch", 5), ("Loss ↓", 6), ("Accuracy ↑", 10), ("Val loss", 8), ("Val acc", 7), ("Sec", 5),
         ("Observation", OBSERVATION_WIDTH))


def trace_header() -> str:
    """The header of the live trace (rows printed one by one as epochs end, with fixed widths)."""
    return "| " + " | ".join(h.ljust(w) for h, w in _LIVE) + " |\n|" + "|".join("-" * (w + 2) for _, w in _LIVE) + "|"


def _cells(r: dict[str, Any], *, val: bool = True) -> list[str]:
    """An epoch's cells, as both trace tables show them: epoch, loss, accuracy, [val figures,] seconds, note."""
    note = str(r.get("observation", ""))
    note = note if len(note) <= OBSERVATION_WIDTH else note[:OBSERVATION_WIDTH - 1] + "…"
    vals = [_fmt(r.get("val_loss")), _fmt(r.get("val_accuracy"))] if val else []
    return [str(r.get("epoch", "")), _fmt(r.get("loss")), _fmt(r.get("accuracy")), *vals, f"{r.get('seconds', 0):.2f}",
            note]


def trace_row(r: dict[str, Any]) -> str:
    """One epoch's row of the live trace."""
    return "| " + " | ".join(c.ljust(w) for c, (_, w) in zip(_cells(r), _LIVE)) + " |"


def trace_table(records: list[dict[str, Any]], width: int = 100) -> str:
    """Render ``Epoch | Loss ↓ | Accuracy ↑ | Observation`` (val figures when present)."""
    has_val = any(r.get("val_loss") is not None for r in records)
    head = ["Epoch", "Loss ↓", "Accuracy ↑"] + (["Val loss", "Val acc"] if has_val else []) + ["Time (s)", "Observation"]
    return render_table(head, [_cells(r, val=has_val) for r in records], width=width)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def ascii_chart(records: list[dict[str, Any]], *, height: int = 8, key: str = "loss", width: int = 100) -> str:
    """A terminal chart of ``key`` (``*``) and ``val_<key>`` (``o``) per epoch, at most ``width`` columns.

    Beyond what fits, epochs are sampled evenly (the first and the last always shown).
    """
    if not records:
        return f"(no {key} to chart)"
    col_w = 4
    fits = max(2, (width - 10) // col_w)
    if len(records) > fits:
        picks = sorted({round(i * (len(records) - 1) / (fits - 1)) for i in range(fits)})
        records = [records[i] for i in picks]
    series = [r.get(key) for r in records]
    val = [r.get(f"val_{key}") for r in records]
    values = [v for v in series + val if v is not None]
    if not values:
        return f"(no {key} to chart)"
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    level = lambda v: round((v - lo) / span * (height - 1))  # noqa: E731
    grid = [[" "] * (len(records) * col_w) for _ in range(height)]
    for i, (a, b) in enumerate(zip(series, val)):
        if b is not None:
            grid[height - 1 - level(b)][i * col_w + 1] = "o"
        if a is not None:
            grid[height - 1 - level(a)][i * col_w + 1] = "*"
    lines = []
    for row_i, row in enumerate(grid):
        value = hi - row_i * span / max(height - 1, 1)
        lines.append(f"{value:8.4f} |{''.join(row).rstrip()}")
    lines.append(" " * 9 + "+" + "-" * (len(records) * col_w))
    lines.append(" " * 10 + "".join(f" {r['epoch']:<{col_w - 1}}" for r in records).rstrip())
    legend = f"{key} *" + (f"   val_{key} o" if any(v is not None for v in val) else "")
    lines.append(" " * 10 + "epoch      " + legend)
    return "\n".join(lines)
