"""Where proxy learning falls short of BPTT, measured: the gradient each method gives every layer of the converted
VGG / Fashion-MNIST rate SNN, and the hidden-layer rate errors that only BPTT sees.

Proxy learning (Kheradpisheh, Mirsadeghi & Masquelier, IEEE Access 2022; snncc/finetune/proxy.py) takes the loss
at the SNN's output ``o_snn`` and back-propagates ``dL/do`` through the ANN, so every hidden layer's gradient is the
ANN's Jacobian at the ANN's activations ``a``. The SNN's hidden layers emit rates ``r = n(T) / T`` that differ from
``a`` (the floor of spike counting, residual charge, what spiking max pooling sees); BPTT with surrogate gradients
(the ``surrogate`` method) differentiates through those spikes. This script measures, on the same training images
and the same parameters (the converted SNN):

- per layer, the cosine similarity of the proxy gradient and the surrogate (BPTT) gradient of the mean
  cross-entropy over all ``--images`` images (``full``), and the mean of the per-batch cosines (``batch``);
- the same for the plain ANN's gradient (loss on ``o_ann``) against the proxy's, to show which one the proxy follows;
- per population, the relative error of the SNN's rates against the ANN's activations, ``sum |r - a| / sum a``
  over images and neurons;

at each T of ``--timesteps``. As T grows the SNN's rates approach the ANN's activations and the proxy gradient
should approach BPTT's; at the T where the proxy fell short (8) the hidden layers' cosines say by how much.

    python docs/scripts/proxy_gradients.py [--data ../shared/data] [--images 512] [--timesteps 4,8,16,32]
        [--threads N]

Writes docs/results/proxy-gradients.json, docs/results/proxy-gradients.png and the section between the
``proxy-gradients`` markers of docs/finetune.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from shipped import DATASETS, load_model_data
from snncc.api import compile_model, write_json
from snncc.data import load_dataset
from snncc.fileio import write_text
from snncc.finetune import FinetuneOptions
from snncc.finetune.calibrate import rate_probe
from snncc.finetune.methods import proxy_method_loss, surrogate_loss
from snncc.finetune.trainer import model_inputs
from snncc.ir import ops
from snncc.runtime.torch_lowering import lower

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
MODEL = "vgg-fmnist"
PIPELINE = "canonicalize,normalize,convert-rate"
#: Training images the conversion normalizes on (as finetune_results.py compiles the model).
CALIBRATION_IMAGES = 5000
START, END = "<!-- proxy-gradients:start -->", "<!-- proxy-gradients:end -->"


def layer_gradients(module, loss_of, x: np.ndarray, y: np.ndarray, batch: int, nodes: list[str]):
    """Per batch of ``batch`` images, the gradient of ``loss_of(module, x, y)`` (a batch mean) for every weight
    layer of ``nodes``, flattened (weights and biases together), as a list of ``{node: vector}``."""
    batches = []
    for start in range(0, len(x), batch):
        module.zero_grad(set_to_none=True)
        loss = loss_of(module, torch.as_tensor(x[start:start + batch]), torch.as_tensor(y[start:start + batch]))
        loss.backward()
        batches.append({n: torch.cat([p.grad.reshape(-1) for p in module.parameters_of(n).values()
                                      if p.grad is not None]).double() for n in nodes})
    module.zero_grad(set_to_none=True)
    return batches


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300))


def compare(first: list[dict], second: list[dict], nodes: list[str]) -> dict[str, dict[str, float]]:
    """Per node: the cosine of the gradients summed over all batches (``full``: the gradient of the mean loss over
    every image, batches being equal) and the mean per-batch cosine (``batch``: what one optimizer step sees), and
    the ratio of the full gradients' norms (``norm_ratio``: first / second)."""
    out = {}
    for n in nodes:
        a, b = sum(g[n] for g in first), sum(g[n] for g in second)
        out[n] = {"full": cosine(a, b), "batch": float(np.mean([cosine(p[n], q[n]) for p, q in zip(first, second)])),
                  "norm_ratio": float(a.norm() / b.norm().clamp_min(1e-300))}
    return out


def relative_rate_errors(graph, module, x: np.ndarray, timesteps: int, populations: list[str], batch: int):
    """Per population: ``sum |r - a| / sum a`` and ``sum (r - a) / sum a`` (over images and neurons) of the SNN's
    rates ``r = n(T) / T`` after ``timesteps`` steps against the ANN's activations ``a`` on the same images."""
    probe = lower(rate_probe(graph, populations, per_channel=False))
    absolute = {n: 0.0 for n in populations}
    signed = {n: 0.0 for n in populations}
    total = {n: 0.0 for n in populations}
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb = torch.as_tensor(x[start:start + batch])
            rates = [o[-1] for o in probe(xb, timesteps).outputs]
            analog = module.forward_analog(xb, record=tuple(populations)).values
            for n, r in zip(populations, rates):
                a = analog[n].reshape(r.shape).double()
                r = r.double()
                absolute[n] += float((r - a).abs().sum())
                signed[n] += float((r - a).sum())
                total[n] += float(a.sum())
    return {n: {"relative_l1": absolute[n] / total[n], "relative_bias": signed[n] / total[n]} for n in populations}


def measure(args: argparse.Namespace) -> dict:
    model, scaling, calibration, _, _ = load_model_data(MODEL, args.data, CALIBRATION_IMAGES, 1)
    graph = compile_model(model, calibration=calibration, pipeline=PIPELINE, input_scaling=scaling)
    x, y = load_dataset(args.data / DATASETS[MODEL], split="train", limit=args.images)
    x, y = model_inputs(graph, x), y.astype(np.int64)
    options = FinetuneOptions(timesteps=8)
    torch.manual_seed(0)
    module = lower(graph, surrogate=options.surrogate, width=options.width)
    layers = [n for n in module.index if isinstance(graph.op(n), (ops.Conv2d, ops.Linear))]
    populations = list(module.populations)

    def ann_loss(m, xb, yb):
        logits = m.forward_analog(xb).outputs[0]
        return F.cross_entropy(logits.reshape(logits.shape[0], -1), yb)

    start = time.perf_counter()
    ann = layer_gradients(module, ann_loss, x, y, args.batch_size, layers)
    rows = {}
    for T in args.timesteps:
        t0 = time.perf_counter()
        proxy = layer_gradients(module, lambda m, xb, yb: proxy_method_loss(m, xb, yb, T)[0], x, y,
                                args.batch_size, layers)
        bptt = layer_gradients(module, lambda m, xb, yb: surrogate_loss(m, xb, yb, T)[0], x, y,
                               args.batch_size, layers)
        rows[str(T)] = {"proxy_vs_bptt": compare(proxy, bptt, layers), "proxy_vs_ann": compare(proxy, ann, layers),
                        "ann_vs_bptt": compare(ann, bptt, layers),
                        "rate_errors": relative_rate_errors(graph, module, x, T, populations, 128),
                        "seconds": time.perf_counter() - t0}
        first, last = layers[0], layers[-1]
        print(f"T={T}: cos(proxy, BPTT) {first} {rows[str(T)]['proxy_vs_bptt'][first]['full']:.3f} ... {last} "
              f"{rows[str(T)]['proxy_vs_bptt'][last]['full']:.3f} ({rows[str(T)]['seconds']:.0f} s)", flush=True)
    return {"schema_version": 1, "model": MODEL, "pipeline": PIPELINE, "images": len(x), "split": "train",
            "batch_size": args.batch_size, "surrogate": options.surrogate, "width": options.width,
            "layers": layers, "populations": populations, "timesteps": rows,
            "seconds": time.perf_counter() - start, "torch_threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores"}


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = results["layers"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for T, row in results["timesteps"].items():
        left.plot(range(len(layers)), [row["proxy_vs_bptt"][n]["full"] for n in layers], marker="o", label=f"T={T}")
        pops = results["populations"]
        right.plot(range(len(pops)), [row["rate_errors"][n]["relative_l1"] for n in pops], marker="o",
                   label=f"T={T}")
    left.set(xticks=range(len(layers)), xticklabels=layers, ylabel="cos(proxy gradient, BPTT gradient)",
             title="gradient agreement per layer")
    right.set(xticks=range(len(results["populations"])), xticklabels=results["populations"],
              ylabel="sum |r - a| / sum a", title="hidden rate error (SNN rate r vs ANN activation a)")
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=60)
        axis.grid(alpha=0.3)
        axis.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def markdown(results: dict) -> str:
    layers, rows = results["layers"], results["timesteps"]
    Ts = list(rows)
    lines = [START, "", "### Where proxy learning falls short, measured", "",
             f"`python docs/scripts/proxy_gradients.py` (JSON in `docs/results/proxy-gradients.json`): the converted "
             f"VGG / Fashion-MNIST rate SNN, the first {results['images']:,} training images in batches of "
             f"{results['batch_size']}; per layer the cosine similarity of the proxy gradient and the BPTT "
             f"(surrogate, {results['surrogate']}, width {results['width']}) gradient of the mean cross-entropy "
             "over all the images (per-batch mean in brackets), and of the plain ANN's gradient and the proxy's.",
             "", "| layer | " + " | ".join(f"proxy vs BPTT, T={T}" for T in Ts) + " | " +
             " | ".join(f"proxy vs ANN, T={T}" for T in Ts) + " |",
             "|---|" + "---:|" * (2 * len(Ts))]
    for n in layers:
        lines.append(f"| {n} | " + " | ".join(f"{rows[T]['proxy_vs_bptt'][n]['full']:.3f} "
                                              f"({rows[T]['proxy_vs_bptt'][n]['batch']:.2f})" for T in Ts)
                     + " | " + " | ".join(f"{rows[T]['proxy_vs_ann'][n]['full']:.3f}" for T in Ts) + " |")
    lines += ["", "Hidden rate error `sum |r - a| / sum a` of each population (SNN rate after T steps against the "
              "ANN activation, same images; the signed `sum (r - a) / sum a` in brackets):", "",
              "| population | " + " | ".join(f"T={T}" for T in Ts) + " |", "|---|" + "---:|" * len(Ts)]
    for n in results["populations"]:
        lines.append(f"| {n} | " + " | ".join(f"{rows[T]['rate_errors'][n]['relative_l1']:.3f} "
                                              f"({rows[T]['rate_errors'][n]['relative_bias']:+.3f})" for T in Ts)
                     + " |")
    lines += ["", "![gradient agreement and hidden rate error](results/proxy-gradients.png)", "", END]
    return "\n".join(lines) + "\n"


def write_markdown(results: dict) -> Path:
    path = DOCS / "finetune.md"
    text = path.read_text(encoding="utf-8")
    section = markdown(results)
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return write_text(path, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--timesteps", type=lambda s: [int(t) for t in s.split(",")], default=[4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--markdown-only", action="store_true", help="only rebuild the docs from the JSON")
    args = parser.parse_args(argv)
    path = DOCS / "results" / "proxy-gradients.json"
    if args.markdown_only:
        results = json.loads(path.read_text(encoding="utf-8"))
    else:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        results = measure(args)
        write_json(results, path)
        plot(results, DOCS / "results" / "proxy-gradients.png")
    print(write_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
