"""A tiny real-data set in the exact real formats, made from the phantom: proves the PadChest route.

No PadChest image, CheXmask CSV or gold mask can be shipped, so this module writes stand-ins in
their exact formats from phantom renders, and ``data.source=padchest`` runs on them end to end::

    python -m cfcl.data.fixture --out DIR [--seed 0] [--force]

prints one line of settings for ``make ... SET="..."`` (and :func:`fixture_settings` returns them
as a dict for :func:`cfcl.config.get_profile`)::

    data.source=padchest data.padchest_images=DIR/images data.padchest_metadata=DIR/PADCHEST_...csv
    data.chexmask_csv=DIR/chexmask/Preprocessed/Padchest.csv data.gold_masks=DIR/gold

Layout of ``DIR``:

- ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``: PadChest metadata with the real file's
  36 columns (leading unnamed index column, ``ImagingDynamicsCompanyLtd`` /
  ``PhilipsMedicalSystems``, ``Labels`` as a Python-literal list, ``None`` for missing DICOM
  values, 36+ digit PatientIDs);
- ``images/<ImageDir>/<ImageID>``: 16-bit grayscale PNGs as PadChest unpacks them. Each is a
  phantom render of ``CONTENT`` (256) px, cropped to a centred non-square box, stored as
  ``offset + gain * value`` (per image) and surrounded by near-black borders (values < 512,
  i.e. 8-bit value <= 1, which CheXmask's preprocessing strips). After the project's
  preprocessing (crop, centred square padding, resize: :func:`cfcl.data.padchest.preprocess_image`)
  the image is the phantom render again, with the cropped margin black, up to resampling and the
  intensity window;
- ``chexmask/Preprocessed/Padchest.csv``: CheXmask's "Preprocessed" format (columns
  ``cfcl.data.chexmask.COLUMNS``): the phantom's silver lungs as RLE in the 1024 x 1024 frame,
  ``Dice RCA (Mean)`` = the phantom's quality score, pseudo-landmarks and a heart ellipse;
- ``gold/``: the gold-mask folder of ``docs/real_data.md``: ``annotated.csv`` (20 healthy +
  50 effusion), ``test.csv`` (4 per scanner x effusion cell), ``masks/<ImageID>`` label maps at
  the PNG's resolution (the phantom's gold lungs);
- ``fixture_items.csv``: the ground truth of every image (role, why it must be dropped, parents,
  phantom noise split/index, crop box in the 256 px render, borders, intensity map);
- ``fixture.json`` (written last: a folder without it is not a fixture): version, seed, counts.

The pool (val + pretrain candidates) holds ``POOL_PATIENTS`` patients, ``POOL_DOUBLE`` of them
with two images, so that the ``smoke`` profile's sizes (16 val, 64 pretrain) are met
patient-level. Rows the reader must drop, each otherwise complete: a lateral, an AP, a
paediatric, an "exclude", a "suboptimal study", another manufacturer, sex "O", two CheXmask rows
below the 0.8 Dice RCA cut, a metadata row without PNG, a PNG without CheXmask row, and another
image of an annotated and of a test patient.

The whole folder is built next to ``DIR`` and renamed onto it when complete (an interrupted
write leaves only a hidden ``.DIR.partial-*`` folder). An existing ``DIR`` is replaced only when
it is empty or an earlier fixture; one with the same version and seed is reused unless ``force``.
Deterministic for a seed (file contents; not mtimes).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cfcl.data import chexmask as cm
from cfcl.data import gold as gd
from cfcl.data import phantom

FIXTURE_VERSION = 1
MANIFEST = "fixture.json"
ITEMS = "fixture_items.csv"
METADATA_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
CHEXMASK_FILE = Path("chexmask") / "Preprocessed" / "Padchest.csv"
CONTENT = 256  # side of the phantom render; the content box keeps it on one side
POOL_PATIENTS = 72
POOL_DOUBLE = 24  # pool patients with a second image
POOL_EFFUSION = 0.2  # effusion prevalence of the pool (real PadChest: 2.5 %; here both classes must show)
N_HEALTHY, N_EFFUSION = 20, 50  # annotated.csv (paper section 3)
TEST_PER_CELL = 4  # test.csv: per scanner x effusion cell (smoke n_test = 16)
LOW_QUALITY = (0.55, 0.78)  # Dice RCA (Mean) of the two rows below the 0.8 cut
SCANNERS = ("ImagingDynamicsCompanyLtd", "PhilipsMedicalSystems")
OTHER_MANUFACTURER = "GEHealthcare"
# (reason, metadata overrides) of the rows the metadata filter must drop
FILTERED = (("lateral", {"Projection": "L", "ViewPosition_DICOM": "LATERAL"}),
            ("ap", {"Projection": "AP_horizontal", "ViewPosition_DICOM": "AP"}),
            ("paediatric", {"Pediatric": "PED"}),
            ("exclude", {"Labels": "['exclude']"}),
            ("suboptimal", {"Labels": "['NSG tube', 'suboptimal study']"}),
            ("other_manufacturer", {"Manufacturer_DICOM": OTHER_MANUFACTURER}),
            ("sex_other", {"PatientSex_DICOM": "O"}))
METADATA_COLUMNS = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS")
SIDES = ("right", "left", "bilateral")  # phantom noise field eff_side
N_LANDMARKS = (44, 50, 26)  # CheXmask: right lung, left lung, heart


# --------------------------------------------------------------------------- settings


def fixture_settings(out: str | os.PathLike) -> dict[str, str]:
    """The settings that point the project at the fixture in ``out`` (absolute paths)."""
    out = Path(out).resolve()
    return {"data.source": "padchest",
            "data.padchest_images": str(out / "images"),
            "data.padchest_metadata": str(out / METADATA_FILE),
            "data.chexmask_csv": str(out / CHEXMASK_FILE),
            "data.gold_masks": str(out / "gold")}


def settings_line(settings: dict[str, str]) -> str:
    """``key=value`` items separated by spaces, shell-quoted where needed (``shlex.split`` reads it)."""
    return shlex.join(f"{k}={v}" for k, v in settings.items())


def read_manifest(out: str | os.PathLike) -> dict | None:
    """The fixture's manifest, or None when ``out`` holds no complete fixture."""
    try:
        manifest = json.loads((Path(out) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("kind") == "cfcl-fixture" else None


# --------------------------------------------------------------------------- the plan


def _digits(rng: np.random.Generator, n: int) -> str:
    return str(rng.integers(1, 10)) + "".join(map(str, rng.integers(0, 10, n - 1)))


def plan(seed: int = 0) -> pd.DataFrame:
    """One row per image of the fixture (no rendering): identifiers, role (``pool``,
    ``annotated``, ``test``, ``drop``), ``reason`` of a drop, parents, the phantom noise
    (``noise_split``, ``noise_index``) and the geometry and intensity of its PNG."""
    rng = np.random.default_rng([seed, 20260])
    rows: list[dict] = []

    def patient() -> dict:
        return {"PatientID": _digits(rng, int(rng.integers(36, 40))), "PatientBirth": float(rng.integers(1925, 1995)),
                "ImageDir": int(rng.integers(0, 6))}

    def image(pat: dict, role: str, sex: int, scanner: int, effusion: int, split: str, index: int,
              reason: str = "", study: str | None = None) -> dict:
        study = study or "2168401113669640" + _digits(rng, 29)
        suffix = f"{rng.integers(0, 5):02d}-{rng.integers(0, 200):03d}-{rng.integers(0, 200):03d}"
        return {"ImageID": f"{study}_{suffix}.png", "StudyID": study, **pat, "role": role, "reason": reason,
                "sex": sex, "scanner": scanner, "effusion": effusion, "noise_split": split, "noise_index": index}

    # pool: real joint of sex and scanner, effusion raised so both classes reach val and pretrain
    n_pool = POOL_PATIENTS + POOL_DOUBLE
    parents = phantom.sample_parents(n_pool, rng, effusion_prevalence=POOL_EFFUSION)
    k = 0
    first_of_patient = []
    for p in range(POOL_PATIENTS):
        pat = patient()
        for j in range(1 + (p < POOL_DOUBLE)):
            par = parents.iloc[k]
            sex = int(par["sex"]) if j == 0 else rows[first_of_patient[-1]]["sex"]  # a patient keeps its sex
            if j == 0:
                first_of_patient.append(len(rows))
            rows.append(image(pat, "pool", sex, int(par["scanner"]), int(par["effusion"]), "pretrain", k))
            k += 1
    # gold: annotated (20 healthy + 50 effusion, shuffled) and a balanced test set
    effusion = rng.permutation(np.r_[np.zeros(N_HEALTHY, int), np.ones(N_EFFUSION, int)])
    for i, e in enumerate(effusion):
        rows.append(image(patient(), "annotated", int(rng.integers(2)), int(rng.integers(2)), int(e), "annotated", i))
    cells = [(s, e) for s in (0, 1) for e in (0, 1) for _ in range(TEST_PER_CELL)]
    for i in rng.permutation(len(cells)):
        s, e = cells[i]
        rows.append(image(patient(), "test", int(rng.integers(2)), s, e, "test", len(rows) - n_pool - len(effusion)))
    # rows the reader must drop
    drops = [reason for reason, _ in FILTERED] + ["low_quality", "low_quality", "no_png", "no_chexmask",
                                                   "annotated_patient", "test_patient"]
    pool_rows = [r for r in rows if r["role"] == "pool"]
    gold_of = {"annotated_patient": next(r for r in rows if r["role"] == "annotated"),
               "test_patient": next(r for r in rows if r["role"] == "test")}
    for i, reason in enumerate(drops):
        if reason == "lateral":  # the lateral view of a pool patient's PA study
            src = pool_rows[3]
            pat = {c: src[c] for c in ("PatientID", "PatientBirth", "ImageDir")}
            row = image(pat, "drop", src["sex"], src["scanner"], src["effusion"], "val", i, reason, src["StudyID"])
        elif reason in gold_of:  # another image of a gold patient: kept out of every split
            src = gold_of[reason]
            pat = {c: src[c] for c in ("PatientID", "PatientBirth", "ImageDir")}
            row = image(pat, "drop", src["sex"], src["scanner"], 0, "val", i, reason)
        else:
            row = image(patient(), "drop", int(rng.integers(2)), int(rng.integers(2)), 0, "val", i, reason)
        rows.append(row)
    df = pd.DataFrame(rows)
    # geometry: content = centred crop of the CONTENT px render along one axis, then borders
    n = len(df)
    tall = rng.random(n) < 0.6
    cut = np.where(tall, rng.integers(8, 33, n), rng.integers(8, 21, n))
    start = cut // 2
    df["crop_top"] = np.where(tall, 0, start)
    df["crop_bottom"] = np.where(tall, CONTENT, start + CONTENT - cut)
    df["crop_left"] = np.where(tall, start, 0)
    df["crop_right"] = np.where(tall, start + CONTENT - cut, CONTENT)
    borders = rng.integers(0, 41, (n, 4)) * (rng.random((n, 4)) < 0.8)
    borders[np.arange(n), rng.integers(0, 4, n)] += 3  # never borderless
    df[["border_top", "border_bottom", "border_left", "border_right"]] = borders
    df["border_max"] = rng.choice([0, 80, 300, 511], n)  # near-black borders (8-bit value <= 1)
    df["offset"] = rng.integers(768, 4000, n)
    df["gain"] = rng.integers(150, 241, n)
    df["height"] = df["crop_bottom"] - df["crop_top"] + df["border_top"] + df["border_bottom"]
    df["width"] = df["crop_right"] - df["crop_left"] + df["border_left"] + df["border_right"]
    if df["ImageID"].duplicated().any() or df.loc[df["role"] != "drop", "PatientID"].duplicated().sum() != POOL_DOUBLE:
        raise RuntimeError("fixture plan: identifier collision (change the seed)")  # pragma: no cover
    return df


# --------------------------------------------------------------------------- rendering


def render_items(items: pd.DataFrame, seed: int = 0) -> dict[str, np.ndarray]:
    """Phantom renders (``CONTENT`` px) of the plan's rows: ``image``, ``gold``, ``silver``,
    ``quality`` and the noise field ``eff_side`` (the public phantom API: ``sample_noise`` per
    noise split with the fixture's seed, ``render``)."""
    bank_size = len(phantom._bank())
    parts = []
    for split in dict.fromkeys(items["noise_split"]):
        sel = items["noise_split"] == split
        idx = items.loc[sel, "noise_index"].to_numpy()
        noise = phantom.sample_noise(int(idx.max()) + 1, seed, split, bank_size)
        parts.append((np.flatnonzero(sel), {k: v[idx] for k, v in noise.items()}))
    order = np.concatenate([p[0] for p in parts])
    noise = {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]}
    parents = items.iloc[order][["sex", "scanner", "effusion"]].reset_index(drop=True)
    keys = ("image", "gold", "silver", "quality")
    chunks: dict[str, list] = {k: [] for k in keys}
    for lo in range(0, len(order), 32):  # bounded memory: render() returns several maps per image
        sl = slice(lo, lo + 32)
        out = phantom.render({k: v[sl] for k, v in noise.items()}, parents.iloc[sl].reset_index(drop=True),
                             CONTENT)
        for k in keys:
            chunks[k].append(np.asarray(out[k]))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    result = {k: np.concatenate(chunks[k])[inverse] for k in keys}
    result["eff_side"] = noise["eff_side"][inverse]
    return result


def _crop(arr: np.ndarray, row) -> np.ndarray:
    return arr[row.crop_top:row.crop_bottom, row.crop_left:row.crop_right]


def _canvas(content: np.ndarray, row, fill: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((row.height, row.width), content.dtype) if fill is None else fill
    t, l = row.border_top, row.border_left
    out[t:t + content.shape[0], l:l + content.shape[1]] = content
    return out


def png16(image: np.ndarray, row, rng: np.random.Generator) -> np.ndarray:
    """The 16-bit PNG array of one rendered image: the content ``offset + gain * value`` in its
    near-black border."""
    content = row.offset + row.gain * _crop(image, row).astype(np.int64)
    border = rng.integers(0, row.border_max + 1, (row.height, row.width)) if row.border_max else None
    return _canvas(content, row, border).astype(np.uint16)


def _padded_frame(labels: np.ndarray, row) -> np.ndarray:
    """A render's label map as CheXmask sees it: content crop, centred square padding (which
    restores the render's geometry with the margin empty)."""
    out = np.zeros_like(labels)
    out[row.crop_top:row.crop_bottom, row.crop_left:row.crop_right] = _crop(labels, row)
    return out


def _outline(mask: np.ndarray, n: int, scale: float) -> list[tuple[int, int]]:
    """``n`` pseudo-landmarks ``(x, y)`` on a mask's outline (farthest pixel per angle sector)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return [(0, 0)] * n
    cy, cx = ys.mean(), xs.mean()
    ang = np.arctan2(ys - cy, xs - cx)
    rad = np.hypot(ys - cy, xs - cx)
    sector = ((ang + np.pi) / (2 * np.pi) * n).astype(int) % n
    r = np.full(n, np.nan)
    np.fmax.at(r, sector, rad)
    have = np.flatnonzero(~np.isnan(r))
    r = np.interp(np.arange(n), have, r[have], period=n)
    theta = -np.pi + (np.arange(n) + 0.5) * 2 * np.pi / n
    return [(int(round((cx + ri * np.cos(t) + 0.5) * scale)), int(round((cy + ri * np.sin(t) + 0.5) * scale)))
            for ri, t in zip(r, theta)]


def rle_upscaled(mask: np.ndarray, factor: int) -> str:
    """``cm.rle_encode(cm.resize_nearest(mask, factor * side))`` of a square mask, computed from
    the small mask's runs (each row run becomes ``factor`` runs ``factor`` times as long)."""
    mask = np.asarray(mask) != 0
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    ys, s0 = np.nonzero(edges == 1)
    _, e0 = np.nonzero(edges == -1)  # same row order, one end per start
    big_w = w * factor
    rows = ys[:, None] * factor + np.arange(factor)[None, :]  # (runs, factor)
    starts = (rows * big_w + s0[:, None] * factor).T.ravel()
    ends = (rows * big_w + e0[:, None] * factor).T.ravel()
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    if starts.size:  # a run reaching the right edge continues on the next row: merge
        keep = np.r_[True, starts[1:] != ends[:-1]]
        group = np.cumsum(keep) - 1
        merged_end = np.zeros(int(keep.sum()), np.int64)
        np.maximum.at(merged_end, group, ends)
        starts, ends = starts[keep], merged_end
    pairs = np.stack([starts + 1, ends - starts], axis=1).ravel()
    return " ".join(map(str, pairs.tolist()))


def chexmask_row(row, silver: np.ndarray, quality: float, rng: np.random.Generator) -> list:
    """One "Preprocessed" CheXmask row (``cm.COLUMNS`` order) from a render's silver label map."""
    frame = _padded_frame(silver, row)
    side = cm.PREPROCESSED_SIZE
    factor = side // frame.shape[0]
    if factor * frame.shape[0] != side:  # pragma: no cover - CONTENT divides 1024
        raise ValueError(f"CONTENT={frame.shape[0]} must divide {side}")
    right, left = frame == cm.RIGHT_LUNG_LABEL, frame == cm.LEFT_LUNG_LABEL
    # heart: an ellipse below and between the lungs (CheXmask ships one; the project ignores it)
    ys, xs = np.nonzero(frame)
    y0, y1, x0, x1 = (ys.min(), ys.max(), xs.min(), xs.max()) if ys.size else (0, 1, 0, 1)
    cy, cx = y0 + 0.72 * (y1 - y0), 0.55 * (x0 + x1)
    ry, rx = max(1.0, 0.16 * (y1 - y0)), max(1.0, 0.2 * (x1 - x0))
    yy, xx = np.ogrid[:frame.shape[0], :frame.shape[1]]
    heart = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    theta = 2 * np.pi * (np.arange(N_LANDMARKS[2]) + 0.5) / N_LANDMARKS[2]
    heart_pts = [(int(round((cx + rx * np.cos(t) + 0.5) * factor)), int(round((cy + ry * np.sin(t) + 0.5) * factor)))
                 for t in theta]
    points = _outline(right, N_LANDMARKS[0], factor) + _outline(left, N_LANDMARKS[1], factor) + heart_pts
    landmarks = ",".join(f"{x},{y}" for x, y in points)
    dice_max = min(1.0, float(quality) + float(rng.uniform(0.005, 0.04)))
    return [row.ImageID, float(quality), dice_max, landmarks, rle_upscaled(left, factor),
            rle_upscaled(right, factor), rle_upscaled(heart, factor), side, side]


def metadata_row(row, eff_side: int, rng: np.random.Generator) -> dict:
    """One PadChest metadata row with the real file's columns and spellings."""
    if row.effusion:
        side = SIDES[int(eff_side)]
        labels = "['pleural effusion', 'costophrenic angle blunting']"
        locs = f"['loc pleural', 'loc {side}']"
        by_sentence = f"[['pleural effusion', 'loc pleural', 'loc {side}'], ['costophrenic angle blunting']]"
        report = f" derram pleural {dict(right='derech', left='izquierd', bilateral='bilateral')[side]} ."
        cuis, loc_cuis = "['C0032227' 'C2073625']", "['C0032225']"
    else:
        labels, locs, by_sentence = "['normal']", "[]", "[['normal'], ['normal']]"
        report, cuis, loc_cuis = " sin hallazg patolog edad pacient .", "[]", "[]"
    philips = row.scanner == 1
    meta = {
        "ImageID": row.ImageID, "ImageDir": row.ImageDir,
        "StudyDate_DICOM": int(f"{rng.integers(2009, 2018)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"),
        "StudyID": row.StudyID, "PatientID": row.PatientID, "PatientBirth": row.PatientBirth,
        "PatientSex_DICOM": ("F", "M")[row.sex], "ViewPosition_DICOM": "POSTEROANTERIOR", "Projection": "PA",
        "MethodProjection": "Manual review of DICOM fields", "Pediatric": "No",
        "Modality_DICOM": "DX" if philips else "CR", "Manufacturer_DICOM": SCANNERS[row.scanner],
        "PhotometricInterpretation_DICOM": "MONOCHROME2", "PixelRepresentation_DICOM": 0,
        "PixelAspectRatio_DICOM": "['1', '1']" if philips else "None",
        "SpatialResolution_DICOM": 0.143 if philips else "None", "BitsStored_DICOM": 12,
        "WindowCenter_DICOM": 2047.0 if philips else float(rng.integers(1800, 2600)),
        "WindowWidth_DICOM": 4095.0 if philips else float(rng.integers(1800, 3000)),
        "Rows_DICOM": row.height, "Columns_DICOM": row.width,
        "XRayTubeCurrent_DICOM": int(rng.choice([250, 320, 400])), "Exposure_DICOM": int(rng.integers(2, 11)),
        "ExposureInuAs_DICOM": int(rng.integers(2, 11)) * 1000, "ExposureTime": int(rng.choice([10, 16, 25])),
        "RelativeXRayExposure_DICOM": "None" if philips else round(float(rng.uniform(-2, 1)), 2),
        "ReportID": int(rng.integers(4_000_000, 5_000_000)), "Report": report, "MethodLabel": "Physician",
        "Labels": labels, "Localizations": locs, "LabelsLocalizationsBySentence": by_sentence,
        "labelCUIS": cuis, "LocalizationsCUIS": loc_cuis}
    for reason, overrides in FILTERED:
        if row.reason == reason:
            meta.update(overrides)
    return meta


# --------------------------------------------------------------------------- writing


def _check_target(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"fixture target {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise FileExistsError(f"fixture target {out} is a non-empty folder without {MANIFEST}: not "
                              "an earlier fixture, refusing to replace it and leaving it as it is (choose "
                              "an empty or new folder)")


def write_fixture(out: str | os.PathLike, seed: int = 0, force: bool = False) -> dict[str, str]:
    """Write the fixture into ``out`` (see the module docstring); return :func:`fixture_settings`.

    Reuses a complete fixture of the same version and seed unless ``force``.
    """
    out = Path(out).resolve()
    manifest = read_manifest(out)
    if (not force and manifest is not None and manifest.get("version") == FIXTURE_VERSION
            and manifest.get("seed") == seed):
        return fixture_settings(out)
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
    try:
        counts = _write(tmp, seed)
        (tmp / MANIFEST).write_text(json.dumps({
            "kind": "cfcl-fixture", "version": FIXTURE_VERSION, "seed": seed, "counts": counts,
            "settings_relative": {k: os.path.relpath(v, out) if k != "data.source" else v
                                  for k, v in fixture_settings(out).items()}}, indent=1))
        _check_target(out)  # again: something may have appeared meanwhile
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return fixture_settings(out)


def _write(root: Path, seed: int) -> dict[str, int]:
    items = plan(seed)
    r = render_items(items, seed)
    rng = np.random.default_rng([seed, 20261])
    quality = r["quality"].astype(float)
    low = np.flatnonzero(items["reason"].to_numpy() == "low_quality")
    quality[low] = LOW_QUALITY[:len(low)]
    meta, chex, gold = [], [], {"annotated": [], "test": []}
    for i, row in enumerate(items.itertuples(index=False)):
        if row.reason != "no_png":
            path = root / "images" / str(row.ImageDir) / row.ImageID
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(png16(r["image"][i], row, rng)).save(path, format="PNG", compress_level=1)
        meta.append(metadata_row(row, r["eff_side"][i], rng))
        if row.reason not in ("no_chexmask", "lateral"):  # CheXmask segments frontal views only
            chex.append(chexmask_row(row, r["silver"][i], quality[i], rng))
        if row.role in gold:
            gd.write_gold_mask(root / "gold" / "masks" / row.ImageID, _canvas(_crop(r["gold"][i], row), row))
            gold[row.role].append({"ImageID": row.ImageID, "effusion": row.effusion, "mask": f"masks/{row.ImageID}"})
    order = rng.permutation(len(meta))  # the real file is not grouped by role
    pd.DataFrame([meta[i] for i in order], columns=list(METADATA_COLUMNS)).to_csv(root / METADATA_FILE)
    (root / CHEXMASK_FILE).parent.mkdir(parents=True)
    chex_order = rng.permutation(len(chex))
    pd.DataFrame([chex[i] for i in chex_order], columns=list(cm.COLUMNS)).to_csv(root / CHEXMASK_FILE, index=False)
    pd.DataFrame(gold["annotated"]).to_csv(root / "gold" / gd.ANNOTATED_INDEX, index=False)
    pd.DataFrame(gold["test"]).to_csv(root / "gold" / gd.TEST_INDEX, index=False)
    items.assign(dice_rca=quality).to_csv(root / ITEMS, index=False)
    return {"images": int((items["reason"] != "no_png").sum()), "metadata_rows": len(meta),
            "chexmask_rows": len(chex), "annotated": len(gold["annotated"]), "test": len(gold["test"]),
            "pool": int((items["role"] == "pool").sum()), "drop": int((items["role"] == "drop").sum())}


def read_items(out: str | os.PathLike) -> pd.DataFrame:
    """The ground-truth table of a written fixture (``fixture_items.csv``)."""
    return pd.read_csv(Path(out) / ITEMS, dtype={"ImageID": str, "PatientID": str, "StudyID": str,
                                                "reason": str}, keep_default_na=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cfcl.data.fixture",
        description="Write a tiny PadChest + CheXmask + gold-mask data set in the real formats (from the "
                    "phantom) and print the settings that point the project at it.")
    parser.add_argument("--out", required=True, help="folder to write (new, empty, or an earlier fixture)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="rewrite even a complete fixture of this seed")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    try:
        settings = write_fixture(args.out, seed=args.seed, force=args.force)
    except FileExistsError as exc:  # a folder the fixture did not write: refused, left as it is
        print(f"python -m cfcl.data.fixture: {exc}", file=sys.stderr)
        return 2
    print(f"fixture in {Path(args.out).resolve()} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    print(settings_line(settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
