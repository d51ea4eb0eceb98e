"""A torch.nn.Module in: ``compile_model(module, example_input=...)`` gives the same SNN as compiling the module's
exported ONNX file, on the shipped LeNet-5 and VGG with their real weights and real test images."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import snncc
from snncc.api import compile_model
from snncc.data import InputScaling, load_dataset
from snncc.errors import FrontendError, SnnccError, UnsupportedModelError
from snncc.frontend.torch_export import export_module, is_torch_module
from snncc.ir import to_text
from snncc.runtime import Simulator
from tests.conftest import MODELS, data_dir
from tests.frontend.onnx_to_torch import load_onnx_weights, module_path

UNIT = InputScaling(scale=1 / 255)
SHIPPED = {"lenet5-mnist": ("LeNet5", "mnist"), "vgg-fmnist": ("VGGFashion", "fashion-mnist")}


def _architectures():
    spec = importlib.util.spec_from_file_location("snncc_test_architectures", MODELS / "architectures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _shipped(name: str) -> nn.Module:
    path = MODELS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} is not built (python models/train.py {name})")
    return load_onnx_weights(getattr(_architectures(), SHIPPED[name][0])(), path)


def test_module_path_follows_the_exporters_scope_names():
    assert module_path("/features/features.0/Conv") == "features.0"
    assert module_path("/stages/stages.0/conv1/Conv") == "stages.0.conv1"
    assert module_path("/stem/stem.0/Conv") == "stem.0"
    assert module_path("/Flatten") == ""


@pytest.mark.parametrize("name", SHIPPED)
def test_weights_loaded_from_onnx_make_torch_agree_with_onnxruntime(name):
    module = _shipped(name).eval()
    x, y = load_dataset(data_dir(SHIPPED[name][1]), split="test", limit=200)
    xs = UNIT.apply(x)
    session = ort.InferenceSession(str(MODELS / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: xs})[0]
    with torch.no_grad():
        logits = module(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
    assert (logits.argmax(1) == y).mean() > 0.9


@pytest.mark.parametrize("name", SHIPPED)
def test_module_compiles_to_the_same_snn_as_its_onnx_file(name):
    module = _shipped(name)
    module.train()
    module.classifier.eval()  # mixed modes: each submodule's flag must come back as it was
    modes = {n: m.training for n, m in module.named_modules()}
    dataset = data_dir(SHIPPED[name][1])
    calib, _ = load_dataset(dataset, split="train", limit=100)
    x, _ = load_dataset(dataset, split="test", limit=50)
    from_file = compile_model(MODELS / f"{name}.onnx", calibration=calib, input_scaling=UNIT)
    from_module = snncc.compile_model(module, example_input=(1, 1, 28, 28), calibration=calib, input_scaling=UNIT)
    assert {n: m.training for n, m in module.named_modules()} == modes
    assert to_text(from_module) == to_text(from_file)
    source = from_module.attrs["source_model"]
    assert source["torch_module"].endswith(f".{SHIPPED[name][0]}") and len(source["sha256"]) == 64
    assert "path" not in source and source["exporter"] == "torchscript"
    results = [Simulator(g, timesteps=8).run(x) for g in (from_file, from_module)]
    np.testing.assert_array_equal(results[0].outputs, results[1].outputs)
    assert results[0].spikes.keys() == results[1].spikes.keys()
    for population, spikes in results[0].spikes.items():
        np.testing.assert_array_equal(spikes, results[1].spikes[population])


def test_example_input_may_be_a_tensor_or_an_array_and_the_hash_follows_the_weights():
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    a = export_module(module, torch.zeros(2, 1, 8, 8))
    b = export_module(module, np.ones((1, 1, 8, 8)))
    assert a.source["sha256"] == b.source["sha256"]  # the example's values and batch size do not matter
    with torch.no_grad():
        module[0].weight[0, 0, 0, 0] += 1
    assert export_module(module, (1, 1, 8, 8)).source["sha256"] != a.source["sha256"]


def test_the_dynamo_exporter_gives_the_same_outputs():
    torch.manual_seed(1)
    module = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2),
                           nn.Flatten(), nn.Linear(3 * 4 * 4, 4))
    module[1].running_mean.uniform_(-0.5, 0.5)
    x = np.random.default_rng(0).uniform(0, 1, (20, 1, 8, 8)).astype(np.float32)
    graphs = [compile_model(module, example_input=(1, 1, 8, 8), calibration=x, exporter=e)
              for e in ("torchscript", "dynamo")]
    assert graphs[1].attrs["source_model"]["opset"] == 18
    outputs = [Simulator(g, timesteps=32).run(x).outputs for g in graphs]
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-4)


def test_a_module_with_an_unsupported_layer_gives_the_unsupported_operator_error():
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Softplus(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    with pytest.raises(UnsupportedModelError, match=r"1 node\(s\) cannot be converted") as info:
        compile_model(module, example_input=(1, 1, 8, 8))
    assert "'/1/Softplus' (Softplus): operator not supported" in str(info.value)


def test_an_example_input_the_module_cannot_take_is_a_frontend_error():
    module = nn.Sequential(nn.Flatten(), nn.Linear(10, 2))
    module.train()
    with pytest.raises(FrontendError, match=r"torch's torchscript ONNX exporter failed on Sequential with an example "
                                            r"input of shape \(1, 5\): .*"):
        compile_model(module, example_input=(1, 5))
    assert module.training and module[1].training


def test_a_module_needs_an_example_input():
    with pytest.raises(SnnccError, match=r"needs example_input=.*\(1, 1, 28, 28\)"):
        compile_model(nn.Sequential(nn.ReLU()))


def test_example_input_is_only_for_modules():
    with pytest.raises(SnnccError, match="example_input applies to torch.nn.Module models only"):
        compile_model(MODELS / "lenet5-mnist.onnx", example_input=(1, 1, 28, 28))
    with pytest.raises(SnnccError, match="cannot compile a int"):
        compile_model(3)


def test_unknown_exporter_is_named():
    with pytest.raises(SnnccError, match="unknown torch exporter 'onnxscript'; choose one of torchscript, dynamo"):
        export_module(nn.ReLU(), (1, 4), exporter="onnxscript")


def test_a_module_without_torch_installed_is_a_clear_error(monkeypatch):
    """A module-like object when torch cannot be imported: the message says how to install torch."""
    fake_module_class = type("Module", (), {"__module__": "torch.nn.modules.module"})
    model = type("MyNet", (fake_module_class,), {})()
    assert is_torch_module(model) and not is_torch_module(object())
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(SnnccError, match=r"torch cannot be imported .*pip install -c constraints.txt torch"):
        compile_model(model, example_input=(1, 1, 28, 28))
