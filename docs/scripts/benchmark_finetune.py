"""Fine-tuning speed: training images per second of surrogate-gradient BPTT on the VGG / Fashion-MNIST, for
snncc's torch lowering and for SpikingJelly 2.0 and snnTorch training the same network, in one run; writes
docs/results/finetune-speed.json and docs/finetune-speed.md.

    python docs/scripts/benchmark_finetune.py [--data ../shared/data] [--timesteps 4,8] [--batch-size 64]
        [--steps 8] [--threads 2] [--repeats 1] [--with-peers /work/peers-train-venv/bin/python]
        [--with-baseline PYTHON] [--render]

``--with-baseline`` runs snncc's child a second time under another Python whose installed snncc is an earlier
version (say, a virtual environment with ``pip install .`` of the main branch), reported as ``snncc-baseline``: a
before/after comparison in the same run. ``--repeats N`` runs every (framework, T) N times, in interleaved rounds
(so that a change of the machine's load affects every framework alike), and reports each one's median run.
The load average (``os.getloadavg``) is recorded before and after every run.

The peers run in their own virtual environment (snncc is not imported there)::

    python -m venv /work/peers-train-venv
    /work/peers-train-venv/bin/pip install -c constraints.txt torch==2.13.0 spikingjelly snntorch onnx numpy

What is timed: ``--steps`` training steps after one warm-up step, each on a batch of ``--batch-size`` Fashion-MNIST
training images: the forward pass over T steps, cross-entropy on the network's output at T, the backward pass through
time and one Adam step (lr 1e-4). Every (framework, T) runs in a fresh process with ``torch.set_num_threads``,
``OMP_NUM_THREADS`` and the BLAS threads set to ``--threads``; the figure is images / wall time of the timed steps.

The network (the shipped ``models/vgg-fmnist.onnx``: four 3x3 convolutions, two max poolings, fc128, fc10; BatchNorm
folded):
    - snncc: ``snncc compile`` defaults (``canonicalize,normalize,convert-rate``, calibration on 500 training
      images): IF neurons with reset by subtraction, the analog image as a constant input current (the first
      convolution runs once per batch, not T times), spiking max pooling of the running spike counts, a membrane
      readout; ``runtime.torch_lowering.lower`` with the fast-sigmoid surrogate, every weight, bias and threshold
      trainable. The populations and the spiking max poolings run as the compiled kernels of
      ``runtime/_train_kernels.pyx`` (the torch form with ``SNNCC_TRAIN_KERNELS=torch``), the convolutions
      channels-last, and glibc keeps freed memory for the next step (``runtime/torch_memory.py``; off with
      ``SNNCC_KEEP_FREED_MEMORY=0``). ``--peers-keep-freed-memory`` gives the peers the same allocator setting
      (``GLIBC_TUNABLES``), to show what it alone is worth to them.
    - SpikingJelly (``spikingjelly.activation_based``): the same layers with each ReLU replaced by
      ``neuron.IFNode(surrogate_function=surrogate.ATan(), step_mode="m")`` (its multi-step mode, the fastest on a
      CPU, where its cupy/triton backends do not run), stateless layers in ``layer.SeqToANNContainer`` (all T steps
      folded into the batch), the image repeated over T, output averaged over T, ``functional.reset_net`` per batch.
    - snnTorch: each ReLU replaced by ``snn.Leaky(beta=1.0, reset_mechanism="subtract",
      spike_grad=surrogate.fast_sigmoid(), init_hidden=True)`` (beta = 1 is the IF neuron), stepped by a Python loop
      over T as its tutorials do, output averaged over T, ``utils.reset`` per batch.
    The peers take the ANN's weights as they are (threshold 1); the training cost of dense tensor code does not
    depend on the weights' scale.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL = REPO / "models" / "vgg-fmnist.onnx"
CALIBRATION = 500
FRAMEWORKS = ("snncc", "spikingjelly", "snntorch")
PEERS = ("spikingjelly", "snntorch")
BASELINE = "snncc-baseline"  # snncc's child under --with-baseline's Python
#: glibc's tunables for runtime/torch_memory.py's mallopt setting (no mmap per block, freed memory kept).
KEEP_FREED_MEMORY = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824"


def _idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    shape = struct.unpack(">" + "I" * raw[3], raw[4:4 + 4 * raw[3]])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def training_images(data: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` Fashion-MNIST training images as stored (uint8, (N, 1, 28, 28)) and their labels."""
    x = _idx(data / "fashion-mnist" / "train-images-idx3-ubyte.gz")[:count, None]
    y = _idx(data / "fashion-mnist" / "train-labels-idx1-ubyte.gz")[:count].astype(np.int64)
    return np.ascontiguousarray(x), y


# ------------------------------------------------------------------------------------------------------------------
# Children: one (framework, T) each, in a fresh process
# ------------------------------------------------------------------------------------------------------------------

def snncc_step(args: argparse.Namespace):
    """snncc's lowering of the compiled VGG; returns ``step(x_uint8, y) -> loss``."""
    import torch

    from snncc.api import compile_model
    from snncc.data import InputScaling
    from snncc.runtime.torch_lowering import lower

    calibration, _ = training_images(args.data, CALIBRATION)
    graph = compile_model(MODEL, calibration=calibration)
    scaling = InputScaling.from_json(graph.attrs["input_scaling"])
    module = lower(graph, surrogate="fast-sigmoid")
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-4)

    def step(x, y):
        out = module(torch.from_numpy(scaling.apply(x)), args.timesteps).outputs[0][-1]
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


def _peer_network(args: argparse.Namespace):
    """The ANN rebuilt from the ONNX file (benchmark_peers.ann_from_onnx) and its input normalization."""
    sys.path.insert(0, str(HERE))
    from benchmark_peers import ann_from_onnx

    ann, (mean, std) = ann_from_onnx(MODEL)
    return ann, (lambda x: ((x.astype(np.float32) / 255 - mean) / std).astype(np.float32))


def spikingjelly_step(args: argparse.Namespace):
    import torch
    from spikingjelly.activation_based import functional, layer, neuron, surrogate
    from torch import nn

    ann, prepare = _peer_network(args)
    layers = [neuron.IFNode(surrogate_function=surrogate.ATan(), step_mode="m") if isinstance(m, nn.ReLU)
              else layer.SeqToANNContainer(m) for m in ann]
    net = nn.Sequential(*layers).train()
    functional.set_step_mode(net, "m")
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    T = args.timesteps

    def step(x, y):
        x = torch.from_numpy(prepare(x))
        out = net(x.unsqueeze(0).repeat(T, *([1] * x.dim()))).mean(0)
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        functional.reset_net(net)
        return float(loss.detach())

    return step


def snntorch_step(args: argparse.Namespace):
    import snntorch
    import torch
    from snntorch import surrogate, utils
    from torch import nn

    ann, prepare = _peer_network(args)
    layers = [snntorch.Leaky(beta=1.0, reset_mechanism="subtract", spike_grad=surrogate.fast_sigmoid(),
                             init_hidden=True) if isinstance(m, nn.ReLU) else m for m in ann]
    net = nn.Sequential(*layers).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    T = args.timesteps

    def step(x, y):
        x = torch.from_numpy(prepare(x))
        utils.reset(net)
        out = sum(net(x) for _ in range(T)) / T
        loss = torch.nn.functional.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    return step


STEPS = {"snncc": snncc_step, "spikingjelly": spikingjelly_step, "snntorch": snntorch_step}


def child(args: argparse.Namespace) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    step = STEPS[args.child](args)
    x, y = training_images(args.data, args.batch_size * (args.steps + 1))
    y = torch.from_numpy(y)
    batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    losses = [step(*batches[0])]  # warm-up: allocator, kernels, lazy initialization
    start = time.perf_counter()
    for xb, yb in batches[1:]:
        losses.append(step(xb, yb))
    seconds = time.perf_counter() - start
    versions = {"torch": torch.__version__}
    for name in ("spikingjelly", "snntorch"):
        try:
            from importlib.metadata import version

            versions[name] = version(name)
        except Exception:  # noqa: BLE001 - the package is absent in this environment
            pass
    return {"framework": args.child, "timesteps": args.timesteps, "batch_size": args.batch_size, "steps": args.steps,
            "seconds": seconds, "images_per_second": args.batch_size * args.steps / seconds,
            "losses": losses, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "versions": versions}


# ------------------------------------------------------------------------------------------------------------------
# Parent
# ------------------------------------------------------------------------------------------------------------------

def _spawn(python: str, framework: str, T: int, args: argparse.Namespace) -> dict:
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    if framework in PEERS and args.peers_keep_freed_memory:
        env["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY
    child = "snncc" if framework == BASELINE else framework
    argv = [python, __file__, "--child", child, "--timesteps", str(T), "--threads", threads, "--data",
            str(args.data), "--batch-size", str(args.batch_size), "--steps", str(args.steps)]
    before = os.getloadavg()[0]
    print(f"{framework} T={T} (load average {before:.1f})", flush=True)
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{framework} T={T} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(framework=framework, load_average=[before, os.getloadavg()[0]])
    return result


def _median_run(runs: list[dict]) -> dict:
    """The run of median speed (the lower middle one of an even count), with every run's speed alongside."""
    ranked = sorted(runs, key=lambda r: r["images_per_second"])
    return dict(ranked[(len(ranked) - 1) // 2], all_images_per_second=[r["images_per_second"] for r in runs])


def _machine() -> dict:
    model, flags = platform.processor(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "fma", "amx"))]
                break
    except OSError:
        pass
    return {"cpu": model, "instruction_sets": sorted(flags), "cores": os.cpu_count(), "python": platform.python_version()}


def markdown(report: dict) -> str:
    lines = ["# Fine-tuning speed", "",
             "Written by `python docs/scripts/benchmark_finetune.py` (see its docstring for the networks and what is "
             f"timed). VGG / Fashion-MNIST, batch {report['batch_size']}, {report['steps']} timed training steps "
             f"after one warm-up, {report['threads']} threads, one run"
             + (f" of {report['repeats']} interleaved rounds" if report.get("repeats", 1) > 1 else "")
             + f". Machine: {report['machine']['cpu']} "
             f"({', '.join(report['machine']['instruction_sets'])}), {report['machine']['cores']} cores.",
             ""]
    if report.get("note"):
        lines += [report["note"], ""]
    if report.get("peers_keep_freed_memory"):
        lines += [f"The peers ran with `GLIBC_TUNABLES={KEEP_FREED_MEMORY}`: glibc keeping freed memory, as snncc's "
                  "training sets it (runtime/torch_memory.py).", ""]
    header = "| T | " + " | ".join(f"{f} (images/s)" for f in report["frameworks"]) + " | snncc / faster peer |"
    lines += [header, "|" + "---:|" * (len(report["frameworks"]) + 2)]
    for T, row in report["results"].items():
        cells = [f"{row[f]['images_per_second']:.1f}" if f in row else "" for f in report["frameworks"]]
        peers = [row[f]["images_per_second"] for f in row if f in PEERS]
        ratio = f"{row['snncc']['images_per_second'] / max(peers):.2f}x" if peers and "snncc" in row else ""
        lines.append(f"| {T} | " + " | ".join(cells) + f" | {ratio} |")
    repeats = report.get("repeats", 1)
    if repeats > 1:
        lines += ["", f"Each figure is the median of {repeats} runs in interleaved rounds; every run (images/s): "
                  + "; ".join(f"T={T} " + ", ".join(f"{f} " + "/".join(f"{v:.1f}" for v in r["all_images_per_second"])
                                                  for f, r in row.items())
                              for T, row in report["results"].items()) + "."]
    lines += ["", "Load average (1 minute) before and after each reported run: " + "; ".join(
        f"T={T} " + ", ".join(f"{f} {r['load_average'][0]:.1f}-{r['load_average'][1]:.1f}" for f, r in row.items())
        for T, row in report["results"].items()) + "."]
    lines += ["", "Peak resident memory of each process (MiB): " + "; ".join(
        f"T={T} " + ", ".join(f"{f} {r['peak_rss_mib']:.0f}" for f, r in row.items())
        for T, row in report["results"].items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--timesteps", default="4,8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each (framework, T); the median is reported")
    parser.add_argument("--with-peers", default=None, help="the Python of the peers' virtual environment")
    parser.add_argument("--with-baseline", default=None,
                        help="a Python whose installed snncc is an earlier version, run as snncc-baseline")
    parser.add_argument("--note", default="", help="a sentence put above the table (e.g. what else ran)")
    parser.add_argument("--peers-keep-freed-memory", action="store_true",
                        help="run the peers with glibc keeping freed memory, as snncc's training does")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "finetune-speed.json")
    parser.add_argument("--markdown", type=Path, default=REPO / "docs" / "finetune-speed.md")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite --markdown from the report already in --out (no measurement)")
    parser.add_argument("--child", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.out.read_text())
        report["results"] = {int(T): row for T, row in report["results"].items()}
        sys.path.insert(0, str(REPO))
        from snncc import fileio

        fileio.write_text(args.markdown, markdown(report))
        print(markdown(report))
        return
    if args.child:
        args.timesteps = int(args.timesteps)
        print(json.dumps(child(args)))
        return
    frameworks = (["snncc"] + ([BASELINE] if args.with_baseline else [])
                  + (list(PEERS) if args.with_peers else []))
    python = {"snncc": sys.executable, BASELINE: args.with_baseline, **{p: args.with_peers for p in PEERS}}
    timesteps = [int(t) for t in args.timesteps.split(",")]
    runs: dict = {(T, f): [] for T in timesteps for f in frameworks}
    for _ in range(args.repeats):  # interleaved rounds: a change of load hits every framework alike
        for T in timesteps:
            for f in frameworks:
                runs[T, f].append(_spawn(python[f], f, T, args))
    results = {T: {f: _median_run(runs[T, f]) for f in frameworks} for T in timesteps}
    report = {"schema_version": 2, "batch_size": args.batch_size, "steps": args.steps, "threads": args.threads,
              "repeats": args.repeats, "frameworks": frameworks, "machine": _machine(), "note": args.note,
              "peers_keep_freed_memory": args.peers_keep_freed_memory,
              "results": results}
    sys.path.insert(0, str(REPO))
    from snncc import fileio

    fileio.write_json(report, args.out)
    fileio.write_text(args.markdown, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
