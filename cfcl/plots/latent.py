"""Figures of the latent-space analysis (paper section 4.1): CHRO-maps (Fig. 2)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from cfcl.chromap import overlay
from cfcl.methods import METHODS


def display_name(method: str) -> str:
    """The paper's name of a method key (``"s_dvd_cl"`` -> ``"S-DVD-CL"``); other text is kept."""
    return METHODS[method].display if method in METHODS else method


def plot_chromaps(images: np.ndarray, chromaps: Mapping[str, np.ndarray], alpha: float = 0.6,
                  col_titles: Sequence[str] | None = None, masks: np.ndarray | None = None,
                  panel_size: float = 2.0):
    """CHRO-map overlays laid out like the paper's Fig. 2: one row per method, one column per image.

    ``images`` (N, H, W) uint8 or [0, 1]; ``chromaps`` maps a method (key or display name) to its
    colours (N, H, W, 3) from :func:`cfcl.chromap.chromap`; ``masks`` (N, H, W) optional, where
    False the plain image is shown. Returns the matplotlib Figure.
    """
    import matplotlib.pyplot as plt

    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"plot_chromaps: images must be (N, H, W), got shape {images.shape}")
    if not chromaps:
        raise ValueError("plot_chromaps: chromaps is empty")
    n = images.shape[0]
    for method, rgb in chromaps.items():
        if np.shape(rgb) != images.shape + (3,):
            raise ValueError(f"plot_chromaps: chromaps[{method!r}] has shape {np.shape(rgb)}, "
                             f"expected {images.shape + (3,)}")
    if col_titles is not None and len(col_titles) != n:
        raise ValueError(f"plot_chromaps: {len(col_titles)} col_titles for {n} images")
    rows = len(chromaps)
    fig, axes = plt.subplots(rows, n, figsize=(panel_size * n, panel_size * rows), squeeze=False)
    for r, (method, rgb) in enumerate(chromaps.items()):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(overlay(images[c], rgb[c], alpha=alpha, mask=None if masks is None else masks[c]))
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(display_name(method))
            if r == 0 and col_titles is not None:
                ax.set_title(col_titles[c], fontsize="small")
    fig.tight_layout()
    return fig
