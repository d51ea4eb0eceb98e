"""Knowledge distillation from the source ANN: the ANN's logits as soft targets of a fine-tuning loss.

Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (NIPS deep learning workshop, 2015): a student
learns from the teacher's output distribution softened by a temperature ``tau`` as well as from the labels. Here the
teacher is the ANN the SNN was converted from (it is at hand, and its logits are on the scale of the SNN's readout,
which a conversion preserves), and the student is the SNN's readout ``r(T)``::

    loss = (1 - alpha) * L_method(r, y) + alpha * tau^2 * KL(softmax(a / tau) || softmax(r / tau))

with ``a`` the ANN's logits on the same image, ``L_method`` the method's own loss (the cross-entropy of
``surrogate`` or ``proxy``) and ``tau^2`` keeping the soft term's gradient on the scale of the hard one's as ``tau``
changes (Hinton et al., section 2). The KL term tells the SNN, besides the class, how the ANN ranks the other
classes: a dense target for every image, where the cross-entropy of a converged class carries almost no gradient.
ANN-to-SNN work uses the same loss to train converted or hybrid SNNs against their ANN (e.g. Xu et al., "Constructing
deep spiking neural networks from artificial neural networks with knowledge distillation", CVPR 2023).

The teacher's logits are computed once, before training, by onnxruntime on the model inputs of every training image
(:func:`teacher_logits`): deterministic, so a resumed run sees the same targets, and no ANN runs in the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from snncc.errors import SnnccError
from snncc.ir import Graph

#: A teacher: model inputs (N, ...) float32 to logits (N, classes).
Teacher = Callable[[np.ndarray], np.ndarray]


def teacher_file(graph: Graph, given: str | Path | None = None) -> Path:
    """The ONNX file of the ANN to distil from: ``given``, else the model ``graph`` was compiled from
    (``attrs["source_model"]``: its path, checked against the SHA-256 recorded at compile time)."""
    from snncc.api import sha256_file

    if given is not None:
        path = Path(given)
        if not path.is_file():
            raise SnnccError(f"the teacher ANN {path} does not exist; give the ONNX file the .snn was compiled from "
                             "with --teacher")
        return path
    source = graph.attrs.get("source_model") or {}
    recorded = source.get("path")
    if recorded is None:
        raise SnnccError("distillation needs the ANN the SNN was converted from, and this .snn does not record an "
                         "ONNX file it came from (compiled from a torch module or an in-memory model); give the ANN "
                         "with --teacher ANN.onnx")
    path = Path(recorded)
    if not path.is_file():
        raise SnnccError(f"the ANN this .snn was compiled from, {path}, is not there any more; give its ONNX file "
                         "with --teacher ANN.onnx")
    if source.get("sha256") and sha256_file(path) != source["sha256"]:
        raise SnnccError(f"{path} has changed since this .snn was compiled from it (SHA-256 differs); give the "
                         "ANN it was converted from with --teacher ANN.onnx")
    return path


def onnx_teacher(path: str | Path) -> Teacher:
    """The teacher that runs the ONNX model at ``path`` under onnxruntime (:func:`snncc.api.ann_logits`)."""
    from snncc.api import ann_logits

    return lambda x: ann_logits(path, x)


def source_teacher(graph: Graph, given: str | Path | None = None) -> Teacher:
    """:func:`onnx_teacher` of :func:`teacher_file`."""
    return onnx_teacher(teacher_file(graph, given))


def teacher_logits(teacher: Teacher, x: np.ndarray, classes: int) -> np.ndarray:
    """The teacher's logits on model inputs ``x``, (N, classes) float32; an error where its outputs are not one
    logit per class of the SNN's readout."""
    logits = np.asarray(teacher(np.ascontiguousarray(x, dtype=np.float32)), dtype=np.float32)
    logits = logits.reshape(len(x), -1) if len(x) else logits.reshape(0, classes)
    if logits.shape != (len(x), classes):
        raise SnnccError(f"the teacher ANN gives {logits.shape[1]} outputs per image and the SNN's readout "
                         f"{classes}; distil from the ANN this SNN was converted from (--teacher)")
    if not np.isfinite(logits).all():
        raise SnnccError("the teacher ANN gives non-finite logits on the training images; check the data and the "
                         "--teacher model")
    return logits


def distillation_loss(student, teacher, temperature: float):
    """``tau^2 KL(softmax(teacher / tau) || softmax(student / tau))`` averaged over the batch (torch tensors
    (B, classes); the gradient flows into ``student`` only)."""
    import torch.nn.functional as F

    soft = F.log_softmax(teacher.detach() / temperature, dim=1)
    return temperature ** 2 * F.kl_div(F.log_softmax(student / temperature, dim=1), soft, reduction="batchmean",
                                       log_target=True)
