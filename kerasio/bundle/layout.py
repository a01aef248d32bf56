"""The bundle's layout on disk, in one module that both its reader and its writer import.

A bundle directory holds the manifest (``kerasio.json``), its optional
signature, the reference arrays, and the artifacts of each published
*generation* under ``generations/<n>/``; the top-level names (``model.keras``,
``savedmodel/1``...) are conveniences that mirror the current generation.
A reader *pins* the generation it reads (a shared lock), so that a writer's
pruning never removes files under it.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import re
from pathlib import Path
from typing import Iterator

from kerasio.bundle.fsutil import flock_within, lock_timeout
from kerasio.errors import ResourceLimitError

__all__ = ["generation_of", "flat_name", "generation_gone", "pinned", "MANIFEST_NAME", "SCHEMA_VERSION",
           "SUPPORTED_SCHEMAS", "REFERENCE_FILES", "SIGNATURE_NAME", "GENERATIONS"]


MANIFEST_NAME = "kerasio.json"


SCHEMA_VERSION = 2


SUPPORTED_SCHEMAS = (1, 2)


# The original model's outputs for the first row alone are stored too: a 1-row batch may take a
# different kernel (gemv, not gemm) and round differently from row 0 of the batch.
# The shape sweep's inputs and the original outputs at each of its shapes (kerasio.spec.sweep), keyed
# ``<i>/<tensor name>`` for the manifest's ``reference.sweep[i]``; bundles before 0.4 have neither.
REFERENCE_FILES = {"inputs": "reference_inputs.npz", "outputs": "reference_outputs.npz",
                   "outputs_1row": "reference_outputs_1row.npz", "sweep_inputs": "reference_sweep_inputs.npz",
                   "sweep_outputs": "reference_sweep_outputs.npz", "labels": "reference_labels.npz"}
# Written only when the caller knows the reference rows' labels (BundleInfo.labels): the quantized gates use them.
OPTIONAL_REFERENCE_FILES = ("labels",)


SIGNATURE_NAME = "kerasio.json.sig"


GENERATIONS = "generations"


_GEN_PATH = re.compile(r"^generations/(\d+)/")


def generation_of(rel: str) -> int | None:
    """The generation a manifest path lies in (``generations/7/model.keras`` -> 7), or None for a flat path."""
    found = _GEN_PATH.match(rel)
    return int(found.group(1)) if found else None


def flat_name(rel: str) -> str:
    """The top-level name of a generation's file (``generations/7/model.keras`` -> ``model.keras``)."""
    return rel.split("/", 2)[2] if generation_of(rel) is not None else rel


def generation_gone(bundle: Path, rel: str) -> bool:
    """True when ``rel`` lies in a generation that no longer exists (a writer pruned it)."""
    gen = generation_of(rel)
    return gen is not None and not (Path(bundle) / GENERATIONS / str(gen)).is_dir()


@contextlib.contextmanager
def pinned(bundle: Path, rel: str) -> Iterator[None]:
    """Hold a shared lock on the generation that ``rel`` lies in, so that no writer prunes it meanwhile.

    ``generations`` and ``generations/<g>`` are each opened with
    ``O_NOFOLLOW``, the second relative to the first: a link out of the
    bundle is never opened (the read that follows refuses it by name). A
    writer holds a generation exclusively only for the moment it renames it
    away; a lock held longer than ``KERASIO_LOCK_TIMEOUT`` (10 s) is another
    process's doing, and the reader gives up with a
    :class:`~kerasio.errors.ResourceLimitError` instead of waiting forever. A
    flat path (a bundle from before generations) or a generation that is
    already gone pins nothing; the read that follows reports what is missing.
    """
    gen = generation_of(rel)
    fd = None
    if gen is not None:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        with contextlib.suppress(OSError):
            parent = os.open(Path(bundle) / GENERATIONS, flags)
            try:
                fd = os.open(str(gen), flags, dir_fd=parent)
            finally:
                os.close(parent)
        if fd is not None:
            _wait_shared(fd, Path(bundle) / GENERATIONS / str(gen))
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _wait_shared(fd: int, where: Path) -> None:
    wait = lock_timeout("reader")
    try:
        pinned_now = flock_within(fd, fcntl.LOCK_SH, wait, poll=0.02)
    except OSError:
        return  # a file system without flock: read unpinned, as before generations existed
    if not pinned_now:
        os.close(fd)
        raise ResourceLimitError(
            f"{where}: another process has held this generation locked for over {wait:g} s (a writer locks "
            "one only for the moment it removes it); kerasio stopped waiting to read it. Retry once that "
            f"process is done, or raise KERASIO_LOCK_TIMEOUT. Received: generation locked",
            limit="lock wait", option="KERASIO_LOCK_TIMEOUT")
