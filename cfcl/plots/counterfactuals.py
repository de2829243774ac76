"""Figures and tables of notebooks 01 (HVAE training) and 02 (counterfactuals); paper section 2.1."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cfcl.config import INTERVENTIONS, PARENTS, SCANNER
from cfcl.hvae import HVAE, PARENT_SETTINGS, parents_tensor, to_model_space, to_uint8
from cfcl.paths import atomic_path, figures_dir

_SHORT = {"sex": ("F", "M"), "scanner": ("IDC", "Philips"), "effusion": ("no PE", "PE")}


def parent_label(pa: np.ndarray | list) -> str:
    """``(sex, scanner, effusion)`` 0/1 -> ``"F, IDC, PE"``."""
    return ", ".join(_SHORT[name][int(v)] for name, v in zip(PARENTS, pa))


def _grid(n_rows: int, n_cols: int, size: float = 1.3):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(size * n_cols, size * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    return fig, axes


def plot_loss_curves(log: pd.DataFrame) -> plt.Figure:
    """Train and validation (EMA) loss, NLL and KL per epoch (nats per pixel)."""
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key in zip(axes, ("loss", "nll", "kl")):
        ax.plot(log["epoch"], log[f"train_{key}"], "o-", label="train")
        ax.plot(log["epoch"], log[f"val_{key}"], "s--", label="val (EMA)")
        ax.set_xlabel("epoch"), ax.set_title({"loss": "NLL + beta KL", "nll": "NLL", "kl": "KL"}[key] + " (nats/pixel)")
    axes[0].legend()
    fig.tight_layout()
    return fig


def plot_samples(model: HVAE, per_setting: int = 4, t: float = 0.7, seed: int = 0) -> plt.Figure:
    """Prior samples (likelihood means at temperature ``t``), one row per parent setting."""
    g = torch.Generator().manual_seed(seed)
    imgs = to_uint8(model.sample(PARENT_SETTINGS.repeat_interleave(per_setting, 0), t=t, generator=g))
    fig, axes = _grid(len(PARENT_SETTINGS), per_setting)
    for i, pa in enumerate(PARENT_SETTINGS.int().tolist()):
        axes[i, 0].set_ylabel(parent_label(pa), fontsize=7)
        for j in range(per_setting):
            axes[i, j].imshow(imgs[i * per_setting + j], cmap="gray", vmin=0, vmax=255)
    fig.suptitle(f"HVAE samples p(x | pa), t = {t}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_reconstructions(model: HVAE, images: np.ndarray, parents: pd.DataFrame, n: int = 6) -> plt.Figure:
    """Rows: image, reconstruction (decoder mean from the posterior means), |difference| x 4."""
    n = min(n, len(images))
    x = np.asarray(images[:n])
    rec = to_uint8(model.reconstruct(to_model_space(x), parents_tensor(parents.iloc[:n])))
    diff = np.clip(4 * np.abs(rec.astype(int) - x), 0, 255)
    fig, axes = _grid(3, n)
    for j in range(n):
        for i, img in enumerate((x[j], rec[j], diff[j])):
            axes[i, j].imshow(img, cmap="gray", vmin=0, vmax=255)
        axes[0, j].set_title(parent_label(parents.iloc[j][list(PARENTS)].to_numpy()), fontsize=7)
    for i, name in enumerate(("x", "reconstruction", "|diff| x4")):
        axes[i, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def pick_examples(parents: pd.DataFrame, n: int = 4) -> list[int]:
    """Up to ``n`` indices covering the scanner x effusion cells (first image of each cell)."""
    idx = [int(g.index[0]) for _, g in parents.groupby(["scanner", "effusion"])]
    rest = [i for i in range(len(parents)) if i not in idx]
    return sorted((idx + rest)[:n])


def plot_counterfactual_grid(images: np.ndarray, parents: pd.DataFrame, cf: np.ndarray,
                             oracle: np.ndarray | None = None, indices: list[int] | None = None) -> plt.Figure:
    """For each chosen image and intervention: x, HVAE counterfactual, oracle counterfactual,
    HVAE - x and oracle - x (signed differences, grey = 0)."""
    indices = pick_examples(parents) if indices is None else indices
    cols = ["x", "HVAE cf", "oracle cf", "HVAE - x", "oracle - x"] if oracle is not None else ["x", "HVAE cf", "HVAE - x"]
    fig, axes = _grid(len(indices) * len(INTERVENTIONS), len(cols))
    for a, i in enumerate(indices):
        x = np.asarray(images[i]).astype(int)
        for k, name in enumerate(INTERVENTIONS):
            r = a * len(INTERVENTIONS) + k
            panels = [x, cf[i, k]] + ([oracle[i, k]] if oracle is not None else [])
            diffs = [cf[i, k].astype(int) - x] + ([oracle[i, k].astype(int) - x] if oracle is not None else [])
            for c, img in enumerate(panels):
                axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            for c, d in enumerate(diffs, start=len(panels)):
                axes[r, c].imshow(d, cmap="coolwarm", vmin=-128, vmax=128)
            pa = parents.iloc[i][list(PARENTS)].to_numpy()
            axes[r, 0].set_ylabel(f"#{i} {parent_label(pa)}\ndo({name})", fontsize=7)
    for c, name in enumerate(cols):
        axes[0, c].set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table (no extra dependency)."""
    def fmt(v):
        return format(v, floatfmt) if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, name: str, profile_name: str, floatfmt: str = ".3f") -> Path:
    """Write ``figures/<profile>/<name>.csv`` and ``.md`` (atomically); returns the CSV path."""
    folder = figures_dir(profile_name)
    with atomic_path(folder / f"{name}.csv") as tmp:
        df.to_csv(tmp, index=False)
    with atomic_path(folder / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(df, floatfmt))
    return folder / f"{name}.csv"
