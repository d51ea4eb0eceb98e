"""Small rate-coded SNNs for the target tests, built by hand (no calibration, no data)."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.data import InputScaling
from snncc.ir import IF, SNN, Graph, ops


def small_snn(channels: int = 4, signed: bool = False, seed: int = 0) -> Graph:
    """Input 1x8x8 (pixels 0..255, scaled by 1/255 and normalized) -> conv 3x3 pad 1 -> IF -> spiking max pool
    -> flatten -> linear -> IF -> linear -> readout."""
    rng = np.random.default_rng(seed)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 8, 8), name="x"), name="x")
    conv = g.add(ops.Conv2d(weight=rng.normal(0, 0.6, (channels, 1, 3, 3)).astype(np.float32),
                            bias=rng.normal(0, 0.1, channels).astype(np.float32), padding=(1, 1, 1, 1),
                            pad_value=np.array([0.2], np.float32)), [x], name="conv")
    s1 = g.add(ops.Population(neuron=IF(threshold=1.0, signed=signed)), [conv], name="s1")
    pool = g.add(ops.SpikingMaxPool2d(kernel=(2, 2), stride=(2, 2)), [s1], name="pool")
    flat = g.add(ops.Flatten(), [pool], name="flat")
    fc = g.add(ops.Linear(weight=rng.normal(0, 0.3, (12, channels * 16)).astype(np.float32),
                          bias=rng.normal(0, 0.05, 12).astype(np.float32)), [flat], name="fc")
    s2 = g.add(ops.Population(neuron=IF(threshold=1.0, signed=signed)), [fc], name="s2")
    out = g.add(ops.Linear(weight=rng.normal(0, 0.5, (3, 12)).astype(np.float32),
                           bias=np.zeros(3, np.float32)), [s2], name="out")
    g.outputs = [g.add(ops.Readout(), [out], name="readout")]
    g.attrs["input_scaling"] = InputScaling(scale=1 / 255, mean=0.2, std=0.5).to_json()
    g.attrs["pipeline"] = "canonicalize,normalize,convert-rate"
    return g


@pytest.fixture
def snn() -> Graph:
    return small_snn()


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, size=(16, 1, 8, 8)).astype(np.uint8)
