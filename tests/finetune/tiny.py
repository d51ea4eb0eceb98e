"""A tiny converted SNN and a training set it can learn from, shared by the fine-tuning tests."""

from __future__ import annotations

import numpy as np

from snncc.data import InputScaling
from snncc.ir import Graph
from snncc.passes import PassContext, run_pipeline
from snncc.runtime import run_analog
from tests.conftest import small_cnn

SCALING = InputScaling(scale=1 / 255)


def training_set(n: int = 64, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` 1x12x12 images as stored (0..255 pixels) labelled by the ANN's own predictions."""
    x = np.random.default_rng(seed).integers(0, 256, (n, 1, 12, 12)).astype(np.float32)
    logits = run_analog(small_cnn(), SCALING.apply(x))[0]
    return x, logits.argmax(axis=1).astype(np.int64)


def converted_cnn() -> Graph:
    """``small_cnn`` converted with the default rate pipeline (IF neurons, spiking max pooling, readout), with the
    input scaling x / 255 recorded as compile records it."""
    x, _ = training_set(64, seed=2)
    graph = run_pipeline(small_cnn(), "canonicalize,normalize,convert-rate", PassContext(calibration=SCALING.apply(x)))
    graph.attrs["input_scaling"] = SCALING.to_json()
    return graph
