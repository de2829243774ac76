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

from pathlib import Path

import numpy as np
import pandas as pd

from cfcl import metrics
from cfcl.config import FINETUNE_METHODS, INTERVENTIONS, Profile
from cfcl.data import load_split
from cfcl.finetune import finetune, load_fold
from cfcl.paths import atomic_path, figures_dir

ROW_NAMES = {"none": "None", "simclr": "SimCLR", "vader": "VADeR", "dvd_cl": "DVD-CL", "mvd_cl": "MVD-CL",
             "chexmask": "CheXMask", "ssdcl": "SSDCL", "s_dvd_cl": "S-DVD-CL", "s_mvd_cl": "S-MVD-CL"}
GROUPS = {"none": "", "simclr": "Unsupervised", "vader": "Unsupervised", "dvd_cl": "Unsupervised",
          "mvd_cl": "Unsupervised", "chexmask": "Supervised", "ssdcl": "Supervised",
          "s_dvd_cl": "Supervised", "s_mvd_cl": "Supervised"}
COLUMNS = ("DSC", "DSC_NF", "DSC_PE", "HD95", "ASD")

#: Paper Table 2 (PadChest, 5 folds): (mean, std) per column.
PAPER_TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    "none": {"DSC": (87.05, 4.34), "DSC_NF": (93.59, 1.28), "DSC_PE": (84.76, 1.28), "HD95": (21.9, 8.0), "ASD": (5.39, 2.05)},
    "simclr": {"DSC": (90.90, 2.94), "DSC_NF": (96.71, 0.28), "DSC_PE": (88.61, 4.15), "HD95": (11.9, 5.3), "ASD": (3.64, 1.63)},
    "vader": {"DSC": (92.26, 2.66), "DSC_NF": (97.22, 0.16), "DSC_PE": (90.33, 3.68), "HD95": (10.4, 3.7), "ASD": (2.79, 1.14)},
    "dvd_cl": {"DSC": (92.76, 2.23), "DSC_NF": (97.36, 0.14), "DSC_PE": (91.08, 3.18), "HD95": (10.5, 3.6), "ASD": (2.86, 1.04)},
    "mvd_cl": {"DSC": (92.27, 2.73), "DSC_NF": (97.18, 0.25), "DSC_PE": (90.36, 3.79), "HD95": (9.1, 4.9), "ASD": (2.61, 1.16)},
    "chexmask": {"DSC": (93.65, 2.33), "DSC_NF": (97.81, 0.20), "DSC_PE": (92.02, 3.23), "HD95": (7.3, 1.8), "ASD": (2.46, 1.26)},
    "ssdcl": {"DSC": (92.91, 2.77), "DSC_NF": (97.58, 0.17), "DSC_PE": (91.10, 3.84), "HD95": (15.3, 5.0), "ASD": (3.31, 1.20)},
    "s_dvd_cl": {"DSC": (93.15, 2.61), "DSC_NF": (97.62, 0.11), "DSC_PE": (91.43, 3.65), "HD95": (8.0, 3.9), "ASD": (2.96, 1.97)},
    "s_mvd_cl": {"DSC": (93.93, 1.92), "DSC_NF": (97.75, 0.09), "DSC_PE": (92.43, 2.67), "HD95": (7.3, 3.4), "ASD": (2.05, 0.74)},
}


def table2(profile: Profile, methods: tuple[str, ...] = FINETUNE_METHODS, progress: bool = False) -> pd.DataFrame:
    """Table 2 as numbers: one row per method, columns ``<metric>_mean``/``<metric>_std`` and
    ``<metric>_paper`` (the published mean)."""
    rows = []
    for m in methods:
        s = metrics.summarise_folds(finetune(profile, m, progress=progress))
        s = s.iloc[0].to_dict() if isinstance(s, pd.DataFrame) else dict(s)
        row = {"method": m, "group": GROUPS[m], "name": ROW_NAMES[m]}
        for c in COLUMNS:
            row[f"{c}_mean"], row[f"{c}_std"] = _mean_std(s, c)
            row[f"{c}_paper"] = PAPER_TABLE2[m][c][0]
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


def write_table(df: pd.DataFrame, stem: str, profile: Profile, caption: str = "") -> dict[str, Path]:
    """Write ``df`` as CSV, Markdown and LaTeX to figures/<profile>/<stem>.{csv,md,tex} (atomically)."""
    if df.index.name is not None:  # a named index (e.g. the method) is a column of the table
        df = df.reset_index()
    d = figures_dir(profile.name)
    paths = {ext: d / f"{stem}.{ext}" for ext in ("csv", "md", "tex")}
    texts = {"csv": df.to_csv(index=False),
             "md": (f"{caption}\n\n" if caption else "") + df.to_markdown(index=False) + "\n",
             "tex": df.to_latex(index=False, caption=caption or None, escape=True)}
    for ext, path in paths.items():
        with atomic_path(path) as tmp:
            tmp.write_text(texts[ext])
    return paths


def changed_regions(profile: Profile, split: str = "test") -> np.ndarray | None:
    """Effusion regions (N, 3, H, W) bool of the split's counterfactuals (union with the factual's),
    from the phantom; None for a source without exact counterfactuals."""
    if profile.data.source != "phantom":
        return None
    from cfcl.data import phantom

    data = load_split(profile, split)
    noise = phantom.load_noise(profile.data, split)
    size = profile.data.image_size
    base = phantom.render(noise, data.parents, size)["effusion_region"]
    return np.stack([base | phantom.counterfactual(noise, data.parents, iv, size)["effusion_region"]
                     for iv in INTERVENTIONS], axis=1)


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
        return f"{ROW_NAMES[m]} {t.loc[m, f'{c}_mean']:.2f} ± {t.loc[m, f'{c}_std']:.2f}"

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
         "; ".join(f"{ROW_NAMES[m]} {gap(m):.2f}" for m in ["none"] + pre)),
    ]
    return pd.DataFrame(rows, columns=["claim", "holds", "evidence"])
