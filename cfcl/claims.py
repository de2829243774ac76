"""The paper's claims as planned contrasts, decided by paired statistics (paper sections 4.2, 5).

Each claim of the paper that compares pre-training methods becomes one or more contrasts
``a - b`` on one per-image metric, in the direction the paper states. All contrasts of a table
form one family: intervals at the Bonferroni level and Holm-adjusted p-values over the family
(:func:`cfcl.stats.contrast_family`), and a verdict per contrast (``holds``, ``contradicted``,
``inconclusive``: the interval, the Holm-adjusted Wilcoxon test and the sign of the Hodges-Lehmann
estimate must agree). Estimates are in the metric's unit times 100 (DSC points, recall points).

The seed spread: per image, the metric is averaged over the fine-tuning seeds before the contrast, so
the interval is over images. With several seeds, each contrast is also estimated on every seed's
models alone (``seed_min``, ``seed_max``, ``seed_sd``), and a verdict other than inconclusive also needs
every seed's estimate on its side of 0 (a contrast that one seed reverses is inconclusive). With
``pretrain.seeds = R > 1`` (:mod:`cfcl.replicates`) the per-image values also average over the R pre-training
replicates, and the spread is over every (pre-training replicate, fine-tuning seed) pair
(:func:`cfcl.results.per_image_by_seed`); with one pre-training run per method (the default) the
pre-training seed is not in these figures.

Two verdicts. ``verdict``: the interval over images (given the fine-tuned models), the Holm-adjusted
Wilcoxon p and the sign of the Hodges-Lehmann estimate ``hl`` must agree (:func:`cfcl.stats.verdict`), and
with several (replicate, seed) pairs every pair's own estimate must lie on the verdict's side (a rule that
grows stricter with every run added). ``run_verdict``, beside it wherever the per-run per-image values are
known (``run_ci_low``, ``run_ci_high``: :func:`cfcl.stats.two_level_ci`, a bootstrap over pre-training
replicates, fine-tuning seeds nested within them, and images, at the family's level): the two-level
interval, the same Holm-adjusted p and the sign of ``hl`` must agree; no per-run rule, because the
interval itself contains the spread between runs. The README's verdicts for the long claims
(several pre-training replicates) are the ``run_verdict``: it is the only one of the two whose interval
contains the pre-training spread (one pre-training run moved the hidden-lung recall by 3-6 points at
300 steps), and, unlike the per-run rule, it does not become stricter merely because more runs were
made. With one pre-training run per method it contains only the fine-tuning seeds' and the images'
spread, and with one run and one seed it is the image interval again (other bootstrap draws).

Recomputable from committed files: the per-(method, replicate, seed, image) values behind the claims are
written next to them (``figures/<label>/table2_test_per_image.csv``, :func:`cfcl.results.per_image_tables`),
and :func:`recompute_claims` / :func:`recompute_contrast` decide the claims again from that file alone.

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

#: The long-pre-training issue's contrasts: DVD-CL, VADeR (its control without counterfactual views), S-MVD-CL
#: and CheXmask-supervised pre-training, each pair on DSC, DSC_PE and the hidden-lung recall; a contrast the
#: paper claims keeps its claim, the others are the control (``claims.csv`` of ``make reproduce CLAIMS=long``).
LONG_PAIRS = (("dvd_cl", "none"), ("vader", "none"), ("dvd_cl", "vader"), ("s_mvd_cl", "chexmask"),
              ("s_mvd_cl", "none"), ("chexmask", "none"))
LONG_METRICS = ("dsc", "dsc_pe", "hidden_recall")


def _claim_of(a: str, b: str, metric: str) -> str:
    """The paper's claim a long contrast tests: its own, or that of the same pair on DSC "on <metric>"."""
    paper = {(c.a, c.b, c.metric): c.claim for c in CLAIMS}
    if (a, b, metric) in paper:
        return paper[(a, b, metric)]
    return f"{paper[(a, b, 'dsc')]}, on {metric}" if (a, b, "dsc") in paper else f"control at length, on {metric}"


LONG_CLAIMS: tuple[Contrast, ...] = tuple(Contrast(_claim_of(a, b, m), a, b, m) for a, b in LONG_PAIRS
                                          for m in LONG_METRICS)
#: The contrast sets notebook 06 decides (its parameter ``claims``, ``make reproduce CLAIMS=...``).
CLAIM_SETS: dict[str, tuple[Contrast, ...]] = {"paper": CLAIMS, "long": LONG_CLAIMS}


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


class PerSeed(list):
    """The per-image tables of each (pre-training replicate, fine-tuning seed) alone (a list of
    ``{method: table}``, :func:`cfcl.results.per_image_by_seed`), carrying ``runs``: the long table they
    come from (one row per method, replicate, seed and image, :data:`RUN_COLUMNS`), which the two-level
    interval of :func:`decide` reads."""

    def __init__(self, tables=(), runs: pd.DataFrame | None = None):
        super().__init__(tables)
        self.runs = runs


#: The columns of the per-(method, replicate, seed, image) table (``table2_test_per_image.csv``): each
#: metric the mean over the folds of that replicate and seed; ``dsc_pe`` is ``dsc`` where ``effusion`` is 1.
RUN_COLUMNS = ("method", "replicate", "seed", "image", "effusion", "dsc", "hd95", "asd", "hidden_recall")
_KEYS = ("method", "replicate", "seed", "image")


def run_arrays(runs: pd.DataFrame, c: Contrast) -> tuple[np.ndarray, np.ndarray] | None:
    """The values (x 100) of ``c.metric`` for ``c.a`` and ``c.b`` in a long per-run table (:data:`RUN_COLUMNS`),
    each ``(replicates, seeds, images)``, on the images finite in every run of both (effusion images only
    for ``dsc_pe``); None when a method or the metric is missing or fewer than 2 images remain. A method
    whose replicates do not share one set of seeds is an error."""
    col = "dsc" if c.metric == "dsc_pe" else c.metric
    if col not in runs:
        return None
    grids = []
    for m in (c.a, c.b):
        t = runs[runs["method"] == m]
        if c.metric == "dsc_pe":
            t = t[t["effusion"] == 1]
        if t.empty:
            return None
        pairs = t[["replicate", "seed"]].drop_duplicates()
        reps, seeds = sorted(set(pairs["replicate"])), sorted(set(pairs["seed"]))
        if len(pairs) != len(reps) * len(seeds):
            have = sorted(map(tuple, pairs.to_numpy().tolist()))
            raise ValueError(f"per-run table: method {m} has (replicate, seed) pairs {have}, not every "
                             f"replicate with the same seeds {seeds}; make the missing fine-tuning runs")
        g = t.pivot_table(index=["replicate", "seed"], columns="image", values=col, aggfunc="mean", dropna=False)
        grids.append((g.reindex(pd.MultiIndex.from_product([reps, seeds])), len(reps), len(seeds)))
    images = grids[0][0].columns.intersection(grids[1][0].columns)
    values = [g[images].to_numpy(float) for g, _, _ in grids]
    ok = np.isfinite(values[0]).all(0) & np.isfinite(values[1]).all(0)
    if ok.sum() < 2:
        return None
    return tuple(100 * v[:, ok].reshape(r, s, int(ok.sum())) for v, (_, r, s) in zip(values, grids))  # type: ignore[return-value]


def decide(per_image: dict[str, pd.DataFrame], contrasts: tuple[Contrast, ...] = CLAIMS,
           n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
           per_seed: list[dict[str, pd.DataFrame]] | None = None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """Decide ``contrasts`` on per-image tables (one per method, indexed by image, with columns
    ``effusion`` and the metrics; each value already averaged over seeds and folds). ``per_seed``: the
    same tables for each fine-tuning seed alone (see the module docstring), for the seed spread.
    ``runs``: the long per-(method, replicate, seed, image) table (:data:`RUN_COLUMNS`; by default
    ``per_seed.runs`` where ``per_seed`` is a :class:`PerSeed`), for the two-level interval: with it and
    several (replicate, seed) pairs, columns ``run_ci_low``, ``run_ci_high`` (x 100, at the family's level)
    and ``run_verdict`` (see the module docstring).

    Contrasts whose methods or metric are missing, or with fewer than 2 paired images (e.g. the
    hidden-lung recall on data without exact fluid masks), are left out. Returns one row per
    contrast: ``claim``, ``contrast``, ``metric``, ``estimate``, ``ci_low``, ``ci_high`` (x 100),
    ``hl`` (x 100, the Hodges-Lehmann estimate: the paired median the signed-rank test is about),
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
    columns = ["claim", "contrast", "metric", "estimate", "ci_low", "ci_high", "hl", "p", "p_holm", "verdict", "n",
               "detectable", "sd", "level"]
    if runs is None:
        runs = getattr(per_seed, "runs", None)
    if runs is not None and len(runs[["replicate", "seed"]].drop_duplicates()) > 1:
        for j, (c, row) in enumerate(zip(kept, out)):
            arrays = run_arrays(runs, c)
            lo = hi = float("nan")
            if arrays is not None:
                _, lo, hi = stats.two_level_ci(*arrays, level=float(row["level"]), n_boot=n_boot, seed=seed + j)
            row.update(run_ci_low=lo, run_ci_high=hi,
                       run_verdict="inconclusive" if arrays is None else
                       stats.verdict(lo, hi, c.direction, float(row["p_holm"]), alpha, float(row["hl"])))
        columns += ["run_ci_low", "run_ci_high", "run_verdict"]
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


def read_runs(path) -> pd.DataFrame:
    """A per-(method, replicate, seed, image) table as written next to the claims
    (``figures/<label>/table2_test_per_image.csv``, :data:`RUN_COLUMNS`); a missing column or a repeated
    row is an error naming the file."""
    t = pd.read_csv(path)
    missing = [c for c in RUN_COLUMNS if c not in t]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing; write it again with cfcl.results.per_image_tables")
    if t.duplicated(list(_KEYS)).any():
        raise ValueError(f"{path}: repeated (method, replicate, seed, image) rows; write it again with "
                         "cfcl.results.per_image_tables")
    return t


def tables_from_runs(runs: pd.DataFrame) -> tuple[dict[str, pd.DataFrame], PerSeed | None]:
    """What :func:`decide` reads, from a long per-run table alone: per method the per-image mean over its
    (replicate, seed) rows (each already the mean over folds, so the mean over every fold model, as
    :func:`cfcl.results.test_per_image`), and the tables of each (replicate, seed) pair
    (:func:`cfcl.results.per_image_by_seed`'s order: replicates of the pre-trained methods x seeds; a
    method that pre-trains nothing uses its seed's rows for every replicate); None with one pair."""
    metrics = [c for c in runs.columns if c not in _KEYS]
    per_image = {}
    for m, t in runs.groupby("method", sort=False):
        out = t.groupby("image")[metrics].mean()
        out["effusion"] = out["effusion"].round().astype(int)
        per_image[str(m)] = out
    pre = runs[runs["method"].map(lambda m: METHODS[m].pretrained)]
    reps = sorted(set((pre if len(pre) else runs)["replicate"]))
    combos = [(r, s) for r in reps for s in sorted(set(runs["seed"]))]
    if len(combos) < 2:
        return per_image, None
    seeds = []
    for r, s in combos:
        one = {}
        for m, t in runs.groupby("method", sort=False):
            keep = (t["seed"] == s) & ((t["replicate"] == r) if METHODS[m].pretrained else True)
            sub = t[keep].groupby("image")[metrics].mean()
            sub["effusion"] = sub["effusion"].round().astype(int)
            one[str(m)] = sub
        seeds.append(one)
    return per_image, PerSeed(seeds, runs)


def recompute_claims(path, contrasts: tuple[Contrast, ...] = CLAIMS, n_boot: int = 10000, seed: int = 0,
                     alpha: float = 0.05) -> pd.DataFrame:
    """The claims decided again from a committed per-run file alone (:func:`read_runs`): the same
    :func:`decide`, so the same family, levels and bootstrap draws as ``claims.csv``."""
    per_image, per_seed = tables_from_runs(read_runs(path))
    return decide(per_image, contrasts, n_boot=n_boot, seed=seed, alpha=alpha, per_seed=per_seed)


def contrasts_of(claims: pd.DataFrame) -> tuple[Contrast, ...]:
    """The contrast set (of :data:`CLAIM_SETS`) a ``claims.csv`` was decided with: the first whose contrasts
    include every (contrast, metric) row of it, so that recomputing it decides the same family."""
    rows = set(zip(claims["contrast"], claims["metric"]))
    for contrasts in CLAIM_SETS.values():
        if rows <= {(c.name, c.metric) for c in contrasts}:
            return contrasts
    raise ValueError(f"no contrast set of cfcl.claims.CLAIM_SETS holds every row of these claims: {sorted(rows)[:4]}")


def recompute_contrast(path, contrast: str, metric: str = "dsc", n_boot: int = 10000, seed: int = 0,
                       contrasts: tuple[Contrast, ...] = CLAIMS) -> dict:
    """One row of :func:`recompute_claims` (``contrast`` as in ``claims.csv``, e.g. ``"DVD-CL - None"``):
    its estimate and intervals within the family of every claim of ``contrasts`` the file supports."""
    t = recompute_claims(path, contrasts, n_boot=n_boot, seed=seed)
    row = t[(t["contrast"] == contrast) & (t["metric"] == metric)]
    if row.empty:
        raise ValueError(f"{path}: no contrast {contrast!r} on {metric!r}; it has {sorted(set(t['contrast']))}")
    return row.iloc[0].to_dict()
