"""Shared helpers: interleaved timing, medians and a description of the machine."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc): a command's children keep its session when re-parented."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


class PeakRss:
    """The peak of the summed resident memory of every process in session ``sid``, sampled on a thread.

    ``with PeakRss(proc.pid, interval=0.01) as peak: ...``; then ``peak.bytes``.
    """

    def __init__(self, sid: int, interval: float = 0.01):
        import threading

        self.sid, self.interval, self.bytes = sid, interval, 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._done.is_set():
            total = 0
            for pid in session_processes(self.sid):
                try:
                    total += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    pass
            self.bytes = max(self.bytes, total)
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


def wait_session(sid: int) -> bool:
    """Wait until every process of session ``sid`` has exited; return whether any outlived its leader."""
    left = bool(session_processes(sid))
    while session_processes(sid):
        time.sleep(0.002)
    return left


LEFT_BEHIND: dict[str, int] = {}  # command -> runs whose process group outlived the command's own process


def run_group(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> tuple[float, float, subprocess.Popen]:
    """Start ``cmd`` as a session leader; return (when it started, when its whole session had exited, the process).

    The clock stops only when every process the command started has exited: a
    child left tearing down after the command returned is counted, and noted in
    :data:`LEFT_BEHIND`.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}, cwd=cwd)
    proc.wait()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    if session_processes(proc.pid):
        LEFT_BEHIND[" ".join(map(str, cmd[:4]))] = LEFT_BEHIND.get(" ".join(map(str, cmd[:4])), 0) + 1
        while session_processes(proc.pid):
            time.sleep(0.002)
    return start, time.perf_counter(), proc


def run_timed(cmd: list[str], env: dict | None = None, cwd: Path = ROOT) -> float:
    """Wall time of ``cmd`` as a whole process group (see :func:`run_group`)."""
    start, end, _ = run_group(cmd, env, cwd)
    return end - start


def interleave(cases: dict[str, callable], runs: int) -> dict[str, list[float]]:
    """Run each case once per round, alternating, so drift hits every case alike."""
    times = {name: [] for name in cases}
    for i in range(runs):
        order = list(cases) if i % 2 == 0 else list(reversed(cases))
        for name in order:
            times[name].append(cases[name]())
    return times


def report(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {"benchmark": name, "machine": machine(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(json.dumps(data, indent=2))


def median(values) -> float:
    return statistics.median(values)


PY = sys.executable
