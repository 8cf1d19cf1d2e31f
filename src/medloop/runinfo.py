"""What is written next to every result: resolved config, package versions, seed, machine."""

from __future__ import annotations

import datetime as _dt
import platform
from pathlib import Path
from typing import Any

from medloop.storage import write_json

__all__ = ["run_record", "write_run_record"]


def run_record(seed: int, configs: dict[str, Any], command: str) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    from medloop import __version__

    return {
        "command": command,
        "seed": seed,
        "medloop_version": __version__,
        "versions": {"torch": torch.__version__, "monai": monai.__version__, "numpy": numpy.__version__,
                     "python": platform.python_version()},
        "machine": {"platform": platform.platform(), "cuda": torch.cuda.is_available()},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": configs,
    }


def write_run_record(out: Path, seed: int, configs: dict[str, Any], command: str) -> Path:
    return write_json(out / "run.json", run_record(seed, configs, command), indent=2)
