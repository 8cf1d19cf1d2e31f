"""Where active learning is measured: round recipes and data regimes as presets of ordinary experiment keys.

Each preset is a dict of dotted experiment keys (``medloop.config.apply_overrides``), so everything a preset sets
a user can set in an experiment file, and ``benchmarks/label_efficiency.py --regime/--recipe`` only picks them.

Regimes (what the literature expects of each: Lueth et al. 2023, Munjal et al. 2022 find small gains over random
on balanced data with good features; Hacohen et al. 2022 and Chen et al. 2023 large ones at tiny budgets; DIRECT,
Nuggehalli et al. 2023, large ones under class imbalance):

- ``balanced``: the data as it is; the paper's 16 images per class to start, 16 per class per round, up to half
  the pool;
- ``screening``: the training pool holds 10% positives (validation and test unchanged), the first 20 images drawn
  at random (no label used), 8 per class per round (16 for strategies that do not balance classes), up to half
  the pool;
- ``cold-start``: 6 images to start, chosen without any label (TypiClust on the trunk's features; random for
  the random track), 3 per class per round, up to 10% of the pool.

Recipes:

- ``frozen``: one self-supervised trunk per split (``split_seed: 0``: every seed shares the split and the
  trunk), its features computed once, only the head trained each round (``medloop.training.head``);
- ``finetune``: each seed its own split and self-supervised trunk, the whole network trained again from the
  trunk every round for 12 epochs with a cosine learning rate, on 2 augmented copies (benchmarks/RESULTS.md 2.2).
"""

from __future__ import annotations

__all__ = ["REGIMES", "RECIPES"]

REGIMES: dict[str, dict] = {
    "balanced": {"initial": "per_class", "initial_per_class": 16, "query_per_class": 16, "budget": 0.5,
                 "max_rounds": 8},
    "screening": {"pool_positive_share": 0.1, "positive_class": 1, "initial": "random", "initial_size": 20,
                  "query_per_class": 8, "budget": 0.5, "max_rounds": 8},
    "cold-start": {"initial": "label_free", "initial_size": 6, "initial_strategy": "typiclust", "query_per_class": 3,
                   "budget": 0.1, "max_rounds": 10},
}

RECIPES: dict[str, dict] = {
    "frozen": {"recipe": "frozen", "split_seed": 0, "augment_copies": 1, "retrain": "restart",
               "classifier.pretrained": "selfsup", "classifier.augment": {}, "classifier.fine_tune": "head",
               "classifier.epochs": 100, "classifier.batch_size": 64, "classifier.schedule": "cosine",
               "classifier.patience": 0},
    "finetune": {"recipe": "finetune", "split_seed": None, "augment_copies": 2, "retrain": "restart",
                 "classifier.pretrained": "selfsup", "classifier.schedule": "cosine", "classifier.epochs": 12},
}
