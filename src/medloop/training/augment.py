"""Training augmentation with MONAI transforms: rotation, translation, scaling, flips (configurable, seeded)."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.transforms import Compose, RandAffined, RandFlipd

from medloop.config import AugmentConfig
from medloop.data.dataset import MedDataset

__all__ = ["build_augmentation", "TrainingView"]


def build_augmentation(config: AugmentConfig, size: tuple[int, int], seed: int) -> Compose | None:
    """MONAI dict transforms on ``{"image": [C,H,W], "mask": [1,H,W]}`` (mask optional), or None when off."""
    if not config.enabled:
        return None
    transforms: list[Any] = [
        RandAffined(
            keys=["image", "mask"],
            prob=config.prob,
            rotate_range=(math.radians(config.rotate_deg),),
            translate_range=(config.translate * size[0], config.translate * size[1]),
            scale_range=(config.scale, config.scale),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
            allow_missing_keys=True,
        )
    ]
    if config.flip:
        transforms.append(RandFlipd(keys=["image", "mask"], prob=0.5, spatial_axis=1, allow_missing_keys=True))
    compose = Compose(transforms)
    compose.set_random_state(seed=seed)
    return compose


class TrainingView(torch.utils.data.Dataset):
    """Samples of a dataset as training dicts (image, mask, label), augmented when a transform is given."""

    def __init__(self, dataset: MedDataset, transform: Compose | None = None):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s = self.dataset[i]
        item: dict[str, Any] = {"image": s.image}
        if s.mask is not None:
            item["mask"] = s.mask.unsqueeze(0).float()
        if self.transform is not None:
            item = self.transform(item)
        image = torch.as_tensor(item["image"]).float()
        h, w = image.shape[-2:]
        mask = torch.as_tensor(item["mask"])[0].round().long() if "mask" in item else torch.full((h, w), -1, dtype=torch.long)
        return {"image": image, "mask": mask, "label": torch.tensor(-1 if s.label is None else s.label)}
