"""The paper's claims as planned contrasts, decided by paired statistics (paper sections 4.2, 5).

Each claim of the paper that compares pre-training methods becomes one or more contrasts
``a - b`` on one per-image metric, in the direction the paper states. All contrasts of a table
form one family: intervals at the Bonferroni level and Holm-adjusted p-values over the family
(:func:`cfcl.stats.contrast_family`), and a verdict per contrast (``holds``, ``contradicted``,
``inconclusive``: the interval and the Holm-adjusted Wilcoxon test must agree). Estimates are in the metric's unit times 100 (DSC points, recall points).

The seed spread: per image, the metric is averaged over the fine-tuning seeds before the contrast, so
the interval is over images. With several seeds, each contrast is also estimated on every seed's
models alone (``seed_min``, ``seed_max``, ``seed_sd``), and a verdict other than inconclusive also needs
every seed's estimate on its side of 0 (a contrast that one seed reverses is inconclusive). With
``pretrain.seeds = R > 1`` (:mod:`cfcl.replicates`) the per-image values also average over the R pre-training
replicates, and the spread is over every (pre-training replicate, fine-tuning seed) pair
(:func:`cfcl.results.per_image_by_seed`); with one pre-training run per method (the default) the
pre-training seed is not in these figures.

The contrasts (``CLAIMS``):

- "all pre-training methods outperform None" (section 4.2, Table 2): each of the eight methods
  against None on DSC;
- "among the unsupervised methods, DVD-CL achieves the best overall performance, outperforming
  SimCLR and VADeR": DVD-CL against SimCLR, VADeR and MVD-CL;
- "all proposed methods outperform their respective baselines": MVD-CL against VADeR, S-DVD-CL
  and S-MVD-CL against SSDCL (DVD-CL against VADeR is above);
- "both supervised variants further improve performance": S-DVD-CL against DVD-CL, S-MVD-CL
  against MVD-CL;
- "S-MVD-CL surpasses the silver-standard CheXMask pre-trained model": S-MVD-CL against CheXmask;
- "improves robustness to pathological variations" (abstract, section 5): DVD-CL against None and
  S-MVD-CL against CheXmask on the effusion images' DSC (DSC_PE) and on the hidden-lung recall
  (the share of the lung hidden under fluid recovered; where the counterfactual views act).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cfcl import stats
from cfcl.methods import METHODS, PRETRAIN_METHODS


@dataclass(frozen=True)
class Contrast:
    claim: str
    a: str
    b: str
    metric: str = "dsc"  # a per-image column: dsc, dsc_pe (dsc on effusion images), hidden_recall, ...
    direction: int = 1

    @property
    def name(self) -> str:
        return f"{METHODS[self.a].display} - {METHODS[self.b].display}"


CLAIMS: tuple[Contrast, ...] = (
    *(Contrast("every pre-training beats None", m, "none") for m in PRETRAIN_METHODS),
    Contrast("DVD-CL is the best unsupervised method", "dvd_cl", "simclr"),
    Contrast("DVD-CL is the best unsupervised method", "dvd_cl", "vader"),
    Contrast("DVD-CL is the best unsupervised method", "dvd_cl", "mvd_cl"),
    Contrast("the proposed methods beat their baselines", "mvd_cl", "vader"),
    Contrast("the proposed methods beat their baselines", "s_dvd_cl", "ssdcl"),
    Contrast("the proposed methods beat their baselines", "s_mvd_cl", "ssdcl"),
    Contrast("silver labels further improve the proposed methods", "s_dvd_cl", "dvd_cl"),
    Contrast("silver labels further improve the proposed methods", "s_mvd_cl", "mvd_cl"),
    Contrast("S-MVD-CL beats CheXmask-supervised pre-training", "s_mvd_cl", "chexmask"),
    Contrast("robustness to effusion (DSC on effusion images)", "dvd_cl", "none", "dsc_pe"),
    Contrast("robustness to effusion (DSC on effusion images)", "s_mvd_cl", "chexmask", "dsc_pe"),
    Contrast("robustness to effusion (lung hidden under fluid recovered)", "dvd_cl", "none", "hidden_recall"),
    Contrast("robustness to effusion (lung hidden under fluid recovered)", "s_mvd_cl", "chexmask", "hidden_recall"),
)


def _metric(table: pd.DataFrame, metric: str) -> pd.Series:
    """One per-image metric, indexed by image: ``dsc_pe`` is ``dsc`` on effusion images."""
    if metric == "dsc_pe":
        return table.loc[table["effusion"] == 1, "dsc"]
    return table[metric]


def paired(ta: pd.DataFrame, tb: pd.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The paired per-image values (x 100) of ``metric`` in two per-image tables: the images both have,
    finite in both; None when a table lacks the metric or fewer than 2 pairs remain."""
    if metric != "dsc_pe" and (metric not in ta or metric not in tb):
        return None
    a, b = _metric(ta, metric), _metric(tb, metric)
    both = a.index.intersection(b.index)
    a, b = a.loc[both].to_numpy(float), b.loc[both].to_numpy(float)
    ok = np.isfinite(a) & np.isfinite(b)
    return None if ok.sum() < 2 else (100 * a[ok], 100 * b[ok])


def decide(per_image: dict[str, pd.DataFrame], contrasts: tuple[Contrast, ...] = CLAIMS,
           n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
           per_seed: list[dict[str, pd.DataFrame]] | None = None) -> pd.DataFrame:
    """Decide ``contrasts`` on per-image tables (one per method, indexed by image, with columns
    ``effusion`` and the metrics; each value already averaged over seeds and folds). ``per_seed``: the
    same tables for each fine-tuning seed alone (see the module docstring), for the seed spread.

    Contrasts whose methods or metric are missing, or with fewer than 2 paired images (e.g. the
    hidden-lung recall on data without exact fluid masks), are left out. Returns one row per
    contrast: ``claim``, ``contrast``, ``metric``, ``estimate``, ``ci_low``, ``ci_high`` (x 100),
    ``p``, ``p_holm``, ``verdict``, ``n``, ``detectable`` (x 100, the smallest effect the protocol
    detects with 80 % power at the corrected level), ``level`` of the intervals and, with ``per_seed``,
    ``seed_min``, ``seed_max``, ``seed_sd`` (the estimate on each seed's models) and ``seeds``.
    """
    kept, pairs = [], []
    for c in contrasts:
        if c.a not in per_image or c.b not in per_image:
            continue
        pair = paired(per_image[c.a], per_image[c.b], c.metric)
        if pair is None:
            continue
        kept.append(c)
        pairs.append((*pair, c.direction))
    rows = stats.contrast_family(pairs, alpha=alpha, n_boot=n_boot, seed=seed)
    out = [{"claim": c.claim, "contrast": c.name, "metric": c.metric, **r} for c, r in zip(kept, rows)]
    columns = ["claim", "contrast", "metric", "estimate", "ci_low", "ci_high", "p", "p_holm", "verdict", "n",
               "detectable", "sd", "level"]
    if per_seed is not None and len(per_seed) > 1:
        for c, row in zip(kept, out):
            est = [_estimate(t, c) for t in per_seed]
            row.update(seed_min=min(est), seed_max=max(est), seed_sd=float(np.std(est, ddof=1)), seeds=len(est))
            if row["verdict"] != "inconclusive":  # every seed must agree with the verdict's side
                side = np.sign(row["estimate"])
                if not all(np.sign(e) == side for e in est):
                    row["verdict"] = "inconclusive"
        columns += ["seed_min", "seed_max", "seed_sd", "seeds"]
    return pd.DataFrame(out, columns=columns)


def _estimate(per_image: dict[str, pd.DataFrame], c: Contrast) -> float:
    """The mean paired difference of contrast ``c`` (x 100) on one set of per-image tables (nan if unpaired)."""
    if c.a not in per_image or c.b not in per_image:
        return float("nan")
    pair = paired(per_image[c.a], per_image[c.b], c.metric)
    return float("nan") if pair is None else float(np.mean(pair[0] - pair[1]))
