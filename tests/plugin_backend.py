"""A Keras backend kerasio has no module for (Keras's own numpy backend), registered from a test file."""
from kerasio.backends.base import Backend, register
from kerasio.backends.environment import cpu_name


class NumpyBackend(Backend):
    name = "numpy"

    def device_name(self, device: str) -> str:
        return f"numpy plug-in on {cpu_name()}"


BACKEND = register(NumpyBackend())
