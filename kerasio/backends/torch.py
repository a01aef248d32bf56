"""The PyTorch backend."""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterator

import numpy as np

from kerasio.backends.base import Backend, Forward, register

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    name = "torch"

    def gpu_available(self) -> bool:
        import torch

        return bool(torch.cuda.is_available())

    def gpu_name(self) -> str:
        import torch

        return str(torch.cuda.get_device_name(0))

    def precision(self, fast: bool) -> ContextManager[Any]:
        return _allow_tf32(fast)

    def forward(self, model: Any, iospec: Any) -> Forward:
        import torch
        from keras.src.backend.torch.core import get_device

        names = iospec.input_names

        def run(inputs):
            with torch.no_grad():
                tensors = {n: torch.as_tensor(np.asarray(inputs[n]), device=get_device()) for n in names}
                out = iospec.name_outputs(model(iospec.call_structure(tensors), training=False))
            return {k: v.detach().cpu().numpy() for k, v in out.items()}

        return run

    def device_scope(self, device: str) -> ContextManager[Any]:
        """PyTorch's CPU is named ``cpu``, not ``cpu:0``: under ``cpu:0`` Keras's torch backend turns a
        non-trainable integer variable (a Normalization layer's count) into a plain tensor, and loading fails
        with "Only Tensors of floating point and complex dtype can require gradients"."""
        import keras

        return keras.device("cpu" if device == "cpu" else f"{device}:0")


@contextlib.contextmanager
def _allow_tf32(fast: bool) -> Iterator[None]:
    """``torch.backends.cuda.matmul.allow_tf32`` and cuDNN's flag while inside, restored after."""
    import torch

    before_mm, before_cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = fast
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before_mm
        torch.backends.cudnn.allow_tf32 = before_cudnn


BACKEND = register(TorchBackend())
