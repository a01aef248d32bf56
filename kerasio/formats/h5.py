"""``h5``: legacy Keras HDF5. Written and read with a :class:`LegacyFormatWarning`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

from ..audit import audit_config
from ..errors import ArtifactError, LegacyFormatWarning, UnsafeArtifactError
from .base import ExportContext, Format, Runner, register
from ._keras_common import guarded_load, keras_runner

_WHY = "HDF5 (.h5) is Keras's legacy format; prefer .keras for round trips."


class H5Format(Format):
    name = "h5"
    filename = "model.h5"
    runtime = "keras"
    legacy = True
    suffixes = (".h5",)
    description = "legacy Keras HDF5 (architecture + weights)"

    def save(self, model, dest: Path, ctx: ExportContext) -> dict:
        warnings.warn(_WHY, LegacyFormatWarning, stacklevel=4)  # points at the caller of export()
        # Keras's legacy writer pops "optimizer" out of the model's own compile
        # config (saving_utils.model_metadata), so every later .keras save of the
        # same model would reload with a default RMSprop. Save a copy, restore it.
        compile_config = getattr(model, "_compile_config", None)
        snapshot = dict(compile_config.config) if compile_config is not None else None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy.*")
                model.save(dest)
        finally:
            if compile_config is not None:
                compile_config.config = snapshot
        return {"legacy": True}

    def load(self, path: Path, *, trust: bool = False) -> Runner:
        import keras

        warnings.warn(_WHY, LegacyFormatWarning, stacklevel=3)
        audit_config(_h5_config(path), path)
        model = guarded_load(path, lambda: keras.saving.load_model(path, safe_mode=True))
        return keras_runner(model, self.name, path, legacy=True)

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".h5") and not path.name.endswith(".weights.h5")

    def describe(self, path: Path) -> dict:
        return {"legacy": True, "inputs": ["features"], "outputs": ["probabilities"]}


def _h5_config(path: Path) -> dict:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            _refuse_external_links(f, path)
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable HDF5 file ({exc}); re-export it.") from None
    if raw is None:
        raise ArtifactError(f"{path}: HDF5 file has no model_config; it holds weights only, not a model.")
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def _refuse_external_links(f, path: Path) -> None:
    import h5py

    links = []
    # Collect, then raise: an exception inside h5py's visitor corrupts its lock.
    f.visititems_links(lambda name, link: links.append(name) if isinstance(link, h5py.ExternalLink) else None)
    if links:
        raise UnsafeArtifactError(f"{path}: HDF5 object {links[0]!r} is an external link; refusing to follow it.")


FORMAT = register(H5Format())
