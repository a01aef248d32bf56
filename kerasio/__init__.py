"""kerasio: save, export, reload and verify Keras classifiers.

Importing kerasio does not import TensorFlow or Keras; each function imports
what it needs when called.

Example:
    >>> import kerasio
    >>> result = kerasio.run_pipeline(out="saved_models/seed")  # doctest: +SKIP
    >>> kerasio.verify("saved_models/seed").raise_for_failure()  # doctest: +SKIP
"""
from __future__ import annotations

__version__ = "0.1.0"

from .data import Dataset, Split, load_dataset, split_dataset
from .errors import (
    ArtifactError, BackendUnavailableError, DataError, InputError, IntegrityError, KerasioError,
    LegacyFormatWarning, UnsafeArtifactError, VerificationError,
)
from .export import ExportResult, export
from .formats import REGISTRY as FORMATS
from .loading import LoadedModel, load
from .manifest import Artifact, Manifest, read_manifest
from .model import TrainConfig, build_classifier, fit, set_determinism
from .pipeline import PipelineResult, run_pipeline
from .predict import predict
from .tolerances import TOLERANCES, tolerance_for
from .trace import EpochTrace
from .verify import VerifyReport, verify

__all__ = [
    "__version__", "Dataset", "Split", "load_dataset", "split_dataset", "build_classifier", "fit", "set_determinism",
    "TrainConfig", "EpochTrace", "export", "ExportResult", "FORMATS", "load", "LoadedModel", "verify",
    "VerifyReport", "predict", "run_pipeline", "PipelineResult", "Manifest", "Artifact", "read_manifest",
    "TOLERANCES", "tolerance_for", "KerasioError", "DataError", "InputError", "ArtifactError",
    "IntegrityError", "UnsafeArtifactError", "VerificationError", "BackendUnavailableError",
    "LegacyFormatWarning",
]
