"""The report of the nodes an import could not convert: a summary per operator type, then the nodes.

A quantized ShuffleNet has a hundred unconvertible nodes of five types; listing them all first buries what the user
needs, which is one line per type with its count and what to do about it. The message is::

    57 node(s) cannot be converted (3 operator types):
      QLinearConv x 50: quantized operator; compile the float model it was quantized from ...
      QuantizeLinear x 5: ...
    nodes:
      'conv1' (QLinearConv): operator not supported
      ... (at most MAX_LISTED_NODES)
      ... and 37 more
    snncc converts float CNNs and MLPs (...)

The remedy of a type comes from :data:`REMEDIES` where snncc knows one for the whole type (quantized and recurrent
operators); otherwise it is the reason the nodes of that type gave (the most frequent one, if they differ).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from snncc.errors import UnsupportedModelError

MAX_LISTED_NODES = 20

_QUANTIZED = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
              "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "QLinearGlobalAveragePool",
              "QLinearAveragePool", "QLinearConcat", "QLinearSigmoid", "QLinearLeakyRelu", "QGemm")
_RECURRENT = ("LSTM", "GRU", "RNN", "Scan", "Loop")

#: operator type -> what to do about every node of that type
REMEDIES: dict[str, str] = {
    **{op: "quantized operator; compile the float model it was quantized from (snncc quantizes the SNN's "
           "parameters itself with the quantize-neurons pass)" for op in _QUANTIZED},
    **{op: "recurrent or looping operator; snncc converts feed-forward networks only" for op in _RECURRENT},
}

FOOTER = ("snncc converts float CNNs and MLPs (Conv, Gemm/MatMul, BatchNormalization, Relu/Clip/LeakyRelu, "
          "Sigmoid/Tanh/HardSigmoid/HardSwish/SiLU/GELU, pooling, Add, Concat, Flatten/Reshape); export the float "
          "model (not a quantized one) in eval mode, or replace these layers")


@dataclass(frozen=True)
class Problem:
    """One node that cannot be converted: its label (``'name' (OpType)``), its operator type and why."""

    label: str
    op_type: str
    reason: str

    def __str__(self) -> str:
        return f"{self.label}: {self.reason}"


def _remedy(op_type: str, reasons: list[str]) -> str:
    if op_type in REMEDIES:
        return REMEDIES[op_type]
    counts = Counter(reasons)
    reason, _ = counts.most_common(1)[0]
    return reason if len(counts) == 1 else f"{reason} (and {len(counts) - 1} other reason(s), see the nodes)"


def unsupported_model_error(problems: list[Problem]) -> UnsupportedModelError:
    """The one error for all ``problems`` (in the model's node order), summary first."""
    by_type: dict[str, list[str]] = {}
    for problem in problems:
        by_type.setdefault(problem.op_type, []).append(problem.reason)
    order = sorted(by_type, key=lambda op: -len(by_type[op]))  # most frequent first; ties keep the model's order
    lines = [f"{len(problems)} node(s) cannot be converted ({len(by_type)} operator type(s)):"]
    lines += [f"  {op} x {len(by_type[op])}: {_remedy(op, by_type[op])}" for op in order]
    lines.append("nodes:")
    lines += [f"  {problem}" for problem in problems[:MAX_LISTED_NODES]]
    if len(problems) > MAX_LISTED_NODES:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_NODES} more")
    lines.append(FOOTER)
    return UnsupportedModelError("\n".join(lines))
