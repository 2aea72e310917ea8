"""Synthetic sequences with exact ground truth: endoscopy-like tubes and textured rooms.

``generate(preset, out_dir, frames, seed, size, **options)`` renders a preset (see :data:`PRESETS`) headless
with open3d's ray caster into the plain folder layout (``rgb/``, ``calib.txt``, ``times.txt``,
``groundtruth.txt``, optional ``mask.png``, ``synth.json``). Modules: ``presets`` (options and presets),
``texture`` (procedural textures), ``scene`` (meshes), ``paths`` (camera paths), ``render`` (ray casting
and shading), ``effects`` (blur, bubbles, noise, tone mapping), ``generate`` (the folder writer),
``command`` (the ``slam synth`` subcommand).
"""

from slam.synth.generate import generate, parse_size
from slam.synth.presets import PRESETS, SynthOptions, preset_names, resolve_options

__all__ = ["PRESETS", "SynthOptions", "generate", "parse_size", "preset_names", "resolve_options"]
