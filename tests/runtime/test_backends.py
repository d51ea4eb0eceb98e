"""The backend registry of Simulator: lookup, registration, fallback and the default backend."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest

from snncc import runtime
from snncc.errors import SimulationError
from snncc.ir import IF, SNN, Graph, ops
from snncc.runtime import BACKENDS, Backend, BackendFallbackWarning, Simulator, register_backend
from snncc.runtime.reference import ReferenceSimulator


def _graph():
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Population(neuron=IF()), [h], name="pop")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.eye(4)), [h])])]
    return g


class _Silent(ReferenceSimulator):
    """A toy backend: the reference with every readout zeroed."""

    def run_batch(self, x):
        result = super().run_batch(x)
        return dataclasses.replace(result, outputs=[o * 0 for o in result.outputs])


@pytest.fixture
def registry(monkeypatch):
    # The targets register their emulators when they are first imported: import them before the copy, or an import
    # during the test would register them into the copy alone and later tests would miss them ("unknown backend").
    from snncc.targets.base import load_targets

    load_targets()
    monkeypatch.setattr(runtime, "BACKENDS", dict(BACKENDS))
    monkeypatch.setattr(runtime, "_warned_fallback", False)
    return runtime.BACKENDS


def test_a_registered_backend_runs_and_unknown_names_list_the_registered_ones(registry):
    register_backend(Backend("silent", lambda g, t, threads: _Silent(g, t), None))
    x = np.full((2, 4), 0.5, np.float32)
    sim = Simulator(_graph(), 6, backend="silent")
    assert sim.backend == "silent" and np.all(sim.run(x).outputs == 0)
    assert np.any(Simulator(_graph(), 6, backend="reference").run(x).outputs != 0)
    # (targets add their emulators to the registry too, e.g. loihi1 and loihi2, once snncc.targets.loihi is imported)
    with pytest.raises(SimulationError, match="unknown backend 'fpga'; registered: reference, cython, torch, .*silent"):
        Simulator(_graph(), 6, backend="fpga")
    with pytest.raises(SimulationError, match="already registered"):
        register_backend(Backend("silent", None, None))
    with pytest.raises(SimulationError, match="its fallback 'nowhere' is not registered"):
        register_backend(Backend("chip", None, None, fallback="nowhere"))


def test_a_backend_refuses_the_graphs_it_has_no_engine_for(registry):
    from snncc.ir import FewSpike

    register_backend(Backend("rate-only", lambda g, t, threads: ReferenceSimulator(g, t), None))
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Population(neuron=FewSpike()), [h], name="pop")
    g.outputs = [g.add(ops.Readout(), [h])]
    with pytest.raises(SimulationError, match="backend 'rate-only' does not run temporal .* use reference, cython"):
        Simulator(g, None, backend="rate-only")


def test_an_unavailable_backend_falls_back_or_says_why(registry):
    register_backend(Backend("chip", None, None, available=lambda: (False, "no board attached"),
                             hint="plug the board in"))
    register_backend(Backend("emulator", None, None, available=lambda: (False, "not installed"), fallback="reference",
                             hint="pip install it"))
    with pytest.raises(SimulationError, match=r"backend 'chip' is not available here \(no board attached\); plug"):
        Simulator(_graph(), 4, backend="chip")
    with pytest.warns(BackendFallbackWarning, match="the emulator backend is not available .* reference backend"):
        assert Simulator(_graph(), 4, backend="emulator").backend == "reference"


def test_the_default_is_the_compiled_runtime_where_built_and_the_reference_silently_otherwise(monkeypatch):
    monkeypatch.setattr(runtime, "DEFAULT_BACKEND", "cython")  # the library's default (the suite pins its own)
    monkeypatch.setattr(runtime, "_warned_fallback", False)
    built = runtime.cython_available()[0]
    assert Simulator(_graph(), 4).backend == ("cython" if built else "reference")
    monkeypatch.setattr(runtime, "cython_available", lambda: (False, "No module named 'snncc.runtime._kernels'"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for the default
        assert Simulator(_graph(), 4).backend == "reference"
    with pytest.warns(BackendFallbackWarning, match="pip install -e"):
        assert Simulator(_graph(), 4, backend="cython").backend == "reference"


def test_the_librarys_default_backend_outside_the_test_suite():
    code = "import snncc.runtime as r; print(r.DEFAULT_BACKEND, r._engine.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "cython"


def test_eval_without_backend_reports_the_default_backend(tmp_path, monkeypatch, capsys):
    import json

    from snncc.cli import main
    from snncc.ir import save

    monkeypatch.setattr(runtime, "DEFAULT_BACKEND", "cython")
    graph = Graph(level=SNN)
    h = graph.add(ops.Input(shape=(1, 2, 2)), name="x")
    h = graph.add(ops.Flatten(), [graph.add(ops.Population(neuron=IF()), [h], name="pop")])
    graph.outputs = [graph.add(ops.Readout(), [graph.add(ops.Linear(weight=np.eye(4)), [h])])]
    save(graph, tmp_path / "m.snn")
    np.savez(tmp_path / "d.npz", x=np.full((3, 2, 2), 0.7, np.float32), y=np.array([0, 1, 2]))
    assert main(["eval", str(tmp_path / "m.snn"), "--data", str(tmp_path / "d.npz"), "--timesteps", "4",
                 "--report", str(tmp_path / "r.json"), "--quiet"]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["backend"] == ("cython" if runtime.cython_available()[0] else "reference")
    assert main(["eval", str(tmp_path / "m.snn"), "--data", str(tmp_path / "d.npz"), "--timesteps", "4",
                 "--backend", "gpu", "--quiet"]) == 2
    assert "unknown backend 'gpu'; registered: reference, cython" in capsys.readouterr().err


def test_run_applies_the_input_scaling_recorded_in_the_graph(cnn, inputs):
    """``Simulator.run`` takes stored data and applies the graph's recorded scaling, as eval does; with
    ``apply_scaling=False`` it takes model inputs."""
    from snncc.data import InputScaling
    from snncc.passes import PassContext, run_pipeline

    snn = run_pipeline(cnn, "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    scaling = InputScaling(scale=1 / 255, mean=0.25, std=0.5)
    stored = (inputs * 0.5 + 0.25) * 255  # what scaling maps back to the model inputs
    plain = Simulator(snn, timesteps=6).run(inputs)
    snn.attrs["input_scaling"] = scaling.to_json()
    scaled = Simulator(snn, timesteps=6).run(stored)
    np.testing.assert_array_equal(scaled.outputs, Simulator(snn, timesteps=6).run(scaling.apply(stored),
                                                                                   apply_scaling=False).outputs)
    np.testing.assert_allclose(scaled.outputs, plain.outputs, atol=1e-4)
    assert not np.allclose(Simulator(snn, timesteps=6).run(inputs).outputs, plain.outputs, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cython"])
def test_a_cuba_lif_population_simulates_with_the_dynamics_table(backend):
    """A CubaLIF population has no compiled kernel: the Cython runtime runs the table's step as the reference
    does, with the same spikes and readouts."""
    from snncc.ir.neurons import CubaLIF

    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(4,)), name="x")
    h = g.add(ops.Linear(weight=np.random.default_rng(0).normal(size=(6, 4)), bias=None), [h], name="fc")
    h = g.add(ops.Population(neuron=CubaLIF(current_decay=0.5, voltage_decay=0.25)), [h], name="pop")
    h = g.add(ops.Linear(weight=np.random.default_rng(1).normal(size=(3, 6)), bias=None), [h], name="fc2")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    x = np.random.default_rng(2).uniform(0, 1, (5, 4)).astype(np.float32)
    expected = ReferenceSimulator(g, 10).run_batch(x)
    got = Simulator(g, 10, backend=backend).run(x)
    assert got.spikes["pop"].sum() > 0
    np.testing.assert_array_equal(got.spikes["pop"], expected.spikes["pop"])
    np.testing.assert_array_equal(got.outputs, expected.outputs[0])
