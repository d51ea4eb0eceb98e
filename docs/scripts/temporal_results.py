"""Measure FS and AMOS conversion of the shipped models on the full test sets; compare with rate coding.

For each model: the SNN compiled with ``canonicalize,normalize,convert-fs{steps=K}`` for several K, with
``convert-amos{steps=8}``, and with FS parameters quantized to a few bit widths (``quantize-neurons{bits=n}``), each
simulated on the whole test set (one answer per image, after the latency). The runtime counts spikes and synaptic
operations and checks the most spikes any neuron emits on any image. Rate-coding figures come from
``docs/results/<model>.json`` (written by ``docs/scripts/rate_results.py`` on the same test sets).

Writes ``docs/results/temporal-<model>.json``, ``docs/results/temporal-<model>.png`` and ``docs/temporal.md``.

    python docs/scripts/temporal_results.py [--data ../shared/data] [--models lenet5-mnist,vgg-fmnist]
        [--limit N] [--backend cython|reference]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from snncc.api import compile_model, evaluate, save_figure, write_json
from snncc.fileio import write_text
from shipped import load_model_data

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
# (label, pipeline) per configuration; {norm} is the normalization step (none for non-ReLU models).
CONFIGS = {
    "relu": [("FS K=4", "convert-fs{steps=4}"), ("FS K=6", "convert-fs{steps=6}"), ("FS K=8", "convert-fs{steps=8}"),
             ("FS K=10", "convert-fs{steps=10}"), ("AMOS K=8", "convert-amos{steps=8}"),
             ("FS K=8, 8-bit", "convert-fs{steps=8},quantize-neurons{bits=8}"),
             ("FS K=8, 6-bit", "convert-fs{steps=8},quantize-neurons{bits=6}")],
    "smooth": [("FS K=8", "convert-fs{steps=8}"), ("FS K=12", "convert-fs{steps=12}"),
               ("FS K=16", "convert-fs{steps=16}"), ("AMOS K=12", "convert-amos{steps=12}"),
               ("FS K=12, 10-bit", "convert-fs{steps=12},quantize-neurons{bits=10}")],
}
MODEL_CONFIGS = {"lenet5-mnist": "relu", "vgg-fmnist": "relu", "silu-fmnist": "smooth", "resnet-fmnist": "relu"}
# Acceptance of issue 4: the largest ANN - SNN gap (points).
BOUNDS = {"relu": {"fs": 0.2, "amos": 0.3}, "smooth": {"fs": 0.5}}


def run_model(name: str, data_root: Path, calib_count: int, limit: int | None, backend: str,
              only: list[str] | None) -> dict:
    model, scaling, calibration, x, y = load_model_data(name, data_root, calib_count, limit)
    reports = {}
    for label, tail in CONFIGS[MODEL_CONFIGS[name]]:
        if only and label not in only:
            continue
        pipeline = f"canonicalize,normalize,{tail}"
        start = time.perf_counter()
        graph = compile_model(model, calibration=calibration, pipeline=pipeline, input_scaling=scaling,
                              progress=True)
        compile_seconds = time.perf_counter() - start
        report = evaluate(graph, x, y, [1], onnx_model=model, backend=backend, progress=True)
        report.update(compile_seconds=compile_seconds, calibration_images=calib_count, label=label,
                      fits={n: m["fs_fit"] for n, m in graph.meta.items() if "fs_fit" in m})
        reports[label] = report
        row = report["snn"][0]
        print(f"{name} [{label}] ANN {100 * report['ann']['accuracy']:.2f}% SNN {100 * row['accuracy']:.2f}% "
              f"latency {report['latency']} spikes/neuron {row['spikes_per_neuron']:.3f} "
              f"max {report['max_spikes_per_neuron']}", flush=True)
    return reports


def rate_rows(name: str) -> list[dict]:
    """Rate-coding rows from the rate results (same test set), at the T where each is within reach of the ANN."""
    path = DOCS / "results" / f"{name}.json"
    if not path.exists():
        return []
    default = json.loads(path.read_text())["default"]
    return [dict(e, label=f"rate T={e['timesteps']}") for e in default["snn"] if e["timesteps"] in (8, 32, 128)]


def plot(name: str, reports: dict, rate: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    ann = next(iter(reports.values()))["ann"]["accuracy"]
    if rate:
        ts = [e["timesteps"] for e in rate["snn"]]
        left.plot(ts, [100 * e["accuracy"] for e in rate["snn"]], "o-", color="C0", label="rate (IF)")
        right.plot([e["spikes_per_image"] for e in rate["snn"]], [100 * e["accuracy"] for e in rate["snn"]], "o-",
                   color="C0", label="rate (IF)")
    fs = [(r["latency"], r["snn"][0]) for label, r in reports.items() if label.startswith("FS") and "bit" not in label]
    if fs:
        left.plot([f[0] for f in fs], [100 * f[1]["accuracy"] for f in fs], "s-", color="C1", label="FS, K steps/layer")
        right.plot([f[1]["spikes_per_image"] for f in fs], [100 * f[1]["accuracy"] for f in fs], "s-", color="C1",
                   label="FS")
    for label, r in reports.items():
        if label.startswith("AMOS"):
            left.plot([r["latency"]], [100 * r["snn"][0]["accuracy"]], "D", color="C2", label=label)
            right.plot([r["snn"][0]["spikes_per_image"]], [100 * r["snn"][0]["accuracy"]], "D", color="C2",
                       label=label)
    for ax, xlabel in ((left, "time steps to answer"), (right, "spikes per image")):
        ax.axhline(100 * ann, color="k", linestyle="--", label=f"ANN ({100 * ann:.2f}%)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        low = min(100 * ann - 3, *(100 * r["snn"][0]["accuracy"] for r in reports.values()))
        ax.set_ylim(max(low, 100 * ann - 10), 100 * ann + 0.7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{name}: rate vs FS vs AMOS (full test set)")
    fig.tight_layout()
    save_figure(fig, path)


def markdown(results: dict[str, dict]) -> str:
    lines = ["# Temporal coding results: FS-conversion and AMOS against rate coding", "",
             "Measured by `python docs/scripts/temporal_results.py` on the full 10,000-image test sets. Pipeline",
             "`canonicalize,normalize,convert-fs{steps=K}` (ReLU: the exact rounding binary code of",
             "`snncc.passes.fs_fit`; other activations: fitted FS units) or `convert-amos{steps=K}`; every layer",
             "answers within K steps, so the latency is K times the number of spiking layers, and the layer",
             "pipeline takes a new image every K steps. `max spikes/neuron` is the most spikes any single neuron",
             "emitted on any test image, counted by the runtime. Rate rows are from `docs/results.md` (same test",
             "sets, reference simulator).", ""]
    for name, entry in results.items():
        reports, kind = entry["reports"], MODEL_CONFIGS[name]
        ann = next(iter(reports.values()))["ann"]["accuracy"]
        first = next(iter(reports.values()))
        lines += [f"## {name}", "", f"ANN (onnxruntime): **{100 * ann:.2f}%** on {first['images']} test images.", "",
                  "| coding | accuracy | vs ANN (points) | time steps to answer | spikes / image | spikes / neuron "
                  "| max spikes / neuron | synaptic ops / image | neurons | synapses |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in entry["rate"]:
            lines.append(f"| {row['label']} | {100 * row['accuracy']:.2f}% | {100 * (row['accuracy'] - ann):+.2f} | "
                         f"{row['timesteps']} | {row['spikes_per_image']:.0f} | {row['spikes_per_neuron']:.3f} | - | "
                         f"{row['synops_per_image']:.3g} | - | - |")
        for label, r in reports.items():
            row = r["snn"][0]
            lines.append(f"| {label} | {100 * row['accuracy']:.2f}% | {100 * (row['accuracy'] - ann):+.2f} | "
                         f"{r['latency']} | {row['spikes_per_image']:.0f} | {row['spikes_per_neuron']:.3f} | "
                         f"{r['max_spikes_per_neuron']} | {row['synops_per_image']:.3g} | {r['neurons']} | "
                         f"{r['synapses']} |")
        bounds = BOUNDS[kind]
        checks = []
        for label, r in reports.items():
            method = "amos" if label.startswith("AMOS") else "fs"
            if "bit" in label or method not in bounds:
                continue
            gap = 100 * (ann - r["snn"][0]["accuracy"])
            steps = int(label.split("K=")[1].split(",")[0])
            ok = gap <= bounds[method] and (method != "amos" or r["max_spikes_per_neuron"] <= 1)
            if method == "fs" and kind == "relu":
                ok = ok and r["snn"][0]["spikes_per_neuron"] <= 2.0 and steps <= 10
            checks.append(f"{label}: loss {gap:.2f} points {'✓' if ok else '✗'}")
        rule = ("FS within 0.2 points of the ANN with at most 2 spikes per neuron on average and K <= 10; AMOS within "
                "0.3 points with at most one spike per neuron" if kind == "relu" else "FS within 0.5 points")
        lines += ["", f"Acceptance (issue 4: {rule}): " + "; ".join(checks) + ".", "",
                  f"![{name}](results/temporal-{name}.png)", ""]
        fits = [(n, f) for n, f in first.get("fits", {}).items() if f["method"] != "closed-form"]
        if fits:
            lines += ["Fitted FS units of the first configuration (error on that layer's calibration inputs):", "",
                      "| layer | activation | RMS error | max error |", "|---|---|---:|---:|"]
            lines += [f"| {n} | {f['activation']} | {f['mse'] ** 0.5:.4f} | {f['max_abs_error']:.4f} |" for n, f in fits]
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="lenet5-mnist,vgg-fmnist")
    parser.add_argument("--calib", type=int, default=5000, help="calibration images from the training set")
    parser.add_argument("--limit", type=int, default=None, help="test images (default: the whole test set)")
    parser.add_argument("--backend", default="cython", choices=["cython", "reference"],
                        help="simulator (the Cython units are bit-identical to the reference)")
    parser.add_argument("--only", default=None, help="comma-separated configuration labels to run")
    parser.add_argument("--markdown-only", action="store_true", help="rebuild docs/temporal.md from the JSON files")
    args = parser.parse_args(argv)
    results = {}
    for name in args.models.split(","):
        path = DOCS / "results" / f"temporal-{name}.json"
        if args.markdown_only:
            reports = json.loads(path.read_text())
        else:
            reports = json.loads(path.read_text()) if path.exists() and args.only else {}
            reports.update(run_model(name, args.data, args.calib, args.limit, args.backend,
                                     args.only.split(",") if args.only else None))
            if args.limit:
                continue  # a quick check on part of the test set: nothing is written to docs/
            write_json(reports, path)
        rate_path = DOCS / "results" / f"{name}.json"
        rate = json.loads(rate_path.read_text())["default"] if rate_path.exists() else None
        plot(name, reports, rate, DOCS / "results" / f"temporal-{name}.png")
        results[name] = {"reports": reports, "rate": rate_rows(name)}
    if args.markdown_only or not args.limit:
        known = {}
        for name in MODEL_CONFIGS:
            path = DOCS / "results" / f"temporal-{name}.json"
            if name in results:
                known[name] = results[name]
            elif path.exists():
                known[name] = {"reports": json.loads(path.read_text()), "rate": rate_rows(name)}
        write_text(DOCS / "temporal.md", markdown(known))
        print(f"wrote {DOCS / 'temporal.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
