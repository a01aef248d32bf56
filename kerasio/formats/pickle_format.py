"""``pickle``: ``model.pkl``, for scripts that expect one. Loading needs explicit trust.

Unpickling runs arbitrary code chosen by whoever wrote the file, so
:meth:`load` refuses unless ``trust=True`` (CLI: ``--trust``), and the
export writes it only when asked with that same trust.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

from kerasio.errors import ArtifactError, UnsafeArtifactError
from kerasio.formats._keras_common import KERAS_CALL, KerasReloaded, guarded_load, keras_runner
from kerasio.formats.base import ExportContext, Runner, register
from kerasio.spec.iospec import IOSpec

WHY = (
    "unpickling runs arbitrary code from the file. Pass trust=True (CLI: --trust) only for a "
    "file you or a trusted party wrote; otherwise use the .keras artifact."
)


class PickleFormat(KerasReloaded):
    name = "pickle"
    filename = "model.pkl"
    runtime = "keras"
    needs_trust = True
    suffixes = (".pkl", ".pickle")
    description = "Python pickle of the Keras model (written and loaded only with --trust)"
    repro_code = KERAS_CALL + """

def run(path, inputs):
    import pickle

    with open(path, "rb") as f:
        model = pickle.load(f)  # loading a pickle runs its code: only for a file you trust, as kerasio --trust
    return call(model, inputs)
"""

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        with open(dest, "wb") as f:
            pickle.dump(model, f, protocol=pickle.HIGHEST_PROTOCOL)
        return {"protocol": pickle.HIGHEST_PROTOCOL, "needs_trust": True}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        if not trust:
            raise UnsafeArtifactError(f"{path}: refusing to load a pickle: {WHY} Received: trust=False")

        def unpickle() -> Any:
            try:
                with open(path, "rb") as f:
                    return pickle.load(f)  # noqa: S301 - explicit trust was given
            except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                raise ArtifactError(f"{path}: not a loadable pickle; re-export it. Received: {exc}") from None

        model = guarded_load(path, device, unpickle)
        import keras

        if not isinstance(model, keras.Model):
            kind = type(model).__name__
            raise ArtifactError(f"{path}: the pickle holds an object of type {kind}, not a Keras model; re-export it "
                                f"(kerasio export --formats pickle). Received: {kind}")
        return keras_runner(model, self.name, path, iospec, device, trusted=True)

    def describe(self, path: Path) -> dict[str, Any]:
        return {"needs_trust": True}


FORMAT = register(PickleFormat())
