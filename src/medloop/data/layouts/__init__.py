"""Data layouts: one reader per folder convention. Importing this package registers them all."""

from medloop.data.layouts.base import BUILTINS, LAYOUTS, Layout, Option
from medloop.data.layouts import volumes, chest, folder, dicom  # noqa: F401,E402  (registration order = detection order)

__all__ = ["Layout", "Option", "LAYOUTS", "BUILTINS"]
