"""``calibrate``: training-free calibration of a converted rate SNN against its own ANN, layer by layer.

After Li, Deng, Dong, Gong & Gu, "A free lunch from ANN: towards efficient, accurate spiking neural networks
calibration" (ICML 2021): the conversion error of a layer is, to first order, a shift of its output rates that a few
hundred or thousand training images measure and that the layer's bias (or its neurons' initial membrane) removes.

For a population ``p`` of IF neurons with threshold ``theta`` (channel ``c``), simulated for ``T`` steps:

- the ANN activation is the converted graph's own analog value of ``p``, ``a = clip(I / theta, 0, 1)`` (the rate an
  IF neuron can express, at most one spike per step; :meth:`~snncc.runtime.torch_lowering.LoweredGraph.forward_analog`
  of the *uncalibrated* graph, so the targets never move);
- the SNN value is ``s r`` with ``r = n(T) / T`` the spike count after ``T`` steps over ``T``, simulated with every
  earlier population already calibrated, and ``s`` what one spike stands for in units of the original threshold
  (1, or ``alpha`` after threshold rescaling);
- the mean rate error of channel ``c`` is ``e_c = E[a - s r]``, the mean over images and positions.

Corrections, in this order:

- **threshold rescaling** (optional, ``rescale=True``; not in Li et al., a common low-latency correction): per
  population one factor ``alpha`` (from :data:`RESCALE_GRID`) that minimizes ``E[(a - q_alpha(a))^2]`` on the ANN
  activations, ``q_alpha(a) = alpha clip(floor(T a / alpha + v_init), 0, T) / T`` being what ``T`` steps of IF
  neurons with threshold ``alpha theta`` pass on for a constant input. The threshold becomes ``alpha theta`` and
  the weights of the layers that read the spikes are multiplied by ``alpha``, so a spike carries ``alpha`` of the
  old unit on: a smaller threshold resolves small activations in finer steps and saturates earlier (the
  quantization / clipping trade-off of low-latency conversion). Only where the spikes are read by Conv2d/Linear
  layers through pooling and views. Measured against the ANN, not the SNN: no simulation.
- **bias calibration (BC)**, every population in topological order: ``b_c <- b_c + theta_c e_c`` in the Conv2d/Linear
  that feeds ``p`` (and only ``p``). Every step then brings ``theta_c e_c`` more charge, which moves the value of a
  neuron in its linear range by ``e_c``. Populations fed by anything else (an Add, a shared-weight layer, a layer
  with other readers) get no BC.
- **potential calibration (PC)**, after BC of the same population and from a new measurement: ``v_init <- v_init +
  T e / s`` (``v_init`` is a fraction of the threshold: the membrane starts with the charge of ``T e`` more at step
  ``T``, given once). This is the paper's light potential calibration. ``potential="channel"`` corrects each
  channel; ``"layer"`` (the default) uses the mean over channels, ``e = mean_c e_c``, because the compiled runtime
  has kernels for one initial membrane per population only (per-channel values run its reference path, measured
  12x slower on the VGG) and BC already removes the per-channel part. The paper's "advanced" pipeline (weights
  refitted layer by layer by gradient descent) is not implemented.

All corrections are specific to ``T``: the graph is calibrated for the latency it will run at; ``attrs
["calibration"]`` records the options and, per population, the mean absolute rate error before and after. The
SNN's rates are measured by the simulator (:class:`~snncc.runtime.Simulator`, the compiled runtime where built) on
a copy of the graph with one readout per population, of the population's spikes averaged over positions
(:func:`rate_probe`); one simulation per measurement.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from snncc.data import InputScaling
from snncc.errors import SimulationError
from snncc.ir import IF, LIF, Graph, ops
from snncc.runtime import Simulator
from snncc.runtime.analog import check_input
from snncc.runtime.torch_lowering import lower

PAPER = ("Li, Deng, Dong, Gong & Gu, A free lunch from ANN: towards efficient, accurate spiking neural networks "
         "calibration, ICML 2021")
POTENTIAL_MODES = ("layer", "channel", "none")
#: The candidate factors ``alpha`` of threshold rescaling (the new threshold over the old).
RESCALE_GRID = tuple(float(a) for a in np.round(np.arange(0.25, 1.0001, 0.05), 2))
#: Ops between a population and the layers that read its spikes through which a factor on the spikes passes
#: unchanged (linear and positively homogeneous: pooling of spike counts, views).
_SCALE_TRANSPARENT = (ops.SpikingMaxPool2d, ops.AvgPool2d, ops.GlobalAvgPool, ops.Flatten, ops.Reshape, ops.Identity)


def _populations(graph: Graph) -> list[str]:
    """The populations calibration corrects: all but the logic gates (memoryless LIF, ``tau_mem = 0``: the SEW
    gates and the OR gates of a chip's float form), whose thresholds are logic, not a rate's scale."""
    return [n for n in graph.topological_order() if isinstance(op := graph.op(n), ops.Population)
            and not (isinstance(op.neuron, LIF) and op.neuron.tau_mem == 0)]


def _model_inputs(graph: Graph, x: np.ndarray, apply_scaling: bool) -> np.ndarray:
    if apply_scaling:
        x = InputScaling.from_json(graph.attrs.get("input_scaling", {})).apply(np.asarray(x))
    return check_input(graph, x)


def _channel_mean(values: np.ndarray) -> np.ndarray:
    """``(N, C, ...) -> (C,)``: the mean over images and positions."""
    return values.reshape(values.shape[0], values.shape[1], -1).mean(axis=(0, 2), dtype=np.float64)


# ---- measurements ------------------------------------------------------------------------------------------------

def ann_activations(graph: Graph, x: np.ndarray, nodes: list[str], batch_size: int = 250):
    """Per batch of model inputs ``x``, the analog values of the populations ``nodes`` of ``graph``
    (``clip(I / theta, 0, 1)``, :meth:`~snncc.runtime.torch_lowering.LoweredGraph.forward_analog`), as a generator
    of ``{node: tensor (B, *shape)}``."""
    module = lower(graph)
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            yield module.forward_analog(x[start:start + batch_size], record=tuple(nodes)).values


def ann_channel_means(graph: Graph, x: np.ndarray, nodes: list[str], batch_size: int = 250) -> dict[str, np.ndarray]:
    """Per population of ``nodes`` the mean over images and positions of its ANN activation, per channel."""
    sums = {n: 0.0 for n in nodes}
    for values in ann_activations(graph, x, nodes, batch_size):
        for n in nodes:
            sums[n] = sums[n] + _channel_mean(values[n].numpy()) * len(values[n])
    return {n: sums[n] / len(x) for n in nodes}


def rate_probe(graph: Graph, nodes: list[str], per_channel: bool = True) -> Graph:
    """The part of ``graph`` that the populations ``nodes`` depend on, with one output per population: a readout of
    its spikes averaged over positions (GlobalAvgPool for (C, H, W) populations), whose value after ``T`` steps is
    each channel's mean rate ``n(T) / T``; with ``per_channel=False`` a readout of every neuron's spikes, its rate
    ``n(T) / T``. Nothing after the last of ``nodes`` is simulated."""
    probe = graph.clone()
    types = probe.types()
    probe.outputs = []
    for node in nodes:
        source = node
        if per_channel and len(types[node].shape) == 3:
            source = probe.add(ops.GlobalAvgPool(), [node], name=f"{node}.rate_mean", created_by="calibrate")
        probe.outputs.append(probe.add(ops.Readout(), [source], name=f"{node}.rate", created_by="calibrate"))
    probe.remove_dead()
    return probe


def snn_channel_means(graph: Graph, x: np.ndarray, timesteps: int, nodes: list[str],
                      backend: str | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Per population of ``nodes`` the mean spike rate after ``timesteps`` steps (count over T) per channel, over the
    model inputs ``x`` and positions: one simulation of :func:`rate_probe`."""
    result = Simulator(rate_probe(graph, nodes), timesteps=timesteps, backend=backend).run(
        x, progress=progress, apply_scaling=False)
    return {n: _channel_mean(result.all_outputs[i][timesteps - 1]) for i, n in enumerate(nodes)}


def rate_errors(graph: Graph, x: np.ndarray, timesteps: int, target: Graph | None = None,
                apply_scaling: bool = True, backend: str | None = None) -> dict[str, np.ndarray]:
    """Per population, the mean rate error per channel ``E[a - s r]`` of ``graph`` on ``x`` (data as stored; the
    recorded input scaling applies), in units of the target's threshold: ``a`` the ANN activation of ``target``
    (default: ``graph`` itself; give the uncalibrated graph to measure a calibrated one against the ANN it was
    calibrated to), ``r`` the SNN rate after ``timesteps`` steps and ``s`` the ratio of ``graph``'s threshold to the
    target's (what one spike stands for after threshold rescaling)."""
    target = graph if target is None else target
    x = _model_inputs(graph, x, apply_scaling)
    nodes = _populations(graph)
    ann = ann_channel_means(target, x, nodes)
    snn = snn_channel_means(graph, x, timesteps, nodes, backend)
    errors = {}
    for n in nodes:
        channels = len(snn[n])
        own, theirs = (np.broadcast_to(np.asarray(g.op(n).neuron.threshold, np.float64), (channels,))
                       for g in (graph, target))
        errors[n] = ann[n] - own / theirs * snn[n]
    return errors


# ---- threshold rescaling -----------------------------------------------------------------------------------------

def _weight_layers(graph: Graph, population: str) -> list[str] | None:
    """The Conv2d/Linear layers that read ``population``'s spikes (through pooling and views only), or None if
    anything else reads them (then a factor on its spikes cannot be folded into weights)."""
    layers, frontier = [], [population]
    while frontier:
        node = frontier.pop()
        if node in graph.outputs:
            return None
        for user, _ in graph.users(node):
            op = graph.op(user)
            if "or_gate_of" in graph.meta.get(user, {}):
                return None  # an OR gate's gather: its output is logic, which no factor on the spikes passes
            if isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is None:
                layers.append(user)
            elif isinstance(op, _SCALE_TRANSPARENT):
                frontier.append(user)
            else:
                return None
    return layers


def quantized(a: torch.Tensor, alpha: float, timesteps: int, v_init: float | torch.Tensor) -> torch.Tensor:
    """What ``timesteps`` steps of IF neurons with threshold ``alpha`` (reset by subtraction, initial membrane
    ``v_init`` thresholds) pass on for a constant input ``a`` (in units of the old threshold), spikes weighted by
    ``alpha``: ``alpha clip(floor(T a / alpha + v_init), 0, T) / T``."""
    return alpha * (torch.floor(timesteps * a / alpha + v_init).clamp(0, timesteps) / timesteps)


def threshold_scales(graph: Graph, x: np.ndarray, timesteps: int, nodes: list[str],
                     batch_size: int = 250) -> dict[str, float]:
    """Per population the ``alpha`` of :data:`RESCALE_GRID` with the least ``E[(a - quantized(a, alpha))^2]`` over
    its ANN activations ``a`` on the model inputs ``x``."""
    errors = {n: np.zeros(len(RESCALE_GRID)) for n in nodes}
    v_inits = {n: torch.as_tensor(np.asarray(graph.op(n).neuron.v_init, np.float32)) for n in nodes}
    for values in ann_activations(graph, x, nodes, batch_size):
        for n in nodes:
            a = values[n]
            v_init = v_inits[n].reshape((-1,) + (1,) * (a.dim() - 2)) if v_inits[n].dim() else v_inits[n]
            for i, alpha in enumerate(RESCALE_GRID):
                errors[n][i] += float(((a - quantized(a, alpha, timesteps, v_init)) ** 2).sum(dtype=torch.float64))
    return {n: RESCALE_GRID[int(np.argmin(errors[n]))] for n in nodes}


# ---- the method --------------------------------------------------------------------------------------------------

def _bias_layer(graph: Graph, population: str) -> str | None:
    """The Conv2d/Linear whose bias feeds ``population`` and nothing else, or None."""
    (feeder,) = graph.inputs(population)
    op = graph.op(feeder)
    if isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is None and len(graph.users(feeder)) == 1 \
            and feeder not in graph.outputs:
        return feeder
    return None


def _as_parameter(values: np.ndarray, like: float | tuple[float, ...]) -> float | tuple[float, ...]:
    """Float32 values as a neuron parameter: one number if ``like`` is one and all values agree, else a tuple."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if not isinstance(like, tuple) and np.all(values == values[0]):
        return float(values[0])
    return tuple(float(v) for v in values)


def _set_neuron(graph: Graph, node: str, **changes: object) -> None:
    op = graph.op(node)
    graph.replace(node, op.replace(neuron=dataclasses.replace(op.neuron, **changes)))


def _mean_abs(error: np.ndarray) -> float:
    return float(np.mean(np.abs(error)))


def calibrate(graph: Graph, x: np.ndarray, timesteps: int, bias: bool = True, potential: str = "layer",
              rescale: bool = False, apply_scaling: bool = True, backend: str | None = None,
              progress: bool = False, ann: tuple[Graph, np.ndarray] | None = None) -> Graph:
    """A copy of the rate-coded SNN ``graph`` calibrated for ``timesteps`` steps on the images ``x`` (training
    data as stored; the graph's recorded input scaling applies unless ``apply_scaling=False``), as the module
    docstring describes: threshold rescaling (``rescale``), then per population in topological order bias
    calibration (``bias``) and potential calibration (``potential``: ``"layer"``, ``"channel"`` or ``"none"``).
    ``backend`` is the simulator that measures the SNN's rates. ``ann``: ``(graph0, x0)``, another graph whose
    analog values on its model inputs ``x0`` (the same images) are the targets, its populations named as
    ``graph``'s: the converted SNN when ``graph`` is a chip's float form (``snncc finetune --target``), whose OR
    gates have no analog mode and whose goal is the SNN the user had, not its own approximation. The new graph
    records what was done in ``attrs["calibration"]``."""
    if timesteps < 1:
        raise SimulationError(f"calibrate: timesteps must be at least 1, got {timesteps}")
    if potential not in POTENTIAL_MODES:
        raise SimulationError(f"calibrate: potential must be one of {', '.join(POTENTIAL_MODES)}, got {potential!r}")
    if not (bias or potential != "none" or rescale):
        raise SimulationError("calibrate: nothing to do; enable bias, potential and/or rescale calibration")
    x = _model_inputs(graph, x, apply_scaling)
    if len(x) == 0:
        raise SimulationError("calibrate needs calibration images; pass a few thousand training images")
    lower(graph)  # refuses what the lowering (and so the analog mode) cannot run, naming the node
    nodes = _populations(graph)
    for node in nodes:
        if not isinstance(graph.op(node).neuron, IF):
            raise SimulationError(f"calibrate: node {node!r} is a {graph.op(node).neuron.kind} population; "
                                  "calibration handles rate-coded IF populations only")
    out = graph.clone()
    ann_graph, ann_x = ann if ann is not None else (graph, x)
    if len(ann_x) != len(x):
        raise SimulationError(f"calibrate: {len(ann_x)} inputs of the ANN's graph for {len(x)} images")
    ann = ann_channel_means(ann_graph, ann_x, nodes)  # the targets, from the uncalibrated graph
    report: dict[str, dict] = {n: {"threshold_scale": 1.0, "bias_layer": None, "potential": None} for n in nodes}
    value = {n: 1.0 for n in nodes}  # what one spike stands for, in units of the original threshold

    if rescale:
        for node, alpha in threshold_scales(ann_graph, ann_x, timesteps, nodes).items():
            layers = _weight_layers(out, node)
            if layers is None or alpha == 1.0:
                continue
            threshold = out.op(node).neuron.threshold
            _set_neuron(out, node, threshold=_as_parameter(np.asarray(threshold, np.float32) * np.float32(alpha),
                                                           threshold))
            for layer in layers:  # a spike now carries alpha old thresholds of charge: its weights carry it on
                out.replace(layer, out.op(layer).replace(weight=out.op(layer).weight * np.float32(alpha)))
            value[node] = report[node]["threshold_scale"] = alpha

    def measure(node: str) -> np.ndarray:
        """The mean rate error per channel of ``node`` in ``out``, in units of the original threshold."""
        rates = snn_channel_means(out, x, timesteps, [node], backend)[node]
        return ann[node] - value[node] * rates

    corrected = nodes if bias or potential != "none" else []  # rescaling alone needs no measurement per population
    for node in tqdm(corrected, desc="calibrating", unit="population", disable=not progress, leave=False):
        channels = out.types()[node].shape[0]
        theta = np.broadcast_to(np.asarray(graph.op(node).neuron.threshold, np.float64), (channels,))  # original
        error = measure(node)
        report[node]["rate_error_before"] = _mean_abs(error)
        feeder = _bias_layer(out, node) if bias else None
        if feeder is not None:
            layer = out.op(feeder)
            old = np.zeros(channels) if layer.bias is None else layer.bias.astype(np.float64)
            out.replace(feeder, layer.replace(bias=(old + theta * error).astype(np.float32)))
            report[node]["bias_layer"] = feeder
            if potential != "none":
                error = measure(node)
        if potential != "none":
            v_init = np.asarray(out.op(node).neuron.v_init, np.float64)
            shift = timesteps * error / value[node]
            v_init = v_init + (shift if potential == "channel" else shift.mean())
            _set_neuron(out, node, v_init=_as_parameter(v_init, 0.0 if potential == "layer" else (0.0,)))
            report[node]["potential"] = potential
    after = snn_channel_means(out, x, timesteps, nodes, backend)
    for node in nodes:
        report[node].setdefault("rate_error_before", None)
        report[node]["rate_error_after"] = _mean_abs(ann[node] - value[node] * after[node])
    out.attrs = {**out.attrs, "calibration": {
        "method": "calibrate", "paper": PAPER, "timesteps": int(timesteps), "images": int(len(x)),
        "bias": bool(bias), "potential": potential, "rescale": bool(rescale), "populations": report}}
    return out
