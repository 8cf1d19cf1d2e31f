"""The config of human-machine collaborative segmentation (``experiments/ravanbakhsh2018.yaml``), validated before
any training."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from medloop.config import Config, DataConfig
from medloop.errors import ConfigError
from medloop.engine import check_engine
from medloop.methods.base import check_reads_per_image_key, strategy_specs

__all__ = ["CollaborativeConfig"]


@dataclasses.dataclass(frozen=True)
class CollaborativeConfig(Config):
    """Human-machine collaborative segmentation (Ravanbakhsh et al., ``experiments/ravanbakhsh2018.yaml``).

    Attributes:
        method: ``ravanbakhsh2018`` (how ``medloop run`` knows this file).
        data: ``DataConfig`` fields; volumes are read as 2D slices.
        folds: cross-validation folds by volume (case); ``max_folds`` runs only the first few.
        budgets: total budgets k as fractions of the pool slices (the paper: 10% ... 90%).
        cycles: numbers of cycles n to run for every budget (the paper: 1; several shows the cycling).
        strategies: strategy names or ``{name, params, label}``: ``discriminator`` (the method), ``random``, and
            any MC-dropout measure of the generator (``entropy``, ``bald``, ``margin``, ...).
        pix2pix: ``Pix2PixConfig`` fields (``workers``: each training in that many DDP processes).
        slice_reduction, q: per-slice reduction of the discriminator map (``foreground``, ``mean`` or ``low_q``).
        pseudo_threshold: keep a pseudo-label only when its slice's mean plausibility is at least this
            (``null``: keep all).
        repseudo: re-pseudo-label every remaining pool slice each cycle (else keep the first pseudo-label).
        qc_threshold: pseudo-labels whose predicted Dice (the discriminator's plausibility calibrated on the slices
            the expert labeled in the same cycle, ``medloop.uncertainty.qc``) is below this are flagged for review.
        n_mc_samples: MC-dropout passes of the MC strategies.
        fsl: also train the fully supervised cGAN per fold.
        processes: run the protocol's units (per fold: base model, tracks, FSL model) in this many processes of
            one thread each (on a CPU, N processes train faster than one process with N threads); either this or
            ``pix2pix.workers`` spends the cores, not both.
        seed, device.
        reads_per_image: different annotators who label each image under ``medloop serve`` (their consensus is
            what the model trains on; ``medloop serve --reads-per-image`` overrides it); ``medloop run`` refuses > 1.
        engine, engine_address: where each cycle's pool slices are judged (G's label maps, D's plausibility: the
            discriminator strategies' inputs, the pseudo-labels and their quality control): ``local`` (in process) or
            ``ray`` (Ray workers read and judge them; ``medloop.engine.ray.map_samples_ray``). Refused with
            ``processes`` > 1 and with the MC strategies (G's MC dropout is scored in process).
    """

    method: typing.Literal["ravanbakhsh2018"] = "ravanbakhsh2018"
    name: str = "ravanbakhsh2018"
    data: dict = dataclasses.field(default_factory=lambda: {"source": "builtin:cardiac-mr", "size": 64})
    folds: int = 10
    max_folds: int | None = None
    budgets: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    cycles: tuple[int, ...] = (1, 3)
    strategies: tuple[Any, ...] = ("discriminator", "random", "entropy")
    pix2pix: dict = dataclasses.field(default_factory=dict)
    slice_reduction: str = "foreground"
    q: float = 0.1
    pseudo_threshold: float | None = None
    repseudo: bool = True
    qc_threshold: float = 0.7
    n_mc_samples: int = 10
    fsl: bool = True
    processes: int = 1
    seed: int = 0
    device: str = "auto"
    reads_per_image: int = 1
    engine: str = "local"
    engine_address: str | None = None

    PROVIDES = frozenset({"mc", "discriminator", "foreground"})

    def validate(self) -> None:
        from medloop.uncertainty.discriminator import SLICE_REDUCTIONS

        DataConfig.from_dict(self.data, where="data")
        check_engine(self.engine, self.engine_address, where="engine")
        check_reads_per_image_key(self.reads_per_image)
        p2p = self.pix2pix_config
        if self.folds < 2:
            raise ConfigError(f"The 'folds' parameter must be >= 2 (cross-validation by volume); got {self.folds}")
        if self.max_folds is not None and self.max_folds < 1:
            raise ConfigError(f"The 'max_folds' parameter must be >= 1 or null; got {self.max_folds}")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):
            raise ConfigError(f"The 'budgets' parameter must list fractions in (0, 1]; got {list(self.budgets)}")
        if not self.cycles or any(n < 1 for n in self.cycles):
            raise ConfigError(f"The 'cycles' parameter must list integers >= 1; got {list(self.cycles)}")
        for spec in self.strategy_specs:
            from medloop.query import build_strategy

            if build_strategy(spec["name"], spec["params"]).per_class:
                raise ConfigError(f"strategy '{spec['label']}' balances predicted image classes, which collaborative "
                                  "segmentation does not have; set params.per_class: false or use another strategy")
        if self.slice_reduction not in SLICE_REDUCTIONS:
            raise ConfigError(f"The 'slice_reduction' parameter must be one of {list(SLICE_REDUCTIONS)}; "
                              f"got {self.slice_reduction!r}")
        if self.pseudo_threshold is not None and not 0 <= self.pseudo_threshold <= 1:
            raise ConfigError(f"The 'pseudo_threshold' parameter must be in [0, 1] or null; got {self.pseudo_threshold}")
        if self.n_mc_samples < 1:
            raise ConfigError(f"The 'n_mc_samples' parameter must be >= 1; got {self.n_mc_samples}")
        if self.processes < 1:
            raise ConfigError(f"The 'processes' parameter must be >= 1; got {self.processes}")
        if self.processes > 1 and p2p.workers > 1:
            raise ConfigError(f"The 'processes' parameter ({self.processes}) and 'pix2pix.workers' ({p2p.workers}) "
                              "both spend the cores on processes (units of work, or data-parallel ranks of each "
                              "training); set one of them to 1")
        if self.engine == "ray":
            self._check_ray()
        if not 0 <= self.qc_threshold <= 1:
            raise ConfigError(f"The 'qc_threshold' parameter must be a Dice in [0, 1]; got {self.qc_threshold}")

    def _check_ray(self) -> None:
        from medloop.query import build_strategy

        if self.processes > 1:
            raise ConfigError(f"The 'engine' parameter 'ray' judges the pool on Ray's workers, and 'processes' "
                              f"({self.processes}) would start a Ray of its own in every process; set processes: 1")
        for spec in self.strategy_specs:
            if "mc" in build_strategy(spec["name"], spec["params"]).needs:
                raise ConfigError(f"The 'engine' parameter 'ray' cannot apply to strategy '{spec['label']}': it needs "
                                  "G's MC-dropout scores, which are computed in process; use engine: local, or the "
                                  "discriminator / random strategies")

    @property
    def data_config(self) -> DataConfig:
        return DataConfig.from_dict(self.data)

    @property
    def pix2pix_config(self):
        from medloop.training.pix2pix import Pix2PixConfig

        return Pix2PixConfig.from_dict({"device": self.device, **self.pix2pix}, where="pix2pix")

    @property
    def strategy_specs(self) -> list[dict]:
        """The strategies as ``{name, params, label}``."""
        return strategy_specs(self.strategies, self.PROVIDES, self.method)
