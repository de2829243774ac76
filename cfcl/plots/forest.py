"""Forest plots of decided contrasts (the claims of notebook 06, the ablations of notebook 07), one style:
per contrast the estimate (a dot) and its interval at the family's level (a bar), coloured by verdict, a
dashed line at 0, and with several seeds the range of the per-seed estimates (a thin line with ticks)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D

_PALETTE = sns.color_palette("colorblind")
VERDICTS = ("holds", "contradicted", "inconclusive")
VERDICT_COLOURS = {"holds": _PALETTE[2], "contradicted": _PALETTE[3], "inconclusive": _PALETTE[7]}
METRIC_NAMES = {"dsc": "DSC", "dsc_pe": "DSC, effusion images", "hidden_recall": "hidden-lung recall"}
STYLE = "whitegrid"


def draw(ax: plt.Axes, rows: pd.DataFrame, labels: list[str] | None = None, headers: dict[int, str] | None = None) -> None:
    """Draw ``rows`` (columns ``estimate``, ``ci_low``, ``ci_high``, ``verdict``; ``seed_min``/``seed_max``
    optional) top to bottom on ``ax``, one y position each; a row of NaN estimate leaves its place empty.
    ``labels``: the y tick labels (default: the ``contrast`` column); ``headers``: y position -> a bold
    heading drawn there instead of a contrast (a group's title)."""
    rows = rows.reset_index(drop=True).assign(y=np.arange(len(rows)))
    drawn = rows[np.isfinite(rows["estimate"].to_numpy(float))]
    colours = [VERDICT_COLOURS.get(str(v), "k") for v in drawn["verdict"]]
    if {"seed_min", "seed_max"} <= set(drawn.columns):
        seeds = drawn[np.isfinite(drawn["seed_min"].to_numpy(float))]
        ax.hlines(seeds["y"] + 0.28, seeds["seed_min"], seeds["seed_max"], colors="0.55", lw=0.8)
        for col in ("seed_min", "seed_max"):
            ax.scatter(seeds[col], seeds["y"] + 0.28, marker="|", s=30, color="0.55", lw=0.8)
    ax.hlines(drawn["y"], drawn["ci_low"], drawn["ci_high"], colors=colours, lw=2.2)
    sns.scatterplot(data=drawn, x="estimate", y="y", hue="verdict", hue_order=list(VERDICTS),
                    palette=VERDICT_COLOURS, s=45, edgecolor="white", linewidth=0.8, zorder=3, legend=False, ax=ax)
    ax.axvline(0, color="0.2", lw=0.9, ls="--", zorder=1)
    ticks = list(rows["contrast"]) if labels is None else list(labels)
    for y, text in (headers or {}).items():
        ticks[y] = text
    ax.set_yticks(rows["y"], ticks, fontsize=8)
    for y in headers or {}:
        ax.get_yticklabels()[y].set_fontweight("bold")
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_ylabel("")
    ax.grid(axis="y", visible=False)


def legend(fig: plt.Figure, seeds: bool = False, **kw) -> None:
    """The verdicts' colours (and the per-seed range, with ``seeds``) as one figure legend."""
    handles = [Line2D([], [], color=VERDICT_COLOURS[v], marker="o", lw=2.2, label=v) for v in VERDICTS]
    if seeds:
        handles.append(Line2D([], [], color="0.55", marker="|", lw=0.8, label="range over seeds"))
    fig.legend(handles=handles, frameon=False, fontsize=8, ncol=len(handles), **kw)


def level_text(contrasts: pd.DataFrame) -> str:
    """"99.8 % intervals" from the ``level`` column (one family: one level), or "intervals" without it."""
    if "level" not in contrasts or contrasts["level"].isna().all():
        return "intervals"
    levels = sorted({round(100 * float(v), 1) for v in contrasts["level"].dropna()})
    return f"{levels[0]:g} % intervals" if len(levels) == 1 else f"{levels[0]:g}-{levels[-1]:g} % intervals"
