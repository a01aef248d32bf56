"""Live training output: each epoch's trace row as the epoch ends, and a progress bar within long epochs.

The bar (``rich``, which Keras already depends on) appears only on a terminal,
only once an epoch has run for ``after`` seconds (2 by default; 0 with
``--verbose``), and disappears when the epoch ends, leaving the row behind.
Off a terminal (a pipe, a log file, CI) only the rows are printed.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from kerasio.recipe.trace import trace_header, trace_row

__all__ = ["live_callbacks", "trace_header"]


def live_callbacks(echo: Callable[[str], None], trace: Any, *, steps: int, after: float = 2.0,
                   stream: Any = None) -> list[Any]:
    """Keras callbacks that print ``trace``'s row through ``echo`` as each epoch ends, with a bar within long epochs.

    Put them after ``trace`` in ``callbacks``: its record of the epoch must exist first.
    """
    import keras

    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())

    class Live(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.progress: Any = None
            self.task: Any = None
            self.start = 0.0
            self.last = 0.0

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.epoch, self.start, self.last = epoch + 1, time.monotonic(), 0.0

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            if not tty:
                return
            now = time.monotonic()
            if now - self.start < after or now - self.last < 0.1:  # a short epoch shows no bar; 10 updates/s
                return
            self.last = now
            loss = (logs or {}).get("loss")
            if self.progress is None:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

                self.progress = Progress(TextColumn("         epoch {task.fields[epoch]}"), BarColumn(),
                                         MofNCompleteColumn(), TimeRemainingColumn(),
                                         TextColumn("loss {task.fields[loss]}"),
                                         console=Console(file=stream, width=100), transient=True)
                self.progress.start()
                self.task = self.progress.add_task("train", total=steps, epoch=self.epoch, loss="-")
            shown = "-" if loss is None else f"{float(loss):.4f}"
            self.progress.update(self.task, completed=batch + 1, epoch=self.epoch, loss=shown)

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self._stop_bar()

        def on_train_end(self, logs: Any = None) -> None:
            self._stop_bar()

        def _stop_bar(self) -> None:
            if self.progress is not None:
                self.progress.stop()
                self.progress = self.task = None

    class Rows(keras.callbacks.Callback):
        """Prints the row the EpochTrace (earlier in the list) has just recorded."""

        def __init__(self, trace: Any) -> None:
            super().__init__()
            self.trace = trace

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            echo(trace_row(self.trace.records[-1]))
            flush = getattr(stream, "flush", None)
            if flush:
                flush()

    return [Live(), Rows(trace)]
