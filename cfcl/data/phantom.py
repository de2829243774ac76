"""The phantom: a structural causal model (SCM) of PA chest radiographs with exact counterfactuals.

Causal graph (paper section 2.1 uses the same parents): sex, scanner and pleural effusion (PE)
are root variables with the real PadChest joint distribution (scanner and PE confounded); every
image also has exogenous noise ``U`` (anatomy, acquisition), stored so that any image can be
re-rendered under any parents. Mechanisms:

- **sex** scales thorax and lungs (women smaller) and adds breast soft-tissue shadows over the
  lower lung fields;
- **scanner** changes acquisition only: blur (sharpness), intensity transfer curve (contrast,
  brightness), detector noise level and grain, field edges and side marker;
- **effusion** adds homogeneous fluid rising from the costophrenic angle with a concave meniscus
  (higher laterally) that blunts the angle and hides the lung base and diaphragm. The lung is still
  there: the gold mask is unchanged, only the silver (visible-lung) mask shrinks.

Rendering happens in continuous image coordinates ``u`` (left->right) and ``v`` (top->bottom) in
[0, 1] sampled at pixel centres, so any size 64..512 px comes from the same parameters. The image
is an attenuation map ``D`` (soft tissue, heart, spine, ribs, clavicles, breasts minus lung air
with vessel texture; fluid replaces lung air), blurred by the scanner's point spread (a Gaussian
truncated at ``radius`` pixels), mapped by the scanner's transfer curve, plus detector noise.

Exact counterfactuals: render the same ``U`` under intervened parents. The null intervention is
pixel-identical; do(scanner) leaves anatomy and both masks untouched; do(effusion) changes the
image only inside ``effusion_region`` = the potential fluid support (drawn for every image, used
only when effusion = 1) dilated by the blur radius (a square of side ``2 r + 1``: the support of
the separable truncated Gaussian); the gold mask never changes.

Storage (:func:`load_split`): ``cache_dir()/phantom/<hash>/<split>/``: memory-mappable ``.npy``
arrays, ``parents.csv``, ``noise.npz`` and ``manifest.json`` written last (all through
:func:`cfcl.paths.atomic_path`). A split is trusted only if its manifest exists and names the
expected hash; the hash covers the phantom fields of the DataConfig and ``PHANTOM_VERSION``.
"""
from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, PARENTS, DataConfig
from cfcl.data import ChestSplit
from cfcl.data.anatomy import BANK_VERSION, ShapeBank, load_shape_bank, torchxrayvision_data_dir
from cfcl.paths import atomic_path, cache_dir

PHANTOM_VERSION = 3
SPLIT_CODES = {"pretrain": 0, "val": 1, "annotated": 2, "test": 3}
# DataConfig fields that change the phantom (real-data paths and CheXmask settings do not).
HASHED_FIELDS = ("image_size", "n_pretrain", "n_val", "n_test", "n_annotated_healthy",
                 "n_annotated_effusion", "effusion_prevalence", "scanner_effusion_odds_ratio", "seed")
ARRAYS = ("images", "gold", "silver", "quality", "counterfactuals")
MIN_SIZE, MAX_SIZE = 16, 1024
EFFUSION_SIDES = ("right", "left", "bilateral")

# Scanner mechanisms (acquisition only). blur: Gaussian sigma in image units (fraction of the
# side); slope/centre/gamma: transfer curve I = sigmoid(slope (D - centre))**gamma rescaled;
# noise: detector noise std; grain: share of spatially correlated noise; edge: width of bright
# collimation borders; marker: (u, v) of the side marker.
SCANNERS: tuple[dict[str, Any], ...] = (
    dict(blur=0.0035, slope=5.0, centre=0.50, gamma=1.0, black=0.02, noise=0.015, grain=0.0,
         edge=0.0, marker=(0.90, 0.06)),
    dict(blur=0.0070, slope=3.6, centre=0.42, gamma=1.25, black=0.10, noise=0.03, grain=0.8,
         edge=0.035, marker=(0.10, 0.06)),
)

# Silver quality score: 1 - RCA_SENSITIVITY * (1 - Dice(silver, gold)) + 0.02 noise. Like Dice RCA,
# which judges plausibility without the ground truth, it sees only part of the real error.
RCA_SENSITIVITY = 0.5

# Densities (attenuation, arbitrary units) of the anatomy.
DENSITY = dict(body=0.78, air=0.48, heart=0.14, spine=0.22, rib=0.08, clavicle=0.20, breast=0.12,
               trachea=0.12, fluid_extra=0.0, vessel=0.6)


# ----------------------------------------------------------------------------------------------
# Parents
# ----------------------------------------------------------------------------------------------

def real_joint() -> pd.DataFrame:
    """The real PadChest PA joint distribution of (sex, scanner, effusion), 8 rows.

    Computed by :func:`cfcl.data.metadata.joint_distribution` from the CSV shipped in
    torchxrayvision (never typed in), then cached as ``cache_dir()/phantom/padchest_joint.csv``
    because reading the 160k-row CSV takes seconds.
    """
    target = cache_dir() / "phantom" / "padchest_joint.csv"
    if target.exists():
        return pd.read_csv(target)
    from cfcl.data.metadata import METADATA_NAME, joint_distribution

    joint = joint_distribution(torchxrayvision_data_dir() / METADATA_NAME)
    joint = joint[["sex", "scanner", "effusion", "count", "p"]].reset_index(drop=True)
    with atomic_path(target) as tmp:
        joint.to_csv(tmp, index=False)
    return joint


def _odds(p: float) -> float:
    return p / (1.0 - p)


def parent_distribution(effusion_prevalence: float | None = None,
                        scanner_effusion_odds_ratio: float | None = None) -> pd.DataFrame:
    """Joint P(sex, scanner, effusion), the real one modified by the two phantom knobs.

    Factorised as P(scanner) P(effusion | scanner) P(sex | scanner, effusion). P(scanner) and
    P(sex | scanner, effusion) stay real; P(effusion | scanner) = (q0, q1) is set so that the
    odds ratio odds(q1)/odds(q0) equals ``scanner_effusion_odds_ratio`` (None: real, ~2.4) and the
    prevalence P(scanner=0) q0 + P(scanner=1) q1 equals ``effusion_prevalence`` (None: real,
    ~2.5 %). Both None returns exactly the real joint. Columns ``sex, scanner, effusion, p``.
    """
    joint = real_joint()
    cnt = joint.set_index(["sex", "scanner", "effusion"])["count"].astype(float)
    p_s = np.array([cnt.xs(s, level="scanner").sum() for s in (0, 1)]) / cnt.sum()
    q_real = np.array([cnt.xs((s, 1), level=("scanner", "effusion")).sum()
                       / cnt.xs(s, level="scanner").sum() for s in (0, 1)])
    prev = float(p_s @ q_real) if effusion_prevalence is None else float(effusion_prevalence)
    ratio = (_odds(q_real[1]) / _odds(q_real[0]) if scanner_effusion_odds_ratio is None
             else float(scanner_effusion_odds_ratio))
    if not 0.0 < prev < 1.0:
        raise ValueError(f"effusion_prevalence must be in (0, 1), got {effusion_prevalence}")
    if not ratio > 0.0 or not math.isfinite(ratio):
        raise ValueError(f"scanner_effusion_odds_ratio must be > 0, got {scanner_effusion_odds_ratio}")
    if effusion_prevalence is None and scanner_effusion_odds_ratio is None:
        q = q_real
    else:  # bisection on q0: prevalence is increasing in q0 for a fixed odds ratio
        def q1_of(q0: float) -> float:
            o = ratio * _odds(q0)
            return o / (1.0 + o)

        lo, hi = 0.0, 1.0
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if p_s[0] * mid + p_s[1] * q1_of(mid) < prev:
                lo = mid
            else:
                hi = mid
        q = np.array([0.5 * (lo + hi), q1_of(0.5 * (lo + hi))])
    rows = []
    for s in (0, 1):
        for e in (0, 1):
            sex_counts = np.array([cnt[(x, s, e)] for x in (0, 1)])
            p_sex = sex_counts / sex_counts.sum()
            pe = q[s] if e else 1.0 - q[s]
            rows += [dict(sex=x, scanner=s, effusion=e, p=p_s[s] * pe * p_sex[x]) for x in (0, 1)]
    return pd.DataFrame(rows).sort_values(["sex", "scanner", "effusion"]).reset_index(drop=True)


def _draw(dist: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    p = dist["p"].to_numpy(float)
    cells = rng.choice(len(dist), size=n, p=p / p.sum())
    return dist.iloc[cells][list(PARENTS)].reset_index(drop=True).astype(np.int64)


def sample_parents(n: int, rng: np.random.Generator, effusion_prevalence: float | None = None,
                   scanner_effusion_odds_ratio: float | None = None) -> pd.DataFrame:
    """Draw ``n`` parent triples (columns sex, scanner, effusion; int) from
    :func:`parent_distribution` (the real PadChest joint by default)."""
    if n < 0:
        raise ValueError(f"sample_parents: n must be >= 0, got {n}")
    return _draw(parent_distribution(effusion_prevalence, scanner_effusion_odds_ratio), n, rng)


def split_parents(cfg: DataConfig, split: str) -> pd.DataFrame:
    """The parents of one split (deterministic from ``cfg.seed`` and the split name).

    pretrain/val: ``n_pretrain``/``n_val`` draws from the joint distribution. annotated:
    ``n_annotated_healthy`` healthy + ``n_annotated_effusion`` effusion images, sex and scanner from
    the configured joint's conditional distribution given effusion (paper section 3: 20 healthy + 50 PE). test:
    ``n_test`` images balanced over scanner x effusion (``n_test // 4`` per cell; a remainder goes
    to the first cells in the order (0,0), (0,1), (1,0), (1,1)), sex from P(sex | scanner, effusion).
    Rows of annotated and test are shuffled.
    """
    if split not in SPLIT_CODES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_CODES)}")
    rng = np.random.default_rng([cfg.seed, SPLIT_CODES[split], 7919])
    dist = parent_distribution(cfg.effusion_prevalence, cfg.scanner_effusion_odds_ratio)
    if split in ("pretrain", "val"):
        return _draw(dist, cfg.n_pretrain if split == "pretrain" else cfg.n_val, rng)
    parts = []
    if split == "annotated":
        for e, n in ((0, cfg.n_annotated_healthy), (1, cfg.n_annotated_effusion)):
            parts.append(_draw(dist[dist["effusion"] == e], n, rng))
    else:
        for k, (s, e) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            n = cfg.n_test // 4 + (1 if k < cfg.n_test % 4 else 0)
            parts.append(_draw(dist[(dist["scanner"] == s) & (dist["effusion"] == e)], n, rng))
    out = pd.concat(parts, ignore_index=True)
    return out.iloc[rng.permutation(len(out))].reset_index(drop=True)


def intervene(parents: pd.DataFrame, intervention: str) -> pd.DataFrame:
    """Parents with the intervened binary parent(s) flipped (``"none"``: unchanged copy)."""
    out = parents.copy()
    if intervention == "none":
        return out
    if intervention not in INTERVENED_PARENTS:
        raise KeyError(f"unknown intervention {intervention!r}; choose one of {INTERVENTIONS} or 'none'")
    for col in INTERVENED_PARENTS[intervention]:
        out[col] = 1 - out[col].astype(np.int64)
    return out


# ----------------------------------------------------------------------------------------------
# Exogenous noise
# ----------------------------------------------------------------------------------------------

NOISE_FIELDS = ("shape", "deform", "dome", "habitus", "height", "shift", "heart", "rib_phase", "rib_spacing",
                "eff_side", "eff_volume", "meniscus", "breast", "tex_seed", "acq_seed", "exposure",
                "marker", "silver_coef", "silver_amp", "quality_noise")


def sample_noise(n: int, seed: int, split: str, n_shapes: int, start: int = 0) -> dict[str, np.ndarray]:
    """Exogenous noise of items ``start .. start + n - 1`` of a split.

    Item ``i`` is drawn from its own generator seeded by ``(seed, split, i)``, so it does not
    depend on the split size. Fields (one row per image): shape (bank index), deform (8 smooth
    displacement coefficients), habitus/height/shift (thorax size and position), heart (size),
    rib_phase/rib_spacing, dome (per-lung diaphragm height), eff_side (0 right, 1 left,
    2 bilateral; drawn even without effusion),
    eff_volume (fraction of lung height filled medially), meniscus (lateral rise), breast (size,
    used for women), tex_seed/acq_seed (vessel texture, detector noise), exposure, marker
    (marker jitter), silver_coef/silver_amp (silver boundary jitter), quality_noise.
    """
    if split not in SPLIT_CODES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_CODES)}")
    cols: dict[str, list] = {k: [] for k in NOISE_FIELDS}
    for i in range(start, start + n):
        r = np.random.default_rng([seed, SPLIT_CODES[split], i])
        cols["shape"].append(r.integers(n_shapes))
        cols["deform"].append(r.normal(0, 1, 8))
        cols["dome"].append(r.normal(0, 1, 2))
        cols["habitus"].append(r.normal())
        cols["height"].append(r.normal())
        cols["shift"].append(r.normal(0, 1, 2))
        cols["heart"].append(r.normal())
        cols["rib_phase"].append(r.random())
        cols["rib_spacing"].append(r.normal())
        cols["eff_side"].append(r.choice(3, p=(0.4, 0.35, 0.25)))
        cols["eff_volume"].append(r.uniform(0.3, 0.75))
        cols["meniscus"].append(r.uniform(0.08, 0.2))
        cols["breast"].append(r.uniform(0.6, 1.3))
        cols["tex_seed"].append(r.integers(2**62))
        cols["acq_seed"].append(r.integers(2**62))
        cols["exposure"].append(r.normal())
        cols["marker"].append(r.random(2))
        cols["silver_coef"].append(r.normal(0, 1, 8))
        cols["silver_amp"].append(r.lognormal(0, 0.5))
        cols["quality_noise"].append(r.normal())
    ints = ("shape", "eff_side", "tex_seed", "acq_seed")
    widths = {"deform": 8, "dome": 2, "shift": 2, "marker": 2, "silver_coef": 8}
    return {k: np.asarray(v, np.int64 if k in ints else np.float64)
            .reshape((n,) + ((widths[k],) if k in widths else ())) for k, v in cols.items()}


def take(noise: dict[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    """Rows ``index`` (int, slice or array) of a noise dict, keeping the leading axis."""
    if isinstance(index, (int, np.integer)):
        index = [int(index)]
    return {k: v[index] for k, v in noise.items()}


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def _bilinear(grid: np.ndarray, idx: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Bilinear lookup ``grid[idx[b], y, x]`` at float positions (clamped to the grid).

    grid (K, R, C); idx (B,); y, x (B, H, W) in grid index units. Returns (B, H, W) float32.
    """
    r, c = grid.shape[1:]
    y0 = np.clip(np.floor(y), 0, r - 2).astype(np.int64)
    x0 = np.clip(np.floor(x), 0, c - 2).astype(np.int64)
    wy = np.clip(y - y0, 0, 1).astype(np.float32)
    wx = np.clip(x - x0, 0, 1).astype(np.float32)
    flat = grid.reshape(-1)
    i00 = (np.asarray(idx, np.int64)[:, None, None] * r + y0) * c + x0
    g00, g01 = flat.take(i00), flat.take(i00 + 1)
    g10, g11 = flat.take(i00 + c), flat.take(i00 + c + 1)
    return (g00 + (g01 - g00) * wx) * (1 - wy) + (g10 + (g11 - g10) * wx) * wy


def _ramp(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 1.0)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _ellipse_profile(u, v, cu, cv, ru, rv):
    """Thickness of an ellipsoid seen end-on: sqrt(1 - r^2) inside, 0 outside."""
    r2 = ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2
    return np.sqrt(_ramp(1.0 - r2))


def blur_radius(scanner: int, size: int) -> int:
    """Support radius (pixels) of the scanner's truncated Gaussian blur at this image size."""
    sigma = SCANNERS[int(scanner)]["blur"] * size
    return max(1, int(math.ceil(2.5 * sigma)))


def _check(noise: dict[str, np.ndarray], parents: pd.DataFrame, size: int) -> int:
    if not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an int in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
    missing = [k for k in NOISE_FIELDS if k not in noise]
    if missing:
        raise ValueError(f"noise lacks fields {missing}")
    n = len(noise["shape"])
    if len(parents) != n:
        raise ValueError(f"parents has {len(parents)} rows, noise has {n}")
    for col in PARENTS:
        if col not in parents.columns:
            raise ValueError(f"parents lacks column {col!r}")
        vals = parents[col].to_numpy()
        if not np.isin(vals, (0, 1)).all():
            raise ValueError(f"parents column {col!r} must hold 0/1, got {np.unique(vals)}")
    return n


def _scene(noise: dict[str, np.ndarray], sex: np.ndarray, size: int, bank: ShapeBank) -> dict[str, np.ndarray]:
    """Everything that depends on anatomy (and sex) but not on scanner or effusion.

    Returns float32 (B, H, W) fields: ``base`` (attenuation without lung air), ``air`` (lung air with
    vessel texture), ``fluid`` (potential fluid opacity 0..1, used when effusion = 1), ``sdf``
    (B, 2, H, W) signed distance of each lung in image units, ``silver_shift`` (boundary jitter).
    """
    b = len(sex)
    f32 = np.float32
    t = ((np.arange(size) + 0.5) / size).astype(f32)
    v, u = np.meshgrid(t, t, indexing="ij")
    u, v = u[None], v[None]  # (1, H, W)
    col = lambda a: np.asarray(a, f32).reshape(-1, 1, 1)  # noqa: E731

    shape = noise["shape"].astype(np.int64) % len(bank)
    sexf = col(sex)
    scale = (0.93 + 0.07 * sexf) * (1 + 0.05 * col(noise["habitus"]))
    width = 0.74 * scale
    height = np.minimum(width * col(bank.aspect[shape]) * (1 + 0.04 * col(noise["height"])), 0.72)
    cx = 0.5 + 0.012 * col(noise["shift"][:, 0])
    top = 0.08 + 0.012 * col(noise["shift"][:, 1])
    # Box coordinates with a smooth random deformation (sin basis, zero at the box edges).
    a = (u - (cx - width / 2)) / width
    bb = (v - top) / height
    c = np.asarray(noise["deform"], f32).reshape(b, 2, 2, 2) * f32(0.02)
    sa = [np.sin(np.pi * (j + 1) * a) for j in range(2)]
    sb = [np.sin(np.pi * (k + 1) * bb) for k in range(2)]
    da = sum(col(c[:, 0, j, k]) * sa[j] * sb[k] for j in range(2) for k in range(2))
    db = sum(col(c[:, 1, j, k]) * sa[j] * sb[k] for j in range(2) for k in range(2))
    a, bb = a + da, bb + db
    r = bank.sdf.shape[-1]
    # Diaphragm height: each lung's base moves by dome * 8 % of the box height (lower lung only),
    # independently per side, so a base hidden by fluid cannot be read off the other lung.
    dome = np.asarray(noise["dome"], f32)
    gx = (a + bank.margin) / (1 + 2 * bank.margin) * r - 0.5
    flat = bank.sdf.reshape(-1, r, r)
    sdf = []
    for k in (0, 1):
        bk = bb - f32(0.08) * col(dome[:, k]) * _smoothstep((bb - 0.3) / 0.7)
        gy = (bk + bank.margin) / (1 + 2 * bank.margin) * r - 0.5
        sdf.append(_bilinear(flat, shape * 2 + k, gy, gx))
    sdf = np.stack(sdf, 1) * width[:, None]
    depth = _smoothstep(-np.minimum(sdf[:, 0], sdf[:, 1]) / 0.045)

    ext = bank.extent[shape]  # (B, 2, 4): a_min, a_max, b_min, b_max per lung
    mid_a = 0.5 * (ext[:, 0, 1] + ext[:, 1, 0])
    spine_u = cx + (col(mid_a) - 0.5) * width

    # Body soft tissue: neck widening into the chest, thickness profile of a cylinder.
    half = 0.09 + (width * 0.62 - 0.09) * _smoothstep((v - top + 0.06) / 0.16)
    body = np.sqrt(_ramp(1 - ((u - spine_u) / half) ** 2)) ** 0.6
    base = DENSITY["body"] * body
    # Trachea: air column in the upper mediastinum.
    base -= DENSITY["trachea"] * _ramp(1 - np.abs(u - spine_u) / 0.02) \
        * (1 - _smoothstep((v - top - 0.25 * height) / 0.05))
    # Heart: ellipsoid at the lower mediastinum, shifted to the patient's left (image right).
    # Nothing except the lung air depends on the lung outline, so fluid, which replaces the air,
    # leaves no trace of the lung base (the gold mask is invisible under fluid).
    hs = 1 + 0.08 * col(noise["heart"])
    heart = _ellipse_profile(u, v, spine_u + 0.06 * width, top + 0.8 * height, 0.2 * width * hs, 0.16 * height * hs)
    base += DENSITY["heart"] * heart
    # Spine: a column with vertebral bodies (periodic) along v.
    period = 0.045 * height / 0.55
    vert = 0.8 + 0.2 * np.cos(2 * np.pi * (v - top) / period)
    base += DENSITY["spine"] * np.sqrt(_ramp(1 - ((u - spine_u) / 0.035) ** 2)) * vert
    # Posterior ribs: periodic bands following an arch (up then down laterally from the spine).
    ad = np.abs(u - spine_u) / (0.5 * width * 1.12)
    spacing = 0.095 * (1 + 0.04 * col(noise["rib_spacing"]))
    tr = (v - top + height * (0.10 * ad - 0.40 * ad ** 2)) / (spacing * height) + col(noise["rib_phase"])
    fr = tr - np.floor(tr)
    rib = _ramp(1 - ((fr - 0.5) / 0.2) ** 2) ** 0.5
    rib_fade = _smoothstep((ad - 0.07) / 0.08) * _smoothstep((1.08 - ad) / 0.1) \
        * _smoothstep((v - top + 0.03) / 0.05) * _smoothstep((top + 0.92 * height - v) / (0.15 * height))
    base += DENSITY["rib"] * rib * rib_fade
    # Clavicles: bands rising laterally from the sternal end.
    vcl = top + height * (0.04 - 0.12 * ad)
    clav = _ramp(1 - ((v - vcl) / 0.017) ** 2) ** 0.5 * _smoothstep((ad - 0.08) / 0.05) \
        * _smoothstep((0.85 - ad) / 0.08)
    base += DENSITY["clavicle"] * clav
    # Breasts (women): soft-tissue shadows over the lower lung fields, fading upwards.
    bsz = col(noise["breast"]) * (1 - sexf)
    for side in (-1, 1):
        prof = _ellipse_profile(u, v, spine_u + side * 0.3 * width, top + 0.78 * height,
                                0.3 * width, 0.24 * height)
        base += DENSITY["breast"] * bsz * prof * _smoothstep((v - top - 0.5 * height) / (0.25 * height))

    # Lung air, with vessel-like texture: ridges of smooth noise, stronger towards the hila.
    tex = _vessels(noise["tex_seed"], a, bb, ext)
    air = DENSITY["air"] * depth * (1 - DENSITY["vessel"] * tex)

    # Potential fluid: pleural space (lung dilated by 0.02) below a meniscus rising laterally.
    fluid = np.zeros_like(air)
    side = noise["eff_side"].astype(np.int64)
    for k in (0, 1):
        amin, amax, bmin, bmax = (col(ext[:, k, j]) for j in range(4))
        lat = _ramp((amax - a) / (amax - amin)) if k == 0 else _ramp((a - amin) / (amax - amin))
        level = bmax - col(noise["eff_volume"]) * (bmax - bmin) - col(noise["meniscus"]) * (bmax - bmin) * lat ** 2
        fk = _ramp((bb - level) * height / 0.012) * _ramp((0.02 - sdf[:, k]) / 0.01)
        on = col((side == k) | (side == 2))
        fluid = np.maximum(fluid, fk * on)

    sc = np.asarray(noise["silver_coef"], f32).reshape(b, 2, 2, 2)
    shift = sum(col(sc[:, 0, j, k]) * np.sin(np.pi * (j + 1) * a + 2 * sc[:, 1, j, k].reshape(-1, 1, 1)) * sb[k]
                for j in range(2) for k in range(2))
    shift = shift * col(noise["silver_amp"]) * f32(0.004)
    return dict(base=base.astype(f32), air=air.astype(f32), fluid=fluid.astype(f32),
                sdf=sdf.astype(f32), silver_shift=shift.astype(f32))


def _vessels(seeds: np.ndarray, a: np.ndarray, b: np.ndarray, ext: np.ndarray) -> np.ndarray:
    """Vessel-like texture 0..1 in box coordinates: ridges (zero crossings) of two octaves of
    smooth random fields drawn from ``tex_seed``, weighted towards the hila."""
    out = np.zeros(a.shape, np.float32)
    for octave, (g, w) in enumerate(((12, 1.0), (24, 0.6))):
        grids = np.stack([np.random.default_rng([int(s), octave]).normal(size=(g, g)) for s in seeds])
        grids = ndimage.gaussian_filter(grids, (0, 1.0, 1.0), mode="wrap").astype(np.float32)
        grids /= grids.std(axis=(1, 2), keepdims=True) + 1e-6
        n = _bilinear(grids, np.arange(len(seeds)), (b + 0.1) * (g - 1) / 1.2, (a + 0.1) * (g - 1) / 1.2)
        out += w * np.exp(-(n / 0.22) ** 2)
    hila = [(0.5 * (ext[:, k, 0] + ext[:, k, 1]) + (0.18 if k == 0 else -0.18) * (ext[:, k, 1] - ext[:, k, 0]),
             0.45 * np.ones(len(seeds))) for k in (0, 1)]
    dist = np.minimum(*[np.hypot(a - ha.reshape(-1, 1, 1), b - hb.reshape(-1, 1, 1)) for ha, hb in hila])
    return (out / 1.6 * (0.35 + 0.65 * np.exp(-dist / 0.25))).astype(np.float32)


def _acquire(scene: dict[str, np.ndarray], noise: dict[str, np.ndarray], effusion: np.ndarray,
             scanner: np.ndarray, size: int, white: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Image (B, H, W) uint8 of a scene under the given effusion and scanner (per image 0/1)."""
    f32 = np.float32
    e = effusion.astype(f32).reshape(-1, 1, 1)
    fl = scene["fluid"] * e
    dens = scene["base"] - scene["air"] * (1 - fl) + DENSITY["fluid_extra"] * fl
    out = np.empty(dens.shape, f32)
    t = ((np.arange(size) + 0.5) / size).astype(f32)
    v, u = np.meshgrid(t, t, indexing="ij")
    for s in (0, 1):
        sel = np.nonzero(scanner == s)[0]
        if len(sel) == 0:
            continue
        p = SCANNERS[s]
        sigma = p["blur"] * size
        rad = blur_radius(s, size)
        d = ndimage.gaussian_filter(dens[sel], (0, sigma, sigma), mode="reflect", radius=(0, rad, rad))
        centre = p["centre"] + 0.02 * noise["exposure"][sel].astype(f32).reshape(-1, 1, 1)
        lo = 1 / (1 + np.exp(p["slope"] * centre))
        img = (1 / (1 + np.exp(-p["slope"] * (d - centre))) - lo) / (1 - lo)
        img = p["black"] + (1 - p["black"]) * _ramp(img) ** p["gamma"]
        img = img + p["noise"] * ((1 - p["grain"]) * white[sel] + p["grain"] * grain[sel])
        if p["edge"] > 0:  # collimation: bright unexposed borders
            border = np.minimum(np.minimum(u, 1 - u), v)
            img = np.where(border[None] < p["edge"], 0.92 + 0.5 * p["noise"] * white[sel], img)
        mu = p["marker"][0] + 0.03 * (noise["marker"][sel, 0].reshape(-1, 1, 1) - 0.5)
        mv = p["marker"][1] + 0.02 * (noise["marker"][sel, 1].reshape(-1, 1, 1) - 0.5)
        mark = (np.abs(u - mu) < 0.025) & (np.abs(v - mv) < 0.02)
        img = np.where(mark, 0.97, img)
        out[sel] = img
    return np.round(_ramp(out) * 255).astype(np.uint8)


def _detector_noise(seeds: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """White and correlated (grain) unit-variance noise (B, H, W) from ``acq_seed``."""
    white = np.stack([np.random.default_rng([int(s), size]).standard_normal((size, size), np.float32)
                      for s in seeds]) if len(seeds) else np.zeros((0, size, size), np.float32)
    sig = max(0.6, size / 128)
    grain = ndimage.gaussian_filter(white, (0, sig, sig), mode="wrap")
    grain /= grain.std(axis=(1, 2), keepdims=True) + 1e-6
    return white, grain


def _labels(scene: dict[str, np.ndarray], effusion: np.ndarray, quality_noise: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold and silver label maps (B, H, W) uint8 and the silver quality score (B,)."""
    sdf = scene["sdf"]
    right, left = sdf[:, 0] < 0, sdf[:, 1] < 0
    gold = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)
    visible = ~((scene["fluid"] >= 0.5) & (effusion.reshape(-1, 1, 1) == 1))
    js = sdf + scene["silver_shift"][:, None]
    sr, sl = (js[:, 0] < 0) & visible, (js[:, 1] < 0) & visible
    silver = np.where(sr, 1, np.where(sl, 2, 0)).astype(np.uint8)
    dices = []
    for g, s in ((right, sr), (left, sl)):
        inter = (g & s).sum(axis=(1, 2))
        tot = g.sum(axis=(1, 2)) + s.sum(axis=(1, 2))
        dices.append(np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0))
    dice = 0.5 * (dices[0] + dices[1])
    quality = np.clip(1 - RCA_SENSITIVITY * (1 - dice) + 0.02 * quality_noise, 0, 1).astype(np.float32)
    return gold, silver, quality


def _bank() -> ShapeBank:
    """The lung shape bank (tests replace this with a small bank)."""
    return load_shape_bank()


def render(noise: dict[str, np.ndarray], parents: pd.DataFrame, size: int,
           batch: int | None = None) -> dict[str, np.ndarray]:
    """Render images and labels from exogenous noise and parents at ``size`` px.

    Returns ``image`` (N, H, W) uint8, ``gold`` and ``silver`` (N, H, W) uint8 label maps,
    ``fluid`` (N, H, W) bool (fluid present: effusion = 1 and inside the fluid support),
    ``effusion_region`` (N, H, W) bool (where do(effusion) can change the image: the potential
    fluid support dilated by the blur radius) and ``quality`` (N,) float32 (Dice of silver vs gold
    plus noise, a Dice-RCA-like score).
    """
    n = _check(noise, parents, size)
    bank = _bank()
    batch = batch or max(1, 2 ** 21 // (size * size))
    keys = ("image", "gold", "silver", "fluid", "effusion_region", "quality")
    parts: dict[str, list] = {k: [] for k in keys}
    sex, sc, ef = (parents[c].to_numpy(np.int64) for c in ("sex", "scanner", "effusion"))
    for lo in range(0, n, batch):
        sl = slice(lo, min(n, lo + batch))
        nz = {k: v[sl] for k, v in noise.items()}
        scene = _scene(nz, sex[sl], size, bank)
        white, grain = _detector_noise(nz["acq_seed"], size)
        parts["image"].append(_acquire(scene, nz, ef[sl], sc[sl], size, white, grain))
        gold, silver, q = _labels(scene, ef[sl], nz["quality_noise"])
        parts["gold"].append(gold), parts["silver"].append(silver), parts["quality"].append(q)
        support = scene["fluid"] > 0
        parts["fluid"].append(support & (ef[sl].reshape(-1, 1, 1) == 1))
        region = np.empty_like(support)
        for i, s in enumerate(sc[sl]):
            w = 2 * blur_radius(s, size) + 1
            region[i] = ndimage.maximum_filter(support[i], size=w, mode="constant", cval=False)
        parts["effusion_region"].append(region)
    if n == 0:
        empty = np.zeros((0, size, size), np.uint8)
        return dict(image=empty, gold=empty, silver=empty, fluid=empty.astype(bool),
                    effusion_region=empty.astype(bool), quality=np.zeros(0, np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def counterfactual(noise: dict[str, np.ndarray], parents: pd.DataFrame, intervention: str,
                   size: int) -> dict[str, np.ndarray]:
    """Exact counterfactual: the same noise rendered under do(intervention) (paper section 2.1).

    ``intervention`` is one of ``config.INTERVENTIONS`` (flips scanner, effusion or both) or
    ``"none"`` (the null intervention, pixel-identical to the factual). Same keys as :func:`render`.
    """
    return render(noise, intervene(parents, intervention), size)


def render_with_counterfactuals(noise: dict[str, np.ndarray], parents: pd.DataFrame, size: int
                                ) -> dict[str, np.ndarray]:
    """Factual render plus ``counterfactuals`` (N, 3, H, W) uint8 in ``config.INTERVENTIONS``
    order, sharing the anatomy between the four renders (what :func:`load_split` stores).
    Bit-identical to calling :func:`render` and :func:`counterfactual` separately."""
    n = _check(noise, parents, size)
    bank = _bank()
    sex, sc, ef = (parents[c].to_numpy(np.int64) for c in ("sex", "scanner", "effusion"))
    scene = _scene(noise, sex, size, bank)
    white, grain = _detector_noise(noise["acq_seed"], size)
    image = _acquire(scene, noise, ef, sc, size, white, grain)
    cfs = np.empty((n, len(INTERVENTIONS), size, size), np.uint8)
    for j, name in enumerate(INTERVENTIONS):
        p = intervene(parents, name)
        cfs[:, j] = _acquire(scene, noise, p["effusion"].to_numpy(np.int64), p["scanner"].to_numpy(np.int64),
                             size, white, grain)
    gold, silver, q = _labels(scene, ef, noise["quality_noise"])
    return dict(image=image, gold=gold, silver=silver, quality=q, counterfactuals=cfs)


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------

def config_hash(cfg: DataConfig) -> str:
    """Short hash of the DataConfig fields that affect the phantom, PHANTOM_VERSION and BANK_VERSION."""
    import hashlib

    d = asdict(cfg)
    payload = {k: d[k] for k in HASHED_FIELDS}
    payload.update(version=PHANTOM_VERSION, bank=BANK_VERSION)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def split_dir(cfg: DataConfig, split: str) -> Path:
    """``cache_dir()/phantom/<hash>/<split>``."""
    return cache_dir() / "phantom" / config_hash(cfg) / split


def _trusted(folder: Path, digest: str) -> dict | None:
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return None
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("hash") != digest or meta.get("version") != PHANTOM_VERSION:
        return None
    files = [f"{a}.npy" for a in ARRAYS] + ["parents.csv", "noise.npz"]
    if not all((folder / f).exists() for f in files):
        return None
    return meta


def generate_split(cfg: DataConfig, split: str, chunk: int | None = None) -> Path:
    """Render one split into its cache folder (arrays, parents, noise, then the manifest)."""
    if cfg.source != "phantom":
        raise ValueError(f"data.source is {cfg.source!r}; the phantom only serves 'phantom'")
    size = int(cfg.image_size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"data.image_size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    folder = split_dir(cfg, split)
    parents = split_parents(cfg, split)
    n = len(parents)
    bank = _bank()
    chunk = chunk or max(1, 2 ** 20 // (size * size))
    shapes = dict(images=(n, size, size), gold=(n, size, size), silver=(n, size, size),
                  quality=(n,), counterfactuals=(n, len(INTERVENTIONS), size, size))
    noise_parts = []
    with contextlib.ExitStack() as stack:
        arrays = {}
        for name in ARRAYS:
            tmp = stack.enter_context(atomic_path(folder / f"{name}.npy"))
            dtype = np.float32 if name == "quality" else np.uint8
            arrays[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shapes[name])
        for lo in tqdm(range(0, n, chunk), desc=f"phantom {split} ({n} images, {size} px)", unit="chunk",
                       disable=n == 0):
            hi = min(n, lo + chunk)
            nz = sample_noise(hi - lo, cfg.seed, split, len(bank), start=lo)
            noise_parts.append(nz)
            out = render_with_counterfactuals(nz, parents.iloc[lo:hi].reset_index(drop=True), size)
            arrays["images"][lo:hi] = out["image"]
            for name in ("gold", "silver", "quality", "counterfactuals"):
                arrays[name][lo:hi] = out[name]
        for arr in arrays.values():
            arr.flush()
        del arrays
        noise = ({k: np.concatenate([p[k] for p in noise_parts]) for k in NOISE_FIELDS} if noise_parts
                 else sample_noise(0, cfg.seed, split, len(bank)))
        with atomic_path(folder / "noise.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **noise)
        with atomic_path(folder / "parents.csv") as tmp:
            parents.to_csv(tmp, index=False)
    meta = dict(hash=config_hash(cfg), version=PHANTOM_VERSION, split=split, n=n, image_size=size,
                config={k: asdict(cfg)[k] for k in HASHED_FIELDS}, arrays=list(ARRAYS),
                noise_fields=list(NOISE_FIELDS), interventions=list(INTERVENTIONS),
                counts=parents.value_counts().sort_index().reset_index().to_dict("records"))
    with atomic_path(folder / "manifest.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=1, default=int))
    return folder


def _ensure(cfg: DataConfig, split: str) -> Path:
    if split not in SPLIT_CODES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_CODES)}")
    folder = split_dir(cfg, split)
    if _trusted(folder, config_hash(cfg)) is None:
        generate_split(cfg, split)
    return folder


def load_split(cfg: DataConfig, split: str) -> ChestSplit:
    """Load one phantom split, generating it on first use (see the module docstring).

    Arrays are memory-mapped read-only. Every split has gold masks, silver masks, quality
    scores and oracle counterfactuals (N, 3, H, W) in ``config.INTERVENTIONS`` order.
    """
    folder = _ensure(cfg, split)
    arr = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in ARRAYS}
    parents = pd.read_csv(folder / "parents.csv").astype(np.int64)
    n = len(parents)
    if any(len(a) != n for a in arr.values()):
        raise ValueError(f"phantom cache {folder} is inconsistent: delete the folder to regenerate")
    return ChestSplit(name=split, images=arr["images"], parents=parents, silver=arr["silver"],
                      gold=arr["gold"], quality=arr["quality"], counterfactuals=arr["counterfactuals"],
                      ids=[f"phantom-{split}-{i:05d}" for i in range(n)])


def load_noise(cfg: DataConfig, split: str) -> dict[str, np.ndarray]:
    """The stored exogenous noise of a split (generating the split if needed), for re-rendering."""
    folder = _ensure(cfg, split)
    with np.load(folder / "noise.npz", allow_pickle=False) as z:
        return {k: z[k] for k in NOISE_FIELDS}
