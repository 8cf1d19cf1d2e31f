"""``classifier.pretrained: selfsup``: a self-supervised trunk per seed (or per ``split_seed``, shared by the
seeds), pretrained on that seed's training pool.

Only the pool's images are used (never their labels, never the validation or test images). A checkpoint is
cached by everything it depends on (data config, split fractions, seed, network, self-supervised config,
medloop version) in medloop's cache folder (``$MEDLOOP_CACHE_DIR``, see ``medloop.cache``), so a second
experiment on the same data reuses it; with the cache off it is written inside the run folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from medloop.cache import cache_dir
from medloop.data import MedDataset
from medloop.errors import ConfigError
from medloop.models import build_model
from medloop.seeding import seed_for, torch_init
from medloop.training.selfsup import pretrain

__all__ = ["selfsup_key", "selfsup_checkpoint"]


def selfsup_key(config, seed: int, in_channels: int) -> dict:
    """What a seed's self-supervised checkpoint depends on (``config``: an ``ExperimentConfig``)."""
    from medloop import __version__

    cls = config.classifier_config
    data = config.data_config.to_dict()
    if not str(data["source"]).startswith("builtin:"):  # one folder, one key: however the path was written
        data["source"] = str(Path(data["source"]).expanduser().resolve())
    key = {"data": data, "val_fraction": config.val_fraction,
           "test_fraction": config.test_fraction, "seed": seed, "model": cls.model, "model_params": cls.model_params,
           "in_channels": in_channels, "selfsup": config.selfsup_config.to_dict(), "medloop": __version__}
    if config.pool_positive_share is not None:  # a screening pool holds other images than the split's pool
        key["pool"] = {"positive_share": config.pool_positive_share, "positive_class": config.positive_class}
    return key


def selfsup_checkpoint(config, pool: MedDataset, seed: int, workdir: Path | None, progress: bool = True) -> Path:
    """The path of the seed's self-supervised checkpoint, pretraining it on ``pool``'s images when not cached."""
    in_channels = int(pool[0].image.shape[0])
    key = selfsup_key(config, seed, in_channels)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = cache_dir()
    if root is not None:
        path = root / "selfsup" / f"{digest}.pt"
    elif workdir is not None:
        path = Path(workdir) / "pretrained" / f"seed{seed}-{digest}.pt"
    else:
        raise ConfigError("classifier.pretrained: selfsup needs a place to keep the checkpoint: run it through "
                          "run_experiment (the run folder) or turn medloop's cache on (unset MEDLOOP_CACHE_DIR=off)")
    if path.is_file():
        return path
    cls = config.classifier_config
    with torch_init(seed, "selfsup", "init"):
        model = build_model(cls.model, in_channels=in_channels, num_classes=pool.num_classes, **cls.model_params)
    images = torch.stack([s.image for s in pool])
    sscfg = config.selfsup_config.replace(seed=seed_for(seed, "selfsup"), device=config.device)
    pretrain(model, images, sscfg, progress=progress, out=path,
             meta={"model": cls.model, "model_params": cls.model_params, "in_channels": in_channels,
                   "key": key, "n_images": int(len(images)),
                   "pool_ids": np.asarray(pool.sample_ids).tolist()})
    return path
