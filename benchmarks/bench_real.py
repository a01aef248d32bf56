"""Real architectures: kerasio's export + verify of every format against the same work done by hand.

For each model of the real-architectures zoo (tests/real_zoo.py; ``--full`` for the published sizes), three sides run
in their own process groups, interleaved round by round:

* **kerasio**: ``kerasio.export(model, out, reference_inputs=x, formats="all", verify=True)``: every artifact
  written, hashed, reloaded in a fresh process and compared against the reference, the ones that fail their own
  round trip left out with the reason;
* **kerasio, verifier started early**: the same, with a :class:`kerasio.Session` started before the model is built
  and passed as ``VerifyOptions(session=...)``, so that the verifying process's TensorFlow import overlaps the
  build, as ``kerasio run`` overlaps it with training;
* **by hand**: the libraries' own calls, as a careful user would write them: ``model.save`` (.keras and .h5),
  ``model.save_weights``, ``model.export`` for ``tf_saved_model``, ``onnx`` (tf2onnx's ``from_function``),
  ``litert`` (the LiteRT converter) and ``openvino`` (OpenVINO's TensorFlow frontend, compiled at f32), then one
  reload of each in the same process and one ``np.allclose`` against ``model(x)``. A call that raises is caught
  and its time still counts.

Each side times its own work (building the model is timed apart and left out) and the parent times the whole
process group. Reported: per model, the median work seconds of each side and their ratio, and where kerasio's
time goes (its export table's per-format seconds and the verification).

    python benchmarks/bench_real.py [--rounds 1] [--full] [--models mobilenet_v2,bert_backbone]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

from _common import machine, median, report, run_group  # noqa: E402

SIDES = ("kerasio", "kerasio_early", "hand")


def _as_arrays(out):
    import numpy as np

    if isinstance(out, dict):
        return [np.asarray(out[k]) for k in sorted(out)]
    if isinstance(out, (list, tuple)):
        return [np.asarray(o) for o in out]
    return [np.asarray(out)]


def _same(reference, got) -> bool:
    import numpy as np

    ref, out = _as_arrays(reference), _as_arrays(got)
    return len(ref) == len(out) and all(
        r.shape == o.shape and np.allclose(r, o, rtol=1e-5, atol=1e-5) for r, o in zip(ref, out))


def _feed(names, x) -> dict:
    """The model's inputs keyed by a runtime's input names: by name for a dict, else the one array."""
    import numpy as np

    return {n: np.asarray(x[n]) for n in names} if isinstance(x, dict) else {names[0]: np.asarray(x)}


def by_hand(model, x, tmp: Path) -> dict:
    """Every format through the libraries' own calls, each reloaded once and compared with model(x)."""
    import keras

    reference = model(x)
    results = {}

    def attempt(name, fn):
        start = time.perf_counter()
        try:
            results[name] = "same" if fn() else "DIFFERENT"
        except Exception as exc:  # the plain way pays for a failure too
            results[name] = f"failed: {type(exc).__name__}"
        results[name + "_s"] = round(time.perf_counter() - start, 2)

    def keras_file(suffix):
        path = tmp / f"model{suffix}"
        model.save(path)
        return _same(reference, keras.saving.load_model(path, compile=False)(x))

    def weights():
        path = tmp / "model.weights.h5"
        model.save_weights(path)
        clone = keras.models.model_from_json(model.to_json())
        clone.load_weights(path)
        return _same(reference, clone(x))

    def savedmodel():
        import tensorflow as tf

        path = tmp / "savedmodel"
        model.export(path, format="tf_saved_model", verbose=False)
        loaded = tf.saved_model.load(str(path))  # held: its functions reference the object's variables
        return _same(reference, loaded.serve(x))

    def onnx():
        import onnxruntime as ort

        path = tmp / "model.onnx"
        model.export(path, format="onnx", verbose=False)
        session = ort.InferenceSession(str(path))
        feed = _feed([i.name for i in session.get_inputs()], x)
        return _same(reference, session.run(None, feed) if not isinstance(reference, dict) else
                     dict(zip([o.name for o in session.get_outputs()], session.run(None, feed))))

    def litert():
        from ai_edge_litert.interpreter import Interpreter

        path = tmp / "model.tflite"
        model.export(path, format="litert", verbose=False)
        runner = Interpreter(model_path=str(path)).get_signature_runner()
        keys = list(runner.get_input_details())
        out = runner(**_feed(keys, x))
        return _same(reference, out if isinstance(reference, dict) else list(out.values()))

    def openvino():
        import openvino as ov

        path = tmp / "model.xml"
        model.export(str(path), format="openvino", verbose=False)  # Keras wants a str here
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        out = compiled(_feed([p.get_any_name() for p in compiled.inputs], x))
        values = [out[o] for o in compiled.outputs]
        return _same(reference, values if not isinstance(reference, dict) else
                     dict(zip([o.get_any_name() for o in compiled.outputs], values)))

    attempt("keras", lambda: keras_file(".keras"))
    attempt("savedmodel", savedmodel)
    attempt("h5", lambda: keras_file(".h5"))
    attempt("weights", weights)
    attempt("onnx", onnx)
    attempt("litert", litert)
    attempt("openvino", openvino)
    return results


def one(name: str, side: str, full: bool) -> dict:
    import contextlib

    import real_zoo

    with contextlib.ExitStack() as stack:
        verify: object = True
        if side == "kerasio_early":  # the verifier started before the model is built: its import overlaps that
            import kerasio

            session = stack.enter_context(kerasio.Session())
            session.start()
            verify = kerasio.VerifyOptions(session=session)
        start = time.perf_counter()
        model, x = real_zoo.build(name, full=full)
        built = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            if side.startswith("kerasio"):
                import kerasio

                result = kerasio.export(model, Path(tmp) / "bundle", reference_inputs=x, formats="all",
                                        verify=verify)
                work = time.perf_counter() - start
                detail = {"seconds": {k: round(v, 2) for k, v in result.seconds.items()},
                          "verified": [c.format for c in result.report.checks],
                          "skipped": {k: v[:120] for k, v in result.skipped.items()},
                          "verify_s": round(sum(c.seconds for c in result.report.checks), 2)}
            else:
                detail = by_hand(model, x, Path(tmp))
                work = time.perf_counter() - start
    params = int(sum(int(w.numpy().size) for w in model.weights))
    return {"work_s": work, "build_s": built, "params": params, "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--full", action="store_true", help="the published sizes, not the zoo's small ones")
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a side's own process group; its figures go to the file the parent named
        Path(os.environ["KERASIO_BENCH_OUT"]).write_text(json.dumps(one(args.one, args.side, args.full)))
        return
    import real_zoo

    names = [n for n in args.models.split(",") if n] or real_zoo.names()
    rows = {}
    for name in names:
        runs: dict[str, list] = {side: [] for side in SIDES}
        for i in range(args.rounds):
            order = SIDES if i % 2 == 0 else SIDES[::-1]
            for side in order:
                cmd = [sys.executable, str(Path(__file__)), "--one", name, "--side", side] + (
                    ["--full"] if args.full else [])
                fd, out_name = tempfile.mkstemp(prefix="bench-real-", suffix=".json")
                os.close(fd)
                out_path = Path(out_name)
                started, ended, _ = run_group(cmd, env={"KERASIO_BENCH_OUT": str(out_path)})
                runs[side].append({**json.loads(out_path.read_text()), "wall_s": ended - started})
                out_path.unlink(missing_ok=True)
        k, e, h = (median([r["work_s"] for r in runs[s]]) for s in SIDES)
        rows[name] = {"params": runs["kerasio"][0]["params"], "kerasio_work_s": round(k, 2),
                      "early_work_s": round(e, 2), "hand_work_s": round(h, 2), "ratio": round(k / h, 3),
                      "early_ratio": round(e / h, 3),
                      **{f"{s}_wall_s": round(median([r["wall_s"] for r in runs[s]]), 2) for s in SIDES},
                      "kerasio": runs["kerasio"][-1]["detail"], "hand": runs["hand"][-1]["detail"]}
        print(name, json.dumps(rows[name]), flush=True)
    ratios = [r["ratio"] for r in rows.values()]
    early = [r["early_ratio"] for r in rows.values()]
    hand = sum(r["hand_work_s"] for r in rows.values())
    total = sum(r["kerasio_work_s"] for r in rows.values()) / hand
    early_total = sum(r["early_work_s"] for r in rows.values()) / hand
    summary = {"machine": machine(), "rounds": args.rounds, "full": args.full, "median_ratio": median(ratios),
               "sum_ratio": round(total, 3), "early_median_ratio": median(early),
               "early_sum_ratio": round(early_total, 3), "models": rows}
    print(f"median ratio {median(ratios):.3f} (verifier started early: {median(early):.3f}), sum ratio "
          f"{total:.3f} ({early_total:.3f}) over {len(rows)} models", flush=True)
    report("real_full" if args.full else "real", summary)


if __name__ == "__main__":
    main()
