"""Figures and tables of notebooks 01 (HVAE training) and 02 (counterfactuals, their fine-tuning and
quality); paper section 2.1."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from cfcl.config import INTERVENTIONS, PARENTS
from cfcl.counterfactual.parents import PARENT_SETTINGS, parents_tensor, to_model_space, to_uint8
from cfcl.counterfactual.quality import changed_region_dice

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


def plot_samples(model: torch.nn.Module, per_setting: int = 4, t: float = 0.7, seed: int = 0) -> plt.Figure:
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


def plot_reconstructions(model: torch.nn.Module, images: np.ndarray, parents: pd.DataFrame, n: int = 6) -> plt.Figure:
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


def plot_cf_finetune_log(log: pd.DataFrame, window: int = 10) -> plt.Figure:
    """Counterfactual fine-tuning per step (running means over ``window`` steps): the predictors'
    cross-entropy on x_cf per parent and summed, the negative ELBO of the factual batch against its
    constraint ``eps``, and the Lagrange multiplier; with the cycle term (``hvae.cf_cycle``, a non-zero
    ``cycle`` column) a fourth panel, the batch's reversibility error ``mean |x_back - x|`` in grey levels."""
    cycle = "cycle" in log and bool((log["cycle"].fillna(0) > 0).any())
    fig, axes = plt.subplots(1, 4 if cycle else 3, figsize=(16 if cycle else 12, 3))
    smooth = log.rolling(window, min_periods=1).mean()
    if cycle:  # model space [-1, 1] to grey levels: x 127.5
        axes[3].plot(log["step"], 127.5 * smooth["cycle"], "-")
        axes[3].set_title("cycle: mean |x_back - x| (grey levels)", fontsize=9)
    axes[0].plot(log["step"], smooth["aux"], "k-", label="sum")
    for p in PARENTS:
        axes[0].plot(log["step"], smooth[f"aux_{p}"], "-", label=p, lw=1)
    axes[0].set_title("predictors' cross-entropy on x_cf (nats)", fontsize=9)
    axes[0].legend(fontsize=7)
    axes[1].plot(log["step"], smooth["elbo"], "-", label="-ELBO (factual batch)")
    axes[1].plot(log["step"], log["eps"], "--", label="eps (constraint)")
    axes[1].set_title("NLL + beta KL (nats/pixel)", fontsize=9)
    axes[1].legend(fontsize=7)
    axes[2].plot(log["step"], log["lambda"], "-")
    axes[2].set_title("Lagrange multiplier", fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    return fig


def plot_before_after(images: np.ndarray, parents: pd.DataFrame, before: np.ndarray, after: np.ndarray,
                      oracle: np.ndarray | None, indices: list[int] | None = None,
                      interventions: tuple[str, ...] = INTERVENTIONS) -> plt.Figure:
    """For each chosen image and intervention: x, the ELBO-only HVAE's counterfactual (before
    fine-tuning), the fine-tuned HVAE's (after), the exact one, and each minus x (signed, grey = 0)."""
    indices = pick_examples(parents) if indices is None else indices
    has_o = oracle is not None
    cols = ["x", "HVAE before", "HVAE after"] + (["exact"] if has_o else []) + \
        ["before - x", "after - x"] + (["exact - x"] if has_o else [])
    ks = [INTERVENTIONS.index(k) for k in interventions]
    fig, axes = _grid(len(indices) * len(ks), len(cols))
    for a, i in enumerate(indices):
        x = np.asarray(images[i]).astype(int)
        for b, k in enumerate(ks):
            r = a * len(ks) + b
            panels = [x, before[i, k], after[i, k]] + ([oracle[i, k]] if has_o else [])
            for c, img in enumerate(panels):
                axes[r, c].imshow(img, cmap="gray", vmin=0, vmax=255)
            for c, img in enumerate(panels[1:], start=len(panels)):
                axes[r, c].imshow(img.astype(int) - x, cmap="coolwarm", vmin=-128, vmax=128)
            pa = parents.iloc[i][list(PARENTS)].to_numpy()
            axes[r, 0].set_ylabel(f"#{i} {parent_label(pa)}\ndo({INTERVENTIONS[k]})", fontsize=7)
    for c, name in enumerate(cols):
        axes[0, c].set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


def plot_changed_regions(images: np.ndarray, parents: pd.DataFrame, before: np.ndarray, after: np.ndarray,
                         oracle: np.ndarray, intervention: str = "effusion", indices: list[int] | None = None,
                         threshold: float = 0.1) -> plt.Figure:
    """The changed regions ``|cf - x| > threshold * 255`` that ``changed_dice`` compares, for one
    intervention: x, then the region of the HVAE before and after fine-tuning (each with its Dice to
    the exact region) and the exact region."""
    k = INTERVENTIONS.index(intervention)
    indices = pick_examples(parents, n=6) if indices is None else indices
    fig, axes = _grid(len(indices), 4)
    thr = threshold * 255.0
    for r, i in enumerate(indices):
        x = np.asarray(images[i])
        axes[r, 0].imshow(x, cmap="gray", vmin=0, vmax=255)
        for c, (name, cf) in enumerate((("before", before), ("after", after), ("exact", oracle)), start=1):
            region = np.abs(cf[i, k].astype(float) - x.astype(float)) > thr
            axes[r, c].imshow(x, cmap="gray", vmin=0, vmax=255)
            axes[r, c].imshow(np.ma.masked_where(~region, region), cmap="autumn", alpha=0.6, vmin=0, vmax=1)
            if name != "exact":
                d = changed_region_dice(x[None], cf[i:i + 1, k], oracle[i:i + 1, k], threshold)[0]
                axes[r, c].set_xlabel(f"Dice {d:.2f}", fontsize=7)
        pa = parents.iloc[i][list(PARENTS)].to_numpy()
        axes[r, 0].set_ylabel(f"#{i} {parent_label(pa)}", fontsize=7)
    for c, name in enumerate(("x", "HVAE before", "HVAE after", "exact")):
        axes[0, c].set_title(f"{name}" if c == 0 else f"{name}: changed", fontsize=8)
    fig.suptitle(f"do({intervention}): pixels changed by more than {threshold:.0%} of the grey range", fontsize=9)
    fig.tight_layout()
    return fig
