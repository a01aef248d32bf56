"""Shared by the formats that Keras itself reloads (keras, h5, weights, pickle)."""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Callable

from ..errors import ArtifactError, UnsafeArtifactError
from ..runtime import compile_keras, keras_backend
from .base import Runner


def keras_runner(model, fmt: str, path: Path, **info) -> Runner:
    return Runner(
        predict_proba=compile_keras(model), format=fmt, path=path, runtime=f"keras/{keras_backend()}",
        n_features=int(model.input_shape[-1]), n_classes=int(model.output_shape[-1]), model=model, info=info,
    )


def guarded_load(path: Path, load: Callable[[], object]):
    """Run a Keras loader, turning its errors into kerasio errors that name the file."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*legacy.*")
            warnings.filterwarnings("ignore", message=".*[Cc]ompiled the loaded model.*")
            return load()
    except (TypeError, ValueError) as exc:
        text = str(exc)
        missing = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
        if missing:
            raise UnsafeArtifactError(
                f"{path}: custom class {missing.group(1)!r} is not registered in this process. Decorate it "
                "with @keras.saving.register_keras_serializable() and import its module before loading "
                "(CLI: --import MODULE)."
            ) from None
        if "safe_mode" in text or "lambda" in text.lower():
            raise UnsafeArtifactError(f"{path}: refused by Keras safe mode: {text.splitlines()[0]}") from None
        raise ArtifactError(f"{path}: Keras could not load it ({text.splitlines()[0][:300]}). Re-export it.") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable ({exc}). The file is corrupt or truncated; re-export it.") from None
