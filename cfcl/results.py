"""The paper's Table 2, the robustness analysis beyond it, and how tables are written.

Table 2 (paper section 4.2): for every pre-training method (nine rows, None included), the
mean +- std over the five folds of DSC, DSC_NF (healthy), DSC_PE (effusion), HD95 and ASD
(:func:`cfcl.metrics.summarise_folds`), next to the published numbers.

Robustness (beyond the paper, possible because the phantom gives exact counterfactuals):
on the held-out test split, balanced over scanner x effusion, DSC per (scanner, effusion)
cell, and the consistency of each fine-tuned model under do(scanner) and do(effusion): the
Dice between the prediction on x and on its counterfactual, restricted to the pixels whose
anatomy did not change (outside the effusion region of either image).

What the claims stand on is written next to them: :func:`per_image_tables` (what notebook 06 reads)
writes ``figures/<label>/table2_test_per_image.csv``, one row per (method, pre-training replicate,
fine-tuning seed, test image) with each metric the mean over that pair's fold models
(:data:`cfcl.claims.RUN_COLUMNS`, 4 decimals), so ``claims.csv`` can be recomputed from committed files
(:func:`cfcl.claims.recompute_claims`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cfcl import metrics
from cfcl.claims import RUN_COLUMNS, PerSeed
from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, Profile
from cfcl.data import load_split, phantom
from cfcl.methods import FINETUNE_METHODS, METHODS, TABLE2_COLUMNS
from cfcl.outputs import figure_path
from cfcl.paths import atomic_path
from cfcl.read.finetune import fold_metrics, fold_runs, load_fold
from cfcl.replicates import replicate_profiles
from cfcl.stats import bootstrap_ci

COLUMNS = TABLE2_COLUMNS


def table2(profile: Profile, methods: tuple[str, ...] = FINETUNE_METHODS) -> pd.DataFrame:
    """Table 2 as numbers: one row per method, columns ``<metric>_mean``/``<metric>_std`` and
    ``<metric>_paper`` (the published mean). Reads the fine-tuning runs (verified); a missing one is
    an error naming the command that makes it, never fine-tuned here."""
    rows = []
    for m in methods:
        s = metrics.summarise_folds(fold_metrics(profile, m))
        s = s.iloc[0].to_dict() if isinstance(s, pd.DataFrame) else dict(s)
        row = {"method": m, "group": METHODS[m].group, "name": METHODS[m].display}
        for c in COLUMNS:
            row[f"{c}_mean"], row[f"{c}_std"] = _mean_std(s, c)
            row[f"{c}_paper"] = METHODS[m].table2[c][0]
        rows.append(row)
    return pd.DataFrame(rows)


def _mean_std(summary: dict, col: str) -> tuple[float, float]:
    if f"{col}_mean" in summary:
        return float(summary[f"{col}_mean"]), float(summary[f"{col}_std"])
    v = summary[col]
    return (float(v[0]), float(v[1])) if isinstance(v, (tuple, list)) else (float(v), float("nan"))


def format_table2(t: pd.DataFrame, with_paper: bool = True) -> pd.DataFrame:
    """Table 2 laid out like the paper: "mean ± std" strings, the paper's value beside each."""
    out = pd.DataFrame({"Group": t["group"], "Pre-training": t["name"]})
    for c in COLUMNS:
        digits = 1 if c == "HD95" else 2
        out[c] = [metrics.format_pm(m, s, digits) for m, s in zip(t[f"{c}_mean"], t[f"{c}_std"])]
        if with_paper:
            out[f"{c} (paper)"] = [f"{v:.{digits}f}" for v in t[f"{c}_paper"]]
    return out


def changed_regions(profile: Profile, split: str = "test") -> np.ndarray | None:
    """Where each intervention can change the anatomy, (N, 3, H, W) bool in ``INTERVENTIONS``
    order, from the phantom: for the interventions on effusion, the effusion region (the potential
    fluid support dilated by the blur) of the factual or the counterfactual; for do(scanner),
    nowhere (the acquisition changes, the anatomy does not). None for a source without exact
    counterfactuals."""
    if profile.data.source != "phantom":
        return None

    data = load_split(profile, split)
    noise = phantom.load_noise(profile.data, split)
    size = profile.data.image_size
    base = phantom.render(noise, data.parents, size)["effusion_region"]
    out = []
    for iv in INTERVENTIONS:
        if "effusion" in INTERVENED_PARENTS[iv]:
            out.append(base | phantom.counterfactual(noise, data.parents, iv, size)["effusion_region"])
        else:
            out.append(np.zeros_like(base))
    return np.stack(out, axis=1)


def robustness(profile: Profile, method: str, regions: np.ndarray | None = None) -> pd.DataFrame:
    """DSC per (scanner, effusion) cell of the test split and counterfactual consistency, mean over the
    fold models (every fold and fine-tuning seed).

    Returns one row with columns ``DSC[sc=a,pe=b]`` for the four cells and ``consistency[<iv>]``
    (Dice between the prediction on x and on do(iv) x, outside the changed region, in %).
    """
    test = load_split(profile, "test")
    par = test.parents
    rows = []
    for r, k in fold_runs(profile):
        f = load_fold(profile, method, k, r)
        row: dict[str, float] = {}
        if test.gold is not None:
            t = metrics.segmentation_table(f["test_pred"], np.asarray(test.gold), par["effusion"].to_numpy())
            for (sc, pe), g in t.groupby([par["scanner"].to_numpy(), par["effusion"].to_numpy()]):
                row[f"DSC[sc={sc},pe={pe}]"] = 100 * g["dsc"].mean()
        if "test_cf_pred" in f:
            for j, iv in enumerate(INTERVENTIONS):
                a, b = f["test_pred"].copy(), f["test_cf_pred"][:, j].copy()
                if regions is not None:
                    a[regions[:, j]] = 0
                    b[regions[:, j]] = 0
                row[f"consistency[{iv}]"] = 100 * float(np.mean(metrics.dice(a, b).mean(1)))
        rows.append(row)
    mean = pd.DataFrame(rows).mean().to_frame().T
    mean.insert(0, "method", method)
    return mean


def _replicates(profile: Profile, method: str, replicate: int | None) -> list[Profile]:
    """The profiles whose fine-tuned models of ``method`` the results average: every pre-training replicate
    (:mod:`cfcl.replicates`), or ``replicate`` alone; one for a method that pre-trains nothing."""
    if not METHODS[method].pretrained:
        return [profile]
    profs = replicate_profiles(profile)
    if replicate is None:
        return profs
    chosen = [p for p in profs if p.pretrain.replicate == replicate]
    if not chosen:
        raise ValueError(f"pre-training replicate {replicate} is not among {[p.pretrain.replicate for p in profs]} "
                         f"(pretrain.replicate={profile.pretrain.replicate}, pretrain.seeds={profile.pretrain.seeds})")
    return chosen


def model_metrics(profile: Profile, method: str, regions: np.ndarray | None = None) -> pd.DataFrame:
    """Per-image metrics of every fine-tuned model of ``method`` on the held-out test split: one row per
    (pre-training replicate, fine-tuning seed, fold, test image), columns ``replicate``, ``seed``, ``fold``,
    ``image``, then the metrics of :func:`test_per_image`. Computed once and aggregated in several ways
    (:func:`test_per_image`'s ``models``, :func:`per_image_by_seed`'s ``models``): the metrics are the
    costly part of the results. Requires gold masks on the test split."""
    test = load_split(profile, "test")
    if test.gold is None:
        raise ValueError("model_metrics: the test split has no gold masks (real data without a labelled test "
                         "split); the claims use the cross-validation folds there (test_per_image)")
    gold, eff = np.asarray(test.gold), test.parents["effusion"].to_numpy().astype(int)
    hidden = None
    if regions is not None:
        hidden = regions[:, INTERVENTIONS.index("effusion")] & (eff == 1)[:, None, None]
    tables = []
    for prof, r, k in ((p, r, k) for p in _replicates(profile, method, None) for r, k in fold_runs(p)):
        pred = load_fold(prof, method, k, r)["test_pred"]
        t = metrics.segmentation_table(pred, gold, eff)
        t["lower_dice"] = metrics.lower_field_dice(pred, gold)
        if hidden is not None:
            t["hidden_recall"] = metrics.hidden_lung_recall(pred, gold, hidden)
        t.insert(0, "image", np.arange(len(t)))
        for name, value in (("fold", k), ("seed", r), ("replicate", prof.pretrain.replicate)):
            t.insert(0, name, value)
        tables.append(t)
    return pd.concat(tables, ignore_index=True)


def test_per_image(profile: Profile, method: str, regions: np.ndarray | None = None,
                   seed: int | None = None, replicate: int | None = None,
                   models: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-image metrics of ``method`` on the held-out test split, each the mean over the fold models
    (every fold, fine-tuning seed and pre-training replicate, ``pretrain.seeds``; ``seed``: the fold models
    of that fine-tuning seed only; ``replicate``: those of that pre-training replicate only).

    Columns ``dsc``, ``dsc_right``, ``dsc_left``, ``hd95``, ``asd`` (:func:`cfcl.metrics.segmentation_table`),
    ``lower_dice`` (:func:`cfcl.metrics.lower_field_dice`: the lung bases, where fluid hides the lung),
    ``effusion`` and, with ``regions`` (:func:`changed_regions`), ``hidden_recall``
    (:func:`cfcl.metrics.hidden_lung_recall` inside the fluid that do(effusion) removes from an effusion
    image; nan on healthy images). One row per test image (index = image), so two methods pair image by
    image: the unit of the claims (:mod:`cfcl.claims`). Averaging over the fold models first keeps the
    images independent (each was tested by all five). ``models``: :func:`model_metrics` of the same
    profile, method and regions, already computed (else it is computed here). Where the test split has no
    gold masks (real data without a labelled test split), the cross-validation test folds' images instead
    (each tested once)."""
    test = load_split(profile, "test")
    if test.gold is None:  # real data without a labelled test split: the cross-validation test folds
        return _cv_per_image(profile, method, seed, replicate)
    if replicate is not None:
        _replicates(profile, method, replicate)  # an unknown replicate is an error naming the choices
    models = model_metrics(profile, method, regions) if models is None else models
    keep = np.ones(len(models), bool)
    if seed is not None:
        keep &= (models["seed"] == seed).to_numpy()
    if replicate is not None and METHODS[method].pretrained:
        keep &= (models["replicate"] == replicate).to_numpy()
    # nan (no hidden lung) is left out of the mean
    out = models[keep].drop(columns=["replicate", "seed", "fold"]).groupby("image").mean()
    out["effusion"] = test.parents["effusion"].to_numpy().astype(int)
    return out


def _cv_per_image(profile: Profile, method: str, seed: int | None = None,
                  replicate: int | None = None) -> pd.DataFrame:
    """Per-image metrics of the cross-validation test folds (each annotated image tested by the model of
    its fold, averaged over the fine-tuning seeds and pre-training replicates), indexed by annotated
    image: the claims' unit when the test split has no gold."""
    t = pd.concat([fold_metrics(p, method) for p in _replicates(profile, method, replicate)], ignore_index=True)
    t = t if seed is None else t[t["seed"] == seed]
    t = t.drop(columns=["method", "fold", "seed"]).groupby("index").mean()
    t["effusion"] = t["effusion"].astype(int)
    t.index.name = "image"
    return t


def per_image_by_seed(profile: Profile, methods: tuple[str, ...], regions: np.ndarray | None = None,
                      models: dict[str, pd.DataFrame] | None = None) -> PerSeed | None:
    """The per-image tables of ``methods`` (:func:`test_per_image`) on each (pre-training replicate,
    fine-tuning seed) alone: the seed spread the claims check (:func:`cfcl.claims.decide`'s ``per_seed``);
    None with a single one. ``models``: :func:`model_metrics` per method, already computed. A
    :class:`cfcl.claims.PerSeed` list: its ``runs`` (:func:`run_table`, None without a labelled test split)
    gives the claims their two-level interval."""
    reps = [p.pretrain.replicate for p in replicate_profiles(profile)]
    combos = [(r, s) for r in reps for s in range(profile.finetune.seeds)]
    if len(combos) < 2:
        return None
    models = _all_model_metrics(profile, methods, regions, models)
    return PerSeed([{m: test_per_image(profile, m, regions, seed=s, replicate=r if METHODS[m].pretrained else None,
                                       models=models.get(m)) for m in methods} for r, s in combos],
                   run_table(models) if models else None)


def run_table(models: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (method, pre-training replicate, fine-tuning seed, test image) from each method's
    :func:`model_metrics`: each metric the mean over that pair's folds, columns
    :data:`cfcl.claims.RUN_COLUMNS` (``hidden_recall`` nan where there are no changed regions)."""
    tables = []
    for m, t in models.items():
        cols = [c for c in RUN_COLUMNS[4:] if c in t]
        g = t.groupby(["replicate", "seed", "image"], sort=True)[cols].mean().reset_index()
        g.insert(0, "method", m)
        tables.append(g)
    out = pd.concat(tables, ignore_index=True)
    for c in RUN_COLUMNS:
        if c not in out:
            out[c] = np.nan
    out["effusion"] = out["effusion"].round().astype(int)
    return out[list(RUN_COLUMNS)]


def write_runs(runs: pd.DataFrame, profile: Profile, stem: str) -> Path:
    """``figures/<label>/<stem>.csv`` from a long per-run table, floats to 4 decimals (1/100 of a DSC
    point: a few MB for thousands of images x dozens of runs), written atomically."""
    path = figure_path(profile, f"{stem}.csv")
    with atomic_path(path) as tmp:
        runs.to_csv(tmp, index=False, float_format="%.4f")
    return path


def per_image_tables(profile: Profile, methods: tuple[str, ...], regions: np.ndarray | None = None,
                     write: bool = True) -> tuple[dict[str, pd.DataFrame], PerSeed | None]:
    """What the claims read: :func:`test_per_image` of every method (over all its models) and
    :func:`per_image_by_seed`, with each model's metrics computed once (:func:`model_metrics`). With
    ``write`` and a labelled test split, also writes what they stand on,
    ``figures/<label>/table2_test_per_image.csv`` (:func:`run_table`, :func:`write_runs`)."""
    models = _all_model_metrics(profile, methods, regions)
    per_image = {m: test_per_image(profile, m, regions, models=models.get(m)) for m in methods}
    if write and models:
        write_runs(run_table(models), profile, "table2_test_per_image")
    return per_image, per_image_by_seed(profile, methods, regions, models=models)


def _all_model_metrics(profile: Profile, methods: tuple[str, ...], regions: np.ndarray | None,
                       known: dict[str, pd.DataFrame] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`model_metrics` of every method (those in ``known`` reused); empty where the test split has no
    gold masks (the per-image tables then come from the cross-validation folds)."""
    known = known or {}
    if load_split(profile, "test").gold is None:
        return {}
    return {m: known[m] if m in known else model_metrics(profile, m, regions) for m in methods}


def table2_test(per_image: dict[str, pd.DataFrame], n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Table 2's columns on the held-out test split: per method the mean over test images of the
    per-image metrics (:func:`test_per_image`) with a 95 % bootstrap interval over images and ``n``.
    DSC columns in %; HD95 and ASD in pixels."""
    cols = {"DSC": ("dsc", None), "DSC_NF": ("dsc", 0), "DSC_PE": ("dsc", 1), "HD95": ("hd95", None),
            "ASD": ("asd", None)}
    rows = []
    for m, t in per_image.items():
        row = {"method": m, "name": METHODS[m].display, "n": len(t)}
        for c, (col, eff) in cols.items():
            v = t[col] if eff is None else t.loc[t["effusion"] == eff, col]
            v = v.to_numpy(float)
            v = v[np.isfinite(v)] * (100 if col == "dsc" else 1)
            lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed) if len(v) > 1 else (np.nan, np.nan)
            row.update({f"{c}_mean": float(v.mean()) if len(v) else np.nan, f"{c}_low": lo, f"{c}_high": hi,
                        f"{c}_paper": METHODS[m].table2[c][0]})
        rows.append(row)
    return pd.DataFrame(rows)
