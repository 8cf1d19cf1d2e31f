"""An experiment's run folder: refuse to write over a run or resume it with another config; results computed
once (baselines), written atomically, read back on resume."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medloop.errors import ConfigError
from medloop.storage import write_json

__all__ = ["check_resume", "once"]


def check_resume(out: Path, config: Any, resume: bool) -> None:
    """Refuse to write over a run in ``out`` unless ``resume``, and to resume it with a different config."""
    saved = Path(out) / "config.yaml"
    if not saved.exists():
        return
    if not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it, or choose another --out")
    previous, current = type(config).from_yaml(saved).to_dict(), config.to_dict()
    if previous != current:
        changed = sorted(k for k, v in current.items() if previous.get(k) != v)
        raise ConfigError(f"{out} holds a run with a different config (changed: {', '.join(changed)}); "
                          "use a new --out folder, or the same config to resume")


def once(path: Path, compute: Callable[[], dict]) -> dict:
    """The result stored at ``path``, computed and written (atomically) the first time."""
    if not path.exists():
        write_json(path, compute())
    return json.loads(path.read_text())
