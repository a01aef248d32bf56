"""``verify --resume``: prove that ``model.keras`` resumes training exactly.

Train ``N + 1`` epochs from scratch with the bundle's recorded seed and data;
separately load the bundle's ``model.keras`` (trained for ``N`` epochs, with its
optimizer state) and train 1 more epoch. With deterministic ops on the CPU the
two must be bit-identical, optimizer state included. A dropped or mismatched
optimizer state (Keras only warns) fails the check.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerasio.bundle.fsutil import private_dir
from kerasio.bundle.reader import read_manifest
from kerasio.errors import ArtifactError, KerasioError
from kerasio.formats import get_format
from kerasio.process.jobs import job
from kerasio.process.session import Session
from kerasio.recipe.data import load_dataset, split_dataset
from kerasio.recipe.model import TrainConfig, fit

__all__ = ["resume_check", "resume_in_fresh_process", "ResumeResult"]


@dataclass
class ResumeResult:
    passed: bool
    epochs: int
    max_weight_diff: float
    max_optimizer_diff: float
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@job("recipe.resume_check")
def resume_check(bundle: str | Path) -> ResumeResult:
    import warnings

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    training = manifest.training
    if not training.get("config") or not training.get("data"):
        raise ArtifactError(
            f"{bundle}: the manifest records no training config or data, so training cannot be replayed. "
            "Only bundles written by kerasio run / run_pipeline support --resume."
        )
    for key, why in (("streaming", "was trained from a streamed file"), ("distribution", "was trained under a "
                     "distribution strategy")):
        value = training["data"].get(key) if key == "streaming" else (training.get(key) or {}).get("strategy")
        if value not in (None, False, "default"):
            raise ArtifactError(f"{bundle}: the bundle {why} ({key}: {value}); --resume replays single-device, "
                                f"in-memory training only. Drop --resume for this bundle.")
    cfg = TrainConfig.from_dict(training["config"])
    source = training["data"]["source"]
    data = load_dataset(None if source == "embedded" else source, label=training["data"]["label"])
    if data.sha256 != training["data"]["sha256"]:
        raise ArtifactError(
            f"{source}: the training data changed since export (sha256 {data.sha256[:12]}... vs "
            f"{training['data']['sha256'][:12]}...); the resume check needs the original data."
        )
    split = split_dataset(data, test_size=cfg.test_size, seed=cfg.seed)
    n = cfg.epochs

    straight = cfg.build(data.n_features, data.n_classes, split.x_train)
    fit(straight, split.x_train, split.y_train, epochs=n + 1, batch_size=cfg.batch_size, seed=cfg.seed)

    art = manifest.artifact("keras")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with private_dir("kerasio-load-") as tmp:
            resumed = get_format("keras").load(art.materialize(bundle, tmp), iospec=manifest.iospec).model
    fit(resumed, split.x_train, split.y_train, epochs=n + 1, initial_epoch=n, batch_size=cfg.batch_size,
        seed=cfg.seed)

    w_diff = _max_diff(straight.get_weights(), resumed.get_weights())
    o_diff = _max_diff([v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in straight.optimizer.variables],
                       [v.numpy() if hasattr(v, "numpy") else np.asarray(v) for v in resumed.optimizer.variables])
    skipped = [str(w.message) for w in caught if "optimizer" in str(w.message).lower()]
    passed = w_diff == 0.0 and o_diff == 0.0
    if passed:
        detail = f"{n} epochs + save/load + 1 epoch == {n + 1} epochs straight: weights and optimizer bit-identical"
    else:
        detail = (f"resumed training diverged from {n + 1} uninterrupted epochs: max weight diff {w_diff:.3e}, "
                  f"max optimizer-state diff {o_diff:.3e}")
        if skipped:
            detail += f" (Keras warned: {skipped[0][:200]})"
    return ResumeResult(passed=passed, epochs=n, max_weight_diff=w_diff, max_optimizer_diff=o_diff, detail=detail)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b):
        return float("inf")
    diffs = [float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)), initial=0.0))
             if np.shape(x) == np.shape(y) else float("inf") for x, y in zip(a, b)]
    return max(diffs, default=0.0)


def resume_in_fresh_process(bundle: str | Path, *, backend: str | None = None) -> dict[str, Any]:
    """Run :func:`resume_check` in a fresh interpreter (nothing of this process can help it).

    Returns the result as a dict; a failure to run becomes ``{"passed": False, "detail": ...}``.
    """
    with Session(imports=[__name__]) as session:
        try:
            return dict(session.job("recipe.resume_check", backend=backend, bundle=str(bundle)))
        except KerasioError as exc:
            return {"passed": False, "detail": str(exc)}
