"""Figures of notebook 03: the tracked views of a method and its loss curve."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from cfcl import views
from cfcl.config import INTERVENTIONS

VIEW_NAMES = {"cf": ("x",) + tuple(f"do({iv})" for iv in INTERVENTIONS), "two": ("view 1", "view 2"), "one": ("view",)}


def plot_tracked_views(prep: dict, spec_views: str, n_points: int = 12, image: int = 0) -> plt.Figure:
    """The augmented views of one image with the same original points marked in every view.

    ``prep`` is :func:`cfcl.pretrain.prepare`'s output; for the dual-view methods the points of
    the first anchor-target pair are shown, so the anchor and that target share them.
    """
    vimgs, Ms = prep["views"][image, :, 0], prep["M"][image]
    V = vimgs.shape[0]
    fig, axes = plt.subplots(1, V, figsize=(2.6 * V, 2.8))
    axes = np.atleast_1d(axes)
    colors = plt.cm.tab20(np.linspace(0, 1, n_points))
    pts = prep["pts"][image, 0, :n_points] if "pts" in prep else None
    for v, ax in enumerate(axes):
        ax.imshow(vimgs[v].numpy(), cmap="gray", vmin=0, vmax=1)
        if pts is not None:
            pv = views.apply(Ms[v][None], pts[None])[0].numpy()
            inside = views.visible(pts[None], Ms[v][None], vimgs.shape[-1])[0].numpy()
            ax.scatter(pv[inside, 0], pv[inside, 1], s=14, c=colors[inside], edgecolors="k", linewidths=0.4)
        ax.set_title(VIEW_NAMES[spec_views][v], fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_losses(losses: pd.DataFrame, title: str = "") -> plt.Figure:
    """Training loss (and a running mean) against the step."""
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(losses["step"], losses["loss"], lw=0.8, alpha=0.5, label="loss")
    w = max(len(losses) // 20, 1)
    ax.plot(losses["step"], losses["loss"].rolling(w, min_periods=1).mean(), lw=1.5, label=f"mean of {w}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
