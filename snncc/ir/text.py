"""The text form: one line per node with its op, parameters, output type and coding.

Example::

    graph level=snn outputs=[logits]
      %input = Input(shape=(1, 28, 28), name='input') : [1,28,28] analog
      %conv1 = Conv2d(%input; weight=f32[6,1,5,5], bias=f32[6], stride=(1, 1), ...) : [6,28,28] analog
      %relu1 = Population(%conv1; neuron=IF(threshold=1, reset=subtract, v_init=0.5)) : [6,28,28] rate

At the hw level a placed node ends with its placement, ``@chip0.core3``. Arrays print as their dtype and shape
(``f32[6,1,5,5]``, ``i8[10,84]``); a one-element array prints its value (an integer one with its dtype, ``i32(7)``),
and a tuple of arrays, such as the ``input_gains`` of a shared-weight layer, element by element
(``input_gains=(1, f32[16], 0.5)``). The text form is for reading and for structural comparison in tests, the
``.snn`` file form holds the values.
"""

from __future__ import annotations

import numpy as np

from snncc.errors import IRError
from snncc.ir.graph import Graph


#: Short dtype names of arrays: ``f32[6,1,5,5]``, ``i8[10,84]``.
_SHORT_DTYPES = {"float32": "f32", "bool": "b1", "int8": "i8", "int16": "i16", "int32": "i32", "int64": "i64",
                 "uint8": "u8", "uint16": "u16", "uint32": "u32"}


def _value(value: object) -> str:
    if isinstance(value, np.ndarray):
        if value.size == 1:
            scalar = value.reshape(-1)[0]
            return f"{float(scalar):g}" if value.dtype.kind == "f" else f"{_SHORT_DTYPES[value.dtype.name]}({scalar})"
        return f"{_SHORT_DTYPES.get(value.dtype.name, value.dtype.name)}[{','.join(map(str, value.shape))}]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple) and any(isinstance(v, np.ndarray) for v in value):  # e.g. input_gains
        return f"({', '.join(_value(v) for v in value)})"
    return repr(value) if isinstance(value, str) else str(value)


def format_node(graph: Graph, node: str, types: dict | None = None) -> str:
    op = graph.op(node)
    operands = ", ".join(f"%{u}" for u in graph.inputs(node))
    params = ", ".join(f"{k}={_value(v)}" for k, v in op.params().items() if v is not None)
    body = "; ".join(part for part in (operands, params) if part)
    line = f"%{node} = {op.kind}({body})"
    if types is not None and node in types:
        line += f" : {types[node]}"
    if graph.placement(node) is not None:
        line += f" {graph.placement(node)}"
    return line


def to_text(graph: Graph) -> str:
    """The whole graph in text form (types included when they can be inferred)."""
    try:
        types = graph.types()
    except IRError:
        types = None
    lines = [f"graph level={graph.level} outputs=[{', '.join(graph.outputs)}]"]
    lines += ["  " + format_node(graph, n, types) for n in graph.topological_order()]
    return "\n".join(lines)
