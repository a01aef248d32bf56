"""``pickle``: ``model.pkl``, for scripts that expect one. Loading needs explicit trust.

Unpickling runs arbitrary code chosen by whoever wrote the file, so
:meth:`load` refuses unless ``trust=True`` (CLI: ``--trust-pickle``), and the
export writes it only when asked with that same trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path

from ..errors import ArtifactError, UnsafeArtifactError
from .base import ExportContext, Format, Runner, register
from ._keras_common import keras_runner

WHY = (
    "unpickling runs arbitrary code from the file. Pass trust=True (CLI: --trust-pickle) only for a "
    "file you or a trusted party wrote; otherwise use the .keras artifact."
)


class PickleFormat(Format):
    name = "pickle"
    filename = "model.pkl"
    runtime = "keras"
    needs_trust = True
    suffixes = (".pkl", ".pickle")
    description = "Python pickle of the Keras model (needs --trust-pickle to load)"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        with open(dest, "wb") as f:
            pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
        return {"protocol": pickle.HIGHEST_PROTOCOL, "needs_trust": True}

    def load(self, path: Path, *, trust: bool = False) -> Runner:
        if not trust:
            raise UnsafeArtifactError(f"{path}: refusing to load a pickle: {WHY}")
        try:
            with open(path, "rb") as f:
                model = pickle.load(f)  # noqa: S301 - explicit trust was given
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as exc:
            raise ArtifactError(f"{path}: not a loadable pickle ({exc}). Re-export it.") from None
        return keras_runner(model, self.name, path, trusted=True)

    def describe(self, path: Path) -> dict:
        return {"needs_trust": True, "inputs": ["features"], "outputs": ["probabilities"]}


FORMAT = register(PickleFormat())
