"""``keras``: the native ``.keras`` zip, the full round-trip artifact (with compile state)."""
from __future__ import annotations

import contextlib
import json
import unittest.mock
import zipfile
from pathlib import Path
from typing import Any, Iterator

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
        with _weights_read_from_disk(path):
            model = guarded_load(path, device, lambda: keras.saving.load_model(path, safe_mode=True))
        return keras_runner(model, self.name, path, iospec, device, custom_objects=custom, packages=packages)

    def precheck(self, path: Path) -> None:
        precheck_config(read_keras_config(path), path)  # the archive, then the config as bounded JSON

    def describe(self, path: Path) -> dict[str, Any]:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in z.namelist() else {}
            return {"members": z.namelist(), "keras_version": meta.get("keras_version")}


LARGE_WEIGHTS = 1 << 30  # bytes of model.weights.h5 above which Keras is kept from reading it whole into memory


@contextlib.contextmanager
def _weights_read_from_disk(path: Path) -> Iterator[None]:
    """For a weights member over :data:`LARGE_WEIGHTS`, Keras's loader takes its own low-memory branch.

    ``keras.saving.load_model`` reads ``model.weights.h5`` whole into memory when it judges memory sufficient, on
    top of the model's variables (7.1 GB at the peak for 2.2 GB of weights); otherwise it extracts the member
    beside the file, or reads it from the archive as it goes (a stored member: seekable). Its own loader, with
    its own semantics (compile state, assets), reads then one variable at a time (4.9 GB for the same model).
    """
    with zipfile.ZipFile(path) as archive:
        member = next((i for i in archive.infolist() if i.filename == "model.weights.h5"), None)
    if member is None or member.file_size <= LARGE_WEIGHTS:
        yield
        return
    from keras.src.saving import saving_lib

    if not hasattr(saving_lib, "is_memory_sufficient"):  # another Keras: its own choice stands
        yield
        return
    with unittest.mock.patch.object(saving_lib, "is_memory_sufficient", lambda *args, **kwargs: False):
        yield


FORMAT = register(KerasFormat())
