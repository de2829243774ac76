"""The splits of a data source, the one-split container and the data warning (a leaf: it imports no other
:mod:`cfcl` module, so every reader of :mod:`cfcl.data` can import it). Conventions: the docstring of :mod:`cfcl.data`."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

SPLITS = ("pretrain", "val", "annotated", "test")


class DataWarning(UserWarning):
    """Input rows a reader dropped (counted, naming the file), or a split accepted short
    (``data.allow_short_split``): see docs/real_data.md, "Checks on the tables"."""


@dataclass
class ChestSplit:
    """One split of a data source. See the module docstring for the conventions."""

    name: str
    images: np.ndarray  # (N, H, W) uint8
    parents: pd.DataFrame  # columns sex, scanner, effusion (+ source-specific extras)
    silver: np.ndarray  # (N, H, W) uint8 label map, automatic (CheXmask-like) masks
    gold: np.ndarray | None = None  # (N, H, W) uint8 label map, manual masks, if any
    quality: np.ndarray | None = None  # (N,) float, silver-mask quality (Dice RCA-like)
    counterfactuals: np.ndarray | None = None  # (N, 3, H, W) uint8 exact (oracle) counterfactuals
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __post_init__(self) -> None:
        n = len(self.images)
        for attr in ("silver", "gold", "quality", "counterfactuals"):
            arr = getattr(self, attr)
            if arr is not None and len(arr) != n:
                raise ValueError(f"split {self.name!r}: {attr} has {len(arr)} rows, images have {n}")
        if len(self.parents) != n:
            raise ValueError(f"split {self.name!r}: parents has {len(self.parents)} rows, images have {n}")
