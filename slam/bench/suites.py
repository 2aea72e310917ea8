"""Benchmark suites (which sequences) and variants (which configurations).

A :class:`Suite` is a list of :class:`Sequence` entries; a synthetic entry carries a :class:`SynthSpec`
and is rendered once into a cache folder (``<cache>/<preset>-<W>x<H>-<frames>-<seed>``) before the runs.
Named suites:

- ``quick``: three small synthetic sequences (tube, endoscope-lens tube, room; 320x240, 120 frames), a
  few minutes on 2 CPU cores;
- ``synthetic``: full-size ``slam synth`` presets (640x480, 300 frames), seeds 0, 1, 2;
- ``real``: the sequences found in the shared data folder (``../shared/data`` beside the repository);
- any other name is a path: one sequence folder, or a folder whose sub-folders are sequences.

A :class:`Variant` is a named list of config overrides. Names of the form ``FEATURES[+FRONTEND]``
(``sift``, ``orb``, ``superpoint``, ``sift+hybrid``, ``orb+flow`` ...) need no definition; anything else is
given as ``NAME=KEY=VALUE[,KEY=VALUE...]``.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

from slam.errors import ConfigError, InputError

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"
DEFAULT_CACHE_DIR = Path("runs") / "bench-cache"

FEATURE_TYPES = ("sift", "orb", "superpoint")
FRONTENDS = ("descriptors", "flow", "hybrid")

# base config per detected layout of a real sequence (the plain folder layout: see _folder_config)
LAYOUT_CONFIGS = {"kitti": "kitti", "euroc": "euroc", "tum": "tum", "c3vd": "c3vd", "endoslam": "endoslam",
                  "hamlyn": "hamlyn"}
# known shared sequences: name -> (base config, overrides, calibration file relative to the sequence)
REAL_SEQUENCES: dict[str, tuple[str, tuple[str, ...], str | None]] = {
    "sinus_dev": ("endoscopy", ("source.resize=0.5",), None),  # 1920x1080: half size, as in DESIGN.md
    "kitti01_clip": ("kitti", (), None),
    "euroc_v101_static_f000-039": ("euroc", (), "calib/cam0_sensor.yaml"),  # no motion: must not map
}
MIN_FRAMES = 10  # a folder with fewer frames is not a sequence worth benchmarking (e.g. 4 TUM views)

QUICK_PRESETS = ("tube", "tube_endo", "room")
SYNTHETIC_PRESETS = ("tube", "tube_endo", "tube_specular", "tube_fast", "tube_lowcontrast", "room")
DEFAULT_CONFIGS = ("sift", "orb")


@dataclass(frozen=True)
class SynthSpec:
    """A synthetic sequence: ``slam synth`` preset, length, seed and image size."""

    preset: str
    frames: int
    seed: int = 0
    width: int = 640
    height: int = 480

    @property
    def key(self) -> str:
        return f"{self.preset}-{self.width}x{self.height}-{self.frames}-{self.seed}"

    def materialise(self, cache_dir: str | Path) -> Path:
        """Render the sequence into ``cache_dir/<key>`` unless it is already there; returns the folder.

        Rendering goes to a temporary sibling folder that is renamed when complete, so an interrupted
        render never leaves a half sequence that looks finished.
        """
        from slam.synth import generate

        final = Path(cache_dir) / self.key
        if (final / "synth.json").is_file() and (final / "groundtruth.txt").is_file():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{self.key}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        log.info("rendering %s into %s", self.key, final)
        generate(self.preset, tmp, frames=self.frames, seed=self.seed, size=(self.width, self.height))
        if (final / "synth.json").is_file():  # another process rendered it meanwhile
            shutil.rmtree(tmp)
            return final
        if final.exists():  # a stale partial folder
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final


@dataclass(frozen=True)
class Sequence:
    """One sequence of a suite: a path (or a synthetic spec to render), its base config and overrides,
    and a calibration file where the layout has none of its own."""

    name: str
    path: str | None = None
    config: str | None = None
    overrides: tuple[str, ...] = ()
    synth: SynthSpec | None = None
    calib: str | None = None

    def resolved(self, cache_dir: str | Path) -> "Sequence":
        """This sequence with ``path`` set (rendering a synthetic one into ``cache_dir`` if needed)."""
        if self.path is not None:
            return self
        if self.synth is None:
            raise InputError(f"sequence {self.name!r} has neither a path nor a synthetic spec")
        return replace(self, path=str(self.synth.materialise(cache_dir)))


@dataclass
class Suite:
    name: str
    description: str
    sequences: list[Sequence] = field(default_factory=list)
    default_configs: tuple[str, ...] = DEFAULT_CONFIGS


@dataclass(frozen=True)
class Variant:
    """A named configuration: overrides applied on top of each sequence's base config."""

    name: str
    overrides: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------- variants
def parse_variant(text: str) -> Variant:
    """``sift``, ``orb+hybrid`` or ``NAME=KEY=VALUE[,KEY=VALUE...]`` to a :class:`Variant`.

    Raises ConfigError for an unknown short name or a malformed definition.
    """
    text = text.strip()
    if not text:
        raise ConfigError("empty configuration name in --configs")
    if "=" in text:
        name, rest = text.split("=", 1)
        pairs = tuple(p.strip() for p in rest.split(",") if p.strip())
        if not name.strip() or not pairs or any("=" not in p for p in pairs):
            raise ConfigError(f"configuration {text!r}: expected NAME=KEY=VALUE[,KEY=VALUE...], "
                              "e.g. sift2k=features.type=sift,features.num_features=2000")
        return Variant(name.strip(), pairs)
    feat, _, frontend = text.partition("+")
    if feat not in FEATURE_TYPES:
        raise ConfigError(f"unknown configuration {text!r}: expected one of {', '.join(FEATURE_TYPES)}, "
                          f"optionally +{'|+'.join(FRONTENDS)}, or NAME=KEY=VALUE[,...]")
    overrides = [f"features.type={feat}"]
    if frontend:
        if frontend not in FRONTENDS:
            raise ConfigError(f"configuration {text!r}: unknown front end {frontend!r}; "
                              f"expected one of {', '.join(FRONTENDS)}")
        overrides.append(f"tracking.frontend={frontend}")
    return Variant(text, tuple(overrides))


def parse_variants(items: list[str] | tuple[str, ...] | str) -> list[Variant]:
    """Variants from ``--configs`` (a comma-separated string of short names) and ``--variant`` items.

    Duplicated names raise ConfigError.
    """
    if isinstance(items, str):
        items = [s for s in items.split(",") if s.strip()]
    out = [parse_variant(s) for s in items]
    names = [v.name for v in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"configuration name(s) given twice: {', '.join(sorted(dup))}")
    return out


# ---------------------------------------------------------------------------------------------- suites
def synthetic_suite(name: str, presets: tuple[str, ...], frames: int, size: tuple[int, int],
                    seeds: tuple[int, ...], description: str) -> Suite:
    """A suite of ``slam synth`` presets x seeds (tubes use the endoscopy config, rooms the default)."""
    from slam.synth import preset_names

    known = preset_names()
    bad = [p for p in presets if p not in known]
    if bad:
        raise ConfigError(f"unknown synth preset(s) {', '.join(bad)}; available: {', '.join(known)}")
    seqs = []
    for preset in presets:
        for seed in seeds:
            spec = SynthSpec(preset, frames, seed, size[0], size[1])
            seqs.append(Sequence(spec.key, None, "default" if preset == "room" else "endoscopy", (), spec))
    return Suite(name, description, seqs)


def _frame_count(path: Path, config: str | None, calib: str | None) -> int:
    from slam.config import load_config
    from slam.sources import open_source

    src = open_source(str(path), load_config(config).source, calib=calib)
    try:
        return len(src)
    finally:
        src.close()


def _folder_config(path: Path, layout: str) -> tuple[str, tuple[str, ...], str | None]:
    """Base config, overrides and calibration file (absolute, or None) of a sequence folder."""
    if path.name in REAL_SEQUENCES:
        base, overrides, calib = REAL_SEQUENCES[path.name]
        return base, overrides, str(path / calib) if calib else None
    calib = None
    if layout == "folder" and not (path / "calib.txt").is_file():
        yamls = sorted((path / "calib").glob("*.yaml")) if (path / "calib").is_dir() else []
        calib = str(yamls[0]) if len(yamls) == 1 else None
    if layout in LAYOUT_CONFIGS:
        return LAYOUT_CONFIGS[layout], (), calib
    # the plain folder layout: a mask file means an endoscope's field of view
    return ("endoscopy" if (path / "mask.png").is_file() else "default"), (), calib


def folder_suite(root: str | Path, name: str | None = None, config: str | None = None) -> Suite:
    """Sequences in ``root``: ``root`` itself when it is a sequence, else each sub-folder that is one.

    ``config`` (a config name or YAML file) replaces the base config chosen by layout. Sequences with
    fewer than :data:`MIN_FRAMES` frames are left out (with a log line). Raises InputError when nothing
    usable is found.
    """
    from slam.sources import detect_layout

    root = Path(root).expanduser()
    if not root.exists():
        raise InputError(f"{root}: no such folder (expected a sequence or a folder of sequences)")
    candidates = [root] if detect_layout(root) else sorted(p for p in root.iterdir() if p.is_dir())
    seqs = []
    skipped = []
    for path in candidates:
        layout = detect_layout(path)
        if layout is None:
            continue
        base, overrides, calib = _folder_config(path, layout)
        base = config or base
        try:
            n = _frame_count(path, base, calib)
        except Exception as exc:  # a folder we cannot open is reported, not fatal to the suite
            skipped.append(f"{path.name} ({exc})")
            continue
        if n < MIN_FRAMES:
            skipped.append(f"{path.name} ({n} frames)")
            continue
        seqs.append(Sequence(path.name, str(path), base, overrides, calib=calib))
    for s in skipped:
        log.info("not benchmarked: %s", s)
    if not seqs:
        raise InputError(f"{root}: no sequence with {MIN_FRAMES}+ frames of a known layout found"
                         + (f" (skipped: {', '.join(skipped)})" if skipped else ""))
    return Suite(name or root.name, f"sequences in {root}", seqs)


def get_suite(
    name: str,
    data_dir: str | Path | None = None,
    presets: tuple[str, ...] | None = None,
    seeds: tuple[int, ...] | None = None,
    frames: int | None = None,
    size: tuple[int, int] | None = None,
    config: str | None = None,
) -> Suite:
    """The suite called ``name`` (``quick``, ``synthetic``, ``real``) or the folder at path ``name``.

    ``presets``/``seeds``/``frames``/``size`` change the synthetic suites; ``config`` replaces the base
    config of every sequence; ``data_dir`` is where ``real`` looks (default ``../shared/data``).
    """
    if name == "quick":
        suite = synthetic_suite("quick", presets or QUICK_PRESETS, frames or 120, size or (320, 240),
                                seeds or (0,), "small synthetic sequences (smoke test, minutes on 2 cores)")
    elif name == "synthetic":
        suite = synthetic_suite("synthetic", presets or SYNTHETIC_PRESETS, frames or 300, size or (640, 480),
                                seeds or (0, 1, 2), "full-size slam synth presets, several seeds")
    elif name == "real":
        data = Path(data_dir) if data_dir else DEFAULT_DATA_DIR
        if not data.is_dir():
            raise InputError(f"{data}: the real-data folder is absent (pass --data DIR)")
        suite = folder_suite(data, "real", None)
        suite.description = f"real sequences in {data}"
    else:
        if not Path(name).exists():
            raise InputError(f"unknown suite {name!r}: expected quick, synthetic, real, soak or a folder path")
        return folder_suite(name, None, config)
    if config:
        suite.sequences = [replace(s, config=config) for s in suite.sequences]
    return suite
