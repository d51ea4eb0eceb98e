"""The fine-tuning methods by name: :data:`METHODS`.

A :class:`Method` is one way of getting a better ``.snn`` from a converted one. Two kinds share the table:

- a **gradient method** has a ``loss(module, x, y, timesteps) -> (loss, logits)`` on a batch, with ``module`` the
  torch lowering of the graph (:func:`snncc.runtime.torch_lowering.lower`); the loop of
  :mod:`snncc.finetune.trainer` runs it epoch by epoch and writes the trained parameters back into the graph;
- a **training-free method** has a ``transform(graph, x, options) -> Graph`` that computes the new graph from
  (scaled) training images in one go, without the loop.

Registered: ``surrogate`` (here), ``proxy`` (proxy learning, Kheradpisheh, Mirsadeghi & Masquelier, IEEE Access
2022: a gradient method whose loss is the cross-entropy of the SNN's output pushed through the ANN's backward pass,
:mod:`snncc.finetune.proxy`) and ``calibrate`` (threshold rescaling, bias and potential calibration against the
ANN's activations after Li et al., ICML 2021: a training-free method, :mod:`snncc.finetune.calibrate`). An unknown
name is an error that lists the registered ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from snncc.errors import SnnccError

#: ``loss(module, x, y, timesteps) -> (loss, logits)``: a scalar loss to minimize and the (B, classes) logits it
#: was computed from (for the running training accuracy).
Loss = Callable[[Any, Any, Any, int], tuple[Any, Any]]
#: ``transform(graph, x, options, reference=None) -> graph``: a training-free method on scaled training images
#: ``x``; ``reference``: ``(source, x_source)`` when ``graph`` is a chip's float form made from the converted
#: ``source`` (``snncc finetune --target``), with the same images as ``source``'s inputs.
Transform = Callable[..., Any]


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: exactly one of ``loss`` (gradient methods) and ``transform`` (training-free)."""

    name: str
    summary: str
    loss: Loss | None = None
    transform: Transform | None = None
    #: Whether the method takes temporally coded graphs (FS, AMOS), whose lowering has no analog (ANN) mode.
    temporal: bool = True

    def __post_init__(self) -> None:
        if (self.loss is None) == (self.transform is None):
            raise ValueError(f"method {self.name!r} needs exactly one of loss and transform")

    @property
    def trains(self) -> bool:
        """Whether the method runs the training loop (epochs, optimizer, checkpoints)."""
        return self.loss is not None


def readout_logits(module: Any, x: Any, timesteps: int) -> Any:
    """The logits the runtime classifies by: the first graph output's readout after ``timesteps`` steps, the
    running mean ``(1/T) sum_t I(t)`` of its input current (the membrane readout of Rueckauer et al. 2017)."""
    output = module(x, timesteps).outputs[0][-1]
    return output.reshape(output.shape[0], -1)


def surrogate_loss(module: Any, x: Any, y: Any, timesteps: int) -> tuple[Any, Any]:
    """Backpropagation through time with surrogate gradients (Neftci, Mostafa & Zenke, "Surrogate gradient
    learning in spiking neural networks", IEEE Signal Processing Magazine 36(6), 2019): the cross-entropy
    ``-log softmax(r(T))[y]`` of the readout ``r(T)`` after ``T`` steps, differentiated through all ``T`` steps of
    every population, each spike's derivative replaced by the lowering's surrogate."""
    import torch.nn.functional as F

    logits = readout_logits(module, x, timesteps)
    return F.cross_entropy(logits, y), logits


def proxy_method_loss(module: Any, x: Any, y: Any, timesteps: int) -> tuple[Any, Any]:
    """Proxy learning (:func:`snncc.finetune.proxy.proxy_logits`): the SNN's readout at ``T`` as the logits' value,
    the gradient of the cross-entropy at it passed back through the ANN that shares the SNN's parameters."""
    import torch.nn.functional as F

    from snncc.finetune.proxy import proxy_logits

    logits = proxy_logits(module, x, timesteps)
    logits = logits.reshape(logits.shape[0], -1)
    return F.cross_entropy(logits, y), logits


#: Training images the ``calibrate`` method uses unless ``--limit`` says otherwise (docs/calibration.md used 1,000).
CALIBRATION_IMAGES = 1000


def calibrate_transform(graph: Any, x: Any, options: Any, reference: Any = None) -> Any:
    """Calibration for ``options.timesteps`` steps on the (scaled) training images ``x``: per-layer threshold
    rescaling, then bias (BC) and per-layer potential (PC) calibration (:func:`snncc.finetune.calibrate.calibrate`;
    the combination measured best on the VGG in docs/calibration.md). Without ``--limit`` it takes the first
    :data:`CALIBRATION_IMAGES` images, the number measured there. For a chip's float form (``reference``) the
    targets are the analog values of the converted SNN it came from (its OR gates have none of their own)."""
    from snncc.finetune.calibrate import calibrate

    count = len(x) if options.limit is not None else CALIBRATION_IMAGES
    ann = None if reference is None else (reference[0], reference[1][:count])
    return calibrate(graph, x[:count], options.timesteps, bias=True, potential="layer", rescale=True,
                     apply_scaling=False, ann=ann)


METHODS: dict[str, Method] = {
    "surrogate": Method("surrogate", "BPTT with surrogate gradients, cross-entropy on the readout at T "
                        "(Neftci et al. 2019)", loss=surrogate_loss),
    "proxy": Method("proxy", "proxy learning: the SNN's output, the ANN's backward pass (Kheradpisheh et al. "
                    "2022)", loss=proxy_method_loss, temporal=False),
    "calibrate": Method("calibrate", "training-free threshold rescaling, bias and potential calibration against "
                        "the ANN's activations (Li et al. 2021)", transform=calibrate_transform),
}


def method_of(name: str) -> Method:
    """The method called ``name``; an unknown (or not yet registered) name is an error listing the methods."""
    method = METHODS.get(name)
    if method is None:
        raise SnnccError(f"unknown fine-tuning method {name!r}; available: {', '.join(sorted(METHODS))}")
    return method
