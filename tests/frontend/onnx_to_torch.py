"""Load the weights of an ONNX file that torch's TorchScript exporter wrote back into the module it came from.

The exporter names each initializer after its ``state_dict`` key (``features.0.weight``), except where it folded a
BatchNorm into the convolution in front of it (eval mode): that convolution's weight and bias are new tensors
(``onnx::Conv_58``) and the BatchNorm has no initializers at all. Such a convolution is found through its node's
scope name (``/features/features.0/Conv`` is module ``features.0``), takes the folded weight, and its BatchNorm (the
next BatchNorm in module order whose parameters the file lacks) becomes the identity plus the folded bias:
``gamma = 1, mean = 0, var = 1, eps = 0``, so that exporting again folds it to exactly the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


def module_path(node_name: str) -> str:
    """The module a TorchScript exporter node belongs to: ``/stages/stages.0/conv1/Conv`` -> ``stages.0.conv1``.

    Each scope segment is either a child's name (``conv1``) or its parent's path plus the child's name
    (``stages.0``, as the exporter writes children of containers)."""
    path = ""
    for segment in node_name.strip("/").split("/")[:-1]:
        child = segment[len(path) + 1:] if path and segment.startswith(path + ".") else segment
        path = f"{path}.{child}" if path else child
    return path


def load_onnx_weights(module: nn.Module, onnx_file: str | Path) -> nn.Module:
    """Set every parameter and buffer of ``module`` from ``onnx_file``; raise if one is left without a value."""
    model = onnx.load(str(onnx_file))
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    state = module.state_dict()
    modules = dict(module.named_modules())
    order = list(modules)
    new = {key: torch.from_numpy(initializers[key].copy()) for key in state if key in initializers}
    for node in model.graph.node:
        if node.op_type != "Conv" or node.input[1] in state:
            continue
        path = module_path(node.name)
        conv = modules[path]
        assert isinstance(conv, nn.Conv2d), (node.name, path)
        bias = initializers[node.input[2]] if len(node.input) > 2 else np.zeros(conv.out_channels, np.float32)
        new[f"{path}.weight"] = torch.from_numpy(initializers[node.input[1]].copy())
        bn_path = next(p for p in order[order.index(path) + 1:]
                       if isinstance(modules[p], nn.BatchNorm2d) and f"{p}.weight" not in new)
        modules[bn_path].eps = 0.0
        beta = bias
        if conv.bias is not None:
            new[f"{path}.bias"], beta = torch.from_numpy(bias.copy()), np.zeros_like(bias)
        channels = len(bias)
        new.update({f"{bn_path}.weight": torch.ones(channels), f"{bn_path}.bias": torch.from_numpy(beta.copy()),
                    f"{bn_path}.running_mean": torch.zeros(channels),
                    f"{bn_path}.running_var": torch.ones(channels)})
    missing = [k for k in state if k not in new and not k.endswith("num_batches_tracked")]
    if missing:
        raise ValueError(f"{onnx_file} holds no value for {missing}")
    module.load_state_dict(new, strict=False)
    return module
