"""Statistics that decide the paper's claims: paired differences, intervals, tests, corrections.

Pure functions of numpy arrays. A claim compares two methods on the *same* images (a paired
design): the per-image difference ``d_i = a_i - b_i`` (each ``a_i`` already averaged over the
fine-tuning seeds and folds that scored image ``i``) is summarised by

- its mean, with a percentile **bootstrap** interval over images (:func:`bootstrap_ci`);
- the two-sided **Wilcoxon signed-rank** test of ``d = 0`` (``scipy.stats.wilcoxon``; zero
  differences are kept with the Pratt method, so identical predictions count against an effect);
- **Holm**'s step-down correction over the planned contrasts (:func:`holm`), and intervals at the
  Bonferroni level ``1 - alpha / k`` so that every interval of a family of ``k`` holds together;
- the **Hodges-Lehmann** estimate (:func:`hodges_lehmann`: the median of the Walsh averages
  ``(d_i + d_j) / 2``, i <= j), the location the signed-rank test is about: its sign is the test's
  direction;
- a **verdict** (:func:`verdict`): ``holds`` when the interval excludes 0 in the paper's
  direction, the Holm-adjusted Wilcoxon p is below alpha and the Hodges-Lehmann estimate lies on the
  same side; ``contradicted`` when all three agree on the other side; ``inconclusive`` otherwise
  (e.g. a mean carried below 0 by a few large losses while most images gain: the interval says one
  direction, the test the other);
- a **two-level interval** (:func:`two_level_ci`): a bootstrap over pre-training runs (fine-tuning
  seeds nested within them) and over images, for claims that stand on several pre-training replicates.

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


def hodges_lehmann(d: np.ndarray) -> float:
    """The Hodges-Lehmann estimate of the location of ``d``: the median of the ``n (n + 1) / 2`` Walsh
    averages ``(d_i + d_j) / 2``, ``i <= j`` (the pseudo-median the Wilcoxon signed-rank test is about).

    Exact without forming the Walsh averages: each of the (one or two) middle order statistics of the
    pairwise sums is found by bisection on its value, counting the sums below a value with
    ``searchsorted`` on the sorted sample (O(n log n) per step), then snapped to the largest actual sum
    at or below it; memory O(n) for any number of images."""
    s = np.sort(np.asarray(d, float).reshape(-1))
    n = len(s)
    if n == 0 or not np.isfinite(s).all():
        raise ValueError(f"hodges_lehmann needs a non-empty finite sample, got {n} values")
    idx = np.arange(n)

    def count(t: float) -> int:  # pairs i <= j with s_i + s_j <= t
        return int(np.maximum(np.searchsorted(s, t - s, side="right") - idx, 0).sum())

    def kth(k: int) -> float:  # the k-th smallest pairwise sum (0-based)
        lo, hi = 2 * s[0], 2 * s[-1]
        if count(lo) >= k + 1:
            return float(lo)
        for _ in range(200):  # count(lo) < k + 1 <= count(hi)
            mid = lo + (hi - lo) / 2
            if mid <= lo or mid >= hi:
                break
            lo, hi = (lo, mid) if count(mid) >= k + 1 else (mid, hi)
        j = np.searchsorted(s, hi - s, side="right") - 1  # the largest sum <= hi: the k-th itself
        ok = j >= idx
        return float((s[ok] + s[j[ok]]).max())

    m = n * (n + 1) // 2
    return (kth((m - 1) // 2) + kth(m // 2)) / 4


def verdict(ci_low: float, ci_high: float, direction: int = 1, p: float | None = None,
            alpha: float = 0.05, median: float | None = None) -> str:
    """``holds`` if the interval excludes 0 on the side of ``direction`` (+1: a > b claimed;
    -1: a < b claimed), ``contradicted`` if it excludes 0 on the other side, else
    ``inconclusive``. With ``p`` (the family-corrected p-value of the test), both must agree: an
    interval that excludes 0 while ``p >= alpha`` is ``inconclusive``. With ``median`` (the
    Hodges-Lehmann estimate, :func:`hodges_lehmann`: the side the signed-rank test rejects on), it
    must lie strictly on the interval's side of 0 too, else ``inconclusive``."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction}")
    lo, hi = direction * ci_low, direction * ci_high
    lo, hi = min(lo, hi), max(lo, hi)
    if p is not None and not p < alpha:
        return "inconclusive"
    side = 0.0 if median is None else direction * median
    if lo > 0 and (median is None or side > 0):
        return "holds"
    if hi < 0 and (median is None or side < 0):
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
    """Mean paired difference ``a - b`` with its bootstrap interval at ``level``, the Hodges-Lehmann
    estimate ``hl`` (:func:`hodges_lehmann`), the Wilcoxon p-value, the number of images and the
    standard deviation of the differences."""
    d = _paired(a, b)
    lo, hi = bootstrap_ci(d, level, n_boot, seed)
    return {"estimate": float(d.mean()), "ci_low": lo, "ci_high": hi, "hl": hodges_lehmann(d), "p": wilcoxon_p(d),
            "n": int(len(d)), "sd": float(d.std(ddof=1))}


def contrast_family(pairs: Sequence[tuple[np.ndarray, np.ndarray, int]], alpha: float = 0.05,
                    n_boot: int = 10000, seed: int = 0) -> list[dict[str, float | str]]:
    """The planned contrasts of a family, each ``(a, b, direction)``: paired estimate, interval at
    the Bonferroni level ``1 - alpha / k``, Hodges-Lehmann estimate ``hl``, Wilcoxon p, Holm-adjusted
    p, verdict (the interval, the Holm-adjusted Wilcoxon test and the sign of ``hl`` must agree,
    :func:`verdict`), and the smallest effect the protocol detects at the corrected level."""
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
        row["verdict"] = verdict(float(row["ci_low"]), float(row["ci_high"]), direction, row["p_holm"], alpha,
                                 float(row["hl"]))
    return rows


def _run_weights(rng: np.random.Generator, n_boot: int, replicates: int, seeds: int) -> np.ndarray:
    """(n_boot, replicates * seeds) counts of a nested resample: ``replicates`` pre-training runs drawn with
    replacement, and within each drawn run its ``seeds`` fine-tuning seeds drawn with replacement."""
    runs = rng.integers(0, replicates, size=(n_boot, replicates, 1))
    picks = (runs * seeds + rng.integers(0, seeds, size=(n_boot, replicates, seeds))).reshape(n_boot, -1)
    k = replicates * seeds
    flat = (np.arange(n_boot)[:, None] * k + picks).ravel()
    return np.bincount(flat, minlength=n_boot * k).reshape(n_boot, k).astype(float)


def two_level_ci(a: np.ndarray, b: np.ndarray, level: float = 0.95, n_boot: int = 10000, seed: int = 0,
                 chunk: int = 500) -> tuple[float, float, float]:
    """Estimate and percentile interval of ``mean(a) - mean(b)`` by a bootstrap over pre-training runs,
    fine-tuning seeds nested within them, and images.

    ``a``, ``b``: per-image values of each (pre-training replicate, fine-tuning seed), shape
    ``(replicates, seeds, images)``, the same images (in the same order) in both. Each bootstrap draw
    resamples the images once (shared by ``a`` and ``b``: the design stays paired) and, for each method
    independently (its pre-training runs are its own), its replicates with replacement and, within each
    drawn replicate, its fine-tuning seeds with replacement; the statistic is the mean over the drawn
    (replicate, seed) pairs of the mean over the drawn images, a minus b. Returns ``(estimate, low,
    high)``; the estimate (no resampling) is the mean over every (replicate, seed) and image, the same
    as the paired mean of the run-averaged per-image values.

    With one replicate of each, only seeds and images are resampled; with one replicate and one seed
    of each, only images: the image bootstrap of :func:`bootstrap_ci` (same distribution, other draws).
    A method with one run (None pre-trains nothing: one replicate, its seeds) contributes only its seed
    and image spread. Deterministic for a given ``seed``; vectorised in chunks of ``chunk`` draws."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.ndim != 3 or b.ndim != 3 or a.shape[2] != b.shape[2]:
        raise ValueError(f"two_level_ci needs (replicates, seeds, images) arrays over the same images, got "
                         f"{a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("two_level_ci: the per-run values hold non-finite values")
    n = a.shape[2]
    if n < 2:
        raise ValueError(f"a paired comparison needs at least 2 images, got {n}")
    fa, fb = a.reshape(-1, n), b.reshape(-1, n)
    rng = np.random.default_rng(seed)
    stats_ = []
    for start in range(0, n_boot, chunk):
        m = min(chunk, n_boot - start)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=m).astype(float) / n  # (m, images)
        va, vb = _run_weights(rng, m, *a.shape[:2]), _run_weights(rng, m, *b.shape[:2])
        mean_a = ((w @ fa.T) * va).sum(1) / va.sum(1)
        mean_b = ((w @ fb.T) * vb).sum(1) / vb.sum(1)
        stats_.append(mean_a - mean_b)
    boot = np.concatenate(stats_)
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(fa.mean() - fb.mean()), float(lo), float(hi)
