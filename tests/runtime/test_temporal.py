"""FS and AMOS dynamics, the temporal simulator's schedule, and the Cython units against the numpy specification."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import IRError
from snncc.ir import Amos, FewSpike, load, save
from snncc.passes import PassContext, run_pipeline
from snncc.passes.fs_fit import relu_closed_form
from snncc.runtime import Simulator, TemporalSimulator, cython_available
from snncc.runtime.dynamics import run_window as few_spike
from snncc.runtime.dynamics import run_window as amos


def _random_fs(rng: np.random.Generator, k: int) -> FewSpike:
    return FewSpike(threshold=tuple(rng.normal(0, 1, k)), height=tuple(rng.normal(0.5, 0.5, k)),
                    weight=tuple(rng.normal(0, 1, k)), offset=float(rng.normal()))


@pytest.mark.parametrize("k, alpha", [(1, 1.0), (4, 1.0), (8, 2.5), (10, 0.3)])
def test_fs_relu_closed_form_is_relu_rounded_to_k_bits(k, alpha):
    x = np.linspace(-1, 2 * alpha, 20001, dtype=np.float32)
    out, spikes = few_spike(relu_closed_form(k, alpha), x)
    levels = np.clip(np.floor(np.maximum(x, 0) / alpha * 2 ** k + 0.5), 0, 2 ** k - 1)
    expected = levels * alpha / 2 ** k
    # Inputs within float rounding of a rounding boundary may land on either side: at most one level apart there.
    off = ~np.isclose(out, expected, rtol=0, atol=1e-6 * alpha)
    assert off.mean() < 1e-3
    assert np.all(np.abs(out - expected)[off] <= alpha / 2 ** k + 1e-6)
    # the spikes are the binary digits of the level: one spike per set bit
    np.testing.assert_array_equal(spikes.sum(axis=0)[~off], [bin(int(v)).count("1") for v in levels[~off]])


def test_amos_from_fs_computes_the_same_values_and_spikes():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 2, (50, 7)).astype(np.float32)
    for k in (1, 2, 5, 9):
        fs = _random_fs(rng, k)
        out_fs, spikes_fs = few_spike(fs, x)
        out_amos, spikes_amos = amos(Amos.from_few_spike(fs), x)
        np.testing.assert_array_equal(out_fs, out_amos)
        np.testing.assert_array_equal(spikes_fs, spikes_amos)


def test_neuron_models_validate_their_parameters():
    with pytest.raises(IRError, match="height has 2 values, expected 3"):
        FewSpike(threshold=(1, 2, 3), height=(1, 2), weight=(1, 2, 3))
    with pytest.raises(IRError, match="inhibition has 1 values, expected 3"):
        Amos(threshold=(1, 2, 3), weight=(1, 2, 3), gain=(1, 1, 1), inhibition=(0.5,))
    with pytest.raises(IRError, match="finite"):
        FewSpike(threshold=(np.nan,), height=(1,), weight=(1,))


def _fs_graph(cnn, inputs, method="fs", steps=6):
    return run_pipeline(cnn, f"canonicalize,normalize,convert-{method}{{steps={steps}}}",
                        PassContext(calibration=inputs))


def test_latency_windows_and_spike_placement(cnn, inputs):
    graph = _fs_graph(cnn, inputs, steps=5)
    sim = TemporalSimulator(graph)
    assert sim.latency == 3 * 5  # three populations in a chain
    result = sim.run_batch(inputs)
    starts = sorted(sim.start[n] for n in sim.populations())
    assert starts == [0, 5, 10]
    for node, per_step in result.spikes.items():
        active = np.nonzero(per_step.sum(axis=1))[0]
        assert active.min() >= sim.start[node] and active.max() < sim.start[node] + 5
    out = result.outputs[0]
    assert np.all(out[:sim.latency - 1] == 0) and np.any(out[sim.latency - 1] != 0)


def test_pipelined_stream_gives_the_same_result_one_input_every_k_steps(cnn, inputs):
    graph = _fs_graph(cnn, inputs, steps=4)
    sim = TemporalSimulator(graph)
    # one input at a time on both sides: the same BLAS call shapes, so the same bits
    singles = [sim.run_batch(inputs[i:i + 1]) for i in range(6)]
    stream, answered = sim.run_stream(inputs[:6])
    np.testing.assert_array_equal(stream.outputs[0], np.concatenate([r.outputs[0] for r in singles], axis=1))
    for node in singles[0].spikes:
        np.testing.assert_array_equal(stream.spikes[node], np.concatenate([r.spikes[node] for r in singles], axis=1))
    assert answered == [(i + 3) * 4 for i in range(6)]


def test_amos_neurons_fire_at_most_once_and_match_fs(cnn, inputs):
    fs = Simulator(_fs_graph(cnn, inputs, "fs"), None).run(inputs)
    am = Simulator(_fs_graph(cnn, inputs, "amos"), None).run(inputs)
    assert am.max_spikes_per_neuron == 1 and fs.max_spikes_per_neuron > 1
    np.testing.assert_array_equal(am.outputs, fs.outputs)  # ReLU units are exact, so AMOS = FS here
    assert am.total_neurons == 6 * fs.total_neurons


def test_fs_graph_round_trips_through_the_file_format(cnn, inputs, tmp_path):
    graph = _fs_graph(cnn, inputs, "amos")
    save(graph, tmp_path / "g.snn")
    again = load(tmp_path / "g.snn")
    a = Simulator(graph, None).run(inputs)
    b = Simulator(again, None).run(inputs)
    np.testing.assert_array_equal(a.outputs, b.outputs)
    assert [again.op(n).neuron for n in sorted(a.spikes)] == [graph.op(n).neuron for n in sorted(a.spikes)]


@pytest.mark.skipif(not cython_available()[0], reason="the Cython runtime is not built")
@pytest.mark.parametrize("method", ["fs", "amos"])
def test_cython_units_agree_spike_for_spike(cnn, inputs, method, monkeypatch):
    from snncc.runtime import graded_convolution

    monkeypatch.setattr(graded_convolution, "DEFAULT_CONVOLUTION", "reference")  # the reference's sums exactly
    graph = _fs_graph(cnn, inputs, method)
    ref = Simulator(graph, None, backend="reference").run(inputs)
    fast = Simulator(graph, None, backend="cython").run(inputs)
    np.testing.assert_array_equal(ref.outputs, fast.outputs)
    for node in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[node], fast.spikes[node])
    np.testing.assert_array_equal(ref.synops, fast.synops)


@pytest.mark.skipif(not cython_available()[0], reason="the Cython runtime is not built")
def test_cython_units_agree_on_random_parameters():
    from snncc.runtime import load_kernels

    kernels = load_kernels()
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, 4000).astype(np.float32)
    for k in (1, 3, 8):
        fs = _random_fs(rng, k)
        for neuron in (fs, Amos(threshold=fs.threshold, weight=fs.weight, gain=tuple(rng.normal(1, 0.3, k)),
                                inhibition=tuple(rng.normal(0.5, 0.5, k * (k - 1) // 2)), offset=fs.offset)):
            is_amos = isinstance(neuron, Amos)
            expected_out, expected_spikes = (amos if is_amos else few_spike)(neuron, x)
            out, spikes = np.empty_like(x), np.empty((k, x.size), np.uint8)
            f32 = lambda v: np.ascontiguousarray(v, np.float32)  # noqa: E731
            kernels.temporal_units(x, f32(neuron.threshold), f32(np.zeros(k) if is_amos else neuron.height),
                                   f32(neuron.weight), f32(neuron.gain if is_amos else np.ones(k)),
                                   neuron.inhibition_matrix() if is_amos else np.zeros((k, k), np.float32),
                                   np.float32(neuron.offset), is_amos, out, spikes, 2)
            np.testing.assert_array_equal(out, expected_out)
            np.testing.assert_array_equal(spikes, expected_spikes)
