"""The reproduction kit of a failing check: a directory to attach to an upstream bug report as it is.

A failing check writes, next to the report (``<bundle>/repro/<format>-<device>/``, or
``VerifyOptions(repro_dir=...)``):

* ``inputs.npz``: the input the check failed on (the reference batch, its first row or a shape of the sweep);
* ``expected.npz``: the original model's outputs on it, as the bundle stores them;
* ``actual.npz``: the artifact's outputs, as kerasio's verifier read them (absent when the runtime refused it);
* ``artifact/``: a copy of the artifact (up to :data:`COPY_LIMIT`; a larger one is named by its path);
* ``check.json``: kerasio's check, with its statistics, tolerance and layer-by-layer explanation;
* ``reproduce.py``: the comparison again with the artifact's runtime alone (onnxruntime, TensorFlow, LiteRT or
  Keras) and numpy, no kerasio: exit 0 when the outputs agree within the tolerance, 1 when they do not.

The script is the format's own loader code (:attr:`~kerasio.formats.Format.repro_code`) under a fixed header.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.arrays import save_arrays
from kerasio.formats import get_format
from kerasio.spec.iospec import IOSpec

__all__ = ["write_kit", "COPY_LIMIT"]

COPY_LIMIT = 256 << 20  # bytes of artifact copied into a kit; a larger artifact is named by its path instead


def write_kit(root: Path, *, check: Mapping[str, Any], iospec: IOSpec, artifact: Path, shown: Path, case: str,
              inputs: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
              actual: Mapping[str, np.ndarray] | None, imports: Sequence[str] = ()) -> Path:
    """Write one failing check's kit under ``root``; return its directory (replaced if it existed).

    ``artifact`` is the file that was checked (a verified copy), ``shown`` where it lives in the bundle.
    """
    fmt = get_format(check["format"])
    root = Path(root)
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise OSError(f"{root} is not a directory kerasio may write into")
    kit = root / f"{fmt.name}-{check.get('device') or 'cpu'}"
    if kit.is_symlink():
        kit.unlink()
    elif kit.exists():
        shutil.rmtree(kit)
    kit.mkdir(parents=True)
    save_arrays(kit / "inputs.npz", dict(inputs))
    save_arrays(kit / "expected.npz", dict(expected))
    if actual is not None:
        save_arrays(kit / "actual.npz", dict(actual))
    size = sum(p.stat().st_size for p in artifact.rglob("*") if p.is_file()) if artifact.is_dir() else \
        artifact.stat().st_size
    if size <= COPY_LIMIT:
        target = kit / "artifact" / artifact.name
        target.parent.mkdir()
        shutil.copytree(artifact, target, symlinks=True) if artifact.is_dir() else shutil.copyfile(artifact, target)
        where = f'HERE / "artifact" / {artifact.name!r}'
    else:
        where = f"Path({str(shown.resolve())!r})"
    (kit / "check.json").write_text(json.dumps(check, indent=2, default=str), encoding="utf-8")
    (kit / "reproduce.py").write_text(_script(fmt.name, fmt.runtime, fmt.repro_code, check, iospec, where, case,
                                              {k: list(np.shape(v)) for k, v in inputs.items()}, imports),
                                      encoding="utf-8")
    return kit


def _script(name: str, runtime: str, code: str, check: Mapping[str, Any], iospec: IOSpec, where: str, case: str,
            shapes: Mapping[str, list[int]], imports: Sequence[str]) -> str:
    found = (check.get("explanation") or {}).get("summary") or check.get("error") or "outputs outside the tolerance"
    return f'''#!/usr/bin/env python3
"""Reproduce a failing check of kerasio {check.get("artifact", "")!r} ({name}) with {runtime} alone.

Input: the {case} ({", ".join(f"{k} {v}" for k, v in shapes.items())}), in inputs.npz; the original model's
outputs on it are in expected.npz, and the artifact's outputs as kerasio read them in actual.npz.
kerasio found: {" ".join(str(found).split())[:400]}

Run:   python reproduce.py
Exit:  0 when the artifact's outputs agree with expected.npz within the tolerance; 1 when they do not.
"""
import importlib
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ARTIFACT = {where}
ATOL, RTOL = {float(check.get("atol") or 0.0)!r}, {float(check.get("rtol") or 0.0)!r}
DEVICE = {check.get("device") or "cpu"!r}
IMPORTS = {list(imports)!r}  # modules that register the model's custom classes
INPUT_NAMES = {iospec.input_names!r}
INPUT_KEYS = {tf_input_names(iospec)!r}  # the same inputs, as a TensorFlow signature names them
INPUT_STRUCTURE = {iospec.input_structure!r}  # how a Keras model takes them: one array, a list or a dict
OUTPUT_NAMES = {iospec.output_names!r}

{code.strip()}


def compare(name, actual, expected):
    """Elementwise, as kerasio's default: |actual - expected| <= ATOL + RTOL * |expected|; exact for non-floats."""
    if actual.shape != expected.shape:
        print(f"{{name}}: shape {{actual.shape}} differs from the expected {{expected.shape}}")
        return False
    if expected.dtype.kind not in "fc":
        bad = int(np.count_nonzero(actual.astype(str) != expected.astype(str)))
        print(f"{{name}}: {{bad}} of {{expected.size}} values differ")
        return bad == 0
    a, b = actual.astype(np.float64), expected.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
        bad = int(np.count_nonzero(~(diff <= ATOL + RTOL * np.abs(b))))
    print(f"{{name}}: max abs diff {{np.nanmax(diff, initial=0.0):.6g}}, {{bad}} of {{b.size}} values outside "
          f"atol {{ATOL:g}} + rtol {{RTOL:g}} * |expected|")
    return bad == 0


def main():
    for module in IMPORTS:
        importlib.import_module(module)
    with np.load(HERE / "inputs.npz") as f:
        inputs = {{k: f[k] for k in INPUT_NAMES}}
    with np.load(HERE / "expected.npz") as f:
        expected = {{k: f[k] for k in OUTPUT_NAMES}}
    try:
        actual = run(str(ARTIFACT), inputs)
    except Exception as exc:  # the runtime refused these inputs: that is the bug
        print(f"REPRODUCED: {runtime} refused the inputs: {{type(exc).__name__}}: {{exc}}")
        return 1
    failed = [name for name in OUTPUT_NAMES if not compare(name, np.asarray(actual[name]), expected[name])]
    print(f"REPRODUCED: {{', '.join(failed)}} outside the tolerance" if failed else
          "not reproduced: every output agrees within the tolerance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
'''
