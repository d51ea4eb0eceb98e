"""The Python API behind the command line: compile an ONNX model into an SNN, evaluate it, describe it.

>>> graph = compile_model("models/lenet5-mnist.onnx", calibration=x_train[:2000])  # pixels; the model declares x/255
>>> report = evaluate(graph, x_test, y_test, timesteps=[8, 16, 32], onnx_model="models/lenet5-mnist.onnx")
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from snncc import fileio
from snncc.data import InputScaling, check_sample_shape
from snncc.distributed import World
from snncc.errors import DataError, SnnccError
from snncc.frontend.metadata import check_calibration_range, choose_scaling, read_declaration
from snncc.frontend.nir import compile_nir, is_nir_file
from snncc.frontend.onnx import import_onnx, load_model
from snncc.frontend.torch_export import export_module, is_torch_module
from snncc.ir import Graph, ops
from snncc.passes import PassContext, run_pipeline
from snncc.runtime import SimulationResult, Simulator, is_temporal
from snncc.runtime.analog import check_input

if TYPE_CHECKING:
    import torch

METHODS = ("rate", "fs", "amos")
DEFAULT_PIPELINES = {"rate": "canonicalize,normalize,convert-rate", "fs": "canonicalize,normalize,convert-fs",
                     "amos": "canonicalize,normalize,convert-amos"}
REPORT_SCHEMA_VERSION = 1


def default_pipeline(method: str, fs_steps: int | None = None) -> str:
    """The default pipeline of ``method``; ``fs_steps`` sets K of the FS and AMOS conversions."""
    if method not in DEFAULT_PIPELINES:
        raise SnnccError(f"unknown conversion method {method!r}; available: {', '.join(METHODS)}")
    if fs_steps is not None and method == "rate":
        raise SnnccError("--fs-steps applies to --method fs or amos, not to rate coding (use --timesteps at eval)")
    pipeline = DEFAULT_PIPELINES[method]
    return pipeline if fs_steps is None else pipeline + f"{{steps={fs_steps}}}"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def compile_model(model: str | Path | onnx.ModelProto | torch.nn.Module, method: str = "rate",
                  calibration: np.ndarray | None = None, pipeline: str | None = None,
                  input_scaling: InputScaling | None = None, progress: bool = False, seed: int = 0,
                  fs_steps: int | None = None, example_input: object = None, exporter: str = "torchscript") -> Graph:
    """Import ``model`` and run the conversion pipeline. ``calibration`` holds raw inputs (scaled here).

    ``model`` is an ONNX file, an ``onnx.ModelProto``, or a ``torch.nn.Module``; a module is exported to ONNX in
    memory first (:mod:`snncc.frontend.torch_export`; ``example_input`` is a tensor or array of one input batch, or
    its shape, and ``exporter`` is ``"torchscript"`` or ``"dynamo"``) and then compiled exactly as its ONNX file
    would be. ``graph.attrs["source_model"]`` records the file's path and SHA-256, or the module's class and the
    SHA-256 of the exported ONNX bytes.

    Without ``input_scaling`` the scaling the model declares in its ONNX metadata is used, else none
    (:mod:`snncc.frontend.metadata`); ``graph.attrs["input_scaling_source"]`` says which. Calibration data far outside
    the input range the model declares give an :class:`~snncc.errors.InputRangeWarning`.
    """
    if is_nir_file(model):  # an SNN already: imported, not converted (snncc.frontend.nir)
        return compile_nir(model, pipeline=pipeline, input_scaling=input_scaling,
                           context=PassContext(seed=seed, progress=progress))
    model, source = _onnx_source(model, example_input, exporter)
    proto = load_model(model)
    where = str(model) if source is None else source.get("torch_module", source.get("graph", "<model>"))
    declaration = read_declaration(proto, where)
    input_scaling, scaling_source = choose_scaling(input_scaling, declaration)
    graph = import_onnx(proto)
    if source is None:  # a file: hashed once it is known to be a readable ONNX model
        source = {"path": str(Path(model).resolve()), "sha256": sha256_file(model)}
    model_shape = graph.op(graph.input_nodes()[0]).shape
    input_scaling.check_channels(model_shape, where=where)
    if calibration is not None:
        check_sample_shape(calibration.shape[1:], model_shape, "the calibration data", where)
    calib = None if calibration is None else input_scaling.apply(calibration)
    if calib is not None:
        check_calibration_range(calib, declaration, input_scaling, where=where)
    if pipeline is not None and fs_steps is not None:
        raise SnnccError("give either a pipeline or --fs-steps (set steps in the pipeline: convert-fs{steps=K})")
    pipeline = pipeline or default_pipeline(method, fs_steps)
    graph = run_pipeline(graph, pipeline, PassContext(calibration=calib, seed=seed, progress=progress))
    graph.attrs["input_scaling"] = input_scaling.to_json()
    graph.attrs["input_scaling_source"] = scaling_source
    graph.attrs["source_model"] = source
    return graph


def _onnx_source(model: object, example_input: object,
                 exporter: str) -> tuple[str | Path | onnx.ModelProto, dict | None]:
    """What ``import_onnx`` reads for ``model``, and the record of where it came from (None for a file)."""
    if is_torch_module(model):
        exported = export_module(model, example_input, exporter)
        return exported.model, exported.source
    if example_input is not None:
        raise SnnccError(f"example_input applies to torch.nn.Module models only, not to {type(model).__name__}")
    if isinstance(model, onnx.ModelProto):
        return model, {"graph": model.graph.name, "sha256": hashlib.sha256(model.SerializeToString()).hexdigest()}
    if isinstance(model, (str, Path)):
        return model, None
    raise SnnccError(f"cannot compile a {type(model).__name__}: give an ONNX file path, an onnx.ModelProto or a "
                     "torch.nn.Module (with example_input=)")


def ann_accuracy(model: str | Path, x: np.ndarray, y: np.ndarray, batch_size: int = 500) -> float:
    """Top-1 accuracy of the original ONNX model under onnxruntime (``x`` already scaled)."""
    logits = ann_logits(model, x, batch_size)
    return float((logits.argmax(axis=1) == np.asarray(y)).mean()) if len(x) else 0.0


def ann_logits(model: str | Path, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The original ONNX model's first output under onnxruntime, (N, outputs) float32, on model inputs ``x``
    (already scaled); a clear error where the data do not fit the model's input."""
    import onnxruntime as ort

    load_model(model)  # the same clear errors as compile for a bad file
    options = ort.SessionOptions()
    options.intra_op_num_threads = min(2, os.cpu_count() or 1)
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    meta = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else -1 for d in meta.shape]
    sample = int(np.prod(x.shape[1:]))
    if min(shape[1:], default=1) > 0 and sample != int(np.prod(shape[1:])):
        raise DataError(f"input data of shape {tuple(x.shape[1:])} per sample does not fit the ONNX model input "
                        f"{meta.name!r} of shape {tuple(shape[1:])} ({model}); check the data set")
    step = 1 if shape[0] == 1 else batch_size  # a model exported with a fixed batch of one
    outputs = []
    for start in range(0, len(x), step):
        batch = np.ascontiguousarray(x[start:start + step], dtype=np.float32).reshape([-1] + shape[1:])
        outputs.append(session.run(None, {meta.name: batch})[0].reshape(len(batch), -1))
    return np.concatenate(outputs) if outputs else np.zeros((0, 0), np.float32)


def _synapses(graph: Graph) -> int:
    """Synapses of the network: the non-zero weights, plus the circuits of AMOS units.

    A layer with several operands (``input_gains``) has a synapse per operand and weight: its weights are stored
    once, but every operand's neurons connect through them (:func:`_layer_synapses`). Every neuron of an AMOS unit of K neurons receives the unit's gate input, so the weights into an AMOS population
    count K times, and each unit adds its K (K - 1) / 2 inhibitory synapses (Stoeckl & Maass 2020)."""
    weights = {n: _layer_synapses(graph.op(n)) for n in graph.find((ops.Conv2d, ops.Linear))}
    total = sum(weights.values())
    types = graph.types()
    for node in graph.find(ops.Population):
        neuron = graph.op(node).neuron
        k = neuron.neurons_per_unit
        if k == 1:
            continue
        total += types[node].size * k * (k - 1) // 2
        total += (k - 1) * sum(weights[n] for n in _feeding_layers(graph, node))
    return total


def _layer_synapses(op: ops.Conv2d | ops.Linear) -> int:
    """The non-zero weights of a Conv2d/Linear, counted once per operand (``W * g_i`` for operand ``i``)."""
    return sum(int(np.count_nonzero(single.weight)) for single in op.per_input())


def _feeding_layers(graph: Graph, node: str) -> set[str]:
    """The Conv2d/Linear nodes whose outputs reach ``node`` without passing another synaptic layer or population."""
    found, stack = set(), list(graph.inputs(node))
    while stack:
        u = stack.pop()
        op = graph.op(u)
        if isinstance(op, (ops.Conv2d, ops.Linear)):
            found.add(u)
        elif not isinstance(op, (ops.Population, ops.Input)):
            stack.extend(graph.inputs(u))
    return found


def evaluate(graph: Graph, x: np.ndarray, y: np.ndarray, timesteps: list[int], onnx_model: str | Path | None = None,
             backend: str | None = None, batch_size: int = 100, progress: bool = False,
             threads: int | None = None, device: str | None = None, world: World | None = None) -> dict:
    """Accuracy of the ANN (if ``onnx_model``) and of the SNN at every T in ``timesteps``, with spike and synop counts.

    Temporally coded graphs (FS, AMOS) answer once, after their latency: ``timesteps`` is then ignored and the
    report has one row at the latency, plus ``latency``, ``steps_per_image`` of the layer pipeline (one input every
    K steps) and ``max_spikes_per_neuron`` checked over every neuron and input.

    ``x`` holds raw inputs; the graph's recorded input scaling is applied here. ``backend`` picks the simulator
    (a name in ``snncc.runtime.BACKENDS``; default the compiled runtime where it is built, else the reference) and
    ``threads`` the Cython runtime's threads, ``device`` where a backend with devices runs (the torch backend:
    ``"cpu"`` or ``"cuda"``). The report records the backend that ran, the simulation's
    ``seconds`` and ``images_per_second``.

    ``world`` (:class:`snncc.distributed.World`, under torchrun): each rank simulates its block of the images and
    the per-image results are gathered in rank order, so every rank returns the report of one process on all of
    ``x`` (``seconds`` is the wall time of the slowest rank, and the report records ``processes``).
    """
    if not timesteps or min(timesteps) < 1:
        raise SnnccError(f"timesteps must be positive integers, got {timesteps}")
    scaling = InputScaling.from_json(graph.attrs.get("input_scaling", {}))
    xs = check_input(graph, scaling.apply(x))  # wrong-shape data fail here, before the ANN runs, with one message
    temporal = is_temporal(graph)
    simulator = Simulator(graph, timesteps=None if temporal else max(timesteps), backend=backend,
                          batch_size=batch_size, threads=threads, device=device)
    if temporal:
        timesteps = [simulator.latency]
    report: dict = {"schema_version": REPORT_SCHEMA_VERSION, "images": int(len(x)),
                    "pipeline": graph.attrs.get("pipeline"), "backend": simulator.backend}
    if threads is not None:
        report["threads"] = threads
    world = world or World()
    shard = world.shard(len(x))
    if world.size > 1:
        report["processes"] = world.size
    if device is not None:
        report["device"] = device
    if onnx_model is not None:
        start = time.perf_counter()
        correct = round(ann_accuracy(onnx_model, xs[shard], y[shard]) * len(y[shard])) if len(y[shard]) else 0
        report["ann"] = {"accuracy": world.total(correct) / len(y), "model": str(onnx_model),
                         "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    result = gather_result(world, simulator.run(xs[shard], progress=progress and world.is_writer,
                                                 apply_scaling=False))
    seconds = time.perf_counter() - start
    neurons = result.total_neurons
    report.update({"neurons": neurons, "synapses": _synapses(graph), "seconds": seconds,
                   "images_per_second": len(x) / seconds if seconds > 0 else None,
                   "simulated_timesteps": max(timesteps)})
    if temporal:
        windows = {graph.op(n).neuron.steps for n in graph.find(ops.Population)}
        report.update({"coding": graph.attrs.get("conversion", {}).get("method", "fs"), "latency": result.latency,
                       "steps_per_image": max(windows), "max_spikes_per_neuron": result.max_spikes_per_neuron})
    report["snn"] = []
    for t in sorted(set(timesteps)):
        spikes = result.spikes_per_image(t)
        report["snn"].append({"timesteps": t, "accuracy": result.accuracy(y, t), "spikes_per_image": spikes,
                              "spikes_per_neuron": spikes / neurons if neurons else 0.0,
                              "synops_per_image": result.synops_per_image(t)})
    return report


def gather_result(world: World, result: SimulationResult) -> SimulationResult:
    """The result of all ranks' shards as one, in rank order (the single-process result when every rank simulated
    its :meth:`World.shard <snncc.distributed.World.shard>` of the images)."""
    if world.size == 1:
        return result
    most = result.max_spikes_per_neuron
    return dataclasses.replace(
        result, outputs=world.gather(result.outputs, axis=1),
        all_outputs=[world.gather(o, axis=1) for o in result.all_outputs],
        spikes={name: world.gather(s, axis=1) for name, s in result.spikes.items()},
        synops=world.gather(result.synops, axis=1),
        max_spikes_per_neuron=None if most is None else int(world.gather(np.array([most])).max()))


def write_json(data: dict, path: str | Path) -> Path:
    """Write a report as JSON atomically (:func:`snncc.fileio.write_json`)."""
    return fileio.write_json(data, path)


def model_name(graph: Graph, onnx_model: str | Path | None = None) -> str:
    """The name of the model for titles and labels: ``graph.attrs["name"]`` if set, else the stem of the ONNX file it
    was compiled from, else the torch module's class name, else the stem of ``onnx_model``, else ``"model"``."""
    source = graph.attrs.get("source_model") or {}
    if graph.attrs.get("name"):
        return str(graph.attrs["name"])
    if source.get("path"):
        return Path(source["path"]).name.removesuffix(".onnx")
    if source.get("torch_module"):
        return source["torch_module"].rsplit(".", 1)[-1]
    return Path(str(onnx_model)).name.removesuffix(".onnx") if onnx_model is not None else "model"


def plot_accuracy(reports: dict[str, dict], path: str | Path, title: str = "") -> Path:
    """PNG of SNN accuracy against T for one or more reports (label -> report), with each ANN accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    drawn_ann = set()
    for i, (label, report) in enumerate(reports.items()):
        color = f"C{i}"
        ts = [e["timesteps"] for e in report["snn"]]
        ax.plot(ts, [100 * e["accuracy"] for e in report["snn"]], "o-", color=color, label=f"{label} SNN")
        ann = report.get("ann", {}).get("accuracy")
        if ann is not None and ann not in drawn_ann:  # variants of one model share one ANN line
            drawn_ann.add(ann)
            ax.axhline(100 * ann, color=color, linestyle="--", label=f"ANN ({100 * ann:.2f}%)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("time steps T")
    ax.set_ylabel("test accuracy (%)")
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, min(top, 100.5))  # accuracy never exceeds 100 %; matplotlib's margin would show 104 %
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as PNG atomically (:func:`snncc.fileio.atomic_writer`) and close it."""
    import matplotlib.pyplot as plt

    try:
        with fileio.atomic_writer(path) as fh:
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
    return Path(path)


def format_table(report: dict) -> str:
    """The evaluation report as a fixed-width text table."""
    ann = report.get("ann", {}).get("accuracy")
    lines = []
    if ann is not None:
        lines.append(f"ANN accuracy (onnxruntime): {100 * ann:.2f}%  on {report['images']} images")
    lines.append(f"SNN: {report['neurons']} neurons, {report['synapses']} synapses, "
                 f"{report['images_per_second']:.1f} images/s ({report['backend']})")
    if "latency" in report:
        lines.append(f"{report['coding']} coding: answer after {report['latency']} steps, pipelined one input every "
                     f"{report['steps_per_image']} steps; at most {report['max_spikes_per_neuron']} spikes per neuron")
    header = f"{'T':>6} {'accuracy':>9} {'vs ANN':>8} {'spikes/neuron':>14} {'spikes/image':>13} {'synops/image':>13}"
    lines += [header, "-" * len(header)]
    for e in report["snn"]:
        gap = f"{100 * (e['accuracy'] - ann):+.2f}" if ann is not None else "-"
        lines.append(f"{e['timesteps']:>6} {100 * e['accuracy']:>8.2f}% {gap:>8} {e['spikes_per_neuron']:>14.3f} "
                     f"{e['spikes_per_image']:>13.0f} {e['synops_per_image']:>13.3g}")
    return "\n".join(lines)


def describe(graph: Graph) -> str:
    """Layers, neurons, synapses and codings of a graph, one row per node."""
    types = graph.types()
    rows = [f"level={graph.level}  pipeline={graph.attrs.get('pipeline', '-')}",
            f"{'node':<28} {'op':<17} {'shape':<14} {'coding':<7} {'neurons':>8} {'synapses':>9}"]
    total_neurons = total_synapses = 0
    for node in graph.topological_order():
        op = graph.op(node)
        neurons = types[node].size * op.neuron.neurons_per_unit if isinstance(op, ops.Population) else 0
        synapses = _layer_synapses(op) if isinstance(op, (ops.Conv2d, ops.Linear)) else 0
        detail = f" {op.neuron}" if isinstance(op, ops.Population) else ""
        total_neurons += neurons
        total_synapses += synapses
        shape = "x".join(map(str, types[node].shape))
        rows.append(f"{node[:28]:<28} {op.kind:<17} {shape:<14} {types[node].coding!s:<7} "
                    f"{neurons or '':>8} {synapses or '':>9}{detail}")
    rows.append(f"total: {len(graph)} nodes, {total_neurons} neurons, {total_synapses} synapses")
    return "\n".join(rows)
