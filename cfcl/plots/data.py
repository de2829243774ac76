"""Figures and tables of the data notebook (notebooks/00_data.ipynb): the phantom's parents beside
the real PadChest metadata, sample grids, gold vs silver masks, exact counterfactuals."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cfcl.config import INTERVENTIONS, SEX
from cfcl.data import ChestSplit, phantom

SCANNER_SHORT = ("ImagingDynamics", "Philips")
CELL_COLUMNS = ["sex", "scanner", "effusion"]


def _cell_label(sex: int, scanner: int, effusion: int) -> str:
    return f"{SEX[sex]} {SCANNER_SHORT[scanner]} {'PE' if effusion else 'no PE'}"


def parent_table(parents: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Frequency (%) of every (sex, scanner, effusion) cell in ``parents`` beside ``real``
    (a joint with a ``p`` column, e.g. :func:`cfcl.data.metadata.joint_distribution`), plus the
    effusion rate per scanner. One row per cell, columns cell, real %, phantom %, n."""
    counts = parents.groupby(CELL_COLUMNS).size()
    rows = []
    for _, r in real.sort_values(CELL_COLUMNS).iterrows():
        key = (int(r["sex"]), int(r["scanner"]), int(r["effusion"]))
        n = int(counts.get(key, 0))
        rows.append({"cell": _cell_label(*key), "real %": round(100 * float(r["p"]), 2),
                     "phantom %": round(100 * n / max(len(parents), 1), 2), "n": n})
    return pd.DataFrame(rows)


def effusion_rates(parents: pd.DataFrame, real: pd.DataFrame) -> pd.DataFrame:
    """Effusion rate (%) per scanner, real vs phantom, and the ratio Philips / ImagingDynamics."""
    real_rate = real.groupby("scanner").apply(lambda d: d.loc[d.effusion == 1, "p"].sum() / d["p"].sum(),
                                              include_groups=False)
    ph_rate = parents.groupby("scanner")["effusion"].mean().reindex([0, 1]).fillna(0.0)
    out = pd.DataFrame({"scanner": list(SCANNER_SHORT), "real PE %": (100 * real_rate.to_numpy()).round(2),
                        "phantom PE %": (100 * ph_rate.to_numpy()).round(2)})
    return out


def plot_parent_distribution(parents: pd.DataFrame, real: pd.DataFrame) -> plt.Figure:
    """Bar chart (log scale) of the 8 cell frequencies: real PadChest PA vs the phantom split."""
    table = parent_table(parents, real)
    fig, ax = plt.subplots(figsize=(9, 3.6))
    x = np.arange(len(table))
    ax.bar(x - 0.2, table["real %"], 0.4, label="PadChest PA (real metadata)")
    ax.bar(x + 0.2, table["phantom %"], 0.4, label=f"phantom ({len(parents)} images)")
    ax.set_yscale("log")
    ax.set_xticks(x, table["cell"], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("% of images")
    ax.legend(fontsize=8)
    ax.set_title("Parents: sex x scanner x pleural effusion")
    fig.tight_layout()
    return fig


def _show(ax: plt.Axes, img: np.ndarray, title: str | None = None) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def pick_cells(split: ChestSplit, per_cell: int = 1) -> list[tuple[tuple[int, int, int], list[int]]]:
    """Up to ``per_cell`` indices of each (scanner, effusion, sex) cell, in that order."""
    p = split.parents
    out = []
    for sc in (0, 1):
        for ef in (0, 1):
            for sx in (0, 1):
                idx = np.nonzero((p.scanner == sc).to_numpy() & (p.effusion == ef).to_numpy()
                                 & (p.sex == sx).to_numpy())[0][:per_cell]
                out.append(((sc, ef, sx), idx.tolist()))
    return out


def plot_sample_grid(split: ChestSplit, per_cell: int = 1) -> plt.Figure:
    """Rows scanner x effusion, columns sex (x ``per_cell`` examples); empty cells stay blank."""
    cells = pick_cells(split, per_cell)
    fig, axes = plt.subplots(4, 2 * per_cell, figsize=(1.9 * 2 * per_cell, 8), squeeze=False)
    for (sc, ef, sx), idx in cells:
        row = 2 * sc + ef
        for j in range(per_cell):
            ax = axes[row, sx * per_cell + j]
            ax.axis("off")
            if j < len(idx):
                _show(ax, split.images[idx[j]], f"{SEX[sx]} {SCANNER_SHORT[sc]}\n{'PE' if ef else 'no PE'}")
    fig.suptitle(f"Phantom samples ({split.name} split)", fontsize=10)
    fig.tight_layout()
    return fig


def _contours(ax: plt.Axes, labels: np.ndarray, color: str, style: str = "-") -> None:
    for k in (1, 2):
        m = (labels == k).astype(float)
        if m.any():
            ax.contour(m, levels=[0.5], colors=color, linewidths=1.0, linestyles=style)


def plot_gold_silver(split: ChestSplit, indices: list[int]) -> plt.Figure:
    """Each image with its gold (anatomical lungs, green) and silver (visible lung, red dashed)
    outlines, titled with the silver quality score."""
    if split.gold is None:
        raise ValueError(f"split {split.name!r} has no gold masks")
    fig, axes = plt.subplots(1, len(indices), figsize=(2.4 * len(indices), 2.8), squeeze=False)
    for ax, i in zip(axes[0], indices):
        ef = int(split.parents.effusion.iloc[i])
        q = "" if split.quality is None else f", quality {float(split.quality[i]):.2f}"
        _show(ax, split.images[i], f"{'PE' if ef else 'no PE'}{q}")
        _contours(ax, split.gold[i], "lime")
        _contours(ax, split.silver[i], "red", "--")
    fig.suptitle("gold (green) vs silver (red dashed) lung masks", fontsize=10)
    fig.tight_layout()
    return fig


def plot_counterfactual_grid(split: ChestSplit, indices: list[int]) -> plt.Figure:
    """Rows = images; columns x, do(scanner), do(effusion), do(both), then the three
    differences counterfactual - x (blue darker, red brighter)."""
    if split.counterfactuals is None:
        raise ValueError(f"split {split.name!r} has no counterfactuals")
    names = [f"do({n})" for n in INTERVENTIONS]
    fig, axes = plt.subplots(len(indices), 7, figsize=(13, 2.0 * len(indices)), squeeze=False)
    for r, i in enumerate(indices):
        p = split.parents.iloc[i]
        x = split.images[i].astype(np.int16)
        _show(axes[r, 0], split.images[i], f"x: {SCANNER_SHORT[int(p.scanner)]}, {'PE' if p.effusion else 'no PE'}")
        for j, name in enumerate(names):
            cf = split.counterfactuals[i, j]
            _show(axes[r, 1 + j], cf, name)
            d = axes[r, 4 + j]
            d.imshow(cf.astype(np.int16) - x, cmap="RdBu_r", vmin=-128, vmax=128, interpolation="nearest")
            d.set_xticks([]), d.set_yticks([])
            d.set_title(f"{name} - x", fontsize=8)
    fig.tight_layout()
    return fig


def plot_sizes(noise: dict[str, np.ndarray], parents: pd.DataFrame, sizes: tuple[int, ...] = (64, 128, 256)
               ) -> plt.Figure:
    """The same items rendered at several sizes from their stored noise, with gold outlines."""
    renders = [phantom.render(noise, parents, s) for s in sizes]
    fig, axes = plt.subplots(len(parents), len(sizes), figsize=(2.6 * len(sizes), 2.6 * len(parents)),
                             squeeze=False)
    for j, (s, out) in enumerate(zip(sizes, renders)):
        for i in range(len(parents)):
            _show(axes[i, j], out["image"][i], f"{s} px")
            _contours(axes[i, j], out["gold"][i], "lime")
    fig.tight_layout()
    return fig
