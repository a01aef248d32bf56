"""The JAX backend."""
from __future__ import annotations

from typing import Any, ContextManager

from kerasio.backends.base import Backend, Forward, register
from kerasio.backends.environment import to_numpy

__all__ = ["JaxBackend"]


class JaxBackend(Backend):
    name = "jax"

    def gpu_available(self) -> bool:
        import jax

        return any(d.platform == "gpu" for d in jax.devices())

    def gpu_name(self) -> str:
        import jax

        return str(next(d.device_kind for d in jax.devices() if d.platform == "gpu"))

    def precision(self, fast: bool) -> ContextManager[Any]:
        """``jax.default_matmul_precision``; it applies when a function is traced."""
        import jax

        return jax.default_matmul_precision("tensorfloat32" if fast else "highest")

    def forward(self, model: Any, iospec: Any) -> Forward:
        """A jitted stateless call, given the variables' current values (the model may train on after this)."""
        import jax

        step = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])

        def run(inputs):
            trainable = [v.value for v in model.trainable_variables]
            frozen = [v.value for v in model.non_trainable_variables]
            out = iospec.name_outputs(step(trainable, frozen, iospec.call_structure(inputs)))
            return {k: to_numpy(v) for k, v in out.items()}

        return run


BACKEND = register(JaxBackend())
