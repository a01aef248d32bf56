"""Tabular in and out: input files for ``predict``, prediction files, and plain text tables.

Input files: CSV and Parquet (columns matched to the signature by name), ``.npz``
(one array per input name) and ``.npy`` (one array, for a single input).
Predictions: CSV when every output fits in columns, ``.npz`` otherwise.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import InputError

__all__ = ["read_input_file", "prediction_columns", "write_predictions", "render_table", "wrap_notes", "WIDTH",
           "INPUT_SUFFIXES"]

INPUT_SUFFIXES = (".csv", ".parquet", ".pq", ".npz", ".npy")


def read_input_file(path: str | Path) -> Any:
    """A DataFrame (CSV, Parquet), a dict of arrays (``.npz``) or an array (``.npy``).

    Raises:
        InputError: naming the file, for a missing, unreadable or unknown file.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such file. Pass a CSV, Parquet, .npz or .npy file of inputs. "
                         f"Received: --input {file}")
    suffix = file.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(file, allow_pickle=False) as data:
                return {name: data[name] for name in data.files}
        if suffix == ".npy":
            return np.load(file, allow_pickle=False)
        import pandas as pd

        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(file)
        return pd.read_csv(file)
    except ImportError as exc:
        raise InputError(f"{file}: reading {suffix} files needs pyarrow ({exc}); pip install 'kerasio[parquet]'. "
                         f"Received: {file.name}") from None
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise InputError(f"{file}: not a readable {suffix or 'CSV'} file ({first}). Check the format; kerasio "
                         f"reads {', '.join(INPUT_SUFFIXES)}. Received: {file.name}") from None
    except Exception as exc:  # pandas' parser errors have no common base beyond ValueError in all versions
        raise InputError(f"{file}: not a readable file ({type(exc).__name__}: {str(exc)[:200]}). "
                         f"Received: {file.name}") from None


def prediction_columns(outputs: Mapping[str, np.ndarray], *, labels: np.ndarray | None = None,
                       class_names: list[str] | None = None, binary: bool = False) -> dict[str, np.ndarray] | None:
    """Outputs as named columns, or ``None`` when some output has more than 2 dimensions.

    A classification gets ``label`` and one ``p_<class>`` column per class
    (a sigmoid unit: ``p_<positive class>``). Other outputs are named after
    themselves, with ``_<i>`` suffixes for several columns.
    """
    columns: dict[str, np.ndarray] = {}
    if labels is not None:
        columns["label"] = labels
        (probs,) = outputs.values()
        probs = np.asarray(probs).reshape(len(probs), -1)
        names = (class_names or [])[1:] if binary else class_names or []
        for i, name in enumerate(names):
            columns[f"p_{name}"] = probs[:, i]
        return columns
    for name, value in outputs.items():
        array = np.asarray(value)
        if array.ndim > 2:
            return None
        if array.ndim <= 1 or array.shape[1] == 1:
            columns[name] = array.reshape(len(array))
        else:
            for i in range(array.shape[1]):
                columns[f"{name}_{i}"] = array[:, i]
    return columns


def write_predictions(path: str | Path, outputs: Mapping[str, np.ndarray],
                      columns: Mapping[str, np.ndarray] | None) -> Path:
    """Write ``columns`` as CSV, or ``outputs`` as ``.npz`` (suffix decides), via a temporary file and a rename."""
    file = Path(path)
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        if file.suffix.lower() == ".npz":
            from .manifest import save_arrays

            save_arrays(tmp, outputs)
        elif columns is None:
            raise InputError(f"{file}: some outputs have more than 2 dimensions and cannot be a CSV table; "
                             f"write them to an .npz file instead. Received: --output {file}")
        else:
            import pandas as pd

            pd.DataFrame(dict(columns)).to_csv(tmp, index=False)
        os.replace(tmp, file)
    except OSError as exc:
        raise InputError(f"{file}: cannot write predictions ({exc.strerror or exc}). Choose a writable path. "
                         f"Received: --output {file}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return file


WIDTH = 100  # every table and note kerasio prints fits in this many columns


def render_table(head: list[str], rows: list[list[str]], *, width: int = WIDTH) -> str:
    """A plain ``|``-separated text table (export, verify, inspect and the trace use it), at most ``width`` wide.

    When the content is wider, the widest columns are narrowed and their
    cells cut with ``…`` (a hash or a path keeps its start).
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    while sum(widths) + 3 * len(widths) + 1 > width and max(widths) > 6:
        widths[widths.index(max(widths))] -= 1

    def cell(text: str, w: int) -> str:
        return text.ljust(w) if len(text) <= w else text[:w - 1] + "…"

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell(c, w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(r) for r in rows)])


def wrap_notes(notes: list[str], *, width: int = WIDTH, indent: str = "  ") -> list[str]:
    """Each note wrapped to ``width`` columns, continuation lines indented under its text."""
    import textwrap

    out = []
    for note in notes:
        body = note[len(indent):] if note.startswith(indent) else note
        out += textwrap.wrap(body, width=width, initial_indent=indent, subsequent_indent=indent + "  ",
                             break_on_hyphens=False, break_long_words=True) or [indent]
    return out
