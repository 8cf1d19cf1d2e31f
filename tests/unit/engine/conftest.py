"""A tiny classifier checkpoint and a tiny phantom pool, shared by the engine tests."""

from __future__ import annotations

import pytest

from medloop.config import DataConfig


@pytest.fixture(scope="package")
def checkpoint(tmp_path_factory):
    from medloop.models import build_model
    from medloop.seeding import torch_init
    from medloop.training.checkpoint import save_checkpoint

    params = {"in_channels": 1, "num_classes": 2, "width": 4, "dropout": 0.5}
    with torch_init(0):
        model = build_model("resnet18", **params)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", model, "resnet18", params,
                           data_config={"size": 32, "channels": 1, "normalize": "percentile"})


@pytest.fixture(scope="package")
def pool() -> DataConfig:
    return DataConfig.from_dict({"source": "builtin:chest-xray", "options": {"n_normal": 18, "n_nodule": 18}})
