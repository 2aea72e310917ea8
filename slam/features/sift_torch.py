"""SIFT as batched tensor operations (PyTorch): the same detector and descriptor on CUDA or CPU.

The device follows the input tensors (:meth:`TorchSIFTExtractor.extract_batch`) or the extractor's
``device`` (:meth:`~TorchSIFTExtractor.extract` on numpy images). On CPU the same code runs, slowly, so that
tests run without a GPU; OpenCV's SIFT (:mod:`slam.features.sift`) stays the CPU default.

Pipeline (a fixed number of kernel launches per octave, no Python loop over keypoints, no host round trip
inside :meth:`~TorchSIFTExtractor.extract_batch`):

1. **Scale space.** Intensities in [0, 1], assumed blur 0.5 px. Per octave, the 6 Gaussian images of
   sigma ``1.6 * 2**(i/3)`` (octave pixels) are made in one pass of two separable convolutions (one
   vertical conv with 6 output channels, one grouped horizontal conv) from the octave's base image; the next
   octave's base is the image of sigma 3.2 subsampled 2x (pixel ``i`` of octave ``o`` lies at full-resolution
   pixel ``i * 2**o``; no half-pixel shift because samples are taken, not averaged). The first octave is the
   input resolution (VLFeat's first octave 0; OpenCV's default doubles the image first).
2. **DoG** of consecutive Gaussians (5 per octave), **3x3x3 extrema** by max-pooling (and of the negated
   DoG), a contrast pre-threshold ``0.5 * contrast / 3``, the **edge test** ``tr(H)^2 r < (r + 1)^2 det(H)``
   on the 2x2 spatial Hessian (finite differences by one 3x3 convolution), a 5 px border and the mask. (On
   CPU, pooling and the 3x3 convolution are replaced by the same maxima / differences written as slices,
   which CPU torch runs ~10x faster; the results are identical.)
3. **Candidates**: the strongest ``candidate_factor * num_features`` extrema by |DoG| over all octaves of
   an image (one ``topk``; fixed size, so no synchronisation).
4. **Refinement**: quadratic fit of the DoG in (x, y, scale) from the 27 neighbours (closed-form 3x3
   solve); ``refine_steps`` steps, moving to the neighbouring sample when the offset exceeds 0.5 (as
   Lowe/OpenCV; 1 = a single quadratic step). Rejected: not converged, interpolated contrast
   ``|D| < contrast / 3``, edge test at the final sample.
5. **Selection**: ``num_features`` keypoints spread over a ``grid_cols`` x ``grid_rows`` grid, every cell's
   best before any cell's second best (the rule of :func:`slam.features.grid.select_grid`), by sorting.
6. **Orientation**: gradients (central differences) of the Gaussian layers 1..3 of all octaves are packed
   into one atlas tensor; ``grid_sample`` reads them on a 17x17 grid of radius ``4.5 sigma`` around every
   keypoint (Gaussian window sigma ``1.5 sigma``); 36-bin histogram with linear bin interpolation, smoothed
   by [1 4 6 4 1]/16, highest peak refined by a parabola. As in Lowe's SIFT, a second keypoint (same place,
   own descriptor) is made where another local peak reaches 80% of the highest (``secondary_orientations``;
   at most one, and only in the slots the ``num_features`` detected keypoints leave free).
7. **Descriptor**: ``grid_sample`` on a rotated, scaled 20x20 patch (5 x 5 cells of width ``3 sigma``,
   so 4x4 samples per cell plus the half cell that bilinear binning reaches); gradients rotated into the
   keypoint frame; 4x4 spatial x 8 orientation bins with trilinear weights -- the spatial weights are a
   constant (16, 400) matrix, so binning is one batched matrix product; Gaussian window sigma = 2 cells;
   L2 normalise, clip at 0.2, renormalise, then RootSIFT (L1 normalise, square root; unit L2 norm).

Conventions: keypoints in full-resolution pixel coordinates, pixel centres at integers. Angles in degrees
in [0, 360), ``atan2(gy, gx)`` with y pointing down (OpenCV's ``KeyPoint.angle`` convention). Pyramid level
``level = 3 * octave + (layer - 1)`` with layer 1..3, as in :mod:`slam.features.sift` with first octave 0, so
``Features.scale_factor = 2 ** (1/3)`` and the keypoint's Gaussian scale is ``1.6 * scale_factor ** (level + 1)``
full-resolution pixels (up to the sub-scale offset); ``size = 2 * sigma`` (OpenCV's convention).

Differences from OpenCV's SIFT: no 2x upsampled octave; at most two orientations per keypoint; a fixed
number of refinement steps (default 2: on the bench's homography pairs a single step loses ~11% of the
repeatability, more than 2 gain < 2% more keypoints); orientation and descriptor samples on regular (rotated)
grids, read bilinearly, instead of every pixel of the patch; samples outside the image are dropped, as
OpenCV does. With the same input scale space (OpenCV's doubled octave emulated) 95% of OpenCV's keypoints
have one of these within 1 px.

Measured against :class:`slam.features.sift.SiftExtractor` (``tools/bench_sift_torch.py``, 12 held-out
homography pairs of synthetic tube / room and real sinus frames, 2000 features, CLAHE): repeatability@3px
0.608 vs 0.598, matching accuracy@3px 0.984 vs 0.983, correct matches per pair 463 vs 484.

Matching on the device: :func:`slam.features.torch_matching.match_descriptors_torch` for one pair of
images (``Features`` descriptors or tensors); :func:`match_batch_torch` here for padded batches
(:class:`BatchFeatures`), with fixed-size outputs and so without a host round trip.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from slam.config import FeatureConfig
from slam.errors import ConfigError, DependencyError, InputError
from slam.features.base import FeatureExtractor, Features
from slam.features.grid import check_config, check_gray, prepare_mask

log = logging.getLogger(__name__)

OCTAVE_LAYERS = 3  # DoG layers searched per octave
SCALE_FACTOR = 2.0 ** (1.0 / OCTAVE_LAYERS)  # scale ratio between consecutive levels
SIGMA0 = 1.6  # Gaussian scale of layer 0 of each octave (octave pixels)
INIT_SIGMA = 0.5  # blur assumed in the input image
IMG_BORDER = 5  # extrema closer than this to an octave's border are ignored (octave pixels)
MIN_OCTAVE_SIDE = 16  # octaves whose shorter side is smaller are not built
TRUNCATE = 4.0  # Gaussian kernels reach this many sigmas (OpenCV's choice for float images)
ORI_BINS = 36
ORI_SIGMA = 1.5  # orientation window sigma, in units of the keypoint scale
ORI_RADIUS = 3.0 * ORI_SIGMA  # orientation window radius, in units of the keypoint scale
ORI_SAMPLES = 17  # orientation grid samples per side
ORI_PEAK_RATIO = 0.8  # secondary orientation peaks at least this high make a second keypoint (Lowe)
DESC_CELLS = 4  # spatial cells per side
DESC_BINS = 8  # orientation bins per cell
DESC_CELL_WIDTH = 3.0  # cell width in units of the keypoint scale
DESC_SAMPLES_PER_CELL = 4  # grid samples per cell and side
DESC_CLIP = 0.2  # SIFT's clipping of the L2-normalised descriptor


def _torch():
    """The torch module, or an actionable DependencyError."""
    try:
        import torch
    except ModuleNotFoundError as exc:  # pragma: no cover - depends on the installation
        raise DependencyError(
            "the torch SIFT extractor needs PyTorch (`pip install torch`, with CUDA for --device cuda); "
            "or use the OpenCV SIFT extractor (--device cpu)"
        ) from exc
    return torch


def _gaussian_bank(sigmas: list[float], device: Any, dtype: Any):
    """``(len(sigmas), 2r+1)`` normalised 1-D Gaussian kernels padded to a common radius r (sigma 0 = delta)."""
    torch = _torch()
    radius = max(1, max(int(math.ceil(TRUNCATE * s)) for s in sigmas))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    rows = []
    for s in sigmas:
        if s < 1e-3:
            k = (t == 0).to(torch.float64)
        else:
            r = int(math.ceil(TRUNCATE * s))
            k = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= r)
        rows.append(k / k.sum())
    return torch.stack(rows).to(device=device, dtype=dtype), radius


def _layer_sigmas(base_sigma: float) -> list[float]:
    """Blur to add to an image of blur ``base_sigma`` to reach each of the octave's 6 Gaussian layers."""
    total = [SIGMA0 * 2.0 ** (i / OCTAVE_LAYERS) for i in range(OCTAVE_LAYERS + 3)]
    return [math.sqrt(max(s * s - base_sigma * base_sigma, 0.0)) for s in total]


def _octave_count(height: int, width: int, max_octaves: int | None) -> int:
    n = 0
    while min(height >> n, width >> n) >= MIN_OCTAVE_SIDE:
        n += 1
    n = max(n, 1)
    return n if max_octaves is None else max(1, min(n, int(max_octaves)))


def _neighbourhood_max_min(ring: Any) -> tuple[Any, Any]:
    """Max and min over the 3x3x3 neighbourhood (centre included) of layers 1..3 of ``ring (B, 5, h+2, w+2)``:
    two ``(B, 3, h, w)`` tensors. Max-pooling on CUDA (one launch each); separable slices elsewhere (CPU
    pooling is an order of magnitude slower than elementwise maxima)."""
    torch = _torch()
    if ring.device.type == "cuda":
        F = torch.nn.functional
        vmax = F.max_pool3d(ring[:, None], 3, stride=1)[:, 0]
        vmin = -F.max_pool3d(-ring[:, None], 3, stride=1)[:, 0]
        return vmax, vmin
    out = []
    for op in (torch.maximum, torch.minimum):
        a = op(op(ring[..., :-2], ring[..., 1:-1]), ring[..., 2:])
        a = op(op(a[..., :-2, :], a[..., 1:-1, :]), a[..., 2:, :])
        out.append(op(op(a[:, 0:3], a[:, 1:4]), a[:, 2:5]))
    return out[0], out[1]


def _gather_keypoints(kp: dict[str, Any], index: Any) -> dict[str, Any]:
    """The per-keypoint tensors of ``kp`` (``(B, N)`` or ``(B, N, 2)``) at ``index (B, K)``."""
    torch = _torch()
    return {
        key: torch.gather(val, 1, index[..., None].expand(-1, -1, val.shape[-1]) if val.dim() == 3 else index)
        for key, val in kp.items()
    }


def _refine_peak(hist: Any, peak: Any) -> Any:
    """Angle in radians [0, 2 pi) of the parabola's vertex through histogram bins ``peak - 1 .. peak + 1``;
    ``hist (B, N, bins)`` circular, ``peak (B, N, 1)`` int64 -> ``(B, N)``."""
    torch = _torch()
    n_bins = hist.shape[-1]
    left = torch.gather(hist, 2, (peak - 1) % n_bins)
    mid = torch.gather(hist, 2, peak)
    right = torch.gather(hist, 2, (peak + 1) % n_bins)
    den = left - 2.0 * mid + right
    ok = den.abs() > 1e-12
    shift = torch.where(ok, 0.5 * (left - right) / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
    return torch.remainder((peak.to(hist.dtype) + shift)[..., 0] * (2.0 * math.pi / n_bins), 2.0 * math.pi)


def _hessian_2d(layers: Any, kernel: Any) -> tuple[Any, Any, Any]:
    """Finite-difference ``dxx, dyy, dxy`` (each ``(B, L, h, w)``) at the interior of ``layers (B, L, h+2, w+2)``;
    on CUDA one convolution with ``kernel (3, 1, 3, 3)``, elsewhere slices (faster on CPU)."""
    if layers.device.type == "cuda":
        torch = _torch()
        b, n_l, hp, wp = layers.shape
        out = torch.nn.functional.conv2d(layers.reshape(b * n_l, 1, hp, wp), kernel).view(b, n_l, 3, hp - 2, wp - 2)
        return out[:, :, 0], out[:, :, 1], out[:, :, 2]
    c = layers[..., 1:-1, 1:-1]
    dxx = layers[..., 1:-1, 2:] + layers[..., 1:-1, :-2] - 2.0 * c
    dyy = layers[..., 2:, 1:-1] + layers[..., :-2, 1:-1] - 2.0 * c
    dxy = 0.25 * (layers[..., 2:, 2:] - layers[..., 2:, :-2] - layers[..., :-2, 2:] + layers[..., :-2, :-2])
    return dxx, dyy, dxy


@dataclass
class BatchFeatures:
    """Keypoints of a batch of B images as padded device tensors (K = the number requested).

    Attributes:
        keypoints: ``(B, K, 2)`` float32 full-resolution pixel coordinates (x, y), pixel centres at integers.
        descriptors: ``(B, K, 128)`` float32 RootSIFT (unit L2 norm; zero rows where not valid).
        levels: ``(B, K)`` int64 pyramid level ``3 * octave + layer - 1``.
        sizes: ``(B, K)`` float32 diameter ``2 sigma`` in full-resolution pixels.
        angles: ``(B, K)`` float32 degrees in [0, 360).
        responses: ``(B, K)`` float32 |interpolated DoG| (intensities in [0, 1]).
        valid: ``(B, K)`` bool; valid entries come first in every row, strongest-first by grid rank.
    """

    keypoints: Any
    descriptors: Any
    levels: Any
    sizes: Any
    angles: Any
    responses: Any
    valid: Any

    def to_features(self) -> list[Features]:
        """One :class:`Features` (numpy) per image, only its valid keypoints (one transfer to the host)."""
        torch = _torch()
        scalars = torch.stack(
            [self.sizes, self.angles, self.responses, self.levels.to(torch.float32), self.valid.to(torch.float32)],
            dim=-1,
        )
        host = torch.cat([self.keypoints, scalars, self.descriptors], dim=-1).cpu().numpy()
        out = []
        for rows in host:
            rows = rows[rows[:, 6] > 0.5]
            out.append(
                Features(
                    keypoints=np.ascontiguousarray(rows[:, 0:2], np.float32),
                    descriptors=np.ascontiguousarray(rows[:, 7:], np.float32),
                    octaves=np.rint(rows[:, 5]).astype(np.int32),
                    sizes=np.ascontiguousarray(rows[:, 2], np.float32),
                    angles=np.ascontiguousarray(rows[:, 3], np.float32),
                    responses=np.ascontiguousarray(rows[:, 4], np.float32),
                    binary=False,
                    scale_factor=SCALE_FACTOR,
                )
            )
        return out


class _StageClock:
    """Per-stage wall-clock milliseconds into a dict, synchronising CUDA before each reading; a no-op
    (no synchronisation) when ``out`` is None."""

    def __init__(self, out: dict[str, float] | None, device: Any) -> None:
        self.out = out
        self.cuda = out is not None and getattr(device, "type", str(device)) == "cuda"
        self._t = self._now() if out is not None else 0.0

    def _now(self) -> float:
        import time

        if self.cuda:
            _torch().cuda.synchronize()
        return time.perf_counter()

    def lap(self, name: str) -> None:
        if self.out is None:
            return
        t = self._now()
        self.out[name] = self.out.get(name, 0.0) + (t - self._t) * 1000.0
        self._t = t


@dataclass
class _Geometry:
    """Octave sizes and buffer layouts of one image size on one device, as Python ints (for slicing) and as
    device tensors (for per-keypoint look-ups without host round trips)."""

    heights: list[int]
    widths: list[int]
    dog_offsets: list[int]  # start of octave o in the per-image DoG buffer (5 layers)
    dog_total: int
    score_offsets: list[int]  # start of octave o in the per-image candidate buffer (layers 1..3)
    score_total: int
    atlas_x0: list[int]  # first column of octave o in the gradient atlas
    t_h: Any  # (n_oct,) int64
    t_w: Any
    t_hw: Any
    t_dog_off: Any
    t_score_off: Any
    t_hf: Any  # (n_oct,) float32
    t_wf: Any
    t_x0: Any

    @staticmethod
    def build(height: int, width: int, max_octaves: int | None, device: Any) -> "_Geometry":
        torch = _torch()
        n_oct = _octave_count(height, width, max_octaves)
        hs = [height >> o for o in range(n_oct)]
        ws = [width >> o for o in range(n_oct)]

        def starts(sizes: list[int]) -> list[int]:
            return [sum(sizes[:o]) for o in range(len(sizes))]

        dog_sizes = [5 * h * w for h, w in zip(hs, ws)]
        score_sizes = [OCTAVE_LAYERS * h * w for h, w in zip(hs, ws)]
        x0 = starts(ws)

        def t(values: list, dtype: Any = torch.long) -> Any:
            return torch.tensor(values, dtype=dtype, device=device)

        return _Geometry(
            hs, ws, starts(dog_sizes), sum(dog_sizes), starts(score_sizes), sum(score_sizes), x0,
            t(hs), t(ws), t([h * w for h, w in zip(hs, ws)]), t(starts(dog_sizes)), t(starts(score_sizes)),
            t(hs, torch.float32), t(ws, torch.float32), t(x0, torch.float32),
        )


@dataclass
class _Pyramid:
    """Gaussian and DoG scale space of a batch."""

    gauss: list  # per octave (B, 6, H_o, W_o)
    dog_flat: Any  # (B, dog_total): DoG of all octaves, flattened per image (None when not needed)
    geo: _Geometry


class TorchSIFTExtractor(FeatureExtractor):
    """SIFT detector + RootSIFT descriptor in PyTorch, on ``device`` ('cpu', 'cuda', 'cuda:1', ...).

    Args:
        cfg: feature settings (num_features, grid_cols/rows, clahe*, sift_contrast_threshold,
            sift_edge_threshold).
        device: where :meth:`extract` / :meth:`describe` compute; :meth:`extract_batch` follows its input.
        mask_margin_px: the mask is eroded by this many pixels before keypoints are kept.
        candidate_factor: extrema kept for refinement per requested keypoint.
        refine_steps: quadratic refinement steps (1 = a single step; more lets a keypoint move to the
            neighbouring sample and refit, as Lowe's SIFT does up to 5 times).
        max_octaves: limit on the octaves built (None: while the shorter side is >= 16 px).
        cuda_graph: on CUDA, run :meth:`extract_batch` through a CUDA graph captured on the first call for
            each input shape (removes the launch overhead of the few hundred small kernels; falls back to
            eager execution, with a warning, if capture fails).
        secondary_orientations: as Lowe's SIFT, a second keypoint (same place, own descriptor) where the
            orientation histogram has another peak of >= 80% of the highest; these fill the slots of the
            ``num_features`` that the detected keypoints leave free, so they never displace a keypoint.
    """

    name = "sift"
    binary = False
    descriptor_dim = 128

    def __init__(
        self,
        cfg: FeatureConfig,
        device: str = "cpu",
        mask_margin_px: int = 4,
        candidate_factor: float = 4.0,
        refine_steps: int = 2,
        max_octaves: int | None = None,
        cuda_graph: bool = False,
        secondary_orientations: bool = True,
    ) -> None:
        torch = _torch()
        check_config(cfg)
        if cfg.sift_contrast_threshold <= 0:
            raise ConfigError(f"features.sift_contrast_threshold must be > 0, got {cfg.sift_contrast_threshold}")
        if cfg.sift_edge_threshold <= 0:
            raise ConfigError(f"features.sift_edge_threshold must be > 0, got {cfg.sift_edge_threshold}")
        if candidate_factor < 1 or refine_steps < 1:
            raise ConfigError(f"candidate_factor must be >= 1 and refine_steps >= 1, got {candidate_factor}, "
                              f"{refine_steps}")
        try:
            self.device = torch.device(device)
        except RuntimeError as exc:
            raise ConfigError(f"device {device!r} is not a valid torch device (cpu, cuda, cuda:N)") from exc
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DependencyError(f"device {device!r} requested but this torch has no CUDA device; use --device cpu")
        self.cfg = cfg
        self.mask_margin_px = int(mask_margin_px)
        self.candidate_factor = float(candidate_factor)
        self.refine_steps = int(refine_steps)
        self.max_octaves = max_octaves
        self.scale_factor = SCALE_FACTOR
        self._consts: dict[str, Any] = {}  # per device: constant tensors
        self._geometries: dict[tuple, _Geometry] = {}  # per (device, H, W)
        self.cuda_graph = bool(cuda_graph)
        self.secondary_orientations = bool(secondary_orientations)
        self._graphs: dict[tuple, Any] = {}  # per (device, shape, masked): captured graph or False

    # ------------------------------------------------------------------------------------ constants
    def _const(self, device: Any) -> dict[str, Any]:
        """Kernels and sampling patterns on ``device`` (built once per device)."""
        key = str(device)
        if key in self._consts:
            return self._consts[key]
        torch = _torch()
        f32 = torch.float32
        c: dict[str, Any] = {}
        c["k_first"], c["r_first"] = _gaussian_bank(_layer_sigmas(INIT_SIGMA), device, f32)
        c["k_next"], c["r_next"] = _gaussian_bank(_layer_sigmas(SIGMA0), device, f32)
        # orientation sampling grid: unit offsets, Gaussian window (sigma 1.5 scale = radius / 3) in the circle
        u = torch.linspace(-1.0, 1.0, ORI_SAMPLES, dtype=f32)
        vy, vx = torch.meshgrid(u, u, indexing="ij")
        r2 = vx**2 + vy**2
        c["ori_grid"] = torch.stack([vx.ravel(), vy.ravel()], -1).to(device)  # (S, 2)
        ori_w = torch.exp(-r2 * (ORI_RADIUS**2) / (2.0 * ORI_SIGMA**2)) * (r2 <= 1.0)
        c["ori_w"] = ori_w.ravel().to(device)
        # descriptor grid: cell units in [-(d+1)/2, (d+1)/2], bilinear cell weights x Gaussian (sigma d/2)
        n = (DESC_CELLS + 1) * DESC_SAMPLES_PER_CELL
        half = 0.5 * (DESC_CELLS + 1)
        t = -half + (torch.arange(n, dtype=f32) + 0.5) * (2.0 * half / n)
        gy, gx = torch.meshgrid(t, t, indexing="ij")
        gx, gy = gx.ravel(), gy.ravel()
        c["desc_grid"] = torch.stack([gx, gy], -1).to(device)  # (S, 2) (u along x, v along y)
        centres = torch.arange(DESC_CELLS, dtype=f32)
        wr = torch.clamp(1.0 - (gy[None] + half - 1.0 - centres[:, None]).abs(), min=0.0)  # (4, S)
        wc = torch.clamp(1.0 - (gx[None] + half - 1.0 - centres[:, None]).abs(), min=0.0)
        gauss = torch.exp(-(gx**2 + gy**2) / (2.0 * (0.5 * DESC_CELLS) ** 2))
        wsp = (wr[:, None, :] * wc[None, :, :] * gauss).reshape(DESC_CELLS * DESC_CELLS, -1)  # (16, S)
        c["desc_wsp_t"] = wsp.t().contiguous().to(device)  # (S, 16)
        # refinement: neighbour offsets (27, 3) in (x, y, layer) with the 27 samples in (layer, y, x) order,
        # finite differences (27, 10) -> value, dx, dy, ds, dxx, dyy, dss, dxy, dxs, dys
        d = torch.arange(-1, 2)
        dl, dy, dx = (v.reshape(-1) for v in torch.meshgrid(d, d, d, indexing="ij"))
        c["nb"] = torch.stack([dx, dy, dl], -1).to(device)  # (27, 3) int64
        fd = torch.zeros(3, 3, 3, 10, dtype=f32)  # [layer, y, x, derivative]
        fd[1, 1, 1, 0] = 1.0
        fd[1, 1, 2, 1], fd[1, 1, 0, 1] = 0.5, -0.5
        fd[1, 2, 1, 2], fd[1, 0, 1, 2] = 0.5, -0.5
        fd[2, 1, 1, 3], fd[0, 1, 1, 3] = 0.5, -0.5
        for k, (a, bb) in enumerate([((1, 1, 2), (1, 1, 0)), ((1, 2, 1), (1, 0, 1)), ((2, 1, 1), (0, 1, 1))]):
            fd[a + (4 + k,)], fd[bb + (4 + k,)], fd[1, 1, 1, 4 + k] = 1.0, 1.0, -2.0
        for k, (i, j) in enumerate([(2, 1), (2, 0), (1, 0)]):  # (xy, xs, ys): axes in (layer, y, x) order
            for si in (-1, 1):
                for sj in (-1, 1):
                    idx = [1, 1, 1]
                    idx[i] += si
                    idx[j] += sj
                    fd[tuple(idx) + (7 + k,)] = 0.25 * si * sj
        c["fd"] = fd.reshape(27, 10).to(device)
        c["hess_idx"] = torch.tensor([4, 7, 8, 7, 5, 9, 8, 9, 6], device=device)  # 3x3 in (x, y, s)
        c["rot1"] = torch.tensor([1, 2, 0], device=device)
        c["rot2"] = torch.tensor([2, 0, 1], device=device)
        c["pos_lo"] = torch.tensor([IMG_BORDER, IMG_BORDER, 1], device=device)
        h2 = torch.zeros(3, 1, 3, 3, dtype=f32)  # 2-D Hessian as cross-correlation kernels: dxx, dyy, dxy
        h2[0, 0, 1] = torch.tensor([1.0, -2.0, 1.0])
        h2[1, 0, :, 1] = torch.tensor([1.0, -2.0, 1.0])
        h2[2, 0] = 0.25 * torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 1.0]])
        c["hess2d"] = h2.to(device)
        self._consts[key] = c
        return c

    def _geometry(self, device: Any, height: int, width: int) -> _Geometry:
        key = (str(device), int(height), int(width))
        if key not in self._geometries:
            self._geometries[key] = _Geometry.build(int(height), int(width), self.max_octaves, device)
        return self._geometries[key]

    # ------------------------------------------------------------------------------------ scale space
    def _blur_stack(self, x: Any, bank: Any, radius: int) -> Any:
        """``(B, 1, H, W)`` -> ``(B, L, H, W)``: the image blurred by each 1-D kernel of ``bank (L, K)``
        (separable; reflect-101 borders as OpenCV, replicate where the image is too small to reflect)."""
        torch = _torch()
        F = torch.nn.functional
        n_k = bank.shape[0]
        h, w = x.shape[-2:]
        mode_v = "reflect" if radius < h else "replicate"
        mode_h = "reflect" if radius < w else "replicate"
        y = F.conv2d(F.pad(x, (0, 0, radius, radius), mode=mode_v), bank.view(n_k, 1, -1, 1))
        y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode=mode_h), bank.view(n_k, 1, 1, -1), groups=n_k)
        return y

    def _pyramid(self, img: Any, with_dog: bool = True) -> _Pyramid:
        """Gaussian (and DoG) scale space of ``(B, 1, H, W)`` float32 images in [0, 1]."""
        torch = _torch()
        c = self._const(img.device)
        b, _, h, w = img.shape
        geo = self._geometry(img.device, h, w)
        heights, widths, offsets = geo.heights, geo.widths, geo.dog_offsets
        n_oct = len(heights)
        dog_flat = torch.empty(b, geo.dog_total, dtype=img.dtype, device=img.device) if with_dog else None
        gauss = []
        base = img
        for o in range(n_oct):
            if o == 0:
                g = self._blur_stack(base, c["k_first"], c["r_first"])
            else:
                g = self._blur_stack(base, c["k_next"], c["r_next"])
            gauss.append(g)
            if with_dog:
                view = dog_flat[:, offsets[o] : offsets[o] + 5 * heights[o] * widths[o]]
                view = view.view(b, 5, heights[o], widths[o])
                torch.sub(g[:, 1:], g[:, :-1], out=view)
            if o + 1 < n_oct:
                base = g[:, OCTAVE_LAYERS : OCTAVE_LAYERS + 1, : 2 * heights[o + 1] : 2, : 2 * widths[o + 1] : 2]
                base = base.contiguous()
        return _Pyramid(gauss, dog_flat, geo)

    # ------------------------------------------------------------------------------------ detection
    def _candidate_scores(self, pyr: _Pyramid, masks: Any) -> Any:
        """``(B, score_total)`` |DoG| at the extrema that pass the pre-contrast, edge, border and mask tests
        (0 elsewhere), layers 1..3 of every octave (layout: ``_Geometry.score_offsets``)."""
        torch = _torch()
        c = self._const(pyr.dog_flat.device)
        b = pyr.dog_flat.shape[0]
        thr = 0.5 * float(self.cfg.sift_contrast_threshold) / OCTAVE_LAYERS
        r = float(self.cfg.sift_edge_threshold)
        edge_k = (r + 1.0) ** 2 / r
        geo = pyr.geo
        offsets = geo.score_offsets
        score = torch.zeros(b, geo.score_total, dtype=pyr.dog_flat.dtype, device=pyr.dog_flat.device)
        e = IMG_BORDER
        for o, (hh, ww) in enumerate(zip(geo.heights, geo.widths)):
            if hh <= 2 * e or ww <= 2 * e:
                continue
            dog = pyr.dog_flat[:, geo.dog_offsets[o] : geo.dog_offsets[o] + 5 * hh * ww].view(b, 5, hh, ww)
            # interior [e, h - e) x [e, w - e) of layers 1..3 and the ring of neighbours around it
            ring = dog[:, :, e - 1 : hh - e + 1, e - 1 : ww - e + 1]
            mid = ring[:, 1:4, 1:-1, 1:-1]
            vmax, vmin = _neighbourhood_max_min(ring)
            ext = ((mid >= vmax) & (mid > thr)) | ((mid <= vmin) & (mid < -thr))
            dxx, dyy, dxy = _hessian_2d(ring[:, 1:4], c["hess2d"])
            tr = dxx + dyy
            det = dxx * dyy - dxy * dxy
            ok = ext & (det > 0) & (tr * tr < edge_k * det)
            if masks is not None:
                f = 1 << o
                ok = ok & masks[:, None, e * f : (hh - e) * f : f, e * f : (ww - e) * f : f]
            view = score[:, offsets[o] : offsets[o] + 3 * hh * ww].view(b, 3, hh, ww)
            torch.where(ok, mid.abs(), torch.zeros((), dtype=mid.dtype, device=mid.device),
                        out=view[:, :, e : hh - e, e : ww - e])
        return score

    def _refine(self, pyr: _Pyramid, o: Any, layer: Any, y: Any, x: Any, valid: Any) -> dict[str, Any]:
        """Quadratic sub-pixel / sub-scale refinement of candidates given as ``(B, N)`` int64 octave, layer
        (1..3), row, column and bool ``valid``; returns refined geometry and the updated validity.

        The 27 DoG samples around each candidate are gathered from the flat DoG buffer; gradient and Hessian
        in (x, y, scale) are one matrix product with a constant (27, 10) finite-difference matrix; the 3x3
        system is solved by the adjugate (cross products of the Hessian's rows)."""
        torch = _torch()
        c = self._const(pyr.dog_flat.device)
        geo = pyr.geo
        h_o, w_o, off_o, hw_o = geo.t_h[o], geo.t_w[o], geo.t_dog_off[o], geo.t_hw[o]
        b, n = o.shape
        ct = float(self.cfg.sift_contrast_threshold) / OCTAVE_LAYERS
        r = float(self.cfg.sift_edge_threshold)
        pos = torch.stack([x, y, layer], -1)  # (B, N, 3) sample (x, y, layer) in the octave
        strides = torch.stack([torch.ones_like(w_o), w_o, hw_o], -1)
        lo = c["pos_lo"]
        hi = torch.stack([w_o - IMG_BORDER, h_o - IMG_BORDER, torch.full_like(w_o, OCTAVE_LAYERS + 1)], -1)
        for step in range(self.refine_steps):
            base = off_o + (pos * strides).sum(-1)
            idx = base[..., None] + (strides[..., None, :] * c["nb"]).sum(-1)  # (B, N, 27)
            idx = torch.where(valid[..., None], idx, torch.zeros_like(idx))
            v = torch.gather(pyr.dog_flat, 1, idx.view(b, -1)).view(b, n, 27)
            d = torch.matmul(v, c["fd"])  # (B, N, 10): value, gradient (3), Hessian entries (6)
            hess = d[..., c["hess_idx"]].view(b, n, 3, 3)
            grad = d[..., 1:4]
            adj = torch.linalg.cross(hess[..., c["rot1"], :], hess[..., c["rot2"], :], dim=-1)
            det = (hess[..., 0, :] * adj[..., 0, :]).sum(-1)
            solvable = det.abs() > 1e-12
            inv = torch.where(solvable, 1.0 / torch.where(solvable, det, torch.ones_like(det)), torch.zeros_like(det))
            off = -torch.matmul(adj, grad[..., None])[..., 0] * inv[..., None]
            big = off.abs().amax(-1)
            converged = valid & solvable & (big < 0.5)
            if step == self.refine_steps - 1:
                break
            move = valid & solvable & ~converged & (big < 1e3)
            pos = torch.where(move[..., None], pos + torch.round(off).long(), pos)
            valid = valid & solvable & (big < 1e3) & ((pos >= lo) & (pos < hi)).all(-1)
        contrast = d[..., 0] + 0.5 * (grad * off).sum(-1)
        hxx, hyy, hxy = hess[..., 0, 0], hess[..., 1, 1], hess[..., 0, 1]
        tr = hxx + hyy
        det2 = hxx * hyy - hxy * hxy
        ok = converged & (contrast.abs() >= ct) & (det2 > 0) & (tr * tr * r < (r + 1.0) ** 2 * det2)
        sub = pos.to(torch.float32) + off  # (x, y, layer) with sub-sample offsets
        scale = 2.0 ** o.to(torch.float32)
        return {
            "valid": ok,
            "octave": o,
            "layer": pos[..., 2],
            "x_oct": sub[..., 0],
            "y_oct": sub[..., 1],
            "sigma_oct": SIGMA0 * torch.pow(2.0, sub[..., 2] * (1.0 / OCTAVE_LAYERS)),
            "xy": sub[..., :2] * scale[..., None],
            "response": contrast.abs(),
        }

    def _spread_topk(self, xy: Any, response: Any, valid: Any, k: int, width: int, height: int) -> tuple[Any, Any]:
        """``(B, k)`` indices of the keypoints kept by grid round robin (see :func:`slam.features.grid.select_grid`)
        and their ``(B, k)`` validity; ``xy (B, N, 2)``, ``response``/``valid (B, N)``."""
        torch = _torch()
        cols, rows = int(self.cfg.grid_cols), int(self.cfg.grid_rows)
        b, n = response.shape
        n_cells = cols * rows
        cx = torch.clamp((xy[..., 0] * (cols / float(width))).floor().long(), 0, cols - 1)
        cy = torch.clamp((xy[..., 1] * (rows / float(height))).floor().long(), 0, rows - 1)
        cell = torch.where(valid, cy * cols + cx, torch.full_like(cx, n_cells))
        neg = torch.where(valid, -response, torch.full_like(response, float("inf")))
        by_resp = torch.sort(neg, dim=1, stable=True).indices
        cell_r = torch.gather(cell, 1, by_resp)
        by_cell = torch.gather(by_resp, 1, torch.sort(cell_r, dim=1, stable=True).indices)
        cell_sorted = torch.gather(cell, 1, by_cell)
        counts = torch.zeros(b, n_cells + 1, dtype=torch.long, device=xy.device)
        counts.scatter_add_(1, cell, torch.ones_like(cell))
        start = torch.cumsum(counts, 1) - counts
        rank_sorted = torch.arange(n, device=xy.device)[None] - torch.gather(start, 1, cell_sorted)
        rank = torch.empty_like(rank_sorted).scatter_(1, by_cell, rank_sorted)
        rank = torch.where(valid, rank, torch.full_like(rank, n + 1))
        rank_r = torch.gather(rank, 1, by_resp)
        final = torch.gather(by_resp, 1, torch.sort(rank_r, dim=1, stable=True).indices)[:, :k]
        return final, torch.gather(valid, 1, final)

    # ------------------------------------------------------------------------------------ description
    def _gradient_atlas(self, pyr: _Pyramid) -> Any:
        """Gradients (central differences, y down) of the Gaussian layers 1..3 of all octaves packed into
        one ``(B, 2, 3 H, sum_o W_o)`` tensor: layer l-1 in rows ``[(l-1) H, (l-1) H + H_o)``, octave o in
        columns from ``_Geometry.atlas_x0[o]``; zero outside the images' interiors."""
        torch = _torch()
        geo = pyr.geo
        g0 = pyr.gauss[0]
        b = g0.shape[0]
        h = geo.heights[0]
        wc = sum(geo.widths)
        atlas = torch.zeros(b, 2, OCTAVE_LAYERS, h, wc, dtype=g0.dtype, device=g0.device)
        for o, g in enumerate(pyr.gauss):
            hh, ww, x0 = geo.heights[o], geo.widths[o], geo.atlas_x0[o]
            layers = g[:, 1 : OCTAVE_LAYERS + 1]
            torch.sub(layers[..., 2:], layers[..., :-2], out=atlas[:, 0, :, :hh, x0 + 1 : x0 + ww - 1])
            torch.sub(layers[..., 2:, :], layers[..., :-2, :], out=atlas[:, 1, :, 1 : hh - 1, x0 : x0 + ww])
        return atlas.view(b, 2, OCTAVE_LAYERS * h, wc)

    def _sample(self, atlas: Any, geo: _Geometry, kp: dict[str, Any], offsets: Any) -> tuple[Any, Any, Any]:
        """Gradients at ``offsets (B, N, S, 2)`` (octave pixels) around every keypoint by ``grid_sample``:
        ``(gx, gy, inside)`` each ``(B, N, S)``; samples outside the keypoint's octave image are not inside."""
        torch = _torch()
        hs, ws = geo.t_hf, geo.t_wf
        o = kp["octave"]
        px = kp["x_oct"][..., None] + offsets[..., 0]
        py = kp["y_oct"][..., None] + offsets[..., 1]
        inside = (px >= 0) & (py >= 0) & (px <= (ws[o] - 1.0)[..., None]) & (py <= (hs[o] - 1.0)[..., None])
        ax = geo.t_x0[o][..., None] + px
        ay = ((kp["layer"] - 1).to(torch.float32) * geo.heights[0])[..., None] + py
        hc, wc = atlas.shape[-2:]
        grid = torch.stack([ax * (2.0 / (wc - 1)) - 1.0, ay * (2.0 / (hc - 1)) - 1.0], -1)
        out = torch.nn.functional.grid_sample(atlas, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out[:, 0], out[:, 1], inside

    def _orientation(self, atlas: Any, geo: _Geometry, kp: dict[str, Any]) -> tuple[Any, Any, Any]:
        """Gradient orientations in radians, [0, 2 pi), y down: ``(B, N)`` dominant one, ``(B, N)`` the
        highest other local peak of the histogram, and ``(B, N)`` bool whether that peak reaches 80% of the
        dominant one (where Lowe's SIFT makes a second keypoint)."""
        torch = _torch()
        c = self._const(atlas.device)
        radius = ORI_RADIUS * kp["sigma_oct"]
        offsets = c["ori_grid"] * radius[..., None, None]
        gx, gy, inside = self._sample(atlas, geo, kp, offsets)
        weight = torch.sqrt(gx * gx + gy * gy) * c["ori_w"] * inside
        bin_f = torch.remainder(torch.atan2(gy, gx) * (ORI_BINS / (2.0 * math.pi)), float(ORI_BINS))
        b0 = bin_f.floor()
        frac = bin_f - b0
        b0 = b0.long() % ORI_BINS
        b, n, _ = gx.shape
        hist = torch.zeros(b, n, ORI_BINS, dtype=gx.dtype, device=gx.device)
        hist.scatter_add_(2, b0, weight * (1.0 - frac))
        hist.scatter_add_(2, (b0 + 1) % ORI_BINS, weight * frac)
        hist = (
            (torch.roll(hist, 2, 2) + torch.roll(hist, -2, 2)) * (1.0 / 16.0)
            + (torch.roll(hist, 1, 2) + torch.roll(hist, -1, 2)) * (4.0 / 16.0)
            + hist * (6.0 / 16.0)
        )
        peak = hist.argmax(2, keepdim=True)
        top = torch.gather(hist, 2, peak)
        local = (hist > torch.roll(hist, 1, 2)) & (hist > torch.roll(hist, -1, 2)) & (hist >= ORI_PEAK_RATIO * top)
        others = torch.where(local, hist, torch.full_like(hist, -1.0)).scatter_(2, peak, -1.0)
        peak2 = others.argmax(2, keepdim=True)
        has2 = torch.gather(others, 2, peak2)[..., 0] > 0
        return _refine_peak(hist, peak), _refine_peak(hist, peak2), has2

    def _descriptor(self, atlas: Any, geo: _Geometry, kp: dict[str, Any], theta: Any) -> Any:
        """``(B, N, 128)`` RootSIFT descriptors on rotated, scaled patches (orientation ``theta`` radians)."""
        torch = _torch()
        c = self._const(atlas.device)
        cos, sin = torch.cos(theta)[..., None], torch.sin(theta)[..., None]
        u, v = c["desc_grid"][:, 0], c["desc_grid"][:, 1]  # (S,) cell units
        cell = (DESC_CELL_WIDTH * kp["sigma_oct"])[..., None]
        offsets = torch.stack([(u * cos - v * sin) * cell, (u * sin + v * cos) * cell], -1)
        gx, gy, inside = self._sample(atlas, geo, kp, offsets)
        gxr = gx * cos + gy * sin
        gyr = gy * cos - gx * sin
        mag = torch.sqrt(gxr * gxr + gyr * gyr) * inside
        obin = torch.remainder(torch.atan2(gyr, gxr) * (DESC_BINS / (2.0 * math.pi)), float(DESC_BINS))
        o0 = obin.floor()
        frac = obin - o0
        o0 = o0.long() % DESC_BINS
        contrib = torch.zeros(*mag.shape, DESC_BINS, dtype=mag.dtype, device=mag.device)  # (B, N, S, 8)
        contrib.scatter_(3, o0[..., None], (mag * (1.0 - frac))[..., None])
        contrib.scatter_add_(3, ((o0 + 1) % DESC_BINS)[..., None], (mag * frac)[..., None])
        desc = torch.matmul(contrib.transpose(-1, -2), c["desc_wsp_t"])  # (B, N, 8, 16)
        desc = desc.transpose(-1, -2).reshape(*theta.shape, DESC_CELLS * DESC_CELLS * DESC_BINS)
        norm = desc.norm(dim=-1, keepdim=True)
        desc = torch.minimum(desc, DESC_CLIP * norm)
        desc = desc / torch.clamp(desc.sum(dim=-1, keepdim=True), min=1e-12)  # L1 (L2 renorm cancels)
        return torch.sqrt(desc)

    # ------------------------------------------------------------------------------------ tensor API
    def extract_batch(self, images: Any, masks: Any = None, timings: dict[str, float] | None = None) -> BatchFeatures:
        """Keypoints and RootSIFT descriptors of a batch, on the images' device, without host round trips.

        Args:
            images: ``(B, 1, H, W)`` (or ``(B, H, W)``) float tensor with intensities in [0, 1], or uint8
                (divided by 255). Contrast normalisation (CLAHE) is the caller's business here.
            masks: None or ``(B, H, W)`` / ``(B, 1, H, W)`` tensor, non-zero = usable; used as given (not
                eroded; :meth:`extract` erodes by ``mask_margin_px`` first).
            timings: if a dict, per-stage milliseconds are added to it (synchronising CUDA between stages,
                and never through a CUDA graph; leave None for full speed).

        Returns:
            :class:`BatchFeatures` with K = ``cfg.num_features`` slots per image. With ``cuda_graph`` on CUDA the
            tensors are copies of the graph's outputs, made in inference mode.
        """
        torch = _torch()
        if not torch.is_tensor(images):
            raise InputError("extract_batch expects a torch tensor of shape (B, 1, H, W)")
        if images.dim() == 3:
            images = images[:, None]
        if images.dim() != 4 or images.shape[1] != 1:
            raise InputError(f"extract_batch expects images of shape (B, 1, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.to(torch.float32) * (1.0 / 255.0)
        else:
            images = images.to(torch.float32)
        b, _, h, w = images.shape
        if masks is not None:
            masks = masks.to(images.device)
            if masks.dim() == 4:
                masks = masks[:, 0]
            if tuple(masks.shape) != (b, h, w):
                raise InputError(f"extract_batch masks have shape {tuple(masks.shape)}; expected {(b, h, w)}")
            masks = masks != 0
        if self.cuda_graph and images.is_cuda and timings is None:
            out = self._run_graph(images, masks)
            if out is not None:
                return out
        return self._run(images, masks, _StageClock(timings, images.device))

    def _run_graph(self, images: Any, masks: Any) -> BatchFeatures | None:
        """:meth:`_run` through a CUDA graph captured once per (device, shape, with mask): one launch instead of
        hundreds. None when capture failed for this shape (the caller runs eagerly)."""
        torch = _torch()
        key = (str(images.device), tuple(images.shape), masks is not None)
        entry = self._graphs.get(key)
        with torch.inference_mode():
            if entry is None:
                entry = self._capture(images, masks)
                self._graphs[key] = entry
            if entry is False:
                return None
            static_in, static_mask, graph, static_out = entry
            static_in.copy_(images)
            if static_mask is not None:
                static_mask.copy_(masks)
            graph.replay()
            return BatchFeatures(*(getattr(static_out, f).clone() for f in BatchFeatures.__dataclass_fields__))

    def _capture(self, images: Any, masks: Any) -> tuple | bool:
        """(static input, static mask, CUDAGraph, static BatchFeatures), or False when capture fails."""
        torch = _torch()
        static_in = images.clone()
        static_mask = None if masks is None else masks.clone()
        try:
            side = torch.cuda.Stream(device=images.device)
            side.wait_stream(torch.cuda.current_stream(images.device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up: constants, cuDNN plans, allocator
                    self._run(static_in, static_mask, _StageClock(None, images.device))
            torch.cuda.current_stream(images.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._run(static_in, static_mask, _StageClock(None, images.device))
        except RuntimeError as exc:
            log.warning("torch sift: CUDA graph capture failed for input %s (%s); running eagerly",
                        tuple(images.shape), exc)
            return False
        log.debug("torch sift: captured a CUDA graph for input %s", tuple(images.shape))
        return static_in, static_mask, graph, static_out

    def _run(self, images: Any, masks: Any, clock: _StageClock) -> BatchFeatures:
        """The pipeline on checked ``(B, 1, H, W)`` float32 images and ``(B, H, W)`` bool masks (or None)."""
        torch = _torch()
        b, _, h, w = images.shape
        pyr = self._pyramid(images)
        clock.lap("scale_space")
        geo = pyr.geo
        score = self._candidate_scores(pyr, masks)
        clock.lap("extrema")
        n_cand = min(score.shape[1], max(1, int(round(self.candidate_factor * self.cfg.num_features))))
        top_val, top_idx = torch.topk(score, n_cand, dim=1, sorted=False)
        o = torch.searchsorted(geo.t_score_off, top_idx, right=True) - 1
        local = top_idx - geo.t_score_off[o]
        hw_o, w_o = geo.t_hw[o], geo.t_w[o]
        layer = local // hw_o + 1
        rem = local - (layer - 1) * hw_o
        y = rem // w_o
        x = rem - y * w_o
        clock.lap("candidates")
        kp = self._refine(pyr, o, layer, y, x, top_val > 0)
        if masks is not None:
            ix = torch.clamp(torch.round(kp["xy"][..., 0]).long(), 0, w - 1)
            iy = torch.clamp(torch.round(kp["xy"][..., 1]).long(), 0, h - 1)
            kp["valid"] = kp["valid"] & torch.gather(masks.reshape(b, -1), 1, iy * w + ix)
        clock.lap("refine")
        k = min(int(self.cfg.num_features), n_cand)
        sel, sel_valid = self._spread_topk(kp["xy"], kp["response"], kp["valid"], k, w, h)
        kp = _gather_keypoints(kp, sel)
        kp["valid"] = sel_valid
        clock.lap("select")
        atlas = self._gradient_atlas(pyr)
        theta, theta2, has2 = self._orientation(atlas, geo, kp)
        if self.secondary_orientations:
            # a second keypoint per strong secondary peak, in the slots primaries leave free (primaries first)
            both = {key: torch.cat([val, val], 1) for key, val in kp.items()}
            both["valid"] = torch.cat([sel_valid, sel_valid & has2], 1)
            priority = torch.ones_like(both["valid"], dtype=torch.long)
            priority[:, :k] = 0
            priority = torch.where(both["valid"], priority, torch.full_like(priority, 2))
            keep = torch.sort(priority, dim=1, stable=True).indices[:, :k]
            kp = _gather_keypoints(both, keep)
            theta = torch.gather(torch.cat([theta, theta2], 1), 1, keep)
            sel_valid = kp["valid"]
        clock.lap("orientation")
        desc = self._descriptor(atlas, geo, kp, theta)
        desc = desc * sel_valid[..., None]
        clock.lap("descriptor")
        levels = kp["octave"] * OCTAVE_LAYERS + (kp["layer"] - 1)
        return BatchFeatures(
            keypoints=kp["xy"],
            descriptors=desc,
            levels=levels,
            sizes=(2.0 * kp["sigma_oct"] * (2.0 ** kp["octave"].to(torch.float32))),
            angles=torch.rad2deg(theta),
            responses=kp["response"],
            valid=sel_valid,
        )

    def describe_batch(self, images: Any, keypoints: Any, levels: Any) -> tuple[Any, Any]:
        """RootSIFT descriptors at given positions: ``images (B, 1, H, W)`` float in [0, 1], ``keypoints
        (B, N, 2)`` full-resolution pixels, ``levels (B, N)`` int pyramid levels. Returns ``(B, N, 128)``
        descriptors and ``(B, N)`` angles in degrees (orientation estimated as in extraction)."""
        torch = _torch()
        pyr = self._pyramid(images.to(torch.float32), with_dog=False)
        n_oct = len(pyr.geo.heights)
        levels = torch.clamp(levels.long(), 0, OCTAVE_LAYERS * n_oct - 1)
        o = levels // OCTAVE_LAYERS
        layer = levels % OCTAVE_LAYERS + 1
        scale = 2.0 ** o.to(torch.float32)
        kp = {
            "octave": o,
            "layer": layer,
            "x_oct": keypoints[..., 0].to(torch.float32) / scale,
            "y_oct": keypoints[..., 1].to(torch.float32) / scale,
            "sigma_oct": SIGMA0 * torch.pow(2.0, layer.to(torch.float32) / OCTAVE_LAYERS),
        }
        atlas = self._gradient_atlas(pyr)
        theta = self._orientation(atlas, pyr.geo, kp)[0]
        return self._descriptor(atlas, pyr.geo, kp, theta), torch.rad2deg(theta)

    # ------------------------------------------------------------------------------------ numpy API
    def _upload(self, gray: np.ndarray) -> tuple[np.ndarray, Any]:
        """CLAHE (cfg.clahe) on the CPU, then the ``(1, 1, H, W)`` float32 [0, 1] tensor on the device."""
        torch = _torch()
        img = check_gray(gray)
        if self.cfg.clahe:
            from slam.features.photometric import normalize_luminance

            img = normalize_luminance(img, self.cfg.clahe_clip, self.cfg.clahe_tiles)
        t = torch.from_numpy(img).to(self.device, non_blocking=True)
        return img, (t.to(torch.float32) * (1.0 / 255.0))[None, None]

    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Up to ``cfg.num_features`` keypoints of an ``(H, W)`` uint8 image spread over the grid, inside
        ``mask`` (non-zero = usable) eroded by ``mask_margin_px``."""
        torch = _torch()
        img, t = self._upload(gray)
        usable = prepare_mask(mask, img.shape, self.mask_margin_px)
        if usable is not None and not usable.any():
            return Features.empty(128, False, self.scale_factor)
        m = None if usable is None else torch.from_numpy(usable).to(self.device)[None]
        with torch.inference_mode():
            feats = self.extract_batch(t, m).to_features()[0]
        log.debug("torch sift: %d keypoints", len(feats))
        return feats

    def describe(
        self, gray: np.ndarray, keypoints: np.ndarray, octaves: np.ndarray | None = None
    ) -> tuple[Features, np.ndarray]:
        """RootSIFT descriptors at given ``(N, 2)`` full-resolution positions; ``octaves`` are levels as in
        :meth:`extract` (default 0: the first layer of the full-resolution octave, sigma ~2 px). Keypoints
        outside the image are dropped; returns their Features (input order) and ``(M,)`` int64 indices."""
        torch = _torch()
        img, t = self._upload(gray)
        h, w = img.shape
        xy = np.asarray(keypoints, np.float64).reshape(-1, 2)
        n = len(xy)
        levels = np.zeros(n, np.int64) if octaves is None else np.asarray(octaves, np.int64).reshape(n)
        n_oct = _octave_count(h, w, self.max_octaves)
        levels = np.clip(levels, 0, OCTAVE_LAYERS * n_oct - 1)
        index = np.flatnonzero(
            np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
        )
        if len(index) == 0:
            return Features.empty(128, False, self.scale_factor), np.zeros(0, np.int64)
        lv = levels[index]
        with torch.inference_mode():
            kxy = torch.from_numpy(xy[index].astype(np.float32)).to(self.device)[None]
            klv = torch.from_numpy(lv).to(self.device)[None]
            desc, ang = self.describe_batch(t, kxy, klv)
            desc, ang = desc[0].cpu().numpy(), ang[0].cpu().numpy()
        octave = lv // OCTAVE_LAYERS
        layer = lv % OCTAVE_LAYERS + 1
        sizes = 2.0 * SIGMA0 * 2.0 ** (layer / OCTAVE_LAYERS) * 2.0**octave
        feats = Features(
            keypoints=xy[index].astype(np.float32),
            descriptors=np.ascontiguousarray(desc, np.float32),
            octaves=lv.astype(np.int32),
            sizes=sizes.astype(np.float32),
            angles=ang.astype(np.float32),
            responses=np.zeros(len(index), np.float32),
            binary=False,
            scale_factor=self.scale_factor,
        )
        return feats, index.astype(np.int64)


def match_batch_torch(
    d1: Any, d2: Any, ratio: float | None = 0.8, mutual: bool = True, valid1: Any = None, valid2: Any = None
) -> tuple[Any, Any]:
    """Matching of padded descriptor batches on their device with fixed-size outputs (no host round trip):
    the batched counterpart of :func:`slam.features.torch_matching.match_descriptors_torch` (same rule:
    nearest neighbour, Lowe's ratio test, mutual check; L2 distances).

    Args:
        d1: ``(..., N, D)`` and d2: ``(..., M, D)`` float tensors, e.g. ``BatchFeatures.descriptors``.
        ratio: Lowe's ratio (None or >= 1 disables the test).
        mutual: keep only pairs that are each other's nearest neighbour.
        valid1, valid2: optional ``(..., N)`` / ``(..., M)`` bool; invalid rows never match.

    Returns:
        ``(idx (..., N) int64, dist (..., N) float32)``: for every row of ``d1`` the matched row of ``d2``
        or -1, and the L2 distance (inf where unmatched).
    """
    torch = _torch()
    n, m = d1.shape[-2], d2.shape[-2]
    if n == 0 or m == 0:
        shape = d1.shape[:-1]
        return (torch.full(shape, -1, dtype=torch.long, device=d1.device),
                torch.full(shape, float("inf"), device=d1.device))
    a, b = d1.to(torch.float32), d2.to(torch.float32)
    sq = torch.clamp((a * a).sum(-1)[..., :, None] + (b * b).sum(-1)[..., None, :] - 2.0 * (a @ b.transpose(-1, -2)),
                     min=0.0)
    inf = torch.full_like(sq, float("inf"))
    if valid1 is not None:
        sq = torch.where(valid1[..., :, None], sq, inf)
    if valid2 is not None:
        sq = torch.where(valid2[..., None, :], sq, inf)
    kk = min(2, m)
    best = torch.topk(sq, kk, dim=-1, largest=False)
    idx = best.indices[..., 0]
    dist = torch.sqrt(best.values[..., 0])
    ok = torch.isfinite(dist)
    if kk == 2 and ratio is not None and ratio < 1.0:
        ok = ok & (dist < ratio * torch.sqrt(best.values[..., 1]))
    if mutual:
        back = torch.argmin(sq, dim=-2)  # (..., M): on ties the lowest row keeps the column
        ok = ok & (torch.gather(back, -1, idx) == torch.arange(n, device=d1.device))
    return torch.where(ok, idx, torch.full_like(idx, -1)), torch.where(ok, dist, torch.full_like(dist, float("inf")))
