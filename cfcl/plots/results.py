"""Figures of notebooks 04 and 06: segmentations of every method (paper Figure 3)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

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
