"""``torch``: a PyTorch ExportedProgram (``.pt2``, ``torch.export``) of the model under Keras's PyTorch backend.

Written only with explicit trust, and loaded only with it: ``torch.export.load``
unpickles parts of the archive, so a hostile ``.pt2`` can run code, as a pickle
can. Unlike ``model.export(format="torch")``, which traces a 1-row batch with no
``dynamic_shapes`` (PyTorch then bakes the batch size into the program), every
``None`` axis of the signature is exported dynamic, so the shape sweep passes.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from kerasio.backends.environment import require
from kerasio.errors import ArtifactError, UnsafeArtifactError
from kerasio.formats.base import ExportContext, Format, Runner, register
from kerasio.spec.iospec import IOSpec

WHY = ("loading a .pt2 program unpickles parts of its archive (torch.export.load), which can run arbitrary code; "
       "load it only if you or a trusted party wrote it")


class TorchProgramFormat(Format):
    name = "torch"
    filename = "model.pt2"
    runtime = "torch"
    needs_trust = True
    save_backend = "torch"  # torch.export traces the model's torch modules: written in a PyTorch worker
    suffixes = (".pt2",)
    description = "PyTorch ExportedProgram (.pt2, torch.export, every None axis dynamic; written and loaded only with --trust)"
    repro_code = """
import torch


def run(path, inputs):
    module = torch.export.load(path).module()  # unpickles: only for a file you trust, as kerasio --trust
    tensors = {name: torch.from_numpy(inputs[name]) for name in INPUT_NAMES}
    if INPUT_STRUCTURE == "dict":
        args = (tensors,)
    elif INPUT_STRUCTURE == "list":
        args = ([tensors[name] for name in INPUT_NAMES],)
    else:
        args = (tensors[INPUT_NAMES[0]],)
    with torch.no_grad():
        raw = module(*args)
    if isinstance(raw, dict):
        raw = [raw[name] for name in OUTPUT_NAMES]
    elif not isinstance(raw, (list, tuple)):
        raw = [raw]
    return {name: value.detach().cpu().numpy() for name, value in zip(OUTPUT_NAMES, raw)}
"""

    def supports(self, iospec: IOSpec) -> str | None:
        if importlib.util.find_spec("torch") is None:
            return "PyTorch is not installed here (pip install 'kerasio[torch]')"
        if iospec.has_string_inputs() or iospec.lookup_layers():
            return "PyTorch has no string tensors or lookup-table ops for text preprocessing to run in"
        return None

    def save(self, model: Any, dest: Path, ctx: ExportContext) -> dict[str, Any]:
        """``torch.export.export`` of the model on 2 reference rows, every ``None`` axis a dynamic dimension."""
        torch = require("torch", "exporting a PyTorch program")
        iospec = ctx.iospec
        sample = {s.name: torch.from_numpy(np.ascontiguousarray(ctx.reference_inputs[s.name][:2]))
                  for s in iospec.inputs}
        dims = {s.name: {axis: torch.export.Dim.DYNAMIC for axis, d in enumerate(s.shape) if d is None}
                for s in iospec.inputs}
        args = (iospec.call_structure(sample),)
        shapes = [(iospec.call_structure(dims),)]  # Keras's forward(*args): the args tuple is one argument
        if hasattr(model, "eval"):
            model.eval()
        try:
            program = torch.export.export(model, args, dynamic_shapes=shapes, strict=False)
        except Exception as exc:  # torch's own types; a shape it specializes is the common case
            said = " ".join(str(exc).split())
            if "Constraints violated" not in said:
                raise
            raise ValueError(f"torch.export cannot keep every None axis of the signature dynamic ({said[:120]}): "
                             "the program would run at the traced sizes only, as model.export(format='torch') "
                             "writes it") from None
        torch.export.save(program, str(dest))
        return {"torch": torch.__version__, "needs_trust": True}

    def available_devices(self, backend: str) -> list[str]:
        torch = require("torch", "running a PyTorch program")
        return ["cpu", "gpu"] if torch.cuda.is_available() else ["cpu"]

    def worker_backend(self, requested: str) -> str:
        return "torch"  # the program runs in PyTorch; a PyTorch worker has it imported already

    def load(self, path: Path, *, iospec: IOSpec | None = None, device: str = "cpu",
             trust: bool = False) -> Runner:
        if not trust:
            raise UnsafeArtifactError(f"{path}: refusing to load a PyTorch program: {WHY}. Pass trust=True (--trust) "
                                      "if you vouch for it. Received: trust=False")
        torch = require("torch", "running a PyTorch program")
        if iospec is None:
            raise ArtifactError(f"{path}: a .pt2 program does not name its inputs and outputs; load it from its "
                                f"bundle (the manifest's signature names them). Received: a bare .pt2")
        try:
            module = torch.export.load(str(path)).module()  # noqa: S301 - explicit trust was given
        except Exception as exc:  # torch raises its own types for a malformed archive
            raise ArtifactError(f"{path}: PyTorch could not load the program; re-export it. Received: "
                                f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}") from None
        where = torch.device("cuda" if device == "gpu" else "cpu")
        module = module.to(where)

        def run(inputs: Any) -> dict[str, Any]:
            tensors = {n: torch.from_numpy(np.ascontiguousarray(inputs[n])).to(where) for n in iospec.input_names}
            with torch.no_grad():
                raw = module(iospec.call_structure(tensors))
            return {k: v.detach().cpu().numpy() for k, v in iospec.name_outputs(raw).items()}

        return Runner(run, format=self.name, path=path, runtime="torch", backend="torch", iospec=iospec,
                      device=device, model=module, info={"torch": torch.__version__, "trusted": True})

    def describe(self, path: Path) -> dict[str, Any]:
        return {"needs_trust": True}


FORMAT = register(TorchProgramFormat())
