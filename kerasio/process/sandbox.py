"""The worker's confinement: resource limits and Linux Landlock, applied before the worker imports anything.

Run as a script (``python kerasio/sandbox.py CONFIG``), not as ``-m``, so that
nothing of kerasio, numpy or TensorFlow is imported, and no thread started,
before the restrictions apply: every thread the worker starts afterwards
inherits them. Only the standard library is used here. The worker then

* runs under ``setrlimit`` limits: address space (``memory``, left off where a
  GPU runtime must map its device memory; the parent then watches the
  worker's resident memory instead), open files, the size of any file it
  writes, and no core dumps. Its CPU time is limited per request by the
  worker itself, its wall time by the parent;
* may read (and execute) the Python environment, the system's libraries, a
  few named files of ``/etc``, ``/sys``, the CPU and memory facts of ``/proc``
  and its own ``/proc/<pid>`` status files (not ``environ``), the GPU's device
  nodes, and the paths it is given (the checked copies of the artifacts and
  the reference inputs);
* may write only its private temporary directory (and ``/dev/null``);
* may not bind or connect TCP sockets (Landlock ABI 4 and later), connect to
  abstract UNIX sockets or signal processes outside its sandbox (ABI 6 and
  later). Landlock also forbids it to ptrace, or read ``/proc/<pid>/environ``
  of, any process outside the sandbox.

``KERASIO_SANDBOX``: ``auto`` (default: Landlock where the kernel has it),
``require`` (refuse to run without it) or ``off``. The resource limits apply
in every mode. What applied is reported in every verification report.
"""
from __future__ import annotations

import ctypes
import glob
import json
import os
import sys

MODES = ("auto", "require", "off")

# Read-only system locations a Python + TensorFlow process needs: shared libraries, CPU topology, the dynamic
# loader's cache, time zones, user names. Home directories, the working directory, /tmp, raw devices, the rest of
# /etc (/etc/shadow, say) and /proc beyond the facts below are not among them.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sys", "/dev/urandom", "/dev/random", "/dev/zero",
               "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/nsswitch.conf",
               "/etc/passwd", "/etc/group", "/etc/ssl", "/etc/os-release", "/etc/fonts")
# and the worker's own, see own_proc; /proc/driver/nvidia is what CUDA reads of its driver at initialisation
PROC_READ = ("/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/sys", "/proc/driver/nvidia")
OWN_PROC = ("status", "stat", "statm", "maps", "cgroup", "mountinfo", "mounts", "limits", "fd", "task", "cmdline",
            "exe", "auxv")  # never environ
DEVICES = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")  # a GPU runtime opens, reads, writes and ioctls these

# Landlock (include/uapi/linux/landlock.h). Access rights by the ABI that introduced them.
_SYS_CREATE, _SYS_ADD_RULE, _SYS_RESTRICT = 444, 445, 446
_PR_SET_NO_NEW_PRIVS = 38
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_V1 = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1 << 0, 1 << 1
_RULE_PATH_BENEATH = 1
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def mode() -> str:
    value = os.environ.get("KERASIO_SANDBOX", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"KERASIO_SANDBOX must be one of {', '.join(MODES)}; received: {value!r}")
    return value


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def abi_version() -> int:
    """The kernel's Landlock ABI version; raises OSError where there is none."""
    if not sys.platform.startswith("linux"):
        raise OSError("Landlock is a Linux feature")
    version = _libc().syscall(_SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))  # LANDLOCK_CREATE_RULESET_VERSION
    if version < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"this kernel has no Landlock ({os.strerror(code)})")
    return int(version)


def restrict(readable: list[str], writable: list[str], devices: list[str]) -> str:
    """Confine this thread (and every thread and process it starts later) with Landlock; return what applied.

    Raises:
        OSError: Landlock is not available (an old kernel, disabled), with the reason.
    """
    abi = abi_version()
    libc = _libc()
    fs = _FS_V1 | (_REFER if abi >= 2 else 0) | (_TRUNCATE if abi >= 3 else 0) | (_IOCTL_DEV if abi >= 5 else 0)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(fs, net, scoped)
    size = ctypes.sizeof(attr) if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        read = _READ_FILE | _EXECUTE | _READ_DIR
        for paths, rights in ((readable, read), (writable, fs), (devices, read | _WRITE_FILE | _IOCTL_DEV),
                              ([os.devnull], _READ_FILE | _WRITE_FILE)):
            for path in dict.fromkeys(paths):
                _allow(libc, ruleset, path, rights & fs)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if libc.syscall(_SYS_RESTRICT, ruleset, ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    extra = ("; no TCP bind or connect" if net else "") + ("; no abstract UNIX sockets or signals outside" if scoped else "")
    return (f"landlock ABI {abi}: writes only its temporary directory; reads only the Python environment, system "
            f"libraries and the checked artifact copies{extra}")


def _allow(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this machine
    try:
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS  # directory rights on a file are EINVAL
        rule = _PathBeneath(rights, fd)
        if libc.syscall(_SYS_ADD_RULE, ruleset, ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                        ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def own_proc() -> list[str]:
    """This process's own ``/proc/<pid>`` facts that runtimes read (memory maps, limits, status), not ``environ``."""
    base = f"/proc/{os.getpid()}"
    return [f"{base}/{name}" for name in OWN_PROC]


def set_limits(limits: dict[str, int]) -> list[str]:
    """Apply ``setrlimit`` limits (each at most the inherited hard limit); return what applied, for the report."""
    import resource

    applied = []
    table = (("memory", resource.RLIMIT_AS, "address space"), ("files", resource.RLIMIT_NOFILE, "open files"),
             ("file_size", resource.RLIMIT_FSIZE, "file size"), ("core", resource.RLIMIT_CORE, "core dumps"))
    for key, which, label in table:
        if key not in limits or limits[key] is None:
            continue
        _soft, hard = resource.getrlimit(which)
        value = int(limits[key]) if hard == resource.RLIM_INFINITY else min(int(limits[key]), hard)
        resource.setrlimit(which, (value, value))
        applied.append(f"{label} {value}")
    return applied


def python_paths() -> list[str]:
    """The interpreter's own locations and import path: what the worker must be able to read."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))]
    paths += [p for p in sys.path if p and os.path.isdir(p)]
    paths += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return [os.path.realpath(p) for p in paths if os.path.exists(p)]


def main() -> None:
    """``python sandbox.py CONFIG_JSON``: apply the limits and the sandbox, then serve as ``kerasio.process.server``."""
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0] or ".") == here:
        del sys.path[0]  # kerasio's own modules must not shadow top-level ones (run as a script, this dir comes first)
    config = json.loads(sys.argv[1])
    limits = set_limits(config.get("limits", {}))
    wanted = config.get("mode", "auto")
    try:
        if wanted == "off":
            status = "off: KERASIO_SANDBOX=off"
        else:
            devices = [p for pattern in DEVICES for p in glob.glob(pattern)] if config.get("gpu") else []
            readable = [*python_paths(), *SYSTEM_READ, *PROC_READ, *own_proc(), *config.get("read", [])]
            status = restrict(readable, config.get("write", []), devices)
    except OSError as exc:
        if wanted == "require":
            print(f"kerasio sandbox: {exc}", file=sys.stderr)
            os._exit(3)
        status = f"unavailable: {exc}"
    os.environ["KERASIO_SANDBOX_STATUS"] = status
    os.environ["KERASIO_LIMITS_STATUS"] = ", ".join(limits)
    del sys.argv[1]
    import runpy

    runpy.run_module("kerasio.process", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
