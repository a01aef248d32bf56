"""The verification worker's sandbox: Linux Landlock, applied before the worker imports anything.

Run as a script (``python kerasio/sandbox.py CONFIG``), not as ``-m``, so that
nothing of kerasio, numpy or TensorFlow is imported, and no thread started,
before the restriction applies: every thread the worker starts afterwards
inherits it. The worker may then

* read (and execute) the Python environment, the system's libraries, ``/etc``,
  ``/proc``, ``/sys`` and the paths it is given (the checked copies of the
  artifacts and the reference inputs);
* write only its private temporary directory (and ``/dev/null``).

A payload that slips past the audit (an op allowed with ``--allow-op``, a
trusted pickle) cannot write anywhere else, nor read a file outside those
paths. ``KERASIO_SANDBOX``: ``auto`` (default: on where the kernel and the
``landlock`` package allow), ``require`` (refuse to verify without it) or
``off``. What applied is reported in every verification report.
"""
from __future__ import annotations

import json
import os
import sys

MODES = ("auto", "require", "off")

# Read-only system locations a Python + TensorFlow process needs: shared libraries, CPU and memory info, the
# dynamic loader's cache, time zones, user names. Home directories, the working directory, /tmp, raw devices and
# the rest of /etc (/etc/shadow, say) are not among them.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/proc", "/sys", "/dev/urandom", "/dev/random",
               "/dev/zero", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
               "/etc/nsswitch.conf", "/etc/passwd", "/etc/group", "/etc/ssl", "/etc/os-release")


def mode() -> str:
    value = os.environ.get("KERASIO_SANDBOX", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"KERASIO_SANDBOX must be one of {', '.join(MODES)}; received: {value!r}")
    return value


def restrict(readable: list[str], writable: list[str]) -> str:
    """Restrict this thread (and every thread and process it starts later) with Landlock; return what applied.

    Raises:
        OSError: Landlock is not available (no package, an old kernel, disabled), with the reason.
    """
    try:
        import landlock
        from landlock import FSAccess
    except ImportError:
        raise OSError("the landlock package is not installed (pip install landlock)") from None
    try:
        abi = landlock.landlock_abi_version()
    except Exception as exc:  # ENOSYS / EOPNOTSUPP: no Landlock in this kernel
        raise OSError(f"this kernel has no Landlock ({exc})") from None
    ruleset = landlock.Ruleset()  # every file-system access is handled, so anything not allowed below is denied
    file_read = FSAccess.READ_FILE | FSAccess.EXECUTE
    dir_read = file_read | FSAccess.READ_DIR
    for path in dict.fromkeys(readable):
        if os.path.isdir(path):
            ruleset.allow(path, rules=dir_read)
        elif os.path.exists(path):  # a file, or a character device such as /dev/urandom
            ruleset.allow(path, rules=file_read)
    for path in dict.fromkeys(writable):
        if os.path.isdir(path):
            ruleset.allow(path, rules=FSAccess.all())
    if os.path.exists(os.devnull):
        ruleset.allow(os.devnull, rules=FSAccess.READ_FILE | FSAccess.WRITE_FILE)
    ruleset.apply()
    return f"landlock ABI {abi}: writes only its temporary directory; reads only the Python environment, " \
           f"system libraries and the checked artifact copies"


def python_paths() -> list[str]:
    """The interpreter's own locations and import path: what the worker must be able to read."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.path.realpath(p) for p in paths if os.path.exists(p)]


def main() -> None:
    """``python sandbox.py CONFIG_JSON``: apply the sandbox, then serve as ``kerasio.worker``."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # kerasio's own modules must not shadow top-level ones (run as a script, this dir comes first)
    config = json.loads(sys.argv[1])
    wanted = config.get("mode", "auto")
    try:
        status = "off" if wanted == "off" else restrict(
            [*python_paths(), *SYSTEM_READ, *config.get("read", [])], config.get("write", []))
    except OSError as exc:
        if wanted == "require":
            print(f"kerasio sandbox: {exc}", file=sys.stderr)
            os._exit(3)
        status = f"unavailable: {exc}"
    os.environ["KERASIO_SANDBOX_STATUS"] = status
    del sys.argv[1]
    import runpy

    runpy.run_module("kerasio.worker", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
