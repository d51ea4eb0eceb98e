"""Measure the Loihi targets on the shipped models and write docs/results/loihi-*.json and docs/targets.md.

Each configuration is ``MODEL:METHOD:VARIANT`` (METHOD ``rate`` or ``fs``): compile the SNN with the default
pipeline of the method (calibrated on the first ``--calib`` training images), emit the bundle (synaptic operations
measured on 100 test images), run ``verify`` on the first ``--limit`` test images (all 10,000 without it): float
SNN accuracy, emulator accuracy, prediction agreement, and the float accuracy of the folded graph (``loihi-fold``
only: max pooling as OR gates, average pooling folded into the next layer, still float) to separate the cost of
the folds from the cost of the integers. Rate coding runs ``--timesteps`` answer steps; FS runs its latency (K
steps per layer). Every result records the number of images, the wall time and the load average around it.

    python docs/scripts/target_results.py [--data ../shared/data]
        [--configs lenet5-mnist:rate:loihi2,lenet5-avg-mnist:fs:loihi2,...] [--limit N] [--timesteps 32]
        [--note "what else ran on the machine"]

Fine-tuning for the chip (``--tuned MODEL:VARIANT:METHOD,...``): the converted SNN fine-tuned in the target's
float form (``snncc finetune --target VARIANT``: OR gates, Loihi 1's reset to zero) on the first ``--train``
training images (the last 1,000 of them held back for validation; ``surrogate``: one epoch, Adam at ``--lr``,
cosine; ``calibrate``: its first 1,000), then emitted and verified like the rows above: the float SNN as
converted, the untuned float form, the fine-tuned float form and its emulator, on the first ``--limit`` test
images. The emulator before fine-tuning is the row of ``loihi-MODEL-VARIANT.json`` (the same converted SNN, the
same images). JSON in ``docs/results/chip-finetune-MODEL-VARIANT-METHOD.json``:

    python docs/scripts/target_results.py --tuned lenet5-mnist:loihi1:surrogate,lenet5-mnist:loihi2:surrogate \
        --train 30000 --lr 1e-4

With ``--keep DIR`` the fine-tuned .snn is written there; ``--reuse`` (with the same ``--keep``) verifies it again
without training (after a change to the emulator, say), the training time taken from the .snn's record.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path

from shipped import load_model_data

from snncc.api import compile_model
from snncc.fileio import write_json, write_text
from snncc.runtime import Simulator
from snncc.runtime.temporal import TemporalSimulator
from snncc.targets.base import get_target
from snncc.targets.emit import emit, verify
from snncc.targets.loihi.legalize import LoihiFold
from snncc.targets.loihi.reset_compensation import calibrate_reset_to_zero

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


DEFAULT_CONFIGS = ("lenet5-mnist:rate:loihi2,lenet5-mnist:rate:loihi1,vgg-fmnist:rate:loihi2,vgg-fmnist:rate:loihi1,"
                   "vgg-fmnist:rate:loihi1{chips=9},lenet5-mnist:fs:loihi2,vgg-fmnist:fs:loihi2,"
                   "lenet5-avg-mnist:fs:loihi2,lenet5-avg-mnist:fs:loihi1,vgg-avg-fmnist:fs:loihi2,"
                   "vgg-avg-fmnist:rate:loihi2")


def file_stem(variant: str) -> str:
    """A target spec as a file name part: ``loihi1{chips=9}`` -> ``loihi1-chips9``."""
    return re.sub(r"[{}=,]+", "-", variant).replace("-chips-", "-chips").strip("-")


def result_path(name: str, method: str, variant: str, compensated: bool = False) -> Path:
    """``loihi-MODEL-VARIANT.json`` for rate coding (the names of earlier sessions), ``loihi-MODEL-fs-VARIANT.json``;
    ``-compensated`` when Loihi 1's thresholds were calibrated for the reset to zero."""
    variant = file_stem(variant)
    stem = f"loihi-{name}-{variant}" if method == "rate" else f"loihi-{name}-{method}-{variant}"
    return DOCS / "results" / f"{stem}{'-compensated' if compensated else ''}.json"


def run(name: str, method: str, variant: str, data: Path, calib: int, limit: int | None, timesteps: int,
        note: str, compensate: int) -> dict:
    model, scaling, calibration, x, y = load_model_data(name, data, calib, limit)
    graph = compile_model(model, method=method, calibration=calibration, input_scaling=scaling)
    base = {"model": name, "method": method, "target": variant}
    violations = get_target(variant).check(graph)
    if violations:  # what does not fit, and by how much
        print(f"{name} {method} {variant}: does not fit: " + "; ".join(map(str, violations)), flush=True)
        return {**base, "fits": False, "violations": [v.to_json() for v in violations]}
    if method != "rate":
        timesteps = TemporalSimulator(graph).latency
    calibrate_s = None
    if variant.startswith("loihi1") and compensate:  # thresholds for the reset to zero, on training images
        start = time.perf_counter()
        factors = calibrate_reset_to_zero(graph, calibration[:compensate], timesteps)
        calibrate_s = time.perf_counter() - start
        print(f"{name} {variant}: reset-to-zero threshold factors {factors} ({calibrate_s:.0f} s)", flush=True)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        start = time.perf_counter()
        manifest = emit(graph, variant, bundle, timesteps=timesteps, activity_data=x[:100])
        emit_s = time.perf_counter() - start
        start = time.perf_counter()
        report = verify(bundle, x, y)
        verify_s = time.perf_counter() - start
    folded, _ = LoihiFold().apply(graph)
    fold_result = Simulator(folded, timesteps).run(x)
    report["fold_accuracy"] = fold_result.accuracy(y, timesteps)
    report.update(base, pipeline=manifest["pipeline"], emit_seconds=emit_s, verify_seconds=verify_s,
                  wall_time_note=note, load_average_before=list(load_before), load_average_after=list(os.getloadavg()),
                  latency_steps=manifest["latency_steps"], reset=manifest["target_details"]["reset"], fits=True,
                  reset_compensation=manifest["target_details"].get("reset_compensation"),
                  reset_compensation_images=compensate if calibrate_s is not None else None,
                  calibrate_seconds=calibrate_s)
    report["resources"] = {k: report["resources"][k] for k in ("cores", "chips", "per_chip", "limits")}
    print(f"{name} {method} {variant} n={report['images']}: float {report['float_accuracy']:.4f} fold "
          f"{report['fold_accuracy']:.4f} {variant} {report['target_accuracy']:.4f} agreement "
          f"{report['prediction_agreement']:.4f}, {report['resources']['cores']} cores, verify {verify_s:.0f} s",
          flush=True)
    return report


def tuned_path(name: str, variant: str, method: str) -> Path:
    return DOCS / "results" / f"chip-finetune-{name}-{file_stem(variant)}-{method}.json"


def run_tuned(name: str, variant: str, method: str, data: Path, calib: int, limit: int | None, timesteps: int,
              note: str, train: int, lr: float, keep: Path | None = None, reuse: bool = False) -> dict:
    """Fine-tune the converted SNN for ``variant`` by ``method``, emit and verify it (module docstring); with
    ``reuse``, verify the fine-tuned .snn an earlier run wrote into ``keep`` instead of training again (its
    training time is the one its record holds)."""
    from snncc.data import load_dataset
    from snncc.finetune import FinetuneOptions, finetune, for_target
    from snncc.finetune.methods import CALIBRATION_IMAGES
    from shipped import DATASETS

    model, scaling, calibration, x, y = load_model_data(name, data, calib, limit)
    graph = compile_model(model, method="rate", calibration=calibration, input_scaling=scaling)
    before = json.loads(result_path(name, "rate", variant).read_text())
    if before["images"] != len(x) or before["timesteps"] != timesteps:
        raise SystemExit(f"{result_path(name, 'rate', variant)} holds {before['images']} images at T="
                         f"{before['timesteps']}; run target_results.py --configs {name}:rate:{variant} with the "
                         f"same --limit and --timesteps first")
    training = load_dataset(data / DATASETS[name], split="train", limit=train)
    options = FinetuneOptions(timesteps=timesteps, lr=lr, limit=train if method != "calibrate" else
                              min(train, CALIBRATION_IMAGES), val_limit=1000 if method != "calibrate" else 0)
    kept = None if keep is None else Path(keep) / f"{name}-{file_stem(variant)}-{method}.snn"
    load_before = os.getloadavg()
    if reuse:
        from snncc.ir import load

        if kept is None or not kept.is_file():
            raise SystemExit(f"--reuse needs the fine-tuned .snn of an earlier run with --keep: {kept} is missing")
        tuned = load(kept)
        train_s = sum(epoch["seconds"] for epoch in tuned.attrs["finetune"]["history"])
        load_trained = None
    else:
        start = time.perf_counter()
        tuned = finetune(graph, training, method, options, progress=False, target=variant)
        train_s = time.perf_counter() - start
        load_trained = os.getloadavg()
    if kept is not None and not reuse:  # the fine-tuned .snn, to emit or verify again without training
        from snncc.ir import save

        save(tuned, kept)
    form = for_target(graph, variant)
    form_accuracy = Simulator(form, timesteps).run(x).accuracy(y, timesteps)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        emit(tuned, variant, bundle, timesteps=timesteps)
        start = time.perf_counter()
        report = verify(bundle, x, y)
        verify_s = time.perf_counter() - start
    record = tuned.attrs["finetune"]
    result = {"model": name, "target": variant, "method": method, "images": report["images"],
              "timesteps": timesteps, "converted_float_accuracy": before["float_accuracy"],
              "converted_target_accuracy": before["target_accuracy"], "before_source": result_path(
                  name, "rate", variant).name, "form_float_accuracy": form_accuracy,
              "tuned_float_accuracy": report["float_accuracy"], "tuned_target_accuracy": report["target_accuracy"],
              "prediction_agreement": report["prediction_agreement"], "pipeline": tuned.attrs["pipeline"],
              "options": record["options"], "training_images": record["data"]["images"] - record["data"]["val_limit"],
              "val_images": record["data"]["val_limit"], "history": record["history"], "train_seconds": train_s,
              "verify_seconds": verify_s, "load_average_before": list(load_before),
              "load_average_trained": None if load_trained is None else list(load_trained),
              "load_average_after": list(os.getloadavg()), "wall_time_note": note,
              "trained_in_an_earlier_run": reuse}
    print(f"{name} {variant} {method}: converted float {before['float_accuracy']:.4f} chip "
          f"{before['target_accuracy']:.4f}; form {form_accuracy:.4f}; tuned float {report['float_accuracy']:.4f} "
          f"chip {report['target_accuracy']:.4f} (train {train_s:.0f} s, verify {verify_s:.0f} s)", flush=True)
    return result


def tuned_markdown(results: list[dict]) -> str:
    lines = ["### Fine-tuned for the chip", "",
             "`python docs/scripts/target_results.py --tuned MODEL:VARIANT:METHOD` (JSON in "
             "`docs/results/chip-finetune-*.json`): the converted SNN fine-tuned in the target's float form "
             "(`snncc finetune --target`), emitted and verified. `converted`: the float SNN as converted (the SNN "
             "the user had) and its chip (the rows above); `form`: the float form before fine-tuning (OR gates; "
             "Loihi 1: reset to zero); `tuned`: the fine-tuned float form and its chip. The gaps: the chip after "
             "fine-tuning against the converted float SNN, and against the fine-tuned float SNN.", "",
             "| model | target | method | images | T | converted float | converted chip | form float | tuned float "
             "| tuned chip | chip - converted float | chip - tuned float | agreement | training images | train | "
             "verify | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['target']} | {r['method']} | {r['images']:,} | {r['timesteps']} | "
                     f"{100 * r['converted_float_accuracy']:.2f} | {100 * r['converted_target_accuracy']:.2f} | "
                     f"{100 * r['form_float_accuracy']:.2f} | {100 * r['tuned_float_accuracy']:.2f} | "
                     f"**{100 * r['tuned_target_accuracy']:.2f}** | "
                     f"{100 * (r['tuned_target_accuracy'] - r['converted_float_accuracy']):+.2f} | "
                     f"{100 * (r['tuned_target_accuracy'] - r['tuned_float_accuracy']):+.2f} | "
                     f"{100 * r['prediction_agreement']:.2f} | {r['training_images']:,} | "
                     f"{r['train_seconds'] / 60:.1f} min | {r['verify_seconds'] / 60:.1f} min | "
                     f"{r['load_average_before'][0]:.1f} / {r['load_average_after'][0]:.1f} |")
    lines.append("")
    return "\n".join(lines)


def markdown(results: list[dict]) -> str:
    lines = ["## Measured", "",
             "`python docs/scripts/target_results.py` (JSON in `docs/results/loihi-*.json`); on the first `images` "
             "test images. Rate coding runs `T` answer steps, FS its latency (K = 8 steps per layer). `float`: the "
             "SNN before legalization (the cython runtime); `fold`: after `loihi-fold` only (max pooling as OR "
             "gates, average pooling folded into the next layer, still float); the target: the integer emulator. "
             "Energy: synaptic operations per inference (emulator, 100 test images) x 23.6 pJ (Davies et al. 2018, "
             "Loihi 1; for Loihi 2 an upper estimate).", "",
             "| model | coding | target | images | T | float | fold | target | target - float | agreement | cores "
             "| synops / inference | energy / inference |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        method = r.get("method", "rate")
        if not r.get("fits", True):
            lines.append(f"| {r['model']} | {method} | {r['target']} | does not fit: " +
                         "; ".join(dict.fromkeys(f"{v['limit']}: {v['actual']}" for v in r["violations"])) +
                         " | | | | | | | | | |")
            continue
        joules = r["energy"].get("joules")
        reset = r["reset"] + (", calibrated thresholds" if r.get("reset_compensation") else "")
        lines.append(f"| {r['model']} | {method} | {r['target']} (reset {reset}) | {r['images']:,} | "
                     f"{r['timesteps']} | {100 * r['float_accuracy']:.2f} | {100 * r['fold_accuracy']:.2f} | "
                     f"{100 * r['target_accuracy']:.2f} | {100 * (r['target_accuracy'] - r['float_accuracy']):+.2f} | "
                     f"{100 * r['prediction_agreement']:.2f} | "
                     f"{r['resources']['cores']} | {r['synops_per_inference']:,.0f} | "
                     f"{'-' if joules is None else f'{joules * 1e6:.1f} uJ'} |")
    lines += ["", "Wall times of `verify` (the float SNN and the emulator on the images of the row), with the load "
              "average (1 minute) before and after and what shared the machine:", ""]
    for r in results:
        if r.get("fits", True):
            load = (f", load {r['load_average_before'][0]:.1f} -> {r['load_average_after'][0]:.1f}"
                    if "load_average_before" in r else "")
            calibrated = ""
            if r.get("reset_compensation"):
                calibrated = f" (calibrated thresholds; calibration {r['calibrate_seconds']:.0f} s)"
            lines.append(f"- {r['model']} {r.get('method', 'rate')} {r['target']}{calibrated}: "
                         f"{r['verify_seconds']:.0f} s for "
                         f"{r['images']:,} images{load} ({r['wall_time_note']})")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="MODEL:METHOD:VARIANT, comma separated")
    parser.add_argument("--calib", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=32)
    parser.add_argument("--compensate", type=int, default=0,
                        help="training images to calibrate Loihi 1's reset-to-zero thresholds on (0: none; "
                             "256 measured 98.80 %% on LeNet-5 against 98.86 %% without: it does not help)")
    parser.add_argument("--note", default="2 CPU cores shared with other jobs",
                        help="what else ran on the machine (recorded with the wall times)")
    parser.add_argument("--tuned", default=None, help="MODEL:VARIANT:METHOD, comma separated: fine-tune for the "
                        "chip instead of the --configs rows")
    parser.add_argument("--train", type=int, default=30000, help="training images of --tuned (the last 1,000 "
                        "held back for validation)")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of --tuned surrogate")
    parser.add_argument("--keep", type=Path, default=None, help="write each fine-tuned .snn into this directory")
    parser.add_argument("--reuse", action="store_true", help="--tuned: verify the .snn an earlier run wrote into "
                        "--keep instead of training again")
    parser.add_argument("--resources-only", action="store_true", help="place every measured row again with the "
                        "current legalization and update its resources only (no verify)")
    args = parser.parse_args()
    if args.resources_only:
        for path in sorted((DOCS / "results").glob("loihi-*.json")):
            replace_resources(path, args.data, args.calib)
        write_page()
        return
    if args.tuned:
        for config in args.tuned.split(","):
            name, variant, method = config.split(":")
            write_json(run_tuned(name, variant, method, args.data, args.calib, args.limit, args.timesteps,
                                 args.note, args.train, args.lr, args.keep, args.reuse),
                       tuned_path(name, variant, method))
        write_page()
        return
    for config in args.configs.split(","):
        name, method, variant = config.split(":")
        report = run(name, method, variant, args.data, args.calib, args.limit, args.timesteps, args.note,
                     args.compensate)
        write_json(report, result_path(name, method, variant, bool(report.get("reset_compensation"))))
    write_page()


def replace_resources(path: Path, data: Path, calib: int) -> None:
    """Place the row of ``path`` again with the current legalization and write its resources (cores, chips, per
    chip) back, without verifying: the placement decides where neurons sit, not what they compute (the Loihi
    tests check that a split and placed graph gives its unsplit populations' integers), so the accuracies stand."""
    report = json.loads(path.read_text())
    if not report.get("fits"):
        return
    model, scaling, calibration, _, _ = load_model_data(report["model"], data, calib, 1)
    graph = compile_model(model, method=report.get("method") or "rate", calibration=calibration,
                          input_scaling=scaling)
    # A row with reset-to-zero compensation has other thresholds, the same shapes: all the placement sees.
    with tempfile.TemporaryDirectory() as tmp:
        manifest = emit(graph, report["target"], Path(tmp) / "bundle", timesteps=report["timesteps"])
    before = report["resources"]["cores"]
    report["resources"] = {k: manifest["resources"][k] for k in ("cores", "chips", "per_chip", "limits")}
    report["resources_replaced"] = time.strftime("%Y-%m-%d")
    write_json(report, path)
    print(f"{path.name}: {before} -> {report['resources']['cores']} cores, {report['resources']['chips']} chips",
          flush=True)


def write_page() -> None:
    """docs/targets.md's Measured section from every docs/results/loihi-*.json."""
    results = [json.loads(p.read_text()) for p in sorted((DOCS / "results").glob("loihi-*.json"))]
    results.sort(key=lambda r: (r["model"], r.get("method", "rate"), r["target"]))
    page = DOCS / "targets.md"
    text = page.read_text() if page.exists() else "# Hardware targets\n"
    head = text.split("## Measured")[0].rstrip() + "\n\n"
    tuned = [json.loads(p.read_text()) for p in sorted((DOCS / "results").glob("chip-finetune-*.json"))]
    write_text(page, head + markdown(results) + ("\n" + tuned_markdown(tuned) if tuned else ""))
    print(json.dumps([{k: r.get(k) for k in ("model", "method", "target", "fits", "float_accuracy", "target_accuracy")}
                      for r in results]))


if __name__ == "__main__":
    main()
