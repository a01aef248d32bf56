"""kerasio: save, export, reload and verify any Keras model.

Importing kerasio imports neither TensorFlow nor Keras: each function
imports the framework it needs when called. The training recipe's names are
imported on first use (PEP 562), so that the core never loads it.

The face is these names (``__all__``); everything else lives in its wing
(see the README's architecture section): the errors in :mod:`kerasio.errors`,
the formats' registry in :mod:`kerasio.formats`, the tolerance table in
:mod:`kerasio.spec.tolerances`, the training recipe in :mod:`kerasio.recipe`.

Example:
    >>> import kerasio
    >>> result = kerasio.export(model, "saved_models/mine", reference_inputs=x, verify=True)  # doctest: +SKIP
    >>> kerasio.verify("saved_models/mine").raise_for_failure()  # doctest: +SKIP
    >>> kerasio.load("saved_models/mine").run(x[:2])  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

from kerasio._version import __version__
from kerasio.bundle.manifest import Manifest
from kerasio.bundle.reader import read_manifest
from kerasio.bundle.signing import sign
from kerasio.errors import KerasioError
from kerasio.export import ExportResult, export
from kerasio.loading import LoadedModel, load
from kerasio.options import BundleInfo, VerifyOptions
from kerasio.predict import predict
from kerasio.process.session import Session
from kerasio.spec.iospec import IOSpec, TensorSpec
from kerasio.spec.limits import Limits
from kerasio.verify import VerifyReport, verify

__all__ = [  # written out so that linters and type checkers see the public names
    "__version__", "export", "verify", "load", "predict", "read_manifest", "sign", "run_pipeline",
    "ExportResult", "VerifyReport", "LoadedModel", "Manifest", "IOSpec", "TensorSpec", "BundleInfo",
    "VerifyOptions", "Limits", "Session", "TrainConfig", "KerasioError",
]

# The training recipe, imported on first use (PEP 562).
_LAZY = {"run_pipeline": "kerasio.recipe.pipeline", "TrainConfig": "kerasio.recipe.model"}

# kerasio 0.2's names that moved behind the face: still reachable here, with a DeprecationWarning naming the
# new place (see CHANGELOG.md).
_MOVED = {
    **{name: "kerasio.errors" for name in (
        "ArtifactError", "BackendUnavailableError", "DataError", "InputError", "IntegrityError",
        "LegacyFormatWarning", "ManifestWarning", "ResourceLimitError", "SignatureError", "UnsafeArtifactError",
        "UnsupportedFormatError", "VerificationError", "WorkerError")},
    **{name: "kerasio.recipe" for name in (
        "Dataset", "Split", "load_dataset", "split_dataset", "build_classifier", "fit", "set_determinism",
        "EpochTrace", "PipelineResult")},
    "Artifact": "kerasio.bundle.manifest", "Task": "kerasio.spec.task", "load_isolated": "kerasio.loading",
    "tolerance_for": "kerasio.spec.tolerances", "TOLERANCES": "kerasio.spec.tolerances",
}
_RENAMED = {"Signature": ("kerasio.spec.iospec", "IOSpec"), "derive_signature": ("kerasio.spec.iospec", "derive_iospec"),
            "FORMATS": ("kerasio.formats", "REGISTRY"), "verifier": ("kerasio.process.session", "Session")}


def __getattr__(name: str) -> Any:
    if name == "recipe":  # the subpackage, on first use
        return importlib.import_module("kerasio.recipe")
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MOVED or name in _RENAMED:
        module, attr = (_MOVED[name], name) if name in _MOVED else _RENAMED[name]
        warnings.warn(f"kerasio.{name} moved to {module}.{attr} in kerasio 0.3 (see CHANGELOG.md)",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'kerasio' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the recipe's names, imported eagerly
    from kerasio.recipe.model import TrainConfig
    from kerasio.recipe.pipeline import run_pipeline
