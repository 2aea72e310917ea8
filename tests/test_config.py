"""Typed config: defaults, YAML layers, overrides, and errors that name the key."""

import pytest

from slam.config import CONFIG_DIR, load_config
from slam.errors import ConfigError


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"default", "endoscopy", "tum", "euroc", "kitti"} <= set(names)
    for name in names:
        load_config(name)


def test_endoscopy_extends_default_and_overrides_apply():
    cfg = load_config("endoscopy", ["features.type=orb", "tracking.search_radius_px=20", "source.max_frames=5"])
    assert cfg.masks.fov == "auto" and cfg.masks.specular is True
    assert cfg.features.type == "orb"
    assert cfg.tracking.search_radius_px == 20.0 and isinstance(cfg.tracking.search_radius_px, float)
    assert cfg.source.max_frames == 5


def test_unknown_key_is_rejected_with_its_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tracking:\n  frontnd: flow\n")
    with pytest.raises(ConfigError, match=r"tracking\.frontnd"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="mapping.nope"):
        load_config(None, ["mapping.nope=1"])


def test_wrong_type_is_rejected_with_its_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("features:\n  num_features: many\n")
    with pytest.raises(ConfigError, match=r"features\.num_features.*int"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="system.sync"):
        load_config(None, ["system.sync=3"])


def test_unknown_config_name_lists_known_ones():
    with pytest.raises(ConfigError, match="endoscopy"):
        load_config("no-such-config")


def test_invalid_yaml_names_the_file(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("features: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(str(bad))
