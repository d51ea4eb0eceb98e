"""``snncc finetune IN.snn --data DATA -o OUT.snn``: the command line of :func:`snncc.finetune.finetune`.

The training images are the ``train`` split of ``--data`` (the whole file for formats without splits), the first
``--limit`` of them; the last ``--val-limit`` are held back for validation. Everything is checked before training
starts (the .snn's level and lowering, the data's shape and labels against the model, the device, a checkpoint to
resume), and the output is written once, atomically, at the end: an error or Ctrl-C leaves no partial ``.snn``.
torch is imported only when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snncc.finetune.methods import METHODS
from snncc.finetune.options import OPTIMIZERS, SCHEDULES, FinetuneOptions


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register ``finetune`` with the subcommands of ``snncc`` (``common``: the shared --debug/--quiet)."""
    from snncc.data.loader import SUPPORTED as DATA_FORMATS

    defaults = FinetuneOptions()
    p = subparsers.add_parser("finetune", parents=[common],
                              help="fine-tune a converted .snn on training data (surrogate gradients)")
    p.add_argument("snn", type=Path, help=".snn file written by compile (SNN level)")
    p.add_argument("--data", type=Path, required=True, help="training data (its train split): " + DATA_FORMATS)
    p.add_argument("-o", "--output", type=Path, required=True, help="the fine-tuned .snn file")
    p.add_argument("--method", default="surrogate",
                   help=f"fine-tuning method: {', '.join(f'{m.name} ({m.summary})' for m in METHODS.values())}")
    p.add_argument("--target", default=None,
                   help="fine-tune the graph as this hardware target will run it (loihi1, loihi2: its float form, "
                        "OR gates for max pooling and the chip's reset, snncc targets lists them); emit the result "
                        "with the same --target")
    p.add_argument("--timesteps", type=int, required=True, help="T, the latency the loss is computed at")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr, help=f"peak learning rate (default {defaults.lr:g})")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--optimizer", default=defaults.optimizer, choices=OPTIMIZERS)
    p.add_argument("--schedule", default=defaults.schedule, choices=SCHEDULES,
                   help="learning rate over the run: cosine decay to 0, step (/10 at 1/2 and 3/4 of the epochs) "
                        "or none")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the shuffling and of torch")
    p.add_argument("--limit", type=int, default=None, help="use the first N training images")
    p.add_argument("--val-limit", type=int, default=defaults.val_limit,
                   help=f"hold back the last N of them for validation after each epoch (default "
                        f"{defaults.val_limit}; 0: none)")
    p.add_argument("--checkpoint", type=Path, default=None, help="write a checkpoint into this directory after "
                   "every epoch")
    p.add_argument("--resume", type=Path, default=None, help="continue from the checkpoint in this directory (the "
                   "same .snn, data and options; it keeps being updated unless --checkpoint names another)")
    p.add_argument("--device", default=defaults.device, help="cpu or cuda")
    p.add_argument("--surrogate", default=defaults.surrogate, help="surrogate derivative of the spikes: "
                   "fast-sigmoid, arctan, triangle, logistic or rectangle (SEW "
                   "gates always use their own, GATE_SURROGATE)")
    p.add_argument("--width", type=float, default=defaults.width, help="surrogate width in membrane units")
    p.add_argument("--distill", type=float, default=defaults.distill, metavar="ALPHA",
                   help="weight (0-1) of knowledge distillation from the ANN's logits (Hinton et al. 2015): the loss "
                        "is (1 - ALPHA) x the method's + ALPHA x the distillation term (default 0: labels only)")
    p.add_argument("--temperature", type=float, default=defaults.temperature,
                   help=f"softmax temperature of the distillation term (default {defaults.temperature:g})")
    p.add_argument("--teacher", type=Path, default=None,
                   help="ONNX file of the ANN to distil from (default: the model the .snn was compiled from)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from snncc.data import check_against_model, load_dataset
    from snncc.distributed import World
    from snncc.finetune import check_graph, finetune
    from snncc.finetune.methods import method_of
    from snncc.ir import load, save

    options = FinetuneOptions(timesteps=args.timesteps, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                              optimizer=args.optimizer, schedule=args.schedule, seed=args.seed, limit=args.limit,
                              val_limit=args.val_limit, checkpoint=args.checkpoint, resume=args.resume,
                              device=args.device, surrogate=args.surrogate, width=args.width,
                              distill=args.distill, temperature=args.temperature, teacher=args.teacher)
    method_of(args.method)
    graph = load(args.snn)
    check_graph(graph, str(args.snn))
    if options.distill > 0 and method_of(args.method).trains:  # the teacher ANN found before any data are read
        from snncc.finetune.distill import teacher_file

        teacher_file(graph, options.teacher)
    form = graph
    if args.target is not None:  # the chip's float form, before any data are read: a refusal costs nothing
        from snncc.finetune import for_target

        form = for_target(graph, args.target)
        print(f"fine-tuning the {args.target} form of {args.snn} ({form.attrs['pipeline']})")
    _check_lowering(form, options)
    data = load_dataset(args.data, split="train", limit=args.limit)
    print(f"training data: {data.info.describe()}")
    check_against_model(data.info, graph.op(graph.input_nodes()[0]).shape, graph.types()[graph.outputs[0]].size,
                        where=str(args.snn))
    if options.resume is not None:  # a bad checkpoint fails now, not after the data are scaled
        from snncc.finetune.checkpoint import load_checkpoint

        load_checkpoint(options.resume)
    world = World.from_env(options.device)  # torchrun: data-parallel, rank 0 writes
    tuned = finetune(graph, data, args.method, options, progress=not args.quiet, world=world, target=args.target)
    tuned.attrs["finetune"]["input"] = {"path": str(Path(args.snn).resolve()), "sha256": _sha256(args.snn)}
    if world.size > 1:
        tuned.attrs["finetune"]["processes"] = world.size
    if not world.is_writer:
        return 0
    save(tuned, args.output)
    last = tuned.attrs["finetune"]["history"][-1:] or [{}]
    val = last[0].get("val_accuracy")
    summary = f"; validation accuracy {100 * val:.2f}% at T={options.timesteps}" if val is not None else ""
    epochs = tuned.attrs["finetune"]["epochs"]
    print(f"wrote {args.output} ({args.method}, {epochs} epoch{'s' * (epochs != 1)}{summary}); measure it "
          f"with snncc eval {args.output} --data DATA --timesteps {options.timesteps}"
          + (f", or on the chip's emulator with snncc emit {args.output} --target {args.target} -o DIR and "
             "snncc verify DIR --data DATA" if args.target else ""))
    return 0


def _check_lowering(graph, options: FinetuneOptions) -> None:
    """Lower the graph once before any data are read: an op or neuron model the lowering refuses, or a missing
    CUDA device, fails here with its own message."""
    from snncc.finetune import _check_device
    from snncc.runtime.torch_lowering import lower

    _check_device(options.device)
    lower(graph, surrogate=options.surrogate, width=options.width, device="cpu")


def _sha256(path: Path) -> str:
    from snncc.api import sha256_file

    return sha256_file(path)
