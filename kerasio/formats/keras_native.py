"""``keras``: the native ``.keras`` zip, the full round-trip artifact (with compile state)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from kerasio.bundle.audit import audit_keras_file, read_keras_config
from kerasio.bundle.audit.keras import precheck_config
from kerasio.formats._keras_common import KerasReloaded, guarded_load, keras_runner
from kerasio.formats.base import ExportContext, Runner, register
from kerasio.spec.iospec import IOSpec


class KerasFormat(KerasReloaded):
    name = "keras"
    filename = "model.keras"
    runtime = "keras"
    default = True
    suffixes = (".keras",)
    description = "native Keras v3 zip: architecture, weights, optimizer state"

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        model.save(dest)
        return {}

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        import keras

        packages: dict[str, str] = {}
        custom = audit_keras_file(path, packages)  # before any object is constructed
        model = guarded_load(path, device, lambda: keras.saving.load_model(path, safe_mode=True))
        return keras_runner(model, self.name, path, iospec, device, custom_objects=custom, packages=packages)

    def precheck(self, path: Path) -> None:
        precheck_config(read_keras_config(path), path)  # the archive, then the config as bounded JSON

    def describe(self, path: Path) -> dict[str, Any]:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in z.namelist() else {}
            return {"members": z.namelist(), "keras_version": meta.get("keras_version")}


FORMAT = register(KerasFormat())
