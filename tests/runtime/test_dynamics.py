"""The dynamics table: every simulator and fit goes through it, numpy and torch give the same spikes, and the
surrogate spike functions have the stated forward and backward passes."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from snncc.errors import SimulationError
from snncc.ir import IF, LIF, SNN, Amos, FewSpike, Graph, ops
from snncc.passes.fs_fit import FitSettings, fit_few_spike, refine_amos
from snncc.runtime import dynamics
from snncc.runtime.dynamics import (DYNAMICS, HEAVISIDE, SURROGATES, Surrogate, dynamics_of, membrane_parameters,
                                    run_window)
from snncc.runtime.reference import ReferenceSimulator
from snncc.runtime.temporal import TemporalSimulator

QUICK = FitSettings(iterations=60, restarts=1, max_samples=256)


def _graph(neuron, shape=(3, 4, 4)):
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=shape), name="x")
    h = g.add(ops.Population(neuron=neuron), [h], name="pop")
    h = g.add(ops.Flatten(), [h])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.ones((2, int(np.prod(shape))))), [h])])]
    return g


def _fs(rng, k):
    return FewSpike(threshold=tuple(rng.uniform(0.05, 1, k)), height=tuple(rng.uniform(0, 1, k)),
                    weight=tuple(rng.normal(0, 1, k)), offset=float(rng.normal()))


def _amos(rng, k):
    return Amos(threshold=tuple(rng.uniform(0.05, 1, k)), weight=tuple(rng.normal(0, 1, k)),
                gain=tuple(rng.normal(1, 0.3, k)), inhibition=tuple(rng.normal(0.5, 0.5, k * (k - 1) // 2)),
                offset=float(rng.normal()))


@pytest.fixture
def counting(monkeypatch):
    """Replace the step or window function of a model's table entry by a wrapper that counts calls (and the array
    types it saw) and optionally changes the result; returns the list of calls."""

    def install(model, field, change=None):
        calls = []
        entry = DYNAMICS[model]
        original = getattr(entry, field)

        def wrapped(params, state_or_x, *args, **kwargs):
            calls.append(type(state_or_x.v if field == "step" else state_or_x).__module__.split(".")[0])
            result = original(params, state_or_x, *args, **kwargs)
            return change(result) if change else result

        monkeypatch.setitem(DYNAMICS, model, dataclasses.replace(entry, **{field: wrapped}))
        return calls

    return install


# ----------------------------------------------------------------------------------------------------------------
# Every path uses the table
# ----------------------------------------------------------------------------------------------------------------

def test_the_reference_simulator_steps_populations_through_the_table(counting):
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 4, 4)).astype(np.float32)
    before = ReferenceSimulator(_graph(IF()), 6).run_batch(x)
    calls = counting(IF, "step", change=lambda r: (r[0], r[1] * 0))  # silence every spike
    after = ReferenceSimulator(_graph(IF()), 6).run_batch(x)
    assert calls == ["numpy"] * 6
    assert before.spikes["pop"].sum() > 0 and after.spikes["pop"].sum() == 0
    assert np.all(after.outputs[0] == 0) and not np.all(before.outputs[0] == 0)


@pytest.mark.parametrize("model", [FewSpike, Amos])
def test_the_temporal_simulator_runs_windows_through_the_table(model, counting):
    rng = np.random.default_rng(1)
    neuron = _fs(rng, 4) if model is FewSpike else _amos(rng, 4)
    x = rng.uniform(-1, 2, (2, 3, 4, 4)).astype(np.float32)
    before = TemporalSimulator(_graph(neuron)).run_batch(x)

    def shifted(window):
        return dataclasses.replace(window, value=window.value + 1)

    calls = counting(model, "window", change=shifted)
    after = TemporalSimulator(_graph(neuron)).run_batch(x)
    assert calls == ["numpy"]
    np.testing.assert_allclose(after.outputs[0][-1], before.outputs[0][-1] + 3 * 16, rtol=1e-5)


def test_the_fs_and_amos_fits_run_their_torch_relaxations_and_scores_through_the_table(counting):
    samples = np.random.default_rng(2).normal(0, 1, 500).astype(np.float32)
    silu = lambda v: v / (1 + np.exp(-v))  # noqa: E731
    fs_before = fit_few_spike(silu, {"op": "Silu"}, samples, 4, settings=QUICK, cache=False)
    amos_before = refine_amos(silu, {"op": "Silu"}, samples, fs_before.neuron, settings=QUICK, cache=False)
    fs_calls = counting(FewSpike, "window", change=lambda w: dataclasses.replace(w, value=w.value * 0.5))
    amos_calls = counting(Amos, "window", change=lambda w: dataclasses.replace(w, value=w.value * 0.5))
    fs_after = fit_few_spike(silu, {"op": "Silu"}, samples, 4, settings=QUICK, cache=False)
    amos_after = refine_amos(silu, {"op": "Silu"}, samples, fs_before.neuron, settings=QUICK, cache=False)
    assert {"torch", "numpy"} <= set(fs_calls) and {"torch", "numpy"} <= set(amos_calls)
    assert fs_after.neuron != fs_before.neuron and fs_after.mse != fs_before.mse
    assert amos_after.mse != amos_before.mse


def test_unknown_models_and_kinds_are_refused_by_name():
    with pytest.raises(SimulationError, match="not a temporal"):
        dynamics_of(IF(), stepped=False)
    with pytest.raises(SimulationError, match="not a stepped"):
        dynamics_of(FewSpike(), stepped=True)

    @dataclasses.dataclass(frozen=True)
    class Izhikevich(IF):
        kind = "Izhikevich"

    with pytest.raises(SimulationError, match="no dynamics for neuron model Izhikevich; known models: AMOS, CubaLIF, FS, IF"):
        dynamics_of(Izhikevich())


# ----------------------------------------------------------------------------------------------------------------
# numpy and torch through the same functions
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("neuron", [IF(), IF(reset="zero", v_init=0.0, threshold=0.8), IF(signed=True),
                                    LIF(tau_mem=4.0, v_init=0.3), LIF(tau_mem=0.0, reset="zero", threshold=0.5),
                                    IF(threshold=(0.5, 1.0, 1.5), v_init=(0.5, 0.0, 0.25)),
                                    LIF(threshold=(0.7, 1.2, 1.0), tau_mem=(2.0, 8.0, 0.0))])
@pytest.mark.parametrize("spike", [HEAVISIDE, Surrogate("arctan", 0.3)])
def test_torch_and_numpy_give_the_same_spikes_and_states(neuron, spike):
    entry = dynamics_of(neuron, stepped=True)
    rng = np.random.default_rng(3)
    shape = (3, 5, 5)
    currents = rng.uniform(-0.6, 1.4, (30, 4) + shape).astype(np.float32)
    results = {}
    for name, xp in (("numpy", np), ("torch", torch)):
        params = entry.parameters(neuron, shape, xp)
        state = entry.start(params, (4,) + shape)
        trains, membranes = [], []
        for current in currents:
            state, s = entry.step(params, state, current if xp is np else torch.from_numpy(current), spike)
            trains.append(np.asarray(s))
            membranes.append(np.asarray(state.v))
        results[name] = np.stack(trains), np.stack(membranes)
    np.testing.assert_array_equal(results["torch"][0], results["numpy"][0])
    np.testing.assert_array_equal(results["torch"][1], results["numpy"][1])
    assert 0 < np.abs(results["numpy"][0]).mean() < 1
    if getattr(neuron, "signed", False):
        assert (results["numpy"][0] < 0).any()


@pytest.mark.parametrize("make", [_fs, _amos])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_torch_and_numpy_give_the_same_windows(make, k):
    rng = np.random.default_rng(4 + k)
    neuron = make(rng, k)
    entry = dynamics_of(neuron, stepped=False)
    x = rng.normal(0.5, 1, (64, 7)).astype(np.float32)
    value, spikes = run_window(neuron, x)
    window = entry.window(entry.parameters(neuron, x.shape[1:], torch), torch.from_numpy(x))
    np.testing.assert_array_equal(window.value.numpy(), value)
    np.testing.assert_array_equal(torch.stack(window.spikes).numpy(), spikes)
    assert 0 < spikes.mean() < 1


# ----------------------------------------------------------------------------------------------------------------
# Surrogate spike functions
# ----------------------------------------------------------------------------------------------------------------

CLOSED_FORMS = {  # d/dx of the spike at x = v - theta, width w, written out independently of the module
    "fast-sigmoid": lambda x, w: 1 / (2 * w * (1 + np.abs(x) / w) ** 2),
    "arctan": lambda x, w: 1 / (2 * w * (1 + (math.pi * x / (2 * w)) ** 2)),
    "triangle": lambda x, w: np.maximum(0, 1 - np.abs(x) / w) / w,
    "logistic": lambda x, w: np.exp(-x / w) / (w * (1 + np.exp(-x / w)) ** 2),
    "rectangle": lambda x, w: (np.abs(x) <= w) / (2 * w),
}


PRIMITIVES = {  # the smooth steps F(u) whose derivatives the surrogates are
    "fast-sigmoid": lambda u: 0.5 * (1 + u / (1 + abs(u))),
    "arctan": lambda u: math.atan(math.pi * u / 2) / math.pi + 0.5,
    "triangle": lambda u: 0.0 if u < -1 else 1.0 if u > 1 else 0.5 * (1 + u) ** 2 if u < 0 else 1 - 0.5 * (1 - u) ** 2,
    "logistic": lambda u: 0.5 * (1 + math.tanh(u / 2)),
    "rectangle": lambda u: min(1.0, max(0.0, (u + 1) / 2)),
}


def test_every_surrogate_has_a_closed_form_here():
    assert set(SURROGATES) == set(CLOSED_FORMS)


@pytest.mark.parametrize("shape", sorted(CLOSED_FORMS))
@pytest.mark.parametrize("width", [0.25, 1.0])
def test_surrogate_backward_is_the_stated_derivative_and_forward_is_heaviside(shape, width):
    grid = np.linspace(-3, 3, 601)
    theta = 0.4
    v = torch.tensor(grid + theta, dtype=torch.float64, requires_grad=True)
    threshold = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    surrogate = Surrogate(shape, width)
    spikes = surrogate(v, threshold)
    np.testing.assert_array_equal(spikes.detach().numpy(), (v.detach().numpy() >= theta).astype(np.float64))
    weights = torch.linspace(0.5, 1.5, len(grid), dtype=torch.float64)
    (spikes * weights).sum().backward()
    expected = CLOSED_FORMS[shape](v.detach().numpy() - theta, width)
    np.testing.assert_allclose(v.grad.numpy(), weights.numpy() * expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(threshold.grad.item(), -(weights.numpy() * expected).sum(), rtol=1e-12)
    # each derivative is that of a smooth step from 0 to 1, so it integrates to 1 as the Dirac delta it stands for
    a, b = grid[0] / width, grid[-1] / width
    # (the rectangle jumps by 1/(2w) at each of its two edges: there the trapezoid rule is off by up to half a grid
    # step (0.01) times the jump, 0.005 / w for both edges; allowed: twice that)
    tolerance = 0.01 / width if shape == "rectangle" else 2e-3
    assert np.trapezoid(expected, grid) == pytest.approx(PRIMITIVES[shape](b) - PRIMITIVES[shape](a), abs=tolerance)
    assert PRIMITIVES[shape](-1e9) == pytest.approx(0, abs=1e-8) and PRIMITIVES[shape](1e9) == pytest.approx(1)


def test_surrogate_gradients_reach_per_channel_thresholds_and_match_finite_differences():
    """gradcheck of a smooth function through the surrogate: d/dtheta of sum_t w_t F((v_t - theta) / w) equals the
    surrogate's gradient because the forward is then replaced by F itself."""
    shape, width = "arctan", 0.5
    v = torch.randn(4, 3, 5, dtype=torch.float64)
    theta = torch.tensor([[0.2], [0.5], [-0.1]], dtype=torch.float64, requires_grad=True)
    spikes = Surrogate(shape, width)(v, theta)
    spikes.sum().backward()
    primitive = lambda t: (torch.atan(math.pi / 2 * (v - t) / width) / math.pi + 0.5).sum()  # noqa: E731
    assert torch.autograd.gradcheck(lambda t: primitive(t), (theta.detach().clone().requires_grad_(),))
    reference = torch.autograd.functional.jacobian(primitive, theta.detach())
    torch.testing.assert_close(theta.grad, reference)


def test_surrogates_are_plain_heaviside_on_numpy_and_validate_their_options():
    v = np.linspace(-1, 1, 11, dtype=np.float32)
    np.testing.assert_array_equal(Surrogate("triangle", 0.1)(v, np.float32(0.2)), (v >= np.float32(0.2)) * 1.0)
    with pytest.raises(SimulationError, match="unknown surrogate 'erf'; choose one of fast-sigmoid, arctan"):
        Surrogate("erf")
    with pytest.raises(SimulationError, match="width must be positive"):
        Surrogate("arctan", 0.0)


def test_a_surrogate_trains_a_threshold_through_membrane_steps():
    """The step function with a surrogate is differentiable in the threshold (what fine-tuning needs)."""
    neuron = IF()
    params = membrane_parameters(neuron, (8,), torch)
    threshold = params.threshold.clone().requires_grad_(True)
    params = dataclasses.replace(params, threshold=threshold, v_init=params.v_init)
    state = DYNAMICS[IF].start(params, (2, 8))
    total = 0
    for _ in range(5):
        state, s = DYNAMICS[IF].step(params, state, torch.full((2, 8), 0.4), Surrogate("fast-sigmoid", 0.5))
        total = total + s.sum()
    total.backward()
    assert threshold.grad is not None and threshold.grad.item() < 0  # a higher threshold gives fewer spikes


def test_dynamics_never_imports_torch_at_import_time():
    import subprocess
    import sys

    code = "import sys, snncc.runtime.dynamics, snncc.runtime.reference; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    assert dynamics.__name__ == "snncc.runtime.dynamics"


def test_cuba_lif_step_follows_its_equations_and_reduces_to_if_and_lif():
    """The CubaLIF entry against the record's equations, step by step, in float64; with no current memory and no
    leak it is the IF neuron, spike for spike (float or Loihi's 12-bit decay units)."""
    from snncc.ir.neurons import CubaLIF
    from snncc.runtime import dynamics

    rng = np.random.default_rng(5)
    currents = rng.normal(0.4, 0.6, (30, 3, 7)).astype(np.float32)
    neuron = CubaLIF(threshold=1.0, current_decay=0.25, voltage_decay=0.125, bias=0.05, reset="subtract",
                     initial_voltage=0.3)
    entry = dynamics.dynamics_of(neuron, stepped=True)
    params = entry.parameters(neuron, (7,), np)
    state = entry.start(params, (3, 7))
    u, v = np.zeros((3, 7)), np.full((3, 7), 0.3)
    for current in currents:
        state, s = entry.step(params, state, current)
        u = 0.75 * u + current
        v = 0.875 * v + u + 0.05
        expected = (v >= 1.0).astype(np.float64)
        v = v - expected
        np.testing.assert_array_equal(s, expected)
        np.testing.assert_allclose(state.v, v, atol=1e-5)

    def spikes(model):
        e = dynamics.dynamics_of(model, stepped=True)
        p = e.parameters(model, (7,), np)
        st = e.start(p, (3, 7))
        out = []
        for current in currents:
            st, s = e.step(p, st, current)
            out.append(s)
        return np.stack(out)

    np.testing.assert_array_equal(spikes(CubaLIF(threshold=1.0, current_decay=1.0, voltage_decay=0.0,
                                                 reset="subtract")), spikes(IF(v_init=0.0)))
    np.testing.assert_array_equal(spikes(CubaLIF(threshold=1.0, current_decay=4096, voltage_decay=0, decay_unit=4096,
                                                 reset="zero")), spikes(IF(reset="zero", v_init=0.0)))
    assert spikes(CubaLIF(current_decay=1.0, voltage_decay=0.5)).sum() > 0
