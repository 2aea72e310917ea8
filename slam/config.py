"""Typed configuration: dataclasses with defaults in code, overridden by YAML files and ``--set`` pairs.

A config is a tree of dataclasses (:class:`Config` at the root). YAML files in ``configs/`` override the
defaults; a YAML file may name a ``base:`` config it extends. Unknown keys and values of the wrong type
are rejected with the dotted key's name (:class:`slam.errors.ConfigError`). Configs are passed explicitly;
there is no global config object.

Example::

    cfg = load_config("endoscopy", overrides=["features.type=orb", "tracking.frontend=flow"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slam.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class SourceConfig:
    """How frames are read (applies to every source)."""

    start: int = 0  # first frame index used
    max_frames: int | None = None  # stop after this many frames
    stride: int = 1  # use every n-th frame
    resize: float = 1.0  # scale factor applied to images (intrinsics scaled too)
    max_width: int | None = None  # downscale larger images to this width (e.g. 4K video); None = never
    fps: float = 30.0  # frame rate assumed when a source has no timestamps
    mask: str | None = None  # path of a mask image (non-zero = usable); overrides the source's own
    realtime: bool = True  # live camera: drop stale frames rather than fall behind


@dataclass
class MaskConfig:
    """Which pixels may give features."""

    fov: str = "file"  # "file": use mask.png / --mask only; "auto": detect the endoscope's field of view; "none"
    fov_margin_px: int = 4  # erode the field-of-view mask by this many pixels (full resolution)
    fov_frames: int = 10  # frames combined for the automatic field-of-view fit
    specular: bool = False  # mask specular highlights per frame
    specular_value: int = 235  # V (HSV) above which a pixel can be a highlight
    specular_saturation: int = 60  # S (HSV) below which a bright pixel is a highlight
    specular_dilate_px: int = 5


@dataclass
class FeatureConfig:
    """Keypoint extraction and descriptor matching."""

    type: str = "sift"  # sift | orb | superpoint
    num_features: int = 1500
    grid_cols: int = 8  # keypoints are bucketed over a grid for an even spread
    grid_rows: int = 6
    clahe: bool = True  # contrast-limited histogram equalisation of luminance before extraction
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    sift_contrast_threshold: float = 0.01
    sift_edge_threshold: float = 10.0
    sift_backend: str = "auto"  # auto (torch SIFT on CUDA, OpenCV on CPU) | opencv | torch (any device)
    orb_fast_threshold: int = 12
    orb_levels: int = 8
    orb_scale_factor: float = 1.2
    ratio: float = 0.8  # Lowe's ratio test
    mutual: bool = True  # cross check
    weights: str | None = None  # SuperPoint weights file (None = shipped weights)


@dataclass
class TrackingConfig:
    """Tracking thread: initialisation, frame-to-frame and local-map tracking, keyframe decision."""

    frontend: str = "hybrid"  # hybrid | flow | descriptors (see slam/tracking.py, slam/flow_tracking.py)
    init_min_matches: int = 80
    init_min_parallax_deg: float = 1.0
    init_min_points: int = 60
    init_max_frames_gap: int = 30  # reference frame is replaced after this many frames without success
    min_tracked_points: int = 20  # fewer inliers than this = lost
    search_radius_px: float = 12.0  # guided search window after constant-velocity prediction
    local_map_radius_px: float = 8.0
    pnp_reprojection_px: float = 3.0
    keyframe_min_frames: int = 0
    keyframe_max_frames: int = 20
    keyframe_tracked_ratio: float = 0.75  # new keyframe when tracked/ref-keyframe points falls below
    keyframe_min_tracked: int = 50
    # flow front end: a keyframe despite too little parallax when fewer than 2 * keyframe_min_tracked map
    # points are tracked and the local map has more than this many times as many in view (their tracks died)
    keyframe_fading_ratio: float = 6.0
    relocalise: bool = True
    mapper_backpressure: bool = True  # file input: wait for the mapper when it falls behind (live: off)
    max_lost_before_reset: int = 2  # frames lost in a row (relocalisation failing) before a new map is started
    flow_win_size: int = 21
    flow_levels: int = 3
    flow_fb_threshold_px: float = 1.0  # forward-backward LK check; <= 0 skips the backward pass (half the flow cost)
    flow_iterations: int = 30  # Lucas-Kanade iterations per pyramid level (at most)
    flow_epsilon_px: float = 0.01  # ... or until the update is below this
    # pyramid levels searched for a track whose position is predicted (motion model, or its last step);
    # it is searched again with all flow_levels when that fails; < 0: always all levels
    flow_guess_levels: int = 1
    flow_min_corner_distance_px: int = 10
    flow_max_corners: int = 1000
    # noisy, low-contrast video: the flow tracks' pixel noise is estimated from the pose residuals (each
    # frame's median, averaged over frames) and, where it exceeds 1 px, scales the forward-backward
    # threshold and every observation's sigma (pose, triangulation, fusion, BA) by it, up to this factor;
    # 1 keeps the fixed 1 px model
    flow_noise_max_scale: float = 3.0
    # after a scale guess (a new map chained to a lost one: no map point spans the gap), once this many
    # frames have moved on, the new map is rescaled when its speed and the cruising speed before differ by
    # more than the ratio
    # (0 frames: never); a camera's pace itself varies (rooms: the cruising speeds before and after a turn
    # differ by up to 1.25x), so only a larger disagreement counts as a wrong guess
    guess_check_frames: int = 15
    guess_check_ratio: float = 1.4
    # a plane seen in both maps measures the factor (the speed is only a prior): without one
    # at the check, look again every 5 frames for up to this many more frames before using the speed
    guess_plane_wait_frames: int = 15
    # the cruising speed (the scale check above, a new map after a loss) is the upper quartile of the
    # distances per frame over this many tracked, non-turning frames; a short history ends in the stop and
    # the slow turn before it (rooms: 30 frames gave scale errors up to 1.8x, 100 up to 1.25x)
    speed_history_frames: int = 100


@dataclass
class MappingConfig:
    """Local mapping thread: triangulation, culling, local bundle adjustment."""

    covisible_keyframes: int = 10  # neighbours used to triangulate new points
    local_ba_keyframes: int = 12  # keyframes optimised in local BA
    ba_iterations: int = 10
    # threaded runs: local BA in a child process (its graph building then does not hold the GIL the tracker
    # needs); --sync runs always adjust in-process
    ba_process: bool = True
    min_parallax_deg: float = 1.0
    # new points only across baselines longer than this many times the two keyframes' centre uncertainty
    # (KeyFrame.centre_sigma; 0: no such check)
    min_baseline_sigmas: float = 3.0
    max_reprojection_px: float = 2.5
    point_min_found_ratio: float = 0.25
    keyframe_redundancy: float = 0.9  # cull a keyframe if this share of its points is seen by 3+ others
    max_keyframes: int | None = None  # bound on keyframes kept in the map (None: unbounded)


@dataclass
class SystemConfig:
    """Run-wide settings."""

    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    sync: bool = False  # run tracking and mapping in one thread, deterministically
    log_level: str = "INFO"
    save_map: bool = False  # write DIR/map.npz (keyframes, points, descriptors) for `slam view` and reuse
    report: bool = True  # write DIR/report.html


@dataclass
class Config:
    """Root of the configuration tree."""

    source: SourceConfig = field(default_factory=SourceConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    mapping: MappingConfig = field(default_factory=MappingConfig)
    system: SystemConfig = field(default_factory=SystemConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- loading
def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check ``value`` against a field annotation; returns (ok, coerced value)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if arg is type(None) and value is None:
                return True, None
        for arg in typing.get_args(annotation):
            if arg is type(None):
                continue
            ok, coerced = _type_ok(value, arg)
            if ok:
                return True, coerced
        return False, value
    if annotation is bool:
        return isinstance(value, bool), value
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if annotation is str:
        return isinstance(value, str), value
    if annotation is type(None):
        return value is None, value
    return True, value


def _apply(obj: Any, data: dict[str, Any], prefix: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix or '<root>'!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, dotted + ".")
            continue
        ok, coerced = _type_ok(value, hints[key])
        if not ok:
            raise ConfigError(
                f"config key {dotted!r} expects {_type_name(hints[key])}, got {value!r} ({type(value).__name__})"
            )
        setattr(obj, key, coerced)


def _type_name(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    return "null" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def resolve_config_path(name_or_file: str) -> Path:
    """A config name (``endoscopy``) or a YAML file path to the file's path."""
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return path
    candidate = CONFIG_DIR / f"{name_or_file}.yaml"
    if not candidate.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"unknown config {name_or_file!r}; known configs: {', '.join(known)} (or a .yaml path)")
    return candidate


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict[str, Any]]:
    """The YAML mapping of ``path`` preceded by those of its ``base:`` chain."""
    import yaml

    if path.resolve() in seen:
        raise ConfigError(f"{path}: circular 'base:' chain")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    chain: list[dict[str, Any]] = []
    if base is not None:
        base_path = resolve_config_path(str(base)) if not Path(str(base)).is_absolute() else Path(base)
        if not base_path.exists():
            base_path = path.parent / str(base)
        chain.extend(_read_yaml(base_path, seen + (path.resolve(),)))
    chain.append(data)
    return chain


def parse_override(pair: str) -> tuple[list[str], Any]:
    """``"tracking.frontend=flow"`` to (["tracking", "frontend"], "flow"); the value is parsed as YAML."""
    import yaml

    if "=" not in pair:
        raise ConfigError(f"--set expects key=value, got {pair!r}")
    key, raw = pair.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a :class:`Config` from a nested mapping (unknown keys or wrong types raise ConfigError)."""
    cfg = Config()
    _apply(cfg, data, "")
    return cfg


def load_config(name_or_file: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the named config file (and its bases), then ``key=value`` overrides, validated."""
    cfg = Config()
    if name_or_file:
        path = resolve_config_path(name_or_file)
        for layer in _read_yaml(path):
            try:
                _apply(cfg, layer, "")
            except ConfigError as exc:
                raise ConfigError(f"{path}: {exc}") from exc
    for pair in overrides:
        keys, value = parse_override(pair)
        nested: dict[str, Any] = {keys[-1]: value}
        for k in reversed(keys[:-1]):
            nested = {k: nested}
        _apply(cfg, nested, "")
    return cfg
