"""NIR export: legalization, the violations check, files that nir.read loads, round trips through the importer,
and what snnTorch and Norse compute from the files."""

from __future__ import annotations

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from snncc.errors import PassError, UnsupportedModelError  # noqa: E402
from snncc.frontend.nir import import_nir  # noqa: E402
from snncc.ir import IF, SNN, FewSpike, Graph, ops  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402
from snncc.targets.nir import FLAVORS, check_nir, export_nir, legalize_for_nir, write_nir  # noqa: E402
from snncc.targets.nir.legalize import NirInitialMembrane, NirInputPadding, NirReset  # noqa: E402
from tests.conftest import DATA, MODELS  # noqa: E402
from tests.targets.nir_graphs import CUBA_NEURON, LIF_NEURON, small_cnn, small_inputs  # noqa: E402

T = 24
UNLEGALIZED = IF(threshold=1.0, reset="subtract", v_init=0.5)


def _outputs(graph: Graph, x: np.ndarray, timesteps: int = T) -> np.ndarray:
    return Simulator(graph, timesteps, backend="reference").run(x).outputs


def _legalized(graph: Graph, passes=None) -> Graph:
    for p in passes or legalize_for_nir():
        graph, _ = p.apply(graph)
    return graph


# ---- check and legalization ------------------------------------------------------------------------------------

def test_check_lists_every_violation_with_its_remedy():
    problems = check_nir(small_cnn(UNLEGALIZED, pad_value=0.25))
    found = {(p.node, p.limit) for p in problems}
    assert ("conv1", "zero padding") in found
    for population in ("spike1", "spike2", "spike3"):
        assert (population, "a reset to v_reset = 0") in found
        assert (population, "a membrane that starts at 0") in found
    assert len(problems) == 7
    assert all("legalize_for_nir" in p.remedy or "nir-input-padding" in p.remedy for p in problems)
    assert check_nir(_legalized(small_cnn(UNLEGALIZED, pad_value=0.25))) == []


def test_max_pooling_is_refused_with_the_average_pooling_remedy():
    g = small_cnn()
    g.replace("pool1", ops.SpikingMaxPool2d(kernel=(2, 2), stride=(2, 2)))
    (problem,) = check_nir(g)
    assert problem.node == "pool1" and problem.actual == "SpikingMaxPool2d"
    assert "lenet5-avg-mnist.onnx" in problem.remedy and "convert-rate{maxpool=avg}" in problem.remedy
    with pytest.raises(UnsupportedModelError, match="pool1.*maxpool=avg"):
        export_nir(g)


def test_peer_flavors_refuse_grouped_convolutions_and_the_spec_keeps_them():
    g = small_cnn(groups=2)
    assert check_nir(g, "spec") == []
    for flavor in ("snntorch", "norse"):
        (problem,) = check_nir(g, flavor)
        assert problem.node == "conv1" and problem.actual == "groups = 2" and "flavor='spec'" in problem.remedy


def test_few_spike_neurons_and_ann_graphs_are_refused():
    g = small_cnn()
    g.replace("spike3", ops.Population(neuron=FewSpike()))
    (problem,) = check_nir(g)
    assert problem.node == "spike3" and "convert-rate" in problem.remedy
    (problem,) = check_nir(Graph())
    assert problem.node == "<graph>" and "ann level" in problem.actual


def test_input_padding_moves_exactly_into_the_input_scaling_and_the_bias():
    g = small_cnn(UNLEGALIZED, pad_value=0.25)
    legal, changed = NirInputPadding().apply(g)
    assert changed and legal.op("conv1").pad_value is None
    assert legal.attrs["input_scaling"]["mean"] == 0.25
    x = small_inputs()
    np.testing.assert_allclose(_outputs(legal, x), _outputs(g, x), atol=1e-5)
    assert not NirInputPadding().apply(legal)[1]  # idempotent


def test_initial_membrane_as_bias_gives_the_same_spike_count_at_t():
    """Input -> Linear(identity) -> IF(v_init=0.5): floor(T I + 0.5) spikes at step T with the initial charge as
    v_init or spread over T steps as a bias (reset by subtraction keeps the count exact)."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(6,)), name="input")
    lin = g.add(ops.Linear(weight=np.eye(6), bias=np.zeros(6)), [x], name="fc")
    pop = g.add(ops.Population(neuron=UNLEGALIZED), [lin], name="spikes")
    g.outputs = [g.add(ops.Linear(weight=np.eye(6)), [pop], name="out")]
    g.outputs = [g.add(ops.Readout(), [g.outputs[0]], name="readout")]
    currents = np.array([[0.03, 0.2, 0.37, 0.52, 0.71, 0.94]], np.float32)  # T I + 0.5 far from integers
    biased, changed = NirInitialMembrane(mode="bias", timesteps=T).apply(g)
    assert changed and biased.op("spikes").neuron.v_init == 0
    np.testing.assert_allclose(biased.op("fc").bias, 0.5 / T, rtol=1e-6)
    counts = _outputs(g, currents)[-1] * T
    np.testing.assert_allclose(counts, np.floor(T * currents + 0.5))
    np.testing.assert_allclose(_outputs(biased, currents)[-1] * T, counts, atol=1e-4)
    assert not NirInitialMembrane(mode="bias", timesteps=T).apply(biased)[1]


def test_reset_pass_and_bad_options():
    legal, changed = NirReset().apply(small_cnn(UNLEGALIZED))
    assert changed and all(legal.op(n).neuron.reset == "zero" for n in legal.find(ops.Population))
    assert not NirReset().apply(legal)[1]
    with pytest.raises(PassError, match="timesteps=T"):
        NirInitialMembrane(mode="bias")
    with pytest.raises(PassError, match="mode must be one of"):
        NirInitialMembrane(mode="keep")


# ---- files and round trips ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("neuron", [IF(threshold=0.9, reset="zero", v_init=0.0), LIF_NEURON, CUBA_NEURON],
                         ids=["IF", "LIF", "CubaLIF"])
@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_written_files_load_with_nir_read_and_round_trip(tmp_path, neuron, flavor):
    g = small_cnn(neuron)
    path = write_nir(g, tmp_path / "model.nir", flavor=flavor)
    loaded = nir.read(path)  # with nir's type check
    assert {type(n).__name__ for n in loaded.nodes.values()} >= {"Input", "Output", "Conv2d", "Affine", "Flatten"}
    assert loaded.metadata["producer"] == "snncc" and float(loaded.metadata["dt"]) == 1e-4
    x = small_inputs()
    expected = _outputs(g, x)
    assert expected[-1].std() > 0.05  # the populations spike
    back = _outputs(import_nir(path), x)
    np.testing.assert_allclose(back, expected, atol=1e-4)


def test_spec_flavor_nodes_state_the_parameters():
    g = small_cnn(IF(threshold=0.7, reset="zero", v_init=0.0))
    graph = export_nir(g, "spec")
    assert isinstance(graph.nodes["spike1"], nir.IF) and isinstance(graph.nodes["pool1"], nir.AvgPool2d)
    np.testing.assert_array_equal(graph.nodes["spike1"].v_threshold, np.full((4, 8, 8), 0.7, np.float32))
    np.testing.assert_array_equal(graph.nodes["spike1"].v_reset, 0)
    assert isinstance(graph.nodes["readout"], nir.I) and ("readout", "output") in graph.edges
    assert graph.nodes["flatten"].start_dim == -3
    norse_graph = export_nir(g, "norse")
    assert isinstance(norse_graph.nodes["pool1"], nir.SumPool2d)
    np.testing.assert_allclose(norse_graph.nodes["conv2"].weight, g.op("conv2").weight / 4, rtol=1e-7)
    assert "readout" not in norse_graph.nodes and ("fc2", "output") in norse_graph.edges
    lif = export_nir(g, "snntorch").nodes["spike1"]
    assert isinstance(lif, nir.LIF) and np.all(np.float32(1 - 1e-4 / lif.tau) == 1)


def test_write_leaves_no_file_when_the_export_is_refused(tmp_path):
    with pytest.raises(UnsupportedModelError):
        write_nir(small_cnn(UNLEGALIZED), tmp_path / "model.nir")
    assert list(tmp_path.iterdir()) == []


# ---- the peers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flavor", ["snntorch", "norse"])
def test_peers_reproduce_snncc_on_the_small_graph(tmp_path, flavor):
    pytest.importorskip(flavor)
    from snncc.targets.nir.peers import PEERS

    g = small_cnn()
    x = small_inputs()
    outputs = PEERS[flavor](nir.read(write_nir(g, tmp_path / "m.nir", flavor=flavor)), x, T)
    np.testing.assert_allclose(outputs, _outputs(g, x), atol=1e-4)


def _lenet_agreement(images: int, timesteps: int) -> dict[str, float]:
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from snncc.targets.nir.peers import PEERS

    train = load_dataset(DATA / "mnist", split="train", limit=500)
    test = load_dataset(DATA / "mnist", split="test", limit=images)
    legal = _legalized(compile_model(MODELS / "lenet5-avg-mnist.onnx", calibration=train[0]))
    reference = Simulator(legal, timesteps).run(test[0]).outputs[-1].argmax(1)
    x = InputScaling.from_json(legal.attrs["input_scaling"]).apply(test[0])
    agreement = {}
    for flavor, run in PEERS.items():
        pytest.importorskip(flavor)
        graph = export_nir(legal, flavor)
        agreement[flavor] = float((run(graph, x, timesteps)[-1].argmax(1) == reference).mean())
    return agreement


@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST data")
def test_lenet5_avg_in_snntorch_and_norse_predicts_as_snncc():
    for flavor, agreement in _lenet_agreement(images=100, timesteps=16).items():
        assert agreement >= 0.99, flavor


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "mnist").is_dir(), reason="needs the MNIST data")
def test_lenet5_avg_acceptance_1000_images():
    for flavor, agreement in _lenet_agreement(images=1000, timesteps=32).items():
        assert agreement >= 0.99, flavor
