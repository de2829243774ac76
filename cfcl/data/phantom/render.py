"""The phantom's mechanisms: a PA chest radiograph and its labels from exogenous noise and parents.

Rendering happens in continuous coordinates, so any size 16..1024 px comes from the same
parameters: detector coordinates ``u`` (left -> right) and ``v`` (top -> bottom) in [0, 1] at
pixel centres; the patient frame (``u``, ``v`` after the in-plane tilt); the lung box ``a``, ``b``
(0..1 over the union box of both lungs, the coordinates of the shape bank, after deformation).

One image is produced in three stages (:func:`render`):

1. **Scene** (:func:`_scene`: depends on anatomy noise and sex only, so it is shared by the
   factual image and its three counterfactuals). The attenuation map ``D = base - air (1 - f e)``:
   ``base`` sums the body's soft tissue and what adds to it (spine and trachea, posterior and
   anterior ribs, clavicles, scapulae, pectoral muscles, breasts, a gastric air bubble, support
   devices), ``air`` is the lung air (the visible lung plus the lung hidden behind the heart and
   the diaphragm domes, with vessel texture), ``f`` the potential pleural fluid (drawn for every
   image) and ``e`` the effusion parent: fluid replaces air. Soft tissue is water-equivalent: the
   heart, mediastinum and diaphragm are not added to the body, they are seen only where they
   displace lung air (the outline of the real lung shapes), so fluid next to them erases their
   border (the silhouette sign) instead of leaving it visible.
2. **Acquisition** (:func:`_acquire`: the only place the scanner acts): point spread (a Gaussian
   truncated at :func:`blur_radius`), a transfer curve set by the scanner, the exposure and the
   tube voltage, detector noise, collimation borders and the side marker.
3. **Labels** (:func:`_labels`): the gold mask (the annotated lung outline, see below) and a
   silver mask imitating an automatic method, with a Dice-RCA-like quality score.

**Gold convention.** The gold mask is the lung outline a human annotator draws, the convention of
the real masks in the shape bank (JSRT/CheXmask style): lateral border at the inner chest wall,
medial border along the mediastinum and the heart silhouette, inferior border along the
diaphragm dome. The lung that really continues behind the heart and into the posterior
costophrenic recesses below the domes (radiographic anatomy: about a fifth of the lung volume
projects there) is *not* in the mask, but its air darkens the image there, so the mask's medial
and inferior borders are low-contrast steps rather than the end of the air. Under an effusion the
gold mask is the lung as the annotator expects it without fluid (the outline of the healthy
counterfactual, as in CF-Seg [13]): it never depends on effusion or scanner.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from cfcl.config import INTERVENTIONS, PARENTS
from cfcl.data.anatomy import ShapeBank
from cfcl.data.phantom import scm
from cfcl.data.phantom.scm import NOISE_FIELDS, intervene

MIN_SIZE, MAX_SIZE = 16, 1024
EFFUSION_SIDES = ("right", "left", "bilateral")
EFFUSION_KINDS = ("layering", "subpulmonic", "loculated")
DEVICES = ("ecg", "central_line", "ng_tube", "pacemaker", "et_tube")
# Share of images carrying each device (PadChest is largely an in-patient hospital archive).
DEVICE_PREVALENCE = (0.35, 0.12, 0.06, 0.05, 0.04)

# Scanner mechanisms (acquisition only). blur: Gaussian sigma in image units (fraction of the
# side); slope/centre/gamma: transfer curve I = sigmoid(slope (D - centre))**gamma rescaled;
# black: level of the darkest output; noise: detector noise std; grain: share of spatially
# correlated noise; edge: width of bright collimation borders; marker: (u, v) of the side marker
# (and of its alternative place over the upper lateral field).
SCANNERS: tuple[dict[str, Any], ...] = (
    dict(blur=0.0035, slope=4.0, centre=0.50, gamma=1.0, black=0.03, noise=0.02, grain=0.0,
         edge=0.0, marker=(0.90, 0.06), field_marker=(0.84, 0.22)),
    dict(blur=0.0070, slope=2.9, centre=0.44, gamma=1.3, black=0.12, noise=0.035, grain=0.8,
         edge=0.035, marker=(0.10, 0.06), field_marker=(0.16, 0.22)),
)
FIELD_MARKER_RATE = 0.2  # share of images whose marker sits over the upper lateral lung field

# Nominal height of the rib cage from the apex to the 10th posterior rib, over the thorax width
# (the median lung-box aspect of the shape bank).
RIB_HEIGHT = 0.8
DOME_SD = 0.10  # sd of each hemidiaphragm's height, in lung heights

# Silver quality score: 1 - RCA_SENSITIVITY * (1 - Dice(silver, gold)) + 0.02 noise. Like Dice RCA,
# which judges plausibility without the ground truth, it sees only part of the real error.
RCA_SENSITIVITY = 0.5

# Densities (attenuation, arbitrary units) of the anatomy and devices.
DENSITY = dict(body=0.78, air=0.40, vessel=0.5, spine=0.22, trachea=0.10, rib=0.085,
               anterior_rib=0.04, clavicle=0.20, scapula=0.07, pectoral=0.06, breast=0.09,
               gastric=0.18, electrode=0.9, wire=0.5, catheter=0.6, tube=0.45, pacemaker=1.2)


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------

def _col(x: Any) -> np.ndarray:
    """Per-image values as (B, 1, 1) float32, to broadcast against (B, H, W) fields."""
    return np.asarray(x, np.float32).reshape(-1, 1, 1)


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


def _splat(img: np.ndarray, u: np.ndarray, v: np.ndarray, w: np.ndarray, size: int) -> None:
    """Add point masses ``w`` (per unit area of the image) at ``(u, v)`` into ``img`` (B, H, W) by
    bilinear splatting; ``u``, ``v``, ``w`` are (B, P). Resolution-independent line rendering: a
    curve sampled every ``ds`` with weight ``density * width * ds`` keeps its integral at any size."""
    b, p = u.shape
    if b == 0 or p == 0:
        return
    x, y = u * size - 0.5, v * size - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    bi = np.broadcast_to(np.arange(b)[:, None], (b, p))
    flat = img.reshape(-1)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            xi, yi = x0 + dx, y0 + dy
            ok = (xi >= 0) & (xi < size) & (yi >= 0) & (yi < size) & (w != 0)
            idx = ((bi * size + yi) * size + xi)[ok]
            flat += np.bincount(idx, (w * wx * wy * size * size)[ok], minlength=flat.size).astype(np.float32)


def _bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic Bezier curves through control points (B, 2) each: points (B, n, 2) and the arc
    length element ``ds`` (B, n) of each sample."""
    t = ((np.arange(n) + 0.5) / n)[None, :, None]
    pts = (1 - t) ** 2 * p0[:, None] + 2 * (1 - t) * t * p1[:, None] + t ** 2 * p2[:, None]
    deriv = 2 * (1 - t) * (p1 - p0)[:, None] + 2 * t * (p2 - p1)[:, None]
    return pts, np.hypot(deriv[..., 0], deriv[..., 1]) / n


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


# ----------------------------------------------------------------------------------------------
# Geometry: posture, thorax and the lungs
# ----------------------------------------------------------------------------------------------

def _patient_frame(noise: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patient coordinates (B, H, W): the detector grid turned by the patient's in-plane tilt
    (``tilt``, sd 1.5 degrees about the chest centre: patients never stand exactly straight)."""
    t = ((np.arange(size) + 0.5) / size).astype(np.float32)
    v, u = np.meshgrid(t, t, indexing="ij")
    th = _col(noise["tilt"]) * np.float32(math.radians(1.5))
    c, s = np.cos(th), np.sin(th)
    du, dv = u[None] - 0.5, v[None] - 0.55
    return 0.5 + c * du - s * dv, 0.55 + s * du + c * dv


def _geometry(noise: dict[str, np.ndarray], sex: np.ndarray, size: int, bank: ShapeBank) -> dict[str, Any]:
    """Thorax placement and the lungs' signed distance fields.

    - ``habitus`` and sex set the thorax width (women 7 % smaller); ``shift`` its position.
    - ``inspiration`` sets the lung height (sd 6 %): a shallow breath gives short lungs with high
      domes, a deep one long lungs (the bank's aspect ratio times this factor).
    - ``rotation`` (about the vertical axis; positive: the patient's left side turned away from
      the detector) projects the left hemithorax wider and the right one narrower, and moves the
      spine off the midline between the sternal ends of the clavicles (the radiographer's check).
    - ``deform``: a smooth displacement of the lung box (3 x 3 sine modes per axis, sd 1.5 % of
      the box) varies every real shape of the bank.
    - ``dome``: each hemidiaphragm (lung base) moves independently by sd ``DOME_SD`` (10 %) of the
      lung height (elevated hemidiaphragms are common in hospital patients), so a base hidden by
      fluid cannot be read off the other side.
    - ``hidden``: the lung hidden behind the heart and below the domes, a copy of each lung shifted
      down (posterior costophrenic recess, 4-12 % of the height) and medially (retrocardiac lower
      lobe, up to 7 % of the width, only below the hilum).

    Returns u, v (patient frame), a, bb (lung box), width, height, spine_u, ext (bank extents),
    sdf and sdf_hidden (B, 2, H, W, image units, negative inside; lung 0 right, 1 left) and the
    hidden-lung parameters.
    """
    f32 = np.float32
    b = len(sex)
    u, v = _patient_frame(noise, size)
    shape = noise["shape"].astype(np.int64) % len(bank)
    sexf = _col(sex)
    scale = (0.93 + 0.07 * sexf) * (1 + 0.05 * _col(noise["habitus"]))
    width = 0.74 * scale
    height = np.minimum(width * _col(bank.aspect[shape]) * (1 + 0.06 * _col(noise["inspiration"])), 0.76)
    cx = 0.5 + 0.012 * _col(noise["shift"][:, 0])
    top = 0.08 + 0.012 * _col(noise["shift"][:, 1])
    a = (u - (cx - width / 2)) / width
    a = a + f32(0.025) * _col(noise["rotation"]) * np.sin(np.pi * _ramp(a))
    bb = (v - top) / height
    c = np.asarray(noise["deform"], f32).reshape(b, 2, 3, 3) * f32(0.015)
    sa = [np.sin(np.pi * (j + 1) * a) for j in range(3)]
    sb = [np.sin(np.pi * (k + 1) * bb) for k in range(3)]
    da = sum(sa[j] * sum(_col(c[:, 0, j, k]) * sb[k] for k in range(3)) for j in range(3))
    db = sum(sa[j] * sum(_col(c[:, 1, j, k]) * sb[k] for k in range(3)) for j in range(3))
    a, bb = a + da, bb + db

    r = bank.sdf.shape[-1]
    flat = bank.sdf.reshape(-1, r, r)
    to_grid = lambda x: (x + bank.margin) / (1 + 2 * bank.margin) * r - 0.5  # noqa: E731
    dome = np.asarray(noise["dome"], f32)
    hid = np.asarray(noise["hidden"], f32)
    recess = _col(0.04 + 0.08 * hid[:, 0])
    medial = _col(0.02 + 0.05 * hid[:, 1]) * _smoothstep((bb - 0.4) / 0.3)
    sdf, sdf_hidden = [], []
    for k, toward_midline in ((0, 1.0), (1, -1.0)):
        bk = bb - f32(DOME_SD) * _col(dome[:, k]) * _smoothstep((bb - 0.3) / 0.7)
        own = _bilinear(flat, shape * 2 + k, to_grid(bk), to_grid(a))
        moved = _bilinear(flat, shape * 2 + k, to_grid(bk - recess), to_grid(a - toward_midline * medial))
        sdf.append(own)
        sdf_hidden.append(np.minimum(own, moved))
    sdf = np.stack(sdf, 1) * width[:, None]
    sdf_hidden = np.stack(sdf_hidden, 1) * width[:, None]

    ext = bank.extent[shape]  # (B, 2, 4): a_min, a_max, b_min, b_max per lung
    mid_a = 0.5 * (ext[:, 0, 1] + ext[:, 1, 0])
    spine_u = cx + (_col(mid_a) - 0.5) * width - 0.012 * _col(noise["rotation"])
    return dict(u=u, v=v, a=a, bb=bb, width=width, height=height, top=top, cx=cx, spine_u=spine_u,
                ext=ext, sdf=sdf.astype(f32), sdf_hidden=sdf_hidden.astype(f32), recess=recess,
                dome=DOME_SD * dome, sexf=sexf)


# ----------------------------------------------------------------------------------------------
# Anatomy: one function per structure, each an attenuation field (B, H, W)
# ----------------------------------------------------------------------------------------------

def _body(g: dict[str, Any]) -> np.ndarray:
    """Soft tissue of the neck, shoulders and chest: the thickness profile of a cylinder whose
    half-width widens from the neck into the chest."""
    u, v, top, width = g["u"], g["v"], g["top"], g["width"]
    half = 0.09 + (width * 0.62 - 0.09) * _smoothstep((v - top + 0.06) / 0.16)
    return DENSITY["body"] * np.sqrt(_ramp(1 - ((u - g["spine_u"]) / half) ** 2)) ** 0.8


def _spine_trachea(g: dict[str, Any]) -> np.ndarray:
    """Spine (a column of vertebral bodies, periodic along v) and the tracheal air column in the
    upper mediastinum."""
    u, v, top, height, su = g["u"], g["v"], g["top"], g["height"], g["spine_u"]
    period = 0.045 * height / 0.55
    vert = 0.8 + 0.2 * np.cos(2 * np.pi * (v - top) / period)
    out = DENSITY["spine"] * np.sqrt(_ramp(1 - ((u - su) / 0.035) ** 2)) * vert
    out -= DENSITY["trachea"] * _ramp(1 - np.abs(u - su) / 0.02) * (1 - _smoothstep((v - top - 0.25 * height) / 0.05))
    return out


def _ribs(g: dict[str, Any], noise: dict[str, np.ndarray]) -> np.ndarray:
    """Posterior ribs (bands arching up then down laterally from the spine, ``rib_phase`` and
    ``rib_spacing``) and the fainter anterior ribs (descending medially from the chest wall,
    fading where the costal cartilage is radiolucent).

    The rib cage belongs to the thorax, not to the lungs: its spacing scales with the thorax
    width (``RIB_HEIGHT`` of it from the apex to the 10th rib), and the lower ribs continue below
    the domes. How many ribs lie above a dome therefore varies with inspiration and lung shape,
    the radiologist's inspiration check, and the ribs do not reveal a base hidden by fluid."""
    u, v, top, width = g["u"], g["v"], g["top"], g["width"]
    h = RIB_HEIGHT * width  # nominal apex-to-10th-rib height of this thorax
    ad = np.abs(u - g["spine_u"]) / (0.5 * width * 1.12)
    spacing = 0.095 * (1 + 0.06 * _col(noise["rib_spacing"]))
    phase = _col(noise["rib_phase"])
    tr = (v - top + h * (0.10 * ad - 0.40 * ad ** 2)) / (spacing * h) + phase
    fr = tr - np.floor(tr)
    rib = _ramp(1 - ((fr - 0.5) / 0.2) ** 2) ** 0.5
    fade = _smoothstep((ad - 0.07) / 0.08) * _smoothstep((1.08 - ad) / 0.1) \
        * _smoothstep((v - top + 0.03) / 0.05) * _smoothstep((top + 1.25 * h - v) / (0.3 * h))
    out = DENSITY["rib"] * rib * fade
    ta = (v - top - h * (0.05 + 0.30 * (1 - ad))) / (1.5 * spacing * h) + phase + 0.3
    fa = ta - np.floor(ta)
    ant = _ramp(1 - ((fa - 0.5) / 0.16) ** 2) ** 0.5 * _smoothstep((ad - 0.35) / 0.2) \
        * _smoothstep((1.05 - ad) / 0.08) * _smoothstep((top + 1.0 * h - v) / (0.25 * h))
    return out + DENSITY["anterior_rib"] * ant


def _clavicles(g: dict[str, Any]) -> np.ndarray:
    """Clavicles: bands rising laterally from the sternal ends (which stay symmetric about the
    sternum when the patient is rotated, unlike the spine)."""
    u, v, top, height, width = g["u"], g["v"], g["top"], g["height"], g["width"]
    ad = np.abs(u - g["cx"]) / (0.5 * width * 1.12)
    vcl = top + height * (0.04 - 0.12 * ad)
    return DENSITY["clavicle"] * _ramp(1 - ((v - vcl) / 0.017) ** 2) ** 0.5 * _smoothstep((ad - 0.08) / 0.05) \
        * _smoothstep((0.85 - ad) / 0.08)


def _scapulae(g: dict[str, Any], noise: dict[str, np.ndarray]) -> np.ndarray:
    """Scapulae: a plate lateral to a slanted medial border over the upper lateral lung field.
    With the shoulders well rotated forward the border lies outside the lung (``scapula`` near 1);
    otherwise it crosses the field as a line that mimics a lung edge (common in real PA films)."""
    u, v, top, height, width = g["u"], g["v"], g["top"], g["height"], g["width"]
    d = u - g["spine_u"]
    ad = np.abs(d) / (0.5 * width)
    sc = np.asarray(noise["scapula"], np.float32)
    pos = np.where(d < 0, _col(sc[:, 0]), _col(sc[:, 1]))
    border = 0.55 + 0.5 * pos + 0.25 * (v - top) / height
    vert = _smoothstep((v - top + 0.04) / 0.05) * _smoothstep((top + 0.5 * height - v) / (0.12 * height))
    return DENSITY["scapula"] * _smoothstep((ad - border) / 0.04) * vert


def _chest_wall_soft_tissue(g: dict[str, Any], noise: dict[str, np.ndarray]) -> np.ndarray:
    """Pectoral muscles and breasts, soft-tissue shadows over the lung fields.

    Pectorals (``pectoral``: bulk; larger in men): a sheet over the upper lateral field ending at
    the anterior axillary fold, an oblique edge. Breasts (``breast``: size, ptosis, lateral
    position; women, small adipose shadows in men): an ellipsoid on the lower chest (placed on
    the thorax, not on the lungs) whose inferior convex margin crosses the lung base and
    costophrenic angle, fading upwards.
    """
    u, v, top, height, width, su, sexf = g["u"], g["v"], g["top"], g["height"], g["width"], g["spine_u"], g["sexf"]
    ad = np.abs(u - su) / (0.5 * width)
    fold = top + height * (0.12 + 0.55 * (ad - 0.45))
    bulk = (0.6 + 0.4 * sexf) * (0.4 + 0.6 * _col(noise["pectoral"]))
    out = DENSITY["pectoral"] * bulk * _smoothstep((fold - v) / 0.04) * _smoothstep((ad - 0.4) / 0.2) \
        * _smoothstep((v - top + 0.02) / 0.05)
    br = np.asarray(noise["breast"], np.float32)
    size = (0.3 + 1.0 * _col(br[:, 0])) * (1 - sexf) + 0.3 * _col(br[:, 0]) * sexf
    cv = top + RIB_HEIGHT * width * (0.8 + 0.15 * _col(br[:, 1]))
    lat = (0.26 + 0.08 * _col(br[:, 2])) * width
    ru, rv = 0.24 * width * np.sqrt(size), 0.15 * width * np.sqrt(size)
    for side in (-1, 1):
        prof = _ellipse_profile(u, v, su + side * lat, cv, ru, rv)
        out += DENSITY["breast"] * size * prof * _smoothstep((v - cv + 1.2 * rv) / (1.5 * rv))
    return out


def _gastric_bubble(g: dict[str, Any], noise: dict[str, np.ndarray]) -> np.ndarray:
    """Gastric air bubble under the left hemidiaphragm (``gastric``: present in 60 %, size,
    offset): a dark pocket just below the left lung base, separated from it by the diaphragm."""
    u, v, top, height, width, ext = g["u"], g["v"], g["top"], g["height"], g["width"], g["ext"]
    gs = np.asarray(noise["gastric"], np.float32)
    cu = g["cx"] + (_col(0.5 * (ext[:, 1, 0] + ext[:, 1, 1])) - 0.5 + 0.1 * _col(gs[:, 2])) * width
    rv = (0.03 + 0.04 * _col(gs[:, 1])) * height
    cv = top + _col(ext[:, 1, 3] + g["dome"][:, 1]) * height + 0.5 * g["recess"] * height + 0.02 + rv
    present = _col(gs[:, 0] < 0.6)
    return -DENSITY["gastric"] * present * _ellipse_profile(u, v, cu, cv, 1.6 * rv, rv)


def _lung_air(g: dict[str, Any], noise: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Lung air thickness (B, H, W) 0..1 and the hidden share of it.

    Visible lung: full thickness inside the gold outline, thinning towards the edge over a width
    set by ``edge`` (2-9 % of the image: the lung periphery is thin in projection; how thin
    depends on the chest's shape). The lung is thickest right above the domes, so towards the
    base that width shrinks to 30 %: a healthy dome is a crisp interface. Hidden lung (behind the
    heart and below the domes, see :func:`_geometry`): a fraction ``0.2-0.45`` of the thickness
    (``hidden[2]``), fading away from the visible lung, so the medial and lower-medial borders are
    shallow steps."""
    w_edge = np.clip(0.045 * np.exp(0.35 * _col(noise["edge"])), 0.02, 0.09)
    w_edge = w_edge * (1 - 0.7 * _smoothstep((g["bb"] - 0.55) / 0.3))  # thick right down to the domes
    sdf = np.minimum(g["sdf"][:, 0], g["sdf"][:, 1])
    visible = _smoothstep(-sdf / w_edge)
    frac = _col(0.2 + 0.25 * np.asarray(noise["hidden"], np.float32)[:, 2])
    hid_sdf = np.minimum(g["sdf_hidden"][:, 0], g["sdf_hidden"][:, 1])
    fade = _ramp(1 - np.maximum(sdf, 0) / (g["recess"] * g["height"] + 0.02))
    hidden = frac * _smoothstep(-hid_sdf / 0.03) * fade
    return np.maximum(visible, hidden), hidden


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


# ----------------------------------------------------------------------------------------------
# Support devices and lines
# ----------------------------------------------------------------------------------------------

def _devices(g: dict[str, Any], noise: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Support devices (B, H, W) attenuation, drawn as thin curves and small objects by splatting.

    Independent of every parent (a simplification: sicker patients carry more devices), so no
    intervention moves them. ``devices``: presence of each of :data:`DEVICES` at
    :data:`DEVICE_PREVALENCE`; ``ecg``: up to three chest electrodes (ring with a central snap)
    with a lead wire curving to the image edge; ``lines``: the courses of a central venous
    catheter (subclavian to the superior vena cava), a nasogastric tube (midline down through the
    left dome), a pacemaker (generator over the upper left chest, lead into the heart) and an
    endotracheal tube (in the trachea, tip above the carina). Curves are quadratic Bezier curves
    whose control points follow the anatomy of :func:`_geometry`.
    """
    b = len(noise["shape"])
    out = np.zeros((b,) + g["u"].shape[1:], np.float32)
    if b == 0:
        return out
    on = np.asarray(noise["devices"]) < np.asarray(DEVICE_PREVALENCE)[None]
    ecg = np.asarray(noise["ecg"], np.float64)
    ln = np.asarray(noise["lines"], np.float64)
    su, top, w, cx = (x.reshape(-1).astype(np.float64) for x in (g["spine_u"], g["top"], g["width"], g["cx"]))
    h = RIB_HEIGHT * w  # devices are placed on the body, not on the lungs
    th = np.asarray(noise["tilt"], np.float64) * math.radians(1.5)
    n = max(16, 3 * size)  # samples per curve: under half a pixel apart for curves up to ~1.5 long
    pts_u, pts_v, pts_w = [], [], []

    def curve(p0, p1, p2, density_width, present):
        pts, ds = _bezier(np.stack(p0, 1), np.stack(p1, 1), np.stack(p2, 1), n)
        pts_u.append(pts[..., 0]), pts_v.append(pts[..., 1])
        pts_w.append(density_width * ds * present[:, None])

    def ring(cu, cv, radius, density_width, present, centre_mass):
        t = 2 * np.pi * (np.arange(n // 2) + 0.5) / (n // 2)
        pts_u.append(cu[:, None] + radius * np.cos(t)[None]), pts_v.append(cv[:, None] + radius * np.sin(t)[None])
        pts_w.append(np.broadcast_to((density_width * 2 * np.pi * radius / (n // 2) * present)[:, None],
                                     (b, n // 2)))
        pts_u.append(cu[:, None]), pts_v.append(cv[:, None]), pts_w.append((centre_mass * present)[:, None])

    # ECG electrodes over the chest, lead wires running to the lower or lateral image edge.
    for j in range(3):
        present = (on[:, 0] & (ecg[:, j, 2] < 0.8 - 0.2 * j)).astype(np.float64)
        cu = cx + (ecg[:, j, 0] - 0.5) * 0.9 * w
        cv = top + (0.1 + 0.8 * ecg[:, j, 1]) * h
        ring(cu, cv, 0.012, DENSITY["electrode"] * 0.004, present, DENSITY["electrode"] * 0.012 ** 2)
        side = np.sign(cu - cx + 1e-9)
        end = (cu + side * 0.5, np.full(b, 1.02))
        bend = (cu + side * (0.1 + 0.2 * ecg[:, j, 2]), cv + 0.3)
        curve((cu, cv), bend, end, DENSITY["wire"] * 0.003, present)
    # Central venous catheter: from the right subclavian vein to the superior vena cava.
    p = on[:, 1].astype(np.float64)
    tip = (su - 0.03 * w, top + (0.3 + 0.1 * ln[:, 0, 0]) * h)
    entry = (su - (0.28 + 0.08 * ln[:, 0, 1]) * w, top + 0.02 * h)
    curve(entry, (su - 0.05 * w, top + (0.02 + 0.05 * ln[:, 0, 2]) * h), tip, DENSITY["catheter"] * 0.004, p)
    curve((entry[0] - 0.15, np.full(b, -0.02)), (entry[0] - 0.05 * ln[:, 0, 3], entry[1] - 0.03), entry,
          DENSITY["catheter"] * 0.004, p)
    # Nasogastric tube: midline down the oesophagus, through the left dome into the stomach.
    p = on[:, 2].astype(np.float64)
    ge = (su + 0.08 * w, top + 1.0 * h)
    curve((su + 0.005, np.full(b, -0.02)), (su + 0.01 * (ln[:, 1, 0] - 0.5), top + 0.5 * h), ge,
          DENSITY["tube"] * 0.006, p)
    curve(ge, (su + (0.15 + 0.1 * ln[:, 1, 1]) * w, top + 1.1 * h),
          (su + 0.1 * w, top + (1.15 + 0.05 * ln[:, 1, 2]) * h), DENSITY["tube"] * 0.006, p)
    # Pacemaker: generator box over the upper left chest (image right), lead to the right ventricle.
    p = on[:, 3].astype(np.float64)
    gu, gv = su + (0.3 + 0.08 * ln[:, 2, 0]) * w, top + (0.06 + 0.06 * ln[:, 2, 1]) * h
    k = max(4, size // 8)
    gx, gy = np.meshgrid((np.arange(k) + 0.5) / k - 0.5, (np.arange(k) + 0.5) / k - 0.5)
    pts_u.append(gu[:, None] + 0.06 * gx.reshape(1, -1)), pts_v.append(gv[:, None] + 0.045 * gy.reshape(1, -1))
    pts_w.append(np.broadcast_to((DENSITY["pacemaker"] * 0.06 * 0.045 / k ** 2 * p)[:, None], (b, k * k)))
    curve((gu, gv), (su - 0.1 * w, top + (0.25 + 0.1 * ln[:, 2, 2]) * h), (su + 0.12 * w, top + 0.85 * h),
          DENSITY["wire"] * 0.004, p)
    # Endotracheal tube: in the trachea, tip 4-7 % of the lung height above the carina.
    p = on[:, 4].astype(np.float64)
    curve((su + 0.01 * (ln[:, 3, 0] - 0.5), np.full(b, -0.02)), (su, top), (su, top + (0.13 + 0.06 * ln[:, 3, 1]) * h),
          DENSITY["tube"] * 0.012, p)

    pu, pv, pw = (np.concatenate(x, 1) for x in (pts_u, pts_v, pts_w))
    # Patient frame -> detector frame (inverse of the tilt of _patient_frame).
    c, s = np.cos(th)[:, None], np.sin(th)[:, None]
    du, dv = pu - 0.5, pv - 0.55
    _splat(out, 0.5 + c * du + s * dv, 0.55 - s * du + c * dv, pw, size)
    return out


# ----------------------------------------------------------------------------------------------
# Pleural effusion
# ----------------------------------------------------------------------------------------------

def _fluid(g: dict[str, Any], noise: dict[str, np.ndarray]) -> np.ndarray:
    """Potential pleural fluid opacity 0..1 (B, H, W), drawn for every image, used when effusion = 1.

    Fluid fills the pleural space (the visible and hidden lung, dilated by 0.02) of the side(s)
    ``eff_side`` and replaces the lung air there, so it hides the lung base, the diaphragm and the
    heart border (silhouette sign). ``eff_volume`` sets the fill per side from small (the
    posterior recess and a blunted costophrenic angle: subtle) to massive (most of the
    hemithorax). Three kinds (``eff_kind``):

    - layering (65 %): a level rising laterally as a meniscus (``meniscus``), its upper margin
      sharp or a veil fading over up to 7 % of the image (``eff_soft``);
    - subpulmonic (25 %): fluid under the lung with a sharp dome-shaped top peaking laterally: it
      mimics a raised hemidiaphragm, so the lung looks shorter than it is;
    - loculated (10 %): a lenticular collection against the lateral chest wall at a height and
      size and opacity from ``loculus``, with convex margins, plus a small layering component.

    Above a layering or subpulmonic level the compressed lung loses air (compressive atelectasis,
    ``atelectasis``: 25-70 % of the air over a band of 2-8 % of the image, irregular): a hazy,
    ill-defined transition from fluid to aerated lung. It is a consequence of the fluid, so it is
    part of this field and appears and vanishes with it under do(effusion); the lung stays lung,
    so the gold mask keeps it.
    """
    a, bb, height, ext = g["a"], g["bb"], g["height"], g["ext"]
    kind = noise["eff_kind"].astype(np.int64).reshape(-1, 1, 1)
    side = noise["eff_side"].astype(np.int64)
    vol_u = np.asarray(noise["eff_volume"], np.float32)
    soft = _col(0.01 + 0.06 * np.asarray(noise["eff_soft"], np.float32) ** 2)
    loc = np.asarray(noise["loculus"], np.float32)
    at = np.asarray(noise["atelectasis"], np.float32)
    atel_amp = _col(0.25 + 0.45 * at[:, 0])
    atel_band = _col(0.02 + 0.06 * at[:, 1])
    atel_wave = 0.7 + 0.3 * np.sin(2 * np.pi * (3 * a + 1.5 * bb + _col(at[:, 2])))
    fluid = np.zeros_like(a)
    for k in (0, 1):
        amin, amax, bmin, bmax = (_col(ext[:, k, j]) for j in range(4))
        span = bmax - bmin
        lat = _ramp((amax - a) / (amax - amin)) if k == 0 else _ramp((a - amin) / (amax - amin))
        floor = bmax + _col(g["dome"][:, k]) + g["recess"]
        vol = _col(0.1 + 0.85 * vol_u[:, k] ** 0.4)
        layering = floor - vol * span - _col(0.05 + 0.15 * np.asarray(noise["meniscus"])) * span * lat ** 2
        subpulmonic = floor - 0.6 * vol * span - 0.1 * span * (1 - ((lat - 0.65) / 0.65) ** 2)
        level = np.where(kind == 1, subpulmonic, layering)
        sharp = np.where(kind == 1, np.float32(0.006), soft)
        fk = np.maximum(_ramp((bb - level) * height / sharp), atel_amp * atel_wave
                        * _ramp(1 - (level - bb) * height / atel_band) * (bb < level))
        cb = bmin + (0.35 + 0.4 * _col(loc[:, 0])) * span
        ra, rb = 0.25 + 0.25 * _col(loc[:, 1]), (0.12 + 0.15 * _col(loc[:, 1])) * span
        lens = _ramp((1 - ((1 - lat) / ra) ** 2 - ((bb - cb) / rb) ** 2) / 0.15) * (0.6 + 0.4 * _col(loc[:, 2]))
        small = _ramp((bb - (floor - 0.15 * span)) * height / 0.01)
        fk = np.where(kind == 2, np.maximum(lens, small), fk)
        pleura = _ramp((0.02 - g["sdf_hidden"][:, k]) / 0.01)
        on = _col((side == k) | (side == 2))
        fluid = np.maximum(fluid, fk * pleura * on)
    return fluid


# ----------------------------------------------------------------------------------------------
# Scene, acquisition, labels
# ----------------------------------------------------------------------------------------------

def _silver_shift(g: dict[str, Any], noise: dict[str, np.ndarray], hidden: np.ndarray) -> np.ndarray:
    """Boundary error of the automatic (silver) segmentation, added to the gold SDF.

    A smooth random jitter (``silver_coef``, ``silver_amp``: sd ~0.4 % of the image) that grows
    up to threefold where the border has little contrast (where hidden lung continues behind it:
    heart border, domes), plus an inward bias there: a landmark model with a shape prior
    (HybridGNet, behind CheXmask) stops early at low-contrast borders."""
    a, bb = g["a"], g["bb"]
    b = len(a)
    sc = np.asarray(noise["silver_coef"], np.float32).reshape(b, 2, 2, 2)
    sa = [np.sin(np.pi * (j + 1) * a) for j in range(2)]
    jitter = sum(_col(sc[:, 0, j, k]) * sa[j] * np.sin(np.pi * (k + 1) * bb + 2 * _col(sc[:, 1, j, k]))
                 for j in range(2) for k in range(2))
    low = _ramp(hidden / 0.3)
    return (jitter * _col(noise["silver_amp"]) * np.float32(0.004) * (1 + 2 * low) + np.float32(0.008) * low)


def _scene(noise: dict[str, np.ndarray], sex: np.ndarray, size: int, bank: ShapeBank) -> dict[str, np.ndarray]:
    """Everything that depends on anatomy (and sex) but not on scanner or effusion.

    Returns float32 (B, H, W) fields: ``base`` (attenuation without lung air), ``air`` (lung air
    with vessel texture), ``fluid`` (potential fluid opacity 0..1, used when effusion = 1), ``sdf``
    (B, 2, H, W) signed distance of each lung in image units, ``silver_shift`` (silver boundary
    error), ``devices`` (device attenuation).
    """
    g = _geometry(noise, sex, size, bank)
    devices = _devices(g, noise, size)
    base = (_body(g) + _spine_trachea(g) + _ribs(g, noise) + _clavicles(g)
            + _scapulae(g, noise) + _chest_wall_soft_tissue(g, noise) + _gastric_bubble(g, noise) + devices)
    thickness, hidden = _lung_air(g, noise)
    tex = _vessels(noise["tex_seed"], g["a"], g["bb"], g["ext"])
    air = DENSITY["air"] * thickness * (1 - DENSITY["vessel"] * tex)
    f32 = np.float32
    return dict(base=base.astype(f32), air=air.astype(f32), fluid=_fluid(g, noise).astype(f32),
                sdf=g["sdf"], silver_shift=_silver_shift(g, noise, hidden).astype(f32), devices=devices)


def _marker(u: np.ndarray, v: np.ndarray, mu: np.ndarray, mv: np.ndarray, size: int) -> np.ndarray:
    """Coverage 0..1 (B, H, W) of a lead side marker, a letter "L" 4 % of the image tall centred at
    (mu, mv), anti-aliased so that it looks the same at every size."""
    def box(u0, u1, v0, v1):  # separable: (B, 1, W) times (B, H, 1)
        return (_ramp((u - u0) * size + 0.5) * _ramp((u1 - u) * size + 0.5)) \
            * (_ramp((v - v0) * size + 0.5) * _ramp((v1 - v) * size + 0.5))
    stem = box(mu - 0.016, mu - 0.004, mv - 0.022, mv + 0.022)
    foot = box(mu - 0.016, mu + 0.014, mv + 0.01, mv + 0.022)
    return np.maximum(stem, foot)


def _acquire(scene: dict[str, np.ndarray], noise: dict[str, np.ndarray], effusion: np.ndarray,
             scanner: np.ndarray, size: int, white: np.ndarray, grain: np.ndarray) -> np.ndarray:
    """Image (B, H, W) uint8 of a scene under the given effusion and scanner (per image 0/1).

    Per scanner (:data:`SCANNERS`): Gaussian blur, transfer curve (slope = contrast, centre =
    brightness, gamma, black level), detector noise (white and grain), collimation borders and the
    side marker at the scanner's habitual place (or, for ``marker[2] < FIELD_MARKER_RATE``, over
    the upper lateral lung field). Per image, whatever the scanner: ``exposure`` moves the centre
    (sd 0.03), ``contrast`` (tube voltage) scales the slope (sd 12 %). Nothing here looks at the
    image content, so do(effusion) stays local.
    """
    f32 = np.float32
    e = effusion.astype(f32).reshape(-1, 1, 1)
    dens = scene["base"] - scene["air"] * (1 - scene["fluid"] * e)
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
        centre = p["centre"] + 0.03 * _col(noise["exposure"][sel])
        slope = p["slope"] * np.exp(0.12 * _col(noise["contrast"][sel]))
        lo = 1 / (1 + np.exp(slope * centre))
        img = (1 / (1 + np.exp(-slope * (d - centre))) - lo) / (1 - lo)
        img = p["black"] + (1 - p["black"]) * _ramp(img) ** p["gamma"]
        img = img + p["noise"] * ((1 - p["grain"]) * white[sel] + p["grain"] * grain[sel])
        if p["edge"] > 0:  # collimation: bright unexposed borders
            border = np.minimum(np.minimum(u, 1 - u), v)
            img = np.where(border[None] < p["edge"], 0.92 + 0.5 * p["noise"] * white[sel], img)
        mk = noise["marker"][sel]
        over = (mk[:, 2] < FIELD_MARKER_RATE).reshape(-1, 1, 1)
        mu = np.where(over, p["field_marker"][0], p["marker"][0]) + 0.03 * (_col(mk[:, 0]) - 0.5)
        mv = np.where(over, p["field_marker"][1], p["marker"][1]) + 0.02 * (_col(mk[:, 1]) - 0.5)
        cover = _marker(t[None, None, :], t[None, :, None], mu, mv, size)
        out[sel] = img + (0.97 - img) * cover
    return np.round(_ramp(out) * 255).astype(np.uint8)


def _detector_noise(seeds: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """White and correlated (grain) unit-variance noise (B, H, W) from ``acq_seed``."""
    white = np.stack([np.random.default_rng([int(s), size]).standard_normal((size, size), np.float32)
                      for s in seeds]) if len(seeds) else np.zeros((0, size, size), np.float32)
    sig = max(0.6, size / 128)
    grain = ndimage.gaussian_filter(white, (0, sig, sig), mode="wrap")
    grain /= grain.std(axis=(1, 2), keepdims=True) + 1e-6
    return white, grain


def _labels(scene: dict[str, np.ndarray], effusion: np.ndarray, noise: dict[str, np.ndarray]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gold and silver label maps (B, H, W) uint8 and the silver quality score (B,).

    Gold: the annotated outline (module docstring). Silver: the gold SDF plus the silver boundary
    error (:func:`_silver_shift`), cut where fluid is denser than ``0.3-0.7`` (``silver_cut``: the
    automatic method segments the aerated lung and under-segments under fluid). Quality: a
    Dice-RCA-like score that sees only part of the silver error (``RCA_SENSITIVITY``) plus noise.
    """
    sdf = scene["sdf"]
    right, left = sdf[:, 0] < 0, sdf[:, 1] < 0
    gold = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)
    cut = _col(0.3 + 0.4 * np.asarray(noise["silver_cut"]))
    visible = ~((scene["fluid"] >= cut) & (effusion.reshape(-1, 1, 1) == 1))
    js = sdf + scene["silver_shift"][:, None]
    sr, sl = (js[:, 0] < 0) & visible, (js[:, 1] < 0) & visible
    silver = np.where(sr, 1, np.where(sl, 2, 0)).astype(np.uint8)
    dices = []
    for g, s in ((right, sr), (left, sl)):
        inter = (g & s).sum(axis=(1, 2))
        tot = g.sum(axis=(1, 2)) + s.sum(axis=(1, 2))
        dices.append(np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0))
    dice = 0.5 * (dices[0] + dices[1])
    quality = np.clip(1 - RCA_SENSITIVITY * (1 - dice) + 0.02 * noise["quality_noise"], 0, 1).astype(np.float32)
    return gold, silver, quality


def _effusion_region(support: np.ndarray, scanner: np.ndarray, size: int) -> np.ndarray:
    """Where do(effusion) can change the image: the fluid support dilated by the blur radius (a
    square of side ``2 r + 1``: the support of the separable truncated Gaussian)."""
    region = np.empty_like(support)
    for i, s in enumerate(scanner):
        w = 2 * blur_radius(s, size) + 1
        region[i] = ndimage.maximum_filter(support[i], size=w, mode="constant", cval=False)
    return region


def render(noise: dict[str, np.ndarray], parents: pd.DataFrame, size: int,
           batch: int | None = None) -> dict[str, np.ndarray]:
    """Render images and labels from exogenous noise and parents at ``size`` px.

    Returns ``image`` (N, H, W) uint8, ``gold`` and ``silver`` (N, H, W) uint8 label maps,
    ``fluid`` (N, H, W) bool (the effusion's opacity is present: effusion = 1 and inside the
    support of the fluid and its compressive atelectasis, :func:`_fluid`),
    ``effusion_region`` (N, H, W) bool (where do(effusion) can change the image: the potential
    fluid support dilated by the blur radius), ``devices`` (N, H, W) bool (where support devices
    lie) and ``quality`` (N,) float32 (Dice of silver vs gold plus noise, a Dice-RCA-like score).
    """
    n = _check(noise, parents, size)
    bank = scm._bank()
    batch = batch or max(1, 2 ** 21 // (size * size))
    keys = ("image", "gold", "silver", "fluid", "effusion_region", "devices", "quality")
    if n == 0:
        empty = np.zeros((0, size, size), np.uint8)
        return dict(image=empty, gold=empty, silver=empty, fluid=empty.astype(bool),
                    effusion_region=empty.astype(bool), devices=empty.astype(bool),
                    quality=np.zeros(0, np.float32))
    parts: dict[str, list] = {k: [] for k in keys}
    sex, sc, ef = (parents[c].to_numpy(np.int64) for c in ("sex", "scanner", "effusion"))
    for lo in range(0, n, batch):
        sl = slice(lo, min(n, lo + batch))
        nz = {k: v[sl] for k, v in noise.items()}
        scene = _scene(nz, sex[sl], size, bank)
        white, grain = _detector_noise(nz["acq_seed"], size)
        parts["image"].append(_acquire(scene, nz, ef[sl], sc[sl], size, white, grain))
        gold, silver, q = _labels(scene, ef[sl], nz)
        parts["gold"].append(gold), parts["silver"].append(silver), parts["quality"].append(q)
        support = scene["fluid"] > 0
        parts["fluid"].append(support & (ef[sl].reshape(-1, 1, 1) == 1))
        parts["effusion_region"].append(_effusion_region(support, sc[sl], size))
        parts["devices"].append(scene["devices"] > 0.01)
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
    order, sharing the anatomy between the four renders (what the store keeps).
    Bit-identical to calling :func:`render` and :func:`counterfactual` separately."""
    n = _check(noise, parents, size)
    bank = scm._bank()
    sex, sc, ef = (parents[c].to_numpy(np.int64) for c in ("sex", "scanner", "effusion"))
    scene = _scene(noise, sex, size, bank)
    white, grain = _detector_noise(noise["acq_seed"], size)
    image = _acquire(scene, noise, ef, sc, size, white, grain)
    cfs = np.empty((n, len(INTERVENTIONS), size, size), np.uint8)
    for j, name in enumerate(INTERVENTIONS):
        p = intervene(parents, name)
        cfs[:, j] = _acquire(scene, noise, p["effusion"].to_numpy(np.int64), p["scanner"].to_numpy(np.int64),
                             size, white, grain)
    gold, silver, q = _labels(scene, ef, noise)
    return dict(image=image, gold=gold, silver=silver, quality=q, counterfactuals=cfs)
