"""Configuration: typed, validated, unknown keys are errors, defaults need no file."""
from __future__ import annotations

import pytest

from components.config import Config, load_config
from components.errors import ConfigError


def test_no_file_means_defaults():
    assert load_config(None) == Config()


def test_partial_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  ease:\n    l2: 250\nsplit:\n  method: stratified\n")
    config = load_config(path)
    assert config.model.ease.l2 == 250 and config.split.method == "stratified"
    assert config.model.als == Config().model.als


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model:\n  eas:\n    l2: 3\n", "model.eas"),
        ("split:\n  method: random\n", "split.method"),
        ("model:\n  ease:\n    l2: -1\n", "model.ease.l2"),
        ("evaluation:\n  k_values: [0, 10]\n", "k_values"),
        ("- a\n- b\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert fragment in str(info.value) and "bad.yaml" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
