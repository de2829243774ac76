"""CheXmask's image geometry, shared by images and their masks (REFERENCES: CheXmask preprocessing).

A PadChest image is cropped to its content box (CheXmask's border rule), zero-padded to a centred square
and resized; a mask of the same image (a gold mask, an original-resolution CheXmask row) follows with the
same box and padding and a nearest resize, so it stays on its image pixel for pixel. The intensity
window stays in :mod:`cfcl.data.padchest`, reading a PNG in :mod:`cfcl.data.png`, the RLE masks in
:mod:`cfcl.data.chexmask`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image


def content_box(img: np.ndarray, border_level: int = 1) -> tuple[int, int, int, int]:
    """Bounding box ``(top, bottom, left, right)`` (bottom/right exclusive) of the content.

    CheXmask's border rule: a pixel is content when its 8-bit value (high byte of a uint16
    image) exceeds ``border_level``. Raises ``ValueError`` on an image with no content.
    """
    high = (img >> 8) if img.dtype == np.uint16 else img
    mask = high > border_level
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError(f"image has no pixel above the border level {border_level} (all black)")
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def pad_to_square(arr: np.ndarray) -> np.ndarray:
    """Zero-pad ``(h, w)`` to a centred ``(L, L)`` square, ``L = max(h, w)``; the extra pixel of
    an odd difference goes to the bottom/right (CheXmask's convention)."""
    h, w = arr.shape
    side = max(h, w)
    out = np.zeros((side, side), arr.dtype)
    top, left = (side - h) // 2, (side - w) // 2
    out[top:top + h, left:left + w] = arr
    return out


def resize_image(arr: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of a float ``(H, W)`` image to ``(size, size)`` float32."""
    im = Image.fromarray(np.ascontiguousarray(arr, dtype=np.float32))
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_nearest(labels: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D label map to ``(height, width)`` (default square).

    Pixel-centre aligned like OpenCV/PIL resizing (source index ``floor((i + 0.5) * H / h)``),
    so a mask stays on the image it was drawn on after both are resized. Labels never mix.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"resize_nearest expects a 2-D label map, got shape {labels.shape}")
    width = height if width is None else width
    h, w = labels.shape
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def preprocess_mask(mask: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """Apply an image's crop box, square padding and a nearest resize to its label map."""
    top, bottom, left, right = box
    return resize_nearest(pad_to_square(np.asarray(mask)[top:bottom, left:right]), size)
