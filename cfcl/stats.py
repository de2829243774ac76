"""Statistics that decide the paper's claims: paired differences, intervals, tests, corrections.

Pure functions of numpy arrays. A claim compares two methods on the *same* images (a paired
design): the per-image difference ``d_i = a_i - b_i`` (each ``a_i`` already averaged over the
fine-tuning seeds and folds that scored image ``i``) is summarised by

- its mean, with a percentile **bootstrap** interval over images (:func:`bootstrap_ci`);
- the two-sided **Wilcoxon signed-rank** test of ``d = 0`` (``scipy.stats.wilcoxon``; zero
  differences are kept with the Pratt method, so identical predictions count against an effect);
- **Holm**'s step-down correction over the planned contrasts (:func:`holm`), and intervals at the
  Bonferroni level ``1 - alpha / k`` so that every interval of a family of ``k`` holds together;
- a **verdict** (:func:`verdict`): ``holds`` when the interval excludes 0 in the paper's
  direction, ``contradicted`` when it excludes 0 in the other, ``inconclusive`` otherwise.

:func:`detectable_effect` states the smallest true mean difference a protocol detects with 80 %
power (normal approximation, two-sided, at the corrected level), from the spread of the paired
differences: what "inconclusive" can and cannot rule out.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as st

VERDICTS = ("holds", "contradicted", "inconclusive")


def _paired(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be 1-D and of one length, got {a.shape} and {b.shape}")
    d = a - b
    if not np.isfinite(d).all():
        raise ValueError("paired samples hold non-finite values")
    if len(d) < 2:
        raise ValueError(f"a paired comparison needs at least 2 images, got {len(d)}")
    return d


def bootstrap_ci(d: np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``d`` (resampling its elements)."""
    d = np.asarray(d, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def wilcoxon_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of ``d = 0`` (Pratt's treatment of zeros); 1.0
    when every difference is zero."""
    d = np.asarray(d, float)
    if not np.any(d):
        return 1.0
    return float(st.wilcoxon(d, zero_method="pratt", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(pvalues, float)
    k = len(p)
    order = np.argsort(p)
    adjusted = np.empty(k)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def verdict(ci_low: float, ci_high: float, direction: int = 1, p: float | None = None,
            alpha: float = 0.05) -> str:
    """``holds`` if the interval excludes 0 on the side of ``direction`` (+1: a > b claimed;
    -1: a < b claimed), ``contradicted`` if it excludes 0 on the other side, else
    ``inconclusive``. With ``p`` (the family-corrected p-value of the test), both must agree: an
    interval that excludes 0 while ``p >= alpha`` is ``inconclusive``."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    lo, hi = direction * ci_low, direction * ci_high
    lo, hi = min(lo, hi), max(lo, hi)
    if p is not None and not p < alpha:
        return "inconclusive"
    if lo > 0:
        return "holds"
    if hi < 0:
        return "contradicted"
    return "inconclusive"


def detectable_effect(d: np.ndarray, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest true mean of ``d`` a two-sided test at level ``alpha`` detects with ``power``:
    ``(z_{1-alpha/2} + z_power) * sd(d) / sqrt(n)`` (normal approximation)."""
    d = np.asarray(d, float)
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
    return float(z * d.std(ddof=1) / np.sqrt(len(d)))


def paired_contrast(a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = 10000,
                    seed: int = 0) -> dict[str, float]:
    """Mean paired difference ``a - b`` with its bootstrap interval at ``level``, the Wilcoxon
    p-value, the number of images and the standard deviation of the differences."""
    d = _paired(a, b)
    lo, hi = bootstrap_ci(d, level, n_boot, seed)
    return {"estimate": float(d.mean()), "ci_low": lo, "ci_high": hi, "p": wilcoxon_p(d), "n": int(len(d)),
            "sd": float(d.std(ddof=1))}


def contrast_family(pairs: Sequence[tuple[np.ndarray, np.ndarray, int]], alpha: float = 0.05,
                    n_boot: int = 10000, seed: int = 0) -> list[dict[str, float | str]]:
    """The planned contrasts of a family, each ``(a, b, direction)``: paired estimate, interval at
    the Bonferroni level ``1 - alpha / k``, Wilcoxon p, Holm-adjusted p, verdict (the interval and
    the Holm-adjusted Wilcoxon test must agree, :func:`verdict`), and the smallest effect the
    protocol detects at the corrected level."""
    k = len(pairs)
    if k == 0:
        return []
    level = 1 - alpha / k
    rows = []
    for j, (a, b, direction) in enumerate(pairs):
        row: dict[str, float | str] = paired_contrast(a, b, level, n_boot, seed + j)
        row["detectable"] = detectable_effect(_paired(a, b), alpha / k)
        row["level"] = level
        rows.append(row)
    for row, p, (_, _, direction) in zip(rows, holm([float(r["p"]) for r in rows]), pairs):
        row["p_holm"] = float(p)
        row["verdict"] = verdict(float(row["ci_low"]), float(row["ci_high"]), direction, row["p_holm"], alpha)
    return rows
