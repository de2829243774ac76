"""Figures of notebooks 04 and 06: segmentations of every method (paper Figure 3) and the forest plot of
the paper's claims."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import ListedColormap

from cfcl.plots import forest

LABEL_CMAP = ListedColormap([(0, 0, 0, 0), (0.95, 0.3, 0.2, 0.45), (0.2, 0.6, 1.0, 0.45)])


def plot_segmentations(image: np.ndarray, gold: np.ndarray, preds: dict[str, np.ndarray],
                       dsc: dict[str, float] | None = None) -> plt.Figure:
    """One image, its gold mask and every method's prediction side by side (paper Figure 3).

    Right lung red, left lung blue; the gold contour is drawn in white on every panel.
    """
    panels = [("Gold", gold)] + list(preds.items())
    n = len(panels)
    cols = min(n, 5)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows))
    axes = np.atleast_1d(axes).ravel()
    for ax, (name, mask) in zip(axes, panels):
        ax.imshow(image, cmap="gray")
        ax.imshow(mask, cmap=LABEL_CMAP, vmin=0, vmax=2, interpolation="nearest")
        ax.contour(gold > 0, levels=[0.5], colors="w", linewidths=0.6)
        title = name if not dsc or name not in dsc else f"{name}\nDSC {dsc[name]:.1f}"
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_claims(claims: pd.DataFrame, title: str = "", interval: str = "auto") -> plt.Figure:
    """The paper's claims decided (:func:`cfcl.claims.decide`, or its ``claims.csv``) as a forest plot: one
    panel per metric (their scales differ), in each the claims in order, each claim's contrasts below its
    title; per contrast the estimate and its interval at the family's level (points x 100), coloured by
    verdict, and with several seeds the range of the per-seed estimates. ``title`` heads the figure, before
    ": estimate and <level> % intervals".

    ``interval``: ``"images"`` draws ``ci_low``/``ci_high`` coloured by ``verdict``; ``"runs"`` the two-level
    interval over pre-training runs, seeds and images (``run_ci_low``/``run_ci_high``) coloured by
    ``run_verdict``; ``"auto"`` the two-level one wherever the table has it."""
    if claims.empty:
        raise ValueError("plot_claims: no contrast to draw (the claims table is empty)")
    has_runs = "run_verdict" in claims and claims["run_verdict"].notna().any()
    if interval not in ("auto", "images", "runs"):
        raise ValueError(f"plot_claims: interval={interval!r}; use 'auto', 'images' or 'runs'")
    if interval == "runs" and not has_runs:
        raise ValueError("plot_claims: interval='runs' needs run_ci_low, run_ci_high and run_verdict (claims "
                         "decided with several pre-training replicates or fine-tuning seeds)")
    two_level = has_runs and interval != "images"
    if two_level:
        claims = claims.assign(ci_low=claims["run_ci_low"], ci_high=claims["run_ci_high"],
                               verdict=claims["run_verdict"])
    metrics = list(dict.fromkeys(claims["metric"]))
    panels = []
    for metric in metrics:
        part = claims[claims["metric"] == metric]
        rows, headers = [], {}
        for claim in dict.fromkeys(part["claim"]):
            headers[len(rows)] = claim
            rows.append({"contrast": claim, "estimate": np.nan, "ci_low": np.nan, "ci_high": np.nan,
                         "verdict": "", "seed_min": np.nan, "seed_max": np.nan})
            rows.extend(part[part["claim"] == claim].to_dict("records"))
        panels.append((metric, pd.DataFrame(rows), headers))
    heights = [len(rows) for _, rows, _ in panels]
    seeds = "seed_min" in claims and claims["seed_min"].notna().any()
    with sns.axes_style(forest.STYLE):
        fig, axes = plt.subplots(len(panels), 1, figsize=(8.0, 0.27 * sum(heights) + 0.75 * len(panels) + 0.9),
                                 gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (metric, rows, headers) in zip(axes[:, 0], panels):
        forest.draw(ax, rows, headers=headers)
        ax.set_xlabel(f"{forest.METRIC_NAMES.get(metric, metric)}: difference a - b (points)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    title = title or "The paper's claims"
    kind = "two-level (runs, seeds, images) " if two_level else ""
    fig.suptitle(f"{title}: estimate and {kind}{forest.level_text(claims)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    forest.legend(fig, seeds=seeds, loc="lower center")
    return fig
