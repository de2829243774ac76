"""Diagnostics of counterfactuals: the pieces of the investigations in ``experiments/`` worth testing.

Each answers one question about the HVAE's do(effusion) on the phantom (``experiments/results/cf_*.md``):

- :func:`redraw`, :func:`floor_rows` (``cf_floor_remove.py``): how close any model can get to the exact
  counterfactual when it removes fluid, by redrawing what the fluid hid (the floor of the remove direction);
- :func:`decodings` (``cf_noise_abduction.py``): the HVAE's counterfactual decoded four ways from the same
  latents, to tell the pixel-noise abduction's error from the decoder's;
- :func:`lung_masks`, :func:`blend`, :func:`localise` (``cf_lung_region.py``, ``cf_localise.py``): the change
  kept inside a mask (the lungs, or where the change is large);
- :func:`stray`, :func:`parts` (``cf_stray_change.py``): where the change outside the exact counterfactual's
  region lies, and the change split by that region.

Plain numpy (and torch for :func:`decodings`); nothing here is read by the pipeline.
"""
from __future__ import annotations

import numpy as np
import scipy.ndimage as ndi
import torch
from skimage.morphology import convex_hull_image

from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.quality import changed_region_dice


#: Fields redrawn whole: the lung hidden below the domes and behind the heart, and the gastric bubble.
HIDDEN = ("hidden", "gastric")
#: ``eff_side`` -> the hemidiaphragms (``dome`` columns) under the fluid: right, left, both.
FLUID_DOMES = {0: (0,), 1: (1,), 2: (0, 1)}


def redraw(noise: dict[str, np.ndarray], fresh: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``noise`` with the fields the fluid may hide taken from ``fresh``: :data:`HIDDEN` whole, ``dome`` on the
    fluid's side(s) only (:data:`FLUID_DOMES`)."""
    out = {k: v.copy() for k, v in noise.items()}
    for k in HIDDEN:
        out[k] = fresh[k].copy()
    for side, cols in FLUID_DOMES.items():
        rows = noise["eff_side"] == side
        for c in cols:
            out["dome"][rows, c] = fresh["dome"][rows, c]
    return out


def floor_rows(x: np.ndarray, exact: np.ndarray, renders: np.ndarray, errors: np.ndarray,
               tol: float) -> dict:
    """One row: the counterfactuals ``renders (C, N, H, W)`` kept where the factual re-render's error
    ``errors (C, N)`` is <= ``tol`` (``inf``: all of them, the prior)."""
    keep = errors <= tol
    has = keep.any(0)
    first = np.where(has, keep.argmax(0), 0)
    one = np.where(has[:, None, None], renders[first, np.arange(len(x))], exact)
    stack = np.where(keep[:, :, None, None], renders.astype(np.float32), np.nan)
    with np.errstate(all="ignore"):
        med = np.nanmedian(stack[:, has], axis=0)
    bayes = exact.copy()
    bayes[has] = np.round(med).astype(np.uint8)
    out = {}
    for name, cf in (("one draw", one), ("Bayes", bayes)):
        mae = np.abs(cf.astype(np.float32) - exact.astype(np.float32)).mean(axis=(1, 2))
        out[name] = dict(images_kept=float(has.mean()), draws_kept=float(keep.sum(0)[has].mean()) if has.any() else 0.0,
                         oracle_mae=float(mae.mean()), oracle_mae_kept=float(mae[has].mean()) if has.any() else 0.0,
                         changed_dice=float(changed_region_dice(x, cf, exact).mean()))
    return out


#: The decodings of :func:`decodings`.
FORMS = ("scaled", "additive", "mean", "factual mean")


@torch.no_grad()
def decodings(model: HVAE, x: torch.Tensor, pa: torch.Tensor, cf_pa: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four decodings of :data:`FORMS` of ``x (B, 1, H, W)`` in [-1, 1] under ``cf_pa``, from the same
    posterior-mean latents abducted under ``pa``; each ``(B, 1, H, W)`` clamped to [-1, 1]. ``scaled`` is
    :meth:`HVAE.counterfactual` (checked in ``tests/test_cf_floor.py``).
    ``additive`` carries the pixel residual over unscaled; ``mean`` is the decoded mean under ``cf_pa``,
    ``factual mean`` the one under ``pa``."""
    model.eval()
    h, stats = model.decode(pa, acts=model.encoder(x), t=0.0)
    h_cf, _ = model.decode(cf_pa, latents=[s["z"] for s in stats])
    loc, logscale = model.pixel_params(h)
    cf_loc, cf_logscale = model.pixel_params(h_cf)
    out = {"scaled": cf_loc + torch.exp(cf_logscale - logscale) * (x - loc), "additive": x + (cf_loc - loc),
           "mean": cf_loc, "factual mean": loc}
    return {k: v.clamp(-1.0, 1.0) for k, v in out.items()}


def lung_masks(silver: np.ndarray, radius: int, hull: bool) -> np.ndarray:
    """Bool ``(N, H, W)``: the lungs of each silver label map (any label > 0), or their convex hull, dilated
    by ``radius`` pixels."""
    out = []
    for s in silver:
        m = s > 0
        if hull and m.any():
            m = convex_hull_image(m)
        out.append(ndi.binary_dilation(m, iterations=radius) if radius else m)
    return np.stack(out)


def blend(x: np.ndarray, cf: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 ``x + m * (cf - x)`` for uint8 stacks ``(N, H, W)``: the change kept where ``mask (N, H, W)`` is
    set, ``m`` the mask softened by a 1-pixel Gaussian."""
    xf = x.astype(np.float32)
    m = ndi.gaussian_filter(mask.astype(np.float32), (0, 1, 1))
    return np.clip(np.rint(xf + m * (cf.astype(np.float32) - xf)), 0, 255).astype(np.uint8)


def localise(x: np.ndarray, cf: np.ndarray, sigma: float, tau: float) -> np.ndarray:
    """:func:`blend` with the mask where the change, smoothed by a Gaussian of ``sigma`` pixels, exceeds
    ``tau`` grey levels."""
    d = np.abs(cf.astype(np.float32) - x.astype(np.float32))
    return blend(x, cf, ndi.gaussian_filter(d, (0, sigma, sigma)) > tau)


def stray(x: np.ndarray, cf: np.ndarray, exact: np.ndarray, near: int = 4, unilateral: float = 0.9) -> dict:
    """Where a counterfactual ``cf`` changes what the exact counterfactual ``exact`` keeps, for uint8 ``x``,
    ``cf``, ``exact`` (N, H, W) of one direction: ``outside``, the mean ``|cf - x|`` outside the region;
    ``signed``, the mean ``cf - x`` there (per image, then averaged; positive: brighter); ``near`` /
    ``far``, within ``near`` pixels of the region and farther; ``dark`` / ``bright``, on the darkest and
    the brightest third of x's pixels outside the region; ``same_half`` / ``other_half``, on the images
    whose region lies in one half (at least ``unilateral`` of its pixels), on that half and on the other.

    The region is where ``exact != x``; an image without any region pixel counts everywhere but in ``near``
    and the halves. The halves are the image's left and right column halves (an odd middle column is in
    neither); the thirds are those of x's intensities over all the images' pixels outside the region."""
    x, cf, exact = (np.asarray(a, np.float32) for a in (x, cf, exact))
    region = exact != x
    out = ~region
    diff = cf - x
    err = np.abs(diff)
    close = np.stack([ndi.binary_dilation(r, iterations=near) if r.any() else r for r in region]) & out
    w = x.shape[-1]
    left = np.zeros(x.shape[1:], bool)
    left[:, : w // 2] = True
    right = np.zeros(x.shape[1:], bool)
    right[:, (w + 1) // 2:] = True
    n_region = region.sum(axis=(1, 2))
    share_left = region[:, left].sum(axis=1) / np.maximum(n_region, 1)
    share_right = region[:, right].sum(axis=1) / np.maximum(n_region, 1)
    one_side = (n_region > 0) & ((share_left >= unilateral) | (share_right >= unilateral))
    same = np.where((share_left >= unilateral)[:, None, None], left, right)
    other = np.where((share_left >= unilateral)[:, None, None], right, left)
    uni = one_side[:, None, None]

    def mean(mask: np.ndarray) -> float:
        return float(err[mask].mean()) if mask.any() else float("nan")

    signed = [diff[i][out[i]].mean() for i in range(len(x)) if out[i].any()]
    lo, hi = np.quantile(x[out], [1 / 3, 2 / 3]) if out.any() else (np.nan, np.nan)
    return dict(n=len(x), unilateral=int(one_side.sum()), outside=mean(out),
                signed=float(np.mean(signed)) if signed else float("nan"),
                near=mean(close), far=mean(out & ~close), dark=mean(out & (x <= lo)), bright=mean(out & (x >= hi)),
                same_half=mean(out & uni & same),
                other_half=mean(out & uni & other))


def parts(x: np.ndarray, cf: np.ndarray, exact: np.ndarray) -> dict[str, np.ndarray]:
    """The counterfactual ``cf`` split by the region where ``exact != x`` (uint8 (N, H, W) each): ``whole``
    (cf), ``inside only`` (cf in the region, x elsewhere) and ``outside only`` (x in the region, cf
    elsewhere)."""
    region = exact != x
    return {"whole": cf, "inside only": np.where(region, cf, x), "outside only": np.where(region, x, cf)}
