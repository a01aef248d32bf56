"""Regenerate the embedded default dataset exactly.

Run ``python -m kerasio.recipe.datasets.generate`` to rewrite ``default.csv``; the
test suite checks that the shipped file equals this script's output byte for
byte.

The data imitate flower measurements: ten numeric features in centimetres or
counts, three species whose clusters overlap enough that a classifier learns
them well but not perfectly (about 90% test accuracy).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SEED = 20261126
N_ROWS = 1000
LABEL = "species"
CLASSES = ("setosa", "versicolor", "virginica")
FEATURES = (
    "sepal_length", "sepal_width", "petal_length", "petal_width", "stem_length",
    "stem_diameter", "leaf_length", "leaf_width", "stamen_count", "petal_count",
)
# Per-class means and standard deviations, loosely after real iris measurements.
_MEANS = np.array([
    [5.0, 3.4, 1.5, 0.25, 21.0, 0.40, 6.0, 1.6, 18.0, 5.0],
    [5.9, 2.8, 4.2, 1.30, 24.0, 0.46, 6.8, 1.9, 21.0, 5.6],
    [6.5, 3.0, 5.5, 2.00, 25.5, 0.52, 7.3, 2.2, 23.0, 6.2],
])
_STDS = np.array([0.45, 0.38, 0.55, 0.35, 3.0, 0.06, 0.9, 0.35, 3.5, 0.9])


def generate(seed: int = SEED) -> str:
    """Return the default dataset as CSV text (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N_ROWS) % len(CLASSES)
    rng.shuffle(labels)
    noise = rng.standard_normal((N_ROWS, len(FEATURES)))
    # A shared "plant size" factor correlates the features, as in real plants.
    size = rng.standard_normal((N_ROWS, 1)) * 0.5
    values = _MEANS[labels] + (noise + size) * _STDS
    values[:, 8:] = np.maximum(np.round(values[:, 8:]), 1.0)  # counts are integers
    values[:, :8] = np.maximum(values[:, :8], 0.05)
    out = io.StringIO()
    out.write(",".join(FEATURES + (LABEL,)) + "\n")
    for row, label in zip(values, labels):
        cells = [f"{v:.2f}" for v in row[:8]] + [f"{int(v)}" for v in row[8:]]
        out.write(",".join(cells + [CLASSES[label]]) + "\n")
    return out.getvalue()


def main() -> None:
    path = Path(__file__).with_name("default.csv")
    path.write_text(generate(), encoding="utf-8", newline="\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
