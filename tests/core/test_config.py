"""Typed configs reject what is wrong with messages that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from aimg.config import ConfigError, from_dict, load_yaml, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Section:
    name: str
    steps: int = 10
    mode: Literal["fast", "exact"] = "fast"
    optim: Optim = field(default_factory=Optim)
    views: list[str] = field(default_factory=list)
    out: Path | None = None


def test_valid_section_is_built_with_nested_dataclasses_and_coercions():
    cfg = from_dict(Section, {"name": "a", "optim": {"lr": 1, "betas": [0.8, 0.9]}, "out": "x"})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.out == Path("x")


def test_unknown_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['stpes'\]"):
        from_dict(Section, {"name": "a", "stpes": 3}, "train")


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        from_dict(Section, {}, "train")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "a", "steps": "10"}, r"train\.steps: expected an integer"),
        ({"name": "a", "steps": True}, r"train\.steps: expected an integer"),
        ({"name": "a", "mode": "slow"}, r"train\.mode: 'slow' is not one of"),
        ({"name": "a", "optim": {"lr": "high"}}, r"train\.optim\.lr: expected a number"),
        ({"name": "a", "optim": {"betas": [0.9]}}, r"train\.optim\.betas: expected 2 items"),
    ],
)
def test_wrong_types_are_reported_with_their_path(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Section, data, "train")


def test_to_dict_round_trips(tmp_path):
    cfg = Section(name="b", views=["left", "right"], out=tmp_path)
    assert from_dict(Section, to_dict(cfg)) == cfg


def test_load_yaml_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml must hold a mapping"):
        load_yaml(bad)
