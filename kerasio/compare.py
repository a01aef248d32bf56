"""Do two artifacts agree? ``kerasio.load(a).compare(kerasio.load(b))``; CLI ``kerasio compare A B``.

Two artifacts of any formats kerasio loads (a ``.keras`` and an ONNX or LiteRT
file a colleague converted, say) run on the same inputs, each where
:func:`~kerasio.load` put it (the CLI puts both in sandboxed workers), and
every output is compared with the tolerance table and the verification
report's statistics (:func:`~kerasio.spec.tolerances.compare_cases`). Inputs
and outputs are matched by name, else by position, which the result notes.
Without inputs, the first artifact's signature makes them
(:mod:`kerasio.spec.synth`), from its layers when it is a Keras model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from kerasio.bundle.inputs import read_input_file
from kerasio.errors import InputError
from kerasio.options import VerifyOptions
from kerasio.present.html import STYLE, escape, table
from kerasio.present.html import status as html_status
from kerasio.present.text import render_table, wrap_notes
from kerasio.spec.iospec import IOSpec, mark_probabilities
from kerasio.spec.synth import SyntheticInputs
from kerasio.spec.tolerances import compare_cases, tolerance_for

if TYPE_CHECKING:
    from kerasio.loading import LoadedModel

__all__ = ["Comparison", "compare_models"]


@dataclass
class Comparison:
    """Two artifacts' outputs on the same inputs, output by output (``ok`` when every output agrees)."""

    a: str
    b: str
    formats: list[str]
    runtimes: list[str]
    inputs: str  # where the inputs came from
    rows: int
    atol: float
    rtol: float
    tolerance_reason: str
    outputs: list[dict[str, Any]] = field(default_factory=list)  # OutputComparison dicts, with "b_name"
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.outputs) and all(o["passed"] for o in self.outputs)

    def table(self, width: int = 100) -> str:
        """The outputs as a text table with notes below, at most ``width`` columns."""
        rows = [[o["name"] if o["name"] == o["b_name"] else f"{o['name']} / {o['b_name']}", _sci(o["max_abs_diff"]),
                 _sci(o["max_rel_diff"]), _sci(o.get("mean_abs_diff")), _sci(o.get("p99_abs_diff")),
                 "-" if o.get("max_ulp") is None else str(o["max_ulp"]), f"{o.get('nan', 0)}/{o.get('inf', 0)}",
                 _sci(o.get("required_atol")), "PASS" if o["passed"] else "FAIL"] for o in self.outputs]
        text = render_table(["Output", "Max abs", "Max rel", "abs mean", "abs p99", "ULP", "NaN/Inf", "Needs",
                             "Result"], rows, width=width)
        notes = [f"  A: {self.a} ({self.formats[0]}, {self.runtimes[0]})",
                 f"  B: {self.b} ({self.formats[1]}, {self.runtimes[1]})",
                 f"  inputs: {self.inputs}; {self.rows} rows",
                 f"  tolerance: atol {self.atol:g}, rtol {self.rtol:g} ({self.tolerance_reason})",
                 *(f"  {n}" for n in self.notes),
                 *(f"  output {o['name']!r}: {o['detail']}" for o in self.outputs if o.get("detail"))]
        return text + "\n" + "\n".join(wrap_notes(notes, width=width))

    __str__ = table

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def _repr_html_(self) -> str:
        rows = [[o["name"], o["b_name"], _sci(o["max_abs_diff"]), _sci(o["max_rel_diff"]),
                 _sci(o.get("mean_abs_diff")), _sci(o.get("p99_abs_diff")), f"{o.get('nan', 0)}/{o.get('inf', 0)}",
                 "PASS" if o["passed"] else "FAIL"] for o in self.outputs]
        notes = "".join(f"<li>{escape(n.strip())}</li>" for n in self.table().splitlines() if n.startswith("  "))
        return (f'{STYLE}<div class="kerasio"><h4>{escape(self.a)} against {escape(self.b)}: '
                f"{html_status('PASS' if self.ok else 'FAIL')}</h4>"
                + table(["Output (A)", "Output (B)", "Max abs", "Max rel", "abs mean", "abs p99", "NaN/Inf",
                         "Result"], rows, status_column=7) + f'<ul class="note">{notes}</ul></div>')


def compare_models(a: "LoadedModel", b: "LoadedModel", inputs: Any = None,
                   options: VerifyOptions | None = None) -> Comparison:
    """Run ``a`` and ``b`` on the same inputs and compare every output (see the module's doc).

    ``inputs``: arrays, a dict, a DataFrame or a file (CSV, Parquet, ``.npz``, ``.npy``) for ``a``'s signature;
    ``None`` or a :class:`~kerasio.options.SyntheticInputs`: made from ``a``'s signature. ``options``: the
    tolerance (``rtol``, ``atol``, ``statistic``) when not the table's.
    """
    options = options or VerifyOptions()
    notes: list[str] = []
    if inputs is None or isinstance(inputs, SyntheticInputs):
        settings = inputs or SyntheticInputs()
        x, made = a.synthesize(settings)
        said = f"SYNTHETIC, made from A's signature (seed {settings.seed}): " + \
            "; ".join(f"{k}: {v}" for k, v in made.items())
    else:
        said = str(inputs) if isinstance(inputs, (str, Path)) else "given by the caller"
        if isinstance(inputs, (str, Path)):
            inputs = read_input_file(inputs)
        x = a.iospec.coerce(inputs, source=said)
    x_b = _inputs_for(b.iospec, x, notes)
    out_a, out_b = a.run(x), b.run(x_b)
    pairs = _output_pairs(a.iospec, b.iospec, notes)
    marked = mark_probabilities(IOSpec.from_dict(a.iospec.to_dict()), out_a)
    rows = [tolerance_for(m.format, m.runner.backend, m.runner.device, a.iospec.compute, same_cpu=False,
                          exported_by=other.runner.backend, exported_on=other.runner.device)
            for m, other in ((b, a), (a, b))]
    row = max(rows, key=lambda t: (t.atol, t.rtol))  # the looser of the two formats' rows: each side may round
    atol = row.atol if options.atol is None else float(options.atol)
    rtol = row.rtol if options.rtol is None else float(options.rtol)
    outputs = []
    for spec, name_b in pairs:
        result = compare_cases(spec.name, [("inputs", out_a[spec.name], out_b[name_b])], atol=atol, rtol=rtol,
                               probabilities=any(s.probabilities for s in marked.outputs if s.name == spec.name),
                               statistic=options.statistic_for(spec.name) or row.statistic)
        outputs.append({**result.to_dict(), "b_name": name_b})
    return Comparison(
        a=str(a.path), b=str(b.path), formats=[a.format, b.format], runtimes=[a.runner.runtime, b.runner.runtime],
        inputs=said, rows=len(next(iter(x.values()))) if x else 0, atol=atol, rtol=rtol,
        tolerance_reason=row.reason if options.atol is None and options.rtol is None else "given by the caller",
        outputs=outputs, notes=notes)


def _inputs_for(b: IOSpec, x: dict[str, np.ndarray], notes: list[str]) -> dict[str, np.ndarray]:
    """``x`` (keyed by A's input names) keyed by B's: by name, else by position (noted)."""
    if set(b.input_names) <= set(x):
        return {name: x[name] for name in b.input_names}
    if len(b.input_names) == len(x):
        pairs = list(zip(x, b.input_names))
        notes.append("inputs matched by position, their names differ: "
                     + ", ".join(f"A's {p!r} -> B's {q!r}" for p, q in pairs))
        return {q: x[p] for p, q in pairs}
    raise InputError(f"the two artifacts take different inputs: A takes {list(x)}, B takes {b.input_names}; "
                     f"compare artifacts of the same model. Received: {len(x)} and {len(b.input_names)} inputs")


def _output_pairs(a: IOSpec, b: IOSpec, notes: list[str]) -> Sequence[tuple[Any, str]]:
    """A's outputs with the name of B's output each is compared with: by name, else by position (noted)."""
    if set(a.output_names) <= set(b.output_names):
        extra = [n for n in b.output_names if n not in a.output_names]
        if extra:
            notes.append(f"B's outputs {extra} have no counterpart in A and are not compared")
        return [(spec, spec.name) for spec in a.outputs]
    if len(a.output_names) == len(b.output_names):
        notes.append("outputs matched by position, their names differ: "
                     + ", ".join(f"A's {p!r} -> B's {q!r}" for p, q in zip(a.output_names, b.output_names)))
        return list(zip(a.outputs, b.output_names))
    common = [spec for spec in a.outputs if spec.name in b.output_names]
    if not common:
        raise InputError(f"the two artifacts share no output: A returns {a.output_names}, B returns "
                         f"{b.output_names}. Received: no common output")
    notes.append(f"only the outputs both return are compared: {[s.name for s in common]}")
    return [(spec, spec.name) for spec in common]


def _sci(v: float | None) -> str:
    return "-" if v is None else ("0" if v == 0 else f"{v:.2e}")
