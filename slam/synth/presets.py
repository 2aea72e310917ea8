"""Synthetic sequence options and the named presets built from them.

A preset is a named set of overrides of :class:`SynthOptions`; the user may override any option again
(``generate(..., speed=0.1)`` or ``slam synth tube OUT -o speed=0.1``). Unknown keys and values of the wrong
type or range raise :class:`slam.errors.ConfigError` naming the key.

Units: lengths are scene units (the tube radius is about 1.5 units, the room about 7 x 3 x 6 units); speeds
are scene units per frame; angles are degrees.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from slam.errors import ConfigError

SCENES = ("tube", "room")
LENSES = ("pinhole", "radtan", "fisheye")


@dataclass(frozen=True)
class SynthOptions:
    """Everything that defines a synthetic sequence apart from its seed.

    Attributes (scene units, per-frame speeds, degrees):
        scene: ``"tube"`` (endoscopy flythrough) or ``"room"`` (textured box room).
        frames, width, height, fps: sequence length, image size, frame rate (timestamps are ``i / fps``).
        lens: ``"pinhole"`` (no distortion), ``"radtan"`` (OpenCV k1 k2 p1 p2 k3) or ``"fisheye"``
            (Kannala-Brandt k1..k4).
        fov_deg: horizontal field of view of the pinhole/radtan lens; for the fisheye the full angle of
            the image circle.
        distortion: scale of the lens' distortion coefficients (0 = none).
        circular_fov: black border outside a centred circle (``mask.png`` is written).
        fov_radius: circle radius as a fraction of ``min(width, height) / 2``.
        speed: mean camera speed along the path (units per frame); negative = tube withdrawal.
        speed_variation: relative amplitude of smooth speed changes.
        wobble_deg, roll_deg: amplitude of smooth pan/tilt and of roll about the optical axis.
        lateral: tube only, amplitude of the camera's offset from the centreline (fraction of radius).
        rotation_stretch: room only, a stretch of near-pure rotation in the middle of the sequence.
        motion_blur: sub-frames averaged over the shutter (0 or 1 = none).
        exposure: shutter time as a fraction of the frame interval (with motion blur).
        radius: tube radius; fold_depth: fold depth (fraction of radius); fold_spacing: mean distance
            between folds (fraction of radius); bend: curvature scale of the tube's centreline.
        texture_contrast: scale of the albedo variation; vessel_density: scale of the vessel count.
        specular, shininess: strength and Phong exponent of the wet specular highlights.
        brightness: exposure gain; vignetting: brightness loss at the image edge (0..1);
        noise: scale of the sensor noise (shot + read); defocus: Gaussian blur sigma in pixels at 640 px.
        bubbles: short stretches of frames with bubbles / fluid (large bright textureless areas).
        vary: let the seed vary radius, speed, colours, fold spacing (otherwise only the noise varies).
        depth: also write ``depth/NNNNNN.png`` (uint16, metres-like units x ``depth_scale``).
    """

    scene: str = "tube"
    frames: int = 300
    width: int = 640
    height: int = 480
    fps: float = 30.0
    lens: str = "pinhole"
    fov_deg: float = 90.0
    distortion: float = 1.0
    circular_fov: bool = False
    fov_radius: float = 0.97
    speed: float = 0.08
    speed_variation: float = 0.35
    wobble_deg: float = 8.0
    roll_deg: float = 25.0
    lateral: float = 0.2
    rotation_stretch: bool = True
    motion_blur: int = 0
    exposure: float = 0.7
    radius: float = 1.5
    fold_depth: float = 0.25
    fold_spacing: float = 1.2
    bend: float = 1.0
    texture_contrast: float = 1.0
    vessel_density: float = 1.0
    specular: float = 1.0
    shininess: float = 60.0
    brightness: float = 1.0
    vignetting: float = 0.35
    noise: float = 1.0
    defocus: float = 0.0
    bubbles: bool = False
    vary: bool = True
    depth: bool = False
    depth_scale: float = 1000.0

    def validate(self) -> "SynthOptions":
        """Check ranges; raise :class:`ConfigError` naming the option."""
        checks = [
            ("scene", self.scene in SCENES, f"one of {SCENES}"),
            ("lens", self.lens in LENSES, f"one of {LENSES}"),
            ("frames", self.frames >= 2, ">= 2"),
            ("width", 16 <= self.width <= 8192, "in [16, 8192]"),
            ("height", 16 <= self.height <= 8192, "in [16, 8192]"),
            ("fps", self.fps > 0, "> 0"),
            ("fov_deg", 10 <= self.fov_deg <= (200 if self.lens == "fisheye" else 150),
             "in [10, 150] (fisheye: [10, 200])"),
            ("distortion", 0 <= self.distortion <= 2, "in [0, 2]"),
            ("fov_radius", 0.3 <= self.fov_radius <= 1.5, "in [0.3, 1.5]"),
            ("speed", abs(self.speed) <= 2.0, "in [-2, 2]"),
            ("speed_variation", 0 <= self.speed_variation < 1, "in [0, 1)"),
            ("lateral", 0 <= self.lateral <= 0.5, "in [0, 0.5]"),
            ("motion_blur", 0 <= self.motion_blur <= 32, "in [0, 32]"),
            ("exposure", 0 < self.exposure <= 1, "in (0, 1]"),
            ("radius", 0.2 <= self.radius <= 20, "in [0.2, 20]"),
            ("fold_depth", 0 <= self.fold_depth <= 0.35, "in [0, 0.35]"),
            ("fold_spacing", 0.3 <= self.fold_spacing <= 20, "in [0.3, 20]"),
            ("bend", 0 <= self.bend <= 2, "in [0, 2]"),
            ("texture_contrast", 0 <= self.texture_contrast <= 3, "in [0, 3]"),
            ("vessel_density", 0 <= self.vessel_density <= 5, "in [0, 5]"),
            ("specular", 0 <= self.specular <= 20, "in [0, 20]"),
            ("shininess", 1 <= self.shininess <= 1000, "in [1, 1000]"),
            ("brightness", 0 < self.brightness <= 20, "in (0, 20]"),
            ("vignetting", 0 <= self.vignetting < 1, "in [0, 1)"),
            ("noise", 0 <= self.noise <= 20, "in [0, 20]"),
            ("defocus", 0 <= self.defocus <= 10, "in [0, 10]"),
            ("depth_scale", self.depth_scale > 0, "> 0"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"synth option {key}={getattr(self, key)!r} is invalid; expected {expected}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# name -> (one-line description, overrides of SynthOptions)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "tube": (
        "endoscopy-like flythrough of a bending tube with folds; pinhole, no border",
        {},
    ),
    "tube_endo": (
        "tube seen through a distorted endoscope lens (radial-tangential) with a circular field of view",
        {"lens": "radtan", "fov_deg": 100.0, "circular_fov": True},
    ),
    "tube_fisheye": (
        "tube through a Kannala-Brandt fisheye lens, 160 deg field of view, circular image",
        {"lens": "fisheye", "fov_deg": 160.0, "circular_fov": True, "fov_radius": 0.97},
    ),
    "tube_specular": (
        "wet tube with strong, large specular highlights, circular field of view",
        {"lens": "radtan", "fov_deg": 100.0, "circular_fov": True, "specular": 4.0, "shininess": 12.0},
    ),
    "tube_fast": (
        "fast withdrawal (camera moves backwards quickly) with motion blur, circular field of view",
        {"lens": "radtan", "fov_deg": 100.0, "circular_fov": True, "speed": -0.2, "motion_blur": 6,
         "exposure": 0.8, "wobble_deg": 10.0},
    ),
    "tube_bubbles": (
        "tube with short stretches of bubbles / fluid (large bright textureless areas)",
        {"lens": "radtan", "fov_deg": 100.0, "circular_fov": True, "bubbles": True},
    ),
    "tube_lowcontrast": (
        "dark, hazy, low-contrast tube with more sensor noise and slight defocus",
        {"lens": "radtan", "fov_deg": 100.0, "circular_fov": True, "texture_contrast": 0.4,
         "vessel_density": 0.5, "brightness": 0.55, "noise": 2.0, "defocus": 1.0, "specular": 0.6},
    ),
    "room": (
        "textured box room with furniture; the camera translates, rotates and at times rotates in place",
        {"scene": "room", "fov_deg": 70.0, "speed": 0.045, "wobble_deg": 6.0, "roll_deg": 4.0,
         "vignetting": 0.15, "noise": 0.6, "specular": 0.0},
    ),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Convert ``value`` to the type of the option's default (strings from the CLI included)."""
    kind = type(default)
    try:
        if kind is bool:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            if isinstance(value, bool):
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"synth option {key}={value!r} is not a valid {kind.__name__}") from None


def resolve_options(preset: str, **overrides: Any) -> SynthOptions:
    """The preset's options with ``overrides`` applied and validated.

    ``None`` values are ignored (so CLI defaults can pass through). Raises :class:`ConfigError` for an
    unknown preset, unknown option or invalid value.
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown synth preset {preset!r}; available: {', '.join(PRESETS)}")
    base = SynthOptions()
    known = {f.name: getattr(base, f.name) for f in fields(SynthOptions)}
    merged: dict[str, Any] = dict(PRESETS[preset][1])
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in known:
            raise ConfigError(f"unknown synth option {key!r}; known options: {', '.join(sorted(known))}")
        merged[key] = _coerce(key, value, known[key])
    return replace(base, **merged).validate()
