"""``kerasio verify --explain`` on a 20-layer model against the same layer-by-layer comparison written by hand.

The by-hand side is what an engineer writes with the libraries alone to find
where an ONNX export diverges: load the ``.keras`` file, build a Keras model
that returns every layer's output, add every node output to a copy of the ONNX
graph, run both on the reference batch and compare the layers whose names they
know. kerasio's side is the CLI on the bundle (``--format onnx --explain``): a
fresh sandboxed worker, the audits, the op names from the original's trace,
and the report. Each side is timed as a whole process group, rounds
interleaved; the issue's budget is 30 s on this machine's CPU.

    python benchmarks/bench_explain.py [--rounds 5]
"""
import argparse
import sys
import tempfile
from pathlib import Path

from _common import LEFT_BEHIND, PY, interleave, median, report, run_timed

BUILD = '''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, sys.argv[2])
import numpy as np
import kerasio
from test_explain import _model
model = _model()
x = np.random.default_rng(4).normal(size=(40, 12)).astype(np.float32)
kerasio.export(model, sys.argv[1], reference_inputs=x, formats="keras,onnx", verify=False)
'''

BY_HAND = '''
import os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import keras, onnx, onnxruntime as ort
import kerasio
bundle = sys.argv[1]
manifest = kerasio.read_manifest(bundle)
x = manifest.reference_arrays(bundle)[0]["features"]
model = keras.saving.load_model(os.path.join(bundle, manifest.artifact("keras").path))
layers = model.layers[1:]
probe = keras.Model(model.inputs, [layer.output for layer in layers])
mine = dict(zip([layer.name for layer in layers], probe(x)))
graph = onnx.load(os.path.join(bundle, manifest.artifact("onnx").path))
inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
graph.graph.output.extend(v for v in inferred.values())
session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
names = [o.name for o in session.get_outputs()]
theirs = dict(zip(names, session.run(names, {"features": x})))
for name, value in mine.items():  # a tensor per layer, matched by the layer's name in the node's
    found = [t for n, t in theirs.items() if f"/{name}_" in n or f"/{name}/" in n]
    close = [np.allclose(np.asarray(value), t, atol=1e-5, rtol=1e-5) for t in found if t.shape == value.shape]
    print(name, any(close))
'''


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = f"{tmp}/deep"
        run_timed([PY, "-c", BUILD, bundle, tests])
        cases = {
            "kerasio verify --format onnx --explain": lambda: run_timed(
                [PY, "-m", "kerasio", "verify", bundle, "--format", "onnx", "--explain"]),
            "by hand (Keras probe model + ONNX outputs)": lambda: run_timed([PY, "-c", BY_HAND, bundle]),
        }
        times = interleave(cases, args.rounds)
    names = list(cases)
    medians = {name: median(t) for name, t in times.items()}
    report("explain", {"rounds": args.rounds, "layers": 20, "seconds": times, "medians": medians,
                       "ratio": medians[names[0]] / medians[names[1]], "budget_s": 30,
                       "left_processes_behind": dict(LEFT_BEHIND)})


if __name__ == "__main__":
    sys.exit(main())
