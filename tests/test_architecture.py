"""The layout's rules, proven: wings import only downwards and never in a cycle; the verbs stay short; the face is
small; a format, a worker job and a backend are each one module that plugs in with no other file touched."""
from __future__ import annotations

import ast
import inspect
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

import kerasio
from kerasio.cli import main
from kerasio.errors import WorkerError
from kerasio.formats import REGISTRY
from kerasio.process.server import handle

ROOT = Path(kerasio.__file__).resolve().parent
# The wings, lowest first: a module may import its own wing (without a cycle) and the wings below it.
WINGS = [
    ("ground", ["kerasio.errors", "kerasio._version"]),
    ("spec", ["kerasio.spec"]),
    ("present", ["kerasio.present"]),
    ("bundle", ["kerasio.bundle"]),
    ("backends", ["kerasio.backends"]),
    ("formats", ["kerasio.formats"]),
    ("process", ["kerasio.process"]),
    ("verbs", ["kerasio.options", "kerasio.repro", "kerasio.compare", "kerasio.export", "kerasio.verify",
               "kerasio.loading", "kerasio.predict", "kerasio.report"]),
    ("recipe", ["kerasio.recipe"]),
    ("face", ["kerasio.cli", "kerasio.__main__", "kerasio"]),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each module's kerasio imports: (at module level, inside functions). ``if TYPE_CHECKING:`` blocks are not
    imports at run time and are left out."""
    top: dict[str, set[str]] = defaultdict(set)
    inner: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.dump(child.test):
                    continue
                targets: list[str] = []
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        base = ".".join(package.split(".")[:len(package.split(".")) - child.level + 1]
                                        + ([child.module] if child.module else []))
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in child.names]
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                for target in targets:
                    if target in modules and target != name:
                        (inner if in_function else top)[name].add(target)
                visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return top, inner


def _wing(module: str) -> int:
    best = max(((i, len(p)) for i, (_, prefixes) in enumerate(WINGS) for p in prefixes
                if module == p or module.startswith(p + ".")), key=lambda t: t[1], default=None)
    assert best is not None, f"{module} belongs to no wing: add it to WINGS (and to the README's architecture)"
    return best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            connect(v)
    return found


def test_every_module_is_in_a_wing_and_imports_only_its_own_and_lower_wings():
    modules = _modules()
    top, inner = _imports(modules)
    upward = [f"{m} -> {t}" for m in modules for t in sorted(top[m] | inner[m]) if _wing(t) > _wing(m)]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    top, inner = _imports(modules)
    graph = {m: top[m] | inner[m] for m in modules}
    assert _cycles(graph) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    """The two checks above can fail: a cycle and an upward import, made up, are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _wing("kerasio.process.session") > _wing("kerasio.formats.base")
    assert _wing("kerasio.bundle.audit.keras") == _wing("kerasio.bundle.manifest")


def test_imports_inside_functions_are_only_the_clis_start_up():
    """Modules import their kerasio dependencies at the top, where a reader sees them (they need only numpy); only
    the CLI defers the training recipe and the report page, which ``kerasio --help`` and ``inspect`` never load
    (``import kerasio`` loads everything else anyway)."""
    _, inner = _imports(_modules())
    deferred = sorted(f"{m} -> {t}" for m, targets in inner.items() for t in targets
                      if not (m == "kerasio.cli" and t.startswith(("kerasio.recipe", "kerasio.report"))))
    assert deferred == []


@pytest.mark.parametrize("verb", [kerasio.export, kerasio.verify, kerasio.load, kerasio.predict,
                                  kerasio.recipe.run_pipeline, kerasio.loading.load_isolated])
def test_verbs_take_at_most_ten_parameters(verb):
    assert len(inspect.signature(verb).parameters) <= 10, verb.__name__


def test_the_face_has_at_most_twenty_names_and_each_resolves():
    assert len(kerasio.__all__) <= 20
    for name in kerasio.__all__:
        assert getattr(kerasio, name) is not None, name


def test_a_name_that_moved_behind_the_face_still_resolves_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"kerasio.DataError moved to kerasio.errors.DataError"):
        assert kerasio.DataError is kerasio.errors.DataError
    with pytest.warns(DeprecationWarning, match=r"kerasio.Signature moved to kerasio.spec.iospec.IOSpec"):
        assert kerasio.Signature is kerasio.IOSpec
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        kerasio.nonsense  # noqa: B018


def test_each_registered_format_lives_in_one_module_of_its_own():
    modules = [type(fmt).__module__ for fmt in REGISTRY.values()]
    assert len(set(modules)) == len(modules)
    assert all(m.startswith("kerasio.formats.") for m in modules)


# A plug-in format, end to end.


@pytest.fixture
def npzdense():
    import plugin_format

    REGISTRY.setdefault(plugin_format.FORMAT.name, plugin_format.FORMAT)
    yield plugin_format.FORMAT
    REGISTRY.pop(plugin_format.FORMAT.name, None)  # the other tests see the shipped formats only


def _dense_model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((4,), name="features")
    hidden = keras.layers.Dense(8, activation="relu")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden))
    return model, np.random.default_rng(0).normal(size=(16, 4)).astype("float32")


def test_a_format_registered_from_a_test_file_is_exported_verified_loaded_and_listed(npzdense, tmp_path, capsys):
    model, x = _dense_model()
    out = tmp_path / "b"
    result = kerasio.export(model, out, reference_inputs=x, formats="keras,npzdense", verify=True,
                            format_options={"npzdense": {"dtype": "float32"}})
    check = next(c for c in result.report.checks if c.format == "npzdense")
    assert check.passed and check.runtime == "numpy" and 0 < check.max_abs_diff <= 1e-5
    assert check.tolerance_reason == npzdense.tolerances[0].reason  # the format's own row
    assert [a.format for a in result.manifest.artifacts] == ["keras", "npzdense"]
    assert result.manifest.artifact("npzdense").info == {"layers": 2}
    # verified again as someone else's bundle would be: a sandboxed worker that imports the format's module
    again = kerasio.verify(out, formats="npzdense", record=False)
    assert again.ok and again.mode == "fresh-process" and "landlock" in " ".join(again.sandbox.values())
    with kerasio.load(out, format="npzdense") as loaded:  # yours: loaded here, run by numpy
        got = loaded.run(x)["probabilities"]
        assert loaded.runner.runtime == "numpy"
    assert np.allclose(got, model.predict_on_batch(x), atol=1e-5)
    with pytest.raises(SystemExit):
        main(["--help"])
    help_text = capsys.readouterr().out
    assert "npzdense   a stack of Dense layers as numpy arrays" in help_text
    assert "--format-option npzdense.dtype=VALUE" in help_text
    assert main(["inspect", str(out)]) == 0
    assert "npzdense" in capsys.readouterr().out


def test_a_plug_in_formats_unknown_option_is_refused_before_anything_is_written(npzdense, tmp_path):
    model, x = _dense_model()
    with pytest.raises(kerasio.errors.InputError,
                       match=r"the npzdense format has no option 'shards' \(its options: dtype\)"):
        kerasio.export(model, tmp_path / "b", reference_inputs=x, formats="npzdense",
                       format_options={"npzdense": {"shards": 2}})
    assert not (tmp_path / "b").exists()


# A plug-in worker job, and the worker's refusal of any other.


def test_a_job_registered_from_a_test_file_runs_in_a_fresh_worker_and_an_unregistered_one_is_refused():
    import plugin_job  # noqa: F401  (registers tests.add here too, as a caller's module does)

    with kerasio.Session(imports=["plugin_job"]) as session:
        assert session.job("tests.add", a=2, b=40) == 42
        with pytest.raises(WorkerError, match=r"the worker runs only registered jobs, and 'tests.nope' is not one"):
            session.job("tests.nope")
    with kerasio.Session() as session:  # a worker that never imported the job's module does not know it
        with pytest.raises(WorkerError, match=r"'tests.add' is not one \(registered: .*save_format"):
            session.job("tests.add", a=1, b=1)


def test_a_request_that_names_code_to_import_is_refused():
    """0.2's ``call`` operation imported any kerasio function named in the request; the protocol has no such
    operation now, and a request with an unknown field is refused too."""
    answer = handle({"op": "call", "target": "kerasio.recipe.trace:render_png", "args": [[], "/tmp/x.png"]})
    assert answer["ok"] is False and answer["type"] == "WorkerError"
    assert answer["error"].startswith("the worker knows the operations check, open, run, job, warm, rehearse, status")
    answer = handle({"op": "job", "name": "save_format", "target": "os:system"})
    assert answer["ok"] is False and "a job request has no field 'target'" in answer["error"]


# A plug-in backend.


def test_a_backend_registered_from_a_test_file_runs_the_checks_of_its_worker(tmp_path):
    """Keras's numpy backend has no kerasio module; a test registers one, and a verify under it uses its verbs."""
    model, x = _dense_model()
    out = tmp_path / "b"
    kerasio.export(model, out, reference_inputs=x, formats="keras")
    report = kerasio.verify(out, options=kerasio.VerifyOptions(backend="numpy", imports=("plugin_backend",)),
                            record=False)
    check = report.checks[0]
    assert report.ok and check.backend == "numpy" and check.device_name.startswith("numpy plug-in on ")
    assert check.max_abs_diff <= 1e-6  # another backend's kernels: the table's cross-backend row
