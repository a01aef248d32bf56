"""``weights``: ``.weights.h5`` plus the architecture JSON, optionally sharded."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from kerasio.bundle.audit import audit_config
from kerasio.bundle.audit.keras import check_weights, read_architecture, weights_held_bytes
from kerasio.errors import ArtifactError
from kerasio.formats._keras_common import KERAS_CALL, KerasReloaded, guarded_load, keras_runner, require_room_for_hdf5
from kerasio.formats.base import ExportContext, Runner, register
from kerasio.spec.iospec import IOSpec

ARCHITECTURE = "architecture.json"
WEIGHTS = "model.weights.h5"
SHARDED = "model.weights.json"


class WeightsFormat(KerasReloaded):
    name = "weights"
    filename = "weights"
    runtime = "keras"
    description = "weights (.weights.h5, sharded over max_shard_size GB) + architecture JSON"
    options = {"max_shard_size": "shard the weights above this many GB (a number > 0)"}
    repro_code = KERAS_CALL + f"""

def run(path, inputs):
    model = keras.models.model_from_json(Path(path, {ARCHITECTURE!r}).read_text(encoding="utf-8"))
    sharded = Path(path, {SHARDED!r})
    model.load_weights(sharded if sharded.is_file() else Path(path, {WEIGHTS!r}))
    return call(model, inputs)
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if iospec.lookup_layers():
            return (f"a .weights.h5 file does not hold the vocabulary of {', '.join(iospec.lookup_layers())} "
                    "(Keras keeps it as an asset of .keras): the reloaded lookup table is empty")
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        dest.mkdir(parents=True)
        require_room_for_hdf5(model, dest / WEIGHTS)
        (dest / ARCHITECTURE).write_text(model.to_json(), encoding="utf-8")
        shard = ctx.options.get("max_shard_size")
        if shard:
            model.save_weights(dest / SHARDED, max_shard_size=shard)
        else:
            model.save_weights(dest / WEIGHTS)
        return {"sharded": bool(shard)}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        import keras

        arch = path / ARCHITECTURE
        if not arch.is_file():
            raise ArtifactError(f"{path}: no {ARCHITECTURE}; a weights artifact needs its architecture. "
                                f"Re-export it. Received: {sorted(p.name for p in path.iterdir())[:10]}")
        config = read_architecture(arch)
        packages: dict[str, str] = {}
        audit_config(config, arch, packages)
        weights = path / SHARDED if (path / SHARDED).is_file() else path / WEIGHTS
        shards = sorted(p for p in path.iterdir() if p.name.endswith(".h5") and p.is_file())
        check_weights(config, arch, lambda: weights_held_bytes(shards, path),
                      build=lambda c: keras.models.model_from_json(json.dumps(c)))

        def build() -> Any:
            model = keras.models.model_from_json(json.dumps(config))
            with warnings.catch_warnings():
                # save_weights also stores optimizer slots; an inference reload has no use for them.
                warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
                model.load_weights(weights)
            return model

        return keras_runner(guarded_load(weights, device, build), self.name, path, iospec, device,
                            packages=packages)

    def matches(self, path: Path) -> bool:
        return path.is_dir() and (path / ARCHITECTURE).is_file()

    def describe(self, path: Path) -> dict[str, Any]:
        return {"files": sorted(p.name for p in path.iterdir())}


FORMAT = register(WeightsFormat())
