"""What a method is to medloop: the ``Method`` the loop runs (``loop.round``) and the ``MethodSpec`` the registry
(``medloop.methods``) holds, which joins the method to the CLI, the report and the annotation server.

A method is one package under ``medloop/methods/``: its config class, its ``Method``, its protocol (the tracks and
baselines of ``medloop run``), its report and its served track (``Plan``: one track plus the method's words for
the annotator). ``tests/contract/test_methods.py`` runs every registered method through the same checks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medloop.data import MedDataset
from medloop.errors import ConfigError
from medloop.loop.round import Candidates, Method, Proposal, QuerySize
from medloop.query import QueryStrategy, build_strategy

__all__ = ["Candidates", "HINT_KEYS", "Method", "MethodSpec", "Plan", "Proposal", "QuerySize",
           "finite", "strategy_specs"]

# what an annotator is told, in the method's words: the task, with the model's proposal loaded, what the
# uncertainty map means, and why there is none for an image the model has seen
HINT_KEYS = ("task", "proposal", "uncertainty", "no_uncertainty")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A registered method: what the CLI, the report, the server and the contract suite need of it.

    Attributes:
        name: the experiment file's ``method`` key (the config's ``method`` field).
        paper: the paper the method follows.
        config: the config class (a ``medloop.config.Config`` with a ``method`` field and ``PROVIDES``, the inputs
            its ``Method`` computes for strategies).
        run: the protocol, ``run(config, out, resume=, progress=, observers=, oracle_factory=, console=)``:
            every track and baseline; writes ``results.json`` and the report, returns the results.
        plan: the track ``medloop serve`` runs, ``plan(config, out, progress) -> Plan`` (loads the data).
        build_report: rebuilds ``report.md`` (and the rest) in a run folder from its ``results.json``.
        summary: ``results -> rich Table``, what ``medloop run`` prints at the end.
        example: a tiny config (a dict) on a built-in phantom: the contract suite runs it, in seconds.
    """

    name: str
    paper: str
    config: type
    run: Callable[..., dict]
    plan: Callable[..., "Plan"]
    build_report: Callable[[Path], Path]
    summary: Callable[[dict], Any]
    example: dict

    @property
    def provides(self) -> frozenset[str]:
        return self.config.PROVIDES


@dataclasses.dataclass
class Plan:
    """The one track a server runs, and what the annotation UI needs to know about it."""

    method: Method
    strategy: QueryStrategy
    spec: dict
    seed: int
    folder: Path
    images: MedDataset  # every image the oracle may be asked about
    budget: int  # images labeled by the end (initial set included)
    class_names: list[str]  # image classes the annotator sets (empty: no image class)
    mask_labels: dict[int, str]  # label value -> name, background included
    track: dict  # what is served, for serve.json and /info/
    headline: Callable[[dict], dict]  # round record -> the metrics shown after each retraining
    hints: dict[str, str]  # the method's words for the annotator (see ``HINT_KEYS``)
    timeout: float | None = None

    def __post_init__(self):
        missing = [k for k in HINT_KEYS if not self.hints.get(k)]
        if missing:
            raise ValueError(f"the serve plan of method {self.track.get('method')} lacks the hints {missing}; the UI "
                             f"shows each of {list(HINT_KEYS)}")

    @property
    def labels(self) -> dict[str, int]:
        """The mask labels as name -> value, background left out (MONAI Label's ``labels``); a name used twice
        gets its value appended."""
        named: dict[str, int] = {}
        for value, name in sorted(self.mask_labels.items()):
            if value != 0:
                named[name if name not in named else f"{name} ({value})"] = value
        return named


def finite(value: Any) -> float | None:
    """A metric for the UI: the number, or ``None`` where it is missing or not finite."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def check_reads_per_image_key(value: object) -> None:
    """The experiment key ``reads_per_image``: an integer >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"The 'reads_per_image' parameter must be an integer >= 1, the number of different "
                          f"annotators who label each image under `medloop serve`; got {value!r}")


def refuse_simulated_reads(config: Any) -> None:
    """``medloop run`` answers from the ground truth, one read per image: refuse ``reads_per_image`` > 1 there."""
    if config.reads_per_image > 1:
        raise ConfigError(f"'reads_per_image: {config.reads_per_image}' asks for {config.reads_per_image} human readers "
                          "per image and their consensus, which `medloop serve` collects; `medloop run` answers from "
                          "the ground truth, which reads each image once: serve this experiment, or set "
                          "reads_per_image: 1")


def strategy_specs(entries: tuple, provides: frozenset[str], method: str) -> list[dict]:
    """Normalise strategy entries (a name, or ``{name, params, label}``), build each once to check its name and
    parameters, and refuse a strategy whose inputs the method cannot provide. Returns ``{name, params, label}``."""
    if not entries:
        raise ConfigError("The 'strategies' parameter must list at least one strategy, e.g. [{name: random}]")
    specs = []
    for entry in entries:
        spec = {"name": entry} if isinstance(entry, str) else entry
        if not isinstance(spec, dict) or "name" not in spec:
            raise ConfigError(f"each entry of 'strategies' must be a name or a mapping with a 'name'; got {entry!r}")
        extra = set(spec) - {"name", "params", "label"}
        if extra:
            raise ConfigError(f"strategy entry {spec!r} has unknown key(s) {sorted(extra)}; allowed: name, params, label")
        strategy = build_strategy(spec["name"], spec.get("params"))
        missing = strategy.needs - provides
        if missing:
            raise ConfigError(f"strategy '{spec['name']}' needs {', '.join(sorted(missing))} input(s), which method "
                              f"{method} does not provide (it provides {', '.join(sorted(provides))}); drop it")
        specs.append({"name": spec["name"], "params": dict(spec.get("params") or {}),
                      "label": spec.get("label", spec["name"])})
    labels = [s["label"] for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"strategy labels must be unique; got {labels}: give each a 'label'")
    return specs
