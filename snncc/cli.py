"""The ``snncc`` command line: compile, eval, inspect, demo and finetune (snncc/finetune/command.py).

Errors reach stderr as one line ``snncc: error: ...`` with exit status 2 (no traceback unless ``--debug``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from importlib import resources
from pathlib import Path

from snncc import __version__
from snncc.data import InputScaling, load_dataset
from snncc.data.loader import SUPPORTED as DATA_FORMATS
from snncc.data.scaling import SYNTAX as SCALING_SYNTAX
from snncc import distributed
from snncc.distributed import World
from snncc.errors import SnnccError, SnnccWarning
from snncc.finetune.command import add_parser as add_finetune_parser

DEFAULT_TIMESTEPS = "8,16,32,64,128"


def _timesteps(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"time steps must be positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _scaling(text: str) -> InputScaling:
    try:
        return InputScaling.parse(text)
    except SnnccError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _size(text: str) -> tuple[int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHT,WIDTH in pixels, got {text!r}")
    return values


def _load(path: Path, split: str, limit: int | None, args: argparse.Namespace, role: str):
    """Load a data set with the image options of the command line and print what was found."""
    data = load_dataset(path, split=split, limit=limit, resize=args.resize, center_crop=args.center_crop)
    print(f"{role}: {data.info.describe()}")
    return data


def _sample(name: str) -> Path:
    return Path(str(resources.files("snncc") / "sample" / name))


def cmd_compile(args: argparse.Namespace) -> int:
    from snncc.api import compile_model
    from snncc.ir import save
    from snncc.passes import pipeline_notes

    calibration = None
    if args.calib is not None:
        calibration, _ = _load(args.calib, args.calib_split, args.calib_limit, args, "calibration data")
    graph = compile_model(args.model, method=args.method, calibration=calibration, pipeline=args.pipeline,
                          input_scaling=args.input_scaling, progress=not args.quiet, fs_steps=args.fs_steps)
    scaling = InputScaling.from_json(graph.attrs["input_scaling"])
    print(f"input scaling: {scaling.describe()}; {graph.attrs['input_scaling_source']}")
    save(graph, args.output)
    print(f"wrote {args.output} ({graph.attrs['pipeline']})")
    for note in pipeline_notes(graph.attrs["pipeline"]) if graph.attrs["pipeline"] else []:
        print(f"note: {note}")
    return 0


def _run_eval(graph, args: argparse.Namespace, onnx_model) -> dict:
    from snncc.api import evaluate, format_table, model_name, plot_accuracy, write_json
    from snncc.runtime import is_temporal

    from snncc.data import check_against_model

    data = _load(args.data, args.split, args.limit, args, "data")
    x, y = data
    check_against_model(data.info, graph.op(graph.input_nodes()[0]).shape, graph.types()[graph.outputs[0]].size,
                        where=str(args.snn) if getattr(args, "snn", None) else "the model")
    timesteps = args.timesteps or _timesteps(DEFAULT_TIMESTEPS)
    world = World.from_env(getattr(args, "device", None) or "cpu")  # torchrun: every rank simulates its shard
    report = evaluate(graph, x, y, timesteps, onnx_model=onnx_model, backend=args.backend,
                      batch_size=args.batch_size, threads=args.threads, progress=not args.quiet,
                      device=args.device, world=world)
    report["data"] = {**data.info.to_json(), "path": str(args.data), "split": args.split}
    if not world.is_writer:
        return report
    if is_temporal(graph) and args.timesteps is not None:  # FS/AMOS: one answer, at the latency
        print(f"note: --timesteps is ignored: {report['coding']} coding answers once, at its latency of "
              f"{report['latency']} steps")
    print(format_table(report))
    if args.report:
        write_json(report, args.report)
        print(f"wrote {args.report}")
    if args.plot:
        name = model_name(graph, onnx_model)
        plot_accuracy({name: report}, args.plot, title=f"{name}: {report['images']:,} images")
        print(f"wrote {args.plot}")
    return report


def cmd_eval(args: argparse.Namespace) -> int:
    from snncc.ir import load

    graph = load(args.snn)
    if args.input_scaling is not None:
        graph.attrs["input_scaling"] = args.input_scaling.to_json()
    _run_eval(graph, args, args.onnx or _recorded_source(graph))
    return 0


def _recorded_source(graph) -> Path | None:
    """The ONNX file the graph was compiled from, if it is still where compile found it, unchanged."""
    from snncc.api import sha256_file

    source = graph.attrs.get("source_model") or {}
    path = Path(source.get("path", ""))
    if path.is_file() and sha256_file(path) == source.get("sha256"):
        return path
    return None


def cmd_inspect(args: argparse.Namespace) -> int:
    from snncc.api import describe
    from snncc.frontend.onnx import import_onnx
    from snncc.ir import load

    path = Path(args.file)
    graph = import_onnx(path) if path.suffix == ".onnx" else load(path)
    print(describe(graph))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Compile the bundled LeNet-5 and evaluate it on the bundled 1,000 MNIST test images."""
    from snncc.api import compile_model
    from snncc.ir import save

    model = _sample("lenet5-mnist.onnx")
    calibration, _ = load_dataset(_sample("mnist-train-1000.npz"))
    scaling = InputScaling(scale=1 / 255)
    print(f"compiling {model.name} with rate coding (calibration: 1,000 MNIST training images)")
    graph = compile_model(model, calibration=calibration, input_scaling=scaling, progress=not args.quiet)
    out = Path(args.out)
    save(graph, out / "lenet5-mnist.snn")
    args.data, args.split, args.limit = _sample("mnist-test-1000.npz"), "test", None
    args.report, args.plot = out / "report.json", out / "accuracy.png"
    _run_eval(graph, args, model)
    return 0


def image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resize", type=_size, default=None, metavar="H,W",
                   help="resize every image of an image folder to H x W pixels (bilinear)")
    p.add_argument("--center-crop", type=_size, default=None, metavar="H,W",
                   help="crop the center H x W pixels of every image of an image folder (after --resize)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="snncc", description="ANN-to-SNN conversion compiler")
    parser.add_argument("--version", action="version", version=f"snncc {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("compile", parents=[common], help="compile an ONNX model into a .snn file")
    p.add_argument("model", type=Path, help="ONNX model, or an SNN as an NIR file (.nir, imported as it is)")
    p.add_argument("-o", "--output", type=Path, required=True, help="output .snn file")
    p.add_argument("--method", default="rate", choices=["rate", "fs", "amos"],
                   help="conversion method: rate (IF neurons), fs (few-spike neurons, Stoeckl & Maass 2021) or amos "
                        "(at most one spike per neuron, Stoeckl & Maass 2020)")
    p.add_argument("--fs-steps", type=positive_int, default=None,
                   help="K, time steps per layer of the fs and amos methods (default 8)")
    p.add_argument("--calib", type=Path, help="calibration data: " + DATA_FORMATS)
    p.add_argument("--calib-split", default="train", help="split of an IDX directory used for calibration")
    p.add_argument("--calib-limit", type=int, default=2000, help="number of calibration samples")
    p.add_argument("--pipeline", help="pass pipeline, e.g. 'canonicalize,normalize{percentile=99.9},convert-rate'")
    p.add_argument("--input-scaling", type=_scaling, default=None,
                   help=f"map stored pixels to model inputs x' = (x * SCALE - MEAN[c]) / STD[c]: {SCALING_SYNTAX}; "
                        "default: what the model declares in its ONNX metadata, else none")
    image_options(p)
    p.set_defaults(func=cmd_compile)

    def eval_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--timesteps", type=_timesteps, default=None,
                       help=f"comma-separated list of T of a rate-coded model (default {DEFAULT_TIMESTEPS}); FS and "
                            "AMOS models answer at their latency and ignore it")
        p.add_argument("--batch-size", type=int, default=100)

    def simulator_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--backend", default=None, metavar="NAME",
                       help="SNN simulator: cython, the compiled runtime (the default where it is built; the same "
                            "spikes as the reference, several times faster), or reference, the numpy reference "
                            "simulator (the default otherwise), or torch, the torch lowering (every coding, on the CPU or "
                            "a CUDA device, see --device); --backend cython without the build falls back to the reference with a warning")
        p.add_argument("--threads", type=positive_int, default=None,
                       help="threads of the Cython runtime (default: OMP_NUM_THREADS or all cores); numpy's BLAS "
                            "runs on one thread during its batches unless OPENBLAS_NUM_THREADS is set")
        p.add_argument("--device", default=None, metavar="DEVICE",
                       help="where the torch backend runs: cpu (its default) or cuda (needs a CUDA device that torch "
                            "sees); only with --backend torch")

    p = sub.add_parser("eval", parents=[common], help="evaluate ANN and SNN accuracy, spikes and synaptic operations")
    p.add_argument("snn", type=Path, help=".snn file written by compile")
    p.add_argument("--data", type=Path, required=True, help=DATA_FORMATS)
    p.add_argument("--split", default="test")
    p.add_argument("--onnx", type=Path, help="the original ONNX model, for the ANN accuracy (default: the model "
                   "the .snn was compiled from, if it is unchanged at the recorded path)")
    p.add_argument("--limit", type=int, help="evaluate the first N samples only")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--plot", type=Path, help="write a PNG of accuracy against T here")
    p.add_argument("--input-scaling", type=_scaling, default=None,
                   help=f"override the input scaling recorded in the .snn file: {SCALING_SYNTAX}")
    image_options(p)
    eval_options(p)
    simulator_options(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("inspect", parents=[common], help="print layers, neurons, synapses and codings of a .snn or .onnx file")
    p.add_argument("file", type=Path)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", parents=[common], help="compile the bundled LeNet-5 and evaluate it on bundled MNIST images")
    p.add_argument("--out", default="snncc-demo", help="directory for the .snn file, report and plot")
    simulator_options(p)
    p.set_defaults(timesteps=_timesteps("8,16,32,64"), batch_size=100, resize=None, center_crop=None)
    p.set_defaults(func=cmd_demo)

    from snncc.targets.command import add_parsers as add_target_parsers  # targets, check, emit, verify

    add_target_parsers(sub, common)
    add_finetune_parser(sub, common)
    return parser


def _format_warning(message, category, filename, lineno, line=None, _default=warnings.formatwarning) -> str:
    """snncc's own warnings as one line ``snncc: warning: ...``; others as Python formats them."""
    if issubclass(category, SnnccWarning):
        return f"snncc: warning: {message}\n"
    return _default(message, category, filename, lineno, line)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning, formatter = _format_warning, warnings.formatwarning
    finished = False
    try:
        if os.environ.get("RANK", "0") != "0":
            # Under torchrun only rank 0 reports: the other ranks keep stderr (their errors) but print nothing
            # and show no progress bars.
            args.quiet = True
            with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
                status = args.func(args)
        else:
            status = args.func(args)
        finished = True
        return status
    except SnnccError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"snncc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snncc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`snncc inspect m.snn | head`): stop quietly, as command-line tools do.
        # stdout now points at /dev/null so that the interpreter's final flush raises nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the broken pipe
    finally:
        distributed.leave(finished)  # under torchrun: leave the process group before the interpreter shuts down
        warnings.formatwarning = formatter


if __name__ == "__main__":
    sys.exit(main())
