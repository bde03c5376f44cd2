"""Train ShapesNet from scratch, seeded, and record its weights beside their sha256 and accuracy.

``make weights`` runs ``python -m vislib.train``: a fresh training set of synthetic shapes is
drawn every epoch (the generator is fast), so the network never sees the same image twice;
the held-out set is drawn from a seed that training never uses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vislib.data import make_shapes
from vislib.models import DATA_DIR, METADATA_FILE, WEIGHTS_FILE, ShapesNet, file_sha256

HELD_OUT_SEED = 10_000  # training epochs use seeds 0 .. epochs-1
HELD_OUT_SIZE = 2000


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` whose predicted class is the label."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)


def train(epochs: int = 12, per_epoch: int = 20_000, batch_size: int = 128, lr: float = 3e-3,
          seed: int = 0) -> tuple[ShapesNet, dict]:
    """Train with AdamW and a one-cycle schedule; returns the model and its record."""
    torch.manual_seed(seed)
    model = ShapesNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (per_epoch // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    with tqdm(total=steps, desc="training ShapesNet", unit="batch") as bar:
        for epoch in range(epochs):
            data = make_shapes(per_epoch, seed=seed + epoch)
            order = torch.randperm(per_epoch)
            model.train()
            for i in range(per_epoch // batch_size):
                idx = order[i * batch_size : (i + 1) * batch_size]
                loss = F.cross_entropy(model(data.images[idx]), data.labels[idx])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    held_out = make_shapes(HELD_OUT_SIZE, seed=HELD_OUT_SEED)
    record = {
        "held_out_accuracy": accuracy(model, held_out.images, held_out.labels),
        "held_out": {"n": HELD_OUT_SIZE, "seed": HELD_OUT_SEED},
        "training": {"epochs": epochs, "images_per_epoch": per_epoch, "batch_size": batch_size,
                     "lr": lr, "seed": seed, "seconds": round(seconds, 1),
                     "torch": torch.__version__},
    }
    return model.eval(), record


def save(model: ShapesNet, record: dict, weights: Path = WEIGHTS_FILE, metadata: Path = METADATA_FILE) -> dict:
    """Write the state dict and a JSON record holding the file's sha256."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    record = {"file": weights.name, "sha256": file_sha256(weights), "classes": list(model.classes), **record}
    metadata.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--per-epoch", type=int, default=20_000)
    parser.add_argument("--min-accuracy", type=float, default=0.98)
    args = parser.parse_args()
    model, record = train(epochs=args.epochs, per_epoch=args.per_epoch)
    accuracy_ = record["held_out_accuracy"]
    if accuracy_ < args.min_accuracy:
        raise SystemExit(f"held-out accuracy {accuracy_:.4f} is below {args.min_accuracy}; weights not saved")
    record = save(model, record)
    print(f"held-out accuracy {accuracy_:.4f} in {record['training']['seconds']} s; "
          f"saved {WEIGHTS_FILE.relative_to(DATA_DIR.parent)} (sha256 {record['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
