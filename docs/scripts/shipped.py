"""What the results scripts share: the shipped models, their data sets and input scaling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from snncc.data import InputScaling, load_dataset

REPO = Path(__file__).resolve().parents[2]
DATASETS = {"lenet5-mnist": "mnist", "lenet5-avg-mnist": "mnist", "vgg-avg-fmnist": "fashion-mnist", "vgg-fmnist": "fashion-mnist", "silu-fmnist": "fashion-mnist",
            "resnet-fmnist": "fashion-mnist"}


def load_model_data(name: str, data_root: Path, calib_count: int,
                    limit: int | None) -> tuple[Path, InputScaling, np.ndarray, np.ndarray, np.ndarray]:
    """The model file, its input scaling (from its card), calibration images and the test set (x, y)."""
    model = REPO / "models" / f"{name}.onnx"
    data = data_root / DATASETS[name]
    scaling = InputScaling.from_json(json.loads((REPO / "models" / f"{name}.json").read_text())["input_scaling"])
    calibration, _ = load_dataset(data, split="train", limit=calib_count)
    x, y = load_dataset(data, split="test", limit=limit)
    return model, scaling, calibration, x, y
