"""kerasio: save, export, reload and verify any Keras model.

Importing kerasio imports neither TensorFlow nor Keras: each function
imports the framework it needs when called. The training recipe's names are
imported on first use (PEP 562).

The artifact core (signature, formats, manifest, export, verify, load,
predict) works for any Keras model; the training recipe behind ``kerasio run``
(data, split, classifier, fit, trace, pipeline) lives in :mod:`kerasio.recipe`
and is one user of that core.

Example:
    >>> import kerasio
    >>> result = kerasio.export(model, "saved_models/mine", reference_inputs=x)  # doctest: +SKIP
    >>> kerasio.verify("saved_models/mine").raise_for_failure()  # doctest: +SKIP
    >>> kerasio.load("saved_models/mine").run(x[:2])  # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    ArtifactError,
    BackendUnavailableError,
    DataError,
    InputError,
    IntegrityError,
    KerasioError,
    LegacyFormatWarning,
    ManifestWarning,
    ResourceLimitError,
    SignatureError,
    UnsafeArtifactError,
    UnsupportedFormatError,
    VerificationError,
    WorkerError,
)

__version__ = "0.2.0"

# The artifact core, imported now: it needs only numpy. (Importing a submodule such as kerasio.verify
# binds the module to the package attribute of that name, so these functions must be bound eagerly.)
from .export import ExportResult, export
from .formats import REGISTRY as FORMATS
from .limits import Limits
from .loading import LoadedModel, load, load_isolated
from .manifest import Artifact, Manifest, read_manifest
from .predict import predict
from .signature import Signature, TensorSpec, derive_signature
from .signing import sign
from .task import Task
from .tolerances import TOLERANCES, tolerance_for
from .verify import VerifyReport, verifier, verify

# The training recipe, imported on first use (PEP 562), so that the core never loads it.
_LAZY = {
    "Dataset": "recipe.data", "Split": "recipe.data", "load_dataset": "recipe.data", "split_dataset": "recipe.data",
    "TrainConfig": "recipe.model", "build_classifier": "recipe.model", "fit": "recipe.model",
    "set_determinism": "recipe.model",
    "EpochTrace": "recipe.trace",
    "run_pipeline": "recipe.pipeline", "PipelineResult": "recipe.pipeline",
}

__all__ = [  # written out so that linters and type checkers see the public names
    "__version__", "TensorSpec", "Signature", "derive_signature", "Task", "export", "ExportResult", "FORMATS",
    "load", "LoadedModel", "Manifest", "Artifact", "read_manifest", "predict", "TOLERANCES", "tolerance_for",
    "verify", "verifier", "VerifyReport", "Dataset", "Split", "load_dataset", "split_dataset", "TrainConfig", "build_classifier",
    "fit", "set_determinism", "EpochTrace", "run_pipeline", "PipelineResult", "KerasioError", "DataError",
    "InputError", "ArtifactError", "IntegrityError", "UnsafeArtifactError", "UnsupportedFormatError",
    "VerificationError", "WorkerError", "ResourceLimitError", "BackendUnavailableError", "LegacyFormatWarning",
    "ManifestWarning", "sign", "SignatureError", "load_isolated", "Limits",
]


def __getattr__(name: str) -> Any:
    try:
        target = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'kerasio' has no attribute {name!r}") from None
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(f".{module}", __name__), attr or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and IDEs: the recipe's names, imported eagerly
    from .recipe.data import Dataset, Split, load_dataset, split_dataset
    from .recipe.model import TrainConfig, build_classifier, fit, set_determinism
    from .recipe.pipeline import PipelineResult, run_pipeline
    from .recipe.trace import EpochTrace
