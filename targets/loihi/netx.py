"""The Loihi bundle's network file: lava-dl's netx HDF5 layout (``network.net``), written with h5py.

The schema is the one lava-dl's loader reads (``lava-nc/lava-dl``, ``src/lava/lib/dl/netx/hdf5.py``,
``Network._create``, ``create_input``/``create_conv``/``create_dense``, ``get_neuron_params``; ``netx/utils.py``,
``NetDict``), so that ``netx.hdf5.Network(net_config="network.net")`` builds the sequential network:

``/simulation/{Ts, tSample}``; ``/layer/<i>`` for ``i = 0, 1, ...`` in order, each with

- ``type``: ``input``, ``conv``, ``flatten`` or ``dense`` (ASCII bytes);
- ``shape``: the layer's output shape, channels first (``C, H, W``, or ``N``; the loader reverses it to XYZ);
- ``conv``: ``weight`` (out, in/groups, kH, kW) stored weights, ``stride``, ``padding``, ``dilation`` as (y, x),
  ``groups``; ``dense``: ``weight`` (out, in);
- ``bias``: the bias mantissa per output channel or neuron (the loader's bias exponent is 6);
- ``neuron``: ``type`` ``CUBA``, ``iDecay`` (= ``du + 1``: the loader passes ``du = iDecay - 1``), ``vDecay``
  (``dv``), ``vThMant`` (``vth``), ``refDelay`` (1: no refractory step beyond the spike), ``gradedSpike``.

Extensions netx does not read (its loader ignores datasets it does not ask for), named ``snncc*``:

- ``neuron/snnccReset`` (``zero`` or ``subtract``: Lava's LIF resets to zero, so a loihi2 bundle's reset by
  subtraction needs the microcode neuron, not netx's CUBA) and ``neuron/snnccInitialVoltage``;
- ``snnccPadValue`` (conv): the value padded in per input channel when it is not 0 (the folded input
  normalization pads the first layer with the stored value of the trained padding; netx pads with zero);
- ``snnccWeightExp``: the layer's weight exponent (netx's loader reads none and takes the stored weights at
  ``2^6`` each, which is exponent 0; a layer with a negative exponent must be built with Lava Dense's
  ``weight_exp`` set to it: the first layer, whose bias sets its scale);
- ``snnccBiasStartStep``: the chip step from which the layer's bias is on (its synaptic depth; see the emulator; rate
  layers only: an FS layer adds its bias once per window);
- ``snnccGradedInput``: whether the layer reads graded events (the pixels on Loihi 2; every FS layer);
- ``snnccRole``: ``or-gate`` for the layers that replace spiking max pooling, ``readout`` for the last layer,
  whose membrane (``vThMant`` at its maximum: it is read, not thresholded) is the network's answer;
- FS layers (Loihi 2, :mod:`snncc.targets.loihi.fewspike`): ``neuron/type`` ``snnccFewSpike`` (netx has no FS
  neuron, so lava-dl's loader refuses these layers: the Loihi 2 program of that module runs them) with
  ``gradedSpike`` true, ``snnccSteps`` (K), ``snnccThreshold``, ``snnccHeight`` and ``snnccPayload`` (K integers
  each: ``T(t)``, ``h(t)`` in membrane units, the payloads ``p(t)``); the layer's bias is ``snnccBias`` (24-bit
  membrane units, added once at the window boundary) instead of netx's ``bias`` mantissa;
- FS max poolings (Loihi 2, :mod:`snncc.targets.loihi.fs_maxpool`): the gather, a depthwise ``conv`` layer with
  weights ``2^j`` and ``snnccRole`` ``fs-max-pool``, whose ``neuron/type`` is ``snnccFewSpikeMax`` with
  ``gradedSpike`` true, ``snnccSteps`` (K), ``snnccPayload`` (the K payloads ``p(t)``) and ``snnccInputs`` (the
  window's inputs, the bits of the neuron's state) (schema version 2; version 1 files, without it, still read);
- ``/snncc/{format, schema_version, node_ids}``: this file's own version and the hw-graph node of each layer.

The file is written from the hw graph before partitioning (one layer per population); the placement of the
blocks on cores is in the manifest. :func:`read_netx` is an independent reader of this schema (h5py only) for the
tests and for ``snncc verify``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snncc.errors import FormatError
from snncc.ir import Graph, ops
from snncc.targets.base import TargetError
from snncc.targets.loihi import arithmetic as la
from snncc.targets.loihi.fewspike import LoihiFewSpike
from snncc.targets.loihi.fs_maxpool import LoihiFewSpikeMax

FILENAME = "network.net"
FORMAT = "snncc-netx"
SCHEMA_VERSION = 2
#: The versions :func:`read_netx` reads: 2 added the FS max pooling's layers to 1.
READABLE_VERSIONS = (1, 2)
_MAX_VTH = (1 << la.THRESHOLD_MANTISSA_BITS) - 1


def _h5py():
    try:
        import h5py
    except ImportError:
        raise TargetError("writing a Loihi bundle needs h5py: python -m pip install -e \".[targets]\"") from None
    return h5py


def _text(group, name: str, value: str) -> None:
    group.create_dataset(name, data=np.array([value.encode("ascii")]))


def _few_spike_neuron(group, neuron: LoihiFewSpike) -> None:
    """An FS layer: netx has no such neuron, so the group's type is the extension ``snnccFewSpike`` (lava-dl's
    loader refuses it; the bundle's own reader and the Loihi 2 program of targets/loihi/fewspike.py read it)."""
    n = group.create_group("neuron")
    _text(n, "type", "snnccFewSpike")
    n.create_dataset("gradedSpike", data=True)
    n.create_dataset("snnccSteps", data=int(neuron.steps))
    n.create_dataset("snnccThreshold", data=np.asarray(neuron.threshold, np.int32))
    n.create_dataset("snnccHeight", data=np.asarray(neuron.height, np.int32))
    n.create_dataset("snnccPayload", data=np.asarray(neuron.weight, np.int32))


def _few_spike_max_neuron(group, neuron: LoihiFewSpikeMax) -> None:
    """An FS max pooling's max neuron (extension ``snnccFewSpikeMax``: the Loihi 2 program of fs_maxpool.py)."""
    n = group.create_group("neuron")
    _text(n, "type", "snnccFewSpikeMax")
    n.create_dataset("gradedSpike", data=True)
    n.create_dataset("snnccSteps", data=int(neuron.steps))
    n.create_dataset("snnccPayload", data=np.asarray(neuron.weight, np.int32))
    n.create_dataset("snnccInputs", data=int(neuron.inputs))


def _neuron(group, neuron, role: str, graded: bool) -> None:
    if isinstance(neuron, LoihiFewSpike):
        _few_spike_neuron(group, neuron)
        return
    if isinstance(neuron, LoihiFewSpikeMax):
        _few_spike_max_neuron(group, neuron)
        return
    n = group.create_group("neuron")
    _text(n, "type", "CUBA")
    if neuron is None:  # the readout: integrate the input, never fire
        current_decay, voltage_decay, vth, reset, v0 = la.DECAY_UNIT, 0, _MAX_VTH, "zero", 0
    else:
        current_decay, voltage_decay = neuron.current_decay, neuron.voltage_decay
        vth, reset, v0 = la.threshold_register(neuron.threshold), neuron.reset, neuron.initial_voltage
    n.create_dataset("iDecay", data=int(current_decay))
    n.create_dataset("vDecay", data=int(voltage_decay))
    n.create_dataset("vThMant", data=int(vth))
    n.create_dataset("refDelay", data=1)
    n.create_dataset("gradedSpike", data=bool(graded))
    _text(n, "snnccReset", reset)
    n.create_dataset("snnccInitialVoltage", data=int(v0))


def _pair(values: tuple[int, int, int, int] | tuple[int, int], node: str, what: str) -> np.ndarray:
    if len(values) == 4:
        top, left, bottom, right = values
        if (top, left) != (bottom, right):
            raise TargetError(f"{node!r}: netx stores symmetric padding, got {what} {values}")
        return np.array([top, left])
    return np.array(values)


def write_netx(graph: Graph, directory: Path, filename: str = FILENAME, depth: dict[str, int] | None = None) -> list[str]:
    """Write the sequential hw graph ``graph`` (Loihi, before partitioning) as ``directory/filename``."""
    h5py = _h5py()
    graded_input = graph.attrs.get("loihi", {}).get("variant") == "loihi2"
    few_spike = graph.attrs.get("loihi", {}).get("coding") == "fs"
    layers = []  # (kind, node, population or None, role)
    order = graph.topological_order()
    for node in order:
        op = graph.op(node)
        if isinstance(op, ops.Input):
            layers.append(("input", node, None, "input"))
        elif isinstance(op, ops.Flatten):
            layers.append(("flatten", node, None, "flatten"))
        elif op.synaptic:
            users = [u for u, _ in graph.users(node)]
            pop = users[0] if len(users) == 1 and isinstance(graph.op(users[0]), ops.Population) else None
            if pop is None and not all(isinstance(graph.op(u), ops.Readout) for u in users):
                raise TargetError(f"{node!r}: netx layers are a synaptic op and its neurons; {node!r} feeds "
                                  f"{[graph.op(u).kind for u in users]}")
            role = "readout" if pop is None else ("or-gate" if graph.meta.get(pop, {}).get("or_gate") else
                                                  "fs-max-pool" if graph.meta.get(node, {}).get("fs_max_gather")
                                                  else "neurons")
            layers.append(("conv" if isinstance(op, ops.Conv2d) else "dense", node, pop, role))
        elif not isinstance(op, (ops.Population, ops.Readout)):
            raise TargetError(f"{node!r}: {op.kind} has no netx layer")
    types = graph.types()
    path = Path(directory) / filename
    with h5py.File(path, "w") as f:
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=1.0)
        sim.create_dataset("tSample", data=int(graph.attrs.get("timesteps", 0) or 0))
        meta = f.create_group("snncc")
        _text(meta, "format", FORMAT)
        meta.create_dataset("schema_version", data=SCHEMA_VERSION)
        meta.create_dataset("node_ids", data=np.array([(pop or node).encode("utf-8") for _, node, pop, _ in layers]))
        root = f.create_group("layer")
        for i, (kind, node, pop, role) in enumerate(layers):
            g = root.create_group(str(i))
            _text(g, "type", kind)
            _text(g, "snnccRole", role)
            g.create_dataset("shape", data=np.array(types[pop or node].shape, dtype=np.int64))
            if kind in ("input", "flatten"):
                continue
            op = graph.op(node)
            g.create_dataset("weight", data=np.asarray(op.weight, dtype=np.int16))
            g.create_dataset("snnccWeightExp", data=int(graph.meta.get(node, {}).get("weight_exp", 0)))
            if op.bias is not None and few_spike:  # 24-bit biases, added once at the window boundary
                g.create_dataset("snnccBias", data=np.asarray(op.bias, np.int32))
            elif op.bias is not None:
                g.create_dataset("bias", data=(np.asarray(op.bias, np.int64) >> la.NETX_BIAS_EXP).astype(np.int32))
            if kind == "conv":
                g.create_dataset("stride", data=_pair(op.stride, node, "stride"))
                g.create_dataset("padding", data=_pair(op.padding, node, "padding"))
                g.create_dataset("dilation", data=_pair(op.dilation, node, "dilation"))
                g.create_dataset("groups", data=int(op.groups))
                if op.pad_value is not None and np.any(op.pad_value != 0):
                    g.create_dataset("snnccPadValue", data=np.asarray(op.pad_value, np.int32))
            if depth is not None:
                g.create_dataset("snnccBiasStartStep", data=int(depth[node]))
            graded = few_spike or (graded_input and isinstance(graph.op(graph.inputs(node)[0]), ops.Input))
            _neuron(g, graph.op(pop).neuron if pop else None, role, graded=False)
            g.create_dataset("snnccGradedInput", data=bool(graded))
    return [filename]


def read_netx(path: str | Path) -> list[dict]:
    """Read a netx HDF5 file (this schema) into one dict per layer: its datasets as numpy values, ``neuron`` as a
    dict; text as ``str``. Checks the ``snncc`` version group when present."""
    h5py = _h5py()

    def value(dataset):
        v = dataset[()]
        if isinstance(v, np.ndarray) and v.dtype.kind == "S":
            return v[0].decode("ascii") if v.shape else v.decode("ascii")
        if isinstance(v, bytes):
            return v.decode("ascii")
        return v

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not an HDF5 file ({exc})") from None
    with f:
        if "snncc" in f:
            version = int(f["snncc/schema_version"][()])
            if version not in READABLE_VERSIONS:
                raise FormatError(f"{path}: netx extension schema {version}; this snncc reads "
                                  f"{', '.join(map(str, READABLE_VERSIONS))}")
        if "layer" not in f:
            raise FormatError(f"{path}: no /layer group; not a netx network")
        layers = []
        for i in range(len(f["layer"])):
            group = f["layer"][str(i)]
            layer = {}
            for key, item in group.items():
                if isinstance(item, h5py.Group):
                    layer[key] = {k: value(d) for k, d in item.items()}
                else:
                    layer[key] = value(item)
            layers.append(layer)
    return layers
