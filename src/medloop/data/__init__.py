"""Data: built-in phantoms, readers for real layouts, validation, splits and inspection."""

from medloop.data import builtin as _builtin  # noqa: F401  (registers the phantoms)
from medloop.data.dataset import MedDataset, collate_samples, load_dataset, resolve_layout
from medloop.data.inspect import DatasetSummary, save_preview, summarize
from medloop.data.layouts import BUILTINS, LAYOUTS, Layout
from medloop.data.record import DatasetInfo, Entry, RawItem, Sample
from medloop.data.splits import Split, kfold_by_case, split_by_case

__all__ = [
    "BUILTINS",
    "LAYOUTS",
    "DatasetInfo",
    "DatasetSummary",
    "Entry",
    "Layout",
    "MedDataset",
    "RawItem",
    "Sample",
    "Split",
    "collate_samples",
    "kfold_by_case",
    "load_dataset",
    "resolve_layout",
    "save_preview",
    "split_by_case",
    "summarize",
]
