"""Activations as torch's two exporters really write them: each imports as one snncc op and matches onnxruntime.

The node sequences these exporters emit are listed in :mod:`snncc.frontend.fusion`; this test exports
``conv -> activation -> conv`` with ``torch.onnx.export(dynamo=False)`` at several opsets and with
``dynamo=True`` (opset 18, and 20 where GELU becomes one node), so a change of exporter output shows up here.
"""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from snncc.runtime import run_analog
from tests.frontend.onnx_models import check_against_onnxruntime, kinds, samples

ACTIVATIONS = {
    # name: (module factory, snncc op kind, its parameters after import)
    "SiLU": (nn.SiLU, "Silu", {}),
    "GELU": (nn.GELU, "Gelu", {"approximate": "none"}),
    "GELU-tanh": (lambda: nn.GELU("tanh"), "Gelu", {"approximate": "tanh"}),
    "Hardswish": (nn.Hardswish, "HardSwish", {}),
    "Hardsigmoid": (nn.Hardsigmoid, "HardSigmoid", {"alpha": pytest.approx(1 / 6), "beta": 0.5}),
    "Sigmoid": (nn.Sigmoid, "Sigmoid", {}),
    "Tanh": (nn.Tanh, "Tanh", {}),
}
EXPORTS = [("legacy", 9), ("legacy", 13), ("legacy", 17), ("legacy", 20), ("dynamo", 18), ("dynamo", 20)]


def _network(activation: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), ACTIVATIONS[activation][0](), nn.Conv2d(3, 2, 3))
    return model.eval()


def _export(model: nn.Module, exporter: str, opset: int) -> onnx.ModelProto:
    x = torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "legacy":
            buffer = io.BytesIO()
            torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=opset, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
            return onnx.load_from_string(buffer.getvalue())
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(model, (x,), dynamo=True, opset_version=opset, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("N", min=1, max=1024)},))
        return program.model_proto


@pytest.mark.parametrize("exporter, opset", EXPORTS, ids=[f"{e}-{o}" for e, o in EXPORTS])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_export_imports_as_one_op(activation: str, exporter: str, opset: int) -> None:
    torch.set_num_threads(1)
    model = _export(_network(activation), exporter, opset)
    x = samples((1, 8, 8), n=6) * 3
    _, canonical = check_against_onnxruntime(model, x)
    _, kind, params = ACTIVATIONS[activation]
    assert kinds(canonical) == ["Input", "Conv2d", kind, "Conv2d"]
    (node,) = [n for n in canonical.topological_order() if canonical.op(n).kind == kind]
    assert canonical.op(node).params() == params
    with torch.no_grad():
        expected = _network(activation)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run_analog(canonical, x)[0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
