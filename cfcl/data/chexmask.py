"""CheXmask silver-standard lung masks: CSV reader, RLE codec, label maps, quality filter.

CheXmask (Gaggion et al. 2024; paper section 3, reference [19]) ships one CSV per source
dataset; the project reads the "Preprocessed" ``Padchest.csv`` (REFERENCES section 4).
Columns: ``ImageID, Dice RCA (Mean), Dice RCA (Max), Landmarks, Left Lung, Right Lung, Heart,
Height, Width``. Each organ is run-length encoded: space-separated ``start length`` pairs,
1-based starts over the row-major flatten of a ``(Height, Width)`` mask. The "Preprocessed"
masks live in the 1024x1024 frame of the image after CheXmask's preprocessing (borders
stripped, zero-padded to a centred square, resized), which :mod:`cfcl.data.padchest`
reproduces; mapping to the project's resolution is then a plain nearest-neighbour resize.

Which frame a row is in (:func:`mask_frame`): a row is valid only if

- ``Height == Width == PREPROCESSED_SIZE`` (1024): the "Preprocessed" release, or
- ``(Height, Width)`` equals the original ``(height, width)`` of its PadChest PNG: the
  "OriginalResolution" release, mapped like a gold mask (the image's border crop box, square
  padding, nearest resize; :func:`cfcl.data.framing.preprocess_mask`).

Anything else (a square 512 frame, a transposed ``Width x Height`` row: REFERENCES section 4's
height/width trap) is refused with an error naming the CSV, the ImageID, the row's
``Height x Width`` and the image's size, never silently resized, transposed or stretched. A mask
is always reshaped to ``(Height, Width)`` (rows first). When an original image happens to be
exactly 1024 x 1024 the row is read as "Preprocessed" (identical unless the image has borders).

Side convention: CheXmask's "Right Lung" is the *patient's* right lung, which appears on the
*image's* left (radiological convention); it becomes label 1, "Left Lung" becomes label 2
(``cfcl.config.CLASSES``).

Rows the reader drops, with a :class:`cfcl.data.DataWarning` naming the CSV and counting them: a
repeated ImageID (the first row is kept), and (:func:`empty_lungs`, applied by
:mod:`cfcl.data.padchest`) a row whose "Right Lung" or "Left Lung" cell is empty. A plain CSV
whose last line has no newline (cut short) is refused.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from cfcl.data.framing import preprocess_mask, resize_nearest
from cfcl.data.metadata import check_complete
from cfcl.data.split import DataWarning

COLUMNS = ("ImageID", "Dice RCA (Mean)", "Dice RCA (Max)", "Landmarks", "Left Lung", "Right Lung",
           "Heart", "Height", "Width")
# Columns the project needs; Landmarks and Heart are large and skipped when reading.
NEEDED_COLUMNS = ("ImageID", "Dice RCA (Mean)", "Dice RCA (Max)", "Left Lung", "Right Lung",
                  "Height", "Width")
QUALITY_COLUMN = "Dice RCA (Mean)"
PREPROCESSED_SIZE = 1024  # side of the "Preprocessed" release's square frame
RIGHT_LUNG_LABEL = 1  # patient's right lung, image left
LEFT_LUNG_LABEL = 2  # patient's left lung, image right


def rle_decode(rle: object, height: int, width: int) -> np.ndarray:
    """Decode a CheXmask RLE string to a binary mask.

    ``rle``: ``"start length start length ..."`` with 1-based starts over the row-major flatten;
    an empty string or NaN decodes to an empty mask. Returns ``(height, width)`` uint8 in {0, 1}.
    Overlapping runs are allowed (their union is taken). Raises ``ValueError`` on an odd number
    of values, a start below 1, a negative length, or a run past ``height * width`` (naming both).
    """
    height, width = int(height), int(width)
    if height <= 0 or width <= 0:
        raise ValueError(f"RLE mask size must be positive, got height={height}, width={width}")
    n = height * width
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((height, width), np.uint8)
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    text = rle.strip()
    if not text:
        return np.zeros((height, width), np.uint8)
    try:
        runs = np.array(text.split(), dtype=np.int64)
    except ValueError as exc:
        raise ValueError(f"RLE holds a non-integer value: {exc}") from exc
    if runs.size % 2:
        raise ValueError(f"RLE has an odd number of values ({runs.size}); expected start/length pairs")
    starts, lengths = runs[0::2] - 1, runs[1::2]
    if (starts < 0).any():
        raise ValueError("RLE start below 1 (starts are 1-based)")
    if (lengths < 0).any():
        raise ValueError("RLE has a negative run length")
    ends = starts + lengths
    if ends.size and ends.max() > n:
        raise ValueError(f"RLE run ends at pixel {int(ends.max())}, past the mask size "
                         f"{height} x {width} = {n} (wrong Height/Width?)")
    delta = np.zeros(n + 1, np.int64)
    np.add.at(delta, starts, 1)
    np.add.at(delta, ends, -1)
    return (np.cumsum(delta[:-1]) > 0).astype(np.uint8).reshape(height, width)


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D binary mask (any nonzero = foreground) as a CheXmask RLE string.

    Inverse of :func:`rle_decode` (``rle_decode(rle_encode(m), *m.shape) == (m != 0)``); an
    empty mask gives ``""``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode expects a 2-D mask, got shape {mask.shape}")
    flat = np.concatenate([[0], (mask.ravel() != 0).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))  # 0-based starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    pairs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def read_chexmask(path: str | os.PathLike, columns: tuple[str, ...] = NEEDED_COLUMNS) -> pd.DataFrame:
    """Read a CheXmask CSV (plain or compressed), keeping ``columns``; errors name the file.

    Returns a DataFrame indexed by ``ImageID`` (a repeated ImageID keeps its first row, with a
    counted :class:`cfcl.data.DataWarning`). ``Height``/``Width`` are int, Dice RCA columns float.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CheXmask CSV not found: {path} (setting data.chexmask_csv)")
    check_complete(path, "CheXmask CSV", "data.chexmask_csv")
    try:
        df = pd.read_csv(path, usecols=lambda c: c in columns, low_memory=False)
    except Exception as exc:  # pandas raises many types for a corrupt file
        raise ValueError(f"cannot read CheXmask CSV {path}: {exc}") from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"CheXmask CSV {path} lacks columns {missing}; expected the 'Preprocessed' "
                         f"CheXmask format with columns {list(COLUMNS)}")
    dup = df["ImageID"].duplicated(keep="first")
    if dup.any():
        warnings.warn(f"CheXmask CSV {path}: {int(dup.sum())} rows repeat an ImageID of an earlier row "
                      f"(first: {df['ImageID'][dup].iloc[0]!r}); the first row of each ImageID is kept",
                      DataWarning, stacklevel=2)
    df = df[~dup].set_index("ImageID")
    for col in ("Height", "Width"):
        if col in df.columns:
            values = pd.to_numeric(df[col], errors="coerce")
            bad = values.isna() | (values != values.round()) | (values <= 0)
            if bad.any():
                raise ValueError(f"CheXmask CSV {path}: column {col!r} of ImageID {df.index[bad][0]} holds "
                                 f"{df[col][bad].iloc[0]!r}, not a positive integer ({int(bad.sum())} rows; "
                                 "a row cut short?)")
            df[col] = values.astype(np.int64)
    for col in (QUALITY_COLUMN, "Dice RCA (Max)"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype(float)
    return df


def quality_filter(df: pd.DataFrame, min_dice_rca: float = 0.8,
                   column: str = QUALITY_COLUMN) -> pd.DataFrame:
    """Rows whose RCA quality estimate is at least ``min_dice_rca`` (REFERENCES section 4).

    ``column`` is ``"Dice RCA (Mean)"`` (default, the usual cut) or ``"Dice RCA (Max)"``.
    NaN quality never passes.
    """
    if column not in df.columns:
        raise KeyError(f"quality column {column!r} not in CheXmask table (columns: {list(df.columns)})")
    return df[df[column] >= min_dice_rca]


def empty_lungs(df: pd.DataFrame) -> pd.DataFrame:
    """Which lungs of each row are empty (an empty or blank RLE cell): boolean columns
    ``Right Lung`` and ``Left Lung``, indexed like ``df``."""
    return pd.DataFrame({col: df[col].map(lambda v: not isinstance(v, str) or not v.strip())
                         for col in ("Right Lung", "Left Lung")}, index=df.index)


def label_map(right_lung: np.ndarray, left_lung: np.ndarray) -> np.ndarray:
    """Combine binary lung masks into the project's label map.

    ``right_lung``/``left_lung``: ``(H, W)`` binary masks of the *patient's* right/left lung
    (CheXmask "Right Lung" / "Left Lung"). Returns ``(H, W)`` uint8 with 0 background,
    1 right lung (image left), 2 left lung (image right). Pixels claimed by both (rare, a thin
    seam at most) go to the left lung, label 2: a documented, arbitrary tie-break.
    """
    right_lung, left_lung = np.asarray(right_lung), np.asarray(left_lung)
    if right_lung.shape != left_lung.shape:
        raise ValueError(f"lung masks differ in shape: right {right_lung.shape}, left {left_lung.shape}")
    out = np.zeros(right_lung.shape, np.uint8)
    out[right_lung != 0] = RIGHT_LUNG_LABEL
    out[left_lung != 0] = LEFT_LUNG_LABEL
    return out


def mask_frame(row: pd.Series, image_shape: tuple[int, int] | None = None,
               source: str = "CheXmask CSV") -> str:
    """Which frame a CheXmask row's ``Height``/``Width`` belong to: ``"preprocessed"`` or ``"original"``.

    ``image_shape``: the ``(height, width)`` of the row's PadChest PNG (None: unknown, then only
    the "Preprocessed" frame is accepted). Raises ``ValueError`` naming ``source`` (the CSV), the
    ImageID, the row's ``Height x Width`` and the image's size for any other frame.
    """
    image_id = row.name if row.name is not None else row.get("ImageID", "?")
    h, w = int(row["Height"]), int(row["Width"])
    if h == w == PREPROCESSED_SIZE:
        return "preprocessed"
    if image_shape is not None and (h, w) == tuple(int(v) for v in image_shape):
        return "original"
    if image_shape is None:
        image = "an image of unknown size"
        hint = ""
    else:
        ih, iw = (int(v) for v in image_shape)
        image = f"its image is {ih} x {iw} (height x width)"
        hint = " (Height and Width swapped?)" if (w, h) == (ih, iw) else ""
    raise ValueError(f"{source}: ImageID {image_id} has a {h} x {w} (Height x Width) mask but {image}{hint}; "
                     f"a CheXmask row must be in the {PREPROCESSED_SIZE} x {PREPROCESSED_SIZE} frame of the "
                     "'Preprocessed' release or at the image's original resolution (the "
                     "'OriginalResolution' release)")


def decode_row(row: pd.Series, source: str = "CheXmask CSV") -> np.ndarray:
    """Both lungs of one CheXmask row as a ``(Height, Width)`` uint8 label map (no frame check)."""
    image_id = row.name if row.name is not None else row.get("ImageID", "?")
    h, w = int(row["Height"]), int(row["Width"])
    masks = []
    for col in ("Right Lung", "Left Lung"):
        try:
            masks.append(rle_decode(row[col], h, w))
        except ValueError as exc:
            raise ValueError(f"{source}: ImageID {image_id}, column {col!r}: {exc}") from exc
        if not masks[-1].any() and isinstance(row[col], str) and row[col].strip():
            raise ValueError(f"{source}: ImageID {image_id}, column {col!r}: the RLE has only runs of length 0 "
                             "(an empty lung written as runs); a lung mask must cover at least one pixel")
    return label_map(*masks)


def row_label_map(row: pd.Series, size: int, source: str = "CheXmask CSV",
                  image_shape: tuple[int, int] | None = None,
                  box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """One CheXmask row to a ``(size, size)`` uint8 label map in the project's frame.

    A "Preprocessed" row (1024 x 1024) is resized (nearest). A row at the original resolution
    ``image_shape`` is cropped to the image's content ``box`` (``(top, bottom, left, right)``,
    default: the whole image), zero-padded to a centred square and resized, exactly like a gold
    mask. Any other ``Height x Width`` raises ``ValueError`` (:func:`mask_frame`); ``source``
    names the file in every error.
    """
    frame = mask_frame(row, image_shape, source)
    labels = decode_row(row, source)
    if frame == "preprocessed":
        return resize_nearest(labels, size)

    h, w = labels.shape
    return preprocess_mask(labels, box if box is not None else (0, h, 0, w), size)
