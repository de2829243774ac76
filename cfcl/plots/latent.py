"""Figures and tables of the latent-space analysis (paper section 4.1): CHRO-maps (Fig. 2), Table 1."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from cfcl.chromap import overlay

# Display names of the project's method keys (cfcl.config.METHODS), as printed in the paper.
METHOD_NAMES = {
    "none": "None", "simclr": "SimCLR", "vader": "VADeR", "dvd_cl": "DVD-CL", "mvd_cl": "MVD-CL",
    "chexmask": "CheXMask", "ssdcl": "SSDCL", "s_dvd_cl": "S-DVD-CL", "s_mvd_cl": "S-MVD-CL",
}

# Paper Table 1: (d/sigma, K-means purity) of the output embeddings before fine-tuning.
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "dvd_cl": (0.83, 0.6979),
    "mvd_cl": (1.39, 0.6391),
    "s_dvd_cl": (17.07, 0.9581),
    "s_mvd_cl": (12.16, 0.9705),
}


def _key(method: str) -> str:
    """Project key of a method given as key ("s_dvd_cl") or display name ("S-DVD-CL")."""
    by_name = {v.lower(): k for k, v in METHOD_NAMES.items()}
    return by_name.get(method.lower(), method)


def display_name(method: str) -> str:
    return METHOD_NAMES.get(_key(method), method)


def latent_table(results: Mapping[str, tuple[float, float]], digits: int = 4) -> pd.DataFrame:
    """Table 1 next to the paper's: index = method (display name), columns ``d/σ``, ``purity``,
    ``d/σ (paper)``, ``purity (paper)`` (nan where the paper has no value).

    ``results`` maps a method (key or display name) to ``(d_over_sigma, purity)`` as computed by
    :func:`cfcl.metrics.d_over_sigma` and :func:`cfcl.metrics.kmeans_purity`.
    """
    rows = []
    for method, value in results.items():
        if len(value) != 2:
            raise ValueError(f"latent_table: results[{method!r}] must be (d_over_sigma, purity), got {value!r}")
        paper = PAPER_TABLE1.get(_key(method), (np.nan, np.nan))
        rows.append({"method": display_name(method), "d/σ": float(value[0]), "purity": float(value[1]),
                     "d/σ (paper)": paper[0], "purity (paper)": paper[1]})
    df = pd.DataFrame(rows, columns=["method", "d/σ", "purity", "d/σ (paper)", "purity (paper)"])
    return df.set_index("method").round(digits)


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
