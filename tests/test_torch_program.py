"""The torch format: a PyTorch ExportedProgram (.pt2) with every None axis dynamic, written and loaded only with
trust (torch.export.load unpickles), verified in PyTorch at every shape of the sweep."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import zoo
from bundles import named

import kerasio
from kerasio.errors import UnsafeArtifactError
from kerasio.formats import get_format

KERAS_OWN = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
sys.path.insert(0, sys.argv[2])
import numpy as np, torch, zoo
model, x = zoo.mlp()
model(x[:2])
model.export(sys.argv[1], format="torch", verbose=False)
program = torch.export.load(sys.argv[1]).module()
program(torch.from_numpy(x[:1]))
try:
    program(torch.from_numpy(x[:2]))
except Exception as exc:
    print("REFUSED", " ".join(str(exc).split())[:200])
"""


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    model, x = zoo.mlp()
    bundle = tmp_path_factory.mktemp("pt") / "b"
    result = kerasio.export(model, bundle, reference_inputs=x, formats="keras,torch", trust=True, verify=True)
    return model, x, bundle, result


def test_the_program_verifies_at_every_batch_size_where_keras_own_bakes_a_one_row_batch(torch_bundle, tmp_path):
    model, x, bundle, result = torch_bundle
    check = next(c for c in result.report.checks if c.format == "torch")
    assert check.passed and check.runtime == "torch" and check.max_abs_diff < 1e-6
    assert check.shapes[:4] == [f"reference batch {len(x)}", "batch 1", "batch 2", "batch 7"]
    assert result.manifest.artifact("torch").info["needs_trust"] is True
    # the control: Keras's own model.export(format="torch") traces one row and the program refuses two
    tests = str(zoo.__file__).rsplit("/", 1)[0]
    out = subprocess.run([sys.executable, "-c", KERAS_OWN, str(tmp_path / "own.pt2"), tests], capture_output=True,
                         text=True, timeout=300)
    assert "REFUSED Guard failed: args_0.size()[0] == 1" in out.stdout, out.stderr[-1500:]
    with kerasio.load(bundle, format="torch", trust=True) as loaded:
        for rows in (1, 2, 5):
            np.testing.assert_allclose(loaded.run(x[:rows])["probs"], np.asarray(model(x[:rows])), atol=1e-6)


def test_a_program_is_written_and_loaded_only_with_trust(torch_bundle, tmp_path):
    model, x, bundle, _ = torch_bundle
    with pytest.raises(UnsafeArtifactError, match=r"refusing to load a PyTorch program: loading a \.pt2 program "
                                                  r"unpickles parts of its archive"):
        get_format("torch").load(named(bundle, "torch"), iospec=kerasio.read_manifest(bundle).iospec)
    with pytest.raises(UnsafeArtifactError, match=r"format 'torch' is written only with explicit trust"):
        kerasio.export(model, tmp_path / "b", reference_inputs=x, formats="torch")
    skipped = kerasio.export(model, tmp_path / "c", reference_inputs=x, formats="all").skipped
    assert skipped["torch"] == "pass trust=True (--trust) to write it"


def test_a_hostile_program_is_never_opened_without_trust(torch_bundle, tmp_path):
    """A .pt2 whose pickled part would write a canary file: a bundle that is not yours gets the refusal, and
    nothing of the archive is unpickled."""
    _, _, bundle, _ = torch_bundle
    canary = tmp_path / "canary"
    payload = f"import pathlib; pathlib.Path({str(canary)!r}).write_text('ran')"

    class Boom:
        def __reduce__(self):
            return (exec, (payload,))

    import pickle

    hostile = tmp_path / "hostile.pt2"
    with zipfile.ZipFile(named(bundle, "torch")) as zin, zipfile.ZipFile(hostile, "w") as zout:
        for info in zin.infolist():
            data = pickle.dumps(Boom()) if info.filename.endswith(".pkl") else zin.read(info)
            zout.writestr(info, data)
    with pytest.raises(UnsafeArtifactError, match=r"refusing to load a PyTorch program"):
        kerasio.load(hostile)  # a bare file: not yours, so its worker refuses it before torch reads a byte
    assert not canary.exists()
