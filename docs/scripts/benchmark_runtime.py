"""Benchmark the SNN runtimes against each other and against onnxruntime on the ANN; write docs/benchmark.md.

For each shipped model (LeNet-5 on MNIST, the VGG on Fashion-MNIST when its ONNX file exists): compile once
(calibration on the first 500 training images, ``pixels / 255``), then on the same test images, batch 100 and
``--threads`` threads (2 by default), measure

- onnxruntime on the ANN: images/s, accuracy;
- the numpy reference simulator and the Cython runtime at T in {16, 32, 64, 128}: images/s, peak memory, accuracy
  after T steps (identical for the two backends: same spikes), and the number of spikes per image.

Every measurement runs in a fresh subprocess, so that thread settings and the peak resident memory (``ru_maxrss``)
belong to that measurement alone. ``OMP_NUM_THREADS`` is ``--threads``. numpy's BLAS (the reference's products, the
Cython runtime's first layer and dense layers) runs once with ``OPENBLAS_NUM_THREADS=--threads`` and once with 1:
OpenBLAS's idle workers spin and compete with everything else for the cores, and on a loaded machine both backends
can be faster with a single-threaded BLAS. Each backend is reported in its faster configuration (both are in the
JSON). Timings on a shared machine are noisy: each figure is the best of ``--repeats`` runs over the images, and only
ratios from one run should be compared.

onnxruntime is measured right before and right after the runs of each T, and each ratio uses the faster of those
two (the machine's load changes within minutes).

With ``--with-peers PYTHON`` (the interpreter of the peers' own virtual environment, see
docs/scripts/benchmark_peers.py), SpikingJelly 2.0 (ann2snn) and sinabs are measured in the same run on the same
model, images and T, each T right after the Cython runtime; results/peers.json gets their figures and
benchmark.md a table with the ratio Cython / faster peer at each model and T.

Acceptance (issue 3): at T=32 the Cython time per image must be at most onnxruntime's ANN time per image times 32;
at every T the Cython runtime at least 3x the faster peer with equal or better accuracy.

    python docs/scripts/benchmark_runtime.py [--data ../shared/data] [--models lenet5-mnist,vgg-fmnist]
        [--model-dir models] [--images lenet5-mnist=1000,vgg-fmnist=300] [--timesteps 16,32,64,128]
        [--threads 2] [--repeats 2] [--with-peers /work/peers-venv/bin/python [--peers spikingjelly,sinabs]
        [--peer-options "--steps-per-call all,1"]]
    python docs/scripts/benchmark_runtime.py --render       # benchmark.md from results/*.json only
    python docs/scripts/benchmark_runtime.py --crossover    # dense vs event-driven time per layer and density
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
DATASETS = {"lenet5-mnist": "mnist", "vgg-fmnist": "fashion-mnist"}
TITLES = {"lenet5-mnist": "LeNet-5 / MNIST", "vgg-fmnist": "VGG / Fashion-MNIST"}
BATCH = 100
CALIBRATION = 500
ACCEPTANCE_T = 32


# ------------------------------------------------------------------------------------------------------------------
# Child processes: one measurement each, result as one JSON line on stdout
# ------------------------------------------------------------------------------------------------------------------

def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child_snn(args: argparse.Namespace) -> dict:
    from snncc.data import InputScaling, load_dataset
    from snncc.ir import load
    from snncc.runtime import Simulator

    graph = load(args.snn)
    x, y = load_dataset(args.data_dir, split="test", limit=args.images)
    xs = InputScaling.from_json(graph.attrs["input_scaling"]).apply(x)  # scaled once, outside the timed runs
    simulator = Simulator(graph, timesteps=args.T, backend=args.backend, batch_size=BATCH, threads=args.threads)
    assert simulator.backend == args.backend, "the Cython runtime is not built (python -m pip install -e .)"
    simulator.run(xs[:BATCH], apply_scaling=False)  # warm up: imports, first-touch of buffers
    baseline = _peak_rss_mib()
    best, result = float("inf"), None
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = simulator.run(xs, apply_scaling=False)
        best = min(best, time.perf_counter() - start)
    predictions = result.outputs[-1].reshape(len(xs), -1).argmax(axis=1)
    return {"seconds": best, "images": len(xs), "images_per_second": len(xs) / best,
            "accuracy": float((predictions == y).mean()), "spikes_per_image": result.spikes_per_image(args.T),
            "synops_per_image": result.synops_per_image(args.T), "peak_rss_mib": _peak_rss_mib(),
            "rss_before_mib": baseline, "predictions_sha": _digest(predictions)}


def child_ort(args: argparse.Namespace) -> dict:
    import numpy as np
    import onnxruntime as ort

    from snncc.data import InputScaling, load_dataset

    x, y = load_dataset(args.data_dir, split="test", limit=args.images)
    xs = InputScaling(scale=1 / 255).apply(x)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    session.run(None, {name: xs[:BATCH]})
    best, logits = float("inf"), None
    for _ in range(max(3, args.repeats)):
        start = time.perf_counter()
        logits = np.concatenate([session.run(None, {name: xs[i:i + BATCH]})[0] for i in range(0, len(xs), BATCH)])
        best = min(best, time.perf_counter() - start)
    return {"seconds": best, "images": len(xs), "images_per_second": len(xs) / best,
            "accuracy": float((logits.argmax(axis=1) == y).mean()), "peak_rss_mib": _peak_rss_mib()}


def _digest(array) -> str:
    import hashlib

    return hashlib.sha256(array.tobytes()).hexdigest()[:16]


def child_crossover(args: argparse.Namespace) -> dict:
    """Time of the dense (BLAS) and event-driven paths of typical layers at several spike densities."""
    import numpy as np

    from snncc.ir import ops
    from snncc.runtime import cython_engine, kernels

    rng = np.random.default_rng(0)
    layers = {
        "conv 32x28x28 -> 32, 3x3 (VGG)": (ops.Conv2d(weight=rng.normal(size=(32, 32, 3, 3)), padding=(1,) * 4),
                                            (32, 28, 28), 200),
        "conv 64x14x14 -> 64, 3x3 (VGG)": (ops.Conv2d(weight=rng.normal(size=(64, 64, 3, 3)), padding=(1,) * 4),
                                            (64, 14, 14), 300),
        "conv 6x14x14 -> 16, 5x5 (LeNet)": (ops.Conv2d(weight=rng.normal(size=(16, 6, 5, 5))), (6, 14, 14), 1000),
        "linear 3136 -> 128 (VGG)": (ops.Linear(weight=rng.normal(size=(128, 3136))), (3136,), 1000),
        "linear 400 -> 120 (LeNet)": (ops.Linear(weight=rng.normal(size=(120, 400))), (400,), 3000),
    }
    densities = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.6]
    table = {}
    for name, (op, shape, rows) in layers.items():
        out_shape = kernels.apply(op, np.zeros((1,) + shape, np.float32)).shape[1:]
        synapse = cython_engine._EventSynapse(op, shape, out_shape, kernels.fan_out(op, shape).ravel(), args.threads)
        ratios = {}
        for density in densities:
            x = (rng.random((rows,) + shape) < density).astype(np.uint8)
            signal = cython_engine._Signal(x.reshape((1, rows) + shape), False, True)
            times = {}
            for path, above in (("sparse", 2.0), ("dense", -1.0)):
                synapse.dense_above = above
                synapse.advance(signal, 1, rows, np.zeros(rows))
                start = time.perf_counter()
                synapse.advance(signal, 1, rows, np.zeros(rows))
                times[path] = time.perf_counter() - start
            ratios[density] = times["dense"] / times["sparse"]
        table[name] = ratios
    return table


# ------------------------------------------------------------------------------------------------------------------
# Parent: orchestration and reports
# ------------------------------------------------------------------------------------------------------------------

def _spawn(mode: str, threads: int, blas_threads: int, **options) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(blas_threads),
               MKL_NUM_THREADS=str(blas_threads))
    argv = [sys.executable, __file__, "--child", mode, "--threads", str(threads)]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {mode} {options} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def benchmark_model(name: str, args: argparse.Namespace, workdir: Path, peer_docs: list) -> dict:
    from snncc.api import compile_model
    from snncc.data import InputScaling, load_dataset
    from snncc.ir import save

    model = args.model_dir / f"{name}.onnx"
    data_dir = args.data / DATASETS[name]
    calibration, _ = load_dataset(data_dir, split="train", limit=CALIBRATION)
    graph = compile_model(model, calibration=calibration, input_scaling=InputScaling(scale=1 / 255))
    snn = workdir / f"{name}.snn"
    save(graph, snn)
    images = args.images.get(name, 1000)
    common = {"data_dir": data_dir, "images": images, "repeats": args.repeats}
    result = {"model": str(model), "model_sha256": _sha256(model), "images": images, "timesteps": {}, "ort_runs": []}

    def ort() -> dict:
        print(f"{name}: onnxruntime", flush=True)
        run = _spawn("ort", args.threads, args.threads, model=model, **common)
        result["ort_runs"].append(run)
        return run

    before = ort()
    for T in args.timesteps:
        row = {}
        for backend in ("reference", "cython"):
            for blas in sorted({args.threads, 1}, reverse=True):
                label = f"{backend}-blas{blas}"
                print(f"{name}: T={T} {label}", flush=True)
                row[label] = _spawn("snn", args.threads, blas, snn=snn, backend=backend, T=T, **common)
        if args.with_peers:
            peer_docs.append(run_peers(name, T, images, args, workdir))
        after = ort()
        row["ort"] = min(before, after, key=lambda r: r["seconds"])  # the faster of the two adjacent runs
        result["timesteps"][T] = row
        before = after
    result["ort"] = min(result["ort_runs"], key=lambda r: r["seconds"])
    return result


def _sha256(path: Path) -> str:
    from snncc.api import sha256_file

    return sha256_file(path)


def _fastest(row: dict, backend: str) -> tuple[str, dict]:
    label = max((k for k in row if k.startswith(backend)), key=lambda k: row[k]["images_per_second"])
    return label, row[label]


def summarize(name: str, result: dict) -> dict:
    summary = {}
    for T, row in result["timesteps"].items():
        ort_per_image = row["ort"]["seconds"] / row["ort"]["images"]
        ref_label, ref = _fastest(row, "reference")
        cy_label, cy = _fastest(row, "cython")
        digests = {r["predictions_sha"] for k, r in row.items() if k != "ort"}
        summary[int(T)] = {"reference": ref_label, "cython": cy_label,
                           "reference_images_per_second": ref["images_per_second"],
                           "cython_images_per_second": cy["images_per_second"],
                           "speedup_vs_reference": ref["seconds"] / cy["seconds"],
                           "ort_images_per_second": row["ort"]["images_per_second"],
                           "cython_over_ort_times_T": (cy["seconds"] / cy["images"]) / (ort_per_image * int(T)),
                           "same_predictions": len(digests) == 1}
    return summary


def _git_commit() -> str | None:
    """The checked-out commit, with ``+changes`` when tracked files differ from it; None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], cwd=root).returncode != 0
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def markdown(results: dict, meta: dict) -> str:
    code = f"Code: commit `{meta['commit']}`. " if meta.get("commit") else ""
    lines = ["# Runtime benchmark", "",
             "Written by `python docs/scripts/benchmark_runtime.py`. " + code +
             f"Batch {BATCH}, {meta['threads']} threads, Cython kernels: {meta['kernels']} variant, "
             f"calibration on the first {CALIBRATION} training images, inputs `pixels / 255`. Machine: "
             f"{meta['machine']}, shared with other work while measuring, so timings are noisy; each figure is "
             f"the best of {meta['repeats']} runs. Each measurement runs in its own process with "
             f"`OMP_NUM_THREADS={meta['threads']}`; numpy's BLAS was run with {meta['threads']} threads and with 1, "
             "and each backend is shown in its faster configuration (*blasN* in the table; both are in "
             "`results/benchmark.json`). onnxruntime ran right before and after each T; the ratio uses the faster "
             "run. Peak memory is the process's peak resident set, Python, numpy and the test images included.", ""]
    for name, result in results.items():
        ort = result["ort"]
        ort_us = 1e6 * ort["seconds"] / ort["images"]
        lines += [f"## {TITLES.get(name, name)}", "",
                  f"{result['images']} test images. onnxruntime on the ANN: best **{ort['images_per_second']:.0f} "
                  f"images/s** ({ort_us:.1f} us per image), accuracy {100 * ort['accuracy']:.2f} %, peak memory "
                  f"{ort['peak_rss_mib']:.0f} MiB.", "",
                  "| T | reference img/s | Cython img/s | speed-up | ORT img/s (adjacent) | Cython / (ORT x T) "
                  "| SNN accuracy | spikes / image | peak MiB reference / Cython |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        summary = result["summary"]
        for T, row in result["timesteps"].items():
            s = summary[int(T)]
            ref, cy = row[s["reference"]], row[s["cython"]]
            same = "" if s["same_predictions"] else " (predictions differ!)"
            lines.append(f"| {T} | {ref['images_per_second']:.1f} ({s['reference'].split('-')[1]}) | "
                         f"{cy['images_per_second']:.1f} ({s['cython'].split('-')[1]}) | "
                         f"{s['speedup_vs_reference']:.1f}x | {s['ort_images_per_second']:.0f} | "
                         f"{s['cython_over_ort_times_T']:.2f} | "
                         f"{100 * ref['accuracy']:.2f} %{same} | {ref['spikes_per_image']:.0f} | "
                         f"{ref['peak_rss_mib']:.0f} / {cy['peak_rss_mib']:.0f} |")
        at = summary.get(ACCEPTANCE_T)
        if at:
            verdict = "met" if at["cython_over_ort_times_T"] <= 1 else "NOT met"
            lines += ["", f"Acceptance at T={ACCEPTANCE_T}: Cython time per image = "
                          f"{at['cython_over_ort_times_T']:.2f} x (onnxruntime time per image x {ACCEPTANCE_T}): "
                          f"**{verdict}**; {at['speedup_vs_reference']:.1f}x faster than the numpy reference."]
        lines.append("")
    lines += peer_markdown(results, meta)
    lines += ["Speed-up: time of the reference / time of the Cython runtime. Cython / (ORT x T): Cython time per "
              "image over T times onnxruntime's ANN time per image (the acceptance bound is 1 at T=32). The "
              "backends' predicted classes are compared by a digest in every configuration; the SNN accuracy is "
              "the same for all of them.", ""]
    return "\n".join(lines)


PEER_TITLES = {"spikingjelly": "SpikingJelly", "sinabs": "sinabs"}
PEER_SPEEDUP = 3  # issue 3: the Cython runtime at least 3x the faster peer, with equal or better accuracy


def peer_markdown(results: dict, meta: dict) -> list[str]:
    """The peer section: per model and T, the Cython runtime against SpikingJelly and sinabs (results/peers.json)."""
    doc = meta.get("peers") or {}
    if not doc.get("models"):
        return []
    versions = doc.get("versions", {})
    same_run = doc.get("run_id") is not None and doc.get("run_id") == meta.get("run_id")
    when = ("measured in the same run as the figures above, each T right after the Cython runtime's"
            if same_run else f"measured in a separate run ({doc.get('date')}): the ratios compare two runs on a "
                             "noisy machine")
    lines = ["## Peers: SpikingJelly and sinabs", "",
             f"Measured by `docs/scripts/benchmark_peers.py` in its own virtual environment (torch "
             f"{versions.get('torch')}, spikingjelly {versions.get('spikingjelly')}, sinabs {versions.get('sinabs')})"
             f", {when}. The same ONNX weights, the same test images, batch {doc.get('batch')}, {doc.get('threads')} "
             f"threads (`torch.set_num_threads`), `torch.inference_mode()`, calibration on the same "
             f"{doc.get('calibration_images')} training images; simulation time only (conversion excluded), best of "
             f"{doc.get('repeats')} runs, each configuration in its own process. Peak memory is the process's peak "
             "resident set, as above (torch included).", ""]
    methods = {}
    for entry in doc["models"].values():
        for peer, data in entry["peers"].items():
            methods.setdefault(peer, data["method"])
    lines += [f"- {PEER_TITLES.get(p, p)}: {m}." for p, m in methods.items()]
    steps = (doc.get("settings") or {}).get("steps_per_call")
    if steps:
        lines += ["", f"Each peer was measured with k = {', '.join(map(str, steps))} time steps per call (`all` = T; "
                      "the layers keep their state between calls) and is shown with its fastest k."]
    lines += ["", "Both peers feed the analog image as a constant input current at every step (as snncc does), keep "
              "max pooling as a max over each step's spikes and read out the mean of the last layer's output over "
              "T; accuracy differences come from the conversion methods, not from the simulators.", ""]
    for name, entry in doc["models"].items():
        ours = results.get(name)
        if ours is None:
            continue
        peers = list(entry["peers"])
        lines += [f"### {TITLES.get(name, name)}", "",
                  f"{entry['images']} test images (snncc: {ours['images']}); the rebuilt torch ANN: "
                  f"{100 * entry.get('ann_accuracy_torch', float('nan')):.2f} %.", "",
                  "| T | Cython img/s | " + " | ".join(f"{PEER_TITLES.get(p, p)} img/s" for p in peers)
                  + " | Cython / faster peer | accuracy Cython / " + " / ".join(PEER_TITLES.get(p, p) for p in peers)
                  + " | peak MiB Cython / " + " / ".join(PEER_TITLES.get(p, p) for p in peers) + " |",
                  "| ---: | ---: | " + " | ".join("---:" for _ in peers) + " | ---: | ---: | ---: |"]
        verdicts = []
        for T, row in ours["timesteps"].items():
            runs = {p: entry["peers"][p]["timesteps"].get(str(T)) for p in peers}
            if not all(runs.values()):
                continue
            label = ours["summary"][int(T)]["cython"]
            cy = row[label]
            fastest = max(peers, key=lambda p: runs[p]["images_per_second"])
            ratio = cy["images_per_second"] / runs[fastest]["images_per_second"]
            reasons = ([f"{ratio:.1f}x"] if ratio < PEER_SPEEDUP else []) + (
                [f"accuracy {100 * cy['accuracy']:.2f} % < {100 * runs[fastest]['accuracy']:.2f} %"]
                if cy["accuracy"] < runs[fastest]["accuracy"] else [])
            verdicts.append((int(T), reasons))
            lines.append(f"| {T} | {cy['images_per_second']:.1f} | "
                         + " | ".join(f"{runs[p]['images_per_second']:.1f}"
                                      + (f" (k={runs[p]['steps_per_call']})" if "steps_per_call" in runs[p] else "")
                                      for p in peers)
                         + f" | **{ratio:.1f}x** ({PEER_TITLES.get(fastest, fastest)}) | "
                         + " / ".join(f"{100 * r['accuracy']:.2f} %" for r in [cy, *runs.values()])
                         + " | " + " / ".join(f"{r['peak_rss_mib']:.0f}" for r in [cy, *runs.values()]) + " |")
        if entry["images"] != ours["images"]:
            lines += ["", f"The peers ran on {entry['images']} images and snncc on {ours['images']}: the "
                          "accuracies are not over the same images (rerun with --with-peers)."]
        if verdicts:
            missed = [f"T={T} ({', '.join(reasons)})" for T, reasons in verdicts if reasons]
            lines += ["", f"Acceptance: the Cython runtime at least {PEER_SPEEDUP}x the faster peer at equal T with "
                          "equal or better accuracy: " + ("**met** at every T." if not missed else
                                                          "**NOT met** at " + ", ".join(missed) + ".")]
        lines.append("")
    return lines


def _peers(out: Path) -> dict:
    """Peer measurements written by docs/scripts/benchmark_peers.py (schema snncc-peers/2), if any."""
    path = out / "results" / "peers.json"
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    if doc.get("schema") != "snncc-peers/2":
        print(f"ignoring {path}: not schema snncc-peers/2 (rerun docs/scripts/benchmark_peers.py)", flush=True)
        return {}
    return doc


def run_peers(name: str, T: int, images: int, args: argparse.Namespace, workdir: Path) -> dict:
    """The peers at (model, T), measured by docs/scripts/benchmark_peers.py in the peers' own environment."""
    out = workdir / f"peers-{name}-{T}.json"
    argv = [str(args.with_peers), str(Path(__file__).resolve().parent / "benchmark_peers.py"), "--models", name,
            "--timesteps", str(T), "--images", str(images), "--threads", str(args.threads), "--repeats",
            str(args.repeats), "--data", str(args.data), "--model-dir", str(args.model_dir), "--peers", args.peers,
            "--workdir", str(workdir / "peers"), "--out", str(out), *shlex.split(args.peer_options)]
    # the peers' interpreter must not see this environment's packages
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    print(f"{name}: T={T} peers ({args.peers})", flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"peer benchmark {name} T={T} failed:\n{done.stderr[-3000:]}")
    return json.loads(out.read_text())


def merge_peers(docs: list[dict], run_id: str) -> dict:
    """One results/peers.json from the per-(model, T) documents of one driver run."""
    merged = {k: v for k, v in docs[0].items() if k != "models"}
    merged.update(run_id=run_id, command="python docs/scripts/benchmark_runtime.py --with-peers ... (one run)",
                  load_average=[d["load_average"] for d in docs], models={})
    for doc in docs:
        for name, entry in doc["models"].items():
            target = merged["models"].setdefault(name, {**entry, "peers": {}})
            for peer, data in entry["peers"].items():
                slot = target["peers"].setdefault(peer, {**data, "timesteps": {}})
                slot["timesteps"].update(data["timesteps"])
    return merged


def main() -> None:
    from snncc.fileio import write_text  # lazily, as every snncc import here

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--models", default="lenet5-mnist,vgg-fmnist")
    parser.add_argument("--model-dir", type=Path, default=REPO / "models")
    parser.add_argument("--images", default="lenet5-mnist=1000,vgg-fmnist=300",
                        help="test images per model, NAME=N,... (or one number for all)")
    parser.add_argument("--timesteps", default="16,32,64,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--crossover", action="store_true", help="measure dense vs event-driven synapses")
    parser.add_argument("--render", action="store_true",
                        help="rewrite benchmark.md from results/benchmark.json (and results/peers.json) only")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--with-peers", metavar="PYTHON",
                        help="also measure SpikingJelly and sinabs with this interpreter (their own virtual "
                             "environment, see benchmark_peers.py), each T right after the Cython runtime; writes "
                             "results/peers.json and the peer table")
    parser.add_argument("--peers", default="spikingjelly,sinabs", help="with --with-peers: which peers")
    parser.add_argument("--peer-options", default="",
                        help="with --with-peers: more options for benchmark_peers.py, e.g. \"--sj-mode max\"")
    # child-process options
    parser.add_argument("--child", choices=["snn", "ort", "crossover"], help=argparse.SUPPRESS)
    parser.add_argument("--snn", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--T", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.images = int(args.images)
        run = {"snn": child_snn, "ort": child_ort, "crossover": child_crossover}[args.child]
        print(json.dumps(run(args)))
        return
    if args.render:
        data = json.loads((args.out / "results" / "benchmark.json").read_text())
        for result in data["models"].values():  # JSON object keys are strings
            result["summary"] = {int(t): s for t, s in result["summary"].items()}
        data["meta"]["peers"] = _peers(args.out)
        write_text(args.out / "benchmark.md", markdown(data["models"], data["meta"]))
        print(f"wrote {args.out / 'benchmark.md'}")
        return
    if args.crossover:
        table = _spawn("crossover", args.threads, args.threads)
        for name, ratios in table.items():
            print(f"{name:34s} dense time / event-driven time: " +
                  "  ".join(f"{d}: {r:.2f}" for d, r in ratios.items()))
        return
    args.timesteps = [int(t) for t in args.timesteps.split(",")]
    if "=" in args.images:
        args.images = {k: int(v) for k, v in (item.split("=") for item in args.images.split(","))}
    else:
        args.images = {name: int(args.images) for name in args.models.split(",")}
    results, peer_docs = {}, []
    run_id = time.strftime("%Y-%m-%dT%H:%M:%S")
    commit = _git_commit()  # the code measured, taken before the run
    if args.with_peers and not Path(args.with_peers).is_file():
        parser.error(f"--with-peers {args.with_peers}: no such interpreter")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if not (args.model_dir / f"{name}.onnx").is_file():
                print(f"skipping {name}: {args.model_dir / name}.onnx does not exist", flush=True)
                continue
            result = benchmark_model(name, args, Path(tmp), peer_docs)
            result["summary"] = summarize(name, result)
            results[name] = result
    from snncc.runtime import load_kernels

    kernels = load_kernels()
    meta = {"images": args.images, "threads": args.threads, "repeats": args.repeats, "batch": BATCH,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "python": platform.python_version(), "openmp": kernels.openmp_enabled(), "kernels": kernels.variant(),
            "load_average_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "run_id": run_id,
            "commit": commit}
    from snncc.api import write_json

    write_json({"meta": meta, "models": results}, args.out / "results" / "benchmark.json")
    if peer_docs:
        write_json(merge_peers(peer_docs, run_id), args.out / "results" / "peers.json")
    write_text(args.out / "benchmark.md", markdown(results, {**meta, "peers": _peers(args.out)}))
    written = ["benchmark.md", "results/benchmark.json"] + (["results/peers.json"] if peer_docs else [])
    print("wrote " + ", ".join(str(args.out / w) for w in written))


if __name__ == "__main__":
    main()
