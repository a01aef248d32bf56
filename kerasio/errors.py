"""Exceptions raised by kerasio.

Every error names the file, column or row at fault and says what to do next.
The CLI prints ``str(error)`` on one line and exits with status 2.
"""
from __future__ import annotations

from typing import Any

__all__ = [
    "KerasioError",
    "DataError",
    "InputError",
    "ArtifactError",
    "IntegrityError",
    "SignatureError",
    "UnsafeArtifactError",
    "UnsupportedFormatError",
    "VerificationError",
    "WorkerError",
    "ResourceLimitError",
    "BackendUnavailableError",
    "LegacyFormatWarning",
    "ManifestWarning",
]


class KerasioError(Exception):
    """Base class of every error kerasio raises on purpose."""


class DataError(KerasioError, ValueError):
    """A dataset (CSV) cannot be used: names the file and the column or row."""


class InputError(KerasioError, ValueError):
    """Rows given to ``predict`` do not match the model's input spec."""


class ArtifactError(KerasioError):
    """A bundle or artifact is missing, unreadable or of an unknown kind."""


class IntegrityError(ArtifactError):
    """An artifact's bytes differ from the sha256 recorded in the manifest."""


class SignatureError(IntegrityError):
    """A public key was given, and the bundle's signature is missing or does not verify with it."""


class UnsafeArtifactError(ArtifactError):
    """An artifact would run code or import modules that were not trusted."""


class UnsupportedFormatError(ArtifactError):
    """A format named explicitly cannot carry this model (the reason says why)."""


class VerificationError(KerasioError, AssertionError):
    """An artifact did not reproduce the reference outputs; ``report`` is the :class:`~kerasio.verify.VerifyReport`."""

    def __init__(self, message: str, *, report: Any = None):
        super().__init__(message)
        self.report = report


class WorkerError(KerasioError):
    """The verifying interpreter died or stopped answering (what it was checking is named)."""


class ResourceLimitError(KerasioError):
    """A limit was hit: memory, wall time, CPU time, open files or file size of the worker running an
    untrusted artifact (which is then replaced), or the wait for a lock another process holds.

    Attributes:
        limit: which limit (``memory``, ``wall time``, ``CPU time``, ``open files``, ``file size``, ``lock wait``).
        option: how to raise it (``--max-memory 8G``, ``--timeout 120``, ...).
    """

    def __init__(self, message: str, *, limit: str = "", option: str = ""):
        super().__init__(message)
        self.limit, self.option = limit, option


class BackendUnavailableError(KerasioError, RuntimeError):
    """The runtime a format needs (TensorFlow, onnxruntime, ...) is not installed."""


class ManifestWarning(UserWarning):
    """A manifest has fields this kerasio does not know (a newer kerasio wrote it); they are ignored."""


class LegacyFormatWarning(UserWarning):
    """Emitted when a legacy format (``.h5``) is written or read."""
