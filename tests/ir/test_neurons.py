"""IF/LIF parameters per channel: validation, the channel check naming the node, and the file format."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from snncc.errors import IRError, VerificationError
from snncc.ir import IF, LIF, SNN, Graph, load, ops, save
from snncc.ir.neurons import neuron_from_json
from snncc.ir.verify import verify


def _population_graph(neuron, shape=(3, 4, 4)):
    g = Graph(level=SNN)
    h = g.add(ops.Input(shape=shape), name="x")
    h = g.add(ops.Population(neuron=neuron), [h], name="pop")
    h = g.add(ops.Flatten(), [h], name="flat")
    g.outputs = [g.add(ops.Readout(), [h], name="out")]
    return g


@pytest.mark.parametrize("neuron", [IF(threshold=(0.5, 1.0, 2.0), v_init=(0.5, 0.0, 0.25), signed=True),
                                    LIF(threshold=(1.0, 1.5, 0.7), tau_mem=(0.0, 4.0, 20.0), v_init=0.1),
                                    IF(threshold=0.75), LIF(tau_mem=3.0)])
def test_scalar_and_per_channel_parameters_round_trip_through_json_and_the_file(neuron, tmp_path):
    data = json.loads(json.dumps(neuron.to_json()))
    assert neuron_from_json(data) == neuron
    path = tmp_path / "m.snn"
    save(_population_graph(neuron), path)
    assert load(path).op("pop").neuron == neuron
    with zipfile.ZipFile(path) as archive:
        stored = json.loads(archive.read("graph.json"))
    assert isinstance(data["threshold"], list) == isinstance(neuron.threshold, tuple)
    (pop,) = [n for n in stored["nodes"] if n["id"] == "pop"]
    assert pop["params"]["neuron"]["neuron"] == data  # stored as plain JSON numbers and lists, no arrays


def test_files_written_with_float_parameters_still_load():
    old = {"kind": "IF", "threshold": 1.0, "reset": "subtract", "v_init": 0.5, "signed": False}
    neuron = neuron_from_json(old)
    assert neuron == IF() and isinstance(neuron.threshold, float) and isinstance(neuron.v_init, float)
    listed = neuron_from_json({**old, "threshold": [1.0, 2.0]})
    assert listed.threshold == (1.0, 2.0) and listed.per_channel and not IF().per_channel


def test_the_channel_count_is_checked_with_the_node_named():
    with pytest.raises(VerificationError, match=r"node 'pop': IF: threshold has 2 values but the population has 3 "
                                                r"channels \(axis 0 of its input shape \[3, 4, 4\]\)"):
        verify(_population_graph(IF(threshold=(1.0, 2.0))))
    with pytest.raises(VerificationError, match="node 'pop': LIF: tau_mem has 4 values but the population has 3"):
        verify(_population_graph(LIF(tau_mem=(1.0, 2.0, 3.0, 4.0))))
    verify(_population_graph(IF(threshold=(1.0,) * 12), shape=(12,)))


def test_invalid_per_channel_values_are_refused():
    with pytest.raises(IRError, match="threshold must be a positive finite number"):
        IF(threshold=(1.0, 0.0))
    with pytest.raises(IRError, match="tau_mem must be positive"):
        LIF(tau_mem=(1.0, -1.0))
    with pytest.raises(IRError, match="threshold has no values"):
        IF(threshold=())
    with pytest.raises(IRError, match="v_init must be a number or a sequence of numbers"):
        IF(v_init="half")
    assert LIF(tau_mem=(0.0, 2.0)).beta == (0.0, float(np.exp(-0.5)))
    assert str(IF(threshold=(1.0, 0.5))) == "IF(threshold=[1 0.5], reset=subtract, v_init=0.5, signed=False)"
