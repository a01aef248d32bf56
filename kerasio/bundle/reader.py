"""Reading a bundle's manifest: size-bounded, validated, its signature checked, its generation pinned."""
from __future__ import annotations

import contextlib
from pathlib import Path

from kerasio.bundle.layout import MANIFEST_NAME, generation_gone, pinned
from kerasio.bundle.manifest import Manifest, manifest_bytes, parse_manifest
from kerasio.bundle.signing import check_signature

__all__ = ["read_manifest", "read_pinned"]


def read_manifest(bundle: str | Path, *, public_key: str | Path | None = None) -> Manifest:
    """Read ``<bundle>/kerasio.json``; raise a clear error if absent or invalid.

    With ``public_key``, the manifest's bytes must carry a valid signature
    (``kerasio sign``) before they are parsed: :class:`SignatureError` otherwise.
    """
    data = manifest_bytes(bundle)
    if public_key is not None:
        check_signature(Path(bundle), data, public_key)
    return parse_manifest(data, Path(bundle) / MANIFEST_NAME)


def read_pinned(bundle: str | Path, stack: contextlib.ExitStack, public_key: str | Path | None = None) -> Manifest:
    """Read the manifest and pin the generation it names for the life of ``stack``.

    A writer never prunes a pinned generation, so every file this manifest
    names stays readable until ``stack`` closes. If a writer pruned it between
    the read and the pin, the (newer) manifest is read again.
    """
    for _ in range(5):
        manifest = read_manifest(bundle, public_key=public_key)
        rel = next((a.path for a in manifest.artifacts), None)
        if rel is None:
            return manifest
        stack.enter_context(pinned(Path(bundle), rel))
        if not generation_gone(Path(bundle), rel):
            return manifest
    return manifest
