"""Train ShapesNet from scratch, seeded, and record its weights beside their sha256 and accuracy.

``make weights`` runs ``python -m vislib.train`` and ``python -m vislib.train --robust``, which
write ``vislib/weights/`` (the package data that ``vislib.models.shapes_net`` reads): a
fresh training set of synthetic shapes is drawn every epoch (the generator is fast), so the
network never sees the same image twice; the held-out set is drawn from a seed that training
never uses.

``--robust`` trains the same network by PGD adversarial training (Madry et al. 2018): every
batch is replaced by its PGD adversarial examples (L-infinity ball of radius ``ROBUST_EPS``,
``ROBUST_STEPS`` steps, a random start drawn per batch) before the weight step. The radius
grows from 0 to ``ROBUST_EPS`` over the first ``ROBUST_WARMUP`` of the steps (as the learning
rate warms up): trained at the full radius from the start, the network stayed at chance for a
whole epoch. Each batch then
costs ``ROBUST_STEPS + 1`` forward and backward passes, so it trains on fewer images.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vislib.adversarial import pgd
from vislib.data import make_shapes
from vislib.models import ShapesNet, file_sha256, weights_files

HELD_OUT_SEED = 10_000  # training epochs use seeds 0 .. epochs-1
HELD_OUT_SIZE = 2000
ROBUST_EPS = 8 / 255  # L-infinity radius of the robust model's training attack, in [0, 1] pixel units
ROBUST_STEPS = 3
ROBUST_WARMUP = 0.3  # eps grows from 0 over this share of the steps: from scratch, the full eps stalls at chance
EPOCHS, ROBUST_EPOCHS = 12, 8  # a robust epoch costs ROBUST_STEPS + 1 plain ones
MIN_ACCURACY, ROBUST_MIN_ACCURACY = 0.98, 0.9
PGD_EVALUATION_STEPS = 10


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Share of ``images`` whose predicted class is the label."""
    model.eval()
    correct = sum(
        (model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
        for i in range(0, len(labels), batch_size)
    )
    return correct / len(labels)


def evaluate(model: torch.nn.Module) -> dict:
    """The held-out record of a trained ShapesNet: its accuracy on ``HELD_OUT_SIZE`` shapes from
    ``HELD_OUT_SEED``, clean and under PGD (L-infinity, ``ROBUST_EPS``, 10 steps)."""
    held_out = make_shapes(HELD_OUT_SIZE, seed=HELD_OUT_SEED)
    attacked = pgd(model, held_out.images, held_out.labels, ROBUST_EPS, steps=PGD_EVALUATION_STEPS)
    return {
        "held_out_accuracy": accuracy(model, held_out.images, held_out.labels),
        "held_out_pgd_accuracy": accuracy(model, attacked, held_out.labels),
        "held_out": {"n": HELD_OUT_SIZE, "seed": HELD_OUT_SEED,
                     "pgd": {"norm": "linf", "eps": ROBUST_EPS, "steps": PGD_EVALUATION_STEPS, "seed": 0}},
    }


def train(epochs: int = 12, per_epoch: int = 20_000, batch_size: int = 128, lr: float = 3e-3,
          seed: int = 0, robust: bool = False) -> tuple[ShapesNet, dict]:
    """Train with AdamW and a one-cycle schedule, on PGD adversarial examples of each batch
    when ``robust``; returns the model and its record."""
    torch.manual_seed(seed)
    model = ShapesNet()
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (per_epoch // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    name = "robust ShapesNet" if robust else "ShapesNet"
    with tqdm(total=steps, desc=f"training {name}", unit="batch") as bar:
        for epoch in range(epochs):
            data = make_shapes(per_epoch, seed=seed + epoch)
            order = torch.randperm(per_epoch)
            model.train()
            for i in range(per_epoch // batch_size):
                idx = order[i * batch_size : (i + 1) * batch_size]
                images, labels = data.images[idx], data.labels[idx]
                if robust:  # the attack runs the model in eval mode and hands it back in train mode
                    eps = ROBUST_EPS * min(1.0, bar.n / (ROBUST_WARMUP * steps))
                    images = pgd(model, images, labels, eps, steps=ROBUST_STEPS, seed=bar.n) if eps else images
                loss = F.cross_entropy(model(images), labels)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
                bar.update()
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    record = {
        **evaluate(model.eval()),
        "training": {"epochs": epochs, "images_per_epoch": per_epoch, "batch_size": batch_size,
                     "lr": lr, "seed": seed, "seconds": round(seconds, 1),
                     "torch": torch.__version__},
    }
    if robust:
        record["training"]["attack"] = {"method": "pgd", "norm": "linf", "eps": ROBUST_EPS,
                                        "steps": ROBUST_STEPS, "random_start": True,
                                        "eps_warmup_share": ROBUST_WARMUP}
    return model, record


def save(model: ShapesNet, record: dict, weights: Path, metadata: Path) -> dict:
    """Write the state dict and a JSON record holding the file's sha256."""
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), weights)
    record = {"file": weights.name, "sha256": file_sha256(weights), "classes": list(model.classes), **record}
    metadata.write_text(json.dumps(record, indent=2) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robust", action="store_true", help="PGD adversarial training (the robust ShapesNet)")
    parser.add_argument("--epochs", type=int, default=None, help=f"default {EPOCHS} ({ROBUST_EPOCHS} with --robust)")
    parser.add_argument("--per-epoch", type=int, default=20_000)
    parser.add_argument("--min-accuracy", type=float, default=None,
                        help=f"default {MIN_ACCURACY} ({ROBUST_MIN_ACCURACY} with --robust)")
    args = parser.parse_args()
    weights, metadata = weights_files(robust=args.robust)
    if not isinstance(weights, Path):  # checked before the minutes of training, not after
        raise SystemExit(f"vislib's weights are not files on disk here ({weights}): run `make weights` in a checkout")
    epochs = args.epochs or (ROBUST_EPOCHS if args.robust else EPOCHS)
    min_accuracy = args.min_accuracy or (ROBUST_MIN_ACCURACY if args.robust else MIN_ACCURACY)
    model, record = train(epochs=epochs, per_epoch=args.per_epoch, robust=args.robust)
    accuracy_ = record["held_out_accuracy"]
    if accuracy_ < min_accuracy:
        raise SystemExit(f"held-out accuracy {accuracy_:.4f} is below {min_accuracy}; weights not saved")
    record = save(model, record, weights, metadata)
    print(f"held-out accuracy {accuracy_:.4f} (under PGD: {record['held_out_pgd_accuracy']:.4f}) in "
          f"{record['training']['seconds']} s; saved {weights} "
          f"(sha256 {record['sha256'][:12]}...)")


if __name__ == "__main__":
    main()
