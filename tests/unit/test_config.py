"""Configs: typed, frozen, unknown keys rejected with a did-you-mean, YAML round trip."""

from __future__ import annotations

import dataclasses

import pytest

from medloop.config import DataConfig, parse_overrides
from medloop.errors import ConfigError
from medloop.registry import Registry


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"unknown key 'sise' for DataConfig \(did you mean 'size'\?\); allowed keys:"):
        DataConfig.from_dict({"sise": 64})


@pytest.mark.parametrize(
    "params, match",
    [
        ({"size": "big"}, r"The 'size' parameter of DataConfig must be an integer or null; got 'big'"),
        ({"size": 4}, r"The 'size' parameter of DataConfig must be in \[8, 4096\]; got 4"),
        ({"on_error": "ignore"}, r"The 'on_error' parameter of DataConfig must be one of \['raise', 'skip'\]"),
        ({"cache": "yes"}, r"The 'cache' parameter of DataConfig must be true or false"),
        ({"channels": 0}, r"The 'channels' parameter of DataConfig must be >= 1"),
    ],
)
def test_bad_values_name_the_parameter(params, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig.from_dict(params)


def test_config_is_frozen_and_round_trips_through_yaml(tmp_path):
    cfg = DataConfig(source="builtin:cardiac-mr", size=64, options={"n_volumes": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.size = 32  # type: ignore[misc]
    path = tmp_path / "data.yaml"
    cfg.to_yaml(path)
    assert DataConfig.from_yaml(path) == cfg


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        DataConfig.from_yaml(bad)
    with pytest.raises(ConfigError, match=r"missing\.yaml: config file not found"):
        DataConfig.from_yaml(tmp_path / "missing.yaml")


def test_parse_overrides_reads_yaml_scalars():
    assert parse_overrides(["n=3", "name=acdc", "labels=[0,1]", "flag=true"]) == {
        "n": 3, "name": "acdc", "labels": [0, 1], "flag": True}
    with pytest.raises(ConfigError, match="must look like key=value"):
        parse_overrides(["oops"])


def test_registry_register_build_and_suggest():
    reg: Registry = Registry("widget")

    @reg.register("round")
    class Round:
        def __init__(self, r=1):
            self.r = r

    assert reg.build("round", r=3).r == 3 and "round" in reg and reg.names() == ["round"]
    with pytest.raises(ConfigError, match=r"unknown widget 'rund' \(did you mean 'round'\?\); choose one of: round"):
        reg.get("rund")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("round")(Round)
