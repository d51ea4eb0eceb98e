"""The ``sew`` pass: SEW-ResNet connect functions against their truth tables, the spikes-only verifier check, the
lowering of ADD into per-train synaptic copies, per-block selection and the error messages."""

from __future__ import annotations

import numpy as np
import pytest

from snncc.errors import PassError, PipelineSyntaxError, VerificationError
from snncc.ir import IF, LIF, SNN, Graph, ops, verify
from snncc.ir.text import to_text
from snncc.ir.verify import spikes_only_problems
from snncc.passes import PassContext, parse_pipeline, run_pipeline
from snncc.passes.sew import find_blocks, lower_spike_sums
from snncc.runtime import Simulator, cython_available
from tests.passes.test_residual import option_a_block

BACKENDS = ["reference"] + (["cython"] if cython_available()[0] else [])
#: Constant currents of the branch (a) and the shortcut (b) neurons: every pair of them, so that over a few steps
#: every combination of (a_t, b_t) occurs. Dyadic, so the IF dynamics are exact in float32.
LEVELS = np.array([0.0, 0.25, 0.5, 1.0])
STEPS = 8
TRUTH = {"add": lambda a, b: a + b, "and": lambda a, b: a * b, "iand": lambda a, b: (1 - a) * b}


def gate_block() -> tuple[Graph, np.ndarray]:
    """A rate-SNN residual block on constant currents: branch current ``a`` (weights ``a`` from a population that
    fires at every step) and shortcut spikes ``S = IF(b)``, ``out = IF(a + S)`` read out through an identity layer.
    Returns the graph and its one input ``[1, b]``; the levels ``a`` are ``gate_levels()[0]``."""
    n = len(LEVELS) ** 2
    a, b = (v.reshape(-1) for v in np.meshgrid(LEVELS, LEVELS, indexing="ij"))
    neuron = IF(threshold=1.0, reset="subtract", v_init=0.0)
    eye = np.eye(n)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2 * n,)), name="input")
    driver = g.add(ops.Population(neuron=neuron), [g.add(ops.Linear(weight=np.hstack([eye, 0 * eye])), [x])],
                   name="always")
    branch = g.add(ops.Linear(weight=np.diag(a)), [driver], name="branch")
    shortcut_current = g.add(ops.Linear(weight=np.hstack([0 * eye, eye])), [x], name="shortcut_current")
    shortcut = g.add(ops.Population(neuron=neuron), [shortcut_current], name="block_input")
    add = g.add(ops.Add(), [branch, shortcut], name="add")
    out = g.add(ops.Population(neuron=neuron), [add], name="block_output")
    fc = g.add(ops.Linear(weight=eye), [out], name="fc")
    g.outputs = [g.add(ops.Readout(), [fc], name="readout")]
    verify(g)
    return g, np.concatenate([np.ones(n), b])[None].astype(np.float32)


def gate_levels() -> tuple[np.ndarray, np.ndarray]:
    """The constant currents (a, b) of the branch and shortcut neurons of :func:`gate_block`."""
    return tuple(v.reshape(-1) for v in np.meshgrid(LEVELS, LEVELS, indexing="ij"))


def if_spikes(current: np.ndarray, steps: int) -> np.ndarray:
    """(steps, n) spikes of IF neurons (threshold 1, reset by subtraction, v(0) = 0) on constant currents."""
    v, out = np.zeros_like(current, dtype=np.float64), []
    for _ in range(steps):
        v = v + current
        s = (v >= 1).astype(np.float64)
        v -= s
        out.append(s)
    return np.array(out)


def per_step(readout: np.ndarray) -> np.ndarray:
    """The input current of a Readout at each step, from its running means (T, n)."""
    totals = readout.astype(np.float64) * np.arange(1, len(readout) + 1)[:, None]
    return np.rint(np.diff(totals, axis=0, prepend=0))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("connect", sorted(TRUTH))
def test_connect_function_matches_its_truth_table_at_every_step(connect, backend):
    graph, x = gate_block()
    sew = run_pipeline(graph, f"sew{{connect={connect}}}")
    n = len(LEVELS) ** 2
    a, b = (if_spikes(level, STEPS) for level in gate_levels())
    pairs = {(int(p), int(q)) for p, q in zip(a.ravel(), b.ravel())}
    assert pairs == {(0, 0), (0, 1), (1, 0), (1, 1)}, "the inputs must cover the whole truth table"
    result = Simulator(sew, timesteps=STEPS, backend=backend).run(x)
    assert result.outputs.shape == (STEPS, 1, n)
    np.testing.assert_array_equal(per_step(result.outputs[:, 0]), TRUTH[connect](a, b))


@pytest.mark.skipif(len(BACKENDS) < 2, reason="the Cython runtime is not built")
@pytest.mark.parametrize("connect", ["and", "iand"])
def test_cython_runtime_simulates_the_gate_neurons_spike_for_spike(connect):
    graph, x = gate_block()
    sew = run_pipeline(graph, f"sew{{connect={connect}}}")
    gates = [n for n in sew.find(ops.Population) if isinstance(sew.op(n).neuron, LIF)]
    assert len(gates) == 1 and sew.op(gates[0]).neuron.tau_mem == 0
    runs = {b: Simulator(sew, timesteps=STEPS, backend=b).run(np.repeat(x, 3, axis=0)) for b in BACKENDS}
    for node in runs["reference"].spikes:
        np.testing.assert_array_equal(runs["reference"].spikes[node], runs["cython"].spikes[node])
    np.testing.assert_array_equal(runs["reference"].outputs, runs["cython"].outputs)


def test_memoryless_lif_forgets_its_input():
    """tau_mem = 0: v(t) = I(t), so sub-threshold inputs never add up (an IF neuron would fire on the second)."""
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1,)), name="input")
    pop = g.add(ops.Population(neuron=LIF(threshold=1.0, tau_mem=0.0, reset="zero")), [x], name="gate")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Linear(weight=np.eye(1)), [pop])])]
    result = Simulator(g, timesteps=6).run(np.array([[0.75], [1.0]], np.float32))
    np.testing.assert_array_equal(per_step(result.outputs[:, :, 0]), [[0, 1]] * 6)
    assert LIF(tau_mem=0.0).beta == 0.0


def _sew(graph: Graph, options: str, inputs: np.ndarray) -> Graph:
    return run_pipeline(graph, f"canonicalize,normalize,convert-rate,sew{{{options}}}",
                        PassContext(calibration=inputs))


def record(graph: Graph, nodes: list[str], x: np.ndarray, timesteps: int) -> dict[str, np.ndarray]:
    """The value of each of ``nodes`` at every step (T, B, ...), read through Readouts added to a copy of the graph
    (a Readout reports the running mean of its input; its differences are the per-step values), and under
    ``"output"`` the graph's first output."""
    probe = graph.clone()
    probe.outputs = [probe.add(ops.Readout(), [n], name=f"{n}.probe") for n in nodes] + probe.outputs
    result = Simulator(probe, timesteps=timesteps, batch_size=len(x)).run(x)
    steps = np.arange(1, timesteps + 1).reshape((-1,) + (1,) * (result.all_outputs[0].ndim - 1))
    values = {n: np.diff(m.astype(np.float64) * steps, axis=0, prepend=0) for n, m in zip(nodes, result.all_outputs)}
    values["output"] = result.all_outputs[len(nodes)]
    return values


@pytest.mark.parametrize("connect", sorted(TRUTH))
def test_every_inter_layer_signal_of_the_sew_graph_is_spikes(inputs, connect):
    graph = _sew(option_a_block(), f"connect={connect}", inputs)
    assert graph.attrs["spikes_only"] is True
    assert spikes_only_problems(graph) == []
    verify(graph)
    (x,) = graph.find(ops.Input)
    operands = set()
    for node in graph.topological_order():  # every synaptic op reads a population (or the input) directly
        op = graph.op(node)
        if isinstance(op, (ops.Conv2d, ops.Linear)) and x not in graph.inputs(node):
            for src in graph.inputs(node):
                operands.add(src)
                while isinstance(graph.op(src), (ops.Flatten, ops.Slice, ops.ChannelPad, ops.GlobalAvgPool)):
                    src = graph.inputs(src)[0]
                assert isinstance(graph.op(src), ops.Population), (node, src)
    # ... and what they read is 0 or 1 at every step and neuron (a GlobalAvgPool's mean of such values excepted)
    spiking = [n for n in operands if not isinstance(graph.op(graph.inputs(n)[0]), ops.GlobalAvgPool)]
    assert spiking
    values_of = record(graph, spiking, inputs[:4], 8)
    for node in spiking:
        values = values_of[node]
        assert set(np.unique(np.rint(values))) == {0.0, 1.0}, node
        np.testing.assert_allclose(values, np.rint(values), atol=1e-4)


GAINS = np.array([0.3, 0.7, 1.9])


def _sum_of_spikes_into_a_conv(dyadic: bool = True) -> Graph:
    """Two populations, their sum (the second at per-channel gains) read by a convolution and, pooled, by a linear
    layer: a graded, non-spike input. ``dyadic``: weights and gains in multiples of 1/8 (every order of the
    additions gives the same float32 sums); otherwise normal weights and the gains :data:`GAINS`, where the
    rounding of ``W * g`` and the order of the sums show."""
    rng = np.random.default_rng(3)
    weights = (lambda shape: rng.integers(-8, 9, shape) / 8) if dyadic else (lambda shape: rng.normal(0, 0.4, shape))
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 6, 6)), name="input")
    conv_a = g.add(ops.Conv2d(weight=weights((3, 2, 3, 3)), padding=(1, 1, 1, 1)), [x], name="ca")
    conv_b = g.add(ops.Conv2d(weight=weights((3, 2, 3, 3)), padding=(1, 1, 1, 1)), [x], name="cb")
    a = g.add(ops.Population(neuron=IF()), [conv_a], name="a")
    b = g.add(ops.Population(neuron=IF()), [conv_b], name="b")
    gains = np.array([0.5, 0.25, 2.0]) if dyadic else GAINS
    half = g.add(ops.Affine(scale=gains.reshape(3, 1, 1), shift=np.zeros(())), [b], name="gain")
    total = g.add(ops.Add(), [a, half], name="sum")
    conv = g.add(ops.Conv2d(weight=weights((4, 3, 3, 3)), bias=weights(4) / 2, padding=(1, 1, 1, 1)), [total],
                 name="next")
    pooled = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [total], name="pool")
    flat = g.add(ops.Flatten(), [pooled], name="flat")
    fc = g.add(ops.Linear(weight=weights((2, 27)), bias=weights(2)), [flat], name="fc")
    g.outputs = [g.add(ops.Readout(), [conv], name="out"), g.add(ops.Readout(), [fc], name="out_fc")]
    return g


def _per_train_copies(graph: Graph) -> Graph:
    """``_sum_of_spikes_into_a_conv`` lowered by hand the way the pass did before it shared weights: one copy of
    each layer per train, the train's gain folded into the copy's weights (rounded to float32), the bias in the
    first copy, the copies' currents added; pooling and flattening copied per train."""
    g = graph.clone()
    conv, fc = g.op("next"), g.op("fc")
    gains = g.op("gain").scale.reshape(-1).astype(np.float64)
    feature_gains = np.repeat(gains, 9)  # (3, 3, 3) after the 2x2 pooling of 6x6, flattened
    copies = [g.add(conv, ["a"], name="next_a"),
              g.add(ops.Conv2d(weight=conv.weight * gains.reshape(1, 3, 1, 1), padding=conv.padding), ["b"],
                    name="next_b")]
    g.set_inputs("out", [g.add(ops.Add(), copies)])
    flats = [g.add(ops.Flatten(), [g.add(ops.AvgPool2d(kernel=(2, 2), stride=(2, 2)), [t])]) for t in "ab"]
    copies = [g.add(fc, [flats[0]]), g.add(ops.Linear(weight=fc.weight * feature_gains.reshape(1, -1)), [flats[1]])]
    g.set_inputs("out_fc", [g.add(ops.Add(), copies)])
    g.remove_dead()
    verify(g)
    return g

def test_verifier_rejects_a_sum_of_spikes_feeding_a_synaptic_op_only_when_asked():
    graph = _sum_of_spikes_into_a_conv()
    verify(graph)  # spikes-only is opt-in: a plain SNN may feed graded sums to layers
    graph.attrs["spikes_only"] = True
    with pytest.raises(VerificationError, match=r"'next'.*Add 'sum'.*graded") as info:
        verify(graph)
    assert "'pool'" in str(info.value)


def test_verifier_rejects_padding_spikes_with_a_non_zero_value():
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(1, 4, 4)), name="input")
    pop = g.add(ops.Population(neuron=IF()), [x], name="pop")
    pad = g.add(ops.ChannelPad(before=1, value=0.5), [pop], name="pad")
    g.outputs = [g.add(ops.Readout(), [g.add(ops.Conv2d(weight=np.ones((1, 2, 1, 1))), [pad], name="conv")])]
    g.attrs["spikes_only"] = True
    with pytest.raises(VerificationError, match=r"'conv'.*ChannelPad 'pad' pads with 0.5"):
        verify(g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_lowered_to_shared_weight_layers_gives_the_same_currents(backend):
    graph = _sum_of_spikes_into_a_conv()
    lowered = graph.clone()
    lower_spike_sums(lowered)
    assert spikes_only_problems(graph) and spikes_only_problems(lowered) == []
    assert not lowered.find(ops.Affine) and not lowered.find(ops.Add), "the gains become input gains"
    assert lowered.find(ops.Conv2d) == ["ca", "cb", "next"] and lowered.find(ops.Linear) == ["fc"]
    x = np.random.default_rng(0).uniform(0, 1, (5, 2, 6, 6)).astype(np.float32)
    before = Simulator(graph, timesteps=12, backend=backend).run(x)
    after = Simulator(lowered, timesteps=12, backend=backend).run(x)
    for i in range(2):  # weights in multiples of 1/8: every order of the additions gives the same float32 sums
        np.testing.assert_array_equal(before.all_outputs[i], after.all_outputs[i])
    assert np.abs(before.all_outputs[0]).max() > 0


def test_a_sum_of_trains_becomes_one_weight_array_with_a_gain_per_train():
    graph = _sum_of_spikes_into_a_conv(dyadic=False)
    lowered = graph.clone()
    lower_spike_sums(lowered)
    assert lowered.inputs("next") == ["a", "b"]
    flats = lowered.inputs("fc")
    assert [lowered.inputs(lowered.inputs(f)[0]) for f in flats] == [["a"], ["b"]], "fc reads pool(a), pool(b)"
    for node, gains in (("next", GAINS), ("fc", np.repeat(GAINS, 9))):
        op, original = lowered.op(node), graph.op(node)
        np.testing.assert_array_equal(op.weight, original.weight)  # the layer's own weights, not a scaled copy
        np.testing.assert_array_equal(op.bias, original.bias)
        assert op.input_gains[0].shape == () and op.input_gains[0] == 1
        np.testing.assert_array_equal(op.input_gains[1], gains.astype(np.float32))
    assert "input_gains=(1, f32[3])" in to_text(lowered) and "input_gains=(1, f32[27])" in to_text(lowered)


@pytest.mark.parametrize("backend", BACKENDS + (["cython-dense"] if "cython" in BACKENDS else []))
def test_shared_weight_layers_compute_what_per_train_copies_compute_bit_for_bit(backend, monkeypatch):
    """Against the copies written out by hand (non-dyadic weights and gains, so that the rounding of ``W * g``
    and the order of the sums matter): the same readouts, spikes and synaptic operations, bit for bit; and
    within float rounding of the unlowered graph, which adds the graded sum before the layer. ``cython-dense``:
    the compiled runtime with every chunk on the dense path (the event-driven one is taken at these densities)."""
    if backend == "cython-dense":
        from snncc.runtime import cython_engine

        for kind in (ops.Conv2d, ops.Linear):
            monkeypatch.setitem(cython_engine.DENSE_ABOVE, kind, -1.0)
        backend = "cython"
    graph = _sum_of_spikes_into_a_conv(dyadic=False)
    lowered = graph.clone()
    lower_spike_sums(lowered)
    copies = _per_train_copies(graph)
    x = np.random.default_rng(0).uniform(0, 1, (6, 2, 6, 6)).astype(np.float32)
    shared, copied = (Simulator(g, timesteps=16, backend=backend).run(x) for g in (lowered, copies))
    for a, b in zip(shared.all_outputs, copied.all_outputs):
        np.testing.assert_array_equal(a, b)
    assert shared.spikes.keys() == copied.spikes.keys()
    for node in shared.spikes:
        np.testing.assert_array_equal(shared.spikes[node], copied.spikes[node])
    np.testing.assert_array_equal(shared.synops, copied.synops)
    graded = Simulator(graph, timesteps=16, backend=backend).run(x)
    for a, b in zip(shared.all_outputs, graded.all_outputs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    differ = [not np.array_equal(a, b) for a, b in zip(shared.all_outputs, graded.all_outputs)]
    assert any(differ), "the weights must make the order of the sums show, or bit identity proves nothing"


def two_block_net(seed: int = 0, projection: bool = True) -> Graph:
    """conv-ReLU, an identity block at 4 channels, then a projection block to 8 channels (stride 2) or a second
    identity block, GAP, linear."""
    rng = np.random.default_rng(seed)
    g = Graph()
    h = g.add(ops.Input(shape=(1, 12, 12)), name="input")

    def conv(x, cin, cout, k=3, stride=1, name=""):
        pad = (k // 2,) * 4
        return g.add(ops.Conv2d(weight=rng.normal(0, 0.6 / np.sqrt(cin * k * k) * 2, (cout, cin, k, k)),
                                bias=rng.normal(0.05, 0.05, cout), stride=(stride, stride), padding=pad), [x],
                     name=name)

    h = g.add(ops.Relu(), [conv(h, 1, 4, name="stem")], name="stem_relu")
    y = g.add(ops.Relu(), [conv(h, 4, 4, name="b0_conv1")], name="b0_relu1")
    h = g.add(ops.Relu(), [g.add(ops.Add(), [conv(y, 4, 4, name="b0_conv2"), h], name="b0_add")], name="b0_out")
    width, stride = (8, 2) if projection else (4, 1)
    y = g.add(ops.Relu(), [conv(h, 4, width, stride=stride, name="b1_conv1")], name="b1_relu1")
    short = conv(h, 4, 8, k=1, stride=2, name="b1_proj") if projection else h
    h = g.add(ops.Relu(), [g.add(ops.Add(), [conv(y, width, width, name="b1_conv2"), short], name="b1_add")],
              name="b1_out")
    flat = g.add(ops.Flatten(), [g.add(ops.GlobalAvgPool(), [h], name="gap")], name="flat")
    g.outputs = [g.add(ops.Linear(weight=rng.normal(0, 0.5, (5, width)), bias=np.zeros(5)), [flat], name="fc")]
    return g


def test_blocks_are_found_with_their_branch_and_shortcut(inputs):
    snn = run_pipeline(two_block_net(), "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    blocks = find_blocks(snn)
    assert [(b.add, b.output) for b in blocks] == [("b0_add", "b0_out"), ("b1_add", "b1_out")]
    assert snn.op(blocks[0].branch).kind == "Conv2d" and "b0_conv2" in blocks[0].branch
    assert "b1_conv2" in blocks[1].branch and "b1_proj" in blocks[1].shortcut


def test_per_block_selection_rewrites_only_the_chosen_blocks(inputs):
    only_second = _sew(two_block_net(), "connect=and,blocks=1", inputs)
    names = set(only_second.nodes())
    assert {"b0_add", "b0_out"} <= names, "block 0 keeps its Add and output population"
    assert "b1_add" not in names and "b1_out.and" in names and "b1_out.shortcut" in names
    assert only_second.attrs["sew"]["blocks"] == [{"index": 1, "add": "b1_add", "connect": "and"}]
    mixed = _sew(two_block_net(), "connect=add:iand", inputs)
    assert [b["connect"] for b in mixed.attrs["sew"]["blocks"]] == ["add", "iand"]
    assert "b1_out.iand" in set(mixed.nodes()) and "b0_add" not in set(mixed.nodes())
    rate = run_pipeline(two_block_net(), "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    runs = {name: Simulator(g, timesteps=6).run(inputs[:3]) for name, g in
            (("rate", rate), ("only_second", only_second), ("mixed", mixed))}
    for name, graph in (("only_second", only_second), ("mixed", mixed)):
        assert spikes_only_problems(graph) == []
        assert not np.array_equal(runs[name].outputs, runs["rate"].outputs), f"{name}: block 1 is rewritten"
    # Upstream of block 1 the rate SNN is untouched where block 0 is not selected: the same spikes, step by step.
    for population in ("stem_relu", "b0_relu1", "b0_out"):
        np.testing.assert_array_equal(runs["only_second"].spikes[population], runs["rate"].spikes[population])
    assert "b0_out" not in runs["mixed"].spikes and "b0_out.branch" in runs["mixed"].spikes


def test_and_after_add_gates_each_shortcut_train(inputs):
    """An identity shortcut that carries ``A0 + S0`` of an ADD block gets one gate per train:
    ``A1 * (A0 + S0) = A1 * A0 + A1 * S0`` (the connect functions are linear in S)."""
    graph = _sew(two_block_net(projection=False), "connect=add:and", inputs)
    gates = sorted(n for n in graph.find(ops.Population) if isinstance(graph.op(n).neuron, LIF))
    assert gates == ["b1_out.and0", "b1_out.and1"]
    branch = "b1_out.branch"
    trains = set()
    for gate in gates:
        (total,) = graph.inputs(gate)
        operands = graph.inputs(total)
        assert branch in operands
        trains |= set(operands) - {branch}
    assert trains == {"b0_out.branch", "stem_relu"}
    assert spikes_only_problems(graph) == []


def test_the_pass_refuses_a_graph_without_residual_blocks(cnn, inputs):
    snn = run_pipeline(cnn, "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    with pytest.raises(PassError, match="no residual blocks"):
        run_pipeline(snn, "sew")


@pytest.mark.parametrize("text, message", [
    ("sew{connect=xor}", "'xor' is not a connect function"),
    ("sew{blocks=1-2}", "blocks='1-2'"),
    ("sew{blocks=0:0}", "distinct block indices"),
    ("sew{mode=add}", "no option 'mode'"),
])
def test_bad_options_are_refused_when_parsed(text, message):
    with pytest.raises(PipelineSyntaxError, match=message):
        parse_pipeline(text)


def test_options_that_do_not_fit_the_graph_name_the_block_count(inputs):
    snn = run_pipeline(two_block_net(), "canonicalize,normalize,convert-rate", PassContext(calibration=inputs))
    with pytest.raises(PassError, match="selects block 2, but the graph has 2 residual blocks"):
        run_pipeline(snn, "sew{blocks=0:2}")
    with pytest.raises(PassError, match="3 connect functions for 2 selected blocks"):
        run_pipeline(snn, "sew{connect=add:and:iand}")
    with pytest.raises(PassError, match="needs a graph at the snn level"):
        run_pipeline(two_block_net(), "sew")
    once = run_pipeline(snn, "sew")
    with pytest.raises(PassError, match="already in SEW form"):
        run_pipeline(once, "sew")


def test_pipeline_text_round_trips():
    (p,) = parse_pipeline("sew{connect=and:iand,blocks=0:3}")
    assert p.to_text() == "sew{connect=and:iand,blocks=0:3}"
    assert parse_pipeline("sew")[0].to_text() == "sew"


@pytest.mark.parametrize("connect", ["add", "iand"])
def test_sew_graph_survives_save_and_load(tmp_path, inputs, connect):
    import snncc

    graph = _sew(two_block_net(), f"connect={connect}", inputs)
    snncc.save(graph, tmp_path / "sew.snn")
    loaded = snncc.load(tmp_path / "sew.snn")
    assert loaded.attrs["spikes_only"] is True
    assert to_text(loaded) == to_text(graph) and all(loaded.op(n).same_as(graph.op(n)) for n in graph.nodes())
    np.testing.assert_array_equal(Simulator(graph, timesteps=6).run(inputs[:2]).outputs,
                                  Simulator(loaded, timesteps=6).run(inputs[:2]).outputs)


def test_a_shortcut_padded_with_a_constant_is_refused(inputs):
    """A non-zero channel padding on the shortcut is a constant current, not a spike train."""
    snn = run_pipeline(option_a_block(pad_value=0.3), "canonicalize,normalize{granularity=layer},convert-rate",
                       PassContext(calibration=inputs))
    with pytest.raises(PassError, match=r"ChannelPad 'channel_pad' on a residual shortcut pads with"):
        run_pipeline(snn, "sew")


def sew_add_reference(ann: Graph, lambdas: dict[str, np.ndarray]) -> Graph:
    """The SEW ADD function of ``two_block_net`` written on the ANN, in its own units, independently of the pass:
    every ReLU with scale ``lambda`` saturates there (an IF neuron's rate is clip(I / lambda, 0, 1)), and a block
    computes ``min(relu(branch), lambda_out) + S`` with ``S`` the block input (identity) or
    ``min(relu(projection), lambda_out)``."""
    g = ann.clone()
    for relu, lam in lambdas.items():
        lam = float(lam)
        (src,) = g.inputs(relu)
        if isinstance(g.op(src), ops.Add):
            branch, shortcut = g.inputs(src)
            parts = [g.add(ops.Clip(min=0.0, max=lam), [branch])]
            parts.append(g.add(ops.Clip(min=0.0, max=lam), [shortcut]) if "proj" in shortcut else shortcut)
            g.set_inputs(src, parts)
            g.replace(relu, ops.Identity())
        else:
            g.replace(relu, ops.Clip(min=0.0, max=lam))
    return g


def test_sew_add_snn_computes_the_sew_function_of_the_ann(inputs):
    """SEW ADD as converted approaches, as T grows, the SEW function of the ANN's own blocks (with saturation at
    each layer's scale): the branch neuron, the projection neuron and the gains of the identity path are right."""
    from snncc.passes.normalize import activation_scales
    from snncc.runtime import run_analog

    ann = two_block_net()
    snn = run_pipeline(ann, "canonicalize,normalize{percentile=100,granularity=layer},convert-rate,sew",
                       PassContext(calibration=inputs))
    lambdas = activation_scales(ann, inputs, 100, "layer")
    expected = run_analog(sew_add_reference(ann, lambdas), inputs)[0]
    assert np.abs(expected - run_analog(ann, inputs)[0]).max() > 0.05 * np.abs(expected).max(), \
        "the SEW function must differ from the ANN's, or this test proves nothing"
    result = Simulator(snn, timesteps=512).run(inputs)
    errors = [np.abs(result.outputs[t - 1] - expected).max() / np.abs(expected).max() for t in (16, 512)]
    assert errors[1] < 0.03 and errors[1] < errors[0], errors
