"""The Keras backends as plug-ins (:class:`~kerasio.backends.base.Backend`), and the frameworks' environment.

Importing this package registers TensorFlow, JAX and PyTorch without importing
any of them; a backend of your own registers the same way (see
:mod:`kerasio.backends.base`).
"""
from kerasio.backends import jax, tensorflow, torch  # noqa: F401  (each registers itself)
from kerasio.backends.base import REGISTRY, Backend, get_backend, register

__all__ = ["REGISTRY", "Backend", "get_backend", "register"]
