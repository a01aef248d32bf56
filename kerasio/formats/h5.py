"""``h5``: legacy Keras HDF5. Written and read with a :class:`LegacyFormatWarning`."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from kerasio.bundle.audit import audit_config
from kerasio.bundle.audit.keras import build_legacy, check_weights, h5_file_config
from kerasio.errors import LegacyFormatWarning
from kerasio.formats._keras_common import KerasReloaded, guarded_load, keras_runner
from kerasio.formats.base import ExportContext, Runner, register
from kerasio.spec.iospec import IOSpec

_WHY = "HDF5 (.h5) is Keras's legacy format; prefer .keras for round trips."
# Layers whose configs Keras 3's legacy loader cannot rebuild (each seen failing in the real-architectures zoo).
_LEGACY_CANNOT_REBUILD = {
    "LayerScale": "ConvNeXt's; the legacy loader looks classes up by bare name, and Keras registers it by module",
    "Attention": "its score_mode is saved as a Python function, which the legacy config cannot deserialize",
}


class H5Format(KerasReloaded):
    name = "h5"
    filename = "model.h5"
    runtime = "keras"
    legacy = True
    suffixes = (".h5",)
    description = "legacy Keras HDF5 (architecture + weights)"

    def supports(self, iospec: IOSpec) -> str | None:
        if iospec.model_kind == "subclassed":
            return ("HDF5 (.h5) cannot rebuild a subclassed model: Keras's legacy loader looks classes up by bare "
                    "name (\"Unknown layer\"); use .keras")
        if iospec.lookup_layers():
            return (f"HDF5 (.h5) does not keep the vocabulary of {', '.join(iospec.lookup_layers())}: the "
                    "reloaded lookup table is empty; use .keras or the SavedModel")
        unbuildable = sorted(set(iospec.layers) & set(_LEGACY_CANNOT_REBUILD))
        if unbuildable:
            return (f"Keras's legacy HDF5 loader cannot rebuild layer '{unbuildable[0]}' "
                    f"({_LEGACY_CANNOT_REBUILD[unbuildable[0]]}); use .keras")
        if "float8" in iospec.quantization.split(","):
            return ("Keras's legacy HDF5 loader cannot restore float8 quantization: it builds the scales with "
                    "another shape than it saved (\"Shape mismatch ... inputs_scale\"); use .keras")
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        warnings.warn(_WHY, LegacyFormatWarning, stacklevel=4)  # points at the caller of export()
        # Keras's legacy writer pops "optimizer" out of the model's own compile
        # config (saving_utils.model_metadata), so every later .keras save of the
        # same model would reload with a default RMSprop. Save a copy, restore it.
        compile_config = getattr(model, "_compile_config", None)
        snapshot = dict(compile_config.config) if compile_config is not None else None
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*legacy.*")
                data = _legacy_h5_bytes(model)
        finally:
            if compile_config is not None:
                compile_config.config = snapshot
        with open(dest, "wb") as out:  # a full disk raises here (OSError), where export names it
            out.write(data)
        return {"legacy": True}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        import keras

        warnings.warn(_WHY, LegacyFormatWarning, stacklevel=3)
        config, held = h5_file_config(path)  # links refused, every dataset backed by storage
        packages: dict[str, str] = {}
        audit_config(config, path, packages)
        check_weights(config, path, lambda: held, build=build_legacy)
        # compile=False: an inference reload needs no optimizer, and Keras 3 cannot rebuild a legacy
        # compile config that names metrics by string ("Could not locate function 'mse'").
        model = guarded_load(path, device, lambda: keras.saving.load_model(path, safe_mode=True, compile=False))
        return keras_runner(model, self.name, path, iospec, device, legacy=True, packages=packages)

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.name.endswith(".h5") and not path.name.endswith(".weights.h5")

    def describe(self, path: Path) -> dict[str, Any]:
        return {"legacy": True}


def _legacy_h5_bytes(model: Any) -> bytes:
    """The bytes ``model.save("x.h5")`` writes, built in memory.

    HDF5 flushes much of a file when its objects are freed, and h5py then only prints the write errors ("Exception
    ignored in ObjectID.__dealloc__"): on a full disk, ``model.save`` returns having written a corrupt file, which
    HDF5 may crash on when it is read back (the probe did: SIGSEGV). Written in memory and then copied with plain
    file I/O, a full disk is an ``OSError`` instead. It costs the file's size in memory for the moment.
    """
    import io

    import h5py
    from keras.src.legacy.saving import legacy_h5_format  # what Keras 3's model.save calls for a .h5 path

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        legacy_h5_format.save_model_to_hdf5(model, f)
    return buffer.getvalue()


FORMAT = register(H5Format())
