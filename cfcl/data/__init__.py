"""Data sources behind one interface.

``load_split(profile, split)`` returns a :class:`ChestSplit` whatever the source:

- ``phantom`` (default): the structural causal model of :mod:`cfcl.data.phantom`, generated
  once per data config into the cache folder; it also provides exact counterfactuals.
- ``padchest``: real PadChest images (:mod:`cfcl.data.padchest`), CheXmask silver masks
  (:mod:`cfcl.data.chexmask`) and a folder of manual gold masks (:mod:`cfcl.data.gold`).

Splits: ``pretrain`` and ``val`` (images, parents, silver masks), ``annotated`` (the 70
images with gold masks used for 5-fold fine-tuning: 20 healthy, 50 effusion) and ``test``
(held out, balanced over scanner x effusion, with gold masks where the source has them).

Conventions (shared by every module):

- images: ``uint8`` array ``(N, H, W)``, 0..255 (a memmap for large splits);
- label maps: ``uint8`` ``(N, H, W)`` with 0 background, 1 right lung (image left),
  2 left lung (image right);
- parents: a DataFrame with integer columns ``sex`` (0 F, 1 M), ``scanner``
  (0 ImagingDynamics, 1 Philips), ``effusion`` (0/1), see :mod:`cfcl.config`;
- counterfactuals: ``uint8`` ``(N, 3, H, W)`` in the order of ``config.INTERVENTIONS``
  (do(scanner), do(effusion), do(scanner, effusion)), each intervention flipping the binary parent.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cfcl.config import Profile

SPLITS = ("pretrain", "val", "annotated", "test")


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


def load_split(profile: Profile, split: str) -> ChestSplit:
    """Load (generating on first use, for the phantom) one split of the profile's data source."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")
    source = profile.data.source
    if source == "phantom":
        from cfcl.data import phantom

        return phantom.load_split(profile.data, split)
    if source == "padchest":
        from cfcl.data import padchest

        return padchest.load_split(profile.data, split)
    raise ValueError(f"unknown data source {source!r} (setting data.source): use 'phantom' or 'padchest'")


def data_fingerprint(profile: Profile) -> str:
    """A short key that changes whenever the data a run sees changes: the source's cache key
    (for the phantom it includes the renderer version). Stored in checkpoint signatures so that
    a run never reuses results computed on other data."""
    if profile.data.source == "phantom":
        from cfcl.data import phantom

        return f"phantom-{phantom.config_hash(profile.data)}"
    if profile.data.source == "padchest":
        from cfcl.data import padchest

        return f"padchest-{padchest.cache_key(profile.data)}"
    raise ValueError(f"unknown data source {profile.data.source!r} (setting data.source)")
