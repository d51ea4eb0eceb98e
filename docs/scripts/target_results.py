"""Measure the Loihi targets on the shipped rate-coded models and write docs/results/loihi-*.json and docs/targets.md.

For each model (LeNet-5 / MNIST, VGG / Fashion-MNIST) and variant (loihi2, loihi1): compile the SNN with the default
pipeline (calibrated on the first ``--calib`` training images), emit the bundle (synaptic operations measured on
100 test images), run ``verify`` on the first ``--limit`` test images (all 10,000 without it): float SNN accuracy,
emulator accuracy, prediction agreement, and the float accuracy of the folded graph (``loihi-fold`` only: max
pooling as OR gates, still float) to separate the cost of the OR gates from the cost of the integers.

    python docs/scripts/target_results.py [--data ../shared/data] [--models lenet5-mnist,vgg-fmnist]
        [--variants loihi2,loihi1] [--limit N] [--timesteps 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from shipped import load_model_data

from snncc.api import compile_model
from snncc.fileio import write_json, write_text
from snncc.runtime import Simulator
from snncc.targets.base import get_target
from snncc.targets.emit import emit, verify
from snncc.targets.loihi.legalize import LoihiFold

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


def run(name: str, variant: str, data: Path, calib: int, limit: int | None, timesteps: int) -> dict:
    model, scaling, calibration, x, y = load_model_data(name, data, calib, limit)
    graph = compile_model(model, calibration=calibration, input_scaling=scaling)
    violations = get_target(variant).check(graph)
    if violations:  # what does not fit, and by how much
        print(f"{name} {variant}: does not fit: " + "; ".join(map(str, violations)), flush=True)
        return {"model": name, "target": variant, "fits": False, "violations": [v.to_json() for v in violations]}
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
    report.update(model=name, pipeline=manifest["pipeline"], emit_seconds=emit_s, verify_seconds=verify_s,
                  wall_time_note="2 CPU cores shared with five other jobs", latency_steps=manifest["latency_steps"],
                  reset=manifest["target_details"]["reset"], fits=True)
    report["resources"] = {k: report["resources"][k] for k in ("cores", "chips", "per_chip", "limits")}
    print(f"{name} {variant} n={report['images']}: float {report['float_accuracy']:.4f} fold "
          f"{report['fold_accuracy']:.4f} {variant} {report['target_accuracy']:.4f} agreement "
          f"{report['prediction_agreement']:.4f}, {report['resources']['cores']} cores, verify {verify_s:.0f} s",
          flush=True)
    return report


def markdown(results: list[dict]) -> str:
    lines = ["## Measured", "",
             "`python docs/scripts/target_results.py` (JSON in `docs/results/loihi-*.json`); rate coding at T = "
             f"{next(r for r in results if r.get('fits', True))['timesteps']} answer steps, on the first `images` "
             "test images. `float`: the SNN before legalization (the cython runtime); `fold`: after `loihi-fold` only "
             "(max pooling as OR gates, still float); the target: the integer emulator. Energy: synaptic operations "
             "per inference (emulator, 100 test images) x 23.6 pJ (Davies et al. 2018, Loihi 1; for Loihi 2 an "
             "upper estimate).", "",
             "| model | target | images | float | fold | target | agreement | cores | synops / inference | "
             "energy / inference |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    fitting = [r for r in results if r.get("fits", True)]
    for r in results:
        if not r.get("fits", True):
            lines.append(f"| {r['model']} | {r['target']} | does not fit: " +
                         "; ".join(f"{v['node']}: {v['limit']}, {v['actual']}" for v in r["violations"]) +
                         " | | | | | | | |")
            continue
        joules = r["energy"].get("joules")
        lines.append(f"| {r['model']} | {r['target']} (reset {r['reset']}) | {r['images']:,} | "
                     f"{100 * r['float_accuracy']:.2f} | {100 * r['fold_accuracy']:.2f} | "
                     f"{100 * r['target_accuracy']:.2f} | {100 * r['prediction_agreement']:.2f} | "
                     f"{r['resources']['cores']} | {r['synops_per_inference']:,.0f} | "
                     f"{'-' if joules is None else f'{joules * 1e6:.1f} uJ'} |")
    lines += ["", "Wall times (2 CPU cores shared with five other jobs): " + "; ".join(
        f"{r['model']} {r['target']} verify {r['verify_seconds']:.0f} s" for r in fitting) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="lenet5-mnist,vgg-fmnist")
    parser.add_argument("--variants", default="loihi2,loihi1")
    parser.add_argument("--calib", type=int, default=2000)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--timesteps", type=int, default=32)
    args = parser.parse_args()
    results = []
    for name in args.models.split(","):
        for variant in args.variants.split(","):
            report = run(name, variant, args.data, args.calib, args.limit, args.timesteps)
            write_json(report, DOCS / "results" / f"loihi-{name}-{variant}.json")
            results.append(report)
    results = [json.loads(p.read_text()) for p in sorted((DOCS / "results").glob("loihi-*.json"))]
    page = DOCS / "targets.md"
    text = page.read_text() if page.exists() else "# Hardware targets\n"
    head = text.split("## Measured")[0].rstrip() + "\n\n"
    write_text(page, head + markdown(results))
    print(json.dumps([{k: r.get(k) for k in ("model", "target", "fits", "float_accuracy", "target_accuracy")}
                      for r in results]))


if __name__ == "__main__":
    main()
