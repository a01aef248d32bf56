"""Limits on a worker that runs an untrusted artifact: memory, wall time, CPU time, open files, file size.

The defaults grow with the artifact and stop at what the machine has: a
model of a few megabytes gets a 4 GiB address space and 30 s per step, a
5 GB model 44 GiB (or 80 % of the RAM, whichever is less) and 330 s. A
*step* is one load of the artifact or one batch run through it; a check of
the reference inputs is three steps (load, the full batch, one row). Each
limit can be raised: ``Limits(memory="16G", timeout=600)`` in Python,
``--max-memory 16G --timeout 600`` on the command line, or the environment
variables ``KERASIO_MAX_MEMORY`` and ``KERASIO_TIMEOUT``.

A limit hit is a :class:`~kerasio.errors.ResourceLimitError` that names the
limit and how to raise it; the worker is replaced before the next artifact.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from typing import Any

from kerasio.errors import InputError, ResourceLimitError

__all__ = ["Limits", "parse_size", "memory_error", "memory_text", "format_size", "available_memory", "machine_memory"]

GIB = 1 << 30
BASE_MEMORY = 4 * GIB  # a Python process with TensorFlow and Keras imported maps ~2.4 GB before it loads anything
MEMORY_PER_BYTE = 8  # the artifact's bytes, its copy in the runtime, the runtime's own buffers and the outputs
BASE_TIMEOUT = 30.0  # seconds per step for a small model
TIMEOUT_PER_GIB = 60.0
FILES = 4096
MIN_FILE_SIZE = GIB


@dataclass(frozen=True)
class Limits:
    """What a worker running an untrusted artifact may use; ``None`` means the default for the artifact's size.

    Attributes:
        memory: bytes of address space (and of resident memory, where a GPU runtime needs the address space
            uncapped); ``"8G"``, ``"512M"`` or a number.
        timeout: seconds of wall time per step (a load, or one batch).
        cpu: seconds of CPU time per step (default: ``timeout`` on every CPU core, a backstop that the wall time
            normally beats; the kernel enforces it even where a runtime never returns to Python).
        files: open files at once.
        file_size: bytes of the largest file the worker may write (its outputs).
    """

    memory: int | str | None = None
    timeout: float | None = None
    files: int | None = None
    file_size: int | str | None = None
    cpu: float | None = None

    @classmethod
    def from_env(cls, **given: Any) -> "Limits":
        """Limits from keyword arguments, falling back to ``KERASIO_MAX_MEMORY`` and ``KERASIO_TIMEOUT``."""
        memory = given.get("memory") or os.environ.get("KERASIO_MAX_MEMORY") or None
        timeout = given.get("timeout") or os.environ.get("KERASIO_TIMEOUT") or None
        return cls(memory=memory, timeout=None if timeout is None else _seconds(timeout, "timeout"),
                   files=given.get("files"), file_size=given.get("file_size"), cpu=given.get("cpu"))

    def resolved(self, artifact_bytes: int = 0) -> "Limits":
        """Every limit as a number, the defaults derived from ``artifact_bytes`` and this machine."""
        size = max(int(artifact_bytes), 0)
        ram = machine_memory()
        memory = parse_size(self.memory, "memory") if self.memory is not None else \
            min(BASE_MEMORY + MEMORY_PER_BYTE * size, max(int(ram * 0.8), BASE_MEMORY))
        timeout = _seconds(self.timeout, "timeout") if self.timeout is not None else \
            BASE_TIMEOUT + TIMEOUT_PER_GIB * size / GIB
        file_size = parse_size(self.file_size, "file_size") if self.file_size is not None else \
            max(MIN_FILE_SIZE, memory)
        cpu = _seconds(self.cpu, "cpu") if self.cpu is not None else timeout * (os.cpu_count() or 1)
        return replace(self, memory=memory, timeout=timeout, files=int(self.files or FILES), file_size=file_size,
                       cpu=cpu)

    @property
    def cpu_seconds(self) -> float:
        """CPU time per step (see ``cpu``)."""
        return float(self.cpu) if self.cpu is not None else float(self.timeout or BASE_TIMEOUT) * (os.cpu_count() or 1)

    def rlimits(self, *, address_space: bool = True) -> dict[str, int]:
        """The ``setrlimit`` values the sandbox applies (see :func:`kerasio.process.sandbox.set_limits`)."""
        out = {"files": int(self.files or FILES), "file_size": int(parse_size(self.file_size or MIN_FILE_SIZE)),
               "core": 0}
        if address_space:
            out["memory"] = int(parse_size(self.memory or BASE_MEMORY))
        return out

    def describe(self) -> str:
        return (f"memory {format_size(parse_size(self.memory or BASE_MEMORY))}, {float(self.timeout or 0):g} s a "
                f"step, {self.files} open files, files up to {format_size(parse_size(self.file_size or 0))}")

    def hit(self, limit: str, what: str) -> ResourceLimitError:
        """The error for ``limit`` reached while ``what`` (``the load of model.keras``, ...)."""
        shown = {"memory": (f"memory limit ({format_size(parse_size(self.memory or BASE_MEMORY))})",
                            "--max-memory SIZE (Limits(memory=...), KERASIO_MAX_MEMORY)"),
                 "wall time": (f"time limit ({float(self.timeout or 0):g} s a step)",
                               "--timeout SECONDS (Limits(timeout=...), KERASIO_TIMEOUT)"),
                 "CPU time": (f"CPU-time limit ({self.cpu_seconds:g} s a step)",
                              "--timeout SECONDS (Limits(timeout=...), KERASIO_TIMEOUT)"),
                 "open files": (f"open-files limit ({self.files})", "Limits(files=...)"),
                 "file size": (f"file-size limit ({format_size(parse_size(self.file_size or 0))})",
                               "Limits(file_size=...)")}
        label, option = shown.get(limit, (f"{limit} limit", "the limit"))
        return ResourceLimitError(
            f"{what} reached the untrusted worker's {label} and was stopped; the worker is replaced. If you trust "
            f"this artifact and it needs more, raise it with {option}. Received: {limit} limit reached",
            limit=limit, option=option.split(" (")[0])


def machine_memory() -> int:
    """Physical memory in bytes (0 when unknown)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


def available_memory() -> int:
    """``MemAvailable`` from ``/proc/meminfo``, in bytes (0 when unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(value: Any, name: str = "size") -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"`` or a number of bytes, as bytes."""
    if isinstance(value, bool):
        raise InputError(f"{name} must be a size such as 8G or 512M; received: {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise InputError(f"{name} must be a positive size such as 8G or 512M; received: {value!r}")
        return int(value)
    found = _SIZE.match(str(value))
    if not found or float(found.group(1)) <= 0:
        raise InputError(f"{name} must be a size such as 8G, 512M or a number of bytes; received: {value!r}")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[found.group(2).lower()]
    return int(float(found.group(1)) * scale)


def _seconds(value: Any, name: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0 or seconds != seconds:
        raise InputError(f"{name} must be a positive number of seconds, e.g. 120; received: {value!r}")
    return seconds


def format_size(n: int) -> str:
    for unit, scale in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


# What the runtimes say when an allocation fails (TensorFlow's ResourceExhaustedError, onnxruntime's bad_alloc,
# numpy's MemoryError, glibc's ENOMEM): under the worker's address-space cap, memory exhaustion is an error.
_MEMORY_TEXT = re.compile(r"bad_alloc|out of memory|OOM when allocating|Cannot allocate memory|Failed to allocate|"
                          r"Unable to allocate|MemoryError|ResourceExhausted|std::length_error", re.IGNORECASE)


def memory_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure (as the runtimes raise it under an address-space cap)."""
    return isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError" or \
        memory_text(f"{type(exc).__name__}: {exc}")


def memory_text(text: str) -> bool:
    """Whether a runtime's message (or a dying worker's last words) reports a failed allocation."""
    return bool(_MEMORY_TEXT.search(text[:2000]))
