"""The option objects the verbs take: what a bundle records besides the model, and how it is verified.

Options that belong together travel as one small frozen dataclass, so that
no verb takes more than ten parameters; options that belong to one format
travel in ``format_options[name]`` (see each format's ``options``).

Example:
    >>> info = BundleInfo(class_names=["setosa", "versicolor", "virginica"], label="species")
    >>> checks = VerifyOptions(rtol=1e-4, atol=1e-5)
    >>> kerasio.export(model, "saved_models/iris", reference_inputs=x, info=info, verify=checks)  # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from kerasio.backends.environment import PRECISIONS
from kerasio.errors import InputError
from kerasio.formats import REGISTRY
from kerasio.spec.divergence import METHODS as EXPLAIN_METHODS
from kerasio.spec.limits import Limits
from kerasio.spec.quantization import gates_for
from kerasio.spec.synth import SyntheticInputs
from kerasio.spec.tolerances import check_statistic

if TYPE_CHECKING:
    from kerasio.process.session import Session

__all__ = ["BundleInfo", "VerifyOptions", "SyntheticInputs", "MODES", "verify_options", "in_mode", "check_format_options"]

MODES = ("fresh-process", "in-process")


@dataclass(frozen=True)
class BundleInfo:
    """What a bundle records about the model besides its artifacts.

    Attributes:
        task: ``auto`` (a single softmax output or sigmoid unit is a classification), ``classification``,
            ``regression`` or ``raw``.
        feature_names: column names of a single 2-D input (default ``f0, f1, ...``).
        class_names: names of the classes of a classification (default ``0, 1, ...``).
        label: the label column's name, for tables of predictions.
        trace: the training trace, one dict per epoch.
        metrics: test metrics by name.
        training: how the model was trained (a dict of JSON values).
        attachments: extra files, by plain file name: bytes, or a callable returning bytes (or ``None`` to
            skip), called once the artifacts are written; hashed and listed in the manifest.
        labels: the true class index of each reference row (a classifier's), stored hashed as
            ``reference_labels.npz``: a quantized artifact's gates then measure the accuracy it loses.
    """

    task: str = "auto"
    feature_names: Sequence[str] | None = None
    class_names: Sequence[str] | None = None
    label: str = "label"
    trace: Sequence[dict[str, Any]] = ()
    metrics: Mapping[str, float] | None = None
    training: Mapping[str, Any] | None = None
    attachments: Mapping[str, bytes | Callable[[], bytes | None]] | None = None
    labels: Sequence[int] | Any = None


@dataclass(frozen=True)
class VerifyOptions:
    """How artifacts are verified.

    Attributes:
        mode: ``fresh-process`` (the default: a fresh interpreter, sandboxed for a bundle that is not yours) or
            ``in-process`` (this interpreter: faster, but a class registered here could hide a broken artifact;
            only for a bundle that is yours).
        device: ``auto`` (GPU when the runtime sees one), ``cpu``, ``gpu`` or ``all`` (every device, plus the
            CPU-vs-GPU drift).
        backend: Keras backend for the backend-agnostic formats (``tensorflow``, ``jax`` or ``torch``); each
            format says what it needs (SavedModel: TensorFlow).
        precision: ``highest`` pins float32 matmuls; ``fast`` allows TF32 on GPUs.
        rtol, atol: override the tolerance table (both default to the table's row); the report records them.
        statistic: the error statistic the tolerance applies to, overriding the table's row: ``elementwise``
            (every element), ``max``, ``mean``, ``median`` or ``quantile:Q`` (``quantile:0.99``); one for every
            output, or a dict ``{output name: statistic}`` (see :func:`kerasio.spec.tolerances.compare_cases`).
        explain: find the first layer where an artifact leaves the original (``kerasio.process.explain``):
            ``None`` (default) on every check that fails on its values, ``True`` on every check, ``False`` never.
        explain_method: ``auto`` (read the artifact's own tensors where its runtime can, else bisect),
            ``intermediates`` or ``bisect`` (export prefix sub-models of the original and compare them).
        calibrate: also measure each artifact's own numerical noise on the device (the same input twice, and the
            input moved by one ulp) and flag a tolerance row looser than 1000x that noise or tighter than it.
        gates: a quantized artifact's gates, ``{metric: threshold}`` replacing or adding to the defaults of
            :data:`kerasio.spec.quantization.GATES` (``{"top1_agreement": 0.995, "accuracy_drop": 0.005}``).
        repro_dir: where a failing check writes its reproduction kit (the failing inputs, both sides' outputs, the
            artifact and a script that runs the comparison without kerasio); default: ``<bundle>/repro`` when
            the report is recorded there, else none.
        imports: modules to import before loading (custom layers).
        allow_ops: SavedModel op names to accept beyond the inference allowlist (recorded in the report).
        limits: the sandboxed worker's :class:`~kerasio.Limits` (default: derived from the artifacts' sizes).
        session: a :class:`~kerasio.Session` whose workers to use (started earlier, so that their import
            overlapped your work); it stays open.
    """

    mode: str = "fresh-process"
    device: str = "auto"
    backend: str | None = None
    precision: str = "highest"
    rtol: float | None = None
    atol: float | None = None
    statistic: str | Mapping[str, str] | None = None
    explain: bool | None = None
    explain_method: str = "auto"
    calibrate: bool = False
    gates: Mapping[str, float] | None = None
    repro_dir: str | Path | None = None
    imports: Sequence[str] = ()
    allow_ops: Sequence[str] = ()
    limits: Limits | None = None
    session: Session | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {', '.join(MODES)}; received: mode={self.mode!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}; received: precision={self.precision!r}")
        for name in ("rtol", "atol"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and value >= 0):
                raise InputError(f"{name} must be a number >= 0; pass e.g. {name}=1e-5. Received: {name}={value!r}")

        gates_for("classification", self.gates)  # an unknown metric is refused now, before anything runs
        if self.explain_method not in EXPLAIN_METHODS:
            raise InputError(f"explain_method must be one of {', '.join(EXPLAIN_METHODS)}; received: "
                             f"explain_method={self.explain_method!r}")
        given = self.statistic if isinstance(self.statistic, Mapping) else {"*": self.statistic}
        for value in given.values():
            if value is not None:
                check_statistic(value)

    @property
    def in_process(self) -> bool:
        return self.mode == "in-process"

    def statistic_for(self, output: str) -> str | None:
        """The statistic the caller chose for ``output`` (None: the tolerance row's)."""
        if isinstance(self.statistic, Mapping):
            return self.statistic.get(output)
        return self.statistic


def verify_options(verify: bool | str | VerifyOptions | None) -> VerifyOptions | None:
    """``verify=`` as export and the pipeline take it: ``False``/``None`` (none), ``True`` or a mode, or options."""
    if verify is None or verify is False:
        return None
    if verify is True:
        return VerifyOptions()
    if isinstance(verify, VerifyOptions):
        return verify
    if isinstance(verify, str) and verify in MODES:
        return VerifyOptions(mode=verify)
    raise InputError(f"verify must be True, False, 'fresh-process' or 'in-process' (or a VerifyOptions); received: "
                     f"verify={verify!r}")


def in_mode(options: VerifyOptions | None, in_process: bool) -> VerifyOptions:
    """``options`` (default: the defaults), in-process when ``in_process`` says so."""
    options = options or VerifyOptions()
    return replace(options, mode="in-process") if in_process else options


def check_format_options(format_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """``format_options`` checked against each format's declared ``options``; an unknown name is refused."""
    checked: dict[str, dict[str, Any]] = {}
    for name, given in (format_options or {}).items():
        fmt = REGISTRY.get(name)
        if fmt is None:
            raise InputError(f"format_options names format {name!r}, which is not registered (known: "
                             f"{', '.join(REGISTRY)}). Received: format_options[{name!r}]")
        if not isinstance(given, Mapping):
            raise InputError(f"format_options[{name!r}] must be a dict of options; received: {given!r}")
        for option in given:
            if option not in fmt.options:
                known = ", ".join(fmt.options) or "none"
                raise InputError(f"the {name} format has no option {option!r} (its options: {known}). "
                                 f"Received: format_options[{name!r}][{option!r}]")
        checked[name] = dict(given)
    return checked
