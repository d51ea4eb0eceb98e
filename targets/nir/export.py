"""Export an SNN-level snncc graph to NIR through the ``nir`` package (an optional dependency: ``snncc[nir]``).

One NIR node per snncc node, with the same id, from a table keyed by op class (:data:`OP_RULES`) and, for
populations, by neuron model class (:data:`NEURON_RULES`); each entry also says what it cannot carry, so
:func:`check_nir` lists every problem before anything is built. The time step is stated in seconds (``dt``, default
1e-4 s, the one snnTorch assumes) in the graph's metadata and in every time constant, which are written so that the
forward-Euler step of NIR's equations with that ``dt`` is snncc's discrete step:

- IF (``v += I``, spike at ``v >= threshold``, reset to zero): ``nir.IF(r=1, v_threshold, v_reset=0)``; NIR's
  ``dv/dt = R I`` has no time constant and its readers take ``r = 1`` as one step's input (Norse ignores ``r``,
  snnTorch requires 1). The snntorch flavor writes ``nir.LIF`` with ``tau = 1e10 dt`` and ``r = tau / dt``: a
  decay ``1 - dt / tau`` that rounds to 1 in float32.
- LIF (``v = beta v + I``): ``nir.LIF(tau = dt / (1 - beta), r = tau / dt, v_leak = 0)``, whose Euler step is
  ``v += (dt / tau) (-v + r I) = beta v + I`` (snnTorch's own export convention). The norse flavor writes ``r = 1``
  and ``v_threshold = threshold (1 - beta)`` instead (Norse ignores ``r``): the membrane is scaled by
  ``1 - beta``, threshold and all, so the spikes are the same (reset to zero is scale-free).
- CubaLIF (``u = (1 - a) u + I``, ``v = (1 - b) v + u + bias``): ``tau_syn = dt / a``, ``tau_mem = dt / b``,
  ``w_in = tau_syn / dt``, ``r = tau_mem / dt``, ``v_leak = bias / b`` (the Euler step with the new current).
- Conv2d, Linear (``nir.Affine``), AvgPool2d (``nir.AvgPool2d``, or ``nir.SumPool2d`` with ``1/k`` folded into
  the weights of the next synaptic layer for Norse), Flatten, and the Readout (``nir.I`` with ``r = 1``, whose
  integral is ``t`` times snncc's running mean; dropped for the peers, which read the last layer's current).

NIR compares ``v > v_threshold``, snncc ``v >= threshold``: spikes differ only where a membrane equals the threshold
exactly. The network input is an analog current, the same value at every time step (the metadata says so).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snncc import __version__
from snncc.errors import SnnccError, UnsupportedModelError
from snncc.frontend.nir import DEFAULT_DT, require_nir
from snncc.ir import IF, LIF, SNN, CubaLIF, Graph, TensorType, ops
from snncc.targets.nir.flavors import Flavor, flavor_named
from snncc.targets.nir.legalize import NirViolation

#: The IF neuron as NIR's LIF for snnTorch: tau = IF_AS_LIF_TAU * dt gives a decay 1 - 1e-10, 1.0 in float32.
IF_AS_LIF_TAU = 1e10
#: A LIF (or CubaLIF membrane) with no leak at all gets this tau (in units of dt): NIR has no infinite tau.
NO_LEAK_TAU = IF_AS_LIF_TAU

REMEDY_LEGALIZE = "run snncc.targets.nir.legalize_for_nir() first (the nir-* passes)"


@dataclass
class _Context:
    graph: Graph
    types: dict[str, TensorType]
    flavor: Flavor
    dt: float
    #: Synaptic node -> factor its weights are multiplied by (the 1/k of a sum pooling before it, Norse flavor).
    weight_gain: dict[str, float] = field(default_factory=dict)

    def shape(self, node: str) -> tuple[int, ...]:
        return self.types[node].shape

    def input_shape(self, node: str) -> tuple[int, ...]:
        return self.types[self.graph.inputs(node)[0]].shape


def _full(value: float | tuple[float, ...], shape: tuple[int, ...]) -> np.ndarray:
    """A neuron parameter (one number, or one per channel on axis 0) as a float32 array of the population's shape."""
    array = np.asarray(value, np.float64)
    if array.ndim:
        array = array.reshape((len(array),) + (1,) * (len(shape) - 1))
    return np.ascontiguousarray(np.broadcast_to(array, shape), dtype=np.float32)


def _bad(node: str, limit: str, actual: str, remedy: str) -> list[NirViolation]:
    return [NirViolation(node, limit, actual, remedy)]


# ---- neurons ---------------------------------------------------------------------------------------------------

def _check_membrane(ctx: _Context, node: str, neuron: IF | LIF) -> list[NirViolation]:
    problems = []
    if getattr(neuron, "signed", False):
        problems += _bad(node, "spikes of 0 or 1", "signed spikes (-1, 0, 1)",
                         "convert without signed=true (NIR has no negative spikes)")
    if neuron.reset != "zero":
        problems += _bad(node, "a reset to v_reset = 0", f"reset by {neuron.reset}", REMEDY_LEGALIZE)
    if np.any(neuron.v_init):
        problems += _bad(node, "a membrane that starts at 0", f"v_init = {neuron.v_init}", REMEDY_LEGALIZE)
    if ctx.flavor.uniform_threshold and isinstance(neuron.threshold, tuple) and len(set(neuron.threshold)) > 1:
        problems += _bad(node, f"one threshold per population ({ctx.flavor.name})", "a threshold per channel",
                         "export with flavor='spec' or 'norse'")
    return problems


def _export_if(ctx: _Context, node: str, neuron: IF):
    nir = require_nir()
    shape = ctx.shape(node)
    if ctx.flavor.if_as_lif:
        tau = np.full(shape, IF_AS_LIF_TAU * ctx.dt, np.float32)
        return nir.LIF(tau=tau, r=np.full(shape, IF_AS_LIF_TAU, np.float32), v_leak=np.zeros(shape, np.float32),
                       v_threshold=_full(neuron.threshold, shape), v_reset=np.zeros(shape, np.float32))
    return nir.IF(r=np.ones(shape, np.float32), v_threshold=_full(neuron.threshold, shape),
                  v_reset=np.zeros(shape, np.float32))


def _leak_fraction(beta: float | tuple[float, ...]) -> np.ndarray:
    """``1 - beta`` (the fraction of the membrane lost per step), at least 1 / NO_LEAK_TAU."""
    return np.maximum(1.0 - np.asarray(beta, np.float64), 1.0 / NO_LEAK_TAU)


def _export_lif(ctx: _Context, node: str, neuron: LIF):
    nir = require_nir()
    shape = ctx.shape(node)
    leak = _leak_fraction(neuron.beta)
    tau = (ctx.dt / _full(_plain(leak), shape).astype(np.float64)).astype(np.float32)
    threshold = _full(neuron.threshold, shape)
    if ctx.flavor.lif_gain_in_threshold:
        r = np.ones(shape, np.float32)
        threshold = threshold * _full(_plain(leak), shape)
    else:
        r = (tau.astype(np.float64) / ctx.dt).astype(np.float32)
    return nir.LIF(tau=tau, r=r, v_leak=np.zeros(shape, np.float32), v_threshold=threshold,
                   v_reset=np.zeros(shape, np.float32))


def _plain(values: np.ndarray) -> float | tuple[float, ...]:
    """A 0-d array as a float, a 1-d one as a tuple (the forms of a neuron parameter)."""
    return tuple(values.tolist()) if values.ndim else float(values)


def _check_cuba(ctx: _Context, node: str, neuron: CubaLIF) -> list[NirViolation]:
    problems = []
    if neuron.decay_unit != 1:
        problems += _bad(node, "float decays (decay_unit = 1)", f"decay_unit = {neuron.decay_unit}",
                         "export the snn-level graph, before a chip's integer legalization")
    if neuron.reset != "zero":
        problems += _bad(node, "a reset to v_reset = 0", f"reset by {neuron.reset}", REMEDY_LEGALIZE)
    if neuron.initial_voltage != 0:
        problems += _bad(node, "a membrane that starts at 0", f"initial_voltage = {neuron.initial_voltage}",
                         REMEDY_LEGALIZE)
    if neuron.current_decay == 0:
        problems += _bad(node, "a finite synaptic time constant", "current_decay = 0 (the current never decays)",
                         "give the synaptic current a decay")
    return problems


def _export_cuba(ctx: _Context, node: str, neuron: CubaLIF):
    nir = require_nir()
    shape = ctx.shape(node)
    a = float(neuron.current_decay)
    b = max(float(neuron.voltage_decay), 1.0 / NO_LEAK_TAU)
    tau_syn, tau_mem = ctx.dt / a, ctx.dt / b
    return nir.CubaLIF(tau_syn=np.full(shape, tau_syn, np.float32), tau_mem=np.full(shape, tau_mem, np.float32),
                       r=np.full(shape, tau_mem / ctx.dt, np.float32),
                       v_leak=np.full(shape, neuron.bias / b, np.float32),
                       v_threshold=np.full(shape, neuron.threshold, np.float32),
                       v_reset=np.zeros(shape, np.float32), w_in=np.full(shape, tau_syn / ctx.dt, np.float32))


@dataclass(frozen=True)
class NeuronRule:
    export: Callable
    check: Callable = lambda ctx, node, neuron: []


NEURON_RULES: dict[type, NeuronRule] = {
    IF: NeuronRule(_export_if, _check_membrane),
    LIF: NeuronRule(_export_lif, _check_membrane),
    CubaLIF: NeuronRule(_export_cuba, _check_cuba),
}


# ---- ops -------------------------------------------------------------------------------------------------------

def _export_input(ctx: _Context, node: str, op: ops.Input):
    return require_nir().Input(input_type={"input": np.array(ctx.shape(node))})


def _check_conv(ctx: _Context, node: str, op: ops.Conv2d) -> list[NirViolation]:
    problems = []
    if op.pad_value is not None:
        problems += _bad(node, "zero padding", f"padding with {op.pad_value.tolist()} (the folded input "
                         "normalization)", "run the nir-input-padding pass (legalize_for_nir) if the layer reads "
                         "the network input")
    if op.input_gains is not None:
        problems += _bad(node, "one operand per layer", f"{len(op.input_gains)} operands through shared weights",
                         "compile without the sew pass")
    top, left, bottom, right = op.padding
    if (top, left) != (bottom, right):
        problems += _bad(node, "symmetric padding (pad_h, pad_w)", f"padding {op.padding}",
                         "use symmetric padding in the model")
    if op.groups != 1 and not ctx.flavor.grouped_conv:
        problems += _bad(node, f"groups = 1 ({ctx.flavor.name} builds no grouped convolutions)",
                         f"groups = {op.groups}", "export with flavor='spec'")
    return problems


def _export_conv(ctx: _Context, node: str, op: ops.Conv2d):
    nir = require_nir()
    weight = op.weight * np.float32(ctx.weight_gain.get(node, 1.0))
    bias = np.zeros(op.weight.shape[0], np.float32) if op.bias is None else np.array(op.bias)
    return nir.Conv2d(input_shape=tuple(ctx.input_shape(node)[1:]), weight=np.array(weight, np.float32),
                      stride=tuple(op.stride), padding=(op.padding[0], op.padding[1]), dilation=tuple(op.dilation),
                      groups=op.groups, bias=bias)


def _check_linear(ctx: _Context, node: str, op: ops.Linear) -> list[NirViolation]:
    if op.input_gains is not None:
        return _bad(node, "one operand per layer", f"{len(op.input_gains)} operands through shared weights",
                    "compile without the sew pass")
    return []


def _export_linear(ctx: _Context, node: str, op: ops.Linear):
    weight = op.weight * np.float32(ctx.weight_gain.get(node, 1.0))
    bias = np.zeros(op.weight.shape[0], np.float32) if op.bias is None else np.array(op.bias)
    return require_nir().Affine(weight=np.array(weight, np.float32), bias=bias)


def _pool_users(ctx: _Context, node: str) -> list[str]:
    """The users of ``node``, seen through views (Flatten, Identity, Reshape)."""
    found = []
    for user, _ in ctx.graph.users(node):
        found += _pool_users(ctx, user) if ctx.graph.op(user).is_view else [user]
    return found


def _check_pool(ctx: _Context, node: str, op: ops.AvgPool2d) -> list[NirViolation]:
    problems = []
    top, left, bottom, right = op.padding
    if (top, left) != (bottom, right):
        problems += _bad(node, "symmetric padding", f"padding {op.padding}", "use symmetric pooling padding")
    if any(op.padding) and not op.count_include_pad:
        problems += _bad(node, "a divisor of kernel size (count_include_pad)", "padded average pooling that "
                         "divides by the unpadded count", "pool without padding")
    if ctx.flavor.sum_pool:
        if any(op.padding):
            problems += _bad(node, "no padding (Norse's SumPool2d)", f"padding {op.padding}", "pool without padding")
        for user in _pool_users(ctx, node):
            layer = ctx.graph.op(user)
            if not isinstance(layer, (ops.Conv2d, ops.Linear)) or layer.input_gains is not None:
                problems += _bad(node, "average pooling followed by a Conv2d or Linear, into whose weights the "
                                 "norse flavor folds the 1/k of its sum pooling", f"followed by {layer.kind} {user!r}",
                                 "export with flavor='spec' or 'snntorch'")
    return problems


def _export_pool(ctx: _Context, node: str, op: ops.AvgPool2d):
    nir = require_nir()
    cls = nir.SumPool2d if ctx.flavor.sum_pool else nir.AvgPool2d
    return cls(kernel_size=np.array(op.kernel), stride=np.array(op.stride),
               padding=np.array((op.padding[0], op.padding[1])))


def _export_flatten(ctx: _Context, node: str, op: ops.Flatten):
    # start_dim counted from the end: all per-sample axes under NIR's types (which have no batch axis), and all
    # but the batch axis where a reader runs torch.nn.Flatten(start_dim, end_dim) on batched tensors.
    shape = ctx.input_shape(node)
    return require_nir().Flatten(input_type={"input": np.array(shape)}, start_dim=-len(shape), end_dim=-1)


def _check_population(ctx: _Context, node: str, op: ops.Population) -> list[NirViolation]:
    rule = NEURON_RULES.get(type(op.neuron))
    if rule is None:
        return _bad(node, f"neurons of {', '.join(c.kind for c in NEURON_RULES)}", f"{op.neuron.kind} neurons",
                    "convert with rate coding (convert-rate): NIR has no few-spike or AMOS neurons")
    return rule.check(ctx, node, op.neuron)


def _export_population(ctx: _Context, node: str, op: ops.Population):
    return NEURON_RULES[type(op.neuron)].export(ctx, node, op.neuron)


def _export_readout(ctx: _Context, node: str, op: ops.Readout):
    if not ctx.flavor.integrator_readout:
        return None  # the readers integrate the last layer's current themselves
    return require_nir().I(r=np.ones(ctx.shape(node), np.float32))


@dataclass(frozen=True)
class OpRule:
    """How one op class becomes a NIR node (None: the node is left out and its input stands for it), and what it
    cannot carry."""

    export: Callable
    check: Callable = lambda ctx, node, op: []


OP_RULES: dict[type, OpRule] = {
    ops.Input: OpRule(_export_input),
    ops.Conv2d: OpRule(_export_conv, _check_conv),
    ops.Linear: OpRule(_export_linear, _check_linear),
    ops.AvgPool2d: OpRule(_export_pool, _check_pool),
    ops.Flatten: OpRule(_export_flatten),
    ops.Identity: OpRule(lambda ctx, node, op: None),
    ops.Population: OpRule(_export_population, _check_population),
    ops.Readout: OpRule(_export_readout),
}

#: Why an op without a rule cannot be exported, and what to do instead.
MISSING_REMEDIES: dict[type, str] = {
    ops.MaxPool2d: "NIR has no max pooling: use the average-pooling model (models/lenet5-avg-mnist.onnx) or "
                   "convert with convert-rate{maxpool=avg}",
    ops.SpikingMaxPool2d: "NIR has no max pooling: use the average-pooling model (models/lenet5-avg-mnist.onnx) or "
                          "convert with convert-rate{maxpool=avg}",
}


def _context(graph: Graph, flavor: str | Flavor, dt: float) -> _Context:
    flavor = flavor if isinstance(flavor, Flavor) else flavor_named(flavor)
    if not dt > 0:
        raise SnnccError(f"the NIR time step dt must be a positive number of seconds, got {dt}")
    ctx = _Context(graph, graph.types(), flavor, float(dt))
    if flavor.sum_pool:
        for node in graph.find(ops.AvgPool2d):
            op = graph.op(node)
            for user in _pool_users(ctx, node):
                ctx.weight_gain[user] = ctx.weight_gain.get(user, 1.0) / (op.kernel[0] * op.kernel[1])
    return ctx


def check_nir(graph: Graph, flavor: str | Flavor = "spec", dt: float = DEFAULT_DT) -> list[NirViolation]:
    """Every node that NIR in ``flavor`` cannot carry as it is, with the limit, the actual value and the remedy."""
    if graph.level != SNN:
        return [NirViolation("<graph>", "an snn-level graph", f"a graph at the {graph.level} level",
                             "convert it first (e.g. canonicalize,normalize,convert-rate)")]
    ctx = _context(graph, flavor, dt)
    problems = []
    for node in graph.topological_order():
        op = graph.op(node)
        rule = OP_RULES.get(type(op))
        if rule is None:
            problems.append(NirViolation(node, "the ops " + ", ".join(c.kind for c in OP_RULES), op.kind,
                                         MISSING_REMEDIES.get(type(op), f"NIR export has no node for {op.kind}")))
        else:
            problems += rule.check(ctx, node, op)
    return problems


def export_nir(graph: Graph, flavor: str | Flavor = "spec", dt: float = DEFAULT_DT):
    """The ``nir.NIRGraph`` of an SNN-level graph that :func:`check_nir` passes (UnsupportedModelError otherwise,
    listing every problem)."""
    nir = require_nir()
    if problems := check_nir(graph, flavor, dt):
        raise UnsupportedModelError("NIR export cannot carry:\n  " + "\n  ".join(map(str, problems)))
    ctx = _context(graph, flavor, dt)
    nodes, edges, stands_for = {}, [], {}
    for node in graph.topological_order():
        op = graph.op(node)
        exported = OP_RULES[type(op)].export(ctx, node, op)
        sources = [stands_for[u] for u in graph.inputs(node)]
        if exported is None:
            stands_for[node] = sources[0]
            continue
        nodes[node] = exported
        stands_for[node] = node
        edges += [(u, node) for u in sources]
    for i, out in enumerate(graph.outputs):
        name = "output" if len(graph.outputs) == 1 else f"output{i}"
        name = name if name not in nodes else f"{name}_{i}"
        nodes[name] = nir.Output(output_type={"output": np.array(ctx.shape(out))})
        edges.append((stands_for[out], name))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_metadata(ctx), type_check=False)


def _metadata(ctx: _Context) -> dict[str, object]:
    graph = ctx.graph
    meta = {"producer": "snncc", "snncc_version": __version__, "flavor": ctx.flavor.name, "dt": ctx.dt,
            "input_encoding": "analog: the same input value at every time step",
            "readout": ("nir.I integrates the last layer's current; snncc reports it divided by t"
                        if ctx.flavor.integrator_readout else
                        "the last layer's current at each step; its time average (or sum) is the output"),
            "pipeline": str(graph.attrs.get("pipeline", "")), "passes": ",".join(graph.attrs.get("passes", []))}
    if "input_scaling" in graph.attrs:
        meta["input_scaling"] = json.dumps(graph.attrs["input_scaling"])
    return meta


def write_nir(graph: Graph, path: str | Path, flavor: str | Flavor = "spec", dt: float = DEFAULT_DT) -> Path:
    """Export ``graph`` (see :func:`export_nir`) and write it to ``path`` as an NIR HDF5 file, atomically."""
    import os
    import tempfile

    nir = require_nir()
    exported = export_nir(graph, flavor, dt)
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        nir.write(temporary, exported)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path
