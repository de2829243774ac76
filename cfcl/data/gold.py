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

Sides are checked (:func:`check_sides`): label 1 must lie on the image's left of label 2 (mean
column), or, where a mask holds one lung only, on its own half of the mask. A mask with the labels
exchanged (the anatomical convention confused with the radiological one) is refused with an
error naming the file; :mod:`cfcl.data.padchest` also refuses a gold mask whose lungs overlap the
opposite lungs of the image's CheXmask row (:func:`side_agreement`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cfcl.data.png import read_png
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


def check_sides(labels: np.ndarray, what: str) -> None:
    """Refuse a label map whose lungs are on the wrong sides (``ValueError`` naming ``what``).

    Label 1 (the patient's right lung) is shown on the image's left, label 2 on its right
    (radiological convention). With both labels present, the mean column of label 1 must be left of
    that of label 2; with one, its mean column must lie in its own half of the map.
    """
    labels = np.asarray(labels)
    cols = np.arange(labels.shape[1], dtype=np.float64)
    mean = {}
    for label in (1, 2):
        per_col = (labels == label).sum(axis=0)
        if per_col.any():
            mean[label] = float((per_col * cols).sum() / per_col.sum())
    width = labels.shape[1]
    convention = ("the convention is 1 = the patient's right lung, on the image's left, and 2 = the "
                  "patient's left lung, on the image's right (radiological view)")
    if len(mean) == 2:
        if mean[1] >= mean[2]:
            raise ValueError(f"{what}: label 1 lies right of label 2 on the image (mean column {mean[1]:.0f} vs "
                             f"{mean[2]:.0f} of {width}): the lung labels are exchanged; {convention}. "
                             "Swap labels 1 and 2 in the mask")
    elif len(mean) == 1:
        label, col = next(iter(mean.items()))
        wrong = col > (width - 1) / 2 if label == 1 else col < (width - 1) / 2
        if wrong:
            side = "right" if label == 1 else "left"
            raise ValueError(f"{what}: its only lung, label {label}, lies on the image's {side} half (mean column "
                             f"{col:.0f} of {width}): the label is the wrong one; {convention}")


def side_agreement(gold: np.ndarray, silver: np.ndarray) -> tuple[float, float]:
    """``(same, exchanged)``: mean Dice of the two lungs of ``gold`` with the same labels of
    ``silver``, and with the opposite ones (label maps of one frame)."""
    def dice(a: np.ndarray, b: np.ndarray) -> float:
        total = int(a.sum()) + int(b.sum())
        return 2.0 * float((a & b).sum()) / total if total else 0.0

    same = np.mean([dice(gold == k, silver == k) for k in (1, 2)])
    exchanged = np.mean([dice(gold == k, silver == 3 - k) for k in (1, 2)])
    return float(same), float(exchanged)


def read_gold_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None,
                   allow_empty: bool = False, sides: bool = True) -> np.ndarray:
    """Read one gold mask PNG; returns ``(H, W)`` uint8 with values in {0, 1, 2}.

    ``shape``: the expected ``(height, width)`` (that of the image); a mask of another size
    raises ``ValueError`` naming the file and both sizes. Unreadable files, colour images,
    values other than 0/1/2, (unless ``allow_empty``) an all-background mask and (unless not
    ``sides``) lungs on the wrong sides (:func:`check_sides`) raise errors naming the file.
    """
    path = Path(path)
    arr, _ = read_png(path, "gold mask", "a single-channel label map")
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
    if sides:
        check_sides(arr, f"gold mask {path}")
    return arr.astype(np.uint8)


def write_gold_mask(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write a ``(H, W)`` label map (values 0/1/2) as an 8-bit PNG in the gold format (atomic)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.isin(labels, VALID_LABELS).all():
        raise ValueError(f"gold mask for {path} must be 2-D with values 0/1/2, got shape {labels.shape}")
    with atomic_path(path) as tmp:
        Image.fromarray(labels.astype(np.uint8)).save(tmp, format="PNG")
