"""Measure fine-tuning of the shipped models and write docs/finetune.md's results.

For each model: compile with the pipeline of ``--pipeline`` (:data:`PIPELINES`; default ``rate``, the defaults of
docs/results.md: ``canonicalize,normalize,convert-rate``, plain IF neurons, reset by subtraction; ``fs8``: FS
conversion with K = 8; ``sew-add`` / ``sew-iand``: the SEW-ResNet forms of docs/residual.md), calibrated on the
first 5,000 training images, evaluate the converted SNN on the full test set with the Cython runtime, then for each
T fine-tune it with ``--method`` (the first ``--train-images + --val-images`` training images, the last
``--val-images`` held back) and evaluate the fine-tuned ``.snn`` the same way. A temporally coded graph (FS) has
one T, its latency (``--timesteps`` is ignored). ``--init SNN`` starts the fine-tuning from an earlier fine-tuned
``.snn`` of the same compilation (a second stage, e.g. ``surrogate`` after ``proxy``); the "converted" column stays
the compiled graph's and the JSON records the file and its own fine-tuning record. ``--checkpoint DIR``
checkpoints each run after every epoch (in ``DIR/<model>-<pipeline>-<label>-<method>-T<T>``) and the same command
started again resumes from it. The training and evaluation wall times are recorded with the load average of the (shared) machine before and after the training. Writes
``docs/results/finetune-<model>-<label>.json`` after every T (partial runs keep what they measured) and rebuilds the
section between the markers of ``docs/finetune.md`` from every ``docs/results/finetune-*.json`` (so runs of other
sizes, with other labels, are kept side by side; ``--markdown-only`` rebuilds it without training).
``--sweep LR,LR,...`` instead compares learning rates on the training subset by the validation accuracy of the
held-back training images alone (``finetune-sweep-<model>-<label>.json``; the test set is not touched), and
``--torch-eval`` evaluates the fine-tuned ``.snn`` files of ``--label``'s JSON on the torch backend as well.
``--threads 1`` sets torch's threads: on a loaded shared machine one thread trains several times faster than two.

    python docs/scripts/finetune_results.py [--models vgg-fmnist] [--pipeline rate|fs8|sew-add|sew-iand]
        [--method surrogate|proxy] [--timesteps 4,8] [--train-images 6000] [--val-images 1000] [--epochs 1]
        [--lr 3e-4] [--batch-size 32] [--init SNN] [--checkpoint DIR] [--threads N] [--sweep LR,LR] [--torch-eval] [--limit N]
        [--label NAME] [--data ../shared/data] [--markdown-only]
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
from snncc.ir import load, save
from snncc.runtime.temporal import TemporalSimulator, is_temporal

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
START, END = "<!-- finetune-results:start -->", "<!-- finetune-results:end -->"
#: The conversions measured, by the name ``--pipeline`` takes: the compiler pipeline.
PIPELINES = {"rate": "canonicalize,normalize,convert-rate", "fs8": "canonicalize,normalize,convert-fs{steps=8}",
             "sew-add": "canonicalize,normalize,convert-rate,sew{connect=add}",
             "sew-iand": "canonicalize,normalize,convert-rate,sew{connect=iand}",
             # IAND's output is a subset of its shortcut's spikes: a lower calibration percentile gives every
             # population more spikes to start from (one epoch over 10,000 images: validation 72.6% against 67.9%)
             "sew-iand-p95": "canonicalize,normalize{percentile=95},convert-rate,sew{connect=iand}"}
#: Acceptance of issue 14: the largest allowed ANN - SNN gap (points), by (model, pipeline name) and T (None: any T,
#: the temporal graph's latency; for the SEW forms "at some T <= 8").
BOUNDS = {("vgg-fmnist", "rate"): {4: 1.0, 8: 0.5}, ("silu-fmnist", "fs8"): {None: 0.3},
          ("resnet-fmnist", "sew-add"): {4: 1.5, 8: 1.5}, ("resnet-fmnist", "sew-iand"): {4: 1.5, 8: 1.5},
          ("resnet-fmnist", "sew-iand-p95"): {4: 1.5, 8: 1.5}}
CALIBRATION_IMAGES = 5000


def converted_report(name: str, key: str, graph, model: Path, x_test: np.ndarray, y_test: np.ndarray,
                     timesteps: list[int], work: Path) -> dict:
    """The converted graph's figures on the test set (ANN and SNN, Cython runtime), kept in ``work`` and reused by
    later runs of the same model, pipeline and test images (the compilation is deterministic)."""
    path = work / f"{name}-{key}-converted-{len(x_test)}.json"
    if path.is_file():
        report = json.loads(path.read_text(encoding="utf-8"))
        have = {int(t) for t in report["before"]}
        if report.get("temporal") or set(timesteps) <= have:
            return report
    before = evaluate(graph, x_test, y_test, sorted(set([1, 2] + timesteps)), onnx_model=model,
                      backend="cython", progress=True)
    report = {"ann_accuracy": before["ann"]["accuracy"], "before": {e["timesteps"]: e for e in before["snn"]},
              "eval_backend": before["backend"], "eval_seconds": before["seconds"], "temporal": "latency" in before}
    write_json(report, path)
    return json.loads(path.read_text(encoding="utf-8"))


def torch_eval(name: str, args: argparse.Namespace) -> None:
    """Evaluate every fine-tuned ``.snn`` of ``finetune-<model>-<label>.json`` on the torch backend too (the same
    test images), recorded as ``after_torch`` next to the Cython runtime's ``after``."""
    path = DOCS / "results" / f"finetune-{name}-{args.label}.json"
    results = json.loads(path.read_text(encoding="utf-8"))
    _, _, _, x_test, y_test = load_model_data(name, args.data, 1, args.limit)
    for run in results["runs"]:
        if run.get("snn_file") is None:  # a run whose .snn was not kept (its JSON says why)
            print(f"{name} T={run['timesteps']}: no .snn kept; skipped", flush=True)
            continue
        report = evaluate(load(run["snn_file"]), x_test, y_test, [run["timesteps"]], backend="torch", progress=True)
        (row,) = report["snn"]
        run["after_torch"] = row
        print(f"{name} T={run['timesteps']}: torch backend {100 * row['accuracy']:.2f}% (Cython runtime "
              f"{100 * run['after']['accuracy']:.2f}%)", flush=True)
    write_json(results, path)
    write_markdown()


def compiled_graph(name: str, key: str, model: Path, scaling, calibration: np.ndarray,
                   work: Path) -> tuple[object, float | None]:
    """The model compiled by pipeline ``key``, and the compile time; a graph compiled by an earlier run is loaded
    from ``work`` instead (compilation is deterministic; the SEW forms take minutes), with no compile time."""
    compiled = work / f"{name}-{key}.snn"
    if compiled.is_file():
        return load(compiled), None
    start = time.perf_counter()
    graph = compile_model(model, calibration=calibration, pipeline=PIPELINES[key], input_scaling=scaling)
    seconds = time.perf_counter() - start
    save(graph, compiled)
    return graph, seconds


def run_sweep(name: str, args: argparse.Namespace) -> dict:
    """The learning rates of ``--sweep`` on the training subset, judged by the validation accuracy on the held-back
    training images only (the test set is not touched); the converted graph's validation accuracy first."""
    import torch

    from snncc.finetune.trainer import accuracy, model_inputs
    from snncc.runtime.torch_lowering import lower

    model, scaling, calibration, _, _ = load_model_data(name, args.data, CALIBRATION_IMAGES, 1)
    graph, _ = compiled_graph(name, args.pipeline, model, scaling, calibration, Path(args.work))
    x, y = load_dataset(args.data / DATASETS[name], split="train", limit=args.train_images + args.val_images)
    held_x, held_y = model_inputs(graph, x[args.train_images:]), y[args.train_images:].astype(np.int64)
    timesteps = [TemporalSimulator(graph).latency] if is_temporal(graph) else args.timesteps
    record = {"schema_version": 1, "model": name, "pipeline_name": args.pipeline, "label": args.label,
              "method": args.method, "train_images": args.train_images, "val_images": args.val_images,
              "epochs": args.epochs, "batch_size": args.batch_size, "torch_threads": args.threads, "sweep": []}
    path = DOCS / "results" / f"finetune-sweep-{name}-{args.label}.json"
    for t in timesteps:
        converted = accuracy(lower(graph), held_x, held_y, t, torch.device("cpu"))
        for lr in args.sweep:
            options = FinetuneOptions(timesteps=t, epochs=args.epochs, lr=lr, batch_size=args.batch_size, seed=0,
                                      limit=args.train_images + args.val_images, val_limit=args.val_images)
            load_before, start = os.getloadavg(), time.perf_counter()
            tuned = finetune(graph, (x, y), args.method, options, progress=True)
            history = tuned.attrs["finetune"]["history"]
            record["sweep"].append({"timesteps": t, "lr": lr, "converted_val_accuracy": converted,
                                    "val_accuracy": [e.get("val_accuracy") for e in history],
                                    "loss": [e["loss"] for e in history],
                                    "train_seconds": time.perf_counter() - start,
                                    "load_average": {"before": list(load_before), "after": list(os.getloadavg())}})
            print(f"{name} [{args.pipeline}] T={t} lr={lr:g}: validation {100 * converted:.2f}% -> "
                  f"{100 * history[-1]['val_accuracy']:.2f}%", flush=True)
            write_json(record, path)
            write_markdown()
    return record


def checkpointing(args: argparse.Namespace, run: str) -> dict:
    """The checkpoint options of one run under ``--checkpoint DIR``: the directory ``DIR/<run>`` is written after
    every epoch, and a run started again with the same arguments resumes from the checkpoint it finds there (the
    same final weights as an uninterrupted run; the training wall time then counts only the resumed epochs)."""
    if args.checkpoint is None:
        return {}
    directory = args.checkpoint / run
    return {"resume": directory} if (directory / "state.json").is_file() else {"checkpoint": directory}


def run_model(name: str, args: argparse.Namespace) -> dict:
    model, scaling, calibration, x_test, y_test = load_model_data(name, args.data, CALIBRATION_IMAGES, args.limit)
    work = Path(args.work)
    graph, compile_seconds = compiled_graph(name, args.pipeline, model, scaling, calibration, work)
    temporal = is_temporal(graph)
    timesteps = [TemporalSimulator(graph).latency] if temporal else args.timesteps
    converted = converted_report(name, args.pipeline, graph, model, x_test, y_test, timesteps, work)
    start_graph, init = graph, None
    if args.init is not None:  # a second stage: from an earlier fine-tuned .snn of this compilation
        start_graph = load(args.init)
        init = {"snn_file": str(args.init), "finetune": start_graph.attrs.get("finetune")}
    train = load_dataset(args.data / DATASETS[name], split="train", limit=args.train_images + args.val_images)
    results = {"schema_version": 2, "model": name, "label": args.label, "pipeline_name": args.pipeline,
               "pipeline": graph.attrs.get("pipeline"), "calibration_images": CALIBRATION_IMAGES,
               "compile_seconds": compile_seconds, "test_images": int(len(x_test)),
               "ann_accuracy": converted["ann_accuracy"], "before": converted["before"],
               "machine": f"{platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
               "torch_threads": args.threads,
               "eval_backend": converted["eval_backend"], "runs": []}
    for t in timesteps:
        options = FinetuneOptions(timesteps=t, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                                  seed=0, limit=args.train_images + args.val_images, val_limit=args.val_images,
                                  distill=args.distill, temperature=args.temperature,
                                  **checkpointing(args, f"{name}-{args.pipeline}-{args.label}-{args.method}-T{t}"))
        load_before = os.getloadavg()
        start = time.perf_counter()
        tuned = finetune(start_graph, train, args.method, options, progress=True)
        train_seconds = time.perf_counter() - start
        load_after = os.getloadavg()
        path = save(tuned, work / f"{name}-{args.pipeline}-{args.label}-{args.method}-T{t}.snn")
        after = evaluate(tuned, x_test, y_test, [t], backend="cython", progress=True)
        (row,) = after["snn"]
        run = {"method": args.method, "timesteps": t, "options": options.to_json(),
               "train_images": args.train_images, "val_images": args.val_images, "epochs": args.epochs,
               "train_seconds": train_seconds, "load_average": {"before": list(load_before),
                                                                "after": list(load_after)},
               "history": tuned.attrs["finetune"]["history"], "init": init,
               "before": converted["before"][str(t)], "after": row, "eval_seconds": after["seconds"],
               "snn_file": str(path)}
        results["runs"].append(run)
        print(f"{name} [{args.pipeline}] T={t}: {100 * run['before']['accuracy']:.2f}% -> "
              f"{100 * row['accuracy']:.2f}% (ANN {100 * results['ann_accuracy']:.2f}%), training "
              f"{train_seconds:.0f} s", flush=True)
        write_json(results, DOCS / "results" / f"finetune-{name}-{args.label}.json")
        write_markdown()
    return results


def _verdict(bounds: dict, t: int, temporal: bool, gap: float) -> str:
    bound = bounds.get(None if temporal else t)
    return "" if bound is None else (f"≤ {bound} ✓" if gap <= bound else f"≤ {bound} ✗")


def _load(run: dict) -> str:
    """The 1-minute load average before and after the training (recorded since schema 2)."""
    load = run.get("load_average")
    return "" if load is None else f"{load['before'][0]:.1f} / {load['after'][0]:.1f}"


def _method(run: dict) -> str:
    """The method, with the stage it started from (``--init``) and the distillation weight and temperature."""
    options = run.get("options") or {}
    method = run.get("method", "surrogate")
    if options.get("distill"):
        method += f" + distillation (α {options['distill']:g}, τ {options['temperature']:g})"
    init = run.get("init")
    if not init or not init.get("finetune"):
        return method
    return f"{init['finetune']['method']} → {method}"


def sweep_markdown(sweeps: list[dict]) -> list[str]:
    """The learning-rate sweeps: validation accuracy on held-back training images only."""
    if not sweeps:
        return []
    lines = ["### Learning-rate sweeps (validation only)", "",
             "`python docs/scripts/finetune_results.py --sweep LR,LR,...`: short runs on a training subset, each "
             "judged by its accuracy on the held-back training images (never the test set), to choose the learning "
             "rate of the runs above.", "",
             "| model, pipeline | method | T | training images (+ validation) | epochs | lr | validation: converted "
             "| validation: fine-tuned | loss | wall time | load |", "|:---|:---|" + "---:|" * 9]
    for sweep in sweeps:
        for row in sweep["sweep"]:
            load = row["load_average"]
            lines.append(f"| {sweep['model']}, {sweep['pipeline_name']} | {sweep['method']} | {row['timesteps']} | "
                         f"{sweep['train_images']:,} (+ {sweep['val_images']:,}) | {sweep['epochs']} | "
                         f"{row['lr']:g} | {100 * row['converted_val_accuracy']:.2f}% | "
                         f"**{100 * row['val_accuracy'][-1]:.2f}%** | {row['loss'][-1]:.4f} | "
                         f"{row['train_seconds'] / 60:.1f} min | {load['before'][0]:.1f} / {load['after'][0]:.1f} |")
    return lines + [""]


def markdown(results: list[dict], sweeps: list[dict] = ()) -> str:
    lines = [START, "", "## Results", "",
             "Measured by `python docs/scripts/finetune_results.py` (figures in `docs/results/finetune-*.json`). Each "
             "model is compiled with the pipeline named in its heading (`rate`: the defaults of "
             "[results.md](results.md), plain IF neurons, reset by subtraction, rate coding; `fs8`: FS conversion, "
             "K = 8, [temporal.md](temporal.md); `sew-add`, `sew-iand`: the SEW-ResNet forms of "
             "[residual.md](residual.md); `sew-iand-p95`: `sew-iand` calibrated at the 95th percentile, "
             "`normalize{percentile=95}`) and fine-tuned from the converted weights with the method of its row at "
             "its T (an FS graph: its latency), one run per row; `a → b` is a second stage `b` started from the "
             "`.snn` of a run of `a`. Accuracy is measured on the full test set by the Cython runtime (`snncc "
             "eval`'s simulator), before and after. Wall times are on a 2-core machine shared with other jobs at the "
             "same time (the load column: the 1-minute load average before / after the training), so they are upper "
             "bounds of what the machine does alone.", ""]
    for result in results:
        name = result["model"]
        ann = result["ann_accuracy"]
        key = result.get("pipeline_name", "rate")
        temporal = key == "fs8"
        bounds = BOUNDS.get((name, key), {})
        lines += [f"### {name}, {key} ({result.get('label', 'run')})", "",
                  f"ANN (onnxruntime): **{100 * ann:.2f}%** on {result['test_images']:,} test images.", "",
                  "| T | method | converted | fine-tuned | gap to the ANN (points) | acceptance | training images (+ "
                  "validation) | epochs | lr (Adam, cosine) | batch | validation accuracy | training wall time | "
                  "training images/s | load |", "|---:|:---|" + "---:|" * 12]
        for run in result["runs"]:
            t, after = run["timesteps"], run["after"]["accuracy"]
            gap = 100 * (ann - after)
            history = run["history"]
            rate = np.mean([e["images_per_second"] for e in history])
            val = ", ".join(f"{100 * e['val_accuracy']:.2f}%" for e in history if "val_accuracy" in e)
            torch_row = run.get("after_torch")
            also = "" if torch_row is None else f" (torch backend {100 * torch_row['accuracy']:.2f}%)"
            lines.append(f"| {t} | {_method(run)} | {100 * run['before']['accuracy']:.2f}% | **{100 * after:.2f}%**{also} | "
                         f"{gap:+.2f} | {_verdict(bounds, t, temporal, gap)} | {run['train_images']:,} (+ "
                         f"{run['val_images']:,}) | {run['epochs']} | {run['options']['lr']:g} | "
                         f"{run['options']['batch_size']} | {val} | {run['train_seconds'] / 60:.1f} min | {rate:.1f} | "
                         f"{_load(run)} |")
        lines.append("")
    lines += sweep_markdown(list(sweeps)) + [END]
    return "\n".join(lines) + "\n"


def write_markdown() -> Path:
    """Rebuild the results section of docs/finetune.md from every docs/results/finetune-*.json."""
    results = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((DOCS / "results").glob("finetune-*.json"))]
    sweeps = [r for r in results if "model" in r and "sweep" in r]
    results = [r for r in results if "model" in r and "runs" in r]  # not finetune-speed/-profile (other scripts)
    path = DOCS / "finetune.md"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Fine-tuning\n\n"
    section = markdown(results, sweeps)
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END) + 1:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    return write_text(path, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="vgg-fmnist")
    parser.add_argument("--pipeline", default="rate", choices=sorted(PIPELINES), help="the conversion (PIPELINES)")
    parser.add_argument("--method", default="surrogate", choices=("surrogate", "proxy"))
    parser.add_argument("--init", type=Path, default=None, help="start from this fine-tuned .snn (a second stage)")
    parser.add_argument("--timesteps", default="4,8")
    parser.add_argument("--train-images", type=int, default=6000)
    parser.add_argument("--val-images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--distill", type=float, default=0.0,
                        help="weight of distillation from the ANN's logits (snncc finetune --distill)")
    parser.add_argument("--temperature", type=float, default=4.0, help="its softmax temperature")
    parser.add_argument("--limit", type=int, default=None, help="test images (default: the full test set)")
    parser.add_argument("--work", default="/tmp/snncc-finetune-results", help="where the .snn files go")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint every run after each epoch under this directory; a rerun resumes there")
    parser.add_argument("--label", default="short", help="names this run's JSON files (finetune-MODEL-LABEL.json)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch's threads for the training (on a loaded shared machine 1 is fastest)")
    parser.add_argument("--sweep", default=None,
                        help="learning rates (comma-separated) to compare by validation accuracy only, no test set")
    parser.add_argument("--torch-eval", action="store_true",
                        help="evaluate the fine-tuned .snn files of --label's JSON on the torch backend too")
    parser.add_argument("--markdown-only", action="store_true", help="only rebuild docs/finetune.md from the JSON")
    args = parser.parse_args()
    if args.markdown_only:
        print(f"wrote {write_markdown()}")
        return 0
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    if args.torch_eval:
        for name in args.models.split(","):
            torch_eval(name, args)
        return 0
    if args.sweep is not None:
        args.sweep = [float(v) for v in args.sweep.split(",")]
        for name in args.models.split(","):
            run_sweep(name, args)
        return 0
    results = {}
    for name in args.models.split(","):
        results[name] = run_model(name, args)
    print(json.dumps({n: [(r["timesteps"], r["after"]["accuracy"]) for r in v["runs"]] for n, v in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
