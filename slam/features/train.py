"""Self-supervised training of the SuperPoint network on homography pairs, with the SiLK objective, and the
held-out evaluation of keypoint extractors on such pairs.

Data. Source images (grayscale uint8 with a usable-pixel mask) come from three places:
``synth`` (frames rendered by :func:`slam.synth.generate`: tube, specular tube, low-contrast tube, room),
``texture`` (procedural mucosa and room textures of :mod:`slam.synth.texture`) and ``skimage`` (sample
images shipped inside scikit-image). Training and held-out images never share a seed (held-out synth and
texture seeds are offset by :data:`HELDOUT_SEED_OFFSET`, held-out scikit-image images are other pictures).
A pair is view A (a crop of a randomly rescaled source) and view B = the source warped by a random
homography ``H_BA`` (A pixel -> B pixel) around A, each view with its own photometric augmentation
(brightness, contrast, gamma, blur, noise, specular blobs, optional CLAHE). Everything random derives from
``(seed, step)``, so a resumed run sees the same batches as an uninterrupted one.

Objective (SiLK, Gleize et al. ICCV 2023, adapted to SuperPoint's 1/8-resolution heads):

- points ``p_i`` on a stride-``grid_stride`` grid in A, their true correspondences ``H_BA p_i`` in B;
  descriptors sampled bilinearly at both (as at inference), similarity ``S = dA dB^T / tau``;
- descriptor loss: ``-(log softmax_rows(S)_ii + log softmax_cols(S)_ii) / 2`` (cycle-consistency
  log-likelihood of the true correspondence, softmax in both directions);
- keypoint loss: binary cross-entropy between the detector's probability of a keypoint in each
  ``grid_stride``-pixel block (sum of the score map over the block) and "matching succeeded there" (the
  mutual nearest neighbour of ``p_i`` is its true correspondence); both directions (A->B, B->A);
- because SuperPoint's descriptors live at 1/8 resolution, matching success says *which block* holds a good
  keypoint but not *which pixel*. ``corner`` (on by default, weight 4) is the cross-entropy of the within-cell
  distribution (softmax over the 64 positions, dustbin excluded) to a sharpened Shi-Tomasi corner response
  of the view: a label-free prior that puts the keypoint on the cell's most corner-like pixel. Optional
  (off by default): ``cov``, 1 - cosine similarity of 8x8 patches of A's within-cell distribution and B's
  warped into A, and ``peak``, 1 - mean over cells of max minus mean of that distribution.
  ``--corner-weight 0`` gives the plain SiLK objective; measured in pilot runs: without a localisation term
  the within-cell distribution stayed flat over the first hundreds of steps, so keypoints landed at random
  pixels of their cell (held-out MMA@3 below that of random weights).

Training runs with batch normalisation after every 3x3 convolution (in a 40-step pilot, held-out MMA@3 0.21
with it against 0.04 without); :func:`slam.features.superpoint.fold_batchnorm` folds it away on export, so the shipped
file has the published layout. On a shared CPU use one torch thread (``threads=1``): with two, the
intra-op thread pool's spinning made steps ~10x slower on an oversubscribed machine.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from slam.errors import ConfigError, DependencyError, InputError

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 1000
SYNTH_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {  # name -> (preset, option overrides)
    "tube": ("tube", {"speed": 0.5}),
    "tube_specular": ("tube_specular", {"circular_fov": False, "speed": 0.5}),
    "tube_lowcontrast": ("tube_lowcontrast", {"circular_fov": False, "speed": 0.5}),
    "room": ("room", {"speed": 0.3}),
}
ENDOSCOPY_VARIANTS = ("tube", "tube_specular", "tube_lowcontrast")
SKIMAGE_TRAIN = ("astronaut", "brick", "camera", "chelsea", "coins", "grass", "gravel", "moon", "page",
                 "immunohistochemistry", "hubble_deep_field", "text", "clock")
SKIMAGE_HELDOUT = ("coffee", "rocket", "retina", "cell")
SOURCES = ("synth", "texture", "skimage")


# ---------------------------------------------------------------------------------------------- images
@dataclass
class SourceImage:
    """One training/evaluation image: ``gray (H, W)`` uint8, ``mask (H, W)`` bool usable pixels, a tag."""

    gray: np.ndarray
    mask: np.ndarray
    tag: str


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.dtype != np.uint8:
        img = np.clip(img.astype(np.float64) / max(float(img.max()), 1e-9) * 255.0, 0, 255).astype(np.uint8)
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY)
    return np.ascontiguousarray(img)


def synth_images(variant: str, seed: int, frames: int, cache_dir: Path, size: tuple[int, int] = (640, 480)
                 ) -> list[SourceImage]:
    """Frames of a synthetic sequence (rendered once into ``cache_dir``, then read back)."""
    import cv2

    if variant not in SYNTH_VARIANTS:
        raise ConfigError(f"unknown synth variant {variant!r}; known: {', '.join(SYNTH_VARIANTS)}")
    preset, options = SYNTH_VARIANTS[variant]
    folder = Path(cache_dir) / f"{variant}_s{seed}_f{frames}_{size[0]}x{size[1]}"
    if not (folder / "synth.json").is_file() or len(list((folder / "rgb").glob("*.png"))) < frames:
        from slam.synth import generate

        log.info("rendering %s seed %d (%d frames) into %s", variant, seed, frames, folder)
        generate(preset, folder, frames=frames, seed=seed, size=size, overwrite=True, **options)
    mask = None
    if (folder / "mask.png").is_file():
        mask = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    out = []
    for path in sorted((folder / "rgb").glob("*.png"))[:frames]:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        m = mask if mask is not None else np.ones(gray.shape, bool)
        out.append(SourceImage(gray, m, f"synth:{variant}"))
    return out


def texture_images(seed: int, count: int, size: int = 512) -> list[SourceImage]:
    """Procedural mucosa and room-wall textures (alternating), ``size`` x ``size``."""
    from slam.synth.texture import mucosa_texture, room_texture

    out = []
    for i in range(count):
        rng = np.random.default_rng([seed, 7, i])
        texel = float(rng.uniform(0.002, 0.008))
        if i % 2 == 0:
            tex = mucosa_texture(rng, (size, size), texel, contrast=float(rng.uniform(0.6, 2.0)),
                                 vessel_density=float(rng.uniform(0.5, 3.0)), hue=float(rng.uniform(-1, 1)))
            tag = "texture:mucosa"
        else:
            tex = room_texture(rng, (size, size), texel, "wall" if i % 4 == 1 else "floor")
            tag = "texture:room"
        bgr = tex[..., :3]
        gray = _gray(bgr[..., ::-1])
        out.append(SourceImage(gray, np.ones(gray.shape, bool), tag))
    return out


def skimage_images(names: tuple[str, ...]) -> list[SourceImage]:
    """Sample images shipped inside scikit-image (no download)."""
    try:
        import skimage.data as data
    except ModuleNotFoundError as exc:
        raise DependencyError("training source 'skimage' needs scikit-image: `pip install scikit-image`, "
                              "or leave 'skimage' out of --sources") from exc
    out = []
    for name in names:
        try:
            img = getattr(data, name)()
        except Exception as exc:  # an image that would need a download
            log.warning("skipping scikit-image sample %r (%s)", name, exc)
            continue
        gray = _gray(img)
        out.append(SourceImage(gray, np.ones(gray.shape, bool), f"skimage:{name}"))
    return out


def build_image_pool(sources: tuple[str, ...], seed: int, cache_dir: Path, heldout: bool = False,
                     synth_seeds: int = 3, synth_frames: int = 3, textures: int = 24) -> list[SourceImage]:
    """The training (or held-out, disjoint) source images of the named ``sources``."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise ConfigError(f"unknown training source(s) {', '.join(unknown)}; choose from {', '.join(SOURCES)}")
    base = seed + (HELDOUT_SEED_OFFSET if heldout else 0)
    pool: list[SourceImage] = []
    if "synth" in sources:
        for variant in SYNTH_VARIANTS:
            for k in range(synth_seeds):
                pool += synth_images(variant, base + k, synth_frames, cache_dir)
    if "texture" in sources:
        pool += texture_images(base, textures)
    if "skimage" in sources:
        pool += skimage_images(SKIMAGE_HELDOUT if heldout else SKIMAGE_TRAIN)
    if not pool:
        raise InputError("no training images: --sources selected nothing")
    return pool


# ---------------------------------------------------------------------------------------------- pairs
@dataclass
class WarpRange:
    """Random homography ranges: rotation (deg), log-uniform scale, perspective and shift (fractions of
    the view size)."""

    rotation_deg: float = 25.0
    scale: tuple[float, float] = (0.75, 1.33)
    perspective: float = 0.1
    shift: float = 0.1


def random_homography(rng: np.random.Generator, w: int, h: int, warp: WarpRange) -> np.ndarray:
    """``(3, 3)`` homography mapping view-A pixels to view-B pixels (both ``w`` x ``h``), about the centre."""
    import cv2

    c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    corners = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], np.float64)
    ang = math.radians(rng.uniform(-warp.rotation_deg, warp.rotation_deg))
    s = math.exp(rng.uniform(math.log(warp.scale[0]), math.log(warp.scale[1])))
    rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) * s
    size = np.array([w, h], np.float64)
    dst = (corners - c) @ rot.T + c
    dst += rng.uniform(-warp.perspective, warp.perspective, (4, 2)) * size
    dst += rng.uniform(-warp.shift, warp.shift, 2) * size
    return cv2.getPerspectiveTransform(corners.astype(np.float32), dst.astype(np.float32)).astype(np.float64)


@dataclass
class Pair:
    """Two views related by ``H_ba`` (A pixel -> B pixel); ``mask_a/mask_b`` (H, W) bool usable pixels."""

    img_a: np.ndarray
    img_b: np.ndarray
    H_ba: np.ndarray
    mask_a: np.ndarray
    mask_b: np.ndarray
    tag: str


def make_pair(src: SourceImage, rng: np.random.Generator, size: tuple[int, int], warp: WarpRange,
              rescale: tuple[float, float] = (0.4, 1.0)) -> Pair:
    """View A: a ``size`` (W, H) crop of ``src`` rescaled by a random factor; view B: the same content seen
    through a random homography. Pixels that B takes from outside the source are masked out."""
    import cv2

    w, h = size
    sh, sw = src.gray.shape
    f = max(rng.uniform(*rescale), w / sw, h / sh)  # the crop must fit
    sw2, sh2 = max(w, int(round(sw * f))), max(h, int(round(sh * f)))
    if (sw2, sh2) != (sw, sh):
        interp = cv2.INTER_AREA if sw2 < sw else cv2.INTER_LINEAR
        small = cv2.resize(src.gray, (sw2, sh2), interpolation=interp)
        mask_small = cv2.resize(src.mask.astype(np.uint8), (sw2, sh2), interpolation=cv2.INTER_NEAREST)
    else:
        small, mask_small = src.gray, src.mask.astype(np.uint8)
    ox = int(rng.integers(0, sw2 - w + 1))
    oy = int(rng.integers(0, sh2 - h + 1))
    img_a = np.ascontiguousarray(small[oy:oy + h, ox:ox + w])
    mask_a = mask_small[oy:oy + h, ox:ox + w] > 0
    H_ba = random_homography(rng, w, h, warp)
    H_b_small = H_ba @ np.array([[1.0, 0, -ox], [0, 1.0, -oy], [0, 0, 1.0]])  # rescaled source -> B
    img_b = cv2.warpPerspective(small, H_b_small, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    mask_b = cv2.warpPerspective(mask_small, H_b_small, (w, h), flags=cv2.INTER_NEAREST,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return Pair(img_a, img_b, H_ba, mask_a, mask_b, src.tag)


def augment(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Photometric augmentation of a ``(H, W)`` uint8 view: brightness, contrast, gamma, blur, noise,
    specular blobs (bright saturated ellipses), CLAHE. ``strength`` 0 returns the image unchanged."""
    import cv2

    if strength <= 0:
        return img
    x = img.astype(np.float32) / 255.0
    h, w = x.shape
    x = np.clip(x, 0, 1) ** math.exp(rng.uniform(-0.4, 0.4) * strength)  # gamma
    mean = float(x.mean())
    x = (x - mean) * math.exp(rng.uniform(-0.5, 0.3) * strength) + mean  # contrast
    x = x * math.exp(rng.uniform(-0.6, 0.3) * strength) + rng.uniform(-0.08, 0.08) * strength  # brightness
    if rng.random() < 0.4 * strength:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, 1.5))
    if rng.random() < 0.5 * strength:
        n = int(rng.integers(1, 5))
        blobs = np.zeros((h, w), np.float32)
        for _ in range(n):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = (int(rng.integers(2, max(3, w // 12))), int(rng.integers(2, max(3, h // 12))))
            cv2.ellipse(blobs, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1, cv2.LINE_AA)
        blobs = cv2.GaussianBlur(blobs, (0, 0), rng.uniform(0.8, 2.5))
        x = np.maximum(x, np.clip(blobs * 1.2, 0, 1))
    x = x + rng.normal(0, rng.uniform(0, 0.03) * strength, x.shape).astype(np.float32)  # sensor noise
    out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        from slam.features.photometric import normalize_luminance

        out = normalize_luminance(out, 2.0, 8)
    return out


def sample_batch(pool: list[SourceImage], rng: np.random.Generator, batch: int, crop: int, warp: WarpRange,
                 augment_strength: float = 1.0) -> list[Pair]:
    """``batch`` augmented pairs of ``crop`` x ``crop`` views from random pool images."""
    pairs = []
    for _ in range(batch):
        src = pool[int(rng.integers(len(pool)))]
        p = make_pair(src, rng, (crop, crop), warp)
        pairs.append(dataclasses.replace(p, img_a=augment(p.img_a, rng, augment_strength),
                                         img_b=augment(p.img_b, rng, augment_strength)))
    return pairs


# ---------------------------------------------------------------------------------------------- loss
@dataclass
class LossConfig:
    """SiLK loss settings: temperature ``tau``, grid stride (px), weights of the keypoint BCE, of the
    covariance / peakiness terms and of the within-cell corner prior (``corner_beta``: its sharpness)."""

    tau: float = 0.1
    grid_stride: int = 4
    keypoint_weight: float = 1.0
    cov_weight: float = 0.0
    peak_weight: float = 0.0
    corner_weight: float = 4.0
    corner_beta: float = 8.0


def _warp_points(H, xy):
    """``(B, 3, 3)`` homographies applied to ``(B, N, 2)`` points."""
    torch = __import__("torch")
    ones = torch.ones_like(xy[..., :1])
    p = torch.cat([xy, ones], dim=-1) @ H.transpose(1, 2)
    return p[..., :2] / p[..., 2:3].clamp(min=1e-9)


def _lookup(mask, xy):
    """``(B, H, W)`` bool mask at the nearest pixel of ``(B, N, 2)`` points; False outside."""
    torch = __import__("torch")
    b, h, w = mask.shape
    ij = torch.round(xy).long()
    inside = (ij[..., 0] >= 0) & (ij[..., 0] < w) & (ij[..., 1] >= 0) & (ij[..., 1] < h)
    x = ij[..., 0].clamp(0, w - 1)
    y = ij[..., 1].clamp(0, h - 1)
    bi = torch.arange(b, device=mask.device)[:, None].expand_as(x)
    return inside & mask[bi, y, x]


def _direction_loss(logits_a, desc_a, desc_b, H_ba, mask_a, mask_b, cfg: LossConfig):
    """SiLK descriptor and keypoint losses for grid points of A matched into B; returns
    (desc_loss, kp_loss, success_rate, n_points)."""
    import torch

    from slam.features.superpoint import logits_to_scores, sample_descriptors

    F = torch.nn.functional
    b, _, hc, wc = logits_a.shape
    h, w = hc * 8, wc * 8
    g = cfg.grid_stride
    ys, xs = torch.meshgrid(torch.arange(h // g, device=logits_a.device), torch.arange(w // g, device=logits_a.device),
                            indexing="ij")
    grid = torch.stack([xs, ys], -1).reshape(-1, 2).float() * g + (g - 1) / 2.0  # block centres
    grid = grid[None].expand(b, -1, -1)
    warped = _warp_points(H_ba, grid)
    margin = 2.0
    valid = _lookup(mask_a, grid) & _lookup(mask_b, warped)
    valid &= (warped[..., 0] >= margin) & (warped[..., 0] <= w - 1 - margin)
    valid &= (warped[..., 1] >= margin) & (warped[..., 1] <= h - 1 - margin)
    da = sample_descriptors(desc_a, grid)
    db = sample_descriptors(desc_b, warped)
    block_prob = F.avg_pool2d(logits_to_scores(logits_a)[:, None], g)[:, 0].reshape(b, -1) * (g * g)
    block_prob = block_prob.clamp(1e-6, 1 - 1e-6)
    d_losses, k_losses, successes, n_total = [], [], [], 0
    for i in range(b):
        v = torch.nonzero(valid[i], as_tuple=True)[0]
        if len(v) < 2:
            continue
        sim = da[i, v] @ db[i, v].T / cfg.tau
        diag = torch.arange(len(v), device=sim.device)
        ll = 0.5 * (torch.log_softmax(sim, dim=1)[diag, diag] + torch.log_softmax(sim, dim=0)[diag, diag])
        d_losses.append(-ll.sum())
        with torch.no_grad():
            success = ((sim.argmax(dim=1) == diag) & (sim.argmax(dim=0) == diag)).float()
        k_losses.append(F.binary_cross_entropy(block_prob[i, v], success, reduction="sum"))
        successes.append(success.sum())
        n_total += len(v)
    if n_total == 0:
        zero = logits_a.sum() * 0.0
        return zero, zero, 0.0, 0
    n = float(n_total)
    return (torch.stack(d_losses).sum() / n, torch.stack(k_losses).sum() / n,
            float(torch.stack(successes).sum()) / n, n_total)


def _cell_distribution(logits):
    """Within-cell keypoint distribution (softmax over the 64 positions, dustbin excluded), ``(B, H, W)``."""
    import torch

    return torch.nn.functional.pixel_shuffle(torch.softmax(logits[:, :-1].float(), dim=1), 8)[:, 0]


def _covariance_losses(logits_a, logits_b, H_ba, mask_a, mask_b):
    """(cov, peak): 1 - mean cosine of 8x8 patches (stride 4) of A's within-cell distribution and B's warped
    into A; 1 - mean over cells of (max - mean) of the within-cell distribution, both views, rescaled."""
    import torch

    F = torch.nn.functional
    qa, qb = _cell_distribution(logits_a), _cell_distribution(logits_b)
    b, h, w = qa.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=qa.device), torch.arange(w, device=qa.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).reshape(1, -1, 2).float().expand(b, -1, -1)
    warped = _warp_points(H_ba, pix)
    grid = torch.stack([2 * warped[..., 0] / (w - 1) - 1, 2 * warped[..., 1] / (h - 1) - 1], -1).reshape(b, h, w, 2)
    qb_in_a = F.grid_sample(qb[:, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    valid = (_lookup(mask_a, pix) & _lookup(mask_b, warped)).reshape(b, 1, h, w).float()
    pa = F.unfold(qa[:, None], 8, stride=4)
    pb = F.unfold(qb_in_a, 8, stride=4)
    pv = F.unfold(valid, 8, stride=4).min(dim=1).values  # (B, L) patch fully valid
    cos = (pa * pb).sum(1) / (pa.norm(dim=1) * pb.norm(dim=1) + 1e-8)
    cov = 1.0 - (cos * pv).sum() / pv.sum().clamp(min=1.0)
    peaks = []
    for q in (qa, qb):
        cells = F.unfold(q[:, None], 8, stride=8)  # (B, 64, cells), each column sums to 1
        peaks.append((cells.max(dim=1).values - 1.0 / 64) / (1.0 - 1.0 / 64))
    peak = 1.0 - torch.cat(peaks).mean()
    return cov, peak


def corner_targets(images: np.ndarray, beta: float) -> np.ndarray:
    """Within-cell target distributions ``(B, 64, H/8, W/8)`` from the minimum-eigenvalue corner response
    (Shi-Tomasi, OpenCV) of ``(B, H, W)`` uint8 views: per 8x8 cell, softmax of ``beta`` x response / cell max,
    channel order as SuperPoint's head (row-major within the cell)."""
    import cv2

    b, h, w = images.shape
    out = np.empty((b, 64, h // 8, w // 8), np.float32)
    for i, img in enumerate(images):
        r = cv2.cornerMinEigenVal(img.astype(np.float32) / 255.0, 3, 3)
        cells = r.reshape(h // 8, 8, w // 8, 8).transpose(1, 3, 0, 2).reshape(64, h // 8, w // 8)
        z = beta * cells / np.maximum(cells.max(axis=0, keepdims=True), 1e-12)
        z = np.exp(z - z.max(axis=0, keepdims=True))
        out[i] = z / z.sum(axis=0, keepdims=True)
    return out


def silk_loss(net, pairs: list[Pair], cfg: LossConfig, device) -> tuple[Any, dict[str, float]]:
    """The total loss (a scalar tensor) of a batch of pairs and its parts (floats)."""
    import torch

    imgs = np.stack([p.img_a for p in pairs] + [p.img_b for p in pairs])
    x = torch.from_numpy(imgs).to(device)[:, None].float() / 255.0
    logits, desc = net(x)
    b = len(pairs)
    la, lb, da, db = logits[:b], logits[b:], desc[:b], desc[b:]
    H_ba = torch.from_numpy(np.stack([p.H_ba for p in pairs])).to(device).float()
    H_ab = torch.linalg.inv(H_ba)
    ma = torch.from_numpy(np.stack([p.mask_a for p in pairs])).to(device)
    mb = torch.from_numpy(np.stack([p.mask_b for p in pairs])).to(device)
    d1, k1, s1, n1 = _direction_loss(la, da, db, H_ba, ma, mb, cfg)
    d2, k2, s2, n2 = _direction_loss(lb, db, da, H_ab, mb, ma, cfg)
    desc_loss, kp_loss = 0.5 * (d1 + d2), 0.5 * (k1 + k2)
    total = desc_loss + cfg.keypoint_weight * kp_loss
    parts = {"desc": desc_loss.item(), "kp": kp_loss.item(),
             "success": (s1 * n1 + s2 * n2) / max(n1 + n2, 1)}
    if cfg.cov_weight > 0 or cfg.peak_weight > 0:
        cov, peak = _covariance_losses(la, lb, H_ba, ma, mb)
        total = total + cfg.cov_weight * cov + cfg.peak_weight * peak
        parts.update(cov=cov.item(), peak=peak.item())
    if cfg.corner_weight > 0:
        target = torch.from_numpy(corner_targets(imgs, cfg.corner_beta)).to(device)
        logq = torch.log_softmax(logits[:, :-1].float(), dim=1)
        corner = -(target * logq).sum(dim=1).mean()
        total = total + cfg.corner_weight * corner
        parts["corner"] = corner.item()
    parts["loss"] = total.item()
    return total, parts


# ---------------------------------------------------------------------------------------------- evaluation
def heldout_pairs(pool: list[SourceImage], count: int, seed: int, size: tuple[int, int], warp: WarpRange
                  ) -> list[Pair]:
    """``count`` deterministic pairs (no augmentation beyond the warp) cycling over ``pool``."""
    pairs = []
    for i in range(count):
        rng = np.random.default_rng([seed, 99, i])
        pairs.append(make_pair(pool[i % len(pool)], rng, size, warp, rescale=(0.5, 1.0)))
    return pairs


def evaluate_pair(extractor, pair: Pair, ratio: float | None, mutual: bool, thresholds=(1.0, 3.0, 5.0),
                  rep_px: float = 3.0, matcher: Callable | None = None) -> dict[str, float]:
    """Matching accuracy and repeatability of ``extractor`` on one pair.

    Returns ``mma@T`` (share of the mutual/ratio matches whose reprojection error ``|H_ba a - b|`` is at
    most T px; 0 without matches), ``correct`` (matches within 3 px), ``matches``, ``keypoints`` (mean over
    the views) and ``repeatability`` (share of keypoints, in the part seen by both views, with a keypoint of
    the other view within ``rep_px`` after warping; SuperPoint's definition).
    """
    import cv2

    from slam.features.matching import match_descriptors

    fa = extractor.extract(pair.img_a, pair.mask_a.astype(np.uint8))
    fb = extractor.extract(pair.img_b, pair.mask_b.astype(np.uint8))
    h, w = pair.img_a.shape
    kp_a = fa.keypoints.astype(np.float64).reshape(-1, 2)
    kp_b = fb.keypoints.astype(np.float64).reshape(-1, 2)
    a_in_b = cv2.perspectiveTransform(kp_a.reshape(-1, 1, 2), pair.H_ba).reshape(-1, 2) if len(kp_a) else kp_a
    b_in_a = cv2.perspectiveTransform(kp_b.reshape(-1, 1, 2), np.linalg.inv(pair.H_ba)).reshape(-1, 2) \
        if len(kp_b) else kp_b

    def seen(xy, mask):
        ij = np.rint(xy).astype(np.int64)
        ok = (ij[:, 0] >= 0) & (ij[:, 0] < w) & (ij[:, 1] >= 0) & (ij[:, 1] < h)
        ok[ok] = mask[ij[ok, 1], ij[ok, 0]]
        return ok

    va, vb = seen(a_in_b, pair.mask_b), seen(b_in_a, pair.mask_a)
    rep_hits, rep_total = 0, int(va.sum() + vb.sum())
    if va.any() and vb.any():
        from scipy.spatial import cKDTree

        rep_hits += int((cKDTree(kp_b[vb]).query(a_in_b[va])[0] <= rep_px).sum())
        rep_hits += int((cKDTree(kp_a[va]).query(b_in_a[vb])[0] <= rep_px).sum())
    if matcher is not None:
        m = matcher(fa, fb)
    else:
        m = match_descriptors(fa.descriptors, fb.descriptors, fa.binary, ratio=ratio, mutual=mutual)
    out: dict[str, float] = {"keypoints": 0.5 * (len(fa) + len(fb)), "matches": float(len(m)),
                             "repeatability": rep_hits / rep_total if rep_total else 0.0}
    err = np.linalg.norm(a_in_b[m[:, 0]] - kp_b[m[:, 1]], axis=1) if len(m) else np.zeros(0)
    for t in thresholds:
        out[f"mma@{t:g}"] = float((err <= t).mean()) if len(err) else 0.0
    out["correct"] = float((err <= 3.0).sum())
    return out


def evaluate_extractor(extractor, pairs: list[Pair], ratio: float | None = 0.8, mutual: bool = True,
                       matcher: Callable | None = None) -> dict[str, float]:
    """Means of :func:`evaluate_pair` over ``pairs`` (plus ``ms_per_image``: extraction+matching time)."""
    rows = []
    t0 = time.perf_counter()
    for p in pairs:
        rows.append(evaluate_pair(extractor, p, ratio, mutual, matcher=matcher))
    elapsed = time.perf_counter() - t0
    out = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}
    out["ms_per_image"] = 1000.0 * elapsed / max(2 * len(pairs), 1)
    return out


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    """Settings of one training run (all of them are recorded in the checkpoint)."""

    steps: int = 2000
    batch: int = 4
    crop: int = 96
    lr: float = 1e-3
    warmup: int = 20
    seed: int = 0
    widths: tuple[int, int, int, int, int] = (64, 64, 128, 128, 256)
    sources: tuple[str, ...] = SOURCES
    synth_seeds: int = 2
    synth_frames: int = 3
    textures: int = 24
    eval_every: int = 250
    eval_pairs: int = 12
    eval_size: int = 192
    checkpoint_every: int = 50
    threads: int = 1
    device: str = "cpu"
    augment: float = 1.0
    batchnorm: bool = True  # train with batch norm, folded into the convolutions on export
    loss: LossConfig = field(default_factory=LossConfig)
    warp: WarpRange = field(default_factory=WarpRange)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to 10 % of ``lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def export_weights(net, path: str | Path, meta: dict[str, Any]) -> Path:
    """Write ``{"state_dict": fp16 Magic Leap-layout tensors, "meta": ...}`` to ``path`` (atomically); batch
    normalisations are folded into the convolutions first."""
    import torch

    from slam.features.superpoint import fold_batchnorm

    net = fold_batchnorm(net)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).clone() for k, v in net.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"state_dict": state, "meta": meta}, tmp)
    tmp.replace(path)
    return path


def train(cfg: TrainConfig, work_dir: str | Path, out: str | Path | None = None, resume: bool = True,
          init_weights: str | Path | None = None, progress: Callable[[dict[str, Any]], None] | None = None,
          stop_after: int | None = None) -> dict[str, Any]:
    """Train (or resume) a SuperPoint network; returns the log of the run.

    ``work_dir`` holds ``checkpoint.pt`` (network, optimiser, step; written every ``checkpoint_every``
    steps), ``log.jsonl`` (one line per step: loss parts, learning rate; eval lines with held-out
    ``mma@1/3/5``, ``repeatability``, ``correct``) and ``data/`` (rendered synthetic frames). ``out`` receives
    the final fp16 weights. With ``resume`` an existing checkpoint continues the run; batches depend only on
    (seed, step), so the result matches an uninterrupted run. ``stop_after`` ends this call after that many
    steps (checkpoint written, no export): a long run in slices.
    """
    from slam.features.superpoint import SuperPointExtractor, build_network, fold_batchnorm, import_torch, load_network

    torch = import_torch()
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if cfg.crop % 8 or cfg.crop < 32 or cfg.crop % cfg.loss.grid_stride:
        raise ConfigError(f"crop must be a multiple of 8 and of grid_stride, >= 32; got {cfg.crop}")
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    net = build_network(tuple(cfg.widths), batchnorm=cfg.batchnorm)
    if init_weights is not None:
        net.load_state_dict(load_network(init_weights).state_dict(), strict=False)
    net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    step = 0
    ckpt_path = work / "checkpoint.pt"
    log_path = work / "log.jsonl"
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("config", {}).get("widths") and tuple(ckpt["config"]["widths"]) != tuple(cfg.widths):
            raise ConfigError(f"{ckpt_path}: checkpoint has widths {ckpt['config']['widths']}, run asks for "
                              f"{cfg.widths}; use another --work folder")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        step = int(ckpt["step"])
        log.info("resuming from %s at step %d", ckpt_path, step)
    elif log_path.exists():
        log_path.unlink()
    cache = work / "data"
    t_pool = time.perf_counter()
    pool = build_image_pool(tuple(cfg.sources), cfg.seed, cache, False, cfg.synth_seeds, cfg.synth_frames,
                            cfg.textures)
    held_pool = build_image_pool(tuple(s for s in cfg.sources if s != "skimage") or tuple(cfg.sources),
                                 cfg.seed, cache, True, max(1, cfg.synth_seeds // 2), 2, max(2, cfg.textures // 4))
    held = heldout_pairs(held_pool, cfg.eval_pairs, cfg.seed, (cfg.eval_size, cfg.eval_size), cfg.warp)
    log.info("%d training images, %d held-out pairs (%.1f s)", len(pool), len(held), time.perf_counter() - t_pool)
    history: list[dict[str, Any]] = []

    def write(entry: dict[str, Any]) -> None:
        history.append(entry)
        with open(log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
        if progress is not None:
            progress(entry)

    def evaluate() -> dict[str, float]:
        from slam.config import FeatureConfig

        net.eval()
        ex = SuperPointExtractor(FeatureConfig(type="superpoint", num_features=300), device=str(device),
                                 network=fold_batchnorm(net))
        res = evaluate_extractor(ex, held)
        net.train()
        return res

    def save() -> None:
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "config": cfg.to_dict()}, tmp)
        tmp.replace(ckpt_path)

    net.train()
    t_start = time.perf_counter()
    last = cfg.steps if stop_after is None else min(cfg.steps, step + int(stop_after))
    while step < last:
        rng = np.random.default_rng([cfg.seed, 1, step])
        pairs = sample_batch(pool, rng, cfg.batch, cfg.crop, cfg.warp, cfg.augment)
        lr = _lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, parts = silk_loss(net, pairs, cfg.loss, device)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        write({"step": step, "lr": lr, **{k: round(v, 5) for k, v in parts.items()},
               "elapsed_s": round(time.perf_counter() - t_start, 1)})
        if step % cfg.checkpoint_every == 0 or step == last:
            save()
        if cfg.eval_every > 0 and (step % cfg.eval_every == 0 or step == cfg.steps):
            res = evaluate()
            write({"step": step, "eval": {k: round(v, 4) for k, v in res.items()}})
            log.info("step %d held-out: mma@3 %.3f rep %.3f correct %.1f", step, res["mma@3"],
                     res["repeatability"], res["correct"])
    if out is not None and step >= cfg.steps:
        export_weights(net, out, {"trained_by": "slam train-features", "steps": step, "config": cfg.to_dict(),
                                  "final_eval": next((h["eval"] for h in reversed(history) if "eval" in h), None)})
        log.info("weights written to %s", out)
    return {"steps": step, "history": history}
