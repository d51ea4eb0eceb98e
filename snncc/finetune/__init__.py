"""Fine-tuning converted SNNs: the Python API behind ``snncc finetune``.

>>> from snncc.data import load_dataset
>>> from snncc.finetune import FinetuneOptions, finetune
>>> train = load_dataset("data/fashion-mnist", split="train", limit=20000)
>>> tuned = finetune(graph, train, "surrogate", FinetuneOptions(timesteps=4, epochs=1, lr=3e-4))

``graph`` is an SNN-level graph (a compiled ``.snn``); ``data`` the training images as stored, ``(x, y)`` or a
:class:`~snncc.data.Dataset` (its path is then recorded); the input scaling recorded in the graph is applied as
``snncc eval`` applies it. The result is a new graph with the trained parameters written into its ops and a
``finetune`` record in its attrs (:func:`finetune`); its accuracy is measured by the runtime (``snncc eval``), not
by torch. Methods: :data:`snncc.finetune.methods.METHODS`. torch is imported by this package and by the lowering
only.
"""

from __future__ import annotations

import time

import numpy as np

from snncc.errors import SnnccError
from snncc.finetune.methods import METHODS, Method, method_of
from snncc.finetune.options import FinetuneOptions
from snncc.ir import Graph, ops

__all__ = ["METHODS", "FinetuneOptions", "Method", "check_graph", "finetune", "for_target"]


def check_graph(graph: Graph, where: str = "the graph") -> None:
    """Refuse what no fine-tuning method takes: a graph that is not at the SNN level."""
    if graph.level != ops.SNN:
        raise SnnccError(f"{where} is at the {graph.level} level; fine-tuning takes a converted SNN (.snn written "
                         "by snncc compile, e.g. with --method rate)")


def _check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SnnccError(f"--device {device} was asked for but torch sees no CUDA device here; use --device cpu")


def for_target(graph: Graph, target: str) -> Graph:
    """``graph`` in the float form of hardware target ``target`` (``Target.trainable_form``: for Loihi the
    spiking max pooling as ``loihi-fold``'s OR gates and, on Loihi 1, the reset to zero), the graph that
    fine-tuning for the chip trains; a coding or model the target refuses, or an unknown target, is a
    :class:`~snncc.targets.base.TargetError` naming the remedy."""
    from snncc.targets.base import get_target

    check_graph(graph)
    return get_target(target).trainable_form(graph)


def finetune(graph: Graph, data, method: str = "surrogate", options: FinetuneOptions | None = None,
             progress: bool = False, world=None, target: str | None = None, teacher=None) -> Graph:
    """Fine-tune ``graph`` on ``data`` (stored training images and labels) by ``method``; returns the new graph.

    Its ``attrs["finetune"]`` records the method, the options, the data (path where known, SHA-256 of the arrays,
    count, limit, held-back validation images), the epochs and each epoch's loss, training and validation
    accuracy and time; a record already there (a graph fine-tuned before) is kept under ``"previous"``.
    ``world`` (:class:`snncc.distributed.World`): the data-parallel processes under torchrun, every rank passing
    the same data (:mod:`snncc.finetune.trainer`). ``target``: fine-tune the target's float form of the graph
    (:func:`for_target`) instead, recorded as ``attrs["finetune"]["target"]``; ``snncc emit --target`` takes the
    result and refuses it for another target. ``teacher``: with ``options.distill > 0``, a function from model
    inputs to the ANN's logits to distil from (:mod:`snncc.finetune.distill`; default: the ONNX file of
    ``options.teacher``, else the model the graph was compiled from, recorded as ``attrs["finetune"]["teacher"]``)."""
    options = options or FinetuneOptions()
    chosen: Method = method_of(method)
    check_graph(graph)
    teacher_record = None
    if options.distill > 0:
        if not chosen.trains:
            raise SnnccError(f"--distill trains against the ANN's logits; method {chosen.name!r} does not train "
                             "(it is training-free); drop --distill or use --method surrogate")
        if teacher is None:  # resolved before any data are read: a missing ANN fails at once
            from snncc.api import sha256_file
            from snncc.finetune.distill import onnx_teacher, teacher_file

            path = teacher_file(graph, options.teacher)
            teacher = onnx_teacher(path)
            teacher_record = {"path": str(path.resolve()), "sha256": sha256_file(path)}
        else:
            teacher_record = {"path": None, "sha256": None}
    source = graph
    if target is not None:
        graph = for_target(graph, target)
    _check_device(options.device)
    x, y = data
    x, y = np.asarray(x), np.asarray(y)
    if options.limit is not None:
        x, y = x[:options.limit], y[:options.limit]
    start = time.perf_counter()
    if not chosen.trains:
        from snncc.finetune.trainer import model_inputs

        reference = None if source is graph else (source, model_inputs(source, x))
        tuned = chosen.transform(graph, model_inputs(graph, x), options, reference)
        history, data_hash = [], None
    else:
        from snncc.finetune.trainer import train

        result = train(graph, x, y, chosen, options, progress=progress, world=world, teacher=teacher)
        tuned, history, data_hash = result.graph, result.history, result.data_sha256
    if data_hash is None:
        from snncc.finetune.checkpoint import data_sha256

        data_hash = data_sha256(x, y)
    info = getattr(data, "info", None)
    record = {"method": chosen.name, "target": graph.attrs.get("target_form"), "options": options.to_json(),
              "data": {"path": info.path if info is not None else None, "sha256": data_hash, "images": int(len(x)),
                       "limit": options.limit, "val_limit": options.val_limit if chosen.trains else 0},
              "epochs": len(history), "history": history,
              "val_accuracy": [e.get("val_accuracy") for e in history], "seconds": time.perf_counter() - start}
    if teacher_record is not None:
        record["teacher"] = teacher_record
    if "finetune" in graph.attrs:
        record["previous"] = graph.attrs["finetune"]
    tuned.attrs["finetune"] = record
    return tuned
