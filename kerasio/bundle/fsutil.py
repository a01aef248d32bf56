"""Hashing and crash-safe placement of files and directories."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import signal
import stat
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from kerasio.errors import ArtifactError, ResourceLimitError, UnsafeArtifactError

__all__ = ["sha256_file", "hash_artifact", "confined", "place", "staging_dir", "write_text_atomic",
           "interrupts_deferred", "bundle_lock", "clean_stale", "clean_stale_temp", "writable_error", "private_dir", "fsync_dir"]

LOCK_NAME = ".kerasio.lock"

_CHUNK = 4 << 20


def sha256_file(path: str | Path, copy_to: Any = None) -> str:
    """sha256 of a regular file, streamed in 4 MiB chunks; with ``copy_to``, the same bytes are written there.

    Opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked with ``fstat`` before
    the first read: a symlink is refused by the kernel, and a FIFO or device
    is refused instead of blocking forever. The copy is made from the very
    reads that are hashed, so a loader given the copy loads exactly the hashed
    bytes, whatever happens to ``path`` afterwards.
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeArtifactError(f"{path}: is a symbolic link; kerasio reads only the bundle's own files. "
                                      f"Replace it with the file itself. Received: a symlink") from None
        raise
    with open(fd, "rb", buffering=0) as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeArtifactError(f"{path}: is not a regular file ({_kind(mode)}); refusing to read it. "
                                      f"Replace it with the artifact's file. Received: {_kind(mode)}")
        digest = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        with contextlib.ExitStack() as stack:
            out = copy_to if copy_to is None or hasattr(copy_to, "write") else stack.enter_context(open(copy_to, "xb"))
            sparse = out is not None and not hasattr(copy_to, "write")  # a file copy keeps the holes of a sparse file
            written = 0
            try:
                while n := f.readinto(buf):
                    digest.update(view[:n])
                    if out is None:
                        continue
                    if sparse and (buf == _ZEROS if n == _CHUNK else bytes(view[:n]) == _ZEROS[:n]):
                        out.seek(n, os.SEEK_CUR)
                    else:
                        out.write(view[:n])
                    written += n
                if sparse and out is not None:
                    out.truncate(written)
            except OSError as exc:
                raise copy_error(copy_to if copy_to is not None else path, exc) from None
    return digest.hexdigest()


_ZEROS = bytes(_CHUNK)


def copy_error(path: Any, exc: OSError) -> Exception:
    """A failed write of a private copy: the file-size limit, a full disk, or the error itself."""

    if exc.errno == errno.EFBIG:
        return ResourceLimitError(
            f"{path}: copying the artifact hit this process's file-size limit (ulimit -f); raise it, or load a "
            f"smaller artifact. Received: {exc.strerror or exc}", limit="file size", option="ulimit -f")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ArtifactError(f"{path}: no space left for kerasio's private copy of the artifact; free some space or "
                             f"point TMPDIR at a larger disk. Received: {exc.strerror or exc}")
    return exc


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def hash_artifact(path: str | Path, copy_to: str | Path | None = None) -> tuple[str, int, dict[str, str] | None]:
    """``(sha256, size, files)`` of a file or a directory; with ``copy_to``, a copy of exactly the hashed bytes.

    A directory's sha256 hashes the sorted ``relative-path, file-sha256`` pairs,
    and ``files`` maps each relative path to its own sha256 so that a mismatch
    can name the exact file. Inside a directory, a symlink or a special file
    (FIFO, device, socket) is refused, never followed or read.
    """
    path = Path(path)
    top = os.lstat(path)
    if not stat.S_ISDIR(top.st_mode):
        if copy_to is not None and not hasattr(copy_to, "write"):
            require_space(Path(copy_to).parent, top.st_size, path)
        return sha256_file(path, copy_to), top.st_size, None
    if copy_to is not None:
        require_space(Path(copy_to).parent, tree_size(path), path)
        os.mkdir(copy_to, 0o700)
    files: dict[str, str] = {}
    size = 0
    for root, dirs, names in os.walk(path, followlinks=False):
        for name in sorted(dirs + names):
            full = Path(root) / name
            info = os.lstat(full)
            if stat.S_ISDIR(info.st_mode):
                if copy_to is not None:
                    os.mkdir(Path(copy_to) / full.relative_to(path), 0o700)
                continue
            if not stat.S_ISREG(info.st_mode):
                raise UnsafeArtifactError(
                    f"{full}: is {_kind(info.st_mode)} inside the artifact {path.name!r}; kerasio reads only regular "
                    f"files of the bundle. Re-export it. Received: {_kind(info.st_mode)}")
            rel = full.relative_to(path)
            files[rel.as_posix()] = sha256_file(full, None if copy_to is None else Path(copy_to) / rel)
            size += info.st_size
    # The order of kerasio 0.1's digest (pathlib's, by path component): existing bundles keep their hashes.
    files = dict(sorted(files.items(), key=lambda item: PurePosixPath(item[0]).parts))
    digest = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in files.items()).encode())
    return digest.hexdigest(), size, files


def tree_size(path: Path) -> int:
    """Bytes of a file, or of the regular files under a directory, from ``lstat`` alone (nothing is opened)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = 0
    for root, _dirs, names in os.walk(path, followlinks=False):
        for name in names:
            entry = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
    return total


def require_space(directory: Path, size: int, source: Path) -> None:
    """Refuse to copy ``size`` bytes into ``directory`` when its file system has not that much free."""
    try:
        vfs = os.statvfs(directory)
    except OSError:
        return
    free = vfs.f_bavail * vfs.f_frsize
    if size > free:
        raise ArtifactError(f"{source}: kerasio loads a private copy of the artifact, which needs {size:,} bytes, "
                            f"but {directory} has {free:,} free. Free some space or point TMPDIR at a larger disk. "
                            f"Received: {size:,} bytes")


def confined(bundle: Path, rel: Any, what: str) -> Path:
    """``bundle / rel`` after checking that it stays inside the bundle, without opening anything.

    ``rel`` must be a relative, normalized POSIX path; every component must
    exist and none may be a symbolic link (``lstat``); the last must be a
    regular file or a directory.

    Raises:
        UnsafeArtifactError: a path that escapes the bundle, a symlink or a special file.
        ArtifactError: a component that does not exist.
    """
    text = rel if isinstance(rel, str) else None
    parts = PurePosixPath(text).parts if text else ()
    if (not text or text.startswith("/") or "\\" in text or "\x00" in text
            or any(p in ("..", ".") for p in parts) or "/".join(parts) != text
            or any(len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts) or not _encodable(text)):
        raise UnsafeArtifactError(
            f"{bundle}: the manifest's path for {what} is not a relative path inside the bundle; refusing to open "
            f"anything outside it. Re-export the bundle. Received: path={str(rel)[:200]!r}"
        )
    current = Path(bundle)
    for i, part in enumerate(parts):
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise ArtifactError(f"{current}: {what} listed in the manifest is missing. Re-export the bundle "
                                f"(kerasio run / kerasio.export). Received: path={text!r}") from None
        except OSError as exc:  # ENAMETOOLONG, ENOTDIR, EACCES: say so, in one line
            raise ArtifactError(f"{bundle}: the manifest's path for {what} cannot be opened "
                                f"({exc.strerror or exc}). Re-export the bundle. Received: path={text[:200]!r}") from None
        if stat.S_ISLNK(mode):
            raise UnsafeArtifactError(
                f"{current}: is a symbolic link; kerasio never follows links out of a bundle. Replace it with the "
                f"file itself. Received: path={text!r}")
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            raise ArtifactError(f"{current}: is not a directory, but the manifest's path for {what} goes through "
                                f"it. Re-export the bundle. Received: path={text!r}")
        if i == len(parts) - 1 and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UnsafeArtifactError(
                f"{current}: {what} is {_kind(mode)}, not a file or directory; refusing to open it (it could block "
                f"forever or read a device). Re-export the bundle. Received: {_kind(mode)}")
    return current


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def lock_timeout(kind: str) -> float:
    """Seconds to wait for a lock: ``KERASIO_LOCK_TIMEOUT`` (default 600 for a writer's, 10 for a reader's pin).

    A writer holds the bundle lock for as long as an export takes; a pruning
    writer holds a generation exclusively for the moment of a rename. A reader
    that waits longer faces a process holding the lock on purpose.
    """
    try:
        return float(os.environ["KERASIO_LOCK_TIMEOUT"])
    except (KeyError, ValueError):
        return 600.0 if kind == "writer" else 10.0


def flock_within(fd: int, operation: int, wait: float, *, poll: float) -> bool:
    """Take ``flock(fd, operation)`` within ``wait`` seconds, trying every ``poll``; ``False`` if it stayed held.

    Any other failure of ``flock`` (a file system without it) is raised.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(poll)


class BundleLock:
    """The writers' advisory lock on a bundle: ``flock`` on ``.kerasio.lock``, one writer at a time.

    The kernel releases it when its holder dies, so a killed writer never
    leaves the bundle locked. The lock file is opened with ``O_NOFOLLOW`` and
    never truncated: a ``.kerasio.lock`` that is a symbolic link (to a file
    outside the bundle) is refused, not written through.
    """

    def __init__(self, bundle: Path):
        self.path = Path(bundle) / LOCK_NAME
        self._fd: int | None = None

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self, timeout: float | None = None) -> "BundleLock":
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeArtifactError(f"{self.path}: is a symbolic link; kerasio never writes through a link out "
                                          f"of a bundle. Remove it. Received: a symlink") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UnsafeArtifactError(f"{self.path}: is not a regular file; remove it. Received: not a file")
        wait = lock_timeout("writer") if timeout is None else timeout
        if not flock_within(fd, fcntl.LOCK_EX, wait, poll=0.05):
            os.close(fd)
            raise ResourceLimitError(
                f"{self.path.parent}: another process has held the bundle's writer lock for over {wait:g} s; "
                "kerasio stopped waiting. Let that export finish, or raise KERASIO_LOCK_TIMEOUT. "
                f"Received: {LOCK_NAME} locked", limit="lock wait", option="KERASIO_LOCK_TIMEOUT")
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "BundleLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def bundle_lock(bundle: Path) -> BundleLock:
    """The writers' lock on ``bundle`` (see :class:`BundleLock`)."""
    return BundleLock(bundle)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(bundle: Path) -> list[str]:
    """Remove what killed writers left in ``bundle``; call with :func:`bundle_lock` held.

    Under the lock no other writer is working here, so every staging
    directory, renamed-aside old directory and temporary manifest is a leftover.
    """
    removed = []
    places = [Path(bundle)] + [Path(bundle) / sub for sub in ("serving", "generations") if (Path(bundle) / sub).is_dir()]
    for entry in [e for place in places for e in place.iterdir()]:
        name = entry.name
        if name.startswith(".kerasio-staging-") or ".old-" in name or ".tmp-" in name:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(name)
    return removed


def clean_stale_temp(prefix: str) -> None:
    """Remove ``<tmp>/<prefix><pid>-*`` directories whose process is gone (a killed verification's)."""
    import tempfile

    for entry in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        pid = entry.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def private_dir(prefix: str) -> Any:
    """A private (0700) temporary directory ``<tmp>/<prefix><pid>-*``, removed afterwards.

    Those that killed processes left behind are removed first.
    """
    import tempfile

    clean_stale_temp(prefix)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def writable_error(path: Path, exc: OSError, action: str) -> ArtifactError:
    """A one-line error for a failed write that names the cause and says what to do."""
    advice = {
        errno.ENOSPC: "free some disk space or choose another --out",
        errno.EDQUOT: "free some of your disk quota or choose another --out",
        errno.EACCES: "choose a writable --out or fix its permissions",
        errno.EPERM: "choose a writable --out or fix its permissions",
        errno.EROFS: "the file system is read-only; choose another --out",
        errno.ENOTDIR: "a file stands where a directory is needed; choose another --out",
        errno.EEXIST: "a file stands where a directory is needed; choose another --out",
    }.get(exc.errno or 0, "check the path and try again")
    return ArtifactError(f"{path}: cannot {action}: {exc.strerror or exc}; {advice}. Received: {exc}")


def staging_dir(bundle: Path) -> Path:
    """A hidden directory inside ``bundle`` (same filesystem, so renames are atomic)."""
    path = bundle / f".kerasio-staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def place(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest``, replacing what is there without a half-written state.

    Files are swapped with one ``os.replace``. A directory cannot replace a
    non-empty directory atomically, so the old one is first renamed aside and
    removed only once the new one is in place.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and dest.exists():
        aside = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(dest, aside)
        os.replace(src, dest)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dest)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, rename it over ``path`` and fsync the directory.

    After a crash or a power cut, ``path`` holds either the old text or the new, whole.
    """
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that the renames and links made in it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def interrupts_deferred():
    """Hold back Ctrl-C (SIGINT) until the block is done, then raise it.

    The commit of an export is a handful of renames; an interrupt between two
    of them would leave new artifacts beside the old manifest. Deferring it
    for those milliseconds keeps every bundle consistent. (Only the main
    thread can handle signals; elsewhere this is a no-op.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
