"""Manual (gold-standard) lung masks: the folder format and its reader.

Paper section 3: 70 manually annotated PadChest images (20 healthy, 50 pleural effusion) are
used for five-fold fine-tuning and evaluation. The paper does not publish a file format, so
the project defines one (also in ``docs/real_data.md``)::

    <data.gold_masks>/
        annotated.csv        # required: the fine-tuning images
        test.csv             # optional: gold masks for held-out test images
        masks/<anything>.png # the masks, paths relative to the folder

Each CSV has columns ``ImageID`` (the PadChest file name, e.g. ``2153..._abc.png``),
``effusion`` (0 healthy, 1 pleural effusion: the annotators' label, used as the parent) and
``mask`` (the mask's path relative to the folder). Extra columns are kept.

Each mask is a single-channel 8-bit PNG label map **at the original resolution of its PadChest
image** (same height and width as the image's PNG), with values 0 background, 1 the patient's
right lung (image left), 2 the patient's left lung (image right). The original resolution is
used because it needs no knowledge of any preprocessing; :mod:`cfcl.data.padchest` crops, pads
and resizes the mask exactly like its image (nearest neighbour).

An empty mask (all background) is refused with an error naming the file: every annotated or
test image is a PA chest radiograph with lungs, so an empty mask is a missing or failed
annotation, and fine-tuning on it or scoring against it would silently teach or reward "no lung".
Fix the annotation or remove the image's row from the CSV.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cfcl.paths import atomic_path

ANNOTATED_INDEX = "annotated.csv"
TEST_INDEX = "test.csv"
INDEX_COLUMNS = ("ImageID", "effusion", "mask")
VALID_LABELS = (0, 1, 2)


def read_gold_index(folder: str | os.PathLike, name: str = ANNOTATED_INDEX,
                    required: bool = True) -> pd.DataFrame | None:
    """Read ``<folder>/<name>`` and check it; returns None when absent and not ``required``.

    Returns a DataFrame in file order with ``ImageID`` (str), ``effusion`` (int 0/1) and
    ``mask_path`` (absolute path of the mask, checked to exist) plus any extra columns.
    Every error names the CSV (and the row's ImageID where it applies).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"gold mask folder not found: {folder} (setting data.gold_masks)")
    path = folder / name
    if not path.exists():
        if required:
            raise FileNotFoundError(f"gold mask index not found: {path} (the folder of setting "
                                    f"data.gold_masks must hold {name}; see docs/real_data.md)")
        return None
    try:
        df = pd.read_csv(path, dtype={"ImageID": str, "mask": str})
    except Exception as exc:
        raise ValueError(f"cannot read gold mask index {path}: {exc}") from exc
    missing = [c for c in INDEX_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"gold mask index {path} lacks columns {missing}; expected {list(INDEX_COLUMNS)}")
    if df["ImageID"].isna().any() or df["mask"].isna().any():
        raise ValueError(f"gold mask index {path}: empty ImageID or mask cell")
    dup = df["ImageID"][df["ImageID"].duplicated()]
    if len(dup):
        raise ValueError(f"gold mask index {path}: ImageID {dup.iloc[0]!r} appears more than once")
    eff = pd.to_numeric(df["effusion"], errors="coerce")
    bad = ~eff.isin([0, 1])
    if bad.any():
        raise ValueError(f"gold mask index {path}: effusion must be 0 or 1, got "
                         f"{str(df['effusion'][bad].iloc[0])!r} for ImageID {df['ImageID'][bad].iloc[0]}")
    df = df.copy()
    df["effusion"] = eff.astype(int)
    df["mask_path"] = [str((folder / m).resolve()) for m in df["mask"]]
    for image_id, mask_path in zip(df["ImageID"], df["mask_path"]):
        if not Path(mask_path).is_file():
            raise FileNotFoundError(f"gold mask index {path}: mask file {mask_path} of ImageID "
                                    f"{image_id} does not exist")
    return df.reset_index(drop=True)


def read_gold_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                   allow_empty: bool = False) -> np.ndarray:
    """Read one gold mask PNG; returns ``(H, W)`` uint8 with values in {0, 1, 2}.

    ``shape``: the expected ``(height, width)`` (that of the image); a mask of another size
    raises ``ValueError`` naming the file and both sizes. Unreadable files, colour images,
    values other than 0/1/2 and (unless ``allow_empty``) an all-background mask raise errors
    naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"gold mask not found: {path}") from None
    except Exception as exc:
        raise ValueError(f"cannot read gold mask {path}: {exc}") from exc
    if arr.ndim != 2:
        raise ValueError(f"gold mask {path} has shape {arr.shape}; expected a single-channel label map")
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise ValueError(f"gold mask {path} is {arr.shape[0]} x {arr.shape[1]} (height x width) but "
                         f"its image is {shape[0]} x {shape[1]}")
    bad = np.setdiff1d(np.unique(arr), VALID_LABELS)
    if bad.size:
        raise ValueError(f"gold mask {path} holds values {bad[:5].tolist()}; expected only 0 "
                         "(background), 1 (right lung, image left), 2 (left lung, image right)")
    if not allow_empty and not arr.any():
        raise ValueError(f"gold mask {path} is empty (all background): every annotated or test image "
                         "needs its lungs outlined; fix the annotation or drop the image's row from the "
                         "gold index (see docs/real_data.md)")
    return arr.astype(np.uint8)


def write_gold_mask(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a ``(H, W)`` label map (values 0/1/2) as an 8-bit PNG in the gold format (atomic)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.isin(labels, VALID_LABELS).all():
        raise ValueError(f"gold mask for {path} must be 2-D with values 0/1/2, got shape {labels.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")
