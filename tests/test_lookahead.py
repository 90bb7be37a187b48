"""K-windows cut from torch.fx traces: exact operation lists, externals, and every test architecture."""

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from snows_core.engine.graph import PrunedPath, prunable_nodes, register_leaf_module, trace
from snows_core.engine.window import build_window
from snows_core.models import create_model


def windows(model: nn.Module, layer: str):
    gm = trace(model)
    node = next(n for n in prunable_nodes(gm) if n.target == layer)
    return gm, node


@pytest.mark.parametrize(
    "layer,k,ops,externals",
    [
        ("c1", 0, ["c1:conv"], []),
        ("c1", 1, ["c1:conv", "relu_1:activation"], []),
        ("c1", 2, ["c1:conv", "relu_1:activation", "c2:conv"], []),
        ("c1", 3, ["c1:conv", "relu_1:activation", "c2:conv", "relu_2:activation"], ["relu"]),
        ("c2", 1, ["c2:conv", "relu_2:activation"], ["relu"]),
        ("c2", 2, ["c2:conv", "relu_2:activation", "fc:linear"], ["relu"]),
        ("c2", 9, ["c2:conv", "relu_2:activation", "fc:linear"], ["relu"]),  # the network ends first
    ],
)
def test_window_on_a_residual_block_holds_exactly_the_expected_operations(tiny_resnet, layer, k, ops, externals):
    gm, node = windows(tiny_resnet, layer)
    window = build_window(gm, node, k)
    assert [f"{name}:{kind}" for name, kind in window.ops] == ops
    assert [e.name for e in window.externals] == externals  # the shortcut comes from the pruned path
    inside = {n.name for n in window.module.graph.nodes if n.op not in ("placeholder", "output")}
    assert "stem" not in inside and "relu" not in inside  # upstream values are inputs, not recomputed


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, 4, 1), nn.Conv2d(4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(F.silu(self.reduce(scale))))


class DepthwiseSENet(nn.Module):
    """Inverted residual with a depthwise conv, squeeze-excite, SiLU and GELU."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.expand = nn.Conv2d(8, 16, 1)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.se = SqueezeExcite(16)
        self.project = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.stem(x))
        y = self.project(self.se(nn.functional.silu(self.bn(self.depthwise(F.gelu(self.expand(x)))))))
        return self.head((x + y).mean((2, 3)))


def tiny_vit() -> nn.Module:
    return timm.models.VisionTransformer(
        img_size=16, patch_size=4, in_chans=3, num_classes=10, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0
    )


ARCHITECTURES = {
    "resnet20": lambda: create_model("resnet20_cifar10", pretrained=False),
    "depthwise_se": DepthwiseSENet,
    "timm_vit": tiny_vit,
}


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("k", [0, 2, 5])
def test_every_window_reproduces_the_network(name, k):
    """For every layer, window(z, *externals) equals the traced network's own values at the taps."""
    torch.manual_seed(0)
    model = ARCHITECTURES[name]().eval()
    gm = trace(model)
    x = torch.randn(4, 3, 16, 16) if name == "timm_vit" else torch.randn(4, 3, 12, 12)
    path = PrunedPath(gm, x, batch_size=3)
    nodes = prunable_nodes(gm)
    assert len(nodes) >= 4
    with torch.no_grad():
        for node in nodes:
            window = build_window(gm, node, k)
            taps = window.module(path.value(node), *path.values(window.externals))
            assert len(taps) == len(window.ops) <= k + 1
            for tap, (tap_name, _) in zip(taps, window.ops, strict=True):
                torch.testing.assert_close(tap, path.value(path.node(tap_name)))
        torch.testing.assert_close(path.value(path.node("output").args[0]), model(x))


def test_vit_windows_count_attention_linear_and_gelu():
    gm = trace(tiny_vit().eval())
    qkv = next(n for n in prunable_nodes(gm) if n.target == "blocks.0.attn.qkv")
    kinds = [kind for _, kind in build_window(gm, qkv, 4).ops]
    assert kinds == ["linear", "attention", "linear", "linear", "activation"]  # qkv, sdpa, proj, fc1, gelu


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.sum() > 0 else -x


class HasUntraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.b = nn.Linear(4, 4), Untraceable(), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.gate(self.a(x)))


def test_untraceable_model_names_the_module_and_leaf_registration_fixes_it():
    with pytest.raises(ValueError, match="Untraceable.*register_leaf_module"):
        trace(HasUntraceable())
    register_leaf_module(Untraceable)
    gm = trace(HasUntraceable())
    assert [n.target for n in prunable_nodes(gm)] == ["a", "b"]


def test_pruned_path_recomputes_downstream_after_a_weight_change(tiny_resnet):
    gm = trace(tiny_resnet)
    x = torch.randn(5, 3, 6, 6)
    path = PrunedPath(gm, x, batch_size=2)
    out = path.node("output").args[0]
    before = path.value(out).clone()
    c1 = path.node("c1")
    with torch.no_grad():
        gm.get_submodule("c1").weight.zero_()
    assert torch.equal(path.value(out), before)  # still cached
    path.invalidate(c1)
    assert path.node("relu") in path.env  # upstream values survive
    torch.testing.assert_close(path.value(out), tiny_resnet(x))
    path.release_before(path.node("fc"))
    assert path.node("c1") not in path.env and path.node("flatten") in path.env
