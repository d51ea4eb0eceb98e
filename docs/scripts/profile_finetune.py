"""Where a training step of snncc's torch lowering spends its time: one surrogate-gradient step (forward over T
steps, cross-entropy at T, backward) of the VGG / Fashion-MNIST lowering, under torch.profiler; writes the wall
times of the forward and backward passes, each lowered module's forward time and the operators' self CPU times to
docs/results/finetune-profile.json.

    python docs/scripts/profile_finetune.py [--timesteps 4,8] [--batch-size 64] [--threads 2] [--note "..."]

The network and its compilation are docs/scripts/benchmark_finetune.py's (``snncc_step``'s model). One warm-up step,
then one profiled step per T; the profiler's own overhead inflates every figure, so compare ratios within a run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def profile(timesteps: int, batch_size: int, data: Path) -> dict:
    import torch

    sys.path.insert(0, str(HERE))
    from benchmark_finetune import CALIBRATION, MODEL, training_images

    from snncc.api import compile_model
    from snncc.data import InputScaling
    from snncc.runtime.torch_lowering import lower

    calibration, _ = training_images(data, CALIBRATION)
    graph = compile_model(MODEL, calibration=calibration)
    scaling = InputScaling.from_json(graph.attrs["input_scaling"])
    module = lower(graph)
    x, y = training_images(data, batch_size)
    x, y = torch.from_numpy(scaling.apply(x)), torch.from_numpy(y)
    forward_ms: dict[str, float] = {}

    def before(layer, inputs):
        layer._started = time.perf_counter()

    def after(layer, inputs, output):
        forward_ms[layer._label] = forward_ms.get(layer._label, 0.0) + 1e3 * (time.perf_counter() - layer._started)

    for node, i in module.index.items():
        layer = module.layers[i]
        layer._label = f"{node} ({type(layer).__name__})"
        layer.register_forward_pre_hook(before)
        layer.register_forward_hook(after)

    def step() -> tuple[float, float]:
        start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(module(x, timesteps).outputs[0][-1], y)
        middle = time.perf_counter()
        loss.backward()
        return middle - start, time.perf_counter() - middle

    step()
    forward_ms.clear()
    with torch.profiler.profile() as prof:
        forward_s, backward_s = step()
    ops = sorted(((e.key, e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()),
                 key=lambda row: -row[1])
    total = sum(ms for _, ms, _ in ops)
    return {"timesteps": timesteps, "batch_size": batch_size, "forward_s": forward_s, "backward_s": backward_s,
            "module_forward_ms": forward_ms,
            "operators": [{"name": n, "self_cpu_ms": ms, "calls": c, "share": ms / total} for n, ms, c in ops[:30]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--timesteps", default="4,8")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "finetune-profile.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    runs = [profile(int(t), args.batch_size, args.data) for t in args.timesteps.split(",")]
    sys.path.insert(0, str(REPO))
    from snncc import fileio

    fileio.write_json({"schema_version": 1, "threads": args.threads, "note": args.note, "runs": runs}, args.out)
    for run in runs:
        print(f"T={run['timesteps']}: forward {run['forward_s']:.2f} s, backward {run['backward_s']:.2f} s")
        for row in run["operators"][:12]:
            print(f"  {row['name']:42s} {row['self_cpu_ms']:9.1f} ms  {100 * row['share']:5.1f}%  x{row['calls']}")


if __name__ == "__main__":
    main()
