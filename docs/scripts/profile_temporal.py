"""Where the time of the Cython temporal runtime goes: wall time per node of ``CythonTemporalSimulator.run_batch``
for FS/AMOS codings of the shipped models, beside one onnxruntime pass of the ANN on the same images.

Each configuration is compiled as docs/scripts/benchmark_runtime.py compiles it (calibration on the first 500
training images, ``pixels / 255``), then one batch of ``--batch`` test images runs ``--repeats`` times with timers
around every population (the counting unit kernel), every convolution (and, inside them, the compiled im2col and
the BLAS products, summed over the threads that ran them) and the rest of the batch (other ops, the placement of
the counts, copying the outputs). Run it with the thread settings of the benchmark:

    OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=1 python docs/scripts/profile_temporal.py \\
        [--zoo lenet5-mnist-fs8,vgg-fmnist-fs8,resnet-fmnist-fs8] [--note TEXT]

Writes docs/results/temporal-profile.json and docs/temporal-profile.md. The load average is recorded with the
figures: on a shared machine the wall times are noisy, only the shares within one configuration compare.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_runtime import CALIBRATION, ZOO, _cpu  # noqa: E402


def profile(name: str, args: argparse.Namespace) -> dict:
    import onnxruntime as ort

    import snncc.runtime.cython_engine as engine_module
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from snncc.ir import ops

    config = ZOO[name]
    model = REPO / "models" / f"{config['model']}.onnx"
    data = args.data / config["dataset"]
    calibration, _ = load_dataset(data, split="train", limit=CALIBRATION)
    scaling = InputScaling(scale=1 / 255)
    graph = compile_model(model, calibration=calibration, pipeline=config["pipeline"], input_scaling=scaling)
    x, _ = load_dataset(data, split="test", limit=args.batch)
    xs = scaling.apply(x).astype(np.float32)
    sim = engine_module.CythonTemporalSimulator(graph, threads=args.threads)
    times: dict[str, float] = collections.defaultdict(float)

    def timed(owner, attr: str, label) -> None:
        inner = getattr(owner, attr)

        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                times[label(*a)] += time.perf_counter() - start
        setattr(owner, attr, wrapper)

    def conv_label(node, values):
        return f"conv {node}" if isinstance(graph.op(node), ops.Conv2d) else "other ops"

    originals = [(engine_module._kernels, "im2col", engine_module._kernels.im2col), (np, "matmul", np.matmul)]
    timed(sim, "_count_window", lambda node, values: f"units {node}")
    timed(sim, "_convolve", conv_label)
    timed(engine_module._kernels, "im2col", lambda *a: "inside convolutions: im2col (thread time)")
    timed(engine_module.np, "matmul", lambda *a: "inside convolutions: BLAS product (thread time)")
    sim.run_batch(xs)  # warm up
    times.clear()
    start = time.perf_counter()
    for _ in range(args.repeats):
        sim.run_batch(xs)
    total = (time.perf_counter() - start) / args.repeats
    for owner, attr, original in originals:
        setattr(owner, attr, original)

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: (x.astype(np.float32) / 255).reshape((len(x),) + xs.shape[1:])}
    session.run(None, feed)
    start = time.perf_counter()
    for _ in range(args.repeats):
        session.run(None, feed)
    ort_seconds = (time.perf_counter() - start) / args.repeats
    per_node = {k: v / args.repeats for k, v in times.items()}
    accounted = sum(v for k, v in per_node.items() if not k.startswith("inside"))
    groups = {"convolutions": sum(v for k, v in per_node.items() if k.startswith("conv ")),
              "units (with counting)": sum(v for k, v in per_node.items() if k.startswith("units ")),
              "other ops and bookkeeping": total - accounted + per_node.get("other ops", 0.0)}
    return {"title": config["title"], "label": config["label"], "batch": len(x), "seconds": total,
            "ort_seconds": ort_seconds, "groups": groups, "per_node": per_node, "load_average": os.getloadavg()}


def markdown(results: dict, meta: dict) -> str:
    lines = ["# Where the temporal runtime's time goes", "",
             "Written by `python docs/scripts/profile_temporal.py` (see its docstring). Wall time of one batch of "
             f"{meta['batch']} images in `CythonTemporalSimulator.run_batch`, {meta['threads']} threads, the mean "
             f"of {meta['repeats']} runs. Machine: {meta['cpu'].get('model')}, "
             f"{os.cpu_count()} cores. {meta['note']}", ""]
    for name, r in results.items():
        lines += [f"## {r['title']}, {r['label']}", "",
                  f"Batch {r['seconds'] * 1e3:.1f} ms, one onnxruntime pass {r['ort_seconds'] * 1e3:.1f} ms "
                  f"(ratio {r['seconds'] / r['ort_seconds']:.2f}); 1-minute load average "
                  f"{r['load_average'][0]:.1f}.", "", "| part | ms / batch | share |", "| --- | ---: | ---: |"]
        lines += [f"| {k} | {v * 1e3:.1f} | {v / r['seconds']:.0%} |" for k, v in r["groups"].items()]
        lines += [f"| {k} | {v * 1e3:.1f} | |" for k, v in sorted(r["per_node"].items())
                  if k.startswith("inside")]
        largest = [f"{k} {v * 1e3:.1f} ms" for k, v in sorted(r["per_node"].items(), key=lambda kv: -kv[1])
                   if not k.startswith("inside") and k != "other ops"]
        lines += ["", "Largest nodes: " + ", ".join(largest[:6]) + ".", ""]
    return "\n".join(lines[:-1]) + "\n"


def main() -> None:
    from snncc.fileio import write_json, write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="lenet5-mnist-fs8,vgg-fmnist-fs8,resnet-fmnist-fs8")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    results = {name: profile(name, args) for name in args.zoo.split(",") if name}
    meta = {"batch": args.batch, "threads": args.threads, "repeats": args.repeats, "note": args.note, "cpu": _cpu(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "env": {k: os.environ.get(k) for k in
                                                            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}}
    write_json({"meta": meta, "models": results}, args.out / "results" / "temporal-profile.json")
    write_text(args.out / "temporal-profile.md", markdown(results, meta))
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
