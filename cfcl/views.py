"""Augmented views with precise pixel tracking (paper sections 2.1 and 3, "Precise Pixel Tracking").

Every geometric augmentation is a 3x3 homogeneous matrix ``M`` that maps *original-image*
coordinates to *view* coordinates, so a pixel of any view and a point of the original image
correspond exactly, under any affine transform (rotation, crop/scale, translation).

Conventions (used by every function here):

- a point is ``(x, y) = (column, row)``; pixel centres sit at integers ``0..W-1`` / ``0..H-1``;
- matrices act on column vectors ``(x, y, 1)``: ``p_view = M @ p_orig``;
- a view is rendered with ONE resampling, :func:`warp` (``grid_sample`` with the inverse
  matrix and ``align_corners=True``, which is exactly the pixel-centre convention above;
  bilinear for images, nearest for label maps, zeros outside the original image);
- views have the size of the original image: a crop followed by a resize is a scale in ``M``.

A view point ``q`` of view ``v`` corresponds to the original point ``invert(M_v) @ q``; a feature
map computed on that view is read at ``q`` with :func:`gather` (bilinear, same convention).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AugmentConfig",
    "random_geometry",
    "compose",
    "invert",
    "apply",
    "map_points",
    "warp",
    "sampling_grid",
    "resample",
    "visible",
    "sample_points",
    "gather",
    "labels_at",
    "intensity",
    "make_views",
]


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation of one view (paper section 2.1: rotation, cropping/scaling, colour jitter,
    Gaussian blur, solarization). The paper gives no magnitudes; the defaults are those typical
    of dense contrastive work (SimCLR/BYOL/PixPro-style), adapted to grey-scale chest X-rays:

    - ``rotation_deg``: rotation angle drawn uniformly in ``[-rotation_deg, rotation_deg]``,
      about the (random) crop centre.
    - ``scale``: zoom factor range ``(min, max)``; a zoom ``s`` is a square crop of side
      ``size / s`` (area fraction ``1/s^2``: ``(1.0, 1.6)`` means crops of 0.39-1.0 of the area)
      resized to ``size``. The crop centre is drawn so that the axis-aligned crop stays inside
      the image, so the central ``(2/s_max - 1)`` fraction of the image is in every crop and
      overlaps between views are never empty with sane settings.
    - ``translate``: extra shift of the view, uniform in ``[-translate, translate] * size``
      per axis (exposes a zero border).
    - ``flip_p``: probability of a horizontal flip. 0 by default: the left and right lungs are
      different classes, a flip would swap them.
    - ``jitter_p``: probability of the colour jitter (``brightness``: multiplicative factor in
      ``[1-b, 1+b]``; ``contrast``: factor in ``[1-c, 1+c]`` about the image mean; ``gamma``:
      exponent range).
    - ``blur_p``, ``blur_sigma``: Gaussian blur probability and sigma range, in pixels of the
      original image.
    - ``solarize_p``, ``solarize_threshold``: pixels ``>= threshold`` become ``1 - x``.
    """

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (1.0, 1.6)
    translate: float = 0.05
    flip_p: float = 0.0
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    gamma: tuple[float, float] = (0.7, 1.5)
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.2
    solarize_threshold: float = 0.5

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 < lo <= hi:
            raise ValueError(f"AugmentConfig.scale must satisfy 0 < min <= max, got {self.scale}")
        g0, g1 = self.gamma
        if not 0 < g0 <= g1:
            raise ValueError(f"AugmentConfig.gamma must satisfy 0 < min <= max, got {self.gamma}")
        s0, s1 = self.blur_sigma
        if not 0 < s0 <= s1:
            raise ValueError(f"AugmentConfig.blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}")
        for name in ("flip_p", "jitter_p", "blur_p", "solarize_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must be a probability in [0, 1], got {p}")
        for name in ("rotation_deg", "translate", "brightness", "contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.brightness >= 1 or self.contrast >= 1:
            raise ValueError("AugmentConfig.brightness and contrast must be < 1 (factors stay positive)")


# ----------------------------------------------------------------------------- matrices
def _uniform(shape: tuple[int, ...], lo: float, hi: float, generator: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=generator.device,
                                       dtype=torch.float64)


def random_geometry(batch: int, size: int, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Draw ``batch`` random geometric augmentations of a ``size`` x ``size`` image.

    ``M = T(c + t) . F . s R(theta) . T(-p)``: move the crop centre ``p`` to the origin, rotate
    by ``theta`` about it and zoom by ``s`` (crop + resize), optionally flip, move to the view
    centre ``c = (size-1)/2`` plus a translation ``t``. Returns float32 ``(batch, 3, 3)`` on the
    generator's device, mapping original coordinates to view coordinates.
    """
    if batch < 0 or size < 2:
        raise ValueError(f"random_geometry: need batch >= 0 and size >= 2, got batch={batch}, size={size}")
    c = (size - 1) / 2.0
    s = _uniform((batch,), cfg.scale[0], cfg.scale[1], generator)
    half_room = (size - size / s).clamp(min=0) / 2  # crop centre range keeping the crop inside
    p = c + _uniform((batch, 2), -1.0, 1.0, generator) * half_room[:, None]
    theta = _uniform((batch,), -cfg.rotation_deg, cfg.rotation_deg, generator) * (math.pi / 180)
    t = _uniform((batch, 2), -cfg.translate, cfg.translate, generator) * size
    flip = _uniform((batch,), 0.0, 1.0, generator) < cfg.flip_p
    fx = torch.where(flip, -1.0, 1.0).to(torch.float64)

    cos, sin = torch.cos(theta), torch.sin(theta)
    A = torch.zeros(batch, 2, 2, dtype=torch.float64, device=s.device)  # F . s R
    A[:, 0, 0], A[:, 0, 1] = fx * s * cos, -fx * s * sin
    A[:, 1, 0], A[:, 1, 1] = s * sin, s * cos
    M = torch.zeros(batch, 3, 3, dtype=torch.float64, device=s.device)
    M[:, :2, :2] = A
    M[:, :2, 2] = c + t - (A @ p[:, :, None])[:, :, 0]
    M[:, 2, 2] = 1.0
    return M.float()


def compose(*Ms: Tensor) -> Tensor:
    """Compose transforms in APPLICATION order: ``compose(A, B)`` applies ``A`` first, then ``B``
    (returns ``B @ A``). Broadcasts over leading dimensions ``(..., 3, 3)``."""
    if not Ms:
        raise ValueError("compose: need at least one matrix")
    out = Ms[0]
    for M in Ms[1:]:
        out = M @ out
    return out


def invert(M: Tensor) -> Tensor:
    """Inverse transform ``(..., 3, 3)`` (view -> original for a view matrix). Computed in float64."""
    return torch.linalg.inv(M.double()).to(M.dtype)


def apply(M: Tensor, pts: Tensor) -> Tensor:
    """Map points ``pts (..., N, 2)`` with ``M (..., 3, 3)`` (broadcast) -> ``(..., N, 2)``.

    Full homogeneous map (divides by the third coordinate, which is 1 for affine matrices)."""
    if M.shape[-2:] != (3, 3) or pts.shape[-1] != 2:
        raise ValueError(f"apply: M must be (..., 3, 3) and pts (..., N, 2); got {tuple(M.shape)}, "
                         f"{tuple(pts.shape)}")
    M = M.to(pts.dtype)
    lin = pts @ M[..., :2, :2].transpose(-1, -2) + M[..., None, :2, 2]
    w = pts @ M[..., 2:, :2].transpose(-1, -2) + M[..., None, 2:, 2]
    return lin / w


def map_points(pts: Tensor, M_from: Tensor, M_to: Tensor) -> Tensor:
    """Map view points of the view made with ``M_from`` to the view made with ``M_to``
    (``pts (..., N, 2)``, matrices ``(..., 3, 3)``)."""
    return apply(compose(invert(M_from), M_to), pts)


# ----------------------------------------------------------------------------- rendering
def _pixel_grid(h: int, w: int, device: torch.device) -> Tensor:
    """All pixel centres as ``(h*w, 2)`` float32 ``(x, y)``, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def _to_grid(pts: Tensor, h: int, w: int) -> Tensor:
    """Pixel coordinates -> grid_sample's [-1, 1] (align_corners=True: centres 0 and W-1 -> -1, 1)."""
    scale = pts.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    return pts * scale - 1.0


def warp(images: Tensor, M: Tensor, mode: str = "bilinear") -> Tensor:
    """Render views ``(B, C, H, W)`` of ``images (B, C, H, W)`` (float) through ``M (B, 3, 3)``.

    View pixel ``q`` takes the value of the original at ``invert(M) @ q`` (one resampling,
    ``mode`` ``"bilinear"`` for images or ``"nearest"`` for label maps, zeros outside).
    """
    if images.ndim != 4 or M.shape != (images.shape[0], 3, 3):
        raise ValueError(f"warp: images must be (B, C, H, W) and M (B, 3, 3); got {tuple(images.shape)}, "
                         f"{tuple(M.shape)}")
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"warp: mode must be 'bilinear' or 'nearest', got {mode!r}")
    if not images.is_floating_point():
        raise ValueError(f"warp: images must be floating point, got {images.dtype} (cast label maps "
                         "to float and use mode='nearest')")
    b, _, h, w = images.shape
    return resample(images, sampling_grid(M.to(images.device), h, w, images.dtype), mode)


def sampling_grid(M: Tensor, h: int, w: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """The ``grid_sample`` grid ``(B, h, w, 2)`` that renders views through ``M (B, 3, 3)``: view pixel
    ``q`` reads the original at ``invert(M) @ q`` (computed in float64, then cast to ``dtype``)."""
    b = M.shape[0]
    q = _pixel_grid(h, w, M.device).expand(b, -1, -1)
    src = apply(invert(M.to(torch.float64)), q.double()).to(dtype)
    return _to_grid(src, h, w).view(b, h, w, 2)


def resample(images: Tensor, grid: Tensor, mode: str = "bilinear") -> Tensor:
    """Render ``images (B, C, H, W)`` through a :func:`sampling_grid` (``mode`` bilinear or nearest,
    zeros outside); :func:`warp` is ``resample(images, sampling_grid(M, H, W))``."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"resample: mode must be 'bilinear' or 'nearest', got {mode!r}")
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="zeros", align_corners=True)


def visible(pts_orig: Tensor, M: Tensor, size: int, eps: float = 1e-4) -> Tensor:
    """Whether view ``M (B, 3, 3)`` sees original points ``pts_orig (B, N, 2)`` -> bool ``(B, N)``:
    the mapped point lies in ``[0, size-1]^2`` (tolerance ``eps`` px for round-off)."""
    if M.ndim != 3 or pts_orig.ndim != 3 or M.shape[0] != pts_orig.shape[0]:
        raise ValueError(f"visible: pts_orig must be (B, N, 2) and M (B, 3, 3); got "
                         f"{tuple(pts_orig.shape)}, {tuple(M.shape)}")
    q = apply(M.double(), pts_orig.double())
    return ((q >= -eps) & (q <= size - 1 + eps)).all(dim=-1)


def sample_points(Ms: Tensor, size: int, n: int, generator: torch.Generator,
                  active: Sequence[int] | None = None, jitter: float = 0.0, margin: float = 0.0) -> Tensor:
    """Sample ``n`` original points per image inside the intersection of the active views
    (paper section 3, "Sampling": anchor + target for (S-)DVD-CL, all views for (S-)MVD-CL).

    ``Ms (B, V, 3, 3)``: the views' matrices; ``active``: view indices (None: all views).
    Candidates are the original pixel centres seen by every active view; ``n`` of them are drawn
    uniformly without replacement, or with replacement where fewer than ``n`` exist. With
    ``jitter > 0`` each point moves by a uniform sub-pixel offset in ``[-jitter, jitter]`` per
    axis; a jittered point that leaves the intersection (or the image) falls back to its pixel
    centre, so every returned point is visible in every active view. ``margin``: keep points at
    least this many pixels inside the original image's border (``1.5`` keeps bilinear reads of
    the views, whose zoom is >= 1, clear of the zero padding around the original). Raises
    ``ValueError`` if an image's intersection is empty (never seen with the default
    :class:`AugmentConfig`: over 2,000 draws of 4 views at 64 px the smallest intersection held
    440 pixels, the median 32 % of the image).
    Returns float32 ``(B, n, 2)`` original ``(x, y)`` on ``Ms``'s device.
    """
    if Ms.ndim != 4 or Ms.shape[-2:] != (3, 3):
        raise ValueError(f"sample_points: Ms must be (B, V, 3, 3), got {tuple(Ms.shape)}")
    if n < 1:
        raise ValueError(f"sample_points: n must be >= 1, got {n}")
    b, v = Ms.shape[:2]
    idx = list(range(v)) if active is None else list(active)
    if not idx or any(not -v <= i < v for i in idx):
        raise ValueError(f"sample_points: active={active} must name views among 0..{v - 1}")
    Ma = Ms[:, idx].double()  # (B, A, 3, 3)
    grid = _pixel_grid(size, size, Ms.device).double()  # (P, 2)
    q = apply(Ma, grid.expand(b, len(idx), -1, -1))  # (B, A, P, 2)
    ok = ((q >= -1e-4) & (q <= size - 1 + 1e-4)).all(-1).all(1)  # (B, P)
    if margin > 0:
        ok &= ((grid >= margin) & (grid <= size - 1 - margin)).all(-1)
    count = ok.sum(1)
    if bool((count == 0).any()):
        bad = torch.nonzero(count == 0)[:, 0].tolist()
        raise ValueError(f"sample_points: the active views {idx} have no common field of view in "
                         f"images {bad}; reduce AugmentConfig scale/translate/rotation")
    dev = generator.device
    keys = torch.rand(b, size * size, generator=generator, device=dev).to(Ms.device)
    keys = torch.where(ok, keys, torch.full_like(keys, -1.0))
    if n <= size * size:
        top = keys.topk(n, dim=1).indices  # n distinct candidates, valid ones first
    else:
        top = torch.zeros(b, n, dtype=torch.long, device=Ms.device)  # never used: count < n
    repl = torch.multinomial(ok.float().to(dev), n, replacement=True, generator=generator).to(Ms.device)
    choice = torch.where((count >= n)[:, None], top, repl)
    pts = grid[choice]  # (B, n, 2) float64
    if jitter > 0:
        off = (torch.rand(b, n, 2, generator=generator, device=dev, dtype=torch.float64) * 2 - 1) * jitter
        moved = pts + off.to(Ms.device)
        inside = ((moved >= margin) & (moved <= size - 1 - margin)).all(-1)
        qm = apply(Ma, moved[:, None].expand(-1, len(idx), -1, -1))
        inside &= ((qm >= 0) & (qm <= size - 1)).all(-1).all(1)
        pts = torch.where(inside[..., None], moved, pts)
    return pts.float()


def gather(features: Tensor, pts_view: Tensor, size: int | None = None) -> Tensor:
    """Bilinearly read dense features ``(B, D, H, W)`` at view points ``pts_view (B, N, 2)``
    -> ``(B, N, D)`` (``align_corners=True``, consistent with :func:`warp`).

    ``size``: the view's size in pixels when the feature map has a different resolution (its
    corner pixel centres are then aligned with the view's); default the feature map's own size.
    Points outside the map read zeros (blended at the border)."""
    if features.ndim != 4 or pts_view.ndim != 3 or pts_view.shape[-1] != 2 \
            or pts_view.shape[0] != features.shape[0]:
        raise ValueError(f"gather: features must be (B, D, H, W) and pts_view (B, N, 2); got "
                         f"{tuple(features.shape)}, {tuple(pts_view.shape)}")
    _, _, h, w = features.shape
    vh, vw = (h, w) if size is None else (size, size)
    grid = _to_grid(pts_view.to(features.dtype), vh, vw)[:, None]  # (B, 1, N, 2)
    out = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :, 0].transpose(1, 2)


def labels_at(label_map: Tensor, pts: Tensor) -> Tensor:
    """Nearest-pixel labels of ``label_map (B, H, W)`` at points ``pts (B, N, 2)`` -> long ``(B, N)``.

    Rounds half to even, like ``grid_sample(mode="nearest")``. Points must lie within the
    map (``[-0.5, W-0.5)`` x ``[-0.5, H-0.5)``), else ``ValueError``."""
    if label_map.ndim != 3 or pts.ndim != 3 or pts.shape[-1] != 2 or pts.shape[0] != label_map.shape[0]:
        raise ValueError(f"labels_at: label_map must be (B, H, W) and pts (B, N, 2); got "
                         f"{tuple(label_map.shape)}, {tuple(pts.shape)}")
    b, h, w = label_map.shape
    ij = torch.round(pts).long()
    x, y = ij[..., 0], ij[..., 1]
    if bool(((x < 0) | (x >= w) | (y < 0) | (y >= h)).any()):
        raise ValueError(f"labels_at: points outside the {h}x{w} label map")
    flat = label_map.reshape(b, h * w).long()
    return flat.gather(1, y * w + x)


# ----------------------------------------------------------------------------- intensity
def _gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one sigma per image (``images (B, 1, H, W)``, ``sigma (B,)``),
    reflect padding, one grouped convolution per axis."""
    b, c, h, w = images.shape
    radius = int(math.ceil(3 * float(sigma.max())))
    radius = max(1, min(radius, h - 1, w - 1))
    x = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    k = torch.exp(-0.5 * (x[None] / sigma[:, None].to(images.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, K)
    z = images.reshape(1, b * c, h, w)
    z = F.conv2d(F.pad(z, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    z = F.conv2d(F.pad(z, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return z.reshape(b, c, h, w)


def intensity(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Grey-scale photometric augmentation, independent per image (paper section 2.1: colour
    jitter, Gaussian blur, solarization). ``images (B, 1, H, W)`` in [0, 1] -> same shape, in [0, 1].

    Fixed order (our choice): with probability ``jitter_p`` brightness, contrast (about the image
    mean), gamma; then blur with ``blur_p``; then solarization with ``solarize_p``. Random numbers
    are drawn all at once from ``generator``, so the result is deterministic for a seed.
    """
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"intensity: images must be float (B, C, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    b = images.shape[0]
    r = torch.rand(b, 8, generator=generator, device=generator.device, dtype=torch.float64)
    r = r.to(images.device, images.dtype)
    do_jit, do_blur, do_sol = r[:, 0] < cfg.jitter_p, r[:, 1] < cfg.blur_p, r[:, 2] < cfg.solarize_p
    bright = 1 + cfg.brightness * (2 * r[:, 3] - 1)
    contr = 1 + cfg.contrast * (2 * r[:, 4] - 1)
    gamma = cfg.gamma[0] + (cfg.gamma[1] - cfg.gamma[0]) * r[:, 5]
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * r[:, 6]
    ex = (slice(None), None, None, None)

    x = images.clamp(0, 1)
    j = (x * bright[ex]).clamp(0, 1)
    mean = j.mean(dim=(1, 2, 3), keepdim=True)
    j = ((j - mean) * contr[ex] + mean).clamp(0, 1)
    j = j.clamp_min(1e-12) ** gamma[ex] * (j > 0)  # keeps exact zeros at 0
    x = torch.where(do_jit[ex], j, x)
    if bool(do_blur.any()):
        x = torch.where(do_blur[ex], _gaussian_blur(x, sigma), x)
    x = torch.where(do_sol[ex] & (x >= cfg.solarize_threshold), 1 - x, x)
    return x.clamp(0, 1)


def make_views(images: Tensor, cfg: AugmentConfig, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Independently augmented views of each of the ``V`` images of a sample (paper section 2.1:
    the base image and its three counterfactuals are each augmented independently).

    ``images (B, V, H, W)`` float in [0, 1], ``H == W`` -> ``views (B, V, 1, H, W)``,
    ``Ms (B, V, 3, 3)`` (original -> view). The photometric augmentation is applied to the
    unwarped image, then the geometry is rendered with one resampling, so everything outside
    the original image is exactly 0 in the view.
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(f"make_views: images must be square (B, V, H, W), got {tuple(images.shape)}")
    b, v, h, w = images.shape
    Ms = random_geometry(b * v, h, cfg, generator).to(images.device)
    x = intensity(images.reshape(b * v, 1, h, w), cfg, generator)
    views = warp(x, Ms, mode="bilinear")
    return views.reshape(b, v, 1, h, w), Ms.reshape(b, v, 3, 3)
