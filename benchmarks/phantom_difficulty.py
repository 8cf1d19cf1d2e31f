"""How hard is the built-in chest X-ray phantom? A small CNN trained on all labels, 5-fold CV by case.

The phantom must not be trivially separable: the target is a test ROC AUC clearly below 1.0
(0.85-0.95). Usage:

    python benchmarks/phantom_difficulty.py [--size 128] [--folds 5] [--epochs 40] [--seed 0]

Prints progress, then a final JSON line:
    {"size":..,"cases":..,"folds":..,"auc_mean":..,"auc_std":..,"auc_per_fold":[..],"minutes":..}
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from medloop.data import kfold_by_case, load_dataset


def small_cnn() -> nn.Module:
    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(block(1, 16), block(16, 32), block(32, 64), block(64, 96),
                         nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.3), nn.Linear(96, 1))


def predict(model, x, batch=64):
    model.eval()
    with torch.no_grad():
        return torch.cat([torch.sigmoid(model(x[i:i + batch]))[:, 0] for i in range(0, len(x), batch)]).numpy()


def train_fold(x_tr, y_tr, epochs, seed):
    """Fixed schedule (AdamW, cosine decay), final model: no checkpoint picking on a tiny validation set."""
    torch.manual_seed(seed)
    model = small_cnn()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    pos_weight = torch.tensor([(y_tr == 0).sum() / max((y_tr == 1).sum(), 1)], dtype=torch.float32)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), 16):
            idx = order[i:i + 16]
            xb = x_tr[idx]
            if torch.rand(1, generator=gen).item() < 0.5:  # nodule presence is flip-invariant
                xb = xb.flip(-1)
            loss = loss_fn(model(xb)[:, 0], y_tr[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nodule-radius", type=float, nargs=2, default=None, help="override the phantom's range")
    parser.add_argument("--nodule-contrast", type=float, nargs=2, default=None, help="override the phantom's range")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    start = time.time()
    options = {k: list(v) for k, v in (("nodule_radius", args.nodule_radius), ("nodule_contrast", args.nodule_contrast)) if v}
    ds = load_dataset("builtin:chest-xray", size=args.size, seed=args.seed, options=options)
    x = torch.stack([s.image for s in ds])
    y = torch.from_numpy(ds.labels)
    aucs = []
    for k, (train_idx, test_idx) in enumerate(kfold_by_case(ds, k=args.folds, seed=args.seed)):
        model = train_fold(x[train_idx], y[train_idx], args.epochs, args.seed + k)
        auc = roc_auc_score(y[test_idx].numpy(), predict(model, x[test_idx]))
        aucs.append(float(auc))
        print(f"fold {k}: test AUC {auc:.3f} ({len(test_idx)} cases)", flush=True)
    print(json.dumps({"size": args.size, "phantom_options": options, "cases": len(ds), "folds": args.folds, "epochs": args.epochs,
                      "auc_mean": round(float(np.mean(aucs)), 4), "auc_std": round(float(np.std(aucs)), 4),
                      "auc_per_fold": [round(a, 4) for a in aucs], "minutes": round((time.time() - start) / 60, 2)}))


if __name__ == "__main__":
    main()
