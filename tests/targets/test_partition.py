"""Placement of units on cores: the routes traced through the graph, and the local search against first-fit."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from snncc.ir import IF, SNN, Graph, ops
from snncc.targets.partition import CoreLimits, Unit, cut, first_fit, place, routes


def test_routes_follow_slices_and_concatenations_to_the_neurons_that_reach_a_unit():
    # Two 1x4x1 blocks of a layer joined by a Concat over rows; the next layer's two blocks read rows 0-3 and 3-7.
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 8, 1)), name="x")
    halves = []
    for i in range(2):
        rows = g.add(ops.Slice(starts=(0, 4 * i, 0), stops=(1, 4 * i + 4, 1), steps=(1, 1, 1)), [x])
        syn = g.add(ops.Conv2d(weight=np.ones((1, 1, 1, 1))), [rows], name=f"a{i}.syn")
        halves.append(g.add(ops.Population(neuron=IF()), [syn], name=f"a{i}"))
    joined = g.add(ops.Concat(axis=1), halves)
    units = [Unit("a0.syn", "a0", 4, 4), Unit("a1.syn", "a1", 4, 4)]
    for i, (start, stop) in enumerate(((0, 4), (3, 8))):
        rows = g.add(ops.Slice(starts=(0, start, 0), stops=(1, stop, 1), steps=(1, 1, 1)), [joined])
        syn = g.add(ops.Conv2d(weight=np.ones((1, 1, 2, 1))), [rows], name=f"b{i}.syn")
        units.append(Unit(f"b{i}.syn", g.add(ops.Population(neuron=IF()), [syn], name=f"b{i}"), 3, 6))
    flat = g.add(ops.Flatten(), [g.add(ops.Concat(axis=1), ["b0", "b1"])])
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.ones((2, 7))), [flat], name="fc")])]
    units.append(Unit("fc", g.outputs[0], 2, 14))
    # b0 reads rows 0-3 (all of a0); b1 reads row 3 of a0 and all of a1; fc reads every neuron of b0 and b1.
    assert routes(g, units) == {(0, 2): 4, (0, 3): 1, (1, 3): 4, (2, 4): 3, (3, 4): 4}


def test_a_swap_undoes_first_fits_split_of_two_talking_pairs():
    # Units in topological order a, b, c, d; a talks to c and b to d; a core holds two units.
    units = [Unit(f"s{i}", f"p{i}", 10, 10) for i in range(4)]
    weights = {(0, 2): 5, (1, 3): 7}
    limits = CoreLimits(neurons=20, synapses=100)
    assert first_fit(units, limits) == [0, 0, 1, 1] and cut(weights, [0, 0, 1, 1]) == 12
    cores = place(units, weights, limits)
    assert cut(weights, cores) == 0 and sorted(np.bincount(cores)) == [2, 2]


def test_units_whose_inputs_together_exceed_a_cores_axons_get_cores_of_their_own():
    # Each unit reads 3,000 input neurons: two fit a Loihi 1 core's compartments and synapses, not its 4,096 axons.
    units = [Unit(f"s{i}", f"p{i}", 10, 10, 3000) for i in range(3)]
    weights = {(0, 1): 9, (1, 2): 9}  # the cut would gain from sharing a core
    limits = CoreLimits(neurons=1024, synapses=131072, fan_in=4096)
    assert first_fit(units, limits) == [0, 1, 2]
    assert sorted(place(units, weights, limits)) == [0, 1, 2]
    assert first_fit(units, CoreLimits(neurons=1024, synapses=131072)) == [0, 0, 0]


@st.composite
def problems(draw):
    n = draw(st.integers(1, 7))
    units = [Unit(f"s{i}", f"p{i}", draw(st.integers(1, 6)), draw(st.integers(0, 30)), draw(st.integers(0, 20)))
             for i in range(n)]
    pairs = [(u, v) for u in range(n) for v in range(n) if u != v]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs))) if pairs else []
    weights = {p: draw(st.integers(1, 9)) for p in chosen}
    limits = CoreLimits(neurons=draw(st.integers(6, 14)), synapses=draw(st.integers(30, 80)),
                        fan_in=draw(st.one_of(st.none(), st.integers(20, 50))))
    return units, weights, limits


def _feasible(units, cores, limits):
    for c in set(cores):
        members = [u for u, k in zip(units, cores) if k == c]
        if sum(u.neurons for u in members) > limits.neurons or sum(u.synapses for u in members) > limits.synapses:
            return False
        if limits.fan_in is not None and sum(u.axons for u in members) > limits.fan_in:
            return False
    return True


@settings(max_examples=150, deadline=None)
@given(problems())
def test_the_placement_is_feasible_never_worse_than_first_fit_and_a_local_optimum(problem):
    units, weights, limits = problem
    start, cores = first_fit(units, limits), place(units, weights, limits)
    count = max(start) + 1
    assert _feasible(units, cores, limits) and max(cores) < count
    assert cut(weights, cores) <= cut(weights, start)
    best = cut(weights, cores)
    for u in range(len(units)):  # no single move or swap that fits lowers the cut
        for b in range(count):
            moved = list(cores)
            moved[u] = b
            assert not (_feasible(units, moved, limits) and cut(weights, moved) < best)
    for u, x in itertools.combinations(range(len(units)), 2):
        swapped = list(cores)
        swapped[u], swapped[x] = cores[x], cores[u]
        assert not (_feasible(units, swapped, limits) and cut(weights, swapped) < best)
