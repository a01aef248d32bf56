"""Audit a Keras file (``.keras``, ``.h5``, weights) as data before any Keras object is built.

What Keras will execute when it loads one is its config: every object named
there is constructed. So the audit reads the config as plain JSON (within
bounds: size, nesting, number of objects) and checks every object against an
explicit list:

* Keras's own classes, resolved the way Keras resolves them (its exported API
  names, then its own modules), that derive from the bases a model is made of
  (layers and ops, initializers, regularizers, constraints, optimizers, losses,
  metrics, dtype policies, quantizers) and are not among the classes that run
  code or read files named by the config (``Lambda``, ``TFSMLayer``,
  ``TorchModuleWrapper``, ``JaxLayer``, ``FlaxLayer``);
* Keras's computational functions (activations, losses, metrics, ops);
* classes and functions registered in this process (by the modules the caller
  imported: ``--import MODULE``), and by the allowlisted packages the config
  names (:mod:`kerasio.bundle.audit.packages`: ``keras_hub`` and its kin),
  which the audit imports itself once every object has passed the checks that
  need no Keras. No other package is trusted by its name: ``kerasfoo`` counts
  only when the caller has imported it and its classes are registered.

A config entry that names a file (a ``vocabulary`` or ``merges`` path, a
``filepath``) is refused: what a layer needs travels inside the archive.

Then, before the real load, the model is built from its config once with its
variables left unallocated (Keras's stateless scope), which gives the bytes its
parameters need; they must not exceed the bytes the weight file really holds,
and no weight dataset may declare more data than it stores. A config that says
``Dense(units=10**9)`` over a 40 KB weight file is refused before a byte of
the 40 GB is allocated.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import io
import os
import zipfile
from pathlib import Path
from typing import Any, Iterator

from kerasio.bundle.arrays import npz_declared_bytes
from kerasio.bundle.audit.packages import REGISTERING_PACKAGES, import_named, is_keras_module, package_of
from kerasio.bundle.bounded import loads
from kerasio.errors import ArtifactError, UnsafeArtifactError

__all__ = ["audit_keras_file", "audit_config", "read_keras_config", "archive_limits", "check_weights",
           "config_objects", "exported_here", "MAX_CONFIG_BYTES", "MAX_OBJECTS"]

MAX_UNCOMPRESSED = 16 << 30  # 16 GiB: far above any model kerasio has met, far below a bomb
MAX_RATIO = 200  # compressed -> uncompressed expansion allowed per member
# Keras writes .keras archives uncompressed (ZIP_STORED): a real one expands about 1x. 20x leaves room for a
# re-zipped archive and stops a bomb of many small members (256 x 1 MiB in 300 KB is ~870x).
MAX_TOTAL_RATIO = 20
MAX_MEMBERS = 10_000  # a .keras holds 3 members plus the assets of its layers
MAX_CONFIG_BYTES = 64 << 20
MAX_CONFIG_DEPTH = 128  # a config nests ~8 levels per nested model
MAX_OBJECTS = 200_000  # ~5 objects a layer (the layer, its dtype policy, initializers): 40,000 layers
SLACK_BYTES = 64 << 10  # what a weight file may hold beyond the parameters (seed states, counters)

# Objects that are values, not classes (tensors, arrays, shapes, slices): Keras rebuilds them as data.
_VALUES = frozenset({"__tensor__", "__numpy__", "__typespec__", "__bytes__", "__ellipsis__", "__slice__",
                     "__keras_tensor__", "__tuple__", "__float__", "__int__", "TensorShape"})
# Config keys whose string value Keras (or keras_hub) would open as a file at load.
_PATH_KEYS = frozenset({"vocabulary", "vocabulary_file", "idf_weights", "merges", "proto", "spm_proto",
                        "filepath", "file_path", "path", "model_path", "tokenizer_file", "vocabulary_path",
                        "merges_file"})
# Keras modules whose functions are pure computation (what an activation, loss or metric may name).
_FUNCTION_MODULES = ("keras.src.activations", "keras.src.losses", "keras.src.metrics", "keras.src.ops",
                     "keras.src.backend")


# Set while kerasio loads a bundle it exported itself under this account (kerasio.bundle.trust): the sha256 checks then
# prove every byte is what it wrote from a model that existed, so the parameter bytes need no dry build to bound.
_EXPORTED_HERE: contextvars.ContextVar[bool] = contextvars.ContextVar("kerasio_exported_here", default=False)


@contextlib.contextmanager
def exported_here(own: bool) -> Iterator[None]:
    """While inside (``own`` true), skip the dry build of :func:`check_weights`; every other audit still runs."""
    token = _EXPORTED_HERE.set(own)
    try:
        yield
    finally:
        _EXPORTED_HERE.reset(token)


def archive_limits() -> dict[str, int]:
    """The archive caps, each overridable by an environment variable (``KERASIO_MAX_ARCHIVE_BYTES``, ...)."""
    def env(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            return default

    return {"bytes": env("KERASIO_MAX_ARCHIVE_BYTES", MAX_UNCOMPRESSED),
            "members": env("KERASIO_MAX_ARCHIVE_MEMBERS", MAX_MEMBERS),
            "ratio": env("KERASIO_MAX_ARCHIVE_RATIO", MAX_TOTAL_RATIO)}


def _open_archive(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ArtifactError(
            f"{path}: not a valid .keras archive. The file is corrupt or is not a Keras v3 "
            f"model; re-export it. Received: {str(exc)[:200]}"
        ) from None


def check_archive(archive: zipfile.ZipFile, path: Path) -> None:
    """Refuse an archive whose members escape it or expand like a bomb, before anything is extracted."""
    limits = archive_limits()
    members = archive.infolist()
    if len(members) > limits["members"]:
        raise UnsafeArtifactError(
            f"{path}: the archive has {len(members)} members, over the limit of {limits['members']}; refusing "
            "to load. Re-export the model (or raise KERASIO_MAX_ARCHIVE_MEMBERS for a file you trust). "
            f"Received: {len(members)} members"
        )
    for info in members:
        name = info.filename
        if name.startswith("/") or ".." in Path(name).parts or "\\" in name or "\x00" in name:
            raise UnsafeArtifactError(f"{path}: archive member {name[:200]!r} escapes the archive; refusing to "
                                      f"load. Re-export the model. Received: member {name[:200]!r}")
        if info.compress_size and info.file_size / max(info.compress_size, 1) > MAX_RATIO and info.file_size > 1 << 20:
            raise UnsafeArtifactError(
                f"{path}: member {name!r} expands {info.file_size // max(info.compress_size, 1)}x "
                "(a zip bomb?); refusing to load. Re-export the model. "
                f"Received: {info.compress_size} bytes expanding to {info.file_size}"
            )
    declared = sum(info.file_size for info in members)
    compressed = max(path.stat().st_size, 1)
    if declared > limits["bytes"] or declared > limits["ratio"] * compressed + (1 << 20):
        raise UnsafeArtifactError(
            f"{path}: the archive expands to {declared} bytes from {compressed} ({declared // compressed}x; "
            f"limits: {limits['ratio']}x and {limits['bytes']} bytes); refusing to load before anything is "
            "extracted. Re-export the model (or raise KERASIO_MAX_ARCHIVE_RATIO / KERASIO_MAX_ARCHIVE_BYTES "
            f"for a file you trust). Received: {len(members)} members, {declared} bytes uncompressed"
        )


def read_keras_config(path: Path) -> dict[str, Any]:
    """Return ``config.json`` of a ``.keras`` zip after checking the archive (bounded JSON)."""
    with _open_archive(path) as archive:
        check_archive(archive, path)
        if "config.json" not in archive.namelist():
            raise ArtifactError(f"{path}: .keras archive has no config.json; it is not a Keras v3 model. Re-export it "
                                f"with model.save('model.keras'). Received: members {archive.namelist()[:10]}")
        info = archive.getinfo("config.json")
        if info.file_size > MAX_CONFIG_BYTES:
            raise ArtifactError(f"{path}: config.json is {info.file_size} bytes, over the limit of {MAX_CONFIG_BYTES};"
                                f" no model's config is that large. Re-export it. Received: {info.file_size} bytes")
        try:
            data = archive.read("config.json")
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise ArtifactError(f"{path}: config.json is unreadable; re-export the model. Received: {exc}") from None
    config = loads(data, what=f"{path}: config.json", max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH,
                   advice="re-export the model")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: config.json is unreadable (not a JSON object); re-export the model. "
                            f"Received: {type(config).__name__}")
    return config


def config_objects(node: Any, path: Path | str = "config") -> Iterator[dict[str, Any]]:
    """Every serialized object (a dict with ``class_name``) in a config, iteratively and at most :data:`MAX_OBJECTS`."""
    stack, count = [node], 0
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                count += 1
                if count > MAX_OBJECTS:
                    raise UnsafeArtifactError(
                        f"{path}: the config has more than {MAX_OBJECTS} objects; no model kerasio has met has a "
                        f"tenth of that, and building it would take hours. Refusing to load. Received: more than "
                        f"{MAX_OBJECTS} objects")
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def audit_config(config: Any, path: Path | str, packages: dict[str, str] | None = None) -> list[str]:
    """Check every serialized object against the explicit list above; return the custom class names.

    Once every object has passed the checks that need no Keras, the allowlisted packages whose modules the config
    names are imported (:mod:`kerasio.bundle.audit.packages`), so that their classes are registered; ``packages``,
    when given, receives ``{package: version}`` of those.

    Raises:
        UnsafeArtifactError: for a class that runs code or reads files named by the config (``Lambda``,
            ``TFSMLayer``, ...), a class or function that is neither Keras's own nor registered in this
            process, or a config entry that names a file.
    """
    import keras

    objects = [obj for obj in config_objects(config, path) if _static_check(obj, path)]
    imported = import_named(obj.get("module") for obj in objects)  # only after every object passed the above
    if packages is not None:
        packages.update(imported)
    trust = _KerasClasses.get()
    custom = []
    for obj in objects:
        class_name, module = obj.get("class_name"), obj.get("module")
        registered = obj.get("registered_name")
        if class_name == "function":
            name = obj.get("config")
            if module == "builtins" or is_keras_module(module):
                if not isinstance(name, str) or not trust.function_ok(module, name, registered):
                    raise UnsafeArtifactError(
                        f"{path}: the config names function {module}.{name} as an activation, loss or metric; only "
                        "Keras's computational functions and functions registered in this process may be named. "
                        f"Refusing to load. Received: module={str(module)[:80]!r}, function={str(name)[:80]!r}")
                continue
            if keras.saving.get_registered_object(str(registered or name)) is None:
                raise _unregistered(path, str(registered or name), module)
            custom.append(str(registered or name))
            continue
        if module is not None and not isinstance(module, str):
            raise UnsafeArtifactError(f"{path}: a config object's module is not a name; refusing to load. "
                                      f"Received: {str(module)[:80]}")
        found = trust.resolve(module, str(class_name))  # a str: _static_check refused anything else
        if found is not None:
            trust.check(found, path)
            continue
        name = str(registered or class_name)
        registered_obj = keras.saving.get_registered_object(name)
        if registered_obj is None:
            raise _unregistered(path, name, module)
        trust.check_registered(registered_obj, path)
        custom.append(name)
    return custom


def precheck_config(config: Any, path: Path | str) -> None:
    """The part of :func:`audit_config` that needs no Keras: bounds, code-carrying objects, file-naming entries.

    Run in the caller's process before an untrusted artifact's worker starts (a fast, clear refusal); the
    worker runs the whole audit again.
    """
    for obj in config_objects(config, path):
        _static_check(obj, path)


def _static_check(obj: dict[str, Any], path: Path | str) -> bool:
    """Checks of one object that need no Keras; ``False`` for a plain value (a tensor, an array) that needs no more."""
    class_name, module = obj.get("class_name"), obj.get("module")
    _no_paths(obj, path)
    if not isinstance(class_name, str):
        raise UnsafeArtifactError(f"{path}: a config object's class_name is {type(class_name).__name__}, not a "
                                  f"name; refusing to load. Re-export the model. Received: {str(class_name)[:80]}")
    if class_name in _VALUES:
        return False
    if class_name in ("__lambda__", "Lambda") or (class_name == "function" and module == "builtins"
                                                  and not isinstance(obj.get("config"), str)):
        raise _code(path, class_name)
    return True


def _no_paths(obj: dict[str, Any], path: Path | str) -> None:
    config = obj.get("config")
    if not isinstance(config, dict):
        return
    for key in _PATH_KEYS & set(config):
        value = config[key]
        if isinstance(value, str) and value:
            raise UnsafeArtifactError(
                f"{path}: layer {str(config.get('name', obj.get('class_name')))[:80]!r} names a file in its config "
                f"({key}={value[:120]!r}), which Keras would open at load: outside the archive, unhashed. Refusing "
                "to load. Re-export the model so that the data travels inside it (model.save). "
                f"Received: {key}={value[:120]!r}")


def _code(path: Path | str, class_name: str) -> UnsafeArtifactError:
    return UnsafeArtifactError(
        f"{path}: the model contains a {class_name} object, which carries Python bytecode and would run on load. "
        f"kerasio refuses it; replace the Lambda by a registered custom layer. Received: class_name={class_name!r}")


def _unregistered(path: Path | str, name: str, module: Any) -> UnsafeArtifactError:
    if module is None:  # a legacy (HDF5) config names classes without their module
        return UnsafeArtifactError(
            f"{path}: Keras's legacy loader cannot rebuild class {name!r}: a legacy HDF5 config names it without "
            "its module, and nothing registered in this process has that bare name. Save the model as .keras, or "
            f"register the class and import its module before loading (CLI: --import MODULE). "
            f"Received: registered_name={name!r}")
    package = package_of(module)
    if package is not None:  # allowlisted: it would have been imported, so it is not installed (or lacks the class)
        return UnsafeArtifactError(
            f"{path}: class {name!r} comes from {package} (module {str(module)[:120]!r}), which is allowlisted but "
            f"either not installed here or does not register that class. Install it (pip install "
            f"{REGISTERING_PACKAGES[package]}) at the version that wrote the file. Received: registered_name={name!r}")
    return UnsafeArtifactError(
        f"{path}: custom class {name!r} (module {str(module)[:120]!r}) is not registered in this process. Decorate "
        "it with @keras.saving.register_keras_serializable() and import its module before loading (CLI: --import "
        f"MODULE); only the packages in kerasio.bundle.audit.packages are imported on a config's word. "
        f"Received: registered_name={name!r}")


class _KerasClasses:
    """Keras's own classes that a config may name: resolved as Keras resolves them, checked by base and name."""

    _instance: "_KerasClasses | None" = None

    def __init__(self) -> None:
        import keras
        from keras.src import api_export

        self._symbol = api_export.get_symbol_from_name
        self.bases = tuple(b for b in (
            keras.Operation, keras.initializers.Initializer, keras.regularizers.Regularizer,
            keras.constraints.Constraint, _attr("keras.src.optimizers.base_optimizer", "BaseOptimizer"),
            keras.optimizers.schedules.LearningRateSchedule, keras.losses.Loss, keras.metrics.Metric,
            keras.DTypePolicy, _attr("keras.src.dtype_policies.dtype_policy_map", "DTypePolicyMap"),
            keras.quantizers.Quantizer, _attr("keras.src.quantizers.quantization_config", "QuantizationConfig"),
            keras.random.SeedGenerator) if isinstance(b, type))
        # Classes that run Python code or read files that the config names: refused whoever registered them.
        self.refused = tuple(c for c in (
            _attr("keras.layers", "Lambda"), _attr("keras.layers", "TFSMLayer"),
            _attr("keras.layers", "TorchModuleWrapper"), _attr("keras.layers", "JaxLayer"),
            _attr("keras.layers", "FlaxLayer")) if isinstance(c, type))
        # Legacy configs (HDF5 from Keras 2) name classes without a module: Keras looks them up among these.
        self.by_name: dict[str, type] = {}
        for space in (keras.layers, keras.models, keras.initializers, keras.regularizers, keras.constraints,
                      keras.optimizers, keras.losses, keras.metrics, keras.dtype_policies, keras.quantizers):
            for key, value in vars(space).items():
                if isinstance(value, type):
                    self.by_name.setdefault(key, value)
        functional = _attr("keras.src.models.functional", "Functional")
        if isinstance(functional, type):
            self.by_name.setdefault("Functional", functional)

    @classmethod
    def get(cls) -> "_KerasClasses":
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def resolve(self, module: str | None, name: str) -> Any:
        """The Keras class a ``(module, class_name)`` names, as Keras's loader would find it; ``None`` if none."""
        if module is None:
            return self.by_name.get(name)
        if not is_keras_module(module):
            return None
        obj = self._symbol(f"{module}.{name}")
        if obj is None and module.replace(".", "").replace("_", "").isalnum():
            try:  # Keras's own fallback: import the module (one of Keras's) and take the attribute
                obj = vars(importlib.import_module(module)).get(name)
            except ImportError:
                obj = None
        return obj if obj is not None else _NotKeras(module, name)

    def check(self, found: Any, path: Path | str) -> None:
        if isinstance(found, _NotKeras):
            raise UnsafeArtifactError(
                f"{path}: the config names {found.module}.{found.name}, which is not a Keras class; refusing to load. "
                f"Re-export the model. Received: module={found.module[:120]!r}, class_name={found.name[:80]!r}")
        if not isinstance(found, type) or not issubclass(found, self.bases):
            raise UnsafeArtifactError(
                f"{path}: the config names {getattr(found, '__module__', '?')}.{getattr(found, '__name__', found)!s}, "
                "which is not a layer, op, initializer, regularizer, constraint, optimizer, loss, metric, dtype "
                f"policy or quantizer; refusing to load. Received: {str(found)[:120]}")
        if issubclass(found, self.refused):
            raise _code(path, found.__name__) if found.__name__ == "Lambda" else UnsafeArtifactError(
                f"{path}: the model contains a {found.__name__} layer, which loads or runs code that its config names "
                f"(a SavedModel path, a wrapped function or module) outside the archive's audit; kerasio refuses it. "
                f"Received: class_name={found.__name__!r}")

    def check_registered(self, obj: Any, path: Path | str) -> None:
        if isinstance(obj, type) and issubclass(obj, self.refused):
            self.check(obj, path)

    def function_ok(self, module: str | None, name: str, registered: Any) -> bool:
        import keras

        if keras.saving.get_registered_object(str(registered or name)) is not None and not is_keras_module(module):
            return True
        if module == "builtins":  # Keras looks the name up among its activations, losses and metrics only
            return True
        obj = self._symbol(f"{module}.{name}")
        where = getattr(obj, "__module__", "") or ""
        return callable(obj) and not isinstance(obj, type) and where.startswith(_FUNCTION_MODULES)


class _NotKeras:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


def _attr(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def audit_keras_file(path: Path, packages: dict[str, str] | None = None) -> list[str]:
    """Audit a ``.keras`` file (archive, config, parameter bytes against its weights); return its custom classes.

    ``packages`` receives the allowlisted packages the audit imported (see :func:`audit_config`).
    """
    config = read_keras_config(path)
    custom = audit_config(config, path, packages)
    with _open_archive(path) as archive:
        check_weights(config, path, lambda: _archive_weights(archive, path), build=_build_v3)
    return custom


# -- parameter bytes: what the config implies against what the weight file holds -------------------------------

def implied_bytes(config: dict[str, Any], build: Any) -> int:
    """The bytes of the variables a model built from ``config`` would allocate, without allocating them.

    The model is built once inside Keras's stateless scope, where a variable
    records its shape and initializer but holds no value; every variable it
    creates is counted, then forgotten. A build that fails part way counts
    what it created before failing: the real load, failing at the same
    point, would have allocated exactly that much first (a bomb cannot hide
    behind a layer that breaks the build after it).
    """
    from keras.src.backend.common import global_state
    from keras.src.backend.common.stateless_scope import StatelessScope

    before = global_state.get_global_attribute("uninitialized_variables", None)
    global_state.set_global_attribute("uninitialized_variables", [])  # this build's deferred variables land here
    try:
        with StatelessScope(initialize_variables=False):
            try:
                build(config)
            except Exception:  # the real load reports the error itself; what was created so far still counts
                pass
        created = list(global_state.get_global_attribute("uninitialized_variables", None) or [])
        return variables_bytes(created)
    finally:
        global_state.set_global_attribute("uninitialized_variables", before)


def variables_bytes(variables: Any) -> int:
    """The bytes Keras variables hold (float8 and int4 counted as one byte, bfloat16 as two)."""
    import numpy as np

    return sum(int(np.prod(tuple(v.shape), dtype=np.int64)) * np.dtype(_np_dtype(v.dtype)).itemsize
               for v in variables)


def _np_dtype(dtype: Any) -> str:
    name = str(getattr(dtype, "name", dtype))
    return {"bfloat16": "uint16", "float8_e4m3fn": "uint8", "float8_e5m2": "uint8", "int4": "int8"}.get(name, name)


def _build_v3(config: dict[str, Any]) -> Any:
    import keras

    return keras.saving.deserialize_keras_object(config, safe_mode=True)


def build_legacy(config: dict[str, Any]) -> Any:
    from keras.src.legacy.saving import saving_utils

    return saving_utils.model_from_config(config)


def check_weights(config: dict[str, Any], path: Path | str, held: Any, *, build: Any) -> int:
    """Refuse a model whose config implies more parameter bytes than its weights hold (see :func:`held_bytes`).

    ``held`` is a callable returning the bytes the weight file stores for the model (it raises for a dataset
    that declares more than it stores). Returns the implied bytes (``None`` when they could not be computed).
    """
    stored = held()
    implied = implied_bytes(config, build)
    if implied is not None and implied > stored + SLACK_BYTES:
        raise UnsafeArtifactError(
            f"{path}: its config implies {implied:,} bytes of parameters, but its weight file holds {stored:,}; "
            "loading it would allocate memory that no weight fills (a config edited to exhaust memory?). Refusing "
            f"to load. Re-export the model. Received: {implied:,} implied, {stored:,} held")
    return implied


def h5_held_bytes(file: Any, path: Path | str, *, skip: tuple[str, ...] = ("optimizer",)) -> int:
    """Bytes an HDF5 weight file stores for the model's variables (its optimizer's slots left out).

    Each dataset's declared size (shape x dtype) must be backed by storage:
    a dataset that declares gigabytes over a few stored bytes (an HDF5 shape
    bomb, read back as a fill value) is refused.
    """
    import h5py
    import numpy as np

    total, count = 0, 0
    stack = [(file, "")]
    while stack:
        group, prefix = stack.pop()
        for key in list(group.keys()):
            if not prefix and key in skip:
                continue
            try:
                link = group.get(key, getlink=True)
                if isinstance(link, (h5py.ExternalLink, h5py.SoftLink)):
                    raise UnsafeArtifactError(f"{path}: HDF5 object {prefix + key!r} is a link; refusing to follow it. "
                                              "Re-export the model. Received: a link")
                item = group[key]
            except (KeyError, OSError, ValueError, RuntimeError) as exc:
                raise ArtifactError(f"{path}: HDF5 object {prefix + key!r} is unreadable; re-export it. "
                                    f"Received: {str(exc)[:200]}") from None
            count += 1
            if count > MAX_OBJECTS:
                raise UnsafeArtifactError(f"{path}: the weight file has more than {MAX_OBJECTS} objects; refusing to "
                                          f"load. Received: more than {MAX_OBJECTS}")
            if isinstance(item, h5py.Group):
                stack.append((item, f"{prefix}{key}/"))
                continue
            if not isinstance(item, h5py.Dataset):
                continue
            try:
                declared = int(np.prod(item.shape or (), dtype=np.int64)) * item.dtype.itemsize
                stored = int(item.id.get_storage_size())
                compressed = item.compression is not None
            except (OSError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
                raise ArtifactError(f"{path}: HDF5 dataset {prefix + key!r} is unreadable; re-export it. "
                                    f"Received: {str(exc)[:200]}") from None
            if declared > (1 << 20) and declared > stored * (MAX_RATIO if compressed else 1) + 4096:
                raise UnsafeArtifactError(
                    f"{path}: HDF5 dataset {prefix + key!r} declares {declared:,} bytes but stores {stored:,}; "
                    "reading it would allocate memory the file does not fill (an HDF5 shape bomb?). Refusing to load. "
                    f"Re-export the model. Received: shape {tuple(item.shape)}, {stored:,} bytes stored")
            total += declared
    return total


def _archive_weights(archive: zipfile.ZipFile, path: Path) -> int:
    """The bytes ``model.weights.h5`` (or ``.npz``) inside a ``.keras`` archive stores for the model."""
    names = archive.namelist()
    if "model.weights.h5" in names:
        import h5py

        info = archive.getinfo("model.weights.h5")
        source = _StoredMember(path, info) if info.compress_type == zipfile.ZIP_STORED else \
            io.BytesIO(archive.read(info))
        try:
            with h5py.File(source, "r") as f:
                return h5_held_bytes(f, path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ArtifactError(f"{path}: model.weights.h5 inside the archive is not a readable HDF5 file; re-export "
                                f"it. Received: {str(exc)[:200]}") from None
    if "model.weights.npz" in names:
        return npz_declared_bytes(io.BytesIO(archive.read("model.weights.npz")), f"{path}: model.weights.npz")
    return 0


class _StoredMember(io.RawIOBase):
    """A read-only, seekable window on an uncompressed zip member (h5py reads its metadata without copying it)."""

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        super().__init__()
        self._f = open(path, "rb")
        self._f.seek(info.header_offset)
        header = self._f.read(30)
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            self._f.close()
            raise ArtifactError(f"{path}: the archive's member {info.filename!r} has no local header; re-export it. "
                                f"Received: a corrupt zip")
        name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
        self._start = info.header_offset + 30 + name_len + extra_len
        self._size = info.file_size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self._size - self._pos))
        self._f.seek(self._start + self._pos)
        data = self._f.read(n)
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)

    def close(self) -> None:
        self._f.close()
        super().close()


def h5_file_config(path: Path) -> tuple[dict[str, Any], int]:
    """A legacy ``.h5`` model's config (bounded JSON) and the bytes its ``model_weights`` store (links refused)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            _refuse_external_links(f, path)
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ArtifactError(f"{path}: HDF5 file has no model_config; it holds weights only, not a model. "
                                    "Load it with its architecture (the weights format). Received: no 'model_config'")
            weights = f["model_weights"] if "model_weights" in f else f
            held = h5_held_bytes(weights, path, skip=())
    except OSError as exc:
        raise ArtifactError(f"{path}: not a readable HDF5 file; re-export it. Received: {str(exc)[:200]}") from None
    if isinstance(raw, bytes):
        data: bytes | str = raw
    elif isinstance(raw, str):
        data = raw
    else:
        raise ArtifactError(f"{path}: the HDF5 model_config is not text; re-export it. Received: {type(raw).__name__}")
    config = loads(data, what=f"{path}: model_config", max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH,
                   advice="re-export the model")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: the HDF5 model_config is not a JSON object; re-export it. "
                            f"Received: {type(config).__name__}")
    return config, held


def _refuse_external_links(f: Any, path: Path) -> None:
    import h5py

    links: list[str] = []
    # Collect, then raise: an exception inside h5py's visitor corrupts its lock.
    f.visititems_links(lambda name, link: links.append(name) if isinstance(link, h5py.ExternalLink) else None)
    if links:
        raise UnsafeArtifactError(f"{path}: HDF5 object {links[0]!r} is an external link; refusing to follow it. "
                                  "Re-export the model. Received: an ExternalLink")


def read_architecture(path: Path) -> dict[str, Any]:
    """A weights artifact's ``architecture.json`` (bounded JSON)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable architecture JSON; re-export it. Received: {exc}") from None
    config = loads(data, what=str(path), max_bytes=MAX_CONFIG_BYTES, max_depth=MAX_CONFIG_DEPTH,
                   advice="re-export it")
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: unreadable architecture JSON (not an object); re-export it. "
                            f"Received: {type(config).__name__}")
    return config


def weights_held_bytes(files: list[Path], path: Path | str) -> int:
    """The bytes a ``.weights.h5`` file (or the shards of a sharded one) stores for the model."""
    import h5py

    total = 0
    for file in files:
        try:
            with h5py.File(file, "r") as f:
                _refuse_external_links(f, Path(file))
                total += h5_held_bytes(f, file)
        except OSError as exc:
            raise ArtifactError(f"{file}: not a readable HDF5 weight file; re-export it. Received: "
                                f"{str(exc)[:200]}") from None
    return total
