"""Import an NIR graph (an SNN written by snnTorch, Norse, sinabs, snncc or another NIR producer) as an
SNN-level snncc graph, so that trained SNNs get snncc's simulators, checks and targets.

NIR (Pedersen et al., Nature Communications 15, 2024) states neurons in continuous time; a simulator steps them with
some time step ``dt`` that the file does not state. The import uses ``dt`` from the file's metadata (snncc writes
it), else the ``dt`` given, else 1e-4 s (the one snnTorch's export and import assume), and takes the forward-Euler
step that snnTorch and Norse take:

- ``nir.LIF(tau, r, v_leak=0, v_threshold, v_reset=0)``: ``v = (1 - dt/tau) v + (dt/tau) r I`` becomes snncc's LIF
  with ``beta = 1 - dt/tau`` (``tau_mem = -1 / ln beta`` steps) and the input gain ``g = r dt / tau`` folded into
  the threshold (``threshold / g``: the membrane is scaled by ``1/g``; reset to zero is scale-free);
- ``nir.IF(r, v_threshold, v_reset=0)``: ``v = v + r I``, snncc's IF with threshold ``v_threshold / r`` (NIR's IF has
  no time constant; its readers take ``r`` as one step's gain);
- ``nir.CubaLIF``: ``u = (1 - dt/tau_syn) u + (dt/tau_syn) w_in S``, ``v = (1 - dt/tau_mem) v + (dt/tau_mem)
  (v_leak + r u)``, snncc's CubaLIF with both gains folded into the threshold and ``v_leak`` into its bias;
- every neuron starts at ``v = 0`` and resets to zero (a ``v_reset`` other than 0 is refused); NIR spikes at
  ``v > v_threshold``, snncc at ``v >= threshold``: the spikes differ only where a membrane equals its threshold;
- ``nir.Affine``/``nir.Linear`` -> Linear, ``nir.Conv2d`` -> Conv2d, ``nir.AvgPool2d`` -> AvgPool2d,
  ``nir.SumPool2d`` -> AvgPool2d and an Affine of scale ``k``, ``nir.Scale`` -> Affine, ``nir.Flatten`` -> Flatten
  (or Reshape for a partial flatten), ``nir.I`` -> Readout (snncc reports the integral divided by ``t``: the
  same argmax); a graph whose output is not an integrator gets a Readout (the time average of the output: the
  spike rate of spiking outputs, the mean current of a synaptic layer).

What has no snncc counterpart (leaky readouts ``nir.LI``/``nir.CubaLI``, recurrent subgraphs, delays, 1-d
convolutions, per-neuron parameters that vary within a channel) is refused with the node and the remedy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from snncc.errors import FormatError, SnnccError, UnsupportedModelError
from snncc.ir import IF, LIF, SNN, CubaLIF, Graph, ops, verify
from snncc.ir.graph import sanitize_id

#: The time step (seconds) NIR's time constants are read with when the file does not state one: snnTorch's.
DEFAULT_DT = 1e-4
SUFFIXES = (".nir",)


def require_nir():
    """The ``nir`` package; SnnccError naming the extra to install when it is missing."""
    try:
        import nir
    except ImportError:
        raise SnnccError("NIR export and import need the nir package: pip install 'snncc[nir]'") from None
    return nir


def read_nir(path: str | Path):
    """Read an NIR (HDF5) file with ``nir.read`` (no code runs from the file); FormatError if it is not one.

    A file whose node types fail nir's type check is read again without it: snncc infers every shape itself and
    verifies the graph it builds."""
    nir = require_nir()
    try:
        try:
            return nir.read(str(path))
        except ValueError as exc:
            if "Type inference" not in str(exc):
                raise
            # Some producers write node types that nir's own check rejects (snnTorch's convolutions, for one);
            # snncc infers and verifies every shape itself, so the graph is read without that check.
            return nir.read(str(path), type_check=False)
    except FileNotFoundError:
        raise FormatError(f"{path}: no such NIR file") from None
    except Exception as exc:  # h5py and nir raise OSError, KeyError, ValueError, AssertionError, ...
        raise FormatError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from None


@dataclass
class _Builder:
    graph: Graph
    dt: float
    key: str = ""
    #: NIR node key -> the snncc node that carries its output.
    made: dict[str, str] = field(default_factory=dict)

    def shape_of(self, node: str) -> tuple[int, ...]:
        return self.graph.types()[node].shape

    def add(self, op: ops.Op, inputs: list[str], suffix: str = "") -> str:
        return self.graph.add(op, inputs, name=sanitize_id(self.key) + suffix, source="nir")

    def refuse(self, what: str, remedy: str) -> UnsupportedModelError:
        return UnsupportedModelError(f"NIR node {self.key!r}: {what}; {remedy}")


def _array(value: object) -> np.ndarray:
    return np.asarray(value, dtype=np.float64)


def _per_channel(b: _Builder, name: str, values: object, shape: tuple[int, ...]) -> float | tuple[float, ...]:
    """A per-neuron NIR parameter as snncc's form: one number, or one per channel (axis 0); else refused."""
    array = _array(values)
    try:
        full = np.broadcast_to(array.reshape(array.shape) if array.size != 1 else array.reshape(()), shape)
    except ValueError:
        raise b.refuse(f"{name} has shape {array.shape}, which does not fit the population of shape {shape}",
                       "give one value per neuron, per channel or for all") from None
    flat = full.reshape(-1)
    if np.all(flat == flat[0]):
        return float(flat[0])
    per = full.reshape(shape[0], -1)
    if np.all(per == per[:, :1]):
        return tuple(float(v) for v in per[:, 0])
    raise b.refuse(f"{name} varies within a channel", "snncc's neuron parameters are one value per population or "
                   "per channel (axis 0)")


def _uniform(b: _Builder, name: str, values: object) -> float:
    array = _array(values).reshape(-1)
    if array.size == 0 or not np.all(array == array[0]):
        raise b.refuse(f"{name} differs between neurons", "snncc's CubaLIF takes one value per population")
    return float(array[0])


def _check_reset(b: _Builder, node) -> None:
    if node.v_reset is not None and np.any(_array(node.v_reset)):
        raise b.refuse("v_reset is not 0", "snncc's neurons reset to zero or by subtraction; set v_reset = 0")


def _divide(value: float | tuple[float, ...], by: float | tuple[float, ...]) -> float | tuple[float, ...]:
    if isinstance(value, tuple) or isinstance(by, tuple):
        n = len(value) if isinstance(value, tuple) else len(by)
        values = value if isinstance(value, tuple) else (value,) * n
        bys = by if isinstance(by, tuple) else (by,) * n
        return tuple(v / d for v, d in zip(values, bys))
    return value / by


def _tau_steps(b: _Builder, keep: float) -> float:
    """snncc's tau_mem (in steps) for a per-step decay ``keep = beta``."""
    if not 0 <= keep <= 1:
        raise b.refuse(f"the time constant gives a per-step decay of {keep:g} with dt = {b.dt:g} s (tau < dt)",
                       "give the time step the model was trained with (dt=...)")
    if keep == 0:
        return 0.0
    return math.inf if keep == 1 else -1.0 / math.log(keep)


# ---- one function per NIR node class -----------------------------------------------------------------------------

def _input(b: _Builder, node, inputs: list[str]) -> str:
    shape = tuple(int(d) for d in np.asarray(node.input_type["input"]).reshape(-1))
    return b.add(ops.Input(shape=shape, name=b.key), [])


def _affine(b: _Builder, node, inputs: list[str]) -> str:
    weight = np.asarray(node.weight)
    if weight.ndim != 2:
        raise b.refuse(f"a weight of rank {weight.ndim}", "snncc's Linear takes a [out, in] weight")
    bias = getattr(node, "bias", None)
    return b.add(ops.Linear(weight=weight, bias=None if bias is None else np.asarray(bias)), inputs)


def _padding(b: _Builder, node, kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    padding = node.padding
    if isinstance(padding, (str, bytes)):
        padding = padding.decode() if isinstance(padding, bytes) else padding
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same" and all(k % 2 for k in kernel) and tuple(np.ravel(node.stride)) in ((1,), (1, 1)):
            return (kernel[0] // 2, kernel[1] // 2, kernel[0] // 2, kernel[1] // 2)
        raise b.refuse(f"padding {padding!r}", "give the padding as numbers")
    ph, pw = (int(v) for v in np.broadcast_to(np.asarray(padding).reshape(-1), (2,)))
    return (ph, pw, ph, pw)


def _pair(value: object) -> tuple[int, int]:
    return tuple(int(v) for v in np.broadcast_to(np.asarray(value).reshape(-1), (2,)))


def _conv(b: _Builder, node, inputs: list[str]) -> str:
    weight = np.asarray(node.weight)
    bias = None if node.bias is None else np.asarray(node.bias)
    if bias is not None and bias.size == 1 and weight.shape[0] != 1:
        bias = np.full(weight.shape[0], float(bias.reshape(-1)[0]))
    return b.add(ops.Conv2d(weight=weight, bias=bias, stride=_pair(node.stride),
                            padding=_padding(b, node, weight.shape[2:]), dilation=_pair(node.dilation),
                            groups=int(node.groups)), inputs)


def _pool(b: _Builder, node, inputs: list[str]) -> str:
    kernel = _pair(node.kernel_size)
    ph, pw = _pair(node.padding)
    return b.add(ops.AvgPool2d(kernel=kernel, stride=_pair(node.stride), padding=(ph, pw, ph, pw),
                               count_include_pad=True), inputs)


def _sum_pool(b: _Builder, node, inputs: list[str]) -> str:
    pooled = _pool(b, node, inputs)
    kernel = _pair(node.kernel_size)
    return b.add(ops.Affine(scale=np.float32(kernel[0] * kernel[1]), shift=np.float32(0)), [pooled], ".sum")


def _scale(b: _Builder, node, inputs: list[str]) -> str:
    scale = np.asarray(node.scale, np.float32)
    return b.add(ops.Affine(scale=scale, shift=np.zeros_like(scale)), inputs)


def _flatten(b: _Builder, node, inputs: list[str]) -> str:
    shape = b.shape_of(inputs[0])
    rank = len(shape)
    start, end = int(node.start_dim), int(node.end_dim)
    if start == 1 and end == -1:
        start = 0  # torch.nn.Flatten's default on batched tensors: every per-sample axis (snnTorch, Norse)
    start, end = start % rank if start < 0 else start, end % rank if end < 0 else end
    if not 0 <= start <= end < rank:
        raise b.refuse(f"Flatten over axes {node.start_dim}..{node.end_dim} of a per-sample shape {shape}",
                       "flatten per-sample axes")
    if start == 0 and end == rank - 1:
        return b.add(ops.Flatten(), inputs)
    target = shape[:start] + (math.prod(shape[start:end + 1]),) + shape[end + 1:]
    return b.add(ops.Reshape(shape=target), inputs)


def _if(b: _Builder, node, inputs: list[str]) -> str:
    _check_reset(b, node)
    shape = b.shape_of(inputs[0])
    threshold = _per_channel(b, "v_threshold", node.v_threshold, shape)
    gain = _per_channel(b, "r", node.r, shape)
    return b.add(ops.Population(neuron=IF(threshold=_divide(threshold, gain), reset="zero", v_init=0.0)), inputs)


def _lif(b: _Builder, node, inputs: list[str]) -> str:
    _check_reset(b, node)
    if np.any(_array(node.v_leak)):
        raise b.refuse("v_leak is not 0", "snncc's LIF leaks towards 0; fold v_leak into the bias of the layer "
                       "before")
    shape = b.shape_of(inputs[0])
    tau = _per_channel(b, "tau", node.tau, shape)
    r = _per_channel(b, "r", node.r, shape)
    threshold = _per_channel(b, "v_threshold", node.v_threshold, shape)
    leak = _divide(b.dt, tau)  # dt / tau, the fraction lost per step
    gain = tuple(a * g for a, g in zip(*_aligned(leak, r))) if isinstance(leak, tuple) or isinstance(r, tuple) \
        else leak * r
    keeps = leak if isinstance(leak, tuple) else (leak,)
    taus = tuple(_tau_steps(b, 1.0 - a) for a in keeps)
    return b.add(ops.Population(neuron=LIF(threshold=_divide(threshold, gain),
                                           tau_mem=taus if isinstance(leak, tuple) else taus[0],
                                           reset="zero", v_init=0.0)), inputs)


def _aligned(a: float | tuple[float, ...], c: float | tuple[float, ...]) -> tuple[tuple[float, ...], ...]:
    n = len(a) if isinstance(a, tuple) else len(c)
    return (a if isinstance(a, tuple) else (a,) * n, c if isinstance(c, tuple) else (c,) * n)


def _cuba(b: _Builder, node, inputs: list[str]) -> str:
    _check_reset(b, node)
    syn = b.dt / _uniform(b, "tau_syn", node.tau_syn)
    mem = b.dt / _uniform(b, "tau_mem", node.tau_mem)
    for name, fraction in (("tau_syn", syn), ("tau_mem", mem)):
        if not 0 < fraction <= 1:
            raise b.refuse(f"{name} gives a per-step decay of {1 - fraction:g} with dt = {b.dt:g} s",
                           "give the time step the model was trained with (dt=...)")
    gain = syn * _uniform(b, "w_in", node.w_in) * mem * _uniform(b, "r", node.r)
    neuron = CubaLIF(threshold=_uniform(b, "v_threshold", node.v_threshold) / gain, current_decay=syn,
                     voltage_decay=mem, bias=mem * _uniform(b, "v_leak", node.v_leak) / gain, reset="zero",
                     initial_voltage=0.0, dt=b.dt)
    return b.add(ops.Population(neuron=neuron), inputs)


def _integrator(b: _Builder, node, inputs: list[str]) -> str:
    r = np.asarray(node.r, np.float32)
    source = inputs[0]
    if np.any(r != 1):
        source = b.add(ops.Affine(scale=r, shift=np.zeros_like(r)), inputs, ".r")
    return b.add(ops.Readout(), [source])


def _refuse(what: str, remedy: str) -> Callable:
    def handler(b: _Builder, node, inputs: list[str]) -> str:
        raise b.refuse(what, remedy)
    return handler


def _handlers() -> dict[type, Callable]:
    nir = require_nir()
    return {
        nir.Input: _input, nir.Affine: _affine, nir.Linear: _affine, nir.Conv2d: _conv,
        nir.AvgPool2d: _pool, nir.SumPool2d: _sum_pool, nir.Scale: _scale, nir.Flatten: _flatten,
        nir.IF: _if, nir.LIF: _lif, nir.CubaLIF: _cuba, nir.I: _integrator,
        nir.LI: _refuse("a leaky readout (LI)", "snncc's Readout integrates without leak: replace it by nir.I, or "
                        "end the graph with the synaptic layer"),
        nir.CubaLI: _refuse("a leaky readout (CubaLI)", "replace it by nir.I or end with the synaptic layer"),
        nir.NIRGraph: _refuse("a subgraph (a recurrent layer)", "snncc's graphs are feed-forward"),
        nir.Delay: _refuse("a delay", "snncc's graphs have no synaptic delays"),
        nir.Conv1d: _refuse("a 1-d convolution", "reshape the model to 2-d convolutions"),
    }


def import_nir(source, dt: float | None = None) -> Graph:
    """An SNN-level snncc graph of ``source`` (a path or a ``nir.NIRGraph``)."""
    nir = require_nir()
    path = None
    if isinstance(source, (str, Path)):
        path, source = Path(source), read_nir(source)
    if not isinstance(source, nir.NIRGraph):
        raise SnnccError(f"import_nir takes an NIR file or a nir.NIRGraph, got {type(source).__name__}")
    metadata = dict(getattr(source, "metadata", None) or {}) if isinstance(getattr(source, "metadata", None),
                                                                            dict) else {}
    dt = float(dt if dt is not None else metadata.get("dt", DEFAULT_DT))
    if not dt > 0:
        raise SnnccError(f"the time step dt must be a positive number of seconds, got {dt}")
    graph = Graph(level=SNN)
    builder = _Builder(graph, dt)
    handlers = _handlers()
    outputs = []
    for key in _order(source):
        node = source.nodes[key]
        builder.key = key
        sources = [builder.made[u] for u, v in source.edges if v == key]
        if isinstance(node, nir.Output):
            if len(sources) != 1:
                raise builder.refuse(f"{len(sources)} edges into an Output", "give each output one producer")
            outputs.append(sources[0])
            continue
        handler = handlers.get(type(node))
        if handler is None:
            raise builder.refuse(f"{type(node).__name__} has no snncc counterpart",
                                 "supported: " + ", ".join(sorted(c.__name__ for c in handlers)))
        if not isinstance(node, nir.Input) and not sources:
            raise builder.refuse("no input edge", "connect it to the graph")
        builder.made[key] = handler(builder, node, _summed(builder, sources))
    if not outputs:
        raise UnsupportedModelError("the NIR graph has no Output node")
    for out in outputs:
        graph.outputs.append(out if isinstance(graph.op(out), ops.Readout)
                             else graph.add(ops.Readout(), [out], name=f"{out}.readout", source="nir"))
    graph.attrs["source"] = {"format": "nir", "producer": str(metadata.get("producer", "unknown")),
                             "dt": dt, **({"path": str(path.resolve())} if path else {})}
    graph.attrs["conversion"] = {"method": "nir-import"}
    if isinstance(metadata.get("input_scaling"), (str, bytes)):
        text = metadata["input_scaling"]
        graph.attrs["input_scaling"] = json.loads(text.decode() if isinstance(text, bytes) else text)
    verify(graph)
    return graph


def _summed(b: _Builder, sources: list[str]) -> list[str]:
    """NIR sums the signals on the edges into a node; snncc says so with Add ops."""
    if len(sources) <= 1:
        return sources
    total = sources[0]
    for i, other in enumerate(sources[1:]):
        total = b.add(ops.Add(), [total, other], f".sum{i}")
    return [total]


def _order(graph) -> list[str]:
    """The node keys in a topological order (ties in the file's order); a cycle is refused."""
    preds = {k: [u for u, v in graph.edges if v == k] for k in graph.nodes}
    for u, v in graph.edges:
        if u not in graph.nodes or v not in graph.nodes:
            raise FormatError(f"NIR edge ({u!r}, {v!r}) names a node the graph does not have")
    order, done, visiting = [], set(), set()

    def visit(key: str) -> None:
        if key in done:
            return
        if key in visiting:
            raise UnsupportedModelError(f"NIR node {key!r} is on a cycle (a recurrent connection); snncc's graphs "
                                        "are feed-forward")
        visiting.add(key)
        for u in preds[key]:
            visit(u)
        visiting.discard(key)
        done.add(key)
        order.append(key)

    for key in graph.nodes:
        visit(key)
    return order


def is_nir_file(model: object) -> bool:
    """Whether ``model`` names an NIR file (by its suffix), which ``compile`` imports instead of ONNX."""
    return isinstance(model, (str, Path)) and Path(model).suffix.lower() in SUFFIXES


def compile_nir(path: str | Path, pipeline: str | None = None, input_scaling=None, dt: float | None = None,
                context=None) -> Graph:
    """``snncc compile MODEL.nir``: import the file, then run ``pipeline`` (passes on the snn level), if any.

    The input scaling is the one given, else the one an snncc-written file records, else none."""
    from snncc.api import sha256_file
    from snncc.data import InputScaling
    from snncc.passes import run_pipeline

    graph = import_nir(path, dt=dt)
    if pipeline:
        graph = run_pipeline(graph, pipeline, context)
    else:
        graph.attrs["pipeline"] = ""
    if input_scaling is not None:
        graph.attrs["input_scaling"], source = input_scaling.to_json(), "given on the command line"
    elif "input_scaling" in graph.attrs:
        source = "recorded in the NIR file's metadata"
    else:
        graph.attrs["input_scaling"], source = InputScaling().to_json(), "none (the NIR file records none)"
    graph.attrs["input_scaling_source"] = source
    # Not under "path": eval reads that as the ONNX model to compare the SNN with; an NIR file has no ANN.
    graph.attrs["source_model"] = {"nir_file": str(Path(path).resolve()), "sha256": sha256_file(path)}
    return graph
