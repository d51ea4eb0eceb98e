"""numpy's BLAS threads during every simulator's batches: one (OpenBLAS's sums depend on its threads, and its idle
threads would spin on the kernels' cores) unless OPENBLAS_NUM_THREADS says otherwise, the caller's setting restored
after."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.runtime import cython_available
from snncc.runtime.blas_threads import BlasThreads, current_blas_threads, engine_blas_threads

controllable = pytest.mark.skipif(current_blas_threads() is None,
                                  reason="numpy's BLAS is not an OpenBLAS this process can control")
compiled = pytest.mark.skipif(not cython_available()[0], reason="the Cython runtime is not built")


@controllable
def test_blas_threads_are_set_inside_and_restored_after():
    before = current_blas_threads()
    with BlasThreads(2):
        assert current_blas_threads() == 2
        with BlasThreads(1):
            assert current_blas_threads() == 1
            a = np.random.default_rng(0).normal(size=(200, 300)).astype(np.float32)
            product = a @ a.T  # the products still run, on one thread
            np.testing.assert_array_equal(product, a @ a.T)  # one setting, the same sums
        assert current_blas_threads() == 2
        with BlasThreads(None):
            assert current_blas_threads() == 2
    assert current_blas_threads() == before


@controllable
def test_blas_threads_are_restored_when_the_call_fails():
    before = current_blas_threads()
    with pytest.raises(RuntimeError, match="inside"):
        with BlasThreads(1 if before != 1 else 2):
            raise RuntimeError("inside")
    assert current_blas_threads() == before


def test_the_user_setting_wins(monkeypatch):
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    assert engine_blas_threads() == 1
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert engine_blas_threads() is None


def _fs_graph():
    from snncc.ir import SNN, FewSpike, Graph, ops

    rng = np.random.default_rng(5)
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=(20,)), name="x")
    h = g.add(ops.Linear(weight=rng.normal(0, 0.5, (30, 20))), [h], name="fc1")
    h = g.add(ops.Population(neuron=FewSpike(threshold=(0.5, 0.25, 0.125), height=(0.5, 0.25, 0.125),
                                             weight=(0.5, 0.25, 0.125))), [h], name="pop1")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=rng.normal(0, 0.5, (4, 30))), [h], name="fc2")])]
    return g


@compiled
@controllable
@pytest.mark.parametrize("method", ["run_batch", "run_stream"])
def test_temporal_engine_batches_run_on_one_blas_thread(method, monkeypatch):
    from snncc.runtime import cython_engine
    from snncc.runtime.temporal import TemporalSimulator

    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    engine = cython_engine.CythonTemporalSimulator(_fs_graph(), threads=2)
    seen = []
    evaluate = engine._evaluate if method == "run_stream" else engine._count_window

    def recording(*args, **kwargs):
        seen.append(current_blas_threads())
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "_evaluate" if method == "run_stream" else "_count_window", recording)
    x = np.random.default_rng(0).uniform(0, 1, (3, 20)).astype(np.float32)
    with BlasThreads(2):
        result = getattr(engine, method)(x)
        assert current_blas_threads() == 2
    assert seen and set(seen) == {1}
    expected = getattr(TemporalSimulator(_fs_graph()), method)(x)
    if method == "run_stream":
        result, expected = result[0], expected[0]
    np.testing.assert_array_equal(result.outputs[0], expected.outputs[0])


@compiled
@controllable
def test_rate_engine_batches_run_on_one_blas_thread_unless_the_user_chose(monkeypatch):
    from snncc.runtime import cython_engine
    from tests.runtime.test_cython_agreement import _pooled_network

    graph = _pooled_network(np.random.default_rng(1), quantized=True, global_pool=False)
    x = np.random.default_rng(2).uniform(0, 1, (2, 2, 12, 13)).astype(np.float32)
    for user, expected in ((None, 1), ("2", 2)):
        if user is None:
            monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
        else:
            monkeypatch.setenv("OPENBLAS_NUM_THREADS", user)
        engine = cython_engine.CythonSimulator(graph, timesteps=4, threads=2)
        seen = []
        for _, _, plan, _ in engine.schedule:
            run = plan.run
            monkeypatch.setattr(plan, "run", lambda *a, _run=run: (seen.append(current_blas_threads()), _run(*a))[1])
        with BlasThreads(2):
            engine.run_batch(x)
            assert current_blas_threads() == 2
        assert seen and set(seen) == {expected}


@controllable
@pytest.mark.parametrize("module", ["reference", "temporal"])
def test_reference_simulators_run_on_one_blas_thread(module, monkeypatch):
    """The specification's sums do not depend on the machine's cores: the references run BLAS as the engines do."""
    import importlib

    from tests.runtime.test_cython_agreement import _pooled_network

    simulators = importlib.import_module(f"snncc.runtime.{module}")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    seen = []
    apply = simulators.apply
    monkeypatch.setattr(simulators, "apply", lambda *a: (seen.append(current_blas_threads()), apply(*a))[1])
    if module == "reference":
        simulator = simulators.ReferenceSimulator(
            _pooled_network(np.random.default_rng(1), quantized=True, global_pool=False), timesteps=3)
        x = np.random.default_rng(2).uniform(0, 1, (2, 2, 12, 13)).astype(np.float32)
        runs = [simulator.run_batch]
    else:
        simulator = simulators.TemporalSimulator(_fs_graph())
        x = np.random.default_rng(2).uniform(0, 1, (2, 20)).astype(np.float32)
        runs = [simulator.run_batch, simulator.run_stream]
    for run in runs:
        with BlasThreads(2):
            run(x)
            assert current_blas_threads() == 2
    assert seen and set(seen) == {1}
