"""Shared fixtures: paths to the real data sets and small IR graphs built directly (no ONNX, no torch).

``SNNCC_TEST_BACKEND=cython python -m pytest`` runs every test that simulates through ``Simulator`` (or the API and
command line) on the Cython runtime instead of the numpy reference; tests of ``ReferenceSimulator`` itself stay on
the reference. The Cython runtime must be built (``python -m pip install -e .``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from snncc.ir import Graph, ops

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SNNCC_DATA", REPO.parent / "shared" / "data"))
MODELS = REPO / "models"
TEST_BACKEND = os.environ.get("SNNCC_TEST_BACKEND", "reference")


def pytest_configure(config: pytest.Config) -> None:
    from snncc.runtime import BACKENDS, BUILD_HINT, cython_available

    if TEST_BACKEND not in BACKENDS:
        raise pytest.UsageError(f"SNNCC_TEST_BACKEND={TEST_BACKEND!r}; choose one of {', '.join(BACKENDS)}")
    if TEST_BACKEND == "cython" and not cython_available()[0]:
        raise pytest.UsageError(f"SNNCC_TEST_BACKEND=cython but the Cython runtime is not built "
                                f"({cython_available()[1]}); {BUILD_HINT}")


def pytest_report_header(config: pytest.Config) -> str:
    return f"snncc simulation backend: {TEST_BACKEND} (set SNNCC_TEST_BACKEND=reference|cython)"


@pytest.fixture(autouse=True)
def _fit_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """FS fits of the tests are cached in a temporary directory, never in the user's cache."""
    monkeypatch.setenv("SNNCC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "snncc-cache"))


@pytest.fixture(autouse=True)
def _simulation_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    """Every Simulator created without an explicit backend uses the backend under test."""
    import snncc.runtime

    monkeypatch.setattr(snncc.runtime, "DEFAULT_BACKEND", TEST_BACKEND)
    return TEST_BACKEND


def assert_same_results(expected, got, peaks: bool = False) -> None:
    """Two engines' :class:`~snncc.runtime.reference.BatchResult` of one batch are identical: spikes per population
    and step, outputs, synaptic operations (and the most spikes of one neuron, with ``peaks``)."""
    assert got.spikes.keys() == expected.spikes.keys()
    for name in expected.spikes:
        np.testing.assert_array_equal(got.spikes[name], expected.spikes[name], err_msg=name)
    for a, b in zip(expected.outputs, got.outputs):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(got.synops, expected.synops)
    if peaks:
        assert got.max_spikes_per_neuron == expected.max_spikes_per_neuron


def data_dir(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"real data set {path} is not available (set SNNCC_DATA)")
    return path


def small_cnn(seed: int = 0, maxpool: bool = True) -> Graph:
    """An ANN-level CNN on 1x12x12 inputs: conv-relu-(maxpool)-conv-relu-flatten-linear-relu-linear."""
    rng = np.random.default_rng(seed)
    g = Graph()
    x = g.add(ops.Input(shape=(1, 12, 12)), name="input")
    c1 = g.add(ops.Conv2d(weight=rng.normal(0, 0.5, (4, 1, 3, 3)), bias=rng.normal(0, 0.1, 4),
                          padding=(1, 1, 1, 1)), [x], name="conv1")
    h = g.add(ops.Relu(), [c1], name="relu1")
    if maxpool:
        h = g.add(ops.MaxPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool1")
    else:
        h = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [h], name="pool1")
    c2 = g.add(ops.Conv2d(weight=rng.normal(0, 0.3, (6, 4, 3, 3)), bias=rng.normal(0, 0.1, 6)), [h], name="conv2")
    h = g.add(ops.Relu(), [c2], name="relu2")
    h = g.add(ops.Flatten(), [h], name="flatten")
    f1 = g.add(ops.Linear(weight=rng.normal(0, 0.2, (16, 6 * 4 * 4)), bias=rng.normal(0, 0.1, 16)), [h], name="fc1")
    h = g.add(ops.Relu(), [f1], name="relu3")
    f2 = g.add(ops.Linear(weight=rng.normal(0, 0.3, (5, 16)), bias=rng.normal(0, 0.1, 5)), [h], name="fc2")
    g.outputs = [f2]
    return g


@pytest.fixture
def cnn() -> Graph:
    return small_cnn()


@pytest.fixture
def inputs() -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (64, 1, 12, 12)).astype(np.float32)
