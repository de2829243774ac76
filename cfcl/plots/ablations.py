"""Figure of notebook 07: each ablation's contrasts with their intervals (a forest plot, in the style of the
claims' in notebook 06: :mod:`cfcl.plots.forest`)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from cfcl.methods import METHODS
from cfcl.plots import forest

METRIC_NAMES = forest.METRIC_NAMES
VERDICT_COLOURS = forest.VERDICT_COLOURS


def plot_ablation(contrasts: pd.DataFrame, title: str = "") -> plt.Figure:
    """One panel per metric: every contrast's estimate (points x 100) with its interval at the family's
    level, coloured by verdict (green: ``a`` ahead beyond noise, red: behind, grey: inconclusive)."""
    metrics = [m for m in METRIC_NAMES if m in set(contrasts["metric"])]
    names = list(dict.fromkeys(contrasts["contrast"]))
    n = max(len(metrics), 1)
    with sns.axes_style(forest.STYLE):
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n, 0.4 * len(names) + 1.6), sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = contrasts[contrasts["metric"] == metric].set_index("contrast").reindex(names)
        rows = rows.assign(contrast=names)
        forest.draw(ax, rows)
        ax.set_title(METRIC_NAMES[metric], fontsize=9)
        ax.set_xlabel("difference a - b (points)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(f"{title}{': ' if title else ''}estimate and {forest.level_text(contrasts)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    forest.legend(fig, seeds="seed_min" in contrasts and contrasts["seed_min"].notna().any(), loc="lower center")
    return fig


def plot_length(contrasts: pd.DataFrame, title: str = "", baseline: str = "none") -> plt.Figure:
    """The ``length`` ablation: one panel per metric, each method's gap to ``baseline`` (None) against the
    pre-training steps (log axis), with its interval at the family's level; filled markers where the
    verdict is not inconclusive. Reads the ``a``, ``b`` and ``steps`` columns of
    :func:`cfcl.ablations.contrasts`."""
    gaps = contrasts[(contrasts["b"] == baseline) & contrasts["steps"].notna()]
    metrics = [m for m in METRIC_NAMES if m in set(gaps["metric"])]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for j, (a, rows) in enumerate(gaps[gaps["metric"] == metric].groupby("a", sort=False)):
            rows = rows.sort_values("steps")
            x = rows["steps"].to_numpy(float) * (1.03 ** (j - 0.5))  # a small offset keeps the bars apart
            y = rows["estimate"].to_numpy(float)
            err = [y - rows["ci_low"].to_numpy(float), rows["ci_high"].to_numpy(float) - y]
            line = ax.errorbar(x, y, yerr=err, fmt="-", capsize=3, label=METHODS[a].display)
            decided = (rows["verdict"] != "inconclusive").to_numpy()
            colour = line[0].get_color()
            ax.plot(x[decided], y[decided], "o", color=colour)
            ax.plot(x[~decided], y[~decided], "o", mfc="white", color=colour)
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        steps = sorted(set(gaps["steps"].astype(int)))
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.minorticks_off()
        ax.set_title(METRIC_NAMES[metric], fontsize=9)
        ax.set_xlabel("pre-training steps")
    axes[0][0].set_ylabel(f"gap to {METHODS[baseline].display} (points)")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
