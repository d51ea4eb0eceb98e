"""Shared fixtures: paths to the real data sets and small IR graphs built directly (no ONNX, no torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from snncc.ir import Graph, ops

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("SNNCC_DATA", REPO.parent / "shared" / "data"))
MODELS = REPO / "models"


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
