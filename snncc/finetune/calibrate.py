"""``calibrate``: training-free calibration of a converted rate SNN against its own ANN, layer by layer.

After Li, Deng, Dong, Gong & Gu, "A free lunch from ANN: towards efficient, accurate spiking neural networks
calibration" (ICML 2021): the conversion error of a layer is, to first order, a shift of its output rates that a few
hundred or thousand training images measure and that the layer's bias (or its neurons' initial membrane) removes.

For a population ``p`` of IF neurons with threshold ``theta_c`` in channel ``c``, simulated for ``T`` steps:

- the ANN activation is the converted graph's own analog value of ``p``, ``a = clip(I / theta, 0, 1)`` (the rate an
  IF neuron can express, at most one spike per step; :meth:`~snncc.runtime.torch_lowering.LoweredGraph.forward_analog`
  of the *uncalibrated* graph, so the target never moves);
- the SNN rate is ``r = n(T) / T``, the spike count after ``T`` steps over ``T``, simulated with every earlier
  population already calibrated;
- the mean rate error of channel ``c`` is ``e_c = E[a - r]``, the mean over images and positions.

Two corrections, applied in topological order, each from a fresh measurement of ``e``:

- **bias calibration (BC)**: ``b_c <- b_c + theta_c e_c`` in the Conv2d/Linear that feeds ``p`` (and only ``p``).
  Every step then brings ``theta_c e_c`` more charge, which moves the rate of a neuron in its linear range by
  ``e_c``. Populations fed by anything else (an Add, a shared-weight layer, a layer with other readers) get no BC.
- **potential calibration (PC)**: ``v_init_c <- v_init_c + T e_c`` (``v_init`` is in units of the threshold, so the
  membrane starts with ``T e_c theta_c`` more charge): the same change of the spike count at step ``T``, given once.
  This is the paper's light per-channel potential calibration; its "advanced" pipeline (weights refitted layer by
  layer by gradient descent) is not implemented.

Both corrections are specific to ``T``: the graph is calibrated for the latency it will run at, recorded in
``graph.attrs["calibration"]`` with the per-population mean rate errors before and after. Everything runs through the
torch lowering (:mod:`snncc.runtime.torch_lowering`) without gradients; a measurement for population ``p`` stops the
forward pass after ``p``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from tqdm.auto import tqdm

from snncc.data import InputScaling
from snncc.errors import SimulationError
from snncc.ir import Graph, ops
from snncc.runtime.analog import check_input
from snncc.runtime.torch_lowering import LoweredGraph, lower

PAPER = ("Li, Deng, Dong, Gong & Gu, A free lunch from ANN: towards efficient, accurate spiking neural networks "
         "calibration, ICML 2021")


class _Stop(Exception):
    """Raised by a forward hook once the last population a measurement needs has run (the rest is not needed)."""


def _channels(values: torch.Tensor) -> torch.Tensor:
    """Sum over the batch axis and every axis after the channel axis: ``(B, C, ...) -> (C,)``."""
    return values.reshape(values.shape[0], values.shape[1], -1).sum(dim=(0, 2), dtype=torch.float64)


def _positions(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[1:], dtype=np.int64))


def _per_channel(value: torch.Tensor, channels: int) -> np.ndarray:
    """A scalar or per-channel (C, 1, ..., 1) parameter as a (C,) float64 vector."""
    return np.broadcast_to(value.detach().cpu().numpy().astype(np.float64).reshape(-1), (channels,)).copy()


def ann_channel_means(module: LoweredGraph, x: np.ndarray, nodes: list[str], batch_size: int) -> dict[str, np.ndarray]:
    """Per node of ``nodes`` the mean over images and positions of its analog value, one value per channel."""
    sums = {n: 0.0 for n in nodes}
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            values = module.forward_analog(x[start:start + batch_size], record=tuple(nodes)).values
            for n in nodes:
                sums[n] = sums[n] + _channels(values[n]).cpu().numpy()
    return {n: sums[n] / (len(x) * _positions(module.shapes[n])) for n in nodes}


def snn_channel_means(module: LoweredGraph, x: np.ndarray, timesteps: int, nodes: list[str], batch_size: int,
                      progress: bool = False) -> dict[str, np.ndarray]:
    """Per population of ``nodes`` the mean spike rate after ``timesteps`` steps (spike count over T), over images
    and positions, one value per channel. The forward pass stops after the last of ``nodes``."""
    last = max(nodes, key=module.order.index)
    sums = {n: 0.0 for n in nodes}

    def hook_for(node: str):
        def hook(layer, inputs, spikes):  # spikes: (T, B, *shape)
            sums[node] = sums[node] + _channels(spikes.sum(dim=0)).cpu().numpy()
            if node == last:
                raise _Stop
        return hook

    handles = [module.layers[module.index[n]].register_forward_hook(hook_for(n)) for n in nodes]
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(x), batch_size), desc="simulating", unit="batch", disable=not progress,
                              leave=False):
                try:
                    module(x[start:start + batch_size], timesteps)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    return {n: sums[n] / (len(x) * timesteps * _positions(module.shapes[n])) for n in nodes}


def _model_inputs(graph: Graph, x: np.ndarray, apply_scaling: bool) -> np.ndarray:
    if apply_scaling:
        x = InputScaling.from_json(graph.attrs.get("input_scaling", {})).apply(np.asarray(x))
    return check_input(graph, x)


def _populations(graph: Graph) -> list[str]:
    return [n for n in graph.topological_order() if isinstance(graph.op(n), ops.Population)]


def rate_errors(graph: Graph, x: np.ndarray, timesteps: int, batch_size: int = 100,
                apply_scaling: bool = True) -> dict[str, np.ndarray]:
    """Per population, the mean rate error per channel ``E[a - r]`` (ANN activation minus SNN rate after
    ``timesteps`` steps) of ``graph`` on inputs ``x`` (data as stored; the recorded input scaling applies)."""
    x = _model_inputs(graph, x, apply_scaling)
    module = lower(graph)
    nodes = _populations(graph)
    ann = ann_channel_means(module, x, nodes, batch_size)
    snn = snn_channel_means(module, x, timesteps, nodes, batch_size)
    return {n: ann[n] - snn[n] for n in nodes}


def _bias_layer(graph: Graph, population: str) -> str | None:
    """The Conv2d/Linear whose bias feeds ``population`` and nothing else, or None."""
    (feeder,) = graph.inputs(population)
    op = graph.op(feeder)
    if isinstance(op, (ops.Conv2d, ops.Linear)) and op.input_gains is None and len(graph.users(feeder)) == 1 \
            and feeder not in graph.outputs:
        return feeder
    return None


def _v_init_fraction(neuron, channels: int) -> np.ndarray:
    """The neuron's ``v_init`` (a fraction of the threshold) as a (C,) vector."""
    return np.broadcast_to(np.asarray(neuron.v_init, dtype=np.float64), (channels,)).copy()


def _mean_abs(error: np.ndarray) -> float:
    return float(np.mean(np.abs(error)))


def calibrate(graph: Graph, x: np.ndarray, timesteps: int, bias: bool = True, potential: bool = True,
              batch_size: int = 100, apply_scaling: bool = True, progress: bool = False) -> Graph:
    """A copy of the rate-coded SNN ``graph`` calibrated for ``timesteps`` steps on the images ``x`` (training
    data as stored; the graph's recorded input scaling applies unless ``apply_scaling=False``): bias calibration
    (``bias``) and potential calibration (``potential``) of every population in topological order, as the module
    docstring describes. The new graph records what was done in ``attrs["calibration"]``."""
    if timesteps < 1:
        raise SimulationError(f"calibrate: timesteps must be at least 1, got {timesteps}")
    if not (bias or potential):
        raise SimulationError("calibrate: nothing to do; enable bias and/or potential calibration")
    x = _model_inputs(graph, x, apply_scaling)
    if len(x) == 0:
        raise SimulationError("calibrate needs calibration images; pass a few thousand training images")
    module = lower(graph)  # validates the graph: SNN level, lowerable ops and neurons
    nodes = _populations(graph)
    ann = ann_channel_means(module, x, nodes, batch_size)  # the targets, from the uncalibrated graph
    biases: dict[str, np.ndarray] = {}
    v_inits: dict[str, np.ndarray] = {}
    report: dict[str, dict] = {}

    def measure(node: str) -> np.ndarray:
        return ann[node] - snn_channel_means(module, x, timesteps, [node], batch_size, progress)[node]

    for node in tqdm(nodes, desc="calibrating", unit="population", disable=not progress, leave=False):
        population = module.layers[module.index[node]]
        channels = module.shapes[node][0]
        theta = _per_channel(population.threshold, channels)
        error = measure(node)
        entry = {"rate_error_before": _mean_abs(error), "bias_layer": None, "potential": False}
        feeder = _bias_layer(graph, node) if bias else None
        if feeder is not None:
            layer = module.layers[module.index[feeder]]
            old = np.zeros(channels) if layer.bias is None else layer.bias.detach().cpu().numpy().astype(np.float64)
            biases[feeder] = (old + theta * error).astype(np.float32)
            if layer.bias is None:
                layer.bias = torch.nn.Parameter(torch.zeros(channels, device=module.device))
            with torch.no_grad():
                layer.bias.copy_(torch.from_numpy(biases[feeder]))
            entry["bias_layer"] = feeder
            if potential:
                error = measure(node)
        if potential:
            old = _v_init_fraction(graph.op(node).neuron, channels)
            v_inits[node] = (old + timesteps * error).astype(np.float32)
            shape = (channels,) + (1,) * (len(module.shapes[node]) - 1)
            with torch.no_grad():
                population.v_init = torch.from_numpy(v_inits[node]).reshape(shape).to(module.device) \
                    * population.threshold.detach()
            entry["potential"] = True
        report[node] = entry
    after = snn_channel_means(module, x, timesteps, nodes, batch_size, progress)
    for node in nodes:
        report[node]["rate_error_after"] = _mean_abs(ann[node] - after[node])
    return _written(graph, biases, v_inits, {
        "method": "calibrate", "paper": PAPER, "timesteps": int(timesteps), "images": int(len(x)),
        "bias": bool(bias), "potential": bool(potential), "populations": report})


def _written(graph: Graph, biases: dict[str, np.ndarray], v_inits: dict[str, np.ndarray], record: dict) -> Graph:
    """A copy of ``graph`` with the new biases and initial membranes (fractions of the threshold, per channel)."""
    out = graph.clone()
    for node, b in biases.items():
        out.replace(node, out.op(node).replace(bias=b.astype(np.float32)))
    for node, v in v_inits.items():
        op = out.op(node)
        neuron = dataclasses.replace(op.neuron, v_init=tuple(float(value) for value in v))
        out.replace(node, op.replace(neuron=neuron))
    out.attrs = {**out.attrs, "calibration": record}
    return out
