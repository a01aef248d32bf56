"""Publishing an export so that readers never see a mix, and a kill -9 or a power cut loses nothing published.

A bundle on disk::

    kerasio.json           the pointer: names the current generation's files; replaced by one atomic rename
    generations/<g>/       one complete export (artifacts, references, its own manifest); never modified once published
    serving/<n>/           TF Serving's versions: hardlink trees of generations/<g>/serving/<n>, made after the swap
    model.keras, weights/  hardlinks to the current generation's files, for plain Keras (kerasio reads the manifest)

An export writes a hidden staging directory, fsyncs it, renames it to
``generations/<g>`` and then swaps the manifest (fsynced, then its directory).
Before the swap the old manifest still names the old generation, which is
intact; after it, the new one is complete on disk. The conveniences (top-level
links, ``serving/<n>``) are derived and rebuilt by the next writer if a kill
interrupted them. Readers pin the generation they read with a shared ``flock``
on its directory; a writer prunes generations beyond the newest
``KERASIO_KEEP_GENERATIONS`` (default 3) only when no reader holds them.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from kerasio.bundle.fsutil import fsync_dir, interrupts_deferred, place
from kerasio.bundle.layout import GENERATIONS, MANIFEST_NAME, flat_name, generation_of
from kerasio.bundle.reader import read_manifest
from kerasio.bundle.trust import record
from kerasio.errors import KerasioError

if TYPE_CHECKING:
    from kerasio.bundle.manifest import Manifest

__all__ = ["GENERATIONS", "commit", "sync_conveniences", "prune", "next_generation", "keep_generations",
           "fsync_tree", "crash_point", "flat_name", "repair"]


def keep_generations() -> int:
    """How many generations a writer keeps (``KERASIO_KEEP_GENERATIONS``, at least 1)."""
    try:
        return max(1, int(os.environ.get("KERASIO_KEEP_GENERATIONS", "3")))
    except ValueError:
        return 3


def crash_point(name: str) -> None:
    """Die here, as by kill -9, when ``KERASIO_CRASH_AT`` names this point (the crash-safety tests use it)."""
    if os.environ.get("KERASIO_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (files first, then their directories)."""
    for dirpath, _dirs, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(dirpath, name)
            if stat.S_ISREG(os.lstat(path).st_mode):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(dirpath))


def _numbered(directory: Path) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def next_generation(bundle: Path) -> int:
    return max(_numbered(Path(bundle) / GENERATIONS), default=0) + 1


def commit(stage: Path, bundle: Path, manifest: Manifest) -> Manifest:
    """Publish the staged export ``stage`` (a bundle of its own) into ``bundle``; return the published manifest.

    Call with the bundle's writer lock held.
    """
    bundle = Path(bundle)
    generations = bundle / GENERATIONS
    generations.mkdir(exist_ok=True)
    gen = next_generation(bundle)
    fsync_tree(stage)
    crash_point("staged")
    published = manifest.relocated(f"{GENERATIONS}/{gen}")
    # Recorded before the swap, so that a kill after it leaves a bundle that is still known as this account's own
    # (a record of bytes that never got published authorizes nothing but those bytes, which kerasio wrote).
    record(published.text().encode(), manifest.text().encode())
    with interrupts_deferred():  # the rename and the swap land together or not at all
        os.rename(stage, generations / str(gen))
        fsync_dir(generations)
        crash_point("generation-renamed")
        published.write(bundle)  # the swap: fsynced, renamed, directory fsynced
        crash_point("manifest-swapped")
    try:  # published already: a failure from here on costs conveniences, never the export
        sync_conveniences(bundle, published)
        prune(bundle, published)
    except OSError as exc:
        import warnings

        warnings.warn(f"{bundle}: the export is published, but its top-level links or the pruning of old "
                      f"generations failed ({exc.strerror or exc}); the next export completes them", stacklevel=3)
    crash_point("pruned")
    return published


def _link_tree(src: Path, dest: Path) -> None:
    """``dest``: a new directory tree whose files are hardlinks to ``src``'s (no bytes copied)."""
    os.mkdir(dest)
    for dirpath, dirs, names in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        for name in dirs:
            os.mkdir(dest / rel / name)
        for name in names:
            os.link(Path(dirpath) / name, dest / rel / name)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev) and stat.S_ISREG(sa.st_mode)


def _same_tree(a: Path, b: Path) -> bool:
    """``b`` is a tree of hardlinks to exactly ``a``'s files."""
    if not b.is_dir() or b.is_symlink():
        return False
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(_same_file(a / rel, b / rel) for rel in files_a)


def sync_conveniences(bundle: Path, manifest: Manifest) -> None:
    """Point the top-level names and ``serving/<n>`` at the current generation (idempotent)."""
    bundle = Path(bundle)
    rels = [a.path for a in manifest.artifacts] + [e["path"] for e in manifest.reference_files().values()]
    rels += [a["path"] for a in manifest.attachments]
    for rel in rels:
        gen = generation_of(rel)
        if gen is None:
            continue
        src = bundle / rel
        name = flat_name(rel)
        dest = bundle / name
        tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
        if name.startswith("serving/"):
            if dest.exists():  # a version is never overwritten
                continue
            dest.parent.mkdir(exist_ok=True)
            _link_tree(src, tmp)
            fsync_tree(tmp)
            os.rename(tmp, dest)  # appears complete, or not at all
            fsync_dir(dest.parent)
        elif src.is_dir():
            if _same_tree(src, dest):
                continue
            _link_tree(src, tmp)
            place(tmp, dest)
        else:
            if _same_file(src, dest):
                continue
            os.link(src, tmp)
            os.replace(tmp, dest)
        crash_point(f"linked:{name.split('/')[0]}")
    fsync_dir(bundle)


def repair(bundle: Path) -> None:
    """Undo what a killed writer left: generations it never published, conveniences it had not made yet.

    Call with the writer lock held (no other writer is at work). A bundle whose
    manifest cannot be read is left alone.
    """

    published = 0
    if (Path(bundle) / MANIFEST_NAME).is_file():
        try:
            manifest = read_manifest(bundle)
        except KerasioError:
            return
        published = max((g for g in (generation_of(a.path) for a in manifest.artifacts) if g is not None), default=0)
        if published:
            sync_conveniences(bundle, manifest)
    for gen in _numbered(Path(bundle) / GENERATIONS):
        if gen > published:  # renamed into place, but the writer died before its manifest swap
            _remove_generation(Path(bundle) / GENERATIONS, gen)


def _remove_generation(generations: Path, gen: int) -> bool:
    """Remove one generation unless a reader holds it; rename it aside first so that it vanishes at once."""
    path = generations / str(gen)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # a reader is loading from it: leave it for a later writer
        os.close(fd)
        return False
    try:
        aside = generations / f".old-{gen}-{uuid.uuid4().hex[:8]}"
        os.rename(path, aside)
    finally:
        os.close(fd)
    shutil.rmtree(aside, ignore_errors=True)
    return True


def prune(bundle: Path, manifest: Manifest) -> list[int]:
    """Remove generations other than the newest kept ones, skipping any a reader holds; return those removed.

    (Generations newer than the published one, left by killed writers, were removed by :func:`repair`.)
    """
    generations = Path(bundle) / GENERATIONS
    current = {g for g in (generation_of(a.path) for a in manifest.artifacts) if g is not None}
    numbers = _numbered(generations)
    published = [g for g in numbers if g <= max(current, default=0)]
    keep = set(published[-keep_generations():]) | current
    return [gen for gen in numbers if gen not in keep and _remove_generation(generations, gen)]


