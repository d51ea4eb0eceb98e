"""NIR import: what each NIR node becomes, what is refused and why, bad files, `snncc compile MODEL.nir`, and an
SNN written to NIR by snnTorch that gives snnTorch's outputs in snncc."""

from __future__ import annotations

import numpy as np
import pytest

nir = pytest.importorskip("nir")

from snncc.cli import main  # noqa: E402
from snncc.errors import FormatError, UnsupportedModelError  # noqa: E402
from snncc.frontend.nir import import_nir  # noqa: E402
from snncc.ir import IF, LIF, load, ops  # noqa: E402
from snncc.runtime import Simulator  # noqa: E402

RNG = np.random.default_rng(0)


def _graph(*middle: nir.NIRNode, shape=(3,), out=(1,)) -> nir.NIRGraph:
    """Input -> middle nodes in a chain -> Output."""
    nodes = {"in": nir.Input(input_type={"input": np.array(shape)})}
    nodes.update({f"n{i}": node for i, node in enumerate(middle)})
    keys = list(nodes)
    nodes["out"] = nir.Output(output_type={"output": np.array(out)})
    return nir.NIRGraph(nodes=nodes, edges=list(zip(keys, keys[1:] + ["out"])), type_check=False)


def _affine(n_out: int, n_in: int) -> nir.Affine:
    return nir.Affine(weight=RNG.normal(0, 1, (n_out, n_in)).astype(np.float32), bias=np.zeros(n_out, np.float32))


def test_if_with_a_gain_is_snncc_if_with_the_threshold_divided():
    graph = import_nir(_graph(_affine(4, 3), nir.IF(r=np.full(4, 2.0), v_threshold=np.full(4, 1.0))))
    neuron = graph.op("n1").neuron
    assert neuron == IF(threshold=0.5, reset="zero", v_init=0.0)
    assert isinstance(graph.op(graph.outputs[0]), ops.Readout)  # a spiking output gets a Readout (spike rate)


def test_lif_follows_the_euler_step_with_the_time_step():
    """tau = 5 dt, r = 2: v = 0.8 v + 0.4 I, the LIF of beta 0.8 with threshold 1 / 0.4."""
    tau = np.full(4, 5e-3)
    lif = nir.LIF(tau=tau, r=np.full(4, 2.0), v_leak=np.zeros(4), v_threshold=np.ones(4))
    neuron = import_nir(_graph(_affine(4, 3), lif), dt=1e-3).op("n1").neuron
    assert isinstance(neuron, LIF) and neuron.reset == "zero"
    assert neuron.beta == pytest.approx(0.8) and neuron.threshold == pytest.approx(2.5)


def test_per_channel_parameters_are_kept_and_per_neuron_ones_refused():
    conv = nir.Conv2d(input_shape=(4, 4), weight=RNG.normal(0, 1, (2, 1, 3, 3)), stride=1, padding=1, dilation=1,
                      groups=1, bias=np.zeros(2))
    threshold = np.stack([np.full((4, 4), 0.5), np.full((4, 4), 0.7)])
    graph = import_nir(_graph(conv, nir.IF(r=np.ones((2, 4, 4)), v_threshold=threshold), shape=(1, 4, 4)))
    assert graph.op("n1").neuron.threshold == (0.5, 0.7)
    threshold[1, 0, 0] = 0.9
    with pytest.raises(UnsupportedModelError, match="'n1': v_threshold varies within a channel"):
        import_nir(_graph(conv, nir.IF(r=np.ones((2, 4, 4)), v_threshold=threshold), shape=(1, 4, 4)))


def test_sum_pooling_is_average_pooling_times_the_kernel_size():
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    graph = import_nir(_graph(pool, nir.Flatten(input_type={"input": np.array([1, 2, 2])}, start_dim=1),
                              nir.I(r=np.ones(1)), shape=(1, 4, 4)))
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = Simulator(graph, 3).run(x, apply_scaling=False).outputs[-1]
    np.testing.assert_allclose(out, [[0 + 1 + 4 + 5, 2 + 3 + 6 + 7, 8 + 9 + 12 + 13, 10 + 11 + 14 + 15]])


@pytest.mark.parametrize("node, message", [
    (nir.LI(tau=np.ones(4), r=np.ones(4), v_leak=np.zeros(4)), "a leaky readout \\(LI\\).*replace it by nir.I"),
    (nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.full(4, 0.2)), "v_reset is not 0"),
    (nir.LIF(tau=np.full(4, 1e-5), r=np.ones(4), v_leak=np.zeros(4), v_threshold=np.ones(4)), ".*\\(tau < dt\\)"),
    (nir.LIF(tau=np.full(4, 1.0), r=np.ones(4), v_leak=np.ones(4), v_threshold=np.ones(4)), "v_leak is not 0"),
])
def test_what_snncc_cannot_carry_is_refused_with_the_node_and_a_remedy(node, message):
    with pytest.raises(UnsupportedModelError, match=f"NIR node 'n1': {message}"):
        import_nir(_graph(_affine(4, 3), node))


def test_a_recurrent_graph_is_refused():
    graph = _graph(_affine(4, 3), nir.IF(r=np.ones(4), v_threshold=np.ones(4)))
    graph.edges.append(("n1", "n0"))
    with pytest.raises(UnsupportedModelError, match="cycle"):
        import_nir(graph)


def test_bad_files_give_a_format_error(tmp_path):
    with pytest.raises(FormatError, match="no such NIR file"):
        import_nir(tmp_path / "missing.nir")
    (tmp_path / "bad.nir").write_bytes(b"not hdf5")
    with pytest.raises(FormatError, match="not a readable NIR file"):
        import_nir(tmp_path / "bad.nir")


def test_compile_command_imports_an_nir_file(tmp_path):
    path = tmp_path / "model.nir"
    nir.write(path, _graph(_affine(4, 3), nir.IF(r=np.ones(4), v_threshold=np.ones(4)), _affine(2, 4), out=(2,)))
    assert main(["compile", str(path), "-o", str(tmp_path / "model.snn"), "--quiet"]) == 0
    graph = load(tmp_path / "model.snn")
    assert graph.attrs["conversion"] == {"method": "nir-import"} and graph.level == "snn"
    assert [graph.op(n).kind for n in graph.topological_order()] == ["Input", "Linear", "Population", "Linear",
                                                                     "Readout"]


def test_an_snn_written_by_snntorch_gives_snntorchs_outputs(tmp_path):
    torch = pytest.importorskip("torch")
    snn = pytest.importorskip("snntorch")
    from snntorch import utils
    from snntorch.export_nir import export_to_nir

    torch.manual_seed(0)

    def leaky(n, beta, threshold, **kw):  # vector parameters: snnTorch's export types the graph by their shape
        return snn.Leaky(beta=torch.full((n,), beta), threshold=torch.full((n,), threshold), init_hidden=True,
                         reset_mechanism="zero", reset_delay=False, **kw)

    net = torch.nn.Sequential(torch.nn.Linear(20, 32), leaky(32, 0.8, 0.5), torch.nn.Linear(32, 5),
                              leaky(5, 0.9, 0.3, output=True))
    nir.write(tmp_path / "snntorch.nir", export_to_nir(net, torch.randn(20)))
    x, steps = torch.rand(64, 20) * 2, 30
    utils.reset(net)
    with torch.no_grad():
        spikes = torch.stack([net(x)[0] for _ in range(steps)]).numpy()
    assert spikes.mean() > 0.05
    graph = import_nir(tmp_path / "snntorch.nir")
    assert [graph.op(n).neuron.beta for n in graph.find(ops.Population)] == [pytest.approx(0.8), pytest.approx(0.9)]
    outputs = Simulator(graph, steps, backend="reference").run(x.numpy()).outputs
    rates = np.cumsum(spikes, axis=0) / np.arange(1, steps + 1)[:, None, None]
    np.testing.assert_allclose(outputs, rates, atol=1e-6)
