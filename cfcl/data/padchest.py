"""Real data: PadChest images + CheXmask silver masks + gold masks, as :class:`ChestSplit`.

Paper section 3: PadChest (~60k pre-training, ~17k validation images), CheXmask silver masks
for the supervised variants, 70 manually annotated images (20 healthy, 50 pleural effusion)
for fine-tuning. This module selects the images (metadata filter of REFERENCES section 3,
patient-level splits), decodes them with CheXmask's geometric preprocessing so that the silver
masks line up, and caches the arrays.

Splits (all patient-level: a patient never appears in two splits; deterministic from
``DataConfig.seed``):

- ``annotated``: the images of ``<gold_masks>/annotated.csv`` (:mod:`cfcl.data.gold`), up to
  ``n_annotated_healthy`` healthy and ``n_annotated_effusion`` effusion rows in file order;
  effusion from that CSV, sex and scanner from the metadata. Their patients (and those of
  ``test.csv``) are kept out of every other split.
- ``test``: if ``<gold_masks>/test.csv`` exists, its images (with their gold masks); otherwise
  held-out patients drawn at random from the pool. Either way balanced over scanner x
  effusion, ``n_test / 4`` images per cell (the remainder goes to the first cells), capped by
  what exists; gold is None without ``test.csv``.
- ``val`` then ``pretrain``: the remaining patients in random order, ``n_val`` then
  ``n_pretrain`` images (capped by what exists).

The pool for ``test``/``val``/``pretrain`` is: rows passing the metadata filter, whose PNG is
found under ``data.padchest_images`` and that have a CheXmask row passing the Dice RCA filter.
Silver masks come from CheXmask wherever a row exists (zeros and quality NaN otherwise, which
can only happen for gold images). ``counterfactuals`` is None: real data has no oracle, the HVAE
provides them.

Image preprocessing (CheXmask's, ``DataPreparation/padchest.py`` of the CheXmask repository,
reproduced so that the "Preprocessed" masks line up): the bounding box of pixels whose 8-bit
value (the high byte of a 16-bit PNG, as OpenCV's 8-bit read gives) exceeds 1 is kept, the crop
is zero-padded to a centred square (top/left padding ``(L - h) // 2``) and resized. The
intensity window is the project's choice (the paper is silent): the 0.5 / 99.5 percentiles of
the cropped image (exact, from its histogram) map to 0 / 1 before padding, padding is 0, and
the antialiased bilinear resize to ``image_size`` is rounded to uint8.

Checks while planning (docs/real_data.md, "Checks on the tables"): rows of the metadata or CheXmask
CSV that the readers drop (unknown values, repeated ImageIDs, a CheXmask row with an empty lung)
are counted in a :class:`cfcl.data.DataWarning` naming the file; a split smaller than its size
setting, or a pre-training / validation split missing a value of a parent, stops the plan with an
error naming the settings and files, unless ``data.allow_short_split`` (then a warning).

Checks while decoding (each error names the file): content smaller than ``MIN_CONTENT_SIZE``
(64) px on either side after the border crop; a CheXmask row neither in the 1024 x 1024
"Preprocessed" frame nor at the image's original ``(height, width)``
(:func:`cfcl.data.chexmask.mask_frame`; an original-resolution row is mapped like a gold mask);
a gold mask of another size, with values other than 0/1/2, empty, or with its lungs on the wrong
sides (:mod:`cfcl.data.gold`); a gold mask whose lungs overlap the opposite lungs of the image's
CheXmask row more than the same ones (one of the two has the labels exchanged).

The decoded splits are runs of the data store (:mod:`cfcl.data.store`):
``cache/padchest/<split>-padchest-<key>/`` (``<key>`` hashes the DataConfig, the options, the
size/mtime of the metadata, CheXmask and gold index files, and the name/size/mtime of every PNG
under ``data.padchest_images`` and of every gold mask the gold indexes name), verified against their
manifest whenever they are read.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cfcl.config import EFFUSION, SCANNER, SEX, DataConfig
from cfcl.data import chexmask as cm
from cfcl.data.framing import content_box, pad_to_square, preprocess_mask, resize_image
from cfcl.data import gold as gd
from cfcl.data import png
from cfcl.data.metadata import filter_metadata, read_metadata
from cfcl.data.split import ChestSplit, DataWarning
from cfcl.paths import atomic_path
from cfcl.progress import tqdm

FORMAT_VERSION = 2  # 2: key covers the PNGs and gold masks; CheXmask frame check; minimum content size
MIN_CONTENT_SIZE = 64  # px, each side of an image's content after the border crop
SPLITS = ("pretrain", "val", "annotated", "test")
# Test cells in (scanner, effusion) order; the remainder of n_test / 4 goes to the first cells.
TEST_CELLS = ((0, 0), (0, 1), (1, 0), (1, 1))
REQUIRED_SETTINGS = ("padchest_images", "chexmask_csv", "gold_masks")


@dataclass(frozen=True, kw_only=True)
class PadChestOptions:
    """Choices the paper leaves open (all part of the cache key).

    ``border_level``: a pixel is content when its 8-bit value exceeds this (CheXmask uses 1).
    ``low_percentile`` / ``high_percentile``: intensity window mapped to 0 / 255.
    ``strip_labels``: see :func:`cfcl.data.metadata.parse_labels` (False, as the reference code).
    ``quality_column``: the CheXmask column compared with ``DataConfig.chexmask_min_dice_rca``.
    """

    border_level: int = 1
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    strip_labels: bool = False
    quality_column: str = cm.QUALITY_COLUMN


# --------------------------------------------------------------------------- settings


def check_settings(cfg: DataConfig) -> None:
    """Fail at once, naming the setting, when a real-data path is unset or does not exist."""
    missing = [f"data.{name}" for name in REQUIRED_SETTINGS if not getattr(cfg, name)]
    if missing:
        raise ValueError(
            f"data.source='padchest' needs the setting(s) {', '.join(missing)} (paths to the PadChest "
            "PNG folder, the CheXmask Padchest.csv and the gold mask folder); see docs/real_data.md, "
            "e.g. get_profile('cpu', **{'data.source': 'padchest', 'data.padchest_images': '/data/padchest', ...})")
    checks = (("padchest_images", Path.is_dir, "folder"), ("chexmask_csv", Path.is_file, "file"),
              ("gold_masks", Path.is_dir, "folder"))
    for name, test, kind in checks:
        if not test(Path(getattr(cfg, name))):
            raise FileNotFoundError(f"setting data.{name}: {kind} {getattr(cfg, name)} does not exist")
    if cfg.padchest_metadata and not Path(cfg.padchest_metadata).is_file():
        raise FileNotFoundError(f"setting data.padchest_metadata: file {cfg.padchest_metadata} does not exist")


# --------------------------------------------------------------------------- images


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Read a grayscale PadChest PNG as ``(H, W)`` uint16 (16-bit files) or uint8 (8-bit files).

    A missing, corrupt or colour file raises an error of one line naming it (:func:`cfcl.data.png.read_png`).
    """
    arr, mode = png.read_png(path, "PadChest image", "grayscale")
    if arr.dtype == np.uint8 or arr.dtype == np.uint16:
        return arr
    if np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 65535:
        return arr.astype(np.uint16)  # PIL mode "I" for some 16-bit files
    raise ValueError(f"PadChest image {path} has unsupported pixel type {arr.dtype} (mode {mode})")


def window(img: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Map the ``low``/``high`` percentiles of an integer image to 0/1 (clipped), float32.

    Percentiles are exact nearest-rank values from the image histogram (fast for uint16).
    A flat image maps to 0.
    """
    flat = img.ravel()
    counts = np.bincount(flat)
    cdf = np.cumsum(counts)
    n = cdf[-1]
    lo = int(np.searchsorted(cdf, max(1, int(np.ceil(low / 100 * n)))))
    hi = int(np.searchsorted(cdf, max(1, int(np.ceil(high / 100 * n)))))
    if hi <= lo:
        return np.zeros(img.shape, np.float32)
    return np.clip((img.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)


def preprocess_image(img: np.ndarray, size: int, options: PadChestOptions | None = None
                     ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """CheXmask geometry + intensity window: ``(H, W)`` integer image to ``(size, size)`` uint8.

    Returns the image and the content box used, so that a mask of the same image can follow
    (:func:`preprocess_mask`).
    """
    opts = options or PadChestOptions()
    box = content_box(img, opts.border_level)
    top, bottom, left, right = box
    crop = window(img[top:bottom, left:right], opts.low_percentile, opts.high_percentile)
    out = resize_image(pad_to_square(crop), size)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8), box


def _scan_pngs(root: str | os.PathLike, stat: bool = False) -> list[tuple[str, str, int, int]]:
    """Every PNG directly under ``root``, then those one level of sub-folders down, each group
    sorted, as ``(name, path, size, mtime_ns)``; size and mtime are 0 unless ``stat``."""
    flat: list[os.DirEntry] = []
    subdirs: list[str] = []
    with os.scandir(root) as it:
        for entry in it:
            if entry.is_dir():
                subdirs.append(entry.path)
            elif entry.name.lower().endswith(".png"):
                flat.append(entry)
    nested: list[os.DirEntry] = []
    for sub in sorted(subdirs):
        with os.scandir(sub) as it:
            nested.extend(sorted((e for e in it if e.name.lower().endswith(".png")), key=lambda e: e.name))
    out = []
    for entry in sorted(flat, key=lambda e: e.name) + nested:
        st = entry.stat() if stat else None
        out.append((entry.name, entry.path, st.st_size if st else 0, st.st_mtime_ns if st else 0))
    return out


def index_images(root: str | os.PathLike) -> dict[str, str]:
    """Map each PNG file name under ``root`` (flat, or one level of sub-folders such as
    PadChest's ``<ImageDir>/``) to its path. PadChest ImageIDs are unique, so the sub-folder
    does not matter; a flat file wins over a sub-folder copy."""
    found: dict[str, str] = {}
    for name, path, _, _ in _scan_pngs(root):
        found.setdefault(name, path)
    return found


# --------------------------------------------------------------------------- splits


def _encode_parents(raw: pd.DataFrame, ids: pd.Series, what: str) -> pd.DataFrame:
    """PatientID, sex, scanner of gold images from the raw metadata; errors name the image."""
    meta = raw.drop_duplicates("ImageID").set_index("ImageID")
    absent = [i for i in ids if i not in meta.index]
    if absent:
        raise ValueError(f"{what}: ImageID {absent[0]!r} is not in the PadChest metadata "
                         f"({len(absent)} missing)")
    rows = meta.loc[list(ids)]
    for col, values, name in (("PatientSex_DICOM", SEX, "sex"), ("Manufacturer_DICOM", SCANNER, "scanner")):
        bad = ~rows[col].isin(values)
        if bad.any():
            raise ValueError(f"{what}: ImageID {rows.index[bad][0]!r} has {col}={rows[col][bad].iloc[0]!r}; "
                             f"the {name} parent must be one of {values}")
    return pd.DataFrame({"ImageID": list(ids), "PatientID": rows["PatientID"].astype(str).to_numpy(),
                         "sex": rows["PatientSex_DICOM"].map(SEX.index).astype(int).to_numpy(),
                         "scanner": rows["Manufacturer_DICOM"].map(SCANNER.index).astype(int).to_numpy()})


def _gold_rows(index: pd.DataFrame, raw: pd.DataFrame, what: str) -> pd.DataFrame:
    parents = _encode_parents(raw, index["ImageID"], what)
    parents["effusion"] = index["effusion"].to_numpy()
    parents["gold_path"] = index["mask_path"].to_numpy()
    return parents


def _cell_counts(n: int) -> list[int]:
    base, rem = divmod(n, len(TEST_CELLS))
    return [base + (i < rem) for i in range(len(TEST_CELLS))]


def _balanced(df: pd.DataFrame, n: int, what: str, short: list[str]) -> pd.DataFrame:
    """Up to n / 4 rows per scanner x effusion cell, in ``df``'s order; a short cell is added to ``short``."""
    parts = []
    for (scanner, effusion), k in zip(TEST_CELLS, _cell_counts(n)):
        cell = df[(df["scanner"] == scanner) & (df["effusion"] == effusion)].head(k)
        if len(cell) < k:
            short.append(f"{what}: only {len(cell)} of {k} images for scanner={scanner}, effusion={effusion} "
                         "(data.n_test)")
        parts.append(cell)
    return pd.concat(parts, ignore_index=True)


def _take_patients(df: pd.DataFrame, n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """First ``n`` images of ``df`` (ordered by patient) taking whole patients: every patient
    whose first image falls before ``n`` is used up (its surplus images are dropped).
    Returns ``(taken, rest)``."""
    first = df.groupby("PatientID", sort=False).cumcount()
    start = np.arange(len(df)) - first.to_numpy()
    return df[start < n].head(n), df[start >= n]


def _drop_empty_lungs(chex: pd.DataFrame, passing: pd.Index, source: str) -> pd.DataFrame:
    """CheXmask without the rows that pass the Dice RCA cut but have an empty lung, which are
    counted in a :class:`cfcl.data.DataWarning` (rows below the cut never enter the pool)."""
    empty = cm.empty_lungs(chex)
    bad = empty.any(axis=1) & chex.index.isin(passing)
    if bad.any():
        right, left = empty.loc[bad, "Right Lung"], empty.loc[bad, "Left Lung"]
        warnings.warn(f"CheXmask CSV {source}: {int(bad.sum())} rows that pass the Dice RCA cut have an empty lung "
                      f"({int((right & ~left).sum())} right, {int((left & ~right).sum())} left, "
                      f"{int((right & left).sum())} both; first: ImageID {chex.index[bad][0]!r}): dropped as if "
                      "absent (their images leave the pool; a gold image keeps no silver mask)",
                      DataWarning, stacklevel=3)
    return chex[~bad]


def _shortfalls(cfg: DataConfig, assignment: pd.DataFrame) -> list[str]:
    """Splits smaller than their size setting, and pre-training / validation splits missing a value
    of a parent (sex, scanner, effusion)."""
    short = []
    asked = {"pretrain": ("data.n_pretrain", cfg.n_pretrain), "val": ("data.n_val", cfg.n_val),
             "test": ("data.n_test", cfg.n_test)}
    for split, (name, n) in asked.items():
        got = int((assignment["split"] == split).sum())
        if got < n:
            short.append(f"{split} holds {got} of the {n} images asked ({name})")
    for split in ("pretrain", "val"):
        rows = assignment[assignment["split"] == split]
        for parent, names in (("sex", SEX), ("scanner", SCANNER), ("effusion", EFFUSION)):
            missing = sorted(set(range(len(names))) - set(rows[parent]))
            if len(rows) and missing:
                short.append(f"{split} has no image with {parent}={missing[0]} ({names[missing[0]]})")
    return short


@dataclass
class _Sources:
    chexmask: pd.DataFrame
    assignment: pd.DataFrame
    counts: dict[str, int]


def _plan(cfg: DataConfig, opts: PadChestOptions) -> _Sources:
    check_settings(cfg)
    raw = read_metadata(cfg.padchest_metadata)
    meta = filter_metadata(raw, strip_labels=opts.strip_labels)
    meta["PatientID"] = meta["PatientID"].astype(str)
    chex = cm.read_chexmask(cfg.chexmask_csv)
    files = index_images(cfg.padchest_images)
    gold_dir = Path(cfg.gold_masks)
    ann_index = gd.read_gold_index(gold_dir, gd.ANNOTATED_INDEX)
    test_index = gd.read_gold_index(gold_dir, gd.TEST_INDEX, required=False)
    passing = cm.quality_filter(chex, cfg.chexmask_min_dice_rca, opts.quality_column)
    chex = _drop_empty_lungs(chex, passing.index, str(cfg.chexmask_csv))
    passing = passing[passing.index.isin(chex.index)]
    short: list[str] = []

    ann_all = _gold_rows(ann_index, raw, str(gold_dir / gd.ANNOTATED_INDEX))
    parts = [ann_all[ann_all["effusion"] == 0].head(cfg.n_annotated_healthy),
             ann_all[ann_all["effusion"] == 1].head(cfg.n_annotated_effusion)]
    for part, k, label, name in zip(parts, (cfg.n_annotated_healthy, cfg.n_annotated_effusion),
                                    ("healthy", "effusion"), ("n_annotated_healthy", "n_annotated_effusion")):
        if len(part) < k:
            short.append(f"{gold_dir / gd.ANNOTATED_INDEX}: only {len(part)} of {k} {label} images (data.{name})")
    annotated = ann_all.loc[sorted(pd.concat(parts).index)].assign(split="annotated")
    excluded = set(ann_all["PatientID"])
    if test_index is not None:
        test_all = _gold_rows(test_index, raw, str(gold_dir / gd.TEST_INDEX))
        shared = set(test_all["PatientID"]) & excluded
        if shared:
            raise ValueError(f"{gold_dir / gd.TEST_INDEX} and {gold_dir / gd.ANNOTATED_INDEX} share "
                             f"patient {sorted(shared)[0]!r}: a patient may not be in two splits")
        excluded |= set(test_all["PatientID"])

    in_files = meta["ImageID"].isin(files.keys())
    in_chex = meta["ImageID"].isin(passing.index)
    pool = meta[in_files & in_chex & ~meta["PatientID"].isin(excluded)]
    pool = pool[["ImageID", "PatientID", "sex", "scanner", "effusion"]].assign(gold_path=None)
    rng = np.random.default_rng(cfg.seed)
    if test_index is not None:
        test = _balanced(test_all, cfg.n_test, str(gold_dir / gd.TEST_INDEX), short)
    else:
        shuffled = pool.iloc[rng.permutation(len(pool))]
        test = _balanced(shuffled.drop_duplicates(["PatientID", "scanner", "effusion"]), cfg.n_test,
                         "held-out test split", short)
        pool = pool[~pool["PatientID"].isin(set(test["PatientID"]))]
    test = test.assign(split="test")

    patients = np.sort(pool["PatientID"].unique())
    rank = pd.Series(rng.permutation(len(patients)), index=patients)
    pool = pool.assign(_rank=pool["PatientID"].map(rank).to_numpy()).sort_values(["_rank", "ImageID"])
    val, rest = _take_patients(pool, cfg.n_val)
    pretrain, _ = _take_patients(rest, cfg.n_pretrain)
    assignment = pd.concat([pretrain.assign(split="pretrain"), val.assign(split="val"), annotated, test],
                           ignore_index=True).drop(columns="_rank", errors="ignore")

    missing = [i for i in assignment["ImageID"] if i not in files]
    if missing:
        raise FileNotFoundError(f"PadChest image {missing[0]!r} (a gold-annotated image) not found under "
                                f"setting data.padchest_images={cfg.padchest_images} "
                                f"({len(missing)} missing; expected <ImageDir>/<ImageID> or <ImageID>)")
    assignment["path"] = assignment["ImageID"].map(files)
    assignment["quality"] = assignment["ImageID"].map(chex[opts.quality_column]).astype(float)
    counts = {"metadata_filtered": int(len(meta)), "without_png": int((~in_files).sum()),
              "without_passing_chexmask": int((in_files & ~in_chex).sum()),
              **{f"n_{s}": int((assignment["split"] == s).sum()) for s in SPLITS}}
    short += _shortfalls(cfg, assignment)
    if short:
        where = (f"metadata {raw.attrs.get('source')}, CheXmask {cfg.chexmask_csv}, images {cfg.padchest_images}, "
                 f"gold {gold_dir}")
        if not cfg.allow_short_split:
            raise ValueError(f"PadChest splits come up short: {'; '.join(short)}. Inputs: {where}; counts: {counts}. "
                             "Fix the inputs (see the warnings above: misspelt values, dropped rows), lower the "
                             "size settings, or set data.allow_short_split=true to accept short splits")
        for item in short:
            warnings.warn(f"{item} (accepted: data.allow_short_split=true)", DataWarning, stacklevel=2)
    return _Sources(chexmask=chex, assignment=assignment, counts=counts)


def assign_splits(cfg: DataConfig, options: PadChestOptions | None = None) -> pd.DataFrame:
    """The image selection, one row per image: ``ImageID, PatientID, sex, scanner, effusion,
    gold_path, split, path, quality`` (reads the tables, decodes no image)."""
    return _plan(cfg, options or PadChestOptions()).assignment


# --------------------------------------------------------------------------- cache


def _stamp(path: str | os.PathLike | None) -> list[int] | None:
    if not path or not Path(path).exists():
        return None
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def _image_stamp(root: str | None) -> str | None:
    """Digest of (relative path, size, mtime) of every PNG under the image folder (one
    ``os.scandir`` pass, one stat per file: about a second for PadChest's 160k files)."""
    if not root or not Path(root).is_dir():
        return None
    digest = hashlib.sha256()
    for _, path, size, mtime in _scan_pngs(root, stat=True):
        digest.update(f"{os.path.relpath(path, root)}\0{size}\0{mtime}\n".encode())
    return digest.hexdigest()


def _gold_mask_stamps(gold_dir: Path | None, name: str) -> list | None:
    """(mask path, size, mtime) of every mask an index names; None without a readable index
    (the plan then reports the problem)."""
    if gold_dir is None or not (gold_dir / name).is_file():
        return None
    try:
        masks = pd.read_csv(gold_dir / name, dtype=str, usecols=["mask"])["mask"]
    except (OSError, ValueError):
        return None
    return [[m, _stamp(gold_dir / m) if m else None] for m in masks.fillna("")]


def key_settings(cfg: DataConfig) -> dict[str, Any]:
    """The data settings as a dict, ``allow_short_split`` left out at its default (False)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "allow_short_split" or v}


def cache_key(cfg: DataConfig, options: PadChestOptions | None = None) -> str:
    """Short hash of the DataConfig, the options and the inputs' size/mtime: the metadata,
    CheXmask and gold index files, every PNG under ``data.padchest_images`` and every gold mask
    the indexes name (so replacing or touching any of them builds a new cache).
    ``data.allow_short_split`` enters only when true (the key of a full split is as before it)."""
    opts = options or PadChestOptions()
    gold_dir = Path(cfg.gold_masks) if cfg.gold_masks else None
    stamps = {"metadata": _stamp(cfg.padchest_metadata), "chexmask": _stamp(cfg.chexmask_csv),
              "annotated": _stamp(gold_dir / gd.ANNOTATED_INDEX if gold_dir else None),
              "test": _stamp(gold_dir / gd.TEST_INDEX if gold_dir else None),
              "images": _image_stamp(cfg.padchest_images),
              "annotated_masks": _gold_mask_stamps(gold_dir, gd.ANNOTATED_INDEX),
              "test_masks": _gold_mask_stamps(gold_dir, gd.TEST_INDEX)}
    data = key_settings(cfg)
    payload = json.dumps({"format": FORMAT_VERSION, "data": data,
                          "options": dataclasses.asdict(opts), "stamps": stamps}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _process(item: dict[str, Any], size: int, opts: PadChestOptions, chex: pd.DataFrame,
             chex_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    img = read_png(item["path"])
    try:
        image, box = preprocess_image(img, size, opts)
    except ValueError as exc:
        raise ValueError(f"PadChest image {item['path']}: {exc}") from exc
    top, bottom, left, right = box
    if min(bottom - top, right - left) < MIN_CONTENT_SIZE:
        raise ValueError(f"PadChest image {item['path']}: its content is {bottom - top} x {right - left} px "
                         f"(height x width) after the border crop of the {img.shape[0]} x {img.shape[1]} "
                         f"image; at least {MIN_CONTENT_SIZE} px on each side is required (a thumbnail "
                         "or an almost black image?)")
    if item["ImageID"] in chex.index:
        silver = cm.row_label_map(chex.loc[item["ImageID"]], size, source=chex_name,
                                  image_shape=img.shape, box=box)
    else:
        silver = np.zeros((size, size), np.uint8)
    gold = None
    if isinstance(item.get("gold_path"), str):
        gold = preprocess_mask(gd.read_gold_mask(item["gold_path"], shape=img.shape), box, size)
        if item["ImageID"] in chex.index:
            same, exchanged = gd.side_agreement(gold, silver)
            if exchanged > same:
                raise ValueError(f"gold mask {item['gold_path']} and the CheXmask row of ImageID {item['ImageID']} "
                                 f"in {chex_name} disagree on the sides: each gold lung overlaps the opposite "
                                 f"CheXmask lung (Dice {exchanged:.2f}) more than the same one ({same:.2f}); one of "
                                 "them has the lungs exchanged (gold: 1 = the patient's right lung, on the image's "
                                 "left; CheXmask: the 'Right Lung' column is the patient's right lung)")
    return image, silver, gold


def split_key(cfg: DataConfig, split: str) -> str:
    """The data key of :mod:`cfcl.data.store` (:func:`cache_key` with the default options): one key for
    every split, as the splits are carved out of one pool of images together (``split`` is not read)."""
    return cache_key(cfg)


def build_split(cfg: DataConfig, split: str, folder: Path, workers: int | None = None) -> dict[str, Any]:
    """Decode one split into ``folder`` (the store's run folder): ``images``/``silver`` (and
    ``gold`` for gold images) uint8 ``(N, size, size)``, ``quality`` (Dice RCA, NaN without a
    CheXmask row), ``parents.csv``. ``workers``: decoding threads (default: CPU count, at most 8)."""
    opts = PadChestOptions()
    src = _plan(cfg, opts)
    rows = src.assignment[src.assignment["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"PadChest split {split!r} is empty: {src.counts} (check the settings "
                         f"data.padchest_images / data.chexmask_csv / data.gold_masks and the sizes)")
    workers = workers or min(8, os.cpu_count() or 1)
    n, size = len(rows), cfg.image_size
    has_gold = bool(rows["gold_path"].map(lambda p: isinstance(p, str)).all())
    names = ["images", "silver"] + (["gold"] if has_gold else [])
    items = rows.to_dict("records")
    chex_name = str(cfg.chexmask_csv)
    with ExitStack() as stack:
        tmp = {name: stack.enter_context(atomic_path(folder / f"{name}.npy")) for name in names}
        out = {name: np.lib.format.open_memmap(tmp[name], mode="w+", dtype=np.uint8, shape=(n, size, size))
               for name in names}
        chunk = max(1, workers * 16)
        with ThreadPoolExecutor(max_workers=workers) as pool, \
                tqdm(total=n, desc=f"PadChest {split} ({size} px)", unit="img") as bar:
            for start in range(0, n, chunk):
                batch = items[start:start + chunk]
                results = pool.map(lambda it: _process(it, size, opts, src.chexmask, chex_name), batch)
                for i, (image, silver, gold) in enumerate(results, start=start):
                    out["images"][i], out["silver"][i] = image, silver
                    if has_gold:
                        out["gold"][i] = gold
                    bar.update(1)
        for arr in out.values():
            arr.flush()
        del out
    with atomic_path(folder / "quality.npy") as tmp_q:
        with open(tmp_q, "wb") as fh:
            np.save(fh, rows["quality"].to_numpy(dtype=float))
    parents = rows[["sex", "scanner", "effusion", "ImageID", "PatientID"]].reset_index(drop=True)
    with atomic_path(folder / "parents.csv") as tmp_p:
        parents.to_csv(tmp_p, index=False)
    return {"arrays": names + ["quality"], "meta": {"n": n, "image_size": size, "counts": src.counts,
                                                    "options": dataclasses.asdict(opts)}}


def load_split(cfg: DataConfig, split: str) -> ChestSplit:
    """One split of the real data as a :class:`ChestSplit` (uint8 memmaps, verified), decoding it
    into the data store (:mod:`cfcl.data.store`) on first use."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")
    check_settings(cfg)
    from cfcl.data.store import ensure_split

    return ensure_split(cfg, split)
