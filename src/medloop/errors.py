"""Exceptions raised on bad user input.

Every message names the file or field, says what is wrong and how to fix it, e.g.
``masks/007.png: size 512x512 does not match image 256x256; resize the mask to the image or remove it``.
"""

from __future__ import annotations

__all__ = ["MedloopError", "ConfigError", "DataError"]


class MedloopError(Exception):
    """Base class of every error medloop raises on purpose."""


class ConfigError(MedloopError, ValueError):
    """A configuration key or value is invalid (unknown key, wrong type, impossible value)."""


class DataError(MedloopError, ValueError):
    """A data file, folder or record cannot be used.

    Args:
        message: what is wrong and how to fix it.
        path: the file or folder at fault (shown first in the message), if any.
        reason: a short machine-readable category (``corrupt``, ``mask-size`` ...) used to count
            skipped items in summaries.
    """

    def __init__(self, message: str, path: object | None = None, reason: str = "invalid"):
        self.path = None if path is None else str(path)
        self.reason = reason
        self.detail = message
        super().__init__(f"{self.path}: {message}" if self.path else message)
