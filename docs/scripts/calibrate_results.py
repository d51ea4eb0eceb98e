"""Measure ``calibrate`` (snncc/finetune/calibrate.py) on the shipped rate SNNs and write
docs/results/calibrate-<model>.json and the results section of docs/calibration.md.

For each model: the rate SNN compiled as docs/results.md says (``canonicalize,normalize,convert-rate``: plain IF,
reset by subtraction, normalized on the first ``--norm-calib`` training images); then, for each T and each
configuration, ``calibrate`` on the first ``--calib`` training images, timed; accuracy before and after on the test
set (the full 10,000 images unless ``--limit``) on the Cython runtime.

    python docs/scripts/calibrate_results.py [--data ../shared/data] [--models vgg-fmnist,lenet5-mnist]
        [--plan 8:BC,8:BC+PC,4:BC+PC] [--calib 1000] [--limit N] [--proxy-images N --proxy-timesteps 8]

``--plan`` lists ``T:configuration`` pairs (configurations: :data:`CONFIGS`; ``none``: no calibration runs); each T
is also measured as converted. ``--proxy-images N`` adds a short proxy-learning run (snncc/finetune/proxy.py): one
epoch over the first N training images with Adam, weights and biases only, then the same evaluation.
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

from snncc.api import compile_model
from snncc.data import load_dataset
from snncc.fileio import write_text
from snncc.finetune.calibrate import calibrate
from snncc.finetune.proxy import proxy_loss
from snncc.ir import ops
from snncc.runtime.torch_lowering import lower
from snncc.runtime import Simulator
from shipped import DATASETS, load_model_data

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
#: name -> calibrate options; measured in this order, so each row adds one correction.
CONFIGS = {
    "BC": {"bias": True, "potential": "none"},
    "PC": {"bias": False, "potential": "layer"},
    "BC+PC": {"bias": True, "potential": "layer"},
    "rescale": {"bias": False, "potential": "none", "rescale": True},
    "rescale+BC+PC": {"bias": True, "potential": "layer", "rescale": True},
}
ANN_ACCURACY = {"vgg-fmnist": 0.9433, "lenet5-mnist": 0.9943}  # onnxruntime, full test sets (models/*.md)


def accuracy(graph, x, y, timesteps: int) -> float:
    return Simulator(graph, timesteps=timesteps, backend="cython").run(x).accuracy(y, timesteps)


def run_model(name: str, data_root: Path, norm_calib: int, calib: int, plan: dict[int, list[str]],
              limit: int | None, out: Path, proxy_images: int = 0, proxy_timesteps: int = 8) -> dict:
    model, scaling, calibration, x, y = load_model_data(name, data_root, norm_calib, limit)
    train, _ = load_dataset(data_root / DATASETS[name], split="train", limit=calib)
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    result = {"model": name, "ann_accuracy": ANN_ACCURACY[name], "test_images": int(len(x)),
              "normalization_images": norm_calib, "calibration_images": calib, "backend": "cython",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
              "torch_threads": torch.get_num_threads(), "runs": []}
    for t, configs in plan.items():
        start = time.perf_counter()
        before = accuracy(graph, x, y, t)
        print(f"{name} T={t}: converted {100 * before:.2f}% ({time.perf_counter() - start:.0f} s)", flush=True)
        result["runs"].append({"timesteps": t, "config": "converted", "accuracy": before})
        for label in configs:
            start = time.perf_counter()
            calibrated = calibrate(graph, train, t, **CONFIGS[label])
            seconds = time.perf_counter() - start
            after = accuracy(calibrated, x, y, t)
            report = calibrated.attrs["calibration"]["populations"]
            result["runs"].append({"timesteps": t, "config": label, "options": CONFIGS[label], "accuracy": after,
                                   "calibration_seconds": seconds, "populations": report})
            print(f"{name} T={t} {label}: {100 * after:.2f}% (calibration {seconds:.0f} s)", flush=True)
            write_text(out, json.dumps(result, indent=1) + "\n")  # after every run: a long job keeps its results
    if proxy_images:
        if not result["runs"] and out.exists():  # --plan none: keep the calibration runs of an earlier invocation
            result["runs"] = [r for r in json.loads(out.read_text())["runs"] if r["config"] != "proxy"]
        train_x, train_y = load_dataset(data_root / DATASETS[name], split="train", limit=proxy_images)
        run = proxy_run(graph, train_x, train_y, x, y, proxy_timesteps)
        result["runs"].append(run)
        print(f"{name} T={proxy_timesteps} proxy: {100 * run['accuracy']:.2f}% "
              f"(training {run['training_seconds']:.0f} s)", flush=True)
        write_text(out, json.dumps(result, indent=1) + "\n")
    return result


def _with_trained_weights(graph, module):
    """``graph`` with the weights and biases of ``module`` (a minimal write-back for this script: the only
    parameters its proxy run trains)."""
    out = graph.clone()
    for node, i in module.index.items():
        op, layer = out.op(node), module.layers[i]
        if isinstance(op, (ops.Conv2d, ops.Linear)):
            bias = None if layer.bias is None else layer.bias.detach().numpy().copy()
            out.replace(node, op.replace(weight=layer.weight.detach().numpy().copy(), bias=bias))
    return out


def proxy_run(graph, train: np.ndarray, labels: np.ndarray, x, y, timesteps: int, lr: float = 1e-4,
              batch_size: int = 50, seed: int = 0) -> dict:
    """One epoch of proxy learning over ``train`` (data as stored), Adam on weights and biases."""
    from snncc.data import InputScaling

    torch.manual_seed(seed)
    module = lower(graph)
    params = [p for name, p in module.named_parameters() if name.endswith((".weight", ".bias"))]
    optimizer = torch.optim.Adam(params, lr=lr)
    inputs = torch.from_numpy(InputScaling.from_json(graph.attrs["input_scaling"]).apply(train)
                              .reshape((len(train),) + module.shapes[graph.input_nodes()[0]]).astype(np.float32))
    targets = torch.from_numpy(labels.astype(np.int64))
    order = torch.randperm(len(train))
    start, losses = time.perf_counter(), []
    for i in range(0, len(train), batch_size):
        batch = order[i:i + batch_size]
        optimizer.zero_grad()
        loss = proxy_loss(module, inputs[batch], targets[batch], timesteps)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    trained = _with_trained_weights(graph, module)
    return {"timesteps": timesteps, "config": "proxy", "accuracy": accuracy(trained, x, y, timesteps),
            "training_seconds": seconds, "images": int(len(train)), "epochs": 1, "lr": lr, "batch_size": batch_size,
            "optimizer": "adam", "loss_first_batches": float(np.mean(losses[:5])),
            "loss_last_batches": float(np.mean(losses[-5:]))}


def markdown(results: list[dict]) -> str:
    lines = ["## Results", "",
             "Measured by `python docs/scripts/calibrate_results.py` (accuracy on the Cython runtime; wall times on "
             "a 2-core machine shared with five other jobs, so they are upper bounds that move by tens of percent).",
             ""]
    for r in results:
        lines += [f"### {r['model']}", "",
                  f"ANN {100 * r['ann_accuracy']:.2f}%; {r['test_images']} test images; normalization on the first "
                  f"{r['normalization_images']} and calibration on the first {r['calibration_images']} training "
                  "images.", "",
                  "| T | configuration | accuracy | loss vs ANN (points) | wall time |",
                  "|---:|---|---:|---:|---:|"]
        for run in r["runs"]:
            seconds = f"{run['calibration_seconds']:.0f} s" if "calibration_seconds" in run else ""
            if run["config"] == "proxy":
                seconds = (f"{run['training_seconds']:.0f} s training ({run['images']} images, "
                           f"{run['epochs']} epoch, Adam lr {run['lr']:g})")
            lines.append(f"| {run['timesteps']} | {run['config']} | {100 * run['accuracy']:.2f}% | "
                         f"{100 * (r['ann_accuracy'] - run['accuracy']):+.2f} | {seconds} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="vgg-fmnist")
    parser.add_argument("--plan", default=",".join(f"{t}:{c}" for t in (8, 4) for c in CONFIGS))
    parser.add_argument("--norm-calib", type=int, default=5000)
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--proxy-images", type=int, default=0)
    parser.add_argument("--proxy-timesteps", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default docs/results/calibrate-<model>.json); the page merges every "
                             "docs/results/calibrate-*.json of a model")
    parser.add_argument("--page-only", action="store_true", help="only rewrite docs/calibration.md from the JSON files")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    plan: dict[int, list[str]] = {}
    for item in ([] if args.plan == "none" else args.plan.split(",")):
        t, label = item.split(":")
        if label not in CONFIGS:
            parser.error(f"unknown configuration {label!r} in --plan; choose from {', '.join(CONFIGS)}")
        plan.setdefault(int(t), []).append(label)
    results = []
    for name in [] if args.page_only else args.models.split(","):
        out = args.out or DOCS / "results" / f"calibrate-{name}.json"
        results.append(run_model(name, args.data, args.norm_calib, args.calib, plan, args.limit, out,
                                 args.proxy_images, args.proxy_timesteps))
    # The page shows every model measured so far, merging the JSON files of a model (runs in file order).
    results = {}
    for f in sorted((DOCS / "results").glob("calibrate-*.json")):
        r = json.loads(f.read_text())
        if r["model"] in results:
            results[r["model"]]["runs"] += r["runs"]
        else:
            results[r["model"]] = r
    results = sorted(results.values(), key=lambda r: r["model"], reverse=True)
    page = DOCS / "calibration.md"
    text = page.read_text() if page.exists() else "# Calibration\n"
    head = text.split("## Results")[0].rstrip() + "\n\n"
    write_text(page, head + markdown(results))
    print(json.dumps({r["model"]: [(run["timesteps"], run["config"], run["accuracy"]) for run in r["runs"]]
                      for r in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
