"""Reading one single-channel PNG: the one reader behind PadChest images (:func:`cfcl.data.padchest.read_png`)
and gold masks (:func:`cfcl.data.gold.read_gold_mask`). Every failure is an error of one line that names the
file and what to do about it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image


def read_png(path: str | os.PathLike, what: str = "image",
             expect: str = "a single-channel (grayscale) PNG") -> tuple[np.ndarray, str]:
    """``(array, mode)`` of the PNG ``path``: its ``(H, W)`` pixels as PIL reads them (uint8, uint16, or int32
    for PIL's mode ``I``) and PIL's mode. ``what`` names the file in errors (``"PadChest image"``, ``"gold
    mask"``), ``expect`` the content wanted in place of a colour image.

    A missing file raises ``FileNotFoundError``; a file PIL cannot decode, or one of more than one channel,
    ``ValueError``; each message is one line naming the file.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except Exception as exc:  # PIL raises many types for a damaged file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"cannot read {what} {path} (corrupt or not a PNG? write it again as a PNG): "
                         f"{first}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{what} {path} has mode {mode} and shape {arr.shape}; expected {expect}")
    return arr, mode
