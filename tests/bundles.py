"""Helpers for tests that copy or alter bundles."""
from __future__ import annotations

import subprocess
from pathlib import Path

import kerasio


def copy_bundle(src: Path, dest: Path) -> Path:
    """Copy a bundle as ``cp -a`` does: the top-level names stay hardlinks to the current generation's files.

    (``shutil.copytree`` would turn them into independent copies, so that changing ``model.keras`` in the
    copy would no longer change the file the manifest names.)
    """
    subprocess.run(["cp", "-a", str(src), str(dest)], check=True)
    return dest


def named(bundle: Path, fmt: str) -> Path:
    """The file or directory that the bundle's manifest names for ``fmt`` (inside its current generation)."""
    return Path(bundle) / kerasio.read_manifest(bundle).artifact(fmt).path
