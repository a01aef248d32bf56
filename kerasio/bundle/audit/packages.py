"""Packages whose classes a Keras config may name, imported by a fresh process on the config's word.

keras_hub (and the other packages here) register their layers and models with
``keras.saving.register_keras_serializable`` when they are imported: a model
built from them names ``keras_hub.src.models...`` classes in its config, and
only a process that imported ``keras_hub`` can rebuild it. A verifying or
loading worker is fresh, so it imports such a package itself, but only when:

* the package is on this allowlist (the one place it is kept; anything else
  still needs the caller's ``--import MODULE``);
* the config names one of its modules (read as data, before anything is
  imported: the top-level name is matched against the allowlist's keys, never
  imported because a file says so);
* it is installed here (found by its distribution's metadata, without importing it).

Only the package itself is imported (its ``__init__``), never a submodule a
file names; the audit then checks every class against what that import
registered, as it checks any registered class.
"""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Any, Iterable

__all__ = ["REGISTERING_PACKAGES", "named_packages", "import_named", "package_of", "is_keras_module"]

# import name -> distribution name (pip install ...)
REGISTERING_PACKAGES: dict[str, str] = {
    "keras_hub": "keras-hub",
    "keras_nlp": "keras-nlp",
    "keras_cv": "keras-cv",
    "keras_rs": "keras-rs",
}


def is_keras_module(module: Any) -> bool:
    """Whether a module name is Keras's own (``keras`` or ``keras.*``; ``keras_hub`` is not)."""
    return isinstance(module, str) and (module == "keras" or module.startswith("keras."))


def package_of(module: Any) -> str | None:
    """The allowlisted package a module name belongs to, or ``None``."""
    if not isinstance(module, str):
        return None
    top = module.split(".", 1)[0]
    return top if top in REGISTERING_PACKAGES else None


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(REGISTERING_PACKAGES[package])
    except importlib.metadata.PackageNotFoundError:
        return None


def named_packages(modules: Iterable[Any]) -> dict[str, str]:
    """``{package: installed version}`` of the allowlisted, installed packages that these module names belong to."""
    found = {}
    for module in modules:
        package = package_of(module)
        if package is not None and package not in found:
            version = _version(package)
            if version is not None:
                found[package] = version
    return dict(sorted(found.items()))


def import_named(modules: Iterable[Any]) -> dict[str, str]:
    """Import the allowlisted, installed packages these module names belong to; return ``{package: version}``."""
    found = named_packages(modules)
    for package in found:
        importlib.import_module(package)
    return found
