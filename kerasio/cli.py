"""The ``kerasio`` command: a thin layer of argument parsing over the library.

Each subcommand parses its arguments and calls one library function. Errors
print one line (no traceback unless ``--debug``) and exit 2; a verification
that ran and found a mismatch exits 1. ``kerasio --help`` and ``kerasio
inspect`` never import TensorFlow.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from kerasio._version import __version__
from kerasio.backends import environment as runtime
from kerasio.backends.environment import import_keras_quietly
from kerasio.backends.tensorflow import tf_input_names
from kerasio.bundle.inputs import read_input_file
from kerasio.bundle.layout import SIGNATURE_NAME, flat_name
from kerasio.bundle.reader import read_manifest
from kerasio.bundle.signing import sign
from kerasio.bundle.trust import trusted
from kerasio.errors import InputError, KerasioError, UnsafeArtifactError, VerificationError
from kerasio.export import export
from kerasio.formats import REGISTRY
from kerasio.formats.tf_serving import rest_body
from kerasio.loading import load, load_isolated
from kerasio.options import BundleInfo, SyntheticInputs, VerifyOptions
from kerasio.predict import predict_chunks, predict_to_file, with_progress
from kerasio.present.text import printable, render_table, wrap_notes
from kerasio.spec.limits import Limits
from kerasio.verify import last_report, verify

__all__ = ["main"]

EXIT_FAILED, EXIT_ERROR = 1, 2


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="CSV", help="a CSV with a label column (default: the embedded dataset)")
    p.add_argument("--label", metavar="COL", help="label column of --data (default: 'label'; embedded: 'species')")
    p.add_argument("--epochs", type=int, default=5, help="training epochs (default: 5)")
    p.add_argument("--out", default="saved_models/seed", help="bundle directory (default: saved_models/seed)")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, weights and batch order (default: 0)")

    p.add_argument("--formats", default="keras,savedmodel",
                   help="comma-separated formats, or 'all' (default: keras,savedmodel); "
                        f"known: {', '.join(REGISTRY)} (see the list below)")
    p.add_argument("--max-shard-size", type=float, metavar="GB",
                   help="shard the weights format above this size (--format-option weights.max_shard_size=GB)")
    p.add_argument("--format-option", action="append", dest="format_options", default=[], type=_format_option,
                   metavar="FORMAT.NAME=VALUE", help="an option of one format (see the list below); repeatable")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="training batch size (default: 32)")
    p.add_argument("--learning-rate", type=float, default=0.01, metavar="LR", help="Adam learning rate (default: 0.01)")
    p.add_argument("--hidden", type=_hidden, default=(32, 16), metavar="UNITS",
                   help="hidden Dense layers' widths, comma-separated (default: 32,16)")
    p.add_argument("--dropout", type=float, default=0.1, metavar="RATE", help="dropout after each hidden layer "
                   "(default: 0.1)")
    p.add_argument("--test-size", type=_test_size, default=0.2, metavar="SIZE",
                   help="held-out rows: a fraction (0.2) or a count (200) (default: 0.2, stratified)")


def _format_option(text: str) -> tuple[str, str, object]:
    name, _, value = text.partition("=")
    fmt, _, option = name.partition(".")
    if not (fmt and option and _):
        raise argparse.ArgumentTypeError(f"takes FORMAT.NAME=VALUE, e.g. weights.max_shard_size=2; received: {text!r}")
    try:
        parsed: object = json.loads(value)
    except ValueError:
        parsed = value
    return fmt.strip(), option.strip(), parsed


def _format_options(args) -> dict[str, dict[str, object]]:
    options: dict[str, dict[str, object]] = {}
    if getattr(args, "max_shard_size", None):
        options.setdefault("weights", {})["max_shard_size"] = args.max_shard_size
    for fmt, option, value in args.format_options:
        options.setdefault(fmt, {})[option] = value
    return options


def _formats_epilog() -> str:
    """Every registered format, its description and options: read from the registry, never listed by hand."""

    return _epilog_of(tuple(REGISTRY.values()))


@functools.lru_cache(maxsize=4)  # built once per registry state: the main parser and `run` show the same text
def _epilog_of(formats: tuple) -> str:
    import textwrap

    lines = ["formats (--formats NAME; kerasio.formats.REGISTRY):"]
    for fmt in formats:
        flags = ", ".join(f for f, on in (("default", fmt.default), ("legacy", fmt.legacy),
                                           ("needs --trust", fmt.needs_trust)) if on)
        text = f"{fmt.name:<11}{fmt.description}" + (f" [{flags}]" if flags else "")
        lines += textwrap.wrap(text, width=98, initial_indent="  ", subsequent_indent=" " * 13)
        for option, what in fmt.options.items():
            lines += textwrap.wrap(f"--format-option {fmt.name}.{option}=VALUE: {what}", width=98,
                                   initial_indent=" " * 13, subsequent_indent=" " * 15)
    return "\n".join(lines)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        units = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        units = ()
    if not units or min(units) < 1:
        raise argparse.ArgumentTypeError(f"--hidden takes positive integers separated by commas, e.g. 64,32; "
                                         f"received: {text!r}")
    return units


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"takes a positive whole number; received: {text!r}")
    return value


def _test_size(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"--test-size takes a fraction between 0 and 1 or a row count; received: "
                                         f"{text!r}")
    return int(value) if value >= 1 else value


def _limit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-memory", metavar="SIZE",
                   help="memory an untrusted artifact's worker may use, e.g. 8G (default: 4G plus 8x the artifact, at "
                        "most 80%% of RAM; KERASIO_MAX_MEMORY)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="wall time for each step of an untrusted artifact: a load or a batch (default: 30 s plus 60 s "
                        "a GiB; KERASIO_TIMEOUT)")


def _limits(args):
    return Limits.from_env(memory=args.max_memory, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kerasio",
        description="Train, export, reload and verify a Keras classifier; every artifact proven against the "
                    "original model's outputs.",
        epilog=_formats_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    parser.add_argument("--version", action="version", version=f"kerasio {__version__}",
                        help="print kerasio's version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="print only the outcome (one line) and errors: no tables, trace or progress")
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="show the training progress bar from the first batch, not only in epochs over 2 s")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="data -> split -> train -> export -> verify -> predict, with a trace",
                         epilog=_formats_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    _common_run_args(run)
    run.add_argument("--no-verify", action="store_true", help="skip verification")
    run.add_argument("--in-process", action="store_true", help="verify in this process (faster, weaker)")
    run.add_argument("--trust", "--trust-pickle", action="store_true", dest="trust",
                     help="write (and load) the formats that need explicit trust: pickle")
    run.add_argument("--json", action="store_true", help="print a JSON summary instead of the trace")
    run.add_argument("--strategy", default="default", choices=["default", "mirrored", "multiworker", "dataparallel"],
                     help="train under a distribution: mirrored (TensorFlow, several GPUs or CPU devices), "
                          "multiworker (TensorFlow, TF_CONFIG or --workers), dataparallel (JAX) (default: default)")
    run.add_argument("--streaming", action=argparse.BooleanOptionalAction, default=None,
                     help="read --data (CSV or Parquet) in chunks instead of whole, with a hash-based split "
                          "(default: only files over 1 GB)")
    run.add_argument("--chunk-mb", type=_positive, metavar="MB",
                     help="MiB of --data parsed at a time when streaming (default: 4)")
    run.add_argument("--replicas", type=_positive, metavar="N",
                     help="mirrored/dataparallel: use N devices; on a CPU it is split into N (default: every GPU)")
    run.add_argument("--workers", type=_positive, metavar="N",
                     help="multiworker without TF_CONFIG: start a local cluster of N processes on loopback; "
                          "worker 0 is the chief and writes the bundle")

    ver = sub.add_parser("verify", help="reload every artifact of a bundle and compare outputs")
    ver.add_argument("path", help="bundle directory")
    ver.add_argument("--format", action="append", dest="formats", metavar="NAME", help="check only this format")
    ver.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "all"],
                     help="auto: the GPU when the runtime sees one; all: every device, with the CPU-vs-GPU drift")
    ver.add_argument("--backend", choices=["tensorflow", "jax", "torch"],
                     help="Keras backend for .keras/.h5/weights/pickle (runs in a subprocess)")
    ver.add_argument("--precision", default="highest", choices=["highest", "fast"],
                     help="highest pins float32 matmuls (default); fast allows TF32 on GPUs")
    ver.add_argument("--rtol", type=float, metavar="R", help="relative tolerance for every check (overrides the table)")
    ver.add_argument("--atol", type=float, metavar="A", help="absolute tolerance for every check (overrides the table)")
    ver.add_argument("--statistic", action="append", default=[], metavar="[OUTPUT=]STAT",
                     help="the error statistic the tolerance applies to: elementwise (default), max, mean, median "
                          "or quantile:Q; OUTPUT= for one output only (repeatable)")
    ver.add_argument("--explain", action="store_true",
                     help="name the first layer where each artifact leaves the original, passing or not (a failing "
                          "check is always explained)")
    ver.add_argument("--explain-method", default="auto", choices=["auto", "intermediates", "bisect"],
                     help="auto: read the artifact's own tensors where its runtime can, else bisect with prefix "
                          "sub-models exported again")
    _gate_arg(ver)
    ver.add_argument("--calibrate", action="store_true",
                     help="measure each artifact's own noise (the same input twice, inputs moved by one ulp) and flag "
                          "a tolerance row looser than 1000x that noise or tighter than it")
    ver.add_argument("--in-process", action="store_true",
                     help="load in this process instead of a fresh one (only a bundle you exported here, or --trust)")
    ver.add_argument("--resume", action="store_true", help="also check that model.keras resumes training exactly")
    ver.add_argument("--trust", "--trust-pickle", action="store_true", dest="trust",
                     help="you vouch for this bundle: it may be verified in this process, its pickle loaded")
    _limit_args(ver)
    ver.add_argument("--import", action="append", dest="imports", default=[], metavar="MODULE",
                     help="import a module first (one that registers custom layers)")
    ver.add_argument("--allow-op", action="append", dest="allow_ops", default=[], metavar="OP",
                     help="accept this SavedModel op beyond the inference allowlist (a file you trust; recorded)")
    ver.add_argument("--public-key", metavar="PEM", help="require the bundle's signature by this key (kerasio sign)")
    ver.add_argument("--json", action="store_true", help="print the report as JSON")

    exp = sub.add_parser("export", help="turn a model file (.keras, .h5, a weights directory) into a verified bundle",
                         epilog=_formats_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    exp.add_argument("model", help="a .keras file, a legacy .h5, a weights directory (with its architecture.json), "
                                   "or a bundle (its .keras)")
    exp.add_argument("--out", required=True, help="bundle directory to write")
    exp.add_argument("--formats", default="keras,savedmodel",
                     help=f"comma-separated formats, or 'all' (default: keras,savedmodel); known: {', '.join(REGISTRY)}")
    exp.add_argument("--max-shard-size", type=float, metavar="GB",
                     help="shard the weights format above this size (--format-option weights.max_shard_size=GB)")
    exp.add_argument("--format-option", action="append", dest="format_options", default=[], type=_format_option,
                     metavar="FORMAT.NAME=VALUE", help="an option of one format (see the list below); repeatable")
    _input_args(exp, "the reference inputs")
    exp.add_argument("--task", default="auto", choices=["auto", "classification", "regression", "raw"],
                     help="what the outputs are (default: auto, from the output layer)")
    exp.add_argument("--class-names", metavar="A,B,...", help="a classifier's class names, in output order")
    exp.add_argument("--feature-names", metavar="A,B,...", help="the names of a single 2-D input's columns")
    exp.add_argument("--rtol", type=float, metavar="R", help="relative tolerance for every check (overrides the table)")
    exp.add_argument("--atol", type=float, metavar="A", help="absolute tolerance for every check (overrides the table)")
    exp.add_argument("--no-verify", action="store_true", help="probe each artifact in this process instead of "
                                                               "verifying it in a fresh one")
    exp.add_argument("--labels", metavar="FILE",
                     help="the reference rows' class indices (.npy, or a CSV/Parquet column named 'label' or its only "
                          "column): a quantized format's gates then measure the accuracy it loses")
    _gate_arg(exp)
    exp.add_argument("--trust", action="store_true", help="you vouch for the file: a pickle may be read and written")
    exp.add_argument("--import", action="append", dest="imports", default=[], metavar="MODULE",
                     help="import a module first (one that registers the model's custom classes)")
    exp.add_argument("--json", action="store_true", help="print the export and its verification as JSON")

    cmp_ = sub.add_parser("compare", help="do two artifacts (any formats) give the same outputs on the same inputs?")
    cmp_.add_argument("a", help="the first artifact (the reference): a .keras, .h5, SavedModel, .onnx, .tflite or bundle")
    cmp_.add_argument("b", help="the second artifact")
    _input_args(cmp_, "the inputs both run on")
    cmp_.add_argument("--rtol", type=float, metavar="R", help="relative tolerance (default: the table's, for these formats)")
    cmp_.add_argument("--atol", type=float, metavar="A", help="absolute tolerance (default: the table's)")
    cmp_.add_argument("--statistic", action="append", default=[], metavar="[OUTPUT=]STAT",
                      help="the error statistic: elementwise (default), max, mean, median or quantile:Q")
    cmp_.add_argument("--trust", action="store_true", help="you vouch for both files: a pickle may be loaded")
    cmp_.add_argument("--import", action="append", dest="imports", default=[], metavar="MODULE",
                      help="import a module first in each worker (custom classes)")
    _limit_args(cmp_)
    cmp_.add_argument("--json", action="store_true", help="print the comparison as JSON")

    pred = sub.add_parser("predict", help="predict labels (classifiers) or outputs for new inputs")
    pred.add_argument("path", help="bundle directory or artifact")
    pred.add_argument("--input", required=True, metavar="FILE",
                      help="CSV or Parquet (columns matched to input or feature names), .npz (one array per input) "
                           "or .npy (one array)")
    pred.add_argument("--output", metavar="FILE",
                      help="write predictions here: .csv for tabular outputs, .npz for any (default: print CSV)")
    pred.add_argument("--format", help="which artifact of the bundle to use (default: keras)")
    pred.add_argument("--import", action="append", dest="imports", default=[], metavar="MODULE",
                      help="import a module first (one that registers custom layers)")
    pred.add_argument("--trust", "--trust-pickle", action="store_true", dest="trust",
                      help="you vouch for this artifact: it may be loaded in this process, its pickle too")
    _limit_args(pred)
    pred.add_argument("--allow-op", action="append", dest="allow_ops", default=[], metavar="OP",
                      help="accept this SavedModel op beyond the inference allowlist (a file you trust)")
    pred.add_argument("--public-key", metavar="PEM", help="require the bundle's signature by this key (kerasio sign)")
    pred.add_argument("--no-header", action="store_true",
                      help="the CSV has no header row: its columns are the model's features, in order")
    pred.add_argument("--in-process", action="store_true",
                      help="load the artifact in this process instead of a sandboxed worker (only a bundle you "
                           "exported here, or --trust)")
    pred.add_argument("--json", action="store_true", help="print predictions as JSON records")
    pred.add_argument("--batch-size", type=_positive, metavar="N",
                      help="rows per call of the model (default: a whole chunk)")
    pred.add_argument("--chunk-rows", type=_positive, default=65_536, metavar="N",
                      help="rows read from --input at a time; memory holds one chunk, not the file (default: 65536)")

    ins = sub.add_parser("inspect", help="show a bundle's manifest, signatures, trace and artifacts")
    ins.add_argument("path", help="bundle directory")
    ins.add_argument("--public-key", metavar="PEM", help="require the bundle's signature by this key (kerasio sign)")
    ins.add_argument("--json", action="store_true", help="print the manifest as JSON")

    rep = sub.add_parser("report", help="write one self-contained HTML page about a bundle (no network needed)")
    rep.add_argument("path", help="bundle directory")
    rep.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: BUNDLE/report.html)")
    rep.add_argument("--public-key", metavar="PEM", help="require the bundle's signature by this key (kerasio sign)")

    sig = sub.add_parser("sign", help="sign a bundle's manifest with an elliptic-curve private key (OpenSSF "
                                      "model-signing); verify/predict/inspect --public-key then require it")
    sig.add_argument("path", help="bundle directory")
    sig.add_argument("--key", required=True, metavar="PEM", help="the private key (PEM, elliptic curve)")
    sig.add_argument("--password-env", metavar="VAR", help="read the key's password from this environment variable")

    req = sub.add_parser("serving-request", help="print a TF Serving REST body for the rows of a CSV")
    req.add_argument("path", help="bundle directory")
    req.add_argument("--input", required=True, metavar="FILE", help="CSV, Parquet, .npz or .npy inputs")
    req.add_argument("--columnar", action="store_true", help="use the columnar 'inputs' format")
    req.add_argument("--signature", default="serving_default", choices=["serving_default", "predict_labels"],
                     help="which SavedModel signature the body is for (default: serving_default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return EXIT_ERROR
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

    _warnings_once_to_stderr()

    try:
        return COMMANDS[args.command](args)
    except KerasioError as exc:
        if args.debug:
            raise

        print(f"kerasio: error: {printable(str(exc))}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("kerasio: interrupted; existing artifacts were left as they were.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away: entry() stops quietly, as `cat` does
        raise
    except Exception as exc:  # never a traceback: what no kerasio error names is still one line
        if args.debug:
            raise

        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        kind = "ran out of memory" if isinstance(exc, MemoryError) else f"unexpected {type(exc).__name__}"
        print(f"kerasio: error: {printable(kind)}: {printable(first)} (existing artifacts were left as they were; "
              "--debug shows the traceback)", file=sys.stderr)
        return EXIT_ERROR


def _warnings_once_to_stderr() -> None:
    """Python warnings as ``kerasio: warning: ...`` lines on stderr, each text once (not file:line plus source)."""
    import warnings

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        text = f"kerasio: warning: {message}"
        if text not in shown:
            shown.add(text)
            print(printable(text), file=sys.stderr)

    warnings.showwarning = show


def _out(text: str = "", **kwargs) -> None:
    """Print kerasio's own multi-line text (tables, notes): its line breaks are kept, each line escaped.

    Strings from a bundle or an input file reach it already escaped (tables
    and notes escape their cells), so none of them can start a line; a single
    message that carries such strings goes through :func:`_say`.
    """

    print("\n".join(printable(line) for line in str(text).split("\n")), **kwargs)


def _say(text: str, **kwargs) -> None:
    """Print one line: every control character in it, a newline included, is shown escaped."""

    print(printable(str(text)), **kwargs)


def _run(args) -> int:
    from kerasio.recipe.distribute import launch_local_cluster, prepare_devices

    if args.workers and args.strategy != "multiworker":
        raise InputError(f"--workers starts a multi-worker cluster; add --strategy multiworker. Received: --workers "
                         f"{args.workers} --strategy {args.strategy}")
    if args.workers and not os.environ.get("TF_CONFIG"):  # a local cluster on loopback: this process only waits
        return launch_local_cluster(_without_option(args.argv, "--workers"), args.workers,
                                    echo=lambda line: print(line, file=sys.stderr))
    prepare_devices(args.strategy, args.replicas)  # before Keras: JAX reads its CPU device count at start
    from kerasio.recipe.model import TrainConfig
    from kerasio.recipe.pipeline import RunOptions, run_pipeline

    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, hidden=tuple(args.hidden),
                         dropout=args.dropout, learning_rate=args.learning_rate, seed=args.seed,
                         test_size=args.test_size)
    run = RunOptions(strategy=args.strategy, replicas=args.replicas, streaming=args.streaming,
                     chunk_bytes=args.chunk_mb << 20 if args.chunk_mb else None,
                     progress_after=0.0 if args.verbose else 2.0)
    result = run_pipeline(
        args.data, label=args.label, out=args.out, config=config, formats=args.formats,
        verify=False if args.no_verify else ("in-process" if args.in_process else True), trust=args.trust,
        format_options=_format_options(args), echo=None if args.json or args.quiet else print, run=run,
    )
    if args.quiet and result.ok:
        count = len(result.export.manifest.artifacts) if result.export else 0
        checks = f", {len(result.report.checks)} of {len(result.report.checks)} checks passed" if result.report else ""
        _out(f"published {result.bundle}: {count} artifact{'' if count == 1 else 's'}{checks}")
    if args.json:
        print(json.dumps({
            "bundle": str(result.bundle), "metrics": result.metrics, "trace": result.trace.records,
            "published": result.export is not None,
            "artifacts": [a.__dict__ for a in result.export.manifest.artifacts] if result.export else [],
            "verification": result.report.to_dict() if result.report else None,
            "prediction": result.prediction, "seconds": result.seconds,
        }, indent=2, default=str))
    if args.debug and result.export is not None:  # each skipped format's whole converter or loader text
        for name, text in result.export.details.items():
            print(f"kerasio: {name} skipped; the full text:\n{text}", file=sys.stderr)
    if result.report is not None and result.report.worker_failure():
        print(f"kerasio: error: {result.report.worker_failure()}", file=sys.stderr)  # not a mismatch: exit 2
        return EXIT_ERROR
    if not result.ok:
        why = result.report.failure_text() if result.report else ""
        print(f"kerasio: verification failed, nothing was published: {why}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` less ``option VALUE`` / ``option=VALUE`` (the cluster's processes get the rest)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _statistics(given: list[str]) -> str | dict[str, str] | None:
    """``--statistic mean`` (every output) or ``--statistic logits=max`` (one output), as VerifyOptions takes it."""
    every = [g for g in given if "=" not in g]
    per = dict(g.split("=", 1) for g in given if "=" in g)
    if every and per:
        raise InputError(f"--statistic takes either one statistic for every output or OUTPUT=STAT for each; "
                         f"received both: {given}")
    if len(every) > 1:
        raise InputError(f"--statistic without OUTPUT= applies to every output: give it once. Received: {every}")
    return per or (every[0] if every else None)


def _verify(args) -> int:
    if args.resume:  # refused before anything runs
        if not trusted(read_manifest(args.path, public_key=args.public_key), trust=args.trust,
                       public_key=args.public_key):
            raise UnsafeArtifactError(
                f"{args.path}: --resume replays the recorded training, which reads the data file the manifest names "
                "and builds the model it describes, outside the sandbox; this bundle is not yours (kerasio did not "
                "export it under this account, and no public key vouches for it). Drop --resume, or pass --trust if "
                "you vouch for it. Received: --resume")
    if args.in_process:
        import_keras_quietly()
    options = VerifyOptions(device=args.device, backend=args.backend, precision=args.precision, rtol=args.rtol,
                            atol=args.atol, statistic=_statistics(args.statistic),
                            explain=True if args.explain else None, explain_method=args.explain_method,
                            calibrate=args.calibrate, gates=_gates(args.gates),
                            imports=tuple(args.imports), allow_ops=tuple(args.allow_ops), limits=_limits(args))
    report = verify(
        args.path, formats=args.formats, options=options, in_process=args.in_process, trust=args.trust,
        public_key=args.public_key,
        progress=None if args.json or args.quiet else (lambda line: _say(f"  {line}", flush=True)),
    )
    if args.resume:
        from kerasio.recipe.resume import resume_in_fresh_process

        report.resume = resume_in_fresh_process(args.path, backend=args.backend)
    if args.json:
        _out(report.to_json(indent=2))
    else:
        passed = sum(c.passed for c in report.checks)
        if not args.quiet:
            _out(report.table())
            if report.explanations():
                _out(report.explanations())
        _say(f"{passed} of {len(report.checks)} checks passed ({report.mode}) for {args.path}")
    if report.worker_failure():
        _say(f"kerasio: error: {report.worker_failure()}", file=sys.stderr)  # the verifier died: not a mismatch
        return EXIT_ERROR
    if not report.ok:
        if not args.json:
            bad = ", ".join(c.artifact for c in report.failures()) or "resume"
            _say(f"kerasio: verification failed for {bad}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _gate_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gate", action="append", dest="gates", default=[], metavar="METRIC=VALUE",
                   help="a quantized artifact's gate instead of the default: top1_agreement=0.995, "
                        "accuracy_drop=0.005, snr_db=35, cosine=0.999 or kl=0.01 (repeatable)")


def _gates(given: list[str]) -> dict[str, float] | None:
    found = {}
    for text in given:
        metric, _, value = text.partition("=")
        try:
            found[metric.strip()] = float(value)
        except ValueError:
            raise InputError(f"--gate takes METRIC=VALUE, e.g. top1_agreement=0.995; received: {text!r}") from None
    return found or None


def _labels(path: str | None):
    """``--labels FILE``: class indices from an .npy, or a table's ``label`` column (or its only one)."""
    if path is None:
        return None
    table = read_input_file(path)  # bounded like any input file: a header claiming terabytes is refused first
    if isinstance(table, dict):
        raise InputError(f"{path}: --labels reads one array (.npy) or one table column, not an .npz archive. "
                         f"Received: {path}")
    if not hasattr(table, "columns"):  # an .npy: the labels themselves
        return table
    columns = list(table.columns)
    column = "label" if "label" in columns else columns[0] if len(columns) == 1 else None
    if column is None:
        raise InputError(f"{path}: --labels reads an .npy, or a table with a 'label' column or one column; this one "
                         f"has {columns[:8]}. Received: {path}")
    return table[column].to_numpy()


def _input_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--inputs", metavar="FILE",
                   help=f"{what}: CSV or Parquet (columns matched to input names), .npz (one array per input) or .npy; "
                        "default: made from the signature, seeded, and recorded as synthetic")
    p.add_argument("--value-range", action="append", dest="value_ranges", default=[], metavar="NAME=LO,HI",
                   help="without --inputs: draw this float input uniformly in [LO, HI] (repeatable)")
    p.add_argument("--rows", type=_positive, default=64, metavar="N", help="without --inputs: rows made (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="without --inputs: the generator's seed (default: 0)")


def _synthetic(args) -> SyntheticInputs:
    ranges = {}
    for text in args.value_ranges:
        name, _, pair = text.partition("=")
        parts = pair.split(",")
        try:
            ranges[name.strip()] = (float(parts[0]), float(parts[1]))
        except (ValueError, IndexError):
            raise InputError(f"--value-range takes NAME=LO,HI, e.g. image=0,255; received: {text!r}") from None
    return SyntheticInputs(rows=args.rows, seed=args.seed, value_ranges=ranges)


def _names(text: str | None) -> list[str] | None:
    return [part.strip() for part in text.split(",") if part.strip()] if text else None


def _export(args) -> int:
    import_keras_quietly()  # the model is built here: TensorFlow's start-up chatter is not the user's business
    for module in args.imports:  # custom classes register themselves on import, before the audit reads the config
        importlib.import_module(module)
    info = BundleInfo(task=args.task, class_names=_names(args.class_names), feature_names=_names(args.feature_names),
                      labels=_labels(args.labels))
    checks = False if args.no_verify else VerifyOptions(rtol=args.rtol, atol=args.atol, imports=tuple(args.imports),
                                                        gates=_gates(args.gates))
    inputs = read_input_file(args.inputs) if args.inputs else _synthetic(args)
    quiet = args.json or args.quiet
    try:
        result = export(args.model, args.out, reference_inputs=inputs, formats=args.formats, info=info,
                        verify=checks, trust=args.trust, format_options=_format_options(args),
                        progress=None if quiet else (lambda line: _say(f"  {line}", flush=True)))
    except VerificationError as exc:
        if not quiet and exc.report is not None:
            _out(exc.report.table())
        raise
    report = result.report
    if args.json:
        print(json.dumps({"bundle": str(result.bundle), "artifacts": [a.__dict__ for a in result.manifest.artifacts],
                          "skipped": result.skipped, "reference": result.manifest.reference,
                          "verification": report.to_dict() if report else None}, indent=2, default=str))
    else:
        if not args.quiet:
            _out(result.table())
            if report is not None:
                _out(report.table())
        checked = f"; {sum(c.passed for c in report.checks)} of {len(report.checks)} checks passed" if report else ""
        _say(f"published {result.bundle}: {len(result.manifest.artifacts)} artifacts{checked}")
    if report is not None and not report.ok:  # published because named, but below its gates: never silently
        _say(f"kerasio: published below its gates: {report.failure_text()}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _compare(args) -> int:
    inputs = args.inputs or _synthetic(args)
    options = VerifyOptions(rtol=args.rtol, atol=args.atol, statistic=_statistics(args.statistic))
    with load_isolated(args.a, trust=args.trust, imports=args.imports, limits=_limits(args)) as a, \
            load_isolated(args.b, trust=args.trust, imports=args.imports, limits=_limits(args)) as b:
        result = a.compare(b, inputs, options=options)
    if args.json:
        _out(result.to_json(indent=2))
    else:
        if not args.quiet:
            _out(result.table())
        _say(f"{'agree' if result.ok else 'DIFFER'}: {args.a} and {args.b} "
             f"({sum(o['passed'] for o in result.outputs)} of {len(result.outputs)} outputs within the tolerance)")
    return 0 if result.ok else EXIT_FAILED


def _predict(args) -> int:
    import importlib


    with contextlib.ExitStack() as stack:
        trust = args.trust
        if args.in_process:  # your own bundle: load it here (an untrusted one is refused, not isolated)
            import_keras_quietly()
            for module in args.imports:
                importlib.import_module(module)
            model = stack.enter_context(load(args.path, format=args.format, trust=trust, allow_ops=args.allow_ops,
                                             public_key=args.public_key, isolate=False))
        else:  # by default the artifact runs in a sandboxed worker: this process never loads it
            model = stack.enter_context(load_isolated(
                args.path, format=args.format, trust=trust, allow_ops=args.allow_ops,
                public_key=args.public_key, imports=args.imports, limits=_limits(args)))
        options = {"header": not args.no_header, "chunk_rows": args.chunk_rows, "batch_size": args.batch_size}
        with _rows_progress(enabled=not args.quiet) as progress:
            if args.output:  # streamed into a temporary file, renamed over --output only when complete
                rows, seconds = predict_to_file(model, args.input, args.output, progress=progress, **options)
            else:
                _print_predictions(predict_chunks(model, args.input, **options), progress, args)
    if args.output and not args.quiet:
        _say(f"wrote {rows:,} predictions to {args.output} ({rows / max(seconds, 1e-9):,.0f} rows/s; model "
             f"{model.path}, sha256 {(model.sha256 or '')[:12]})")
    return 0


def _print_predictions(parts, progress, args) -> None:
    """Predictions on stdout as they come: CSV (one header), or one JSON array of records."""
    import pandas as pd


    first = True
    for part in with_progress(parts, progress):
        if part.columns is None:  # known from the first chunk, before anything is printed
            raise InputError(f"{args.input}: the model's outputs have more than 2 dimensions and cannot be printed "
                             "as a table; pass --output FILE.npz. Received: no --output")
        frame = pd.DataFrame(_escaped(part.columns))  # a class name may carry a stranger's control characters
        if args.json:
            records = frame.to_json(orient="records")[1:-1]
            _out(("[" if first else "," if records else "") + records, end="")
        else:
            _out(frame.to_csv(index=False, header=first), end="")
        first = False
    if args.json:
        print("[]" if first else "]")


def _escaped(columns):
    """String columns (a classifier's labels) with control characters escaped, for a terminal."""
    import numpy as np


    return {printable(str(name)): np.vectorize(printable, otypes=[str])(values)
            if values.dtype.kind in "USO" and values.size else values for name, values in columns.items()}


@contextlib.contextmanager
def _rows_progress(enabled: bool):
    """On a terminal (stderr), a bar of rows done and rows/s while a large file is predicted; else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[speed]} rows/s"),
                  console=Console(file=sys.stderr, width=100), transient=True) as bar:
        task = bar.add_task("rows", total=None, speed="-")

        def update(done: int, total: int | None, seconds: float) -> None:
            bar.update(task, completed=done, total=total, speed=f"{done / seconds:,.0f}" if seconds > 0 else "-")
            bar.refresh()

        yield update


def _inspect(args) -> int:
    from kerasio.recipe.trace import TraceRecords

    bundle = Path(args.path)
    manifest = read_manifest(bundle, public_key=args.public_key)
    last = last_report(bundle)
    integrity = manifest.integrity(bundle)  # the hashes verify checks, without loading anything
    changed = {path: state for path, state in integrity.items() if state != "ok"}
    signing = _signature_state(bundle, args.public_key)
    if args.json:
        _out(json.dumps({"manifest": manifest.to_dict(), "integrity": integrity, "signature": signing,
                         "last_verification": last}, indent=2))
        return EXIT_FAILED if changed else 0

    if changed:
        first = f"integrity   CHANGED: {len(changed)} of {len(integrity)} files differ; {signing}"
    else:
        first = f"integrity   all {len(integrity)} files match their sha256; {signing}"
    v = manifest.versions
    sig = manifest.iospec
    lines = [first]
    if changed:
        lines.append("changed     " + ", ".join(flat_name(p) for p in changed) + ": do not use this bundle")
    lines += [f"bundle      {bundle}",
             f"created     {manifest.created_utc} (schema {manifest.schema_version}); backend {manifest.backend}, "
             f"device {manifest.device}",
             "versions    " + ", ".join(f"{k} {v[k]}" for k in v),
             f"model       {sig.model_kind}, compute {sig.compute_dtype}"
             f"{f', quantized {sig.quantization}' if sig.quantization else ''}, task {manifest.task.kind}"]
    for spec in sig.inputs:
        cols = f" columns {sig.feature_names}" if sig.feature_names and len(sig.inputs) == 1 else ""
        lines.append(f"input       {spec.describe()}{cols}")
    for spec in sig.outputs:
        extra = " (probabilities)" if spec.probabilities else ""
        lines.append(f"output      {spec.describe()}{extra}")
    dist = manifest.training.get("distribution") if isinstance(manifest.training, dict) else None
    if isinstance(dist, dict) and dist.get("strategy", "default") != "default":
        lines.append(f"trained     {dist.get('strategy')}: {dist.get('replicas')} replicas, {dist.get('workers')} "
                     f"worker(s), global batch {dist.get('global_batch_size')}")
    if manifest.task.is_classification:
        lines.append(f"classes     {manifest.class_names} (label column {manifest.label!r})")
    if manifest.metrics:
        lines.append("metrics     " + ", ".join(f"{k} {val:.4f}" for k, val in manifest.metrics.items()))
    if manifest.attachments:
        lines.append("attached    " + ", ".join(flat_name(a["path"]) for a in manifest.attachments))
    if manifest.packages:
        lines.append("packages    " + ", ".join(f"{k} {v}" for k, v in manifest.packages.items())
                     + " (allowlisted: a fresh process imports them to rebuild the model's classes)")
    lines.append(f"sweep       {manifest.sweep_text()}")
    lines += [f"warning     {note}" for note in manifest.synthetic_notes()]
    _out("\n".join(wrap_notes(lines, indent="")))
    last_by: dict[str, list[str]] = {}
    for c in (last or {}).get("checks", []):
        diff = "-" if c.get("max_abs_diff") is None else f"{c['max_abs_diff']:.1e}"
        last_by.setdefault(str(c.get("artifact")), []).append(f"{c.get('status')} {c.get('device') or '?'} {diff}")
    rows = [[a.format, flat_name(a.path), str(a.size), a.sha256[:12],
             "ok" if integrity.get(a.path) == "ok" else "CHANGED",
             ", ".join(last_by.get(a.path, ["never verified"]))] for a in manifest.artifacts]
    _out("\nartifacts (sha256 prefixes; --json has the full hashes)")
    _out(render_table(["Format", "Path", "Bytes", "sha256", "Bytes now", "Last verification (max abs diff)"], rows))
    notes = [f"  {a.format}: {line}" for a in manifest.artifacts for line in _io_summary(a.info)]
    notes += [f"  {name} skipped: {why}" for name, why in manifest.skipped.items()]
    notes += [f"  {flat_name(path)}: {state}" for path, state in changed.items()]
    _out("\n".join(wrap_notes(notes)))
    if last:
        _out(f"last verification: {'PASS' if last.get('ok') else 'FAIL'} ({last.get('mode')})")
    if manifest.trace:
        _out("\ntrace")
        _out(TraceRecords(manifest.trace).table())
    return EXIT_FAILED if changed else 0


def _signature_state(bundle: Path, public_key: str | None) -> str:
    """What ``inspect`` can say of the bundle's signature (it checked it only if given a key)."""

    if public_key is not None:
        return f"signature verified with {public_key}"
    if os.path.lexists(bundle / SIGNATURE_NAME):
        return "signature present but NOT checked (--public-key)"
    return "not signed"


def _io_summary(info: dict) -> list[str]:
    """One line per signature of an artifact (its I/O names, dtypes and shapes)."""
    try:
        return _describe_io(info)
    except (AttributeError, KeyError, TypeError, ValueError):
        return ["?"]


def _describe_io(info: dict) -> list[str]:
    def spec(name: str, v: dict) -> str:
        shape = ",".join("None" if d is None else str(d) for d in v["shape"])
        return f"{name}: {v['dtype']}[{shape}]"

    if "signatures" in info:
        return [f"{name}({', '.join(spec(k, v) for k, v in sorted(sig['inputs'].items()))}) -> "
                f"{', '.join(spec(k, v) for k, v in sorted(sig['outputs'].items()))}"
                for name, sig in sorted(info["signatures"].items())]
    if "inputs" in info:
        return [f"{', '.join(info['inputs'])} -> {', '.join(info.get('outputs', []))}"]
    return ["the model's own I/O"]


def _serving_request(args) -> int:
    manifest = read_manifest(args.path)
    inputs = manifest.iospec.coerce(read_input_file(args.input), source=args.input)
    named = dict(zip(tf_input_names(manifest.iospec), inputs.values()))
    print(json.dumps(rest_body(named, signature_name=args.signature, columnar=args.columnar)))
    return 0


def entry() -> None:
    """Console-script entry point.

    Exits with ``os._exit`` once output is flushed: a process that imported
    TensorFlow otherwise spends most of a second tearing it down, and the CLI
    has nothing left to clean up (files are already renamed into place).
    """

    runtime.LEAN = True  # this process is kerasio's own: Keras starts without what kerasio never uses
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # the reader went away (`kerasio inspect B | head`): stop quietly, as `cat` does
        code = 141
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(code)


def _sign(args) -> int:
    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise InputError(f"--password-env {args.password_env}: that environment variable is not set. Export it "
                             f"or drop --password-env. Received: {args.password_env}")
    target = sign(args.path, args.key, password=password)
    manifest = read_manifest(args.path)
    _out(f"signed {Path(args.path) / 'kerasio.json'} ({len(manifest.artifacts)} artifacts and the reference data, by "
         f"their sha256) -> {target}")
    return 0


def _report(args) -> int:
    from kerasio.report import write_report

    target = write_report(args.path, args.output, public_key=args.public_key)
    if not args.quiet:
        _out(f"wrote {target}")
    return 0


COMMANDS = {"run": _run, "export": _export, "verify": _verify, "compare": _compare, "predict": _predict,
            "inspect": _inspect,
            "serving-request": _serving_request, "sign": _sign,
            "report": _report}

if __name__ == "__main__":
    sys.exit(main())
