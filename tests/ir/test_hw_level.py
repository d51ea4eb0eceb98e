"""The hardware level of the IR: integer arrays, chip neuron records, placements, number formats, the level table."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from snncc.errors import FormatError, IRError, VerificationError
from snncc.ir import IF, SNN, Graph, load, ops, save, to_text, verify
from snncc.ir.codings import Rate
from snncc.ir.neurons import CubaLIF
from snncc.ir.ops import HW
from snncc.ir.placement import Placement
from snncc.ir.types import TensorType
from snncc.ir.verify import LEVELS

FIXTURE = Path(__file__).parent / "data" / "v1_written_by_main.snn"
LOIHI_NEURON = CubaLIF(threshold=(100 << 6) + 1, current_decay=4096, voltage_decay=410, decay_unit=4096,
                       bias=-3, initial_voltage=0)


def hw_graph() -> Graph:
    """A small chip graph: int8 weights, int32 biases, Loihi-style integer neurons, every node placed."""
    rng = np.random.default_rng(3)
    g = Graph(level=HW)
    x = g.add(ops.Input(shape=(1, 6, 6), name="events", dtype="uint8", bits=1), name="events")
    conv = g.add(ops.Conv2d(weight=rng.integers(-128, 128, size=(4, 1, 3, 3), dtype=np.int8),
                            bias=rng.integers(-500, 500, size=4).astype(np.int32)), [x], name="conv")
    spikes = g.add(ops.Population(neuron=LOIHI_NEURON), [conv], name="spikes")
    flat = g.add(ops.Flatten(), [spikes], name="flat")
    fc = g.add(ops.Linear(weight=rng.integers(-128, 128, size=(3, 64), dtype=np.int8)), [flat], name="fc")
    g.outputs = [g.add(ops.Readout(), [fc], name="logits")]
    for i, node in enumerate((conv, spikes, flat, fc, "logits")):
        g.place(node, Placement(chip=i // 3, core=i % 3))
    return g


def test_integer_arrays_keep_their_dtype_and_floats_become_float32():
    op = ops.Linear(weight=np.ones((2, 3), dtype=np.int8), bias=np.arange(2, dtype=np.int32))
    assert (op.weight.dtype, op.bias.dtype) == (np.int8, np.int32)
    assert not op.weight.flags.writeable
    assert ops.Linear(weight=np.ones((2, 3), dtype=np.float64)).weight.dtype == np.float32
    with pytest.raises(IRError, match="complex"):
        ops.Linear(weight=np.ones((2, 3), dtype=np.complex64))
    # equal values in different dtypes are different ops
    assert not op.same_as(ops.Linear(weight=np.ones((2, 3)), bias=np.arange(2.0)))


def test_hw_graph_verifies_and_round_trips_with_dtypes_neurons_and_placements(tmp_path):
    g = hw_graph()
    types = verify(g)
    assert types["flat"] == TensorType((64,), Rate())
    loaded = load(save(g, tmp_path / "chip.snn"))
    assert to_text(loaded) == to_text(g)
    for node in g.topological_order():
        assert loaded.op(node).same_as(g.op(node)), node
        assert loaded.placement(node) == g.placement(node), node
    assert loaded.op("conv").weight.dtype == np.int8 and loaded.op("conv").bias.dtype == np.int32
    assert loaded.op("fc").weight.dtype == np.int8
    neuron = loaded.op("spikes").neuron
    assert neuron == LOIHI_NEURON
    assert all(type(getattr(neuron, f)) is int for f in CubaLIF.hw_integer_fields)
    assert loaded.types()["events"] == TensorType((1, 6, 6), dtype="uint8", bits=1)


def test_text_form_shows_integer_arrays_formats_and_placements():
    text = to_text(hw_graph())
    assert "weight=i8[4,1,3,3], bias=i32[4]" in text
    assert "%events = Input(shape=(1, 6, 6), name='events', dtype='uint8', bits=1) : [1,6,6] analog uint8:1" in text
    assert "groups=1) : [4,4,4] analog @chip0.core0" in text  # conv
    assert "initial_voltage=0, dt=0.001)) : [4,4,4] rate @chip0.core1" in text
    assert "%logits = Readout(%fc) : [3] analog @chip1.core1" in text


def test_hw_verifier_rejects_a_float_weight_naming_node_parameter_and_dtype():
    g = hw_graph()
    g.replace("fc", ops.Linear(weight=np.zeros((3, 64))))
    with pytest.raises(VerificationError, match=r"'fc': Linear\.weight is float32; the hw level stores integers"):
        verify(g)


def test_hw_verifier_rejects_float_neuron_parameters_and_float_neuron_models():
    g = hw_graph()
    g.replace("spikes", ops.Population(neuron=CubaLIF(threshold=1.5, current_decay=4096, decay_unit=4096)))
    with pytest.raises(VerificationError) as info:
        verify(g)
    message = str(info.value)
    assert "'spikes': CubaLIF.threshold is float 1.5; the hw level stores it as an integer" in message
    assert "CubaLIF.current_decay" not in message  # 4096 is an integer
    g.replace("spikes", ops.Population(neuron=IF()))
    with pytest.raises(VerificationError, match=r"'spikes': IF\.threshold is float 1\.0"):
        verify(g)


def test_ann_and_snn_levels_reject_integer_arrays_and_placements():
    g = hw_graph()
    g.attrs["level"] = SNN
    g.replace("spikes", ops.Population(neuron=IF()))
    with pytest.raises(VerificationError) as info:
        verify(g)
    message = str(info.value)
    assert "'fc': Linear.weight is int8; snn-level arrays are float32" in message
    assert "'conv': placed on @chip0.core0, but only hw-level nodes are placed on chips" in message


def test_ops_a_chip_does_not_hold_are_illegal_at_hw():
    assert ops.MaxPool2d not in LEVELS[HW].op_classes and ops.Affine not in LEVELS[HW].op_classes
    assert not any(cls in LEVELS[HW].op_classes for cls in ops.ACTIVATIONS)
    assert {ops.Conv2d, ops.Linear, ops.Population, ops.Readout, ops.SpikingMaxPool2d} <= LEVELS[HW].op_classes
    g = hw_graph()
    g.insert_after("conv", ops.MaxPool2d(kernel=(1, 1), stride=(1, 1)), name="pool")
    with pytest.raises(VerificationError, match="'pool': MaxPool2d is not legal at the hw level"):
        verify(g)


def test_every_op_is_legal_at_some_level_and_unknown_levels_are_refused():
    assert all(any(cls in level.op_classes for level in LEVELS.values()) for cls in ops.OPS.values())
    g = hw_graph()
    g.attrs["level"] = "chip"
    with pytest.raises(VerificationError, match=r"unknown IR level 'chip'; expected one of \('ann', 'snn', 'hw'\)"):
        verify(g)


def test_tensor_type_formats():
    assert str(TensorType((3, 4), Rate())) == "[3,4] rate"
    assert TensorType((3,)) == TensorType((3,), dtype="float32", bits=None)
    assert str(TensorType((3,), dtype="int32", bits=24)) == "[3] analog int32:24"
    for dtype, bits in (("int8", 9), ("float32", 8), ("complex64", None), ("int16", 0)):
        with pytest.raises(IRError, match="bits|dtype"):
            TensorType((3,), dtype=dtype, bits=bits)
    with pytest.raises(IRError, match="Input 'x'"):
        ops.Input(shape=(2,), name="x", dtype="int8", bits=12)
    # the rearrangements keep their input's format
    t = TensorType((2, 4, 4), dtype="int32", bits=24)
    assert ops.Flatten().infer([t]) == TensorType((32,), dtype="int32", bits=24)
    assert ops.Slice(starts=(0, 0, 0), stops=(2, 4, 4), steps=(1, 2, 2)).infer([t]).format == "int32:24"


def test_placement_and_cuba_lif_validate_their_fields():
    with pytest.raises(IRError, match="core must be a non-negative integer"):
        Placement(chip=0, core=-1)
    assert Placement(chip=np.int64(1), core=2).chip == 1
    g = hw_graph()
    with pytest.raises(IRError, match="Placement"):
        g.place("conv", (0, 1))
    g.place("conv", None)
    assert g.placement("conv") is None
    g.remove_dead()
    assert g.clone().placement("fc") == g.placement("fc")
    with pytest.raises(IRError, match=r"voltage_decay must lie in \[0, decay_unit=4096\]"):
        CubaLIF(voltage_decay=5000, decay_unit=4096)
    with pytest.raises(IRError, match="decay_unit must be a positive integer"):
        CubaLIF(decay_unit=1.5)
    with pytest.raises(IRError, match="threshold must be a number"):
        CubaLIF(threshold=True)


def _rewrite_graph_json(path: Path, edit) -> Path:
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    doc = json.loads(files["graph.json"])
    edit(doc)
    files["graph.json"] = json.dumps(doc).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_malformed_placements_and_node_keys_are_refused(tmp_path):
    path = save(hw_graph(), tmp_path / "chip.snn")

    def bad_placement(doc):
        doc["nodes"][1]["placement"] = {"chip": 0}

    with pytest.raises(FormatError, match=r"node 'conv': placement must be"):
        load(_rewrite_graph_json(path, bad_placement))
    path = save(hw_graph(), tmp_path / "chip.snn")

    def unknown_key(doc):
        doc["nodes"][1]["core"] = 3

    with pytest.raises(FormatError, match=r"node 'conv': a node entry is an object with the keys"):
        load(_rewrite_graph_json(path, unknown_key))


def test_a_version_1_file_written_by_main_still_loads(tmp_path):
    """The fixture was written by snncc before the hw level existed (commit ae0c317)."""
    g = load(FIXTURE)
    assert g.level == SNN and g.outputs == ["logits"]
    assert g.op("conv").weight.dtype == np.float32 and g.op("conv").weight.shape == (2, 1, 3, 3)
    assert g.op("spikes").neuron == IF(threshold=1.0)
    assert g.meta["logits"] == {"note": "v1 fixture"}
    assert [g.placement(n) for n in g.nodes()] == [None] * 6
    again = load(save(g, tmp_path / "again.snn"))
    assert to_text(again) == to_text(g)
    assert all(again.op(n).same_as(g.op(n)) for n in g.nodes())
