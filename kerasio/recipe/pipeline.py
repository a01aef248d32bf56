"""The six stages end to end: data, split, train, export, verify, predict."""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from kerasio.backends.environment import default_backend, import_keras_quietly
from kerasio.bundle.fsutil import writable_error
from kerasio.errors import KerasioError, VerificationError
from kerasio.export import choose_formats, export
from kerasio.loading import load
from kerasio.options import BundleInfo, VerifyOptions, check_format_options, verify_options
from kerasio.process.session import Session
from kerasio.recipe.data import Dataset, Split, load_dataset, split_dataset
from kerasio.recipe.distribute import chief_by_environment, precheck_strategy, resolve_strategy, worker_output
from kerasio.recipe.model import TrainConfig, fit, steps_per_epoch
from kerasio.recipe.progress import live_callbacks
from kerasio.recipe.stream import StreamingDataset, should_stream
from kerasio.recipe.trace import EpochTrace, plot_available, trace_header

__all__ = ["run_pipeline", "RunOptions", "PipelineResult", "DEFAULT_OUT"]

DEFAULT_OUT = Path("saved_models") / "seed"


@dataclass
class PipelineResult:
    bundle: Path
    dataset: Dataset
    split: Split
    model: Any
    trace: Any
    metrics: dict[str, float]
    export: Any | None  # None when verification failed and nothing was published
    report: Any | None
    prediction: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.report is None or self.report.ok


@dataclass(frozen=True)
class RunOptions:
    """How a pipeline run goes, besides what it trains: distribution, streaming, the live display.

    Attributes:
        strategy: ``"default"``, ``"mirrored"``, ``"multiworker"`` (``TF_CONFIG`` from the environment),
            ``"dataparallel"`` (JAX), or a strategy object (see :mod:`kerasio.recipe.distribute`). The model is
            built, compiled and trained under it; ``batch_size`` is the global batch. Under multi-worker only
            the chief writes ``out``: the other workers export to a temporary directory that is deleted.
        replicas: how many replicas ``mirrored`` or ``dataparallel`` use (on a CPU, it is split into that many
            devices); default: every GPU, or one device.
        streaming: read ``data`` chunk by chunk instead of whole (CSV or Parquet; a hash-based split; see
            :mod:`kerasio.recipe.stream`). Default: stream files over 1 GB.
        chunk_bytes: bytes of ``data`` parsed at a time when streaming (default 4 MiB).
        progress_after: on a terminal, show a progress bar once an epoch has run this long (seconds).
    """

    strategy: Any = None
    replicas: int | None = None
    streaming: bool | None = None
    chunk_bytes: int | None = None
    progress_after: float = 2.0


def run_pipeline(
    data: str | Path | None = None,
    *,
    label: str | None = None,
    out: str | Path = DEFAULT_OUT,
    config: TrainConfig | None = None,
    formats: str | Sequence[str] | None = None,
    verify: bool | str | VerifyOptions = True,
    trust: bool = False,
    format_options: Mapping[str, Mapping[str, Any]] | None = None,
    echo: Callable[[str], None] | None = print,
    run: RunOptions | None = None,
) -> PipelineResult:
    """Run the whole path and print each stage's trace.

    Args:
        data: a CSV or Parquet path, or ``None`` for the embedded default.
        label: the label column of ``data``.
        out: the bundle directory (default ``saved_models/seed``).
        config: what to train (:class:`TrainConfig`: epochs, seed, layers, dropout, learning rate, batch size,
            test size).
        formats: export formats (default ``keras,savedmodel``; ``"all"``).
        verify: verify every artifact before it is published (``True``: in a fresh process; ``"in-process"``;
            or a :class:`~kerasio.VerifyOptions`); if one fails, the bundle is left as it was and ``result.ok``
            is false. ``False`` skips it.
        trust: write the formats that need explicit trust (pickle), as :func:`kerasio.export`.
        format_options: per-format options, as :func:`kerasio.export`.
        echo: where the trace goes (``None`` for silence); each epoch's row is printed as the epoch ends.
        run: distribution, streaming and the live display (:class:`RunOptions`).

    Returns:
        A :class:`PipelineResult`; ``result.ok`` is the verification verdict.

    Example:
        >>> result = run_pipeline(config=TrainConfig(epochs=5), out="saved_models/seed")  # doctest: +SKIP
        >>> result.report.ok  # doctest: +SKIP
        True
    """
    cfg = config or TrainConfig()
    run = run or RunOptions()
    checks = verify_options(verify)
    epochs, batch_size, seed, hidden = cfg.epochs, cfg.batch_size, cfg.seed, cfg.hidden
    learning_rate, test_size = cfg.learning_rate, cfg.test_size
    strategy, replicas = run.strategy, run.replicas
    say = _wrapping(echo) if echo else (lambda _s: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    out = Path(out)
    chosen, _ = choose_formats(formats, trust=trust)  # a bad format fails now, not after training
    check_format_options(format_options)
    # 1. data (validated before anything heavy starts)

    dataset = load_dataset(data, label=label, streaming=should_stream(data, run.streaming),
                           chunk_bytes=run.chunk_bytes)
    streamed = isinstance(dataset, StreamingDataset)
    how = f", streamed in {dataset.chunk_bytes / 2**20:g} MiB chunks" if streamed else ""
    say(f"[1/6] data     {'embedded default' if dataset.source == 'embedded' else dataset.source}: "
        f"{len(dataset):,} rows x {dataset.n_features} features{how} -> label {dataset.label!r} "
        f"({dataset.n_classes} classes: {', '.join(dataset.class_names)})")
    # 2. split
    try:
        split = split_dataset(dataset, test_size=test_size, seed=seed)
    except BaseException:
        if streamed:
            dataset.close()
        raise
    if streamed:
        say(f"[2/6] split    by a hash of each row's number, seed {seed}: train {split.n_train:,} rows | test "
            f"{split.n_test:,} rows; normalisation statistics gathered on the way")
    else:
        say(f"[2/6] split    stratified, seed {seed}: train x{split.x_train.shape} y{split.y_train.shape} | "
            f"test x{split.x_test.shape} y{split.y_test.shape}")
    last = [clock]

    def mark(stage: str) -> None:  # seconds since the previous mark, per stage
        now = time.perf_counter()
        timings[stage] = now - last[0]
        last[0] = now

    mark("data")
    with contextlib.ExitStack() as stack:
        if streamed:  # the spooled rows go once training is over, or on any error (a kill: the next run's cleanup)
            stack.callback(dataset.close)

        precheck_strategy(strategy, replicas=replicas, batch_size=batch_size)  # a misuse refused before Keras starts
        chief = chief_by_environment(strategy)
        if chief:
            _check_writable(out)  # after the data is known good (a bad CSV creates nothing), before any training
        session = checks.session if checks is not None and checks.session is not None else \
            stack.enter_context(Session(imports=["kerasio.recipe.trace"], warm=_warm(chosen), rehearse=_rehearse(chosen)))
        if checks is not None and not checks.in_process and chief:
            # Start the verifier now: its TensorFlow import overlaps ours and training, on the other core.
            session.start()
            if plot_available():  # it draws trace.png later: import matplotlib and warm its fonts while idle
                session.submit_job("recipe.render_png", records=[{"epoch": 1, "loss": 1.0}],
                                   path=str(Path(session.start().tmp.name) / "warm.png"))

        import_keras_quietly()
        dist = resolve_strategy(strategy, replicas=replicas)  # before anything else runs in TensorFlow
        dist.check_batch(batch_size)
        if not dist.is_chief:  # all workers save (saving may run collectives); only the chief's copy is kept
            out = stack.enter_context(worker_output(dist, out))
            checks = None
        mark("import")
        # 3. train

        with dist.scope():
            if streamed:
                model = cfg.build(dataset.n_features, dataset.n_classes, mean=split.mean, variance=split.variance)
            else:
                model = cfg.build(dataset.n_features, dataset.n_classes, split.x_train)
        arch = " -> ".join([f"features({dataset.n_features})", "normalize", *map(str, hidden),
                            f"softmax({dataset.n_classes})"])
        say(f"[3/6] train    Sequential {arch}; Adam lr={learning_rate}, {epochs} epochs, batch {batch_size}")
        if dist.name != "default":
            say(f"         strategy {dist.describe(batch_size)}")
        trace = EpochTrace()
        live: list[Any] = []
        if echo is not None:  # each epoch's row as it ends; a bar within epochs longer than 2 s, on a terminal
            say(_indent(trace_header()))
            steps = split.steps("train", batch_size, dist.batch_multiple) if streamed else \
                steps_per_epoch(len(split.y_train), batch_size, dist.batch_multiple)
            live = live_callbacks(lambda row: say(_indent(row)), trace, steps=steps, after=run.progress_after)
        if streamed:  # tf.data over the spooled rows' chunks, read again every epoch
            parts = {p: split.dataset(p, batch_size, multiple=dist.batch_multiple) for p in ("train", "test")}
            fit(model, parts["train"], None, epochs=epochs, batch_size=batch_size, seed=seed,
                validation_data=parts["test"], callbacks=[trace, *live], strategy=dist)
        else:
            fit(model, split.x_train, split.y_train, epochs=epochs, batch_size=batch_size, seed=seed,
                validation_data=(split.x_test, split.y_test), callbacks=[trace, *live], strategy=dist)
        # The test split is the validation data, so the last epoch's val figures are the test metrics.
        loss, accuracy = trace.records[-1]["val_loss"], trace.records[-1]["val_accuracy"]
        metrics = {"test_loss": float(loss), "test_accuracy": float(accuracy)}
        say(_indent(trace.chart(width=INNER)))
        n_test = split.n_test if streamed else len(split.y_test)
        evaluated = n_test - n_test % dist.batch_multiple if not streamed else n_test
        shown = f"{evaluated:,} of {n_test:,} rows (a multiple of {dist.batch_multiple} for {dist.name})" \
            if evaluated != n_test else f"{n_test:,} rows"
        say(f"         test: loss {loss:.4f}, accuracy {accuracy:.4f} on {shown}")
        mark("train")
        # 4-5. export, then verify the staged bundle before it is published
        attachments = {"trace.csv": trace.csv_text().encode(), "trace.json": trace.json_text().encode()}
        if plot_available():
            attachments["trace.png"] = _trace_png(trace, session)  # drawn while the artifacts are written
        else:
            say("         trace.png skipped: matplotlib is not installed (pip install 'kerasio[notebooks]')")
        say(f"[4/6] export   -> {out} (manifest {out / 'kerasio.json'}; trace: {', '.join(attachments)})")
        try:
            info = BundleInfo(
                feature_names=dataset.feature_names, class_names=dataset.class_names, label=dataset.label,
                trace=trace.records, metrics=metrics, attachments=attachments, labels=split.y_test,
                training={"config": cfg.to_dict(), "distribution": dist.record(batch_size),
                          "data": {"source": dataset.source, "sha256": dataset.sha256, "label": dataset.label,
                                   "rows": len(dataset), **({"streaming": True, "split": "hash"} if streamed else {})}})
            result = export(
                model, out, reference_inputs=split.x_test, formats=formats, info=info, trust=trust,
                format_options=format_options,
                verify=replace(checks, session=session) if checks is not None else False,
                progress=(lambda line: say(_indent(line))) if echo else None,
            )
            report = result.report
            say(_indent(result.table(width=INNER)))
        except VerificationError as exc:
            result, report = None, exc.report
            say(f"         -> {out}: NOT published, the new artifacts failed verification; the bundle is as it was")
        if report is not None:
            say(f"[5/6] verify   {report.mode}, before publishing; reference: {len(split.x_test)} test rows "
                "(+ a 1-row batch)")
            say(_indent(report.table(width=INNER)))
        else:
            say("[5/6] verify   skipped (--no-verify)")
        session.release()  # its workers' exit overlaps stage 6; leaving this block waits for them
        if result is not None:
            timings["export_writing"] = sum(result.seconds.values())
        if report is not None:
            timings["verify_checks"] = sum(c.seconds for c in report.checks)
    mark("export_and_verify")  # includes closing the verification worker
    # 6. predict
    prediction: dict[str, Any] = {}
    if not dist.is_chief:
        say(f"[6/6] predict  skipped: worker {dist.task} is not the chief; its temporary bundle was deleted")
    elif result is None:
        say("[6/6] predict  skipped: nothing was published")
    else:
        prediction = _predict_test_rows(load(out, trust=trust), dataset, split, metrics, evaluated, streamed, say)
    mark("predict")
    timings["total"] = time.perf_counter() - clock
    return PipelineResult(out, dataset, split, model, trace, metrics, result, report, prediction, timings)


def _predict_test_rows(loaded: Any, dataset: Dataset, split: Any, metrics: dict[str, float], evaluated: int,
                       streamed: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """Stage 6: the loaded artifact predicts every test row; its accuracy against the trained model's.

    ``evaluated``: the test rows the trained model's accuracy counted (a distribution strategy may evaluate a
    multiple of its batch only). A streamed split keeps its first test rows in memory, and those are predicted.
    """
    with loaded:
        labels, probs = loaded.predict(split.x_test, probabilities=True)
    labels = [str(label) for label in labels]
    truth = [dataset.class_names[int(y)] for y in split.y_test]
    accuracy = float(np.mean([a == b for a, b in zip(labels, truth)]))
    counted = float(np.mean([a == b for a, b in zip(labels[:evaluated], truth[:evaluated])]))
    trained = metrics["test_accuracy"]
    equal = not streamed and abs(counted - trained) < 0.5 / max(evaluated, 1)  # the same count of right rows
    head = f"         {len(labels)} labels: ["
    shown = ""
    for i, label in enumerate(labels):  # as many as fit in one line of 100 columns
        more = f"{', ' if shown else ''}{label}"
        if len(head) + len(shown) + len(more) + (len(", ...]") if i + 1 < len(labels) else 1) > 100:
            shown += ", ..."
            break
        shown += more
    say(f"[6/6] predict  {len(labels)} test rows with the loaded {loaded.format} artifact")
    say(f"{head}{shown}]")
    if streamed:
        say(f"         accuracy {accuracy:.4f} on these {len(labels):,} rows (the first test rows kept in memory); "
            f"the trained model's {trained:.4f} counts all {split.n_test:,} test rows, so they are not compared")
    else:
        on = f" (on the {evaluated} rows it evaluated: {counted:.4f})" if evaluated != len(labels) else ""
        say(f"         accuracy {accuracy:.4f} from these predictions{on}; the trained model's test accuracy "
            f"{trained:.4f}: {'equal' if equal else 'DIFFERENT'}")
    sample = ", ".join(f"{n}={v:g}" for n, v in zip(dataset.feature_names, split.x_test[0]))
    say(f"         trace: input [{sample}]")
    say(f"         -> model loaded from {loaded.path} (sha256 {(loaded.sha256 or '')[:12]})")
    probabilities = dict(zip(dataset.class_names, map(float, probs[0])))
    say(f"         -> predicted {labels[0]!r} (true {truth[0]!r}); probabilities "
        + ", ".join(f"{k} {v:.4f}" for k, v in probabilities.items()))
    return {"labels": labels, "accuracy": accuracy, "trained_accuracy": trained,
            "equals_trained_accuracy": equal, "input": split.x_test[0].tolist(), "artifact": str(loaded.path),
            "sha256": loaded.sha256, "label": labels[0], "probabilities": probabilities, "true_label": truth[0]}


def _check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file in it, so that a bad --out fails before training, not after."""
    import os


    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".kerasio-probe-{os.getpid()}.tmp-"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise writable_error(out, exc, "write the bundle there") from None


def _wrapping(echo: Callable[[str], None]) -> Callable[[str], None]:
    """``echo`` with stage lines wrapped to 100 columns under their text (tables already fit)."""
    import textwrap

    def say(text: str) -> None:
        lines = []
        for line in text.splitlines() or [""]:
            if len(line) <= 100 or line.lstrip().startswith("|"):
                lines.append(line)
            else:
                lines += textwrap.wrap(line, width=100, subsequent_indent=" " * 12, break_on_hyphens=False)
        echo("\n".join(lines))

    return say


INNER = 100 - 9  # tables under a stage line are indented by 9 columns: the whole line stays within 100


def _indent(text: str, pad: str = "         ") -> str:
    return "\n".join(pad + line for line in text.splitlines())


def _warm(chosen: Sequence[Any]) -> list[str]:
    """The runtimes the verifier imports at start (onnxruntime when ONNX will be checked)."""
    return ["keras"] + (["onnxruntime"] if any(f.runtime == "onnxruntime" for f in chosen) else [])


def _rehearse(chosen: Sequence[Any]) -> list[str]:
    """Training leaves the verifier idle after its import: it rehearses a tiny round trip of these meanwhile (a
    cold first load costs 0.1 s more). A SavedModel rehearsal would take as long as training does."""
    return [f.name for f in chosen if f.runtime == "keras" and not f.legacy and not f.needs_trust]


def _trace_png(trace: Any, session: Session) -> Callable[[], bytes]:
    """trace.png: asked of the verification worker now (its matplotlib is warm), collected when export needs it."""
    if not session.has(default_backend()):  # no worker (--in-process or --no-verify): draw it here
        return trace.png_bytes
    path = Path(session.start().tmp.name) / "trace.png"
    job = session.submit_job("recipe.render_png", records=trace.records, path=str(path))

    def collect() -> bytes:
        try:
            job.result()
        except KerasioError:
            return trace.png_bytes()
        return path.read_bytes()

    return collect
