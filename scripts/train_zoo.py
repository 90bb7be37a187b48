"""Train the Fashion-MNIST zoo once, by a developer, and write assets/<name>.safetensors + <name>.json.

    .venv/bin/python scripts/train_zoo.py --model resnet20 --epochs 12

The model card records the recipe, seed, epochs and the measured top-1 on the full 10,000-image test
set. Weights are stored in fp16 (the card's top-1 is measured after the fp16 round trip).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from snows_core.io.data import load_dataset
from snows_core.measure.metrics import top1
from snows_core.models.zoo import fashion_mlp, fashion_mobilenet_v2, fashion_resnet20, fashion_vit_tiny

ARCHITECTURES = {
    "mlp": fashion_mlp,
    "resnet20": fashion_resnet20,
    "mobilenet_v2": fashion_mobilenet_v2,
    "vit_tiny": fashion_vit_tiny,
}
RECIPES = {  # optimiser, peak learning rate, weight decay, label smoothing, augmentation
    "mlp": dict(opt="adamw", lr=2e-3, wd=1e-4, smoothing=0.0, augment=False),
    "resnet20": dict(opt="sgd", lr=0.1, wd=5e-4, smoothing=0.0, augment=True),
    "mobilenet_v2": dict(opt="sgd", lr=0.1, wd=4e-5, smoothing=0.0, augment=True),
    "vit_tiny": dict(opt="adamw", lr=2e-3, wd=0.05, smoothing=0.1, augment=True),
}


def augment(x: torch.Tensor) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (zero padding), per image."""
    flip = torch.rand(x.shape[0]) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    i, j = torch.randint(0, 5, (2,))
    return padded[:, :, i : i + x.shape[2], j : j + x.shape[3]]


def train(name: str, epochs: int, batch_size: int, seed: int, out: Path) -> dict:
    torch.manual_seed(seed)
    recipe = RECIPES[name]
    train_set, test_set = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    train_x, train_y = train_set.batch(slice(None))
    test_x, test_y = test_set.batch(slice(None))
    model = ARCHITECTURES[name]()
    if recipe["opt"] == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=recipe["lr"], momentum=0.9, nesterov=True, weight_decay=recipe["wd"]
        )
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["wd"])
    steps = epochs * (len(train_y) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps, pct_start=0.15)
    tic = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_y))
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            x = augment(train_x[idx]) if recipe["augment"] else train_x[idx]
            loss = F.cross_entropy(model(x), train_y[idx], label_smoothing=recipe["smoothing"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
        acc = top1(model, test_x, test_y, batch_size=1000)
        print(
            f"{name} epoch {epoch + 1}/{epochs} loss {loss.item():.3f} test top-1 {acc:.4f} "
            f"({time.perf_counter() - tic:.0f}s)",
            flush=True,
        )
    model.eval()
    state = {k: v.detach().half() if v.is_floating_point() else v.detach() for k, v in model.state_dict().items()}
    reloaded = ARCHITECTURES[name]()
    reloaded.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    card = {
        "name": name,
        "dataset": "fashion-mnist",
        "test_top1": top1(reloaded, test_x, test_y, batch_size=1000),
        "test_images": len(test_y),
        "test_top1_first_1000": top1(reloaded, test_x[:1000], test_y[:1000], batch_size=1000),
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "recipe": {**recipe, "schedule": "one-cycle, 15% warm-up", "loss": "cross-entropy"},
        "storage": "fp16 safetensors",
        "train_seconds": round(time.perf_counter() - tic),
        "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out / f"{name}.safetensors"))
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", choices=sorted(ARCHITECTURES), required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "assets")
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.model:
        card = train(name, args.epochs, args.batch_size, args.seed, args.out)
        print(json.dumps(card), flush=True)


if __name__ == "__main__":
    main()
