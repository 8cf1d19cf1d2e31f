"""The track ``medloop serve`` runs for a collaborative-segmentation experiment, in the method's words."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medloop.data import kfold_by_case
from medloop.methods.base import Plan, finite
from medloop.methods.ravanbakhsh.config import CollaborativeConfig
from medloop.methods.ravanbakhsh.method import Ravanbakhsh, load_collab_data
from medloop.query import build_strategy
from medloop.seeding import stream

__all__ = ["plan"]


def plan(config: CollaborativeConfig, out: Path, progress: bool = False) -> Plan:
    """The first fold with the first strategy, budget and number of cycles."""
    data = load_collab_data(config, progress)
    train_idx, test_idx = kfold_by_case(data.dataset, k=config.folds, seed=config.seed)[0]
    cases = np.array(data.dataset.case_ids)
    base_case = str(stream(config.seed, "fold", 0, "base case").choice(sorted(set(cases[train_idx]))))  # as `run`
    spec, n, b = config.strategy_specs[0], config.cycles[0], config.budgets[0]
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Ravanbakhsh(data, train_idx, test_idx, base_case, b, n, config, config.seed, progress)
    label = f"{spec['label']}-n{n}"

    def headline(rec: dict) -> dict:
        dice = rec["test"].get("dice", {})
        return {"Dice": finite(rec["test"].get("dice_mean")), **{k: finite(v) for k, v in dice.items()}}

    structures = ", ".join(data.names.values())
    hints = {"task": f"Paint the {structures} in this slice, then submit (Enter). There is no image class.",
             "proposal": "The generator's segmentation is loaded: correct it where it is wrong, then submit (Enter).",
             "uncertainty": "the discriminator's implausibility per pixel: 0 plausible, 1 least plausible",
             "no_uncertainty": "the discriminator's map comes with the model's proposal for the images it asks about"}
    return Plan(method, strategy, spec, config.seed, out / "tracks" / "fold0" / f"{label}-b{int(round(b * 100)):03d}",
                data.dataset.subset(method.base + method.pool), len(method.base) + sum(method.per_cycle), [],
                {0: "background", **data.names},
                {"method": config.method, "strategy": spec["label"], "fold": 0, "base_case": base_case, "budget": b,
                 "cycles": n}, headline, hints)
