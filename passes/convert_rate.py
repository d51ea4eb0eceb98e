"""``convert-rate``: rate-coded SNN from a normalized ANN (Rueckauer et al. 2017; Bu et al. 2022).

- every ReLU, and every Clip(0, c) with ``c >= 1`` after normalization, becomes a Population of IF neurons with
  threshold 1 and reset by subtraction; the membrane starts at ``v_init * threshold`` (0.5 by default, the shift
  that turns the floor of spike counting into rounding, Bu et al. ICLR 2022);
- biases stay in their layers and so enter every step as a constant input current;
- the input image is an analog constant current (no Poisson sampling), so the first layer's current is constant;
- average pooling and global average pooling stay linear ops on spike trains;
- max pooling of spike trains becomes ``SpikingMaxPool2d`` (running max of spike counts; exact max of the rates),
  or average pooling with ``maxpool=avg`` (the common approximation, kept for comparison);
- ``signed=true`` gives the neurons negative spikes that correct over-counting (signed neuron with memory, Wang
  et al. IJCAI 2022; see :class:`~snncc.ir.neurons.IF`), for targets that carry signed spikes;
- a softmax at the output is dropped (the readout's argmax is unchanged) and every output gets a non-spiking
  ``Readout`` that reports the mean of its input current.

An IF neuron's spike rate is a rectified linear function of its input current, clipped at one spike per step:
``r = clip(I, 0, 1)``. Only ReLU and Clip(0, c) have that shape; any other element-wise activation (Sigmoid, Tanh,
HardSigmoid, HardSwish, SiLU, GELU) is refused, before anything else, with few-spike coding as the remedy.
"""

from __future__ import annotations

from dataclasses import dataclass

from snncc.errors import PassError, UnsupportedModelError
from snncc.ir import ANN, IF, SNN, Analog, Graph, ops
from snncc.ir.neurons import RESETS
from snncc.passes.base import Pass, PassContext, register

MAXPOOL_MODES = ("count", "avg")
#: Element-wise activations that IF populations carry (Clip only with bounds 0 and >= 1 after normalization), and
#: LeakyReLU, which gets its own message.
_RATE_ACTIVATIONS = (ops.Relu, ops.Clip, ops.LeakyRelu)


def _needs_other_coding(graph: Graph) -> list[str]:
    """One line per element-wise activation that rate coding cannot carry (none for a ReLU network)."""
    return [f"{node!r} ({graph.op(node).kind}): a rate-coded IF neuron computes a rectified linear function of its "
            f"input (ReLU, Clip(0, c)), not {graph.op(node).kind}; convert this model with few-spike coding "
            "(--method fs) instead" for node in graph.find(ops.PointwiseActivation)
            if not isinstance(graph.op(node), _RATE_ACTIVATIONS)]


@register
@dataclass(frozen=True)
class ConvertRate(Pass):
    """ReLU -> IF populations (threshold 1, reset by subtraction), MaxPool -> spike-count max, output -> readout."""

    name = "convert-rate"
    requires_level = ANN
    v_init: float = 0.5
    reset: str = "subtract"
    maxpool: str = "count"
    signed: bool = False
    # Measured (docs/results.md, full test sets, T=32): LeNet-5 98.90% against 99.42% with maxpool=count, the VGG
    # 81.50% against 93.89%. The runtime cost is gone: the compiled runtime folds average pooling into the next layer.
    option_notes = {("maxpool", "avg"): "average pooling of spikes stands in for the model's max pooling, an "
                                        "approximation that costs accuracy (the VGG / Fashion-MNIST: 81.5% against "
                                        "93.9% at T=32); train the model with average pooling instead if a target "
                                        "needs it"}

    def __post_init__(self) -> None:
        if self.reset not in RESETS:
            raise PassError(f"convert-rate: reset must be one of {RESETS}, got {self.reset!r}")
        if self.maxpool not in MAXPOOL_MODES:
            raise PassError(f"convert-rate: maxpool must be one of {MAXPOOL_MODES}, got {self.maxpool!r}")

    def run(self, graph: Graph, context: PassContext) -> bool:
        if problems := _needs_other_coding(graph):
            raise UnsupportedModelError("convert-rate cannot convert:\n  " + "\n  ".join(problems))
        if not graph.attrs.get("normalization"):
            raise PassError("convert-rate needs a normalized graph; run normalize first "
                            "(pipeline: canonicalize,normalize,convert-rate)")
        neuron = IF(threshold=1.0, reset=self.reset, v_init=self.v_init, signed=self.signed)
        problems = []
        for node in graph.topological_order():
            op = graph.op(node)
            if isinstance(op, ops.Relu) or (isinstance(op, ops.Clip) and op.min == 0 and op.max >= 1 - 1e-6):
                graph.replace(node, ops.Population(neuron=neuron))
            elif isinstance(op, ops.Softmax):
                if node in graph.outputs:
                    graph.bypass(node)
                else:
                    problems.append(f"{node!r} (Softmax): only a softmax at the output can be dropped")
            elif isinstance(op, ops.Clip):
                problems.append(f"{node!r} (Clip[{op.min:g}, {op.max:g}] after normalization): rate coding needs "
                                "a lower bound of 0 and an upper bound at or above the threshold")
            elif isinstance(op, ops.LeakyRelu):
                problems.append(f"{node!r} (LeakyRelu): rate-coded IF neurons cannot carry negative values; "
                                "retrain with ReLU")
        if problems:
            raise UnsupportedModelError("convert-rate cannot convert:\n  " + "\n  ".join(problems))
        graph.attrs["level"] = SNN
        types = graph.types()
        for node in graph.find(ops.MaxPool2d):
            (src,) = graph.inputs(node)
            if types[src].coding == Analog():
                continue  # pooling of constant analog values stays an ordinary max
            op = graph.op(node)
            if self.maxpool == "count":
                graph.replace(node, ops.SpikingMaxPool2d(kernel=op.kernel, stride=op.stride, padding=op.padding))
            else:
                graph.replace(node, ops.AvgPool2d(kernel=op.kernel, stride=op.stride, padding=op.padding))
        for i, out in enumerate(list(graph.outputs)):
            readout = graph.insert_after(out, ops.Readout(), name=f"{out}.readout", created_by=self.name)
            graph.outputs[i] = readout
        graph.attrs["conversion"] = {"method": "rate", "pass": self.to_text()}
        return True
