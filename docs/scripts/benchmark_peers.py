"""Peer benchmark (optional): SpikingJelly 2.0 (ann2snn) and sinabs on the shipped ONNX models, the same data, T,
batch and threads as docs/scripts/benchmark_runtime.py; writes docs/results/peers.json, which
``benchmark_runtime.py`` puts next to snncc's figures in docs/benchmark.md.

Runs in its own virtual environment, so that the peers' dependencies never reach snncc's (snncc is not imported)::

    python -m venv /work/peers-venv
    /work/peers-venv/bin/pip install -c constraints.txt torch==2.13.0 spikingjelly sinabs onnx numpy tqdm
    # measured with spikingjelly 2.0.0 and sinabs 3.1.3; spikingjelly pulls in a torchvision that does not import
    # with torch 2.13.0, but nothing used here imports it
    /work/peers-venv/bin/python docs/scripts/benchmark_peers.py [--data ../shared/data]
        [--models lenet5-mnist,vgg-fmnist] [--images lenet5-mnist=1000,vgg-fmnist=300] [--timesteps 16,32,64,128]
        [--threads 2] [--repeats 2] [--peers spikingjelly,sinabs] [--out docs/results/peers.json]

For the ratios in docs/benchmark.md, run it from the driver instead, which measures snncc and the peers in one run,
T by T (``python docs/scripts/benchmark_runtime.py --with-peers /work/peers-venv/bin/python``).

The network
    Rebuilt in torch from the ONNX file itself (Conv, Relu, MaxPool, AveragePool, Flatten, Gemm; the
    BatchNormalization after a Gemm is folded into it, the TorchScript exporter already folded the convolutions'
    BatchNorm), so both peers and snncc run exactly the weights in ``models/NAME.onnx``. The leading
    ``Sub``/``Div`` input normalization of the models is applied to the data (neither peer converts it; it is the
    same function), after the input scaling of ``models/NAME.json`` (``pixels / 255``). The rebuilt network's
    accuracy is checked against the ONNX model's.

Conversion (calibration on the first 500 training images, batches of 100, as snncc's), excluded from the timing
    - SpikingJelly: ``ann2snn.Converter(RateCodingRecipe(loader, mode="99.9%"))``, its documented robust
      normalization (the recipe of its MNIST example): each ReLU becomes scale / IFNode(threshold 1, reset by
      subtraction) / scale with the layer's 99.9th activation percentile (a running average over the batches).
      Simulated in multi-step mode (``functional.set_step_mode(net, "m")``: each layer runs for all k steps of a
      call before the next, k x batch in one convolution, input ``[k, batch, ...]``, T / k calls) and, for k = 1, in
      single-step mode (T calls). On CPU SpikingJelly's IF kernel is its torch implementation (no cupy or triton
      backend on CPU). State reset by ``functional.reset_net`` per batch.
    - sinabs: the ANN's weights normalized by the 99.9th activation percentile of each ReLU (``--sinabs-norm``:
      ``layerwise``, the data-based normalization of Rueckauer et al. (2017) that ``sinabs.utils.normalize_weights``
      cites, with each layer's bias divided by its own scale; or ``sinabs``, ``normalize_weights`` itself, which
      rescales each layer's weights and bias by one factor measured on the already normalized network: exact only for
      bias-free networks), then ``sinabs.from_model(ann, spike_layer_class=IAFSqueeze, num_timesteps=k)``, the
      defaults otherwise (threshold 1, MultiSpike, reset by subtraction, min_v_mem -1). Input: the image repeated
      over k steps and flattened to ``(batch * k, ...)`` as the Squeeze layers expect, T / k calls (the layers keep
      their state between calls), state reset by ``reset_states()`` per batch.

    Steps per call k (``--steps-per-call``, default ``all,8,1``; ``all`` is T): both peers are measured with each,
    and the fastest counts (all are in the JSON). Handing a peer all T steps at once is its documented fast path,
    but it holds T x batch activations of every layer (gigabytes for the VGG at T=128), and on this machine smaller
    slices of time are often faster.

    Both take the analog image as a constant input current at every step (as snncc does), keep max pooling as a max
    over each step's spikes (snncc pools the running spike counts), and read out the mean of the last layer's
    (non-spiking) output over the T steps; the predicted class is its argmax.

Measurement
    One process converts each (model, peer) and saves the converted network; each (model, peer, T) is then measured
    in a fresh process that loads it, with ``torch.set_num_threads(--threads)``, ``OMP_NUM_THREADS=--threads``,
    ``torch.inference_mode()``, batch 100: one warm-up batch, then the best of ``--repeats`` runs over all images
    (simulation only, no conversion). Peak memory: the process's peak resident set (``ru_maxrss``; torch, the model
    and the images included, as in snncc's table) and its growth during the simulation.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SCHEMA = "snncc-peers/2"
DATASETS = {"lenet5-mnist": "mnist", "vgg-fmnist": "fashion-mnist", "lenet5-avg-mnist": "mnist",
            "vgg-avg-fmnist": "fashion-mnist"}
BATCH = 100
CALIBRATION = 500
PEERS = ("spikingjelly", "sinabs")


# ------------------------------------------------------------------------------------------------------------------
# Data and the network rebuilt from the ONNX file
# ------------------------------------------------------------------------------------------------------------------

def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _scaling(model: Path) -> dict:
    card = model.with_suffix(".json")
    scaling = json.loads(card.read_text())["input_scaling"] if card.is_file() else {}
    return {"scale": scaling.get("scale", 1 / 255), "mean": scaling.get("mean", 0.0), "std": scaling.get("std", 1.0)}


def load_images(data_dir: Path, split: str, limit: int, scaling: dict, normalize: tuple[float, float]):
    """The first ``limit`` images of a split as float32 ``(N, 1, 28, 28)``: the card's input scaling, then the model's
    own leading normalization; and the labels."""
    stem = "train" if split == "train" else "t10k"
    x = _idx(data_dir / f"{stem}-images-idx3-ubyte.gz")[:limit].astype(np.float32)[:, None]
    y = _idx(data_dir / f"{stem}-labels-idx1-ubyte.gz")[:limit].astype(np.int64)
    x = (x * scaling["scale"] - scaling["mean"]) / scaling["std"]
    mean, std = normalize
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32), y


def ann_from_onnx(path: Path):
    """``(nn.Sequential, (mean, std))`` from a sequential ONNX CNN: Conv, Relu, MaxPool, AveragePool,
    Flatten/Reshape, Gemm and a BatchNormalization after a Gemm (folded into it), after a leading ``Sub``/``Div`` by
    scalars (returned)."""
    import onnx
    import torch
    from onnx import numpy_helper
    from torch import nn

    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    layers: list[nn.Module] = []
    mean, std = 0.0, 1.0
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        op = node.op_type
        if op == "Constant":
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"])
        elif op in ("Sub", "Div") and not layers:
            value = float(consts[node.input[1]])
            mean, std = (value, std) if op == "Sub" else (mean, value)
        elif op == "Conv":
            weight = consts[node.input[1]]
            pads = attrs.get("pads", [0, 0, 0, 0])
            if pads[:2] != pads[2:]:
                raise ValueError(f"{path}: asymmetric padding {pads}")
            conv = nn.Conv2d(weight.shape[1] * attrs.get("group", 1), weight.shape[0], weight.shape[2:],
                             stride=attrs.get("strides", 1), padding=tuple(pads[:2]),
                             dilation=attrs.get("dilations", 1), groups=attrs.get("group", 1),
                             bias=len(node.input) > 2)
            conv.weight.data = torch.from_numpy(weight.copy())
            if conv.bias is not None:
                conv.bias.data = torch.from_numpy(consts[node.input[2]].copy())
            layers.append(conv)
        elif op == "Relu":
            layers.append(nn.ReLU())
        elif op == "MaxPool":
            if any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0):
                raise ValueError(f"{path}: MaxPool with padding or ceil_mode")
            layers.append(nn.MaxPool2d(tuple(attrs["kernel_shape"]), stride=tuple(attrs.get("strides", [1, 1]))))
        elif op == "AveragePool":
            if any(attrs.get("pads", [0])) or attrs.get("ceil_mode", 0):
                raise ValueError(f"{path}: AveragePool with padding or ceil_mode")
            layers.append(nn.AvgPool2d(tuple(attrs["kernel_shape"]), stride=tuple(attrs.get("strides", [1, 1]))))
        elif op in ("Flatten", "Reshape"):
            layers.append(nn.Flatten())
        elif op == "Gemm":
            weight = consts[node.input[1]]
            weight = weight if attrs.get("transB", 0) else weight.T
            linear = nn.Linear(weight.shape[1], weight.shape[0], bias=len(node.input) > 2)
            linear.weight.data = torch.from_numpy(np.ascontiguousarray(weight) * attrs.get("alpha", 1.0))
            if linear.bias is not None:
                linear.bias.data = torch.from_numpy(consts[node.input[2]] * attrs.get("beta", 1.0))
            layers.append(linear)
        elif op == "BatchNormalization" and layers and isinstance(layers[-1], (nn.Linear, nn.Conv2d)):
            gamma, beta, mu, var = (consts[name] for name in node.input[1:5])
            factor = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
            last = layers[-1]
            shape = (-1,) + (1,) * (last.weight.dim() - 1)
            bias = last.bias.data.numpy() if last.bias is not None else 0.0
            last.weight.data = last.weight.data * torch.from_numpy(factor.reshape(shape).astype(np.float32))
            last.bias = nn.Parameter(torch.from_numpy(((bias - mu) * factor + beta).astype(np.float32)))
        else:
            raise ValueError(f"{path}: ONNX op {op} is not supported by this benchmark's rebuild")
    return nn.Sequential(*layers).eval(), (mean, std)


# ------------------------------------------------------------------------------------------------------------------
# Children: conversion (once per model and peer), measurement (once per model, peer and T)
# ------------------------------------------------------------------------------------------------------------------

def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _layerwise_normalize(ann, x_calibration, percentile: float) -> list[float]:
    """Data-based normalization (Rueckauer et al. 2017) in place: the scale of each ReLU is the ``percentile`` of its
    activations on the calibration data, measured on the original network; layer l's weights are multiplied by
    scale(l-1) / scale(l) and its bias divided by scale(l). The layer after the last ReLU gets scale(l-1) only (its
    output keeps the ANN's scale). Max and average pooling commute with the positive scaling."""
    import torch
    from torch import nn

    scales, acts = [], []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.detach().flatten().numpy()))
             for m in ann if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        for i in range(0, len(x_calibration), BATCH):
            ann(x_calibration[i:i + BATCH])
    for h in hooks:
        h.remove()
    count = len(hooks)
    for k in range(count):
        scales.append(float(np.percentile(np.concatenate(acts[k::count]), percentile)))
    previous, k = 1.0, 0
    params = [m for m in ann if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer in params:
            scale = scales[k] if k < count else 1.0
            layer.weight.mul_(previous / scale)
            if layer.bias is not None:
                layer.bias.div_(scale)
            previous, k = scale, k + 1
    return scales


def child_prepare(args: argparse.Namespace) -> dict:
    """Convert (model, peer), save the converted network to ``--save``; the rebuilt ANN's accuracy on the test
    images."""
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ann, normalize = ann_from_onnx(args.model)
    scaling = _scaling(args.model)
    x_cal, _ = load_images(args.data_dir, "train", CALIBRATION, scaling, normalize)
    x_test, y_test = load_images(args.data_dir, "test", args.images, scaling, normalize)
    x_cal, x_test = torch.from_numpy(x_cal), torch.from_numpy(x_test)
    with torch.inference_mode():
        ann_predictions = torch.cat([ann(x_test[i:i + BATCH]).argmax(1) for i in range(0, len(x_test), BATCH)])
    result = {"ann_accuracy_torch": float((ann_predictions.numpy() == y_test).mean()), "normalize": normalize,
              "input_scaling": scaling}
    start = time.perf_counter()
    if args.peer == "spikingjelly":
        from spikingjelly.activation_based import ann2snn

        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x_cal, torch.zeros(len(x_cal))),
                                             batch_size=BATCH)
        recipe = ann2snn.RateCodingRecipe(loader, mode=args.sj_mode)
        snn = ann2snn.Converter(recipe, device="cpu").convert(ann).eval()
        torch.save(snn, args.save)
        result["method"] = (f"ann2snn.Converter(RateCodingRecipe(mode={args.sj_mode!r})): IFNode (threshold 1, "
                            "reset by subtraction) between scalers; multi-step mode with k steps per call, "
                            "single-step mode for k = 1")
    else:
        if args.sinabs_norm == "sinabs":
            from sinabs.utils import normalize_weights
            from torch import nn

            names = [name for name, _ in ann.named_children()]
            relus = [i for i, (_, m) in enumerate(ann.named_children()) if isinstance(m, nn.ReLU)]
            params = [max(j for j in range(i) if isinstance(ann[j], (nn.Conv2d, nn.Linear))) for i in relus]
            normalize_weights(ann, x_cal, output_layers=[names[i] for i in relus],
                              param_layers=[names[j] for j in params], percentile=args.sinabs_percentile)
            result["scales"] = None
        else:
            result["scales"] = _layerwise_normalize(ann, x_cal, args.sinabs_percentile)
        torch.save(ann, args.save)
        result["method"] = (f"from_model(IAFSqueeze with k steps per call, MultiSpike, MembraneSubtract), weights "
                            f"normalized by the "
                            f"{args.sinabs_percentile:g}th percentile ("
                            f"{'sinabs.utils.normalize_weights' if args.sinabs_norm == 'sinabs' else 'layer-wise'})")
    result["conversion_seconds"] = time.perf_counter() - start
    return result


def child_measure(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    T, k = args.T, args.steps
    if T % k:
        raise ValueError(f"T={T} is not a multiple of {k} steps per call")
    ann_or_snn = torch.load(args.save, weights_only=False)
    normalize = tuple(json.loads(args.normalize))
    x_test, y_test = load_images(args.data_dir, "test", args.images, _scaling(args.model), normalize)
    xs = torch.from_numpy(x_test)

    if args.peer == "spikingjelly":
        from spikingjelly.activation_based import functional

        snn = ann_or_snn
        functional.set_step_mode(snn, "s" if k == 1 else "m")

        def run_batch(batch):
            functional.reset_net(snn)
            if k == 1:  # single-step mode
                total = snn(batch)
                for _ in range(T - 1):
                    total = total + snn(batch)
                return total / T
            sequence = batch.unsqueeze(0).expand(k, *batch.shape)
            total = snn(sequence).sum(0)
            for _ in range(T // k - 1):
                total = total + snn(sequence).sum(0)
            return total / T
    else:
        import sinabs
        import sinabs.layers as sl

        network = sinabs.from_model(ann_or_snn, input_shape=tuple(xs.shape[1:]), num_timesteps=k,
                                    spike_layer_class=sl.IAFSqueeze)
        network.eval()

        def run_batch(batch):
            network.reset_states()
            flat = batch.unsqueeze(1).expand(len(batch), k, *batch.shape[1:]).reshape(len(batch) * k,
                                                                                      *batch.shape[1:])
            total = network(flat).reshape(len(batch), k, -1).sum(1)
            for _ in range(T // k - 1):
                total = total + network(flat).reshape(len(batch), k, -1).sum(1)
            return total / T

    baseline = _peak_rss_mib()
    best, predictions = float("inf"), None
    with torch.inference_mode():
        run_batch(xs[:BATCH])  # warm-up: allocator, lazy state initialization
        for _ in range(args.repeats):
            start = time.perf_counter()
            parts = [run_batch(xs[i:i + BATCH]).argmax(1) for i in range(0, len(xs), BATCH)]
            best = min(best, time.perf_counter() - start)
            predictions = torch.cat(parts).numpy()
    return {"T": T, "seconds": best, "images": len(xs), "images_per_second": len(xs) / best,
            "accuracy": float((predictions == y_test).mean()), "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": baseline, "simulation_rss_growth_mib": _peak_rss_mib() - baseline,
            "steps_per_call": k,
            "step_mode": ("s" if k == 1 else "m") if args.peer == "spikingjelly" else "IAFSqueeze (batch * k)",
            "predictions_sha": _digest(predictions)}


def _digest(array) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(array).astype(np.int64).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------------------------

def _spawn(mode: str, args: argparse.Namespace, **options) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    argv = [sys.executable, __file__, "--child", mode, "--threads", str(args.threads), "--repeats",
            str(args.repeats), "--sj-mode", args.sj_mode,
            "--sinabs-norm", args.sinabs_norm, "--sinabs-percentile", str(args.sinabs_percentile)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peer benchmark child {mode} {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _versions() -> dict:
    from importlib import metadata

    versions = {}
    for package in ("torch", "spikingjelly", "sinabs", "numpy", "onnx"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def meta(args: argparse.Namespace) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {"schema": SCHEMA, "date": time.strftime("%Y-%m-%d %H:%M"), "versions": _versions(),
            "python": platform.python_version(), "machine": f"{cpu}, {os.cpu_count()} cores",
            "platform": platform.platform(), "threads": args.threads, "batch": BATCH, "repeats": args.repeats,
            "calibration_images": CALIBRATION, "load_average": os.getloadavg(),
            "settings": {"sj_mode": args.sj_mode, "steps_per_call": args.steps_per_call,
                         "sinabs_norm": args.sinabs_norm, "sinabs_percentile": args.sinabs_percentile},
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def run(args: argparse.Namespace) -> dict:
    """Measure every (model, peer, T); conversions are cached in ``args.workdir``."""
    models = {}
    for name in args.models:
        model = args.model_dir / f"{name}.onnx"
        if not model.is_file():
            print(f"skipping {name}: {model} does not exist", file=sys.stderr, flush=True)
            continue
        data_dir = args.data / DATASETS[name]
        images = args.images.get(name, 1000)
        entry = {"model": str(model.relative_to(REPO) if model.is_relative_to(REPO) else model),
                 "model_sha256": _sha256(model), "dataset": DATASETS[name], "images": images, "peers": {}}
        for peer in args.peers:
            setting = (f"{args.sinabs_norm}-{args.sinabs_percentile:g}" if peer == "sinabs"
                       else args.sj_mode.replace("%", "pct"))
            saved = args.workdir / f"{name}.{peer}.{setting}.pt"  # conversions differ by settings only
            info = args.workdir / f"{saved.name}.{images}.json"
            if info.is_file() and saved.is_file():
                prepared = json.loads(info.read_text())
            else:
                print(f"peers: {name} {peer}: converting", file=sys.stderr, flush=True)
                prepared = _spawn("prepare", args, peer=peer, model=model, data_dir=data_dir, images=images,
                                  save=saved)
                info.write_text(json.dumps(prepared))
            entry["ann_accuracy_torch"] = prepared["ann_accuracy_torch"]
            runs = {}
            for T in args.timesteps:
                configurations = {}
                for k in sorted({T if s == "all" else int(s) for s in args.steps_per_call}, reverse=True):
                    if k > T or T % k:
                        continue
                    print(f"peers: {name} T={T} {peer} {k} steps per call", file=sys.stderr, flush=True)
                    configurations[str(k)] = _spawn("measure", args, peer=peer, model=model, data_dir=data_dir,
                                                    images=images, save=saved, T=T, steps=k,
                                                    normalize=json.dumps(prepared["normalize"]))
                best = max(configurations.values(), key=lambda r: r["images_per_second"])  # the fastest counts
                runs[str(T)] = {**best, "configurations": configurations}
            entry["peers"][peer] = {"method": prepared["method"], "conversion_seconds": prepared["conversion_seconds"],
                                    "timesteps": runs}
        models[name] = entry
    return {**meta(args), "models": models}


def _parse_images(text: str, models: list[str]) -> dict:
    if "=" in text:
        return {k: int(v) for k, v in (item.split("=") for item in text.split(","))}
    return {name: int(text) for name in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="lenet5-mnist,vgg-fmnist")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models")
    parser.add_argument("--images", default="lenet5-mnist=1000,vgg-fmnist=300",
                        help="test images per model (accuracy and speed), NAME=N,... or one number for all")
    parser.add_argument("--timesteps", default="16,32,64,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--sj-mode", default="99.9%", help="SpikingJelly RateCodingRecipe mode (max, 99.9%%, ...)")
    parser.add_argument("--steps-per-call", default="all,8,1",
                        help="time steps handed to a peer per call (all = T; 1 = SpikingJelly's single-step mode), "
                             "each measured; the fastest counts")
    parser.add_argument("--sinabs-norm", choices=["layerwise", "sinabs"], default="layerwise")
    parser.add_argument("--sinabs-percentile", type=float, default=99.9)
    parser.add_argument("--workdir", type=Path, help="keep converted networks here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "peers.json",
                        help="JSON file to write; '-' prints it on stdout")
    # child-process options
    parser.add_argument("--child", choices=["prepare", "measure"], help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--normalize", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.images = int(args.images)
        print(json.dumps((child_prepare if args.child == "prepare" else child_measure)(args)))
        return
    args.models = args.models.split(",")
    args.images = _parse_images(args.images, args.models)
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    args.peers = [p for p in args.peers.split(",") if p]
    args.steps_per_call = [s for s in args.steps_per_call.split(",") if s]
    if not args.steps_per_call or not all(s == "all" or (s.isdigit() and int(s) > 0) for s in args.steps_per_call):
        parser.error("--steps-per-call: a comma-separated list of positive integers and 'all'")
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {PEERS}")
    with tempfile.TemporaryDirectory() as tmp:
        if args.workdir is None:
            args.workdir = Path(tmp)
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args)
    text = json.dumps(result, indent=2)
    if str(args.out) == "-":
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
