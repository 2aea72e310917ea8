"""SuperPoint keypoints and descriptors (torch), with our self-supervised weights or Magic Leap's checkpoints.

Network (DeTone et al., "SuperPoint", CVPR-W 2018, the published layout, no batch norm):

- shared VGG-style encoder on the ``(B, 1, H, W)`` grayscale image in [0, 1]: ``conv1a/b`` (64) - pool -
  ``conv2a/b`` (64) - pool - ``conv3a/b`` (128) - pool - ``conv4a/b`` (128), 3x3 convolutions with ReLU,
  giving ``(B, 128, H/8, W/8)``;
- keypoint head ``convPa`` (3x3, 256) - ``convPb`` (1x1, 65): per 8x8 cell, logits of the 64 pixel positions
  and a "no keypoint" dustbin; softmax over the 65, drop the dustbin, pixel shuffle to a ``(B, H, W)`` score
  map;
- descriptor head ``convDa`` (3x3, 256) - ``convDb`` (1x1, 256): a ``(B, 256, H/8, W/8)`` descriptor map,
  L2-normalised per cell, sampled bilinearly at keypoints and normalised again.

State-dict keys are Magic Leap's (``conv1a.weight`` ... ``convDb.bias``), so their ``superpoint_v1.pth`` loads
as is (``--weights FILE`` / ``features.weights``). Our shipped weights (``weights/superpoint_slam.pt``) were
trained by ``slam train-features`` (see :mod:`slam.features.train`).

Detection: score map -> zero outside the (eroded) mask and within ``border_px`` of the image edge -> non-
maximum suppression (max pooling, radius ``nms_radius``) -> scores above ``detection_threshold`` -> the
``cfg.num_features`` strongest spread over the ``grid_cols`` x ``grid_rows`` grid. The device follows the
module (``device`` argument); on CUDA the network runs in fp16 autocast (``half=True``), scores, NMS and
descriptor sampling stay on the GPU and only the kept keypoints come back to the host.

Pixel convention: pixel centres at integer coordinates. Descriptor cell ``(i, j)`` covers pixels
``[8j, 8j + 8) x [8i, 8i + 8)``; its centre is at ``x = 8j + 3.5``, ``y = 8i + 3.5``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from slam.config import FeatureConfig
from slam.errors import ConfigError, DependencyError, InputError
from slam.features.base import FeatureExtractor, Features
from slam.features.grid import check_config, check_gray, prepare_mask, select_grid

log = logging.getLogger(__name__)

CELL = 8  # encoder stride
DESCRIPTOR_DIM = 256
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_WEIGHTS = WEIGHTS_DIR / "superpoint_slam.pt"
LAYER_NAMES = ("conv1a", "conv1b", "conv2a", "conv2b", "conv3a", "conv3b", "conv4a", "conv4b",
               "convPa", "convPb", "convDa", "convDb")
FOLDABLE = ("1a", "1b", "2a", "2b", "3a", "3b", "4a", "4b", "Pa", "Da")  # 3x3 convs followed by a ReLU


def import_torch():
    """The torch module, or DependencyError with what to do."""
    try:
        import torch
    except ModuleNotFoundError as exc:
        raise DependencyError(
            "SuperPoint needs PyTorch, which is not installed: `pip install torch` (CPU or CUDA build), "
            "or use features.type sift or orb"
        ) from exc
    return torch


def build_network(widths: tuple[int, int, int, int, int] = (64, 64, 128, 128, 256), batchnorm: bool = False):
    """A SuperPoint ``torch.nn.Module``; ``widths`` = (c1, c2, c3, c4, c5) channels, the published
    (64, 64, 128, 128, 256) by default (smaller widths give a fast model for tests).

    ``batchnorm`` adds a batch normalisation after every 3x3 convolution (``bn1a`` ... ``bnDa``) for
    training; :func:`fold_batchnorm` folds them into the convolutions, giving the published layout."""
    torch = import_torch()
    nn = torch.nn
    F = torch.nn.functional

    class SuperPointNet(nn.Module):
        """``forward(image (B, 1, H, W), H and W multiples of 8) -> (logits (B, 65, H/8, W/8),
        descriptors (B, 256, H/8, W/8) L2-normalised over channels)``."""

        def __init__(self, c1: int, c2: int, c3: int, c4: int, c5: int) -> None:
            super().__init__()
            self.widths = (c1, c2, c3, c4, c5)
            self.batchnorm = batchnorm
            self.conv1a = nn.Conv2d(1, c1, 3, padding=1)
            self.conv1b = nn.Conv2d(c1, c1, 3, padding=1)
            self.conv2a = nn.Conv2d(c1, c2, 3, padding=1)
            self.conv2b = nn.Conv2d(c2, c2, 3, padding=1)
            self.conv3a = nn.Conv2d(c2, c3, 3, padding=1)
            self.conv3b = nn.Conv2d(c3, c3, 3, padding=1)
            self.conv4a = nn.Conv2d(c3, c4, 3, padding=1)
            self.conv4b = nn.Conv2d(c4, c4, 3, padding=1)
            self.convPa = nn.Conv2d(c4, c5, 3, padding=1)
            self.convPb = nn.Conv2d(c5, CELL * CELL + 1, 1)
            self.convDa = nn.Conv2d(c4, c5, 3, padding=1)
            self.convDb = nn.Conv2d(c5, DESCRIPTOR_DIM, 1)
            if batchnorm:
                for name in FOLDABLE:
                    conv = getattr(self, "conv" + name)
                    setattr(self, "bn" + name, nn.BatchNorm2d(conv.out_channels))

        def _c(self, name: str, x):
            x = getattr(self, "conv" + name)(x)
            if self.batchnorm:
                x = getattr(self, "bn" + name)(x)
            return F.relu(x)

        def forward(self, x):
            x = self._c("1a", x)
            x = F.max_pool2d(self._c("1b", x), 2)
            x = self._c("2a", x)
            x = F.max_pool2d(self._c("2b", x), 2)
            x = self._c("3a", x)
            x = F.max_pool2d(self._c("3b", x), 2)
            x = self._c("4a", x)
            x = self._c("4b", x)
            logits = self.convPb(self._c("Pa", x))
            desc = self.convDb(self._c("Da", x))
            return logits, F.normalize(desc.float(), dim=1)

    return SuperPointNet(*widths)


def fold_batchnorm(net):
    """A plain (published-layout) copy of ``net`` with its batch normalisations (eval statistics) folded
    into the preceding convolutions: ``W' = W g / sqrt(v + eps)``, ``b' = (b - m) g / sqrt(v + eps) + beta``."""
    torch = import_torch()
    plain = build_network(net.widths)
    state = {k: v.detach().clone() for k, v in net.state_dict().items() if k.split(".")[0] in LAYER_NAMES}
    if getattr(net, "batchnorm", False):
        for name in FOLDABLE:
            bn = getattr(net, "bn" + name)
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            state[f"conv{name}.weight"] = state[f"conv{name}.weight"] * scale[:, None, None, None]
            state[f"conv{name}.bias"] = (state[f"conv{name}.bias"] - bn.running_mean) * scale + bn.bias.detach()
    plain.load_state_dict(state)
    return plain.to(next(net.parameters()).device).eval()


# ---------------------------------------------------------------------------------------------- weights
def _widths_from_state(state: dict[str, Any]) -> tuple[int, int, int, int, int]:
    return (int(state["conv1a.weight"].shape[0]), int(state["conv2a.weight"].shape[0]),
            int(state["conv3a.weight"].shape[0]), int(state["conv4a.weight"].shape[0]),
            int(state["convPa.weight"].shape[0]))


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """The Magic Leap-layout state dict stored in ``path``.

    Accepts a bare state dict (Magic Leap's ``superpoint_v1.pth``), our checkpoints (``{"state_dict": ...}``)
    and keys prefixed by ``module.`` (DataParallel). Raises InputError naming the file when it is missing,
    unreadable or lacks SuperPoint's keys.
    """
    torch = import_torch()
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: SuperPoint weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise InputError(f"{path}: cannot read SuperPoint weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a state dict, got {type(obj).__name__}")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}
    missing = [f"{n}.{p}" for n in LAYER_NAMES for p in ("weight", "bias") if f"{n}.{p}" not in state]
    if missing:
        raise InputError(f"{path}: not a SuperPoint checkpoint, missing keys {', '.join(missing[:6])}"
                         + (" ..." if len(missing) > 6 else ""))
    return state


def load_network(path: str | Path | None = None, device: str = "cpu"):
    """The network with the weights of ``path`` (None: the shipped weights), in eval mode on ``device``."""
    torch = import_torch()
    path = SHIPPED_WEIGHTS if path is None else Path(path)
    state = read_state_dict(path)
    net = build_network(_widths_from_state(state))
    state = {k: v.float() for k, v in state.items() if k.split(".")[0] in LAYER_NAMES}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(f"{path}: SuperPoint weights do not fit the network ({exc})") from exc
    return net.to(torch.device(device)).eval()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; ConfigError for ``cuda`` without a GPU."""
    torch = import_torch()
    device = str(device).strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but torch sees no CUDA GPU; use device cpu or auto")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ConfigError(f"device {device!r} is unknown; choose auto, cpu or cuda")
    return device


# ---------------------------------------------------------------------------------------------- tensor ops
def pad_to_cell(images):
    """``(B, 1, H, W)`` padded (replicate) at the bottom/right to multiples of 8."""
    torch = import_torch()
    h, w = images.shape[-2:]
    ph, pw = (-h) % CELL, (-w) % CELL
    if ph == 0 and pw == 0:
        return images
    return torch.nn.functional.pad(images, (0, pw, 0, ph), mode="replicate")


def logits_to_scores(logits):
    """``(B, 65, Hc, Wc)`` head logits -> ``(B, 8 Hc, 8 Wc)`` keypoint probabilities (dustbin dropped)."""
    torch = import_torch()
    prob = torch.softmax(logits.float(), dim=1)[:, :-1]
    return torch.nn.functional.pixel_shuffle(prob, CELL)[:, 0]


def nms(scores, radius: int):
    """Scores ``(B, H, W)`` kept only where they are the maximum of their ``(2 radius + 1)^2`` window."""
    torch = import_torch()
    if radius <= 0:
        return scores
    k = 2 * radius + 1
    local_max = torch.nn.functional.max_pool2d(scores[:, None], k, stride=1, padding=radius)[:, 0]
    return torch.where(scores == local_max, scores, torch.zeros_like(scores))


def sample_descriptors(desc_map, xy):
    """Bilinear samples of ``desc_map (B, D, Hc, Wc)`` at pixel positions ``xy (B, N, 2)`` (x, y, full
    resolution, pixel centres at integers) -> ``(B, N, D)`` float32, L2-normalised."""
    torch = import_torch()
    hc, wc = desc_map.shape[-2:]
    u = (xy[..., 0] - (CELL - 1) / 2.0) / CELL  # descriptor-cell coordinates (cell centres at integers)
    v = (xy[..., 1] - (CELL - 1) / 2.0) / CELL
    grid = torch.stack([2.0 * u / max(wc - 1, 1) - 1.0, 2.0 * v / max(hc - 1, 1) - 1.0], dim=-1)
    out = torch.nn.functional.grid_sample(desc_map.float(), grid[:, :, None].float(),
                                          mode="bilinear", padding_mode="border", align_corners=True)
    return torch.nn.functional.normalize(out[..., 0].transpose(1, 2), dim=-1)


def refine_subpixel(score, xy):
    """Sub-pixel positions of integer peaks ``xy (N, 2)`` of a ``(H, W)`` score map: per axis the vertex of
    the parabola through the log-scores at -1, 0, +1 px, clamped to +-0.5 px."""
    torch = import_torch()
    h, w = score.shape
    ix, iy = xy[:, 0].long(), xy[:, 1].long()
    logs = torch.log(score.float().clamp(min=1e-9))

    def at(dx: int, dy: int):
        return logs[(iy + dy).clamp(0, h - 1), (ix + dx).clamp(0, w - 1)]

    c = at(0, 0)
    out = xy.clone().float()
    for axis, (m, p) in enumerate(((at(-1, 0), at(1, 0)), (at(0, -1), at(0, 1)))):
        denom = m - 2.0 * c + p
        off = torch.where(denom < -1e-6, 0.5 * (m - p) / torch.where(denom < -1e-6, denom, -torch.ones_like(denom)),
                          torch.zeros_like(denom))
        out[:, axis] += off.clamp(-0.5, 0.5)
    return out


def corner_response(image, block: int = 3):
    """Shi-Tomasi minimum-eigenvalue response ``(B, H, W)`` of ``(B, 1, H, W)`` images (Sobel gradients,
    ``block`` x ``block`` box window), computed on the images' device."""
    torch = import_torch()
    F = torch.nn.functional
    sob = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=image.device) / 8.0
    img = F.pad(image.float(), (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(img, sob[None, None])
    gy = F.conv2d(img, sob.T[None, None])
    pad = block // 2
    box = [F.avg_pool2d(F.pad(t, (pad, pad, pad, pad), mode="replicate"), block, stride=1)
           for t in (gx * gx, gx * gy, gy * gy)]
    a, b, c = box
    return ((a + c) / 2 - torch.sqrt(((a - c) / 2) ** 2 + b ** 2))[:, 0]


def snap_to_corners(response, xy, radius: int):
    """Move integer keypoints ``xy (N, 2)`` to the strongest ``response (H, W)`` pixel within ``radius`` px
    (Chebyshev), then refine sub-pixel with a parabola; returns ``(N, 2)`` float positions."""
    torch = import_torch()
    h, w = response.shape
    d = torch.arange(-radius, radius + 1, device=xy.device)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    px = (xy[:, :1].long() + dx.reshape(1, -1)).clamp(0, w - 1)
    py = (xy[:, 1:].long() + dy.reshape(1, -1)).clamp(0, h - 1)
    best = response[py, px].argmax(dim=1)
    rows = torch.arange(len(xy), device=xy.device)
    moved = torch.stack([px[rows, best], py[rows, best]], dim=1).float()
    return refine_subpixel(response.clamp(min=1e-12), moved)


# ---------------------------------------------------------------------------------------------- extractor
class SuperPointExtractor(FeatureExtractor):
    """SuperPoint behind :class:`FeatureExtractor` (float32 L2-normalised 256-d descriptors, octaves all 0).

    Args:
        cfg: feature settings; ``weights`` (None: shipped), ``num_features``, ``grid_cols/rows``, ``clahe*``.
        device: ``cpu``, ``cuda`` (``cuda:N``) or ``auto``.
        nms_radius: non-maximum suppression radius in pixels.
        detection_threshold: smallest keypoint probability kept.
        border_px: no keypoints this close to the image edge.
        mask_margin_px: the mask is eroded by this many pixels.
        half: fp16 autocast on CUDA (ignored on CPU).
        refine: sub-pixel keypoint positions (parabola through the log-scores of the peak and its 4
            neighbours, offsets clamped to half a pixel).
        snap_radius: when > 0, move each detection to the strongest Shi-Tomasi corner response within this
            many pixels (a classical localisation on top of the learned detection; off by default).
        network: an already built network (e.g. during training) instead of loading ``cfg.weights``.
    """

    name = "superpoint"
    binary = False
    descriptor_dim = DESCRIPTOR_DIM

    def __init__(self, cfg: FeatureConfig, device: str = "cpu", nms_radius: int = 4,
                 detection_threshold: float = 0.002, border_px: int = 4, mask_margin_px: int = 4,
                 half: bool = True, refine: bool = True, snap_radius: int = 0, network=None) -> None:
        check_config(cfg)
        torch = import_torch()
        if nms_radius < 0 or border_px < 0 or detection_threshold < 0:
            raise ConfigError("superpoint: nms_radius, border_px and detection_threshold must be >= 0")
        self.cfg = cfg
        self.device = torch.device(resolve_device(device))
        self.net = network.to(self.device).eval() if network is not None else load_network(cfg.weights, self.device)
        self.nms_radius = int(nms_radius)
        self.detection_threshold = float(detection_threshold)
        self.border_px = int(border_px)
        self.mask_margin_px = int(mask_margin_px)
        self.half = bool(half) and self.device.type == "cuda"
        self.refine = bool(refine)
        self.snap_radius = int(snap_radius)

    # ------------------------------------------------------------------------------------------ helpers
    def _prepare(self, gray: np.ndarray) -> np.ndarray:
        gray = check_gray(gray)
        if self.cfg.clahe:
            from slam.features.photometric import normalize_luminance

            gray = normalize_luminance(gray, self.cfg.clahe_clip, self.cfg.clahe_tiles)
        return gray

    def forward(self, grays: list[np.ndarray]):
        """Network outputs for same-size uint8 images: ``(scores (B, H, W) float32, desc_map (B, 256, Hc,
        Wc))`` on the extractor's device (inputs are not preprocessed here)."""
        torch = import_torch()
        h, w = grays[0].shape
        batch = torch.from_numpy(np.stack(grays)).to(self.device, non_blocking=True)
        batch = batch[:, None].float().mul_(1.0 / 255.0)
        batch = pad_to_cell(batch)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.half):
            logits, desc = self.net(batch)
        scores = logits_to_scores(logits)[:, :h, :w]
        return scores, desc

    def _detect(self, scores, masks: list[np.ndarray | None]):
        """Candidate keypoints per image: list of ``(xy (N, 2) float32, score (N,) float32)`` numpy arrays."""
        torch = import_torch()
        b, h, w = scores.shape
        keep = torch.zeros_like(scores, dtype=torch.bool)
        bp = self.border_px
        keep[:, bp:h - bp, bp:w - bp] = True
        for i, mask in enumerate(masks):
            usable = prepare_mask(mask, (h, w), self.mask_margin_px)
            if usable is not None:
                keep[i] &= torch.from_numpy(usable).to(self.device)
        scores = torch.where(keep, scores, torch.zeros_like(scores))
        peaks = nms(scores, self.nms_radius)
        out = []
        for i in range(b):
            ys, xs = torch.nonzero(peaks[i] > self.detection_threshold, as_tuple=True)
            s = peaks[i, ys, xs]
            xy = torch.stack([xs, ys], dim=1).float()
            out.append((xy, s))
        return out

    def _select(self, xy, s, h: int, w: int):
        """Indices (tensor on device) of at most num_features candidates spread over the grid."""
        torch = import_torch()
        n = self.cfg.num_features
        if len(s) > 4 * n:  # cheap pre-selection on the device before the host-side grid selection
            s_top, idx = torch.topk(s, 4 * n)
            xy, s, base = xy[idx], s_top, idx
        else:
            base = torch.arange(len(s), device=s.device)
        chosen = select_grid(xy.cpu().numpy(), s.cpu().numpy(), n, w, h, self.cfg.grid_cols, self.cfg.grid_rows)
        return base[torch.from_numpy(chosen).to(s.device)]

    def _features(self, xy_np: np.ndarray, desc_np: np.ndarray, scores_np: np.ndarray) -> Features:
        n = len(xy_np)
        return Features(
            keypoints=xy_np.astype(np.float32).reshape(n, 2),
            descriptors=np.ascontiguousarray(desc_np, np.float32).reshape(n, DESCRIPTOR_DIM),
            octaves=np.zeros(n, np.int32),
            sizes=np.full(n, float(CELL), np.float32),
            angles=np.full(n, -1.0, np.float32),
            responses=scores_np.astype(np.float32).reshape(n),
            binary=False,
            scale_factor=2.0,
        )

    # ------------------------------------------------------------------------------------------ API
    def extract(self, gray: np.ndarray, mask: np.ndarray | None = None) -> Features:
        """Up to ``cfg.num_features`` keypoints spread over the grid, only where ``mask`` is non-zero."""
        return self.extract_batch([gray], [mask])[0]

    def extract_batch(self, grays: list[np.ndarray], masks: list[np.ndarray | None] | None = None,
                      as_tensors: bool = False) -> list:
        """:meth:`extract` for several same-size images in one network pass.

        With ``as_tensors`` returns per image a dict of device tensors ``keypoints (N, 2)``, ``descriptors
        (N, 256)``, ``scores (N,)`` (no host copy of the descriptors, e.g. for
        :func:`slam.features.torch_matching.match_descriptors_torch`) instead of :class:`Features`.
        """
        torch = import_torch()
        imgs = [self._prepare(g) for g in grays]
        if len({im.shape for im in imgs}) != 1:
            raise InputError(f"extract_batch needs images of one size, got {sorted({im.shape for im in imgs})}")
        masks = list(masks) if masks is not None else [None] * len(imgs)
        h, w = imgs[0].shape
        scores, desc_map = self.forward(imgs)
        response = None
        if self.snap_radius > 0:
            batch = torch.from_numpy(np.stack(imgs)).to(self.device)[:, None].float() / 255.0
            response = corner_response(batch)
        results = []
        for i, (xy, s) in enumerate(self._detect(scores, masks)):
            if len(s) == 0:
                if as_tensors:
                    results.append({"keypoints": xy, "descriptors": torch.zeros(0, DESCRIPTOR_DIM, device=self.device),
                                    "scores": s})
                else:
                    results.append(Features.empty(DESCRIPTOR_DIM, False, 2.0))
                continue
            sel = self._select(xy, s, h, w)
            xy, s = xy[sel], s[sel]
            if response is not None:
                xy = snap_to_corners(response[i], xy, self.snap_radius)
            elif self.refine:
                xy = refine_subpixel(scores[i], xy)
            d = sample_descriptors(desc_map[i:i + 1], xy[None])[0]
            if as_tensors:
                results.append({"keypoints": xy, "descriptors": d, "scores": s})
            else:
                results.append(self._features(xy.cpu().numpy(), d.cpu().numpy(), s.cpu().numpy()))
        return results

    def describe(
        self, gray: np.ndarray, keypoints: np.ndarray, octaves: np.ndarray | None = None
    ) -> tuple[Features, np.ndarray]:
        """Descriptors sampled at given ``(N, 2)`` positions (``octaves`` ignored: one scale).

        Keypoints outside the image (or not finite) are dropped; returns their Features (input order,
        responses = score at the nearest pixel) and ``(M,)`` int64 indices into the input.
        """
        torch = import_torch()
        img = self._prepare(gray)
        h, w = img.shape
        xy = np.asarray(keypoints, np.float64).reshape(-1, 2)
        ok = np.isfinite(xy).all(axis=1) & (xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1)
        kept = np.flatnonzero(ok).astype(np.int64)
        if len(kept) == 0:
            return Features.empty(DESCRIPTOR_DIM, False, 2.0), kept
        scores, desc_map = self.forward([img])
        pts = torch.from_numpy(xy[kept].astype(np.float32)).to(self.device)
        d = sample_descriptors(desc_map, pts[None])[0]
        ij = torch.round(pts).long()
        s = scores[0, ij[:, 1], ij[:, 0]]
        return self._features(xy[kept], d.cpu().numpy(), s.cpu().numpy()), kept
