"""Shared fixtures: one real training run and one bundle of every format per session."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# The session"s own record of the bundles it exports (kerasio.bundle.trust), never the user"s ~/.kerasio; the CLI
# processes the tests start inherit it.
os.environ["KERASIO_HOME"] = tempfile.mkdtemp(prefix="kerasio-home-")

from bundles import copy_bundle, named  # noqa: F401

import kerasio  # noqa: E402

EPOCHS = 3


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A real pipeline run on the embedded data, every format, verification left to the tests."""
    out = tmp_path_factory.mktemp("bundle") / "seed"
    return kerasio.run_pipeline(config=kerasio.TrainConfig(epochs=EPOCHS), out=out, formats="all", trust=True,
                                verify=False, echo=None)


@pytest.fixture(scope="session")
def bundle(pipeline) -> Path:
    """The session bundle; read-only by convention (copy it with ``bundle_copy`` to change it)."""
    return pipeline.bundle


@pytest.fixture
def bundle_copy(bundle, tmp_path) -> Path:
    dest = tmp_path / "bundle"
    copy_bundle(bundle, dest)
    return dest


@pytest.fixture(scope="session")
def keras_bundle(pipeline, tmp_path_factory) -> Path:
    """A small keras+savedmodel bundle of the same model, for tests that modify files."""
    out = tmp_path_factory.mktemp("kb") / "b"
    info = kerasio.BundleInfo(feature_names=pipeline.dataset.feature_names, class_names=pipeline.dataset.class_names,
                              training=kerasio.read_manifest(pipeline.bundle).training)
    kerasio.export(pipeline.model, out, reference_inputs=pipeline.split.x_test, info=info)
    return out


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# The longest files first, so that the two test processes (pytest -n, whole files each) end about together.
LONGEST = ("test_publishing.py", "test_backends.py", "test_zoo.py", "test_distribute.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: LONGEST.index(item.path.name) if item.path.name in LONGEST else len(LONGEST))
