"""The emulator's window of CUBA steps (``arithmetic.cuba_window``: the currents wrapped at once, the voltage in
int32) gives the integers of the step-by-step ``cuba_step`` loop it replaced: on random records and currents
(wrap, saturation, both resets, other decays) and, spike for spike, on the shipped LeNet-5's legalized graphs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi import emulator


def stepwise(state, currents, current_decay, voltage_decay, bias, threshold, subtract=False):
    """The emulator's loop before ``cuba_window``: one ``cuba_step`` per chip step."""
    out = np.zeros(currents.shape, np.uint8)
    for t in range(currents.shape[0]):
        state, s = la.cuba_step(state, currents[t], current_decay, voltage_decay, bias, threshold, subtract)
        out[t] = s
    return state, out


@pytest.mark.parametrize("seed", range(12))
def test_the_window_equals_the_step_loop_on_random_records(seed):
    rng = np.random.default_rng(seed)
    shape = (5, 3, 4, 4)  # T, batch, channels, width
    fast_record = seed % 3 != 2  # the records of loihi-quantize (du = 4095, dv = 0), else any decays
    current_decay = la.DECAY_UNIT if fast_record else int(rng.integers(1, la.DECAY_UNIT + 1))
    voltage_decay = 0 if fast_record else int(rng.integers(0, la.DECAY_UNIT))
    big = seed % 2 == 0  # currents beyond 24 bits (the wrap) and near the voltage's limit (the saturation)
    scale = 1 << 25 if big else 1 << 14
    currents = rng.integers(-scale, scale, shape, dtype=np.int64)
    bias = int(rng.integers(-scale >> 10, scale >> 10)) << 6 if seed % 4 else 0
    threshold = la.record_threshold(int(rng.integers(1, min(1 << 17, scale >> 8))))
    v0 = rng.integers(-threshold, threshold, shape[1:], dtype=np.int64)
    for subtract in (False, True):
        start = la.CubaState(np.zeros(shape[1:], np.int64), v0.copy())
        want_state, want = stepwise(start, currents, current_decay, voltage_decay, bias, threshold, subtract)
        got_state, got = la.cuba_window(la.CubaState(np.zeros(shape[1:], np.int64), v0.copy()), currents,
                                        current_decay, voltage_decay, bias, threshold, subtract)
        assert got.dtype == np.uint8 and want.sum() > 0
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got_state.v, want_state.v)
        np.testing.assert_array_equal(got_state.u, want_state.u)
        if big and fast_record:  # the test reached the wrap and the saturation
            assert np.abs(currents).max() >= la.STATE_LIMIT


@pytest.mark.parametrize("variant", ["loihi1", "loihi2"])
def test_lenet5s_legalized_graph_gives_the_same_spikes_as_the_step_loop(variant, monkeypatch):
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from snncc.passes import run_pipeline
    from snncc.targets.base import get_target
    from tests.conftest import MODELS, data_dir

    model = MODELS / "lenet5-mnist.onnx"
    if not model.is_file():
        pytest.skip(f"{model} is not built yet (python models/train.py lenet5-mnist)")
    calibration, _ = load_dataset(data_dir("mnist"), split="train", limit=200)
    x, _ = load_dataset(data_dir("mnist"), split="test", limit=8)
    scaling = InputScaling.from_json(json.loads((MODELS / "lenet5-mnist.json").read_text())["input_scaling"])
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    hw = run_pipeline(graph, get_target(variant).pipeline)
    fast = emulator.LoihiEmulator(hw, 32, variant, compiled=False).run_batch(x)
    monkeypatch.setattr(la, "cuba_window", stepwise)
    slow = emulator.LoihiEmulator(hw, 32, variant, compiled=False).run_batch(x)
    assert fast.spikes.keys() == slow.spikes.keys() and sum(float(s.sum()) for s in slow.spikes.values()) > 10_000
    for node in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[node], slow.spikes[node], err_msg=node)
    np.testing.assert_array_equal(fast.outputs[0], slow.outputs[0])
    np.testing.assert_array_equal(fast.synops, slow.synops)
