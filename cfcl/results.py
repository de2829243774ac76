"""The paper's Table 2, the robustness analysis beyond it, and how tables are written.

Table 2 (paper section 4.2): for every pre-training method (nine rows, None included), the
mean +- std over the five folds of DSC, DSC_NF (healthy), DSC_PE (effusion), HD95 and ASD
(:func:`cfcl.metrics.summarise_folds`), next to the published numbers.

Robustness (beyond the paper, possible because the phantom gives exact counterfactuals):
on the held-out test split, balanced over scanner x effusion, DSC per (scanner, effusion)
cell, and the consistency of each fine-tuned model under do(scanner) and do(effusion): the
Dice between the prediction on x and on its counterfactual, restricted to the pixels whose
anatomy did not change (outside the effusion region of either image).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cfcl import metrics
from cfcl.config import INTERVENTIONS, Profile
from cfcl.data import load_split
from cfcl.finetune import fold_metrics, load_fold
from cfcl.methods import FINETUNE_METHODS, METHODS, TABLE2_COLUMNS

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
    from cfcl.config import INTERVENED_PARENTS
    from cfcl.data import phantom

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
    """DSC per (scanner, effusion) cell of the test split and counterfactual consistency, mean over folds.

    Returns one row with columns ``DSC[sc=a,pe=b]`` for the four cells and ``consistency[<iv>]``
    (Dice between the prediction on x and on do(iv) x, outside the changed region, in %).
    """
    test = load_split(profile, "test")
    par = test.parents
    rows = []
    for k in range(profile.finetune.folds):
        f = load_fold(profile, method, k)
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


def claims(t2: pd.DataFrame) -> pd.DataFrame:
    """Check the paper's headline claims (section 4.2) against a :func:`table2` result.

    Each row: the claim, whether it holds on these numbers (means), and the evidence with the
    fold spread (mean ± std), so a reader sees when a difference is within the noise.
    """
    t = t2.set_index("method")

    def pm(m: str, c: str = "DSC") -> str:
        return f"{METHODS[m].display} {t.loc[m, f'{c}_mean']:.2f} ± {t.loc[m, f'{c}_std']:.2f}"

    def dsc(m: str) -> float:
        return float(t.loc[m, "DSC_mean"])

    def gap(m: str) -> float:
        return float(t.loc[m, "DSC_NF_mean"] - t.loc[m, "DSC_PE_mean"])

    pre = [m for m in t.index if m != "none"]
    rows = [
        ("every pre-training beats None (DSC)", all(dsc(m) > dsc("none") for m in pre),
         "; ".join(pm(m) for m in ["none"] + pre)),
        ("DVD-CL beats VADeR and SimCLR (DSC)", dsc("dvd_cl") > max(dsc("vader"), dsc("simclr")),
         "; ".join(pm(m) for m in ("dvd_cl", "vader", "simclr"))),
        ("DVD-CL is the best unsupervised method (DSC)",
         dsc("dvd_cl") >= max(dsc(m) for m in ("simclr", "vader", "mvd_cl")),
         "; ".join(pm(m) for m in ("dvd_cl", "mvd_cl", "vader", "simclr"))),
        ("S-MVD-CL beats CheXmask-supervised (DSC)", dsc("s_mvd_cl") > dsc("chexmask"),
         "; ".join(pm(m) for m in ("s_mvd_cl", "chexmask"))),
        ("S-DVD-CL and S-MVD-CL beat SSDCL (DSC)", min(dsc("s_dvd_cl"), dsc("s_mvd_cl")) > dsc("ssdcl"),
         "; ".join(pm(m) for m in ("s_dvd_cl", "s_mvd_cl", "ssdcl"))),
        ("the effusion gap (DSC_NF - DSC_PE) shrinks with every pre-training", all(gap(m) < gap("none") for m in pre),
         "; ".join(f"{METHODS[m].display} {gap(m):.2f}" for m in ["none"] + pre)),
    ]
    return pd.DataFrame(rows, columns=["claim", "holds", "evidence"])
