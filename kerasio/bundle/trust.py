"""Which bundles kerasio treats as the caller's own, and so may load in the caller's process.

A bundle is the caller's own when

* kerasio exported it under this user account: each export records the
  sha256 of the manifest it published in ``$KERASIO_HOME/exported/`` (default
  ``~/.kerasio``), never in the bundle, so a bundle cannot vouch for itself,
  and a manifest changed by anyone (an artifact swapped and re-hashed) is no
  longer the one recorded;
* its manifest carries a valid signature by the public key the caller passes
  (``public_key=``, ``--public-key``): the caller trusts that key's holder;
* or the caller says so (``trust=True``, ``--trust``), for a file they vouch for.

Anything else (a bundle from a colleague or a model hub, a bare ``.keras``
file, a copy whose manifest was edited) is untrusted: it is audited, then
loaded and run in the bounded, sandboxed worker (:mod:`kerasio.process.server`),
never in the caller's process.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kerasio.bundle.manifest import Manifest

__all__ = ["home", "record", "recorded", "recorded_digest", "trusted"]


def trusted(manifest: "Manifest | None", *, trust: bool = False, public_key: Any = None) -> bool:
    """Whether a bundle (``manifest``; ``None`` for a bare file) is the caller's own, as above.

    ``public_key`` counts only once the signature has verified with it (every reader checks it before parsing).
    """
    return bool(trust or public_key is not None
                or (manifest is not None and manifest.digest and recorded_digest(manifest.digest)))


def home() -> Path:
    """kerasio's own directory for this user (``KERASIO_HOME``, default ``~/.kerasio``)."""
    return Path(os.environ.get("KERASIO_HOME") or Path.home() / ".kerasio")


def _entry(manifest_bytes: bytes) -> Path:
    return home() / "exported" / hashlib.sha256(manifest_bytes).hexdigest()


def record(*manifests: bytes) -> bool:
    """Record manifests this process has just published; ``False`` (and nothing raised) if the home is unwritable.

    A bundle whose record could not be written still loads: through the worker, as an untrusted one would.
    """
    try:
        directory = home() / "exported"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for data in manifests:
            fd = os.open(_entry(data), os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
            os.close(fd)
        return True
    except OSError:
        return False


def recorded(manifest_bytes: bytes) -> bool:
    """Whether kerasio exported exactly these manifest bytes under this account."""
    return recorded_digest(hashlib.sha256(manifest_bytes).hexdigest())


def recorded_digest(digest: str) -> bool:
    """:func:`recorded`, given the sha256 of the manifest bytes."""
    try:
        return (home() / "exported" / digest).is_file()
    except OSError:
        return False
