"""The causal model of the phantom: parents, their real distribution, interventions, exogenous noise.

Parents (paper section 2.1): ``sex`` (0 F, 1 M), ``scanner`` (0 ImagingDynamics, 1 Philips) and
``effusion`` (pleural effusion, 0/1), root variables drawn from the real PadChest joint
distribution (:func:`real_joint`, REFERENCES section 3: effusion is 2.4x more frequent on Philips,
the confounding that counterfactual views break), optionally reweighted by the two phantom knobs
(:func:`parent_distribution`). Interventions flip a binary parent (:func:`intervene`).

Exogenous noise ``U`` (:data:`NOISE_SPEC`): every image has its own generator seeded by
``(seed, split, index)`` and draws every field, whatever its parents, so it can be re-rendered
under any intervention and at any size. The fields are standard draws (N(0, 1), U(0, 1), seeds,
categories); the mechanisms of :mod:`cfcl.data.phantom.render` turn them into physical quantities.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import pandas as pd

from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, PARENTS, DataConfig
from cfcl.data.anatomy import ShapeBank, load_shape_bank, torchxrayvision_data_dir
from cfcl.data.metadata import METADATA_NAME, joint_distribution
from cfcl.paths import atomic_path, cache_dir

SPLIT_CODES = {"pretrain": 0, "val": 1, "annotated": 2, "test": 3}


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

def _normal(shape=()):
    return lambda r, k: r.normal(0.0, 1.0, shape)


def _uniform(shape=()):
    return lambda r, k: r.uniform(0.0, 1.0, shape)


def _seed(r, k):
    return r.integers(2**62)


#: The exogenous noise ``U`` of one image: ``(field, shape per image, sampler, mechanism it drives)``.
#: Samplers take the item's generator and the number of bank shapes and return standard draws
#: (N(0, 1), U(0, 1), seeds, categories); :mod:`cfcl.data.phantom.render` maps them to physical
#: quantities, so every mechanism reads only its own fields. The order is the draw order.
NOISE_SPEC: tuple[tuple[str, tuple[int, ...], Callable, str], ...] = (
    # anatomy (independent of every parent; sex acts through the mechanisms)
    ("shape", (), lambda r, k: r.integers(k), "lung outline: index into the bank of real shapes"),
    ("deform", (18,), _normal((18,)), "smooth 3x3-mode displacement of the lung box (shape variation)"),
    ("dome", (2,), _normal((2,)), "height of each hemidiaphragm (lung base), independent per side"),
    ("habitus", (), _normal(), "thorax size"),
    ("inspiration", (), _normal(), "inspiration depth: lung height, heart breadth"),
    ("shift", (2,), _normal((2,)), "thorax position on the detector"),
    ("tilt", (), _normal(), "in-plane tilt of the patient"),
    ("rotation", (), _normal(), "rotation about the vertical axis: asymmetric hemithoraces, offset spine"),
    ("edge", (), _normal(), "width of the lung's peripheral thinning (edge softness)"),
    ("hidden", (3,), _uniform((3,)), "hidden lung: recess depth below the domes, medial extent behind "
                                      "the heart, air fraction"),
    ("rib_phase", (), _uniform(), "vertical phase of the rib cage"),
    ("rib_spacing", (), _normal(), "rib spacing"),
    ("scapula", (2,), _uniform((2,)), "how far each scapula projects over the lung field"),
    ("pectoral", (), _uniform(), "pectoral muscle bulk"),
    ("breast", (3,), _uniform((3,)), "breast size, ptosis and lateral position"),
    ("gastric", (3,), _uniform((3,)), "gastric air bubble: presence, size, offset"),
    ("tex_seed", (), _seed, "vessel texture"),
    # effusion (drawn for every image, used only when effusion = 1)
    ("eff_side", (), lambda r, k: r.choice(3, p=(0.25, 0.15, 0.6)), "0 right, 1 left, 2 bilateral"),
    ("eff_kind", (), lambda r, k: r.choice(3, p=(0.65, 0.25, 0.1)), "0 layering, 1 subpulmonic, 2 loculated"),
    ("eff_volume", (2,), _uniform((2,)), "fluid volume of each side"),
    ("meniscus", (), _uniform(), "lateral rise of a layering meniscus"),
    ("eff_soft", (), _uniform(), "sharpness of the fluid's upper margin (meniscus to veil)"),
    ("loculus", (3,), _uniform((3,)), "loculated collection: height, size, opacity"),
    ("atelectasis", (3,), _uniform((3,)), "compressive atelectasis above the fluid: air loss, band, pattern"),
    # support devices and lines (independent of every parent)
    ("devices", (5,), _uniform((5,)), "presence of ECG leads, central line, NG tube, pacemaker, ET tube"),
    ("ecg", (3, 3), _uniform((3, 3)), "three ECG electrodes: position u, v and wire course"),
    ("lines", (4, 4), _uniform((4, 4)), "course of the central line, NG tube, pacemaker, ET tube"),
    # acquisition (what the scanner acts on)
    ("acq_seed", (), _seed, "detector noise"),
    ("exposure", (), _normal(), "exposure (brightness)"),
    ("contrast", (), _normal(), "tube voltage (contrast)"),
    ("marker", (3,), _uniform((3,)), "side marker: jitter u, v, placement over the field"),
    # silver segmentation and its quality score
    ("silver_coef", (8,), _normal((8,)), "smooth boundary jitter of the automatic (silver) mask"),
    ("silver_amp", (), lambda r, k: r.lognormal(0.0, 0.5), "amplitude of that jitter"),
    ("silver_cut", (), _uniform(), "fluid opacity at which the automatic method stops"),
    ("quality_noise", (), _normal(), "noise of the Dice-RCA-like quality score"),
)
NOISE_FIELDS = tuple(f[0] for f in NOISE_SPEC)
_INT_FIELDS = ("shape", "tex_seed", "eff_side", "eff_kind", "acq_seed")


def sample_noise(n: int, seed: int, split: str, n_shapes: int, start: int = 0) -> dict[str, np.ndarray]:
    """Exogenous noise of items ``start .. start + n - 1`` of a split (fields: :data:`NOISE_SPEC`).

    Item ``i`` is drawn from its own generator seeded by ``(seed, split, i)``, so it does not
    depend on the split size. Every field is drawn for every image, whatever its parents (the
    effusion fields too), so any image can be re-rendered under any intervention.
    """
    if split not in SPLIT_CODES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_CODES)}")
    cols: dict[str, list] = {name: [] for name in NOISE_FIELDS}
    for i in range(start, start + n):
        r = np.random.default_rng([seed, SPLIT_CODES[split], i])
        for name, _, draw, _ in NOISE_SPEC:
            cols[name].append(draw(r, n_shapes))
    return {name: np.asarray(cols[name], np.int64 if name in _INT_FIELDS else np.float64).reshape((n,) + shape)
            for name, shape, _, _ in NOISE_SPEC}


def take(noise: dict[str, np.ndarray], index: Any) -> dict[str, np.ndarray]:
    """Rows ``index`` (int, slice or array) of a noise dict, keeping the leading axis."""
    if isinstance(index, (int, np.integer)):
        index = [int(index)]
    return {k: v[index] for k, v in noise.items()}


def _bank() -> ShapeBank:
    """The lung shape bank (tests replace this with a small bank)."""
    return load_shape_bank()
