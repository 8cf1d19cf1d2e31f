"""Built-in phantom datasets, addressed as ``builtin:chest-xray`` and ``builtin:cardiac-mr``.

Each case is rendered from its own generator seeded by ``(seed, case index)``, so a case does not
depend on how many cases are asked for, and the same seed always gives the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from medloop.cache import cached_arrays
from medloop.data.layouts.base import BUILTINS, Layout, Option
from medloop.data.phantoms.cardiac_mr import render_cardiac_volume
from medloop.data.phantoms.chest_xray import ChestXrayParams, render_chest_xray
from medloop.data.record import DatasetInfo, Entry, RawItem
from medloop.errors import ConfigError

__all__ = ["ChestXrayPhantom", "CardiacMRPhantom"]

_CHEST_STREAM, _CARDIAC_STREAM = 0xC4E5, 0xCA4D  # separate random streams per phantom family
# Bump when a renderer changes, so cached cases are rendered again.
RENDER_VERSION = 4


def _positive(layout: str, **values: int) -> None:
    for key, value in values.items():
        if value < 0:
            raise ConfigError(f"The '{key}' option of builtin:{layout} must be >= 0; got {value} instead")


class _Phantom(Layout):
    """A built-in dataset rendered on the fly: one seeded generator per case, renders cached on disk."""

    stream: int  # separates the random streams of the phantom families
    default_size: int

    def _render(self, entry: Entry, size: int | None, render: Callable, key: dict) -> tuple[np.ndarray, np.ndarray, dict]:
        """``render(rng, size) -> (image, mask, meta)`` for this case, from the cache when rendered before."""
        size = size or self.default_size

        def compute():
            image, mask, meta = render(np.random.default_rng([self.seed, self.stream, entry.index]), size)
            return {"image": image, "mask": mask}, meta

        full_key = {"phantom": self.name, "v": RENDER_VERSION, "seed": self.seed, "i": entry.index, "size": size, **key}
        arrays, meta = cached_arrays(full_key, compute)
        return arrays["image"], arrays["mask"], meta


@BUILTINS.register("chest-xray")
class ChestXrayPhantom(_Phantom):
    name = "chest-xray"
    summary = "radiograph phantom, 247 cases (93 normal / 154 nodule, like JSRT), lung masks; 256 px by default"
    tree = "builtin:chest-xray   (rendered on the fly; no files)"
    options = {
        "n_normal": Option(93, "number of normal cases"),
        "n_nodule": Option(154, "number of nodule cases (1-3 faint nodules inside the lungs)"),
        "lung_labels": Option("binary", "binary lung mask, or left-right (1 right lung, 2 left lung)", ("binary", "left-right")),
        "nodule_radius": Option(list(ChestXrayParams.nodule_radius), "nodule radius range, fraction of the image size", kind=list),
        "nodule_contrast": Option(list(ChestXrayParams.nodule_contrast), "nodule contrast range (attenuation units)", kind=list),
    }
    default_size = 256
    stream = _CHEST_STREAM

    def __init__(self, root, seed: int = 0, **options):
        super().__init__(root, seed, **options)
        _positive(self.name, n_normal=self.opts["n_normal"], n_nodule=self.opts["n_nodule"])
        for key in ("nodule_radius", "nodule_contrast"):
            value = self.opts[key]
            if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value)
                    and 0 < value[0] <= value[1]):
                raise ConfigError(f"The '{key}' option of builtin:chest-xray must be [low, high] with 0 < low <= high; "
                                  f"got {value!r} instead")
        self.params = ChestXrayParams(nodule_radius=tuple(self.opts["nodule_radius"]),
                                      nodule_contrast=tuple(self.opts["nodule_contrast"]))
        if self.opts["n_normal"] + self.opts["n_nodule"] == 0:
            raise ConfigError("builtin:chest-xray needs at least one case; set n_normal or n_nodule > 0")

    def info(self) -> DatasetInfo:
        labels = {0: "background", 1: "lung"} if self.opts["lung_labels"] == "binary" else {
            0: "background", 1: "right lung", 2: "left lung"}
        return DatasetInfo(self.name, f"builtin:{self.name}", ("normal", "nodule"), labels)

    def scan(self) -> Iterator[Entry]:
        n_normal, n_nodule = self.opts["n_normal"], self.opts["n_nodule"]
        n = n_normal + n_nodule
        labels = np.zeros(n, dtype=int)
        labels[np.random.default_rng([self.seed, _CHEST_STREAM]).permutation(n)[:n_nodule]] = 1
        for i in range(n):
            yield Entry(f"cxr-{i + 1:04d}", f"cxr-{i + 1:04d}", None, (), int(labels[i]), index=i)

    def load(self, entry: Entry, size: int | None) -> RawItem:
        nodule = entry.label == 1
        image, mask, meta = self._render(
            entry, size, lambda rng, sz: render_chest_xray(rng, sz, nodule=nodule, params=self.params),
            {"nodule": nodule, "nodule_params": [self.opts["nodule_radius"], self.opts["nodule_contrast"]]})
        if self.opts["lung_labels"] == "binary":
            mask = (mask > 0).astype(np.int64)
        return RawItem(image[:, :, None], mask, f"builtin:{self.name}/{entry.entry_id}", meta=meta)


@BUILTINS.register("cardiac-mr")
class CardiacMRPhantom(_Phantom):
    name = "cardiac-mr"
    summary = "short-axis cine MR phantom, 10 volumes x 10-20 slices (like HVSMR 2016); 0 bg, 1 myocardium, 2 blood pool"
    tree = "builtin:cardiac-mr   (rendered on the fly; no files)"
    options = {
        "n_volumes": Option(10, "number of volumes"),
        "min_slices": Option(10, "fewest short-axis slices per volume"),
        "max_slices": Option(20, "most short-axis slices per volume"),
    }
    volumetric = True
    default_size = 128
    stream = _CARDIAC_STREAM

    def __init__(self, root, seed: int = 0, **options):
        super().__init__(root, seed, **options)
        lo, hi = self.opts["min_slices"], self.opts["max_slices"]
        if self.opts["n_volumes"] < 1:
            raise ConfigError(f"The 'n_volumes' option of builtin:cardiac-mr must be >= 1; got {self.opts['n_volumes']} instead")
        if not 1 <= lo <= hi:
            raise ConfigError(f"builtin:cardiac-mr needs 1 <= min_slices <= max_slices; got {lo} and {hi}")

    def info(self) -> DatasetInfo:
        return DatasetInfo(self.name, f"builtin:{self.name}", (), {0: "background", 1: "myocardium", 2: "blood pool"}, True)

    def scan(self) -> Iterator[Entry]:
        for i in range(self.opts["n_volumes"]):
            yield Entry(f"cmr-{i + 1:02d}", f"cmr-{i + 1:02d}", None, (), None, index=i)

    def load(self, entry: Entry, size: int | None) -> RawItem:
        lo, hi = self.opts["min_slices"], self.opts["max_slices"]

        def render(rng, sz):
            return render_cardiac_volume(rng, sz, int(rng.integers(lo, hi, endpoint=True)))

        image, mask, meta = self._render(entry, size, render, {"slices": [lo, hi]})
        return RawItem(image[..., None], mask, f"builtin:{self.name}/{entry.entry_id}", meta=meta)
