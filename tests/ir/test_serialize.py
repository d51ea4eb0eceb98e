"""Round trips of the .snn file form for every registered op, and rejection of bad files."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from snncc.errors import FormatError
from snncc.ir import IF, LIF, OPS, SNN, Graph, load, ops, save, to_text


def every_op_graph() -> Graph:
    """An SNN-level graph that contains every registered op kind at least once."""
    rng = np.random.default_rng(0)
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(2, 8, 8), name="image"), name="image")
    h = g.add(ops.Pad2d(padding=(1, 1, 1, 1)), [x])
    h = g.add(ops.Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4),
                         pad_value=np.array([0.5, -0.5])), [h])
    h = g.add(ops.MaxPool2d(kernel=(2, 2), stride=(2, 2), padding=(1, 1, 1, 1)), [h])
    h = g.add(ops.Affine(scale=rng.normal(size=(4, 1, 1)), shift=np.zeros(())), [h])
    h = g.add(ops.Identity(), [h])
    p = g.add(ops.Population(neuron=IF(threshold=1.0, reset="zero", v_init=0.25)), [h])
    p2 = g.add(ops.Population(neuron=IF(signed=True)), [p])
    q = g.add(ops.Population(neuron=LIF(tau_mem=float("inf"))), [h])
    # A shared-weight layer: two operands through one weight array, a scalar and a per-channel gain.
    s = g.add(ops.Conv2d(weight=rng.normal(size=(4, 4, 1, 1)), bias=rng.normal(size=4),
                         input_gains=(np.float32(1), rng.uniform(0.5, 2, 4))), [p, q])
    a = g.add(ops.Add(), [p2, g.add(ops.Population(neuron=IF()), [s])])
    m = g.add(ops.SpikingMaxPool2d(kernel=(2, 2), stride=(1, 1)), [a])
    v = g.add(ops.AvgPool2d(kernel=(2, 2), stride=(1, 1), count_include_pad=True), [m])
    c = g.add(ops.Concat(axis=0), [v, v])
    c = g.add(ops.Slice(starts=(0, 0, 1), stops=(7, 3, 3), steps=(2, 2, 1)), [c])
    c = g.add(ops.ChannelPad(before=1, after=3, value=0.5), [c])
    gap = g.add(ops.GlobalAvgPool(), [c])
    r = g.add(ops.Reshape(shape=(8,)), [gap])
    f = g.add(ops.Flatten(), [r])
    lin = g.add(ops.Linear(weight=rng.normal(size=(3, 8)), input_gains=(0.5, rng.uniform(0.5, 2, 8))), [f, f])
    out = g.add(ops.Readout(), [lin], note="the output")
    g.outputs = [out]
    g.attrs["pipeline"] = "test"
    return g


def ann_activation_graph() -> Graph:
    """Every activation op, with parameters away from their defaults where they have any."""
    g = Graph()
    x = g.add(ops.Input(shape=(4,)))
    h = g.add(ops.Relu(), [x])
    h = g.add(ops.Clip(min=0.0, max=float("inf")), [h])
    h = g.add(ops.LeakyRelu(alpha=0.1), [h])
    h = g.add(ops.Sigmoid(), [h])
    h = g.add(ops.Tanh(), [h])
    h = g.add(ops.HardSigmoid(alpha=1 / 6, beta=0.25), [h])
    h = g.add(ops.HardSwish(), [h])
    h = g.add(ops.Silu(), [h])
    h = g.add(ops.Gelu(approximate="tanh"), [h])
    h = g.add(ops.Gelu(), [h])
    g.outputs = [g.add(ops.Softmax(axis=0, log=True), [h])]
    return g


def assert_same_graph(a: Graph, b: Graph) -> None:
    assert to_text(a) == to_text(b)
    assert a.attrs == b.attrs
    for node in a.topological_order():
        assert a.op(node).same_as(b.op(node)), node
        assert a.meta.get(node, {}) == b.meta.get(node, {})


def test_every_registered_op_round_trips(tmp_path):
    graphs = [every_op_graph(), ann_activation_graph()]
    kinds = {g.op(n).kind for g in graphs for n in g.nodes()}
    assert kinds == set(OPS), f"ops missing from the round-trip graphs: {set(OPS) - kinds}"
    for i, g in enumerate(graphs):
        path = save(g, tmp_path / f"g{i}.snn")
        assert_same_graph(g, load(path))


def test_input_gains_keep_their_values_and_operands_through_a_file(tmp_path):
    g = every_op_graph()
    loaded = load(save(g, tmp_path / "g.snn"))
    for kind in (ops.Conv2d, ops.Linear):
        shared = [n for n in g.find(kind) if g.op(n).input_gains is not None]
        assert len(shared) == 1
        (node,) = shared
        assert loaded.inputs(node) == g.inputs(node) and len(g.inputs(node)) == 2
        for a, b in zip(g.op(node).input_gains, loaded.op(node).input_gains):
            assert a.dtype == b.dtype == np.float32
            np.testing.assert_array_equal(a, b)
    assert "input_gains=(1, f32[4])" in to_text(loaded) and "input_gains=(0.5, f32[8])" in to_text(loaded)


def test_numpy_scalars_for_array_parameters_keep_their_dtype_through_a_file(tmp_path):
    # A numpy scalar given for an array field used to be written as a JSON number and then failed Affine.infer on
    # load (a float has no shape).
    g = Graph(level=SNN)
    x = g.add(ops.Input(shape=(3,)))
    h = g.add(ops.Affine(scale=np.float32(0.5), shift=np.float64(0.1)), [x])
    g.outputs = [g.add(ops.Readout(), [h])]
    path = save(g, tmp_path / "affine.snn")
    loaded = load(path)
    assert_same_graph(g, loaded)
    for name, value in (("scale", np.float32(0.5)), ("shift", np.float64(0.1))):
        stored = getattr(loaded.op(h), name)
        assert type(stored) is type(value) and stored == value, name
    with zipfile.ZipFile(path) as archive:
        params = json.loads(archive.read("graph.json"))["nodes"][1]["params"]
    assert set(params["scale"]) == {"scalar"} and set(params["shift"]) == {"scalar"}


def test_saving_twice_gives_identical_graphs(tmp_path):
    g = every_op_graph()
    first = load(save(g, tmp_path / "a.snn"))
    second = load(save(first, tmp_path / "b.snn"))
    assert_same_graph(first, second)


def _rewrite(path, tmp_path, mutate):
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    mutate(files)
    bad = tmp_path / "bad.snn"
    with zipfile.ZipFile(bad, "w") as archive:
        for n, data in files.items():
            archive.writestr(n, data)
    return bad


def test_truncated_file_is_rejected(tmp_path):
    path = save(every_op_graph(), tmp_path / "g.snn")
    data = path.read_bytes()
    (tmp_path / "cut.snn").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupt or truncated"):
        load(tmp_path / "cut.snn")


def test_unknown_schema_version_is_rejected(tmp_path):
    path = save(every_op_graph(), tmp_path / "g.snn")

    def bump(files):
        doc = json.loads(files["graph.json"])
        doc["schema_version"] = 99
        files["graph.json"] = json.dumps(doc).encode()

    with pytest.raises(FormatError, match="schema version 99"):
        load(_rewrite(path, tmp_path, bump))


def test_pickled_arrays_are_refused(tmp_path):
    path = save(every_op_graph(), tmp_path / "g.snn")

    def pickle_array(files):
        buffer = io.BytesIO()
        np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
        files["arrays/0.npy"] = buffer.getvalue()

    with pytest.raises(FormatError, match="arrays/0.npy"):
        load(_rewrite(path, tmp_path, pickle_array))


def test_wrong_shapes_and_unknown_kinds_are_rejected(tmp_path):
    path = save(every_op_graph(), tmp_path / "g.snn")

    def unknown_kind(files):
        doc = json.loads(files["graph.json"])
        doc["nodes"][1]["kind"] = "Teleport"
        files["graph.json"] = json.dumps(doc).encode()

    with pytest.raises(FormatError, match="unknown op kind 'Teleport'"):
        load(_rewrite(path, tmp_path, unknown_kind))

    def wrong_shape(files):
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((3, 3)))
        doc = json.loads(files["graph.json"])
        conv = next(n for n in doc["nodes"] if n["kind"] == "Conv2d")
        files[conv["params"]["weight"]["array"]] = buffer.getvalue()

    with pytest.raises(FormatError, match="weight must be"):
        load(_rewrite(path, tmp_path, wrong_shape))


def test_invalid_graph_is_never_written(tmp_path, cnn):
    cnn.attrs["level"] = SNN  # ReLUs are illegal at the SNN level
    with pytest.raises(Exception, match="not legal"):
        save(cnn, tmp_path / "x.snn")
    assert list(tmp_path.iterdir()) == []


def test_activation_parameters_in_the_text_form():
    text = to_text(ann_activation_graph())
    assert "= HardSigmoid(%" in text and "alpha=0.166667, beta=0.25) : [4] analog" in text
    assert "approximate='tanh'" in text and "approximate='none'" in text
    for kind in ("Sigmoid", "Tanh", "HardSwish", "Silu"):
        assert f"= {kind}(%" in text


def test_invalid_activation_parameter_in_a_file_is_rejected(tmp_path):
    path = save(ann_activation_graph(), tmp_path / "g.snn")

    def bad_approximation(files):
        doc = json.loads(files["graph.json"])
        gelu = next(n for n in doc["nodes"] if n["kind"] == "Gelu")
        gelu["params"]["approximate"] = "fast"
        files["graph.json"] = json.dumps(doc).encode()

    with pytest.raises(FormatError, match="approximate must be one of"):
        load(_rewrite(path, tmp_path, bad_approximation))
