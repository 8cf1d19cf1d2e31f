"""The track ``medloop serve`` runs for a generative active-learning experiment, in the method's words."""

from __future__ import annotations

from pathlib import Path

from medloop.methods.base import Plan, finite
from medloop.methods.mahapatra.config import ExperimentConfig
from medloop.methods.mahapatra.method import Mahapatra, prepare
from medloop.methods.mahapatra.protocol import sampler_factory
from medloop.query import build_strategy

__all__ = ["plan"]


def plan(config: ExperimentConfig, out: Path, progress: bool = False) -> Plan:
    """The first seed with the first strategy; the fully supervised baselines are not trained."""
    ctx = prepare(config, progress=progress)
    ctx.workdir = out  # where a self-supervised checkpoint goes when medloop's cache is off
    seed, spec = config.seeds[0], config.strategy_specs[0]
    strategy = build_strategy(spec["name"], spec.get("params"))
    method = Mahapatra(ctx, seed, strategy, sampler_factory(ctx, out))
    info = ctx.dataset.info
    mask_labels = dict(info.mask_labels) or {0: "background", 1: "foreground"}

    def headline(rec: dict) -> dict:
        seg = rec.get("seg") or {}
        return {"val AUC/acc": finite(rec["val"].get("auc_or_acc")), "test AUC": finite(rec["test"].get("auc")),
                "test acc": finite(rec["test"].get("accuracy")), "seg Dice": finite(seg.get("dice_mean"))}

    structures = ", ".join(n for v, n in sorted(mask_labels.items()) if v != 0)
    hints = {"task": f"Choose the image class (Shift+1…9) and paint the {structures} mask, then submit (Enter).",
             "proposal": "The model's class probabilities stand beside the classes and its mask is loaded: correct "
                         "the mask, choose the class, then submit (Enter).",
             "uncertainty": "the segmenter's predictive entropy per pixel (MC dropout): 0 sure, 1 most unsure",
             "no_uncertainty": "this model proposes the image class only: its segmenter trains at the record_at "
                               "stages, and the uncertainty map comes with it"}
    return Plan(method, strategy, spec, seed, out / "tracks" / f"{spec['label']}-seed{seed}", method.pool,
                method.budget, [info.class_names[c] if c < len(info.class_names) else str(c)
                                for c in range(ctx.num_classes)], mask_labels,
                {"method": config.method, "strategy": spec["label"], "seed": seed}, headline, hints,
                config.oracle_timeout)
