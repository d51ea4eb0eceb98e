"""A ``torch.nn.Module`` in: export it to ONNX in memory, then import it like any ONNX file.

torch is an optional dependency of snncc: nothing here imports it until a module is exported, and
:func:`is_torch_module` recognises a module by its class hierarchy without importing torch.

The exporter is chosen deliberately. torch 2.13 has two:

- ``"torchscript"`` (the default): ``torch.onnx.export(..., dynamo=False)`` at opset :data:`TORCHSCRIPT_OPSET`, the
  exporter the shipped models in ``models/`` were made with (``models/train.py``). It writes the same graph as those
  files, node for node (the same node names, Conv+BatchNorm folded, plain ``Sub``/``Div`` for the normalization), so
  a module compiles to exactly the SNN its exported file compiles to. It is also fast (well under a second for the
  shipped networks), needs no ``onnxscript`` and writes to memory. torch marks it deprecated; its warnings are
  silenced here because the user cannot act on them.
- ``"dynamo"``: ``torch.onnx.export(..., dynamo=True)`` at opset :data:`DYNAMO_OPSET`, the ``torch.export``-based
  exporter (it needs ``onnxscript``). snncc imports its graphs too (``models/*.dynamo.onnx``), with the same
  results up to the order of float32 operations; it is the one to use when the TorchScript exporter is gone or
  cannot trace a model. It takes several seconds per model.

Both export in eval mode (dropout off, BatchNorm on its running statistics) with a symbolic batch axis; the module's
own training flags (per submodule) are restored afterwards.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from snncc.errors import FrontendError, SnnccError

TORCHSCRIPT_OPSET = 13
DYNAMO_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "output"
INSTALL_HINT = "install it with: python -m pip install -c constraints.txt torch==2.13.0 (or pip install 'snncc[torch]')"


def is_torch_module(obj: object) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module`` (decided from its class hierarchy; torch is not imported)."""
    return any(cls.__name__ == "Module" and cls.__module__ == "torch.nn.modules.module" for cls in type(obj).__mro__)


@dataclass(frozen=True)
class ExportedModule:
    """The ONNX model exported from a module, and what ``graph.attrs["source_model"]`` records about it."""

    model: onnx.ModelProto
    source: dict


def _import_torch():
    try:
        import torch
    except ImportError as exc:
        raise SnnccError(f"a torch.nn.Module was given but torch cannot be imported ({exc}); {INSTALL_HINT}") from None
    return torch


def example_tensor(example_input: object, torch) -> object:
    """``example_input`` (a tensor, an array of one batch, or a shape such as ``(1, 1, 28, 28)``) as a float32
    tensor; a shape gives zeros."""
    if example_input is None:
        raise SnnccError("compiling a torch.nn.Module needs example_input=: a tensor or array of one input batch, or "
                         "its shape such as (1, 1, 28, 28); the exporter traces the module on it")
    if isinstance(example_input, torch.Tensor):
        return example_input.detach().to(torch.float32)
    if isinstance(example_input, Sequence) and all(isinstance(d, (int, np.integer)) for d in example_input):
        shape = tuple(int(d) for d in example_input)
        if not shape or min(shape) < 1:
            raise SnnccError(f"example_input shape {shape} must be positive sizes, batch first, e.g. (1, 1, 28, 28)")
        return torch.zeros(shape, dtype=torch.float32)
    try:
        return torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    except (TypeError, ValueError) as exc:
        raise SnnccError(f"example_input must be a tensor, an array or a shape, got {type(example_input).__name__} "
                         f"({exc})") from None


def _export_torchscript(torch, module, x) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*will be removed.*")
        torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=TORCHSCRIPT_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return buffer.getvalue()


def _export_dynamo(torch, module, x) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=65536)
    if x.shape[0] == 1:  # a batch of 1 would be specialised to a fixed size
        x = torch.cat([x, x])
    program = torch.onnx.export(module, (x,), dynamo=True, opset_version=DYNAMO_OPSET, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=({0: batch},), optimize=True,
                                verbose=False)
    return program.model_proto.SerializeToString()


#: exporter name -> (function(torch, module, example tensor) -> ONNX bytes, opset)
EXPORTERS: dict[str, tuple[Callable, int]] = {
    "torchscript": (_export_torchscript, TORCHSCRIPT_OPSET),
    "dynamo": (_export_dynamo, DYNAMO_OPSET),
}


def export_module(module: object, example_input: object, exporter: str = "torchscript") -> ExportedModule:
    """Export ``module`` to an in-memory ONNX model with :data:`EXPORTERS` ``[exporter]``, in eval mode.

    The source record holds the module's class, the exporter and opset, and the SHA-256 of the exported ONNX bytes
    (a module has no path; the hash identifies the weights and graph that were compiled)."""
    if exporter not in EXPORTERS:
        raise SnnccError(f"unknown torch exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    torch = _import_torch()
    export, opset = EXPORTERS[exporter]
    x = example_tensor(example_input, torch)
    modes = {sub: sub.training for sub in module.modules()}
    module.eval()
    try:
        data = export(torch, module, x)
    except Exception as exc:  # the exporters raise many types (tracing, unsupported aten ops, shape errors)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FrontendError(f"torch's {exporter} ONNX exporter failed on {type(module).__name__} with an example "
                            f"input of shape {tuple(x.shape)}: {first}") from exc
    finally:
        for sub, training in modes.items():  # per submodule: module.train(flag) would set them all alike
            sub.training = training
    cls = type(module)
    source = {"torch_module": f"{cls.__module__}.{cls.__qualname__}", "exporter": exporter, "opset": opset,
              "torch_version": str(torch.__version__), "sha256": hashlib.sha256(data).hexdigest()}
    return ExportedModule(onnx.load_model_from_string(data), source)
