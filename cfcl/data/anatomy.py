"""Lung shape bank: real lung outlines for the phantom's anatomy.

The phantom (:mod:`cfcl.data.phantom`) draws each patient's lungs from the 517 real binary lung
masks shipped with torchxrayvision (``data/semantic_masks_v7labs_lungs.zip``, REFERENCES
section 3). Each mask holds both lungs in one binary image, at various sizes and formats
(png/jpg/jpeg), and some are empty. This module turns them, once, into a bank of usable shapes:

- threshold, fill holes, keep the two largest connected components;
- the component on the image's left is the patient's right lung (label 1), the one on the
  image's right the left lung (label 2) (radiological convention, ``config.CLASSES``);
- discard unusable masks: empty, fewer than two lung-sized components, very unequal lungs, lungs
  that do not sit side by side, shapes cut by the image border, implausible aspect ratio;
- express each lung as a signed distance field (SDF, negative inside) on an ``R x R`` grid over
  the union box of both lungs plus a margin, in units of the union box width. Sampling an SDF
  at continuous coordinates and thresholding at 0 gives the same outline at any image size,
  which is what lets the phantom render 64..512 px from the same parameters.

Box coordinates: ``a`` (horizontal) and ``b`` (vertical) are 0..1 over the union bounding box
of both lungs; the SDF grid covers ``[-margin, 1 + margin]`` in both.
The bank is built once and cached under ``cache_dir() / "phantom"`` (atomic write).
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from cfcl.paths import atomic_path, cache_dir

BANK_VERSION = 1
MASKS_NAME = "semantic_masks_v7labs_lungs.zip"
MASK_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ShapeBank:
    """Usable lung shapes.

    ``sdf``: (K, 2, R, R) float32, lung 0 = right lung (image left), 1 = left lung (image right),
    negative inside, units of the union box width, grid over ``[-margin, 1+margin]^2`` in box
    coordinates (row = b, column = a). ``extent``: (K, 2, 4) float32 per lung ``(a_min, a_max,
    b_min, b_max)`` in box coordinates. ``aspect``: (K,) union box height / width in pixels.
    ``names``: source file of each shape.
    """

    sdf: np.ndarray
    extent: np.ndarray
    aspect: np.ndarray
    margin: float
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.sdf)


def default_masks_path() -> Path:
    """The V7 lung mask archive shipped inside torchxrayvision."""
    return torchxrayvision_data_dir() / MASKS_NAME


def torchxrayvision_data_dir() -> Path:
    """torchxrayvision's data folder, found without importing the package (its import takes ~10 s)."""
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("torchxrayvision is not installed: it ships the lung masks and PadChest metadata")
    return Path(spec.origin).parent / "data"


def _read_mask(data: bytes, max_side: int) -> np.ndarray:
    """Decode one mask image to a bool array, downscaled to at most ``max_side`` (fast JPEG draft)."""
    from PIL import Image

    im = Image.open(io.BytesIO(data))
    if im.format == "JPEG":
        im.draft("L", (max_side, max_side))
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side), Image.NEAREST)
    return np.asarray(im.convert("L")) > 127


def solidity(mask: np.ndarray) -> float:
    """Area of a bool mask over the area of its convex hull (pixel squares), 0..1."""
    from scipy.spatial import ConvexHull

    area = int(mask.sum())
    rr, cc = np.nonzero(mask & ~ndimage.binary_erosion(mask))  # the hull only needs the boundary
    if len(rr) < 3:
        return 0.0
    # Corners of every pixel square, so that a one-pixel-wide shape still has an area.
    pts = np.concatenate([np.stack([rr + dr, cc + dc], 1) for dr in (0, 1) for dc in (0, 1)])
    try:
        hull = ConvexHull(pts)
    except Exception:  # degenerate (collinear) point sets
        return 0.0
    return float(area / hull.volume)


def split_lungs(mask: np.ndarray, min_area: float = 0.01, min_ratio: float = 0.3,
                min_solidity: float = 0.8) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a two-lung binary mask (H, W) into (right lung, left lung) bool masks, or None.

    Right lung = the component on the image's left. Returns None for an unusable mask: fewer than
    two components of at least ``min_area`` of the image, the smaller lung under ``min_ratio`` of
    the larger, lungs not side by side (overlapping columns or less than half shared rows), a
    union box touching the image border, a union box aspect (h/w) outside 0.5..1.5, or a lung
    whose solidity (area / convex hull area) is under ``min_solidity`` (cut-out or torn shapes).
    """
    if mask.ndim != 2:
        raise ValueError(f"split_lungs: mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    if mask.mean() > 0.75:  # inverted or full masks
        return None
    filled = ndimage.binary_fill_holes(mask)
    lab, n = ndimage.label(filled)
    if n < 2:
        return None
    areas = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
    order = np.argsort(areas)[::-1]
    a1, a2 = areas[order[0]], areas[order[1]]
    if a2 < min_area * h * w or a2 < min_ratio * a1:
        return None
    comps = [lab == (order[0] + 1), lab == (order[1] + 1)]
    boxes = []
    for c in comps:
        rows, cols = np.nonzero(c.any(axis=1))[0], np.nonzero(c.any(axis=0))[0]
        boxes.append((rows[0], rows[-1], cols[0], cols[-1]))
    if boxes[0][2] > boxes[1][2]:
        comps, boxes = comps[::-1], boxes[::-1]
    (r0a, r1a, c0a, c1a), (r0b, r1b, c0b, c1b) = boxes
    if c1a >= c0b + 0.02 * w:  # must sit side by side
        return None
    shared = min(r1a, r1b) - max(r0a, r0b)
    if shared < 0.5 * min(r1a - r0a, r1b - r0b):
        return None
    r0, r1, c0, c1 = min(r0a, r0b), max(r1a, r1b), c0a, c1b
    if r0 <= 1 or c0 <= 1 or r1 >= h - 2 or c1 >= w - 2:
        return None
    aspect = (r1 - r0 + 1) / (c1 - c0 + 1)
    if not 0.5 <= aspect <= 1.5:
        return None
    if min(solidity(c) for c in comps) < min_solidity:
        return None
    return comps[0], comps[1]


def shape_sdf(right: np.ndarray, left: np.ndarray, resolution: int = 128, margin: float = 0.1
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """Signed distance fields of both lungs on the box grid (see module docstring).

    Returns ``sdf`` (2, R, R) float32, ``extent`` (2, 4) and the union box aspect (h/w).
    """
    union = right | left
    rows, cols = np.nonzero(union.any(axis=1))[0], np.nonzero(union.any(axis=0))[0]
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    bh, bw = r1 - r0, c1 - c0
    # Grid sample positions in box coordinates -> source pixel coordinates (pixel centres).
    t = (np.arange(resolution) + 0.5) / resolution * (1 + 2 * margin) - margin
    ys = r0 + t * bh - 0.5
    xs = c0 + t * bw - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    out, ext = [], []
    spacing = ((1 + 2 * margin) * bh / resolution / bw, (1 + 2 * margin) / resolution)
    for m in (right, left):
        # Bilinear resample of the mask onto the grid, then threshold: the outline at grid precision.
        g = ndimage.map_coordinates(m.astype(np.float32), [yy, xx], order=1, mode="constant") >= 0.5
        if not g.any():
            raise ValueError("shape_sdf: lung vanished after resampling")
        inside = ndimage.distance_transform_edt(g, sampling=spacing)
        outside = ndimage.distance_transform_edt(~g, sampling=spacing)
        out.append((outside - inside).astype(np.float32))
        rr, cc = np.nonzero(m[r0:r1, c0:c1])
        ext.append((cc.min() / bw, (cc.max() + 1) / bw, rr.min() / bh, (rr.max() + 1) / bh))
    return np.stack(out), np.asarray(ext, np.float32), float(bh / bw)


def build_shape_bank(path: str | os.PathLike | None = None, resolution: int = 128,
                     margin: float = 0.1, max_side: int = 384, limit: int | None = None) -> ShapeBank:
    """Read the V7 mask archive and build the bank (~10 s; see :func:`load_shape_bank`).

    ``limit`` reads only the first ``limit`` archive members (sorted by name), for quick tests.
    """
    path = Path(path) if path is not None else default_masks_path()
    if not path.exists():
        raise FileNotFoundError(f"lung mask archive not found: {path}")
    sdfs, exts, aspects, names = [], [], [], []
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"lung mask archive {path} is not a valid zip file") from exc
    with zf:
        members = sorted(n for n in zf.namelist() if n.lower().endswith(MASK_EXTENSIONS))[:limit]
        for name in members:
            try:
                mask = _read_mask(zf.read(name), max_side)
            except OSError:  # undecodable image: unusable
                continue
            lungs = split_lungs(mask)
            if lungs is None:
                continue
            sdf, ext, aspect = shape_sdf(*lungs, resolution=resolution, margin=margin)
            sdfs.append(sdf), exts.append(ext), aspects.append(aspect), names.append(Path(name).name)
    if not sdfs:
        raise ValueError(f"no usable lung shape in {path}")
    return ShapeBank(np.stack(sdfs), np.stack(exts), np.asarray(aspects, np.float32), margin,
                     tuple(names))


def load_shape_bank(path: str | os.PathLike | None = None) -> ShapeBank:
    """The shape bank, built on first use and cached as ``cache_dir()/phantom/shape_bank_v*.npz``."""
    target = cache_dir() / "phantom" / f"shape_bank_v{BANK_VERSION}.npz"
    if path is None and target.exists():
        return _load_cached(target)
    bank = build_shape_bank(path)
    if path is None:
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, sdf=bank.sdf.astype(np.float16), extent=bank.extent, aspect=bank.aspect,
                         margin=np.float32(bank.margin), names=np.asarray(bank.names))
        return _load_cached(target)
    return bank


_CACHE: dict[str, ShapeBank] = {}


def _load_cached(target: Path) -> ShapeBank:
    key = str(target)
    if key not in _CACHE:
        try:
            with np.load(target, allow_pickle=False) as z:
                _CACHE[key] = ShapeBank(z["sdf"].astype(np.float32), z["extent"], z["aspect"],
                                        float(z["margin"]), tuple(str(s) for s in z["names"]))
        except (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError) as exc:
            raise ValueError(f"the shape bank {target} is damaged ({type(exc).__name__}: {exc}); delete it and it "
                             "is rebuilt from the lung mask archive on next use (about 10 s)") from exc
    return _CACHE[key]
