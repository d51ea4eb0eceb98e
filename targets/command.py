"""The command line of the targets: ``snncc targets``, ``snncc check``, ``snncc emit`` and ``snncc verify``.

``add_parsers(subparsers, common)`` adds the four subcommands (``snncc/cli.py`` calls it); each sets ``func`` to
its ``run_*`` function. Errors are :class:`~snncc.errors.SnnccError` s, which the command line prints as one line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from snncc.cli import positive_int  # one parser of positive integers for every command
from snncc.targets.base import TargetError, all_targets, get_target


def run_targets(args: argparse.Namespace) -> int:
    for target in all_targets().values():
        print(target.describe())
        if args.verbose:
            for key, value in target.constraints.to_json().items():
                print(f"    {key}: {value}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from snncc.ir import load

    target = get_target(args.target)
    violations = target.check(load(args.snn))
    if not violations:
        print(f"{args.snn} fits {target.name}")
        return 0
    print(f"{args.snn} does not fit {target.name} ({len(violations)} violation{'s' if len(violations) > 1 else ''}):")
    for v in violations:
        print(f"  {v}")
    return 1


def _data(args: argparse.Namespace, limit: int | None):
    from snncc.data import load_dataset

    data = load_dataset(args.data, split=args.split, limit=limit)
    print(f"data: {data.info.describe()}")
    return data


def run_emit(args: argparse.Namespace) -> int:
    from snncc.ir import load
    from snncc.targets.emit import emit, resource_table

    activity = _data(args, args.limit)[0] if args.data is not None else None
    manifest = emit(load(args.snn), args.target, args.output, timesteps=args.timesteps, activity_data=activity)
    print(f"wrote {args.output} ({manifest['target']}, {len(manifest['files'])} files)")
    print(resource_table(manifest["resources"]))
    if manifest["synops_per_inference"] is not None:
        energy = manifest["energy"]
        print(f"synaptic operations per inference: {manifest['synops_per_inference']:,.0f}"
              + (f", about {energy['joules'] * 1e6:.3g} uJ ({energy['source']})" if energy.get("joules") else ""))
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from snncc.fileio import write_json
    from snncc.targets.emit import resource_table, verify

    x, y = _data(args, args.limit)
    report = verify(args.bundle, x, y, backend_float=args.backend, progress=True)  # the float SNN, then the chip
    print(f"bundle {args.bundle}: every file matches its sha256")
    print(f"{report['images']} images, T={report['timesteps']}: float_accuracy {report['float_accuracy']:.4f}, "
          f"target_accuracy {report['target_accuracy']:.4f}, prediction_agreement "
          f"{report['prediction_agreement']:.4f}")
    print(resource_table(report["resources"]))
    if args.report:
        write_json(report, args.report)
        print(f"wrote {args.report}")
    return 0


def add_parsers(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("targets", parents=[common], help="list the hardware targets and their constraints")
    p.add_argument("-v", "--verbose", action="store_true", help="print every constraint")
    p.set_defaults(func=run_targets)

    p = sub.add_parser("check", parents=[common], help="list every way a .snn model does not fit a target")
    p.add_argument("snn", type=Path, help=".snn file written by compile")
    p.add_argument("--target", required=True, help="target name (snncc targets lists them); loihi1{chips=N} / "
                   "loihi2{chips=N}: a system of N chips")
    p.set_defaults(func=run_check)

    p = sub.add_parser("emit", parents=[common], help="legalize a .snn model for a target and write its bundle")
    p.add_argument("snn", type=Path, help=".snn file written by compile")
    p.add_argument("--target", required=True, help="target name (snncc targets lists them); loihi1{chips=N} / "
                   "loihi2{chips=N}: a system of N chips")
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle directory (written atomically)")
    p.add_argument("--timesteps", type=positive_int, default=32, help="answer steps of the rate-coded model (32)")
    p.add_argument("--data", type=Path, default=None,
                   help="sample data to measure synaptic operations per inference (and the energy) with the emulator")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=100, help="samples of --data to measure on (100)")
    p.set_defaults(func=run_emit)

    p = sub.add_parser("verify", parents=[common],
                       help="check a bundle's hashes and compare its emulator with the float SNN on data")
    p.add_argument("bundle", type=Path, help="bundle directory written by emit")
    p.add_argument("--data", type=Path, required=True, help="data set (as snncc eval takes it)")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=positive_int, default=None, help="the first N samples only")
    p.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--backend", default=None, help="simulator of the float SNN (default: as snncc eval)")
    p.set_defaults(func=run_verify)


__all__ = ["TargetError", "add_parsers"]
