"""Measure surrogate-gradient fine-tuning of the shipped rate-coded models and write docs/finetune.md's results.

For each model: compile with the defaults of docs/results.md (``canonicalize,normalize,convert-rate``: plain IF
neurons, reset by subtraction, calibration on the first 5,000 training images), evaluate the converted SNN on the
full test set with the Cython runtime, then for each T fine-tune it with ``surrogate`` (the first
``--train-images + --val-images`` training images, the last ``--val-images`` held back) and evaluate the
fine-tuned ``.snn`` the same way. The training and evaluation wall times are recorded. Writes
``docs/results/finetune-<model>-<label>.json`` after every T (partial runs keep what they measured) and rebuilds the
section between the markers of ``docs/finetune.md`` from every ``docs/results/finetune-*.json`` (so runs of other
sizes, with other labels, are kept side by side; ``--markdown-only`` rebuilds it without training).

    python docs/scripts/finetune_results.py [--models vgg-fmnist] [--timesteps 4,8] [--train-images 6000]
        [--val-images 1000] [--epochs 1] [--lr 3e-4] [--batch-size 32] [--limit N] [--label NAME]
        [--data ../shared/data] [--markdown-only]
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

from shipped import DATASETS, load_model_data
from snncc.api import compile_model, evaluate, write_json
from snncc.data import load_dataset
from snncc.fileio import write_text
from snncc.finetune import FinetuneOptions, finetune
from snncc.ir import save

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
START, END = "<!-- finetune-results:start -->", "<!-- finetune-results:end -->"
#: Acceptance of issue 14 for the VGG with plain IF neurons: the largest allowed ANN - SNN gap (points) at T.
BOUNDS = {"vgg-fmnist": {4: 1.0, 8: 0.5}}
CALIBRATION_IMAGES = 5000


def run_model(name: str, args: argparse.Namespace) -> dict:
    model, scaling, calibration, x_test, y_test = load_model_data(name, args.data, CALIBRATION_IMAGES, args.limit)
    start = time.perf_counter()
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    compile_seconds = time.perf_counter() - start
    work = Path(args.work)
    save(graph, work / f"{name}-rate.snn")
    before = evaluate(graph, x_test, y_test, sorted(set([1, 2] + args.timesteps)), onnx_model=model,
                      backend="cython", progress=True)
    train = load_dataset(args.data / DATASETS[name], split="train", limit=args.train_images + args.val_images)
    results = {"schema_version": 1, "model": name, "label": args.label, "pipeline": graph.attrs.get("pipeline"),
               "calibration_images": CALIBRATION_IMAGES, "compile_seconds": compile_seconds,
               "test_images": int(len(x_test)), "ann_accuracy": before["ann"]["accuracy"],
               "before": {e["timesteps"]: e for e in before["snn"]},
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
               "eval_backend": before["backend"], "runs": []}
    for timesteps in args.timesteps:
        options = FinetuneOptions(timesteps=timesteps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                  seed=0, limit=args.train_images + args.val_images, val_limit=args.val_images)
        start = time.perf_counter()
        tuned = finetune(graph, train, args.method, options, progress=True)
        train_seconds = time.perf_counter() - start
        path = save(tuned, work / f"{name}-{args.method}-T{timesteps}.snn")
        after = evaluate(tuned, x_test, y_test, [timesteps], backend="cython", progress=True)
        (row,) = after["snn"]
        run = {"method": args.method, "timesteps": timesteps, "options": options.to_json(),
               "train_images": args.train_images, "val_images": args.val_images, "epochs": args.epochs,
               "train_seconds": train_seconds, "history": tuned.attrs["finetune"]["history"],
               "before": results["before"][timesteps], "after": row, "eval_seconds": after["seconds"],
               "snn_file": str(path)}
        results["runs"].append(run)
        print(f"{name} T={timesteps}: {100 * run['before']['accuracy']:.2f}% -> {100 * row['accuracy']:.2f}% "
              f"(ANN {100 * results['ann_accuracy']:.2f}%), training {train_seconds:.0f} s", flush=True)
        write_json(results, DOCS / "results" / f"finetune-{name}-{args.label}.json")
        write_markdown()
    return results


def markdown(results: list[dict]) -> str:
    lines = [START, "", "## Results", "",
             "Measured by `python docs/scripts/finetune_results.py` (figures in `docs/results/finetune-*.json`). Each "
             "model is compiled with the defaults of [results.md](results.md) (plain IF neurons, reset by "
             "subtraction, rate coding) and fine-tuned from the converted weights with the method of its row "
             "(`surrogate` or `proxy`) at its T, one run per T; accuracy is measured on the full test set by the Cython runtime "
             "(`snncc eval`'s simulator), before and after. Wall times are on a 2-core machine shared with other "
             "jobs at the same time, so they are upper bounds of what the machine does alone.", ""]
    for result in results:
        name = result["model"]
        ann = result["ann_accuracy"]
        bounds = BOUNDS.get(name, {})
        lines += [f"### {name} ({result.get('label', 'run')})", "", f"ANN (onnxruntime): **{100 * ann:.2f}%** on {result['test_images']:,} test "
                  "images.", "",
                  "| T | method | converted | fine-tuned | gap to the ANN (points) | acceptance | training images (+ "
                  "validation) | epochs | lr (Adam, cosine) | batch | validation accuracy | training wall time | "
                  "training images/s |", "|---:|:---|" + "---:|" * 11]
        for run in result["runs"]:
            t, after = run["timesteps"], run["after"]["accuracy"]
            gap = 100 * (ann - after)
            bound = bounds.get(t)
            verdict = "" if bound is None else (f"≤ {bound} ✓" if gap <= bound else f"≤ {bound} ✗")
            history = run["history"]
            rate = np.mean([e["images_per_second"] for e in history])
            val = ", ".join(f"{100 * e['val_accuracy']:.2f}%" for e in history if "val_accuracy" in e)
            lines.append(f"| {t} | {run.get('method', 'surrogate')} | {100 * run['before']['accuracy']:.2f}% | **{100 * after:.2f}%** | {gap:+.2f} | "
                         f"{verdict} | {run['train_images']:,} (+ {run['val_images']:,}) | {run['epochs']} | "
                         f"{run['options']['lr']:g} | {run['options']['batch_size']} | {val} | "
                         f"{run['train_seconds'] / 60:.1f} min | {rate:.1f} |")
        lines.append("")
    lines += [END]
    return "\n".join(lines) + "\n"


def write_markdown() -> Path:
    """Rebuild the results section of docs/finetune.md from every docs/results/finetune-*.json."""
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((DOCS / "results").glob("finetune-*.json"))]
    results = [r for r in results if "model" in r and "runs" in r]  # not finetune-speed/-profile (other scripts)
    path = DOCS / "finetune.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Fine-tuning\n\n"
    section = markdown(results)
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return write_text(path, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="vgg-fmnist")
    parser.add_argument("--method", default="surrogate", choices=("surrogate", "proxy"))
    parser.add_argument("--timesteps", default="4,8")
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: the full test set)")
    parser.add_argument("--work", default="/tmp/snncc-finetune-results", help="where the .snn files go")
    parser.add_argument("--label", default="short", help="names this run's JSON files (finetune-MODEL-LABEL.json)")
    parser.add_argument("--markdown-only", action="store_true", help="only rebuild docs/finetune.md from the JSON")
    args = parser.parse_args()
    if args.markdown_only:
        print(f"wrote {write_markdown()}")
        return 0
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, args)
    print(json.dumps({n: [(r["timesteps"], r["after"]["accuracy"]) for r in v["runs"]] for n, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
