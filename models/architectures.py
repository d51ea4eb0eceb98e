"""Network definitions of the ANN models that snncc ships (``models/*.onnx``).

Every model takes a batch of single-channel 28x28 images with pixel values scaled to ``[0, 1]`` (``pixels / 255``)
and return unnormalised class logits of shape ``(N, 10)``. The per-dataset normalisation ``(x - mean) / std`` is
the first thing in ``forward`` and is written as plain tensor arithmetic with constant operands, so that the
exported ONNX graph starts with ``Sub`` and ``Div`` nodes in front of the first ``Conv``: the compiler is expected
to fold that affine map into the first layer.

Only ``torch.nn`` is used (torchvision is not available).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet5", "SiLUFashion", "VGGFashion", "count_parameters"]


class _Normalize(nn.Module):
    """``(x - mean) / std`` with Python-float constants, exported as ONNX ``Sub`` and ``Div`` nodes."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


class LeNet5(nn.Module):
    """LeNet-5 for MNIST (input ``(N, 1, 28, 28)`` in ``[0, 1]``).

    ``conv5x5(1->6, pad 2)-ReLU-maxpool2 -> conv5x5(6->16)-ReLU-maxpool2 -> flatten(400)
    -> fc120-ReLU -> fc84-ReLU -> fc10``, with MNIST normalisation ``(x - 0.1307) / 0.3081`` in front.
    """

    MEAN = 0.1307
    STD = 0.3081

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(x, 1))


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 same-padding convolution (no bias, BN supplies it), BatchNorm2d and ReLU."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class VGGFashion(nn.Module):
    """A small VGG-style network for Fashion-MNIST (input ``(N, 1, 28, 28)`` in ``[0, 1]``).

    ``[conv3x3-BN-ReLU] x2 (32) -> maxpool2 -> [conv3x3-BN-ReLU] x2 (64) -> maxpool2 -> flatten(3136)
    -> fc128-BN1d-ReLU -> dropout(0.3) -> fc10``, with Fashion-MNIST normalisation ``(x - 0.2860) / 0.3530`` in front.
    """

    MEAN = 0.2860
    STD = 0.3530

    def __init__(self, num_classes: int = 10, dropout: float = 0.3) -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32),
            *_conv_bn_relu(32, 32),
            nn.MaxPool2d(2),
            *_conv_bn_relu(32, 64),
            *_conv_bn_relu(64, 64),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(x, 1))


def _conv_bn_silu_avgpool(in_channels: int, out_channels: int) -> list[nn.Module]:
    """A 3x3 same-padding convolution (no bias), BatchNorm2d, SiLU and 2x2 average pooling."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.SiLU(),
        nn.AvgPool2d(2),
    ]


class SiLUFashion(nn.Module):
    """A small CNN with SiLU activations (``silu(x) = x * sigmoid(x)``) for Fashion-MNIST (input in ``[0, 1]``).

    ``[conv3x3-BN-SiLU-avgpool2] x3 (16, 32, 64 channels; 28 -> 14 -> 7 -> 3) -> flatten(576) -> fc128-SiLU
    -> fc10``, with Fashion-MNIST normalisation ``(x - 0.2860) / 0.3530`` in front. It is the reference network for
    conversion of non-ReLU activations (few-spike coding). SiLU is not monotone (its minimum is about -0.278 at
    ``x = -1.278``), so the network pools by averaging: a max pooling could not be moved behind the activation
    (``max silu(x) != silu(max x)``).
    """

    MEAN = 0.2860
    STD = 0.3530

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        self.features = nn.Sequential(
            *_conv_bn_silu_avgpool(1, 16),
            *_conv_bn_silu_avgpool(16, 32),
            *_conv_bn_silu_avgpool(32, 64),
        )
        self.classifier = nn.Sequential(
            nn.Linear(64 * 3 * 3, 128),
            nn.SiLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))
        return self.classifier(torch.flatten(x, 1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics are buffers and not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
