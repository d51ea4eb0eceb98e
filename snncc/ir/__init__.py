"""The snncc intermediate representation: ops, neuron models, codings, the graph, its verifier and its forms."""

from snncc.ir.codings import Analog, Coding, FewSpikeCode, Rate
from snncc.ir.graph import Graph
from snncc.ir.neurons import IF, LIF, Amos, CubaLIF, FewSpike, NeuronModel
from snncc.ir.ops import ANN, HW, OPS, SNN, Op
from snncc.ir.placement import Placement
from snncc.ir.serialize import load, save
from snncc.ir.text import to_text
from snncc.ir.types import TensorType
from snncc.ir.verify import verify

__all__ = ["ANN", "HW", "IF", "LIF", "Amos", "CubaLIF", "FewSpike", "FewSpikeCode", "OPS", "SNN", "Analog", "Coding",
           "Graph", "NeuronModel", "Op", "Placement", "Rate", "TensorType", "load", "save", "to_text", "verify"]
