"""A quantized artifact against the float model: distortion, decisions and the task's metric, judged by gates.

A quantized artifact cannot be held to float32 tolerances: its outputs move by
design. What a reviewer needs to know is how far (per output: MSE, SNR in dB,
cosine similarity and, for probability outputs, the KL divergence from the float
model's) and whether the decisions hold (top-1 agreement, top-k flips, and
whether the rows that flip are the ones where the float model's top two were
close). When the reference rows' labels are known (the pipeline stores them,
``kerasio export --labels``), the task's metric is measured too: the quantized
accuracy against the float model's on the same rows.

A check passes when every gate that applies holds. The default gates are the
rows of :data:`GATES` (printed in the README), overridable per call
(``VerifyOptions(gates={"top1_agreement": 0.995})``, CLI ``--gate``), and the
report records the thresholds it used.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from kerasio.errors import InputError

__all__ = ["Gate", "GATES", "NEAR_TIE", "figures", "judge", "gates_for", "markdown_gates", "value_text"]

NEAR_TIE = 0.1  # a flip is "near a tie" when the float model's top two probabilities were within this


@dataclass(frozen=True)
class Gate:
    """One gate: ``metric`` compared with ``threshold`` (``at_least`` or at most), for tasks of ``task``."""

    metric: str
    threshold: float
    at_least: bool
    task: str  # classification, regression, raw or *
    reason: str

    def holds(self, value: float) -> bool:
        slack = 1e-9 * max(1.0, abs(self.threshold))  # 0.9 - 0.89 is 0.010000000000000009: one point, not more
        return value >= self.threshold - slack if self.at_least else value <= self.threshold + slack

    def text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {_fmt(self.metric, self.threshold)}"


GATES: tuple[Gate, ...] = (
    Gate("top1_agreement", 0.99, True, "classification",
         "the quantized model takes the float model's decision on at least 99% of the reference rows"),
    Gate("accuracy_drop", 0.01, False, "classification",
         "where the rows' labels are known: at most 1 point of accuracy lost against the float model"),
    Gate("snr_db", 30.0, True, "regression",
         "a value output keeps a signal-to-noise ratio of 30 dB (the error's power 1/1000 of the signal's)"),
    Gate("snr_db", 30.0, True, "raw", "every float output keeps a signal-to-noise ratio of 30 dB"),
)
METRICS = ("top1_agreement", "accuracy_drop", "snr_db", "cosine", "kl")


def gates_for(task: str, overrides: Mapping[str, float] | None = None) -> list[Gate]:
    """The gates of a task, with ``overrides`` ({metric: threshold}) replacing a default's threshold or adding one."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(METRICS))
    if unknown:
        raise InputError(f"unknown gate metric {unknown[0]!r}; the metrics are {', '.join(METRICS)} "
                         f"(e.g. --gate top1_agreement=0.995). Received: {unknown}")
    chosen = [g for g in GATES if g.task in (task, "*")]
    result = []
    for gate in chosen:
        value = overrides.pop(gate.metric, None)
        result.append(gate if value is None else Gate(gate.metric, float(value), gate.at_least, gate.task,
                                                      "given by the caller"))
    for metric, value in overrides.items():
        result.append(Gate(metric, float(value), metric not in ("accuracy_drop", "kl"), task, "given by the caller"))
    return result


def figures(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *, probabilities: Sequence[str],
            decision: str | None, labels: np.ndarray | None, top_k: int = 5) -> dict[str, Any]:
    """The distortion of every float output, and the decisions of the ``decision`` output (a classifier's).

    ``probabilities``: the outputs whose rows are probability vectors (KL divergence); ``labels``: the
    reference rows' class indices, when known.
    """
    out: dict[str, Any] = {"outputs": {}}
    for name, ref in reference.items():
        ref64, act64 = np.asarray(ref, np.float64), np.asarray(actual[name], np.float64)
        if ref64.dtype.kind != "f" or ref64.shape != act64.shape or not ref64.size:
            continue
        err = act64 - ref64
        power, noise = float(np.sum(ref64 ** 2)), float(np.sum(err ** 2))
        a, b = ref64.reshape(len(ref64), -1), act64.reshape(len(act64), -1)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosine = float(np.mean(np.where(norms > 0, np.sum(a * b, axis=1) / np.maximum(norms, 1e-30), 1.0)))
        entry = {"mse": float(np.mean(err ** 2)), "snr_db": _snr(power, noise), "cosine": cosine}
        if name in probabilities:
            p, q = np.clip(a, 1e-12, None), np.clip(b, 1e-12, None)
            entry["kl"] = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
        out["outputs"][name] = entry
    if decision is not None and decision in reference:
        ref = np.asarray(reference[decision], np.float64)
        act = np.asarray(actual[decision], np.float64)
        ref2, act2 = ref.reshape(len(ref), -1), act.reshape(len(act), -1)
        if ref2.shape[1] == 1:  # one sigmoid unit: the decision is p >= 0.5
            ref_top, act_top = (ref2[:, 0] >= 0.5).astype(int), (act2[:, 0] >= 0.5).astype(int)
            margin = np.abs(ref2[:, 0] - 0.5) * 2
            k = 1
        else:
            order = np.argsort(-ref2, axis=1)
            ref_top, act_top = order[:, 0], act2.argmax(1)
            margin = ref2[np.arange(len(ref2)), order[:, 0]] - ref2[np.arange(len(ref2)), order[:, 1]]
            k = min(top_k, ref2.shape[1] - 1)
        flipped = ref_top != act_top
        decisions: dict[str, Any] = {
            "output": decision, "rows": int(len(ref_top)), "top1_agreement": float(np.mean(~flipped)),
            "flips": int(flipped.sum()), "near_tie": NEAR_TIE,
            "flips_near_ties_only": bool(np.all(margin[flipped] <= NEAR_TIE)) if flipped.any() else True,
            "largest_flipped_margin": float(margin[flipped].max()) if flipped.any() else None,
        }
        if k > 1:
            ref_k = np.sort(np.argsort(-ref2, axis=1)[:, :k], axis=1)
            act_k = np.sort(np.argsort(-act2, axis=1)[:, :k], axis=1)
            decisions["top_k"], decisions["top_k_set_changes"] = k, int(np.sum(np.any(ref_k != act_k, axis=1)))
        if labels is not None and len(labels) == len(ref_top):
            truth = np.asarray(labels).reshape(-1).astype(int)
            decisions["float_accuracy"] = float(np.mean(ref_top == truth))
            decisions["accuracy"] = float(np.mean(act_top == truth))
            decisions["accuracy_drop"] = decisions["float_accuracy"] - decisions["accuracy"]
        out["decisions"] = decisions
    return out


def judge(measured: Mapping[str, Any], gates: Sequence[Gate]) -> list[dict[str, Any]]:
    """Each gate with the value it was held to: ``{metric, threshold, rule, value, passed, reason}``.

    A gate on a metric that was not measured (no labels, no decision output) is reported as not applied.
    """
    decisions = measured.get("decisions") or {}
    outputs = measured.get("outputs") or {}
    results = []
    for gate in gates:
        if gate.metric in decisions:
            value: float | None = decisions[gate.metric]
        elif gate.metric in ("snr_db", "cosine"):
            values = [o[gate.metric] for o in outputs.values() if gate.metric in o]
            value = min(values) if values else None
        elif gate.metric == "kl":
            values = [o["kl"] for o in outputs.values() if "kl" in o]
            value = max(values) if values else None
        else:
            value = None
        results.append({**asdict(gate), "rule": gate.text(), "value": value,
                        "passed": None if value is None else bool(gate.holds(value))})
    return results


def markdown_gates() -> str:
    lines = ["| task | metric | gate | why |", "|---|---|---|---|"]
    lines += [f"| {g.task} | {g.metric} | {g.text()} | {g.reason} |" for g in GATES]
    return "\n".join(lines)


def value_text(metric: str, value: float | None) -> str:
    """A gate's measured value as a reader reads it: 98.50%, 0.50 points, 24.5 dB."""
    if value is None:
        return "-"
    if metric == "top1_agreement":
        return f"{value:.2%}"
    if metric == "accuracy_drop":
        return f"{value * 100:.2f} points"
    return f"{value:.1f} dB" if metric == "snr_db" else f"{value:.4g}"


def _snr(power: float, noise: float) -> float:
    if noise == 0:
        return float("inf")
    return 10 * float(np.log10(max(power, 1e-300) / noise))


def _fmt(metric: str, value: float) -> str:
    if metric in ("top1_agreement", "accuracy_drop"):
        return f"{value * 100:g}" + ("%" if metric == "top1_agreement" else " points")
    if metric == "snr_db":
        return f"{value:g} dB"
    return f"{value:g}"
