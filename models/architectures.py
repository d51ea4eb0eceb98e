"""Network definitions of the ANN models that snncc ships (``models/*.onnx``).

All models take a batch of single-channel 28x28 images with pixel values scaled to ``[0, 1]`` (``pixels / 255``)
and return unnormalised class logits of shape ``(N, 10)``. The per-dataset normalisation ``(x - mean) / std`` is
the first thing in ``forward`` and is written as plain tensor arithmetic with constant operands, so that the
exported ONNX graph starts with ``Sub`` and ``Div`` nodes in front of the first ``Conv``: the compiler is expected
to fold that affine map into the first layer.

Only ``torch.nn`` is used (torchvision is not available).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["POOLING", "BasicBlock", "LeNet5", "ResNetCifar", "ResNetFashion", "ShortcutA", "SiLUFashion", "VGGFashion",
           "count_parameters"]


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


#: The 2x2 pooling layers a network can be built with: max pooling (the shipped models) or average pooling (the
#: layout SpikingJelly's conversion guide recommends, and the only one NIR can state).
POOLING: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


class LeNet5(nn.Module):
    """LeNet-5 for MNIST (input ``(N, 1, 28, 28)`` in ``[0, 1]``).

    ``conv5x5(1->6, pad 2)-ReLU-pool2 -> conv5x5(6->16)-ReLU-pool2 -> flatten(400)
    -> fc120-ReLU -> fc84-ReLU -> fc10``, with MNIST normalisation ``(x - 0.1307) / 0.3081`` in front; ``pool`` is
    ``"max"`` (the shipped ``lenet5-mnist``) or ``"avg"`` (``lenet5-avg-mnist``).
    """

    MEAN = 0.1307
    STD = 0.3081

    def __init__(self, num_classes: int = 10, pool: str = "max") -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            POOLING[pool](2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            POOLING[pool](2),
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


def _conv_bn_relu(in_channels: int, out_channels: int, batchnorm: bool = True) -> list[nn.Module]:
    """A 3x3 same-padding convolution and ReLU, with BatchNorm2d in between (the conv then has no bias, BN supplies
    it) or, with ``batchnorm=False``, a conv with a bias: the form of the BN-folded exported network."""
    if not batchnorm:
        return [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]


class VGGFashion(nn.Module):
    """A small VGG-style network for Fashion-MNIST (input ``(N, 1, 28, 28)`` in ``[0, 1]``).

    ``[conv3x3-BN-ReLU] x2 (32) -> pool2 -> [conv3x3-BN-ReLU] x2 (64) -> pool2 -> flatten(3136)
    -> fc128-BN1d-ReLU -> dropout(0.3) -> fc10``, with Fashion-MNIST normalisation ``(x - 0.2860) / 0.3530`` in front.
    ``pool`` is ``"max"`` (the shipped ``vgg-fmnist``) or ``"avg"``; ``conv_batchnorm=False`` gives the convolutions
    biases instead of BatchNorm2d, the form of the exported (BN-folded) network, which ``vgg-avg-fmnist`` is
    fine-tuned in from the shipped weights.
    """

    MEAN = 0.2860
    STD = 0.3530

    def __init__(self, num_classes: int = 10, dropout: float = 0.3, pool: str = "max",
                 conv_batchnorm: bool = True) -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        bn = conv_batchnorm
        self.features = nn.Sequential(
            *_conv_bn_relu(1, 32, bn),
            *_conv_bn_relu(32, 32, bn),
            POOLING[pool](2),
            *_conv_bn_relu(32, 64, bn),
            *_conv_bn_relu(64, 64, bn),
            POOLING[pool](2),
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


class ShortcutA(nn.Module):
    """Parameter-free shortcut of He et al. 2016 (option A): ``x[:, :, ::s, ::s]`` zero-padded in channels.

    The ``out - in`` new channels are split evenly in front of and behind the subsampled input, as in the common
    CIFAR ResNet implementations: ``y[c] = x[c - (out - in) // 2, ::s, ::s]`` where that channel exists, else 0.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.front = (out_channels - in_channels) // 2
        self.back = out_channels - in_channels - self.front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.front, self.back), "constant", 0.0)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, channel_pad=({self.front}, {self.back})"


class BasicBlock(nn.Module):
    """Residual basic block (He et al. 2016): ``y = ReLU(BN(conv3x3(ReLU(BN(conv3x3(x))))) + shortcut(x))``.

    The first convolution has stride ``stride``. Where the shape changes (``stride != 1`` or a different channel
    count) the shortcut is a projection, ``BN(conv1x1 stride s (x))`` (option B of He et al.), or with
    ``shortcut="A"`` the parameter-free :class:`ShortcutA`; otherwise it is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if (stride != 1 or in_channels != out_channels) and shortcut == "A":
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        elif stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


def _residual_stages(widths: tuple[int, ...], blocks: int, shortcut: str) -> nn.Sequential:
    """Stages of ``blocks`` :class:`BasicBlock` s each; the first block of every stage after the first has stride 2."""
    layers: list[nn.Module] = []
    in_channels = widths[0]
    for stage, width in enumerate(widths):
        for block in range(blocks):
            layers.append(BasicBlock(in_channels, width, stride=2 if stage > 0 and block == 0 else 1,
                                     shortcut=shortcut))
            in_channels = width
    return nn.Sequential(*layers)


def _init_convs(model: nn.Module) -> None:
    """He initialization (fan out) of every convolution, as in He et al. 2016."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")


class ResNetFashion(nn.Module):
    """A CIFAR-style ResNet (He et al. 2016, Sec. 4.2) for Fashion-MNIST (input ``(N, 1, 28, 28)`` in ``[0, 1]``).

    ``conv3x3(1->16)-BN-ReLU -> stage 16 @ 28x28 -> stage 32 @ 14x14 -> stage 64 @ 7x7 -> global average pool
    -> fc10``, each stage ``blocks`` :class:`BasicBlock` s, the first block of stages 2 and 3 with stride 2 and a
    projection shortcut. The depth is ``6 * blocks + 2`` (``blocks=3`` is ResNet-20, 1 is ResNet-8), with
    Fashion-MNIST normalisation ``(x - 0.2860) / 0.3530`` in front.
    """

    MEAN = 0.2860
    STD = 0.3530

    def __init__(self, blocks: int = 3, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.normalize = _Normalize(self.MEAN, self.STD)
        self.stem = nn.Sequential(*_conv_bn_relu(1, widths[0]))
        self.stages = _residual_stages(widths, blocks, shortcut="B")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_convs(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ResNetCifar(nn.Module):
    """ResNet-20 for CIFAR-10 as in He et al. 2016, Sec. 4.2 (input ``(N, 3, 32, 32)`` in ``[0, 1]``).

    ``conv3x3(3->16)-BN-ReLU -> 3 stages of ``blocks`` basic blocks (16 @ 32x32, 32 @ 16x16, 64 @ 8x8) -> global
    average pool -> fc10`` with option-A shortcuts (:class:`ShortcutA`) where the shape changes, and the per-channel
    CIFAR-10 normalisation ``(x - mean[c]) / std[c]`` in front. Depth ``6 * blocks + 2``.
    """

    MEAN = (0.4914, 0.4822, 0.4465)
    STD = (0.2470, 0.2435, 0.2616)

    def __init__(self, blocks: int = 3, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(self.MEAN).reshape(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(self.STD).reshape(1, 3, 1, 1))
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = _residual_stages(widths, blocks, shortcut="A")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_convs(self)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalized(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


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
