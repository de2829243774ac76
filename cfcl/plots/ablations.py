"""Figure of notebook 07: each ablation's contrasts with their intervals (a forest plot)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

METRIC_NAMES = {"dsc": "DSC", "dsc_pe": "DSC, effusion images", "hidden_recall": "hidden-lung recall"}
VERDICT_COLOURS = {"holds": "tab:green", "contradicted": "tab:red", "inconclusive": "0.4"}


def plot_ablation(contrasts: pd.DataFrame, title: str = "") -> plt.Figure:
    """One panel per metric: every contrast's estimate (points x 100) with its interval at the family's
    level, coloured by verdict (green: ``a`` ahead beyond noise, red: behind, grey: inconclusive)."""
    metrics = [m for m in METRIC_NAMES if m in set(contrasts["metric"])]
    names = list(dict.fromkeys(contrasts["contrast"]))
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.6 * max(len(metrics), 1), 0.5 * len(names) + 1.4),
                             sharey=True, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = contrasts[contrasts["metric"] == metric].set_index("contrast")
        for y, name in enumerate(names):
            if name not in rows.index:
                continue
            r = rows.loc[name]
            colour = VERDICT_COLOURS.get(str(r["verdict"]), "k")
            ax.errorbar(r["estimate"], y, xerr=[[r["estimate"] - r["ci_low"]], [r["ci_high"] - r["estimate"]]],
                        fmt="o", color=colour, capsize=3)
        ax.axvline(0, color="k", lw=0.8, ls="--")
        ax.set_title(METRIC_NAMES[metric], fontsize=9)
        ax.set_xlabel("difference (points)")
    axes[0][0].set_yticks(np.arange(len(names)), names, fontsize=8)
    axes[0][0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
