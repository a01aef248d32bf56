"""Training beyond one device: ``tf.distribute`` strategies and Keras's JAX ``DataParallel``.

kerasio builds nothing of its own here: it picks the engine Keras already has,
builds and compiles the model under its scope, and records what ran in the
manifest. A registry maps each ``--strategy`` name to its builder:

============  ==============  ================================================================
name          backend         engine
============  ==============  ================================================================
default       any             one device (no strategy)
mirrored      tensorflow      ``tf.distribute.MirroredStrategy``: the GPUs, or the CPU split
                              into ``replicas`` logical devices
multiworker   tensorflow      ``tf.distribute.MultiWorkerMirroredStrategy`` over ``TF_CONFIG``
                              (:func:`launch_local_cluster` makes one on loopback)
dataparallel  jax             ``keras.distribution.DataParallel`` over the visible devices
============  ==============  ================================================================

The batch size given to ``fit`` is the global batch: each replica gets
``batch_size / replicas`` rows of it.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from kerasio.backends.environment import default_backend
from kerasio.errors import InputError

__all__ = ["Distribution", "STRATEGIES", "resolve_strategy", "precheck_strategy", "prepare_devices",
           "launch_local_cluster", "multiworker_strategy", "cluster_spec", "is_chief_task", "chief_by_environment"]


@dataclass
class Distribution:
    """A resolved strategy: what to build under, and what the manifest records.

    Attributes:
        name: ``default``, ``mirrored``, ``multiworker``, ``dataparallel`` (or the
            class name of a strategy object passed in).
        replicas: replicas in sync, over all workers.
        workers: worker processes (1 unless multi-worker).
        is_chief: whether this process writes the bundle (under multi-worker, only the chief does).
        devices: the devices the replicas of this process run on.
        engine: the ``tf.distribute.Strategy`` or ``keras.distribution.Distribution`` (``None``: default).
    """

    name: str
    replicas: int = 1
    workers: int = 1
    is_chief: bool = True
    task: str = ""
    devices: tuple[str, ...] = ()
    engine: Any = field(default=None, repr=False)
    batch_multiple: int = 1  # every batch's rows a multiple of this (JAX shards a batch evenly over its devices)

    def scope(self) -> contextlib.AbstractContextManager[Any]:
        """The context to build and compile the model in."""
        return self.engine.scope() if self.engine is not None else contextlib.nullcontext()

    def record(self, batch_size: int) -> dict[str, Any]:
        """What the manifest's ``training.distribution`` holds."""
        return {"strategy": self.name, "replicas": self.replicas, "workers": self.workers,
                "global_batch_size": batch_size, "per_replica_batch_size": batch_size // max(self.replicas, 1),
                "devices": list(self.devices), **({"task": self.task} if self.task else {})}

    def check_batch(self, batch_size: int) -> None:
        """Each replica takes an equal share of the global batch: an :class:`InputError` otherwise."""
        if batch_size % self.replicas:
            raise InputError(f"batch size {batch_size} does not split evenly over {self.replicas} replicas "
                             f"({self.name}); use a multiple of {self.replicas}. Received: --batch-size {batch_size}")

    def describe(self, batch_size: int) -> str:
        """One line for the pipeline's trace."""
        if self.name == "default":
            return "one device"
        per = f"{self.workers} workers x {self.replicas // max(self.workers, 1)} replica(s)" if self.workers > 1 \
            else f"{self.replicas} replica(s) on {', '.join(self.devices)}"
        return (f"{self.name}: {per}; global batch {batch_size} = {batch_size // max(self.replicas, 1)} per replica"
                + ("" if self.is_chief else "; this worker writes only a temporary copy"))


def _default(replicas: int | None) -> Distribution:
    if replicas not in (None, 1):
        raise InputError(f"the default strategy trains on one device; for {replicas} replicas use --strategy mirrored "
                         f"(TensorFlow) or dataparallel (JAX). Received: --replicas {replicas}")
    return Distribution("default", devices=("default",))


# The Keras backend each named strategy runs on, and what to do instead.
_BACKENDS = {
    "mirrored": ("tensorflow", "Use --strategy dataparallel with JAX, or set KERAS_BACKEND=tensorflow."),
    "multiworker": ("tensorflow", "Multi-worker training uses tf.distribute; set KERAS_BACKEND=tensorflow."),
    "dataparallel": ("jax", "Set KERAS_BACKEND=jax, or use --strategy mirrored with TensorFlow."),
}


def _require_backend(name: str) -> None:
    wanted, hint = _BACKENDS[name]
    backend = default_backend()
    if backend != wanted:
        raise InputError(f"--strategy {name} runs on Keras's {wanted} backend, and this process uses {backend}. "
                         f"{hint} Received: KERAS_BACKEND={backend}")


def _mirrored(replicas: int | None) -> Distribution:
    _require_backend("mirrored")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")  # physical: listing logical devices would start the runtime
    if gpus and (replicas is None or replicas <= len(gpus)):
        devices = [f"/gpu:{i}" for i in range(replicas or len(gpus))]
    elif gpus:
        raise InputError(f"--replicas {replicas}: this machine has {len(gpus)} GPU(s). Ask for at most {len(gpus)}. "
                         f"Received: --replicas {replicas}")
    else:
        devices = [d.name for d in prepare_cpus(replicas or 1)]
    strategy = tf.distribute.MirroredStrategy(devices)
    return Distribution("mirrored", replicas=strategy.num_replicas_in_sync, devices=tuple(devices), engine=strategy)


def prepare_cpus(count: int) -> list[Any]:
    """The CPU as ``count`` logical devices (TensorFlow), which works only before TensorFlow has started its runtime."""
    import tensorflow as tf

    physical = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(physical) or [None]
    if len(configured) < count:
        try:
            tf.config.set_logical_device_configuration(physical, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError as exc:  # the runtime has started: the split is fixed now
            if len(tf.config.list_logical_devices("CPU")) >= count:
                return tf.config.list_logical_devices("CPU")[:count]
            raise InputError(f"cannot split the CPU into {count} devices now: TensorFlow has already started "
                             f"({exc}). Resolve the strategy before running anything else in TensorFlow, or pass "
                             f"a tf.distribute.MirroredStrategy made at the start of your program. "
                             f"Received: replicas={count}") from None
    return tf.config.list_logical_devices("CPU")[:count]


def is_chief_task(cluster: Mapping[str, Any], kind: str | None, index: int) -> bool:
    """TensorFlow's rule: the ``chief`` task, or ``worker`` 0 of a cluster without one (or no cluster at all)."""
    return kind in (None, "chief") or (kind == "worker" and index == 0 and not cluster.get("chief"))


def chief_by_environment(strategy: Any) -> bool:
    """Whether this process writes the bundle, known from ``TF_CONFIG`` before Keras is imported."""
    if strategy != "multiworker":
        return True  # only multi-worker has processes that are not the chief
    config = cluster_spec()
    return is_chief_task(config["cluster"], str(config["task"]["type"]), int(config["task"]["index"]))


def cluster_spec() -> dict[str, Any]:
    """``TF_CONFIG``, parsed; an :class:`InputError` naming the variable when it is missing or malformed."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        raise InputError("--strategy multiworker needs TF_CONFIG (the cluster and this task) in the environment. "
                         "Set it on each worker, or run `kerasio run --strategy multiworker --workers 2` to start a "
                         "local cluster on loopback. Received: TF_CONFIG unset")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        kind, index = str(task["type"]), int(task["index"])
        if not isinstance(cluster.get(kind), list) or not 0 <= index < len(cluster[kind]):
            raise ValueError(f"task {kind}:{index} is not in the cluster")
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"TF_CONFIG is not a valid cluster description ({exc}); it needs "
                         '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": 0}}. '
                         f"Received: TF_CONFIG={text[:200]!r}") from None
    return config


def multiworker_strategy() -> Any:
    """A ``tf.distribute.MultiWorkerMirroredStrategy`` that Keras 3's ``fit`` can train under.

    Keras 3 calls ``strategy.reduce`` on a whole ``(x, y)`` batch and with
    ``axis=0`` on scalar metrics, which the collective strategy refuses
    (keras-team/keras#20585): this subclass reduces each tensor of a structure
    on its own, over replicas alone for a scalar. Nothing else changes.
    """
    import tensorflow as tf

    class _MultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op: Any, value: Any, axis: Any = None) -> Any:
            def one(v: Any) -> Any:
                local = self.experimental_local_results(v)[0]
                scalar = len(getattr(local, "shape", ())) == 0
                return tf.distribute.MultiWorkerMirroredStrategy.reduce(self, reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    return _MultiWorker()


def _multiworker(replicas: int | None) -> Distribution:
    _require_backend("multiworker")
    if replicas not in (None, 1):
        raise InputError(f"--strategy multiworker runs one replica per worker process; choose the number of "
                         f"processes with --workers N (or TF_CONFIG). Received: --replicas {replicas}")
    config = cluster_spec()
    cluster, task = config["cluster"], config["task"]
    workers = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    kind, index = str(task["type"]), int(task["index"])
    chief = is_chief_task(cluster, kind, index)
    strategy = multiworker_strategy()
    return Distribution("multiworker", replicas=strategy.num_replicas_in_sync, workers=workers, is_chief=chief,
                        task=f"{kind}:{index}", devices=tuple(strategy.extended.worker_devices), engine=strategy)


def _dataparallel(replicas: int | None) -> Distribution:
    _require_backend("dataparallel")
    import keras

    devices = keras.distribution.list_devices()
    if replicas is not None and replicas > len(devices):
        raise InputError(f"--replicas {replicas}: JAX sees {len(devices)} device(s) ({', '.join(devices)}). On a CPU, "
                         f"set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before JAX starts "
                         f"(kerasio run --replicas does). Received: --replicas {replicas}")
    devices = devices[: replicas or len(devices)]
    engine = keras.distribution.DataParallel(devices=devices)
    return Distribution("dataparallel", replicas=len(devices), devices=tuple(devices), engine=engine,
                        batch_multiple=len(devices))


STRATEGIES: dict[str, Callable[[int | None], Distribution]] = {
    "default": _default, "mirrored": _mirrored, "multiworker": _multiworker, "dataparallel": _dataparallel,
}


def resolve_strategy(strategy: Any = None, *, replicas: int | None = None) -> Distribution:
    """A :class:`Distribution` from a name in :data:`STRATEGIES`, a strategy object, or ``None`` (default).

    A ``tf.distribute.Strategy`` or a ``keras.distribution.Distribution`` made
    by the caller is used as it is.

    Raises:
        InputError: an unknown name, a strategy the backend cannot run, more
            replicas than devices, or a missing ``TF_CONFIG``.
    """
    if strategy is None or isinstance(strategy, str):
        return STRATEGIES[_named(strategy, replicas)](replicas)
    return _from_object(strategy)


def _named(strategy: str | None, replicas: int | None) -> str:
    name = strategy or "default"
    if name not in STRATEGIES:
        raise InputError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}. "
                         f"Received: --strategy {name}")
    if replicas is not None and replicas < 1:
        raise InputError(f"--replicas must be at least 1. Received: --replicas {replicas}")
    return name


def precheck_strategy(strategy: Any, *, replicas: int | None, batch_size: int) -> None:
    """What :func:`resolve_strategy` would refuse that needs neither Keras nor a device, checked before either
    starts: a misuse costs a second, not TensorFlow's import. ``resolve_strategy`` still checks everything."""
    if strategy is not None and not isinstance(strategy, str):
        return
    name = _named(strategy, replicas)
    if name == "default":
        _default(replicas)
    else:
        _require_backend(name)
    if replicas and name in ("mirrored", "dataparallel"):
        Distribution(name, replicas=replicas).check_batch(batch_size)


def _from_object(engine: Any) -> Distribution:
    kind = type(engine)
    module = kind.__module__
    if module.startswith("tensorflow"):
        import tensorflow as tf

        if isinstance(engine, tf.distribute.MultiWorkerMirroredStrategy) and \
                type(engine).reduce is tf.distribute.MultiWorkerMirroredStrategy.reduce:
            raise InputError("Keras 3 cannot fit under a plain tf.distribute.MultiWorkerMirroredStrategy "
                             "(keras-team/keras#20585); pass strategy='multiworker' or "
                             "kerasio.recipe.distribute.multiworker_strategy(), which works around it. "
                             f"Received: {kind.__name__}")
        names = {tf.distribute.MirroredStrategy: "mirrored", tf.distribute.MultiWorkerMirroredStrategy: "multiworker"}
        name = next((n for base, n in names.items() if isinstance(engine, base)), kind.__name__.lower())
        workers = int(getattr(getattr(engine, "extended", None), "_num_workers", 1) or 1)
        chief = True
        if name == "multiworker":
            resolver = engine.cluster_resolver
            chief = is_chief_task(resolver.cluster_spec().as_dict(), resolver.task_type, resolver.task_id or 0)
        devices = tuple(getattr(engine.extended, "worker_devices", ()))
        return Distribution(name, replicas=engine.num_replicas_in_sync, workers=workers, is_chief=chief,
                            devices=devices, engine=engine)
    if module.startswith("keras"):
        import keras

        if isinstance(engine, keras.distribution.Distribution):
            devices = tuple(str(d) for d in engine.device_mesh.devices.flatten())
            name = "dataparallel" if isinstance(engine, keras.distribution.DataParallel) else kind.__name__.lower()
            return Distribution(name, replicas=len(devices), devices=devices, engine=engine,
                                batch_multiple=len(devices))
    raise InputError(f"strategy must be a name ({', '.join(STRATEGIES)}), a tf.distribute.Strategy or a "
                     f"keras.distribution.Distribution. Received: {kind.__name__}")


def prepare_devices(strategy: str | None, replicas: int | None) -> None:
    """Before Keras is imported: give JAX ``replicas`` CPU devices for ``dataparallel`` (XLA reads this at start)."""
    if strategy == "dataparallel" and replicas and replicas > 1 and "jax" not in sys.modules:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={replicas}".strip()


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports free on 127.0.0.1 now (held open together, so they differ)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


def launch_local_cluster(argv: Sequence[str], workers: int, *, python: str | None = None,
                         echo: Callable[[str], None] = print, timeout: float | None = None) -> int:
    """Run ``kerasio <argv>`` as ``workers`` processes of one multi-worker cluster on loopback ports.

    Worker 0 is the chief: its output is this command's output, and only it
    writes the bundle. The others' output goes to a log that is printed if they
    fail. When one process fails, the others are stopped (a collective would
    otherwise wait for it forever). No process outlives this function.

    Returns:
        The chief's exit status, or the first failing worker's.
    """
    if workers < 2:
        raise InputError(f"--workers starts a cluster of at least 2 processes. Received: --workers {workers}")
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="kerasio-cluster-") as tmp:
        try:
            for index in range(workers):
                env = dict(os.environ)
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": addresses},
                                               "task": {"type": "worker", "index": index}})
                log = None if index == 0 else open(Path(tmp) / f"worker-{index}.log", "w+b")
                logs.append(log)
                procs.append(subprocess.Popen([python or sys.executable, "-m", "kerasio", *argv], env=env,
                                              stdout=log, stderr=subprocess.STDOUT if log else None,
                                              start_new_session=True))
            return _wait_cluster(procs, logs, echo, timeout)
        finally:
            for proc in procs:
                _stop_group(proc)
            for log in logs:
                if log is not None:
                    log.close()


def _wait_cluster(procs: list[subprocess.Popen[bytes]], logs: list[Any], echo: Callable[[str], None],
                  timeout: float | None) -> int:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            index = failed[0]
            if logs[index] is not None:
                logs[index].seek(0)
                tail = b"\n".join(logs[index].read().splitlines()[-20:]).decode(errors="replace")
                echo(f"kerasio: worker {index} of the local cluster failed (exit {codes[index]}); its last lines:\n"
                     + tail)
            return int(codes[index] or 1)
        if all(c == 0 for c in codes):
            return 0
        if deadline is not None and time.monotonic() > deadline:
            echo(f"kerasio: the local cluster did not finish within {timeout:.0f} s; its processes were stopped")
            return 124
        time.sleep(0.1)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc``'s whole process group (it started its own session), then reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything it started that is still running


@contextlib.contextmanager
def worker_output(dist: Distribution, out: Path) -> Iterator[Path]:
    """Where this process writes: ``out`` for the chief; a temporary directory, deleted after, for other workers.

    All workers save (TensorFlow's multi-worker saving guide: saving may run
    collective ops), but only the chief's copy is kept.
    """
    if dist.is_chief:
        yield out
        return
    with tempfile.TemporaryDirectory(prefix="kerasio-worker-") as tmp:
        yield Path(tmp) / "bundle"
