"""snncc.api helpers that the command line's output is built from."""

from __future__ import annotations

from snncc.api import model_name
from tests.conftest import small_cnn


def test_model_name_prefers_the_recorded_name_then_the_source():
    graph = small_cnn()
    assert model_name(graph) == "model"
    assert model_name(graph, "/data/models/other.onnx") == "other"
    graph.attrs["source_model"] = {"torch_module": "my_project.nets.LeNet5", "sha256": "0" * 64}
    assert model_name(graph, "/data/models/other.onnx") == "LeNet5"
    graph.attrs["source_model"] = {"path": "/work/models/vgg-fmnist.onnx", "sha256": "0" * 64}
    assert model_name(graph, "/data/models/other.onnx") == "vgg-fmnist"
    graph.attrs["name"] = "VGG (Fashion-MNIST)"
    assert model_name(graph) == "VGG (Fashion-MNIST)"
