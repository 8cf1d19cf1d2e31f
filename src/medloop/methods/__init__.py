"""Methods as plug-ins: the registry ``METHODS`` maps an experiment's ``method`` key to its ``MethodSpec``.

The CLI, the report and the annotation server ask ``get(config.method)`` and never name a method. Adding a
method is one package here (config, ``Method``, protocol, served track: see ``base``), one ``register`` line
below, and a pass of the contract suite (``tests/contract/test_methods.py``).
"""

from __future__ import annotations

from pathlib import Path

from medloop.methods import mahapatra, ravanbakhsh
from medloop.methods.base import MethodSpec
from medloop.registry import Registry

__all__ = ["DEFAULT", "METHODS", "MethodSpec", "get", "load_config", "run"]

METHODS: Registry[MethodSpec] = Registry("method")
METHODS.register(mahapatra.SPEC.name)(mahapatra.SPEC)
METHODS.register(ravanbakhsh.SPEC.name)(ravanbakhsh.SPEC)

DEFAULT = mahapatra.SPEC.name  # the method of an experiment file without a ``method`` key


def get(name: str) -> MethodSpec:
    """The registered method ``name`` (a ConfigError with a did-you-mean for an unknown one)."""
    return METHODS.get(name)


def load_config(path: str | Path, overrides: dict | None = None):
    """Read an experiment YAML with ``overrides`` (dotted keys); its ``method`` key picks the config class."""
    from medloop.config import apply_overrides, read_yaml
    from medloop.errors import ConfigError

    def config_class(data: dict) -> type:
        try:
            return get(str(data.get("method", DEFAULT))).config
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    data = read_yaml(path)
    base = config_class(data).from_dict(data, where=str(path)).to_dict()
    merged = apply_overrides(base, overrides or {})
    return config_class(merged).from_dict(merged, where=str(path))


def run(config, out: str | Path, **kwargs) -> dict:
    """Run (or resume) the experiment ``config`` into ``out`` with its method's protocol (``MethodSpec.run``)."""
    return get(config.method).run(config, out, **kwargs)
