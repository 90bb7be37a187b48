"""CIFAR ResNets (He et al. 2016, Sec. 4.2): 3 stages of n basic blocks, widths 16/32/64, depth 6n+2.

Option-A shortcuts: stride-2 subsampling plus zero-padding of the new channels, no parameters. The
module and parameter names follow github.com/akamaster/pytorch_resnet_cifar10, so its checkpoints
(e.g. resnet20-cifar10.th, 91.73% on CIFAR-10) load directly. ReLUs are functional, as there.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.models._registry import register_model

__all__ = ["CifarResNet", "resnet20_cifar10", "resnet32_cifar10", "resnet56_cifar10"]


class ShortcutA(nn.Module):
    """Identity, or subsample by 2 and zero-pad channels when the block changes shape."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, (planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        return F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = ShortcutA(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; `in_channels` 3 for CIFAR, 1 for Fashion-MNIST."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        widths, in_planes, stages = (16, 32, 64), 16, []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if i > 0 and j == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        out = self.layer3(self.layer2(self.layer1(out)))  # (B, 64, H/4, W/4)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64)
        return self.linear(out)


_HINT = (
    "Checkpoints in the akamaster layout: github.com/akamaster/pytorch_resnet_cifar10 (pretrained_models/), "
    "e.g. ../shared/models/resnet20-cifar10.th."
)
_CIFAR = dict(input_size=(3, 32, 32), dataset="cifar10", checkpoint_hint=_HINT)


@register_model("resnet20_cifar10", source="He et al. 2016; akamaster checkpoints", **_CIFAR)
def resnet20_cifar10(**kwargs) -> CifarResNet:
    return CifarResNet(3, **kwargs)


@register_model("resnet32_cifar10", source="He et al. 2016; akamaster checkpoints", **_CIFAR)
def resnet32_cifar10(**kwargs) -> CifarResNet:
    return CifarResNet(5, **kwargs)


@register_model("resnet56_cifar10", source="He et al. 2016; akamaster checkpoints", **_CIFAR)
def resnet56_cifar10(**kwargs) -> CifarResNet:
    return CifarResNet(9, **kwargs)
