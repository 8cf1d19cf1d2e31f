"""Checkpoints: model name and parameters, weights, configs, class/label names, metrics, version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medloop.errors import DataError
from medloop.storage import save_torch

__all__ = ["save_checkpoint", "load_checkpoint", "data_as_trained"]


def save_checkpoint(path: str | Path, model: nn.Module, model_name: str, model_params: dict[str, Any],
                    **record: Any) -> Path:
    from medloop import __version__

    # atomic: a kill never leaves a half-written checkpoint
    return save_torch(path, {"model": model_name, "model_params": model_params, "state_dict": model.state_dict(),
                             "medloop_version": __version__, **record})


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a medloop checkpoint; returns ``(model, record)``."""
    from medloop.models import build_model

    path = Path(path)
    if not path.is_file():
        raise DataError("checkpoint not found; give the checkpoint.pt written by `medloop train`", path, "missing")
    try:
        record = torch.load(path, map_location=device, weights_only=True)  # plain types only: no code runs on load
    except Exception as exc:
        raise DataError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path, "corrupt") from None
    if not isinstance(record, dict) or "model" not in record or "state_dict" not in record:
        raise DataError("not a medloop checkpoint (no 'model'/'state_dict'); use a file written by `medloop train`", path, "format")
    model = build_model(record["model"], **record["model_params"])
    model.load_state_dict(record["state_dict"])
    return model.to(device), record


def data_as_trained(data, record: dict[str, Any]):
    """``data`` (a ``DataConfig``) read at the working size, channels and normalisation the checkpoint (its
    ``record``) was trained with, where it says."""
    trained = record.get("data_config", {})
    return data.replace(size=trained.get("size", data.size), channels=trained.get("channels", data.channels),
                        normalize=trained.get("normalize", data.normalize))
