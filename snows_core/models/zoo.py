"""Small Fashion-MNIST models the project trains and ships (weights in assets/, see scripts/train_zoo.py).

- ``mlp``: 784-512-256-128-10 with ReLUs.
- ``resnet20``: the CIFAR ResNet-20 (He et al. 2016) with a 1-channel stem, on 28x28 images.
- ``mobilenet_v2``: torchvision's MobileNetV2 (Sandler et al. 2018: inverted residuals, depthwise
  convs, ReLU6) with four stages sized for 28x28 and a 1-channel stride-1 stem.
- ``vit_tiny``: a timm VisionTransformer with 7x7 patches (16 tokens), width 96, depth 6.
"""

from __future__ import annotations

import torch.nn as nn
from timm.models import VisionTransformer
from torchvision.models import MobileNetV2

from snows_core.models._registry import register_model
from snows_core.models.resnet_cifar import CifarResNet

__all__ = ["MLP", "fashion_mlp", "fashion_resnet20", "fashion_mobilenet_v2", "fashion_vit_tiny"]


class MLP(nn.Sequential):
    """Flatten, then Linear + ReLU through the hidden widths, then the classifier."""

    def __init__(self, in_features: int = 784, hidden: tuple[int, ...] = (512, 256, 128), num_classes: int = 10):
        layers: list[nn.Module] = [nn.Flatten()]
        for width in hidden:
            layers += [nn.Linear(in_features, width), nn.ReLU()]
            in_features = width
        super().__init__(*layers, nn.Linear(in_features, num_classes))


_FASHION = dict(input_size=(1, 28, 28), dataset="fashion-mnist")


@register_model("mlp", source="SNOWS Lab (scripts/train_zoo.py)", weights="mlp.safetensors", **_FASHION)
def fashion_mlp(num_classes: int = 10) -> MLP:
    return MLP(num_classes=num_classes)


@register_model("resnet20", source="SNOWS Lab (scripts/train_zoo.py)", weights="resnet20.safetensors", **_FASHION)
def fashion_resnet20(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(3, num_classes=num_classes, in_channels=1)


@register_model(
    "mobilenet_v2", source="SNOWS Lab (scripts/train_zoo.py)", weights="mobilenet_v2.safetensors", **_FASHION
)
def fashion_mobilenet_v2(num_classes: int = 10) -> MobileNetV2:
    # (expansion t, channels c, repeats n, stride s) per stage: 28 -> 14 -> 7 -> 4
    stages = [[1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 2, 2], [4, 64, 2, 2]]
    model = MobileNetV2(num_classes=num_classes, inverted_residual_setting=stages, dropout=0.1)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(1, stem.out_channels, 3, stride=1, padding=1, bias=False)
    return model


@register_model("vit_tiny", source="SNOWS Lab (scripts/train_zoo.py)", weights="vit_tiny.safetensors", **_FASHION)
def fashion_vit_tiny(num_classes: int = 10) -> VisionTransformer:
    return VisionTransformer(
        img_size=28,
        patch_size=7,
        in_chans=1,
        num_classes=num_classes,
        embed_dim=96,
        depth=6,
        num_heads=3,
        mlp_ratio=2.0,
        global_pool="token",
    )
