"""Measure ``calibrate`` (snncc/finetune/calibrate.py) on the shipped rate SNNs and write
docs/results/calibrate-<model>.json and the results section of docs/calibration.md.

For each model: the rate SNN compiled as docs/results.md says (``canonicalize,normalize,convert-rate``: plain IF,
reset by subtraction, normalized on the first ``--norm-calib`` training images); then, for each T and each
configuration, ``calibrate`` on the first ``--calib`` training images, timed; accuracy before and after on the test
set (the full 10,000 images unless ``--limit``) on the Cython runtime.

    python docs/scripts/calibrate_results.py [--data ../shared/data] [--models vgg-fmnist,lenet5-mnist]
        [--plan 8:BC,8:BC+PC,4:BC+PC] [--calib 1000] [--limit N]

``--plan`` lists ``T:configuration`` pairs (configurations: :data:`CONFIGS`); each T is also measured as converted.
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
              limit: int | None, out: Path) -> dict:
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
    return result


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
                  "| T | configuration | accuracy | loss vs ANN (points) | calibration wall time |",
                  "|---:|---|---:|---:|---:|"]
        for run in r["runs"]:
            seconds = f"{run['calibration_seconds']:.0f} s" if "calibration_seconds" in run else ""
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
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    plan: dict[int, list[str]] = {}
    for item in args.plan.split(","):
        t, label = item.split(":")
        if label not in CONFIGS:
            parser.error(f"unknown configuration {label!r} in --plan; choose from {', '.join(CONFIGS)}")
        plan.setdefault(int(t), []).append(label)
    results = []
    for name in args.models.split(","):
        out = DOCS / "results" / f"calibrate-{name}.json"
        results.append(run_model(name, args.data, args.norm_calib, args.calib, plan, args.limit, out))
    page = DOCS / "calibration.md"
    text = page.read_text() if page.exists() else "# Calibration\n"
    head = text.split("## Results")[0].rstrip() + "\n\n"
    write_text(page, head + markdown(results))
    print(json.dumps({r["model"]: [(run["timesteps"], run["config"], run["accuracy"]) for run in r["runs"]]
                      for r in results}), file=sys.stderr)


if __name__ == "__main__":
    main()
