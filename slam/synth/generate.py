"""Generate a synthetic sequence in the plain folder layout, with exact ground truth.

Output folder::

    rgb/000000.png ...      8-bit BGR frames
    calib.txt               ``fx fy cx cy [k1 k2 p1 p2 k3]`` or ``fisheye fx fy cx cy k1 k2 k3 k4``
    times.txt               one timestamp (seconds) per frame, ``i / fps``
    groundtruth.txt         TUM format, camera-to-world, one pose per frame
    mask.png                only with a circular field of view / unusable pixels (non-zero = usable)
    depth/000000.png        only with ``depth=True``: uint16 camera z times ``depth_scale`` (0 = no hit)
    synth.json              preset, seed, resolved options and the values the seed drew

The same (preset, seed, options) give byte-identical folders.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from slam.errors import InputError
from slam.evaluation.trajectory import Trajectory, write_text_atomic, write_tum
from slam.synth.effects import FluidOverlay, defocus, motion_blur, sensor, vignette
from slam.synth.paths import RoomPath, TubePath
from slam.synth.presets import SynthOptions, resolve_options
from slam.synth.render import Lighting, Renderer, fov_radius_px, make_camera
from slam.synth.scene import build_room, build_tube, make_centerline, make_room_layout, make_tube_shape

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_OUR_FILES = ("calib.txt", "times.txt", "groundtruth.txt", "mask.png", "synth.json")


def parse_size(size: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"WxH"`` or ``(W, H)`` to ``(W, H)``; raises :class:`InputError` on a malformed string."""
    if size is None:
        return None
    if isinstance(size, str):
        parts = size.lower().replace("*", "x").split("x")
        try:
            w, h = (int(p) for p in parts)
        except ValueError:
            raise InputError(f"image size {size!r} is not of the form WxH (e.g. 640x480)") from None
        return w, h
    w, h = size
    return int(w), int(h)


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (overwrite or (out / "synth.json").is_file()):
            raise InputError(f"{out}: folder is not empty and is not a previous synth output; "
                             "choose another folder or pass overwrite")
        for sub in ("rgb", "depth"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
        for name in _OUR_FILES:
            (out / name).unlink(missing_ok=True)
    (out / "rgb").mkdir(parents=True, exist_ok=True)


def _draws(opts: SynthOptions, seed: int) -> dict[str, float]:
    """Per-seed variations of the scene (radius, speed, colour, fold spacing)."""
    rng = np.random.default_rng([seed, 0])
    if not opts.vary:
        return {"radius": opts.radius, "speed": opts.speed, "hue": 0.0, "fold_spacing": opts.fold_spacing}
    return {
        "radius": opts.radius * float(rng.uniform(0.85, 1.2)),
        "speed": opts.speed * float(rng.uniform(0.8, 1.2)),
        "hue": float(rng.uniform(-1.0, 1.0)),
        "fold_spacing": opts.fold_spacing * float(rng.uniform(0.8, 1.25)),
    }


def generate(
    preset: str,
    out_dir: str | Path,
    frames: int | None = None,
    seed: int = 0,
    size: str | tuple[int, int] | None = None,
    overwrite: bool = False,
    **options: Any,
) -> Path:
    """Render ``preset`` into ``out_dir`` and return the folder.

    Args:
        preset: a name from :data:`slam.synth.PRESETS`.
        frames: number of frames (preset default 300). size: ``"WxH"`` or ``(W, H)`` (default 640x480).
        seed: everything random (scene, texture, path, noise) derives from it.
        overwrite: allow writing into a non-empty folder that is not a previous synth output.
        options: overrides of :class:`SynthOptions` fields.
    Raises:
        ConfigError: unknown preset or option, invalid value. InputError: unusable output folder.
        DependencyError: open3d is missing.
    """
    wh = parse_size(size)
    if wh is not None:
        options["width"], options["height"] = wh
    opts = resolve_options(preset, frames=frames, **options)
    out = Path(out_dir)
    started = time.perf_counter()
    draws = _draws(opts, seed)
    camera = make_camera(opts)
    rng_scene = np.random.default_rng([seed, 1])
    rng_texture = np.random.default_rng([seed, 2])
    rng_path = np.random.default_rng([seed, 3])
    rng_effects = np.random.default_rng([seed, 4])
    t0, t1 = -1.5, opts.frames + 0.5
    info: dict[str, Any] = {}

    if opts.scene == "tube":
        radius = draws["radius"]
        path = TubePath(rng_path, t0, t1, radius, draws["speed"], opts.speed_variation, opts.lateral,
                        opts.wobble_deg, opts.roll_deg)
        s0, s1 = path.s_range()
        centerline = make_centerline(rng_scene, s0, s1, radius, opts.bend)
        shape = make_tube_shape(rng_scene, s0, s1, radius, opts.fold_depth, draws["fold_spacing"])
        path.attach(centerline)
        texel = max(1.25 * radius / camera.fx, (s1 - s0) / 30000.0)
        mesh = build_tube(rng_texture, centerline, shape, texel, opts.texture_contrast, opts.vessel_density,
                          draws["hue"])
        lighting = Lighting("headlight", intensity=1.1 * radius * radius * opts.brightness, ambient=0.01,
                            soft=0.15 * radius, specular=0.6 * opts.specular, shininess=opts.shininess)
        info["folds"] = int(len(shape.fold_s))
    else:
        layout = make_room_layout(rng_scene, opts.vary)
        texel = 3.0 / camera.fx
        mesh = build_room(rng_texture, layout, texel)
        path = RoomPath(rng_path, t0, t1, opts.frames, layout.size, draws["speed"], opts.speed_variation,
                        opts.wobble_deg, opts.roll_deg, opts.rotation_stretch)
        X, Y, Z = layout.size
        lights = np.array([[X / 3, Y - 0.2, Z / 2], [2 * X / 3, Y - 0.2, Z / 2]])
        lighting = Lighting("room", intensity=0.5 * opts.brightness, ambient=0.28 * opts.brightness,
                            lights=lights, falloff=3.0)
        info["room_size"] = [float(v) for v in layout.size]
        info["boxes"] = len(layout.boxes)
        if opts.rotation_stretch:
            info["rotation_stretch_frames"] = [int(math.ceil(path.stretch[0])), int(path.stretch[1])]
    info["texel"] = float(texel)
    info["triangles"] = int(len(mesh.triangles))

    renderer = Renderer(mesh, camera, opts, lighting)
    usable = renderer.usable
    radius_px = fov_radius_px(opts) if opts.circular_fov else math.hypot(opts.width, opts.height) / 2.0
    gain = vignette(camera, radius_px, opts.vignetting)[..., None]
    overlay = FluidOverlay(rng_effects, opts.frames, opts.width, opts.height) if opts.bubbles else None
    if overlay is not None:
        info["bubble_frames"] = [list(iv) for iv in overlay.intervals]
    setup_s = time.perf_counter() - started

    _prepare_out(out, overwrite)
    if opts.depth:
        (out / "depth").mkdir(exist_ok=True)
    import cv2

    frame_ids = np.arange(opts.frames)
    T_wc_all = path.T_wc(frame_ids.astype(np.float64))
    half = 0.5 * opts.exposure
    blur = opts.motion_blur > 1
    render_started = time.perf_counter()
    for i in frame_ids:
        result = renderer.render(T_wc_all[i])
        image = result.radiance
        if blur:
            T_open, T_close = path.T_wc(np.array([i - half, i + half], np.float64))
            image = motion_blur(image, camera, result.hit, result.points_w, T_open, T_close, opts.motion_blur)
        if overlay is not None:
            image = overlay.apply(image, int(i))
        image = defocus(image, opts.defocus * opts.width / 640.0)
        image = image * gain
        rng_frame = np.random.default_rng([seed, 5, int(i)])
        u8 = sensor(image, rng_frame, opts.noise, usable)
        cv2.imwrite(str(out / "rgb" / f"{i:06d}.png"), u8)
        if opts.depth:
            d = np.clip(np.round(result.depth * opts.depth_scale), 0, 65535).astype(np.uint16)
            cv2.imwrite(str(out / "depth" / f"{i:06d}.png"), d)
        if (i + 1) % 50 == 0:
            logger.info("synth %s: %d/%d frames", preset, i + 1, opts.frames)
    render_s = time.perf_counter() - render_started

    times = frame_ids / opts.fps
    calib = camera.to_calib_line()  # carries the "fisheye" prefix for that model
    write_text_atomic(out / "calib.txt", calib + "\n")
    write_text_atomic(out / "times.txt", "".join(f"{t:.6f}\n" for t in times))
    traj = Trajectory(times, T_wc_all)
    write_tum(out / "groundtruth.txt", traj)
    if opts.circular_fov or not usable.all():
        cv2.imwrite(str(out / "mask.png"), usable.astype(np.uint8) * 255)
    meta = {
        "format_version": FORMAT_VERSION,
        "preset": preset,
        "seed": int(seed),
        "options": opts.to_dict(),
        "draws": draws,
        "camera": {"model": camera.model, "width": camera.width, "height": camera.height, "fx": camera.fx,
                   "fy": camera.fy, "cx": camera.cx, "cy": camera.cy, "dist": list(camera.dist)},
        "fov_circle": ([camera.cx, camera.cy, fov_radius_px(opts)] if opts.circular_fov else None),
        "path_length": traj.path_length(),
        "scene": info,
    }
    write_text_atomic(out / "synth.json", json.dumps(meta, indent=2) + "\n")
    logger.info("synth %s seed %d: %d frames %dx%d in %s (setup %.2f s, %.1f ms/frame)", preset, seed,
                opts.frames, opts.width, opts.height, out, setup_s, 1000.0 * render_s / opts.frames)
    return out
