"""Config: defaults, YAML, --set overrides, presets, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nmt.config import PRESETS, describe, from_dict, load_config, to_dict
from nmt.errors import ConfigError


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  preset: small\n  d_ff: 512\ntrain:\n  lr: 0.001\n  betas: [0.9, 0.99]\n")
    config = load_config(path, ["train.lr=5e-4", "model.norm_first=false", "decode.beam=4"])
    assert config.model.d_model == PRESETS["small"]["d_model"] and config.model.d_ff == 512
    assert config.train.lr == 5e-4 and config.train.betas == (0.9, 0.99)
    assert config.model.norm_first is False and config.decode.beam == 4


def test_round_trip() -> None:
    config = load_config(None, ["model.preset=tiny", "train.betas=0.8,0.9"])
    assert from_dict(to_dict(config)) == config


def test_described_config_explains_every_key_and_reads_back(tmp_path: Path) -> None:
    config = load_config(None, ["model.preset=tiny", "train.betas=0.8,0.9", "data.train=my data#1", "data.src_lang=no"])
    text = describe(config)
    keys = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(keys) == sum(len(section) for section in to_dict(config).values())
    assert all(" # " in line and not line.endswith("#") for line in keys), "a config key has no comment in nmt/config.py"
    assert "  betas: [0.8, 0.9]  # AdamW betas\n" in text and "  src_lang: 'no'  # " in text
    path = tmp_path / "described.yaml"
    path.write_text(text)
    assert load_config(path) == config


@pytest.mark.parametrize("override, message", [
    ("model.d_modle=3", "unknown config key 'model.d_modle' (did you mean 'd_model'?)"),
    ("trian.lr=1", "unknown config key 'trian' (did you mean 'train'?)"),
    ("train.lr=fast", "train.lr: expected float, got 'fast'"),
    ("train.max_steps=1.5", "train.max_steps: expected int"),
    ("model.norm_first=maybe", "model.norm_first: expected bool"),
    ("model.n_heads=7", "model.d_model (512) must be a positive multiple of model.n_heads (7)"),
    ("model.preset=huge", "model.preset: unknown preset 'huge'"),
    ("decode.beam=0", "decode.beam must be >= 1"),
    ("train.lr", "expected section.key=value"),
])
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_bad_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("model:\n  layers: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'model.layers'"):
        load_config(path)
