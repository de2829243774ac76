"""PadChest metadata: the filter of the counterfactual-contrastive line of work and the
joint distribution of the parents (sex, scanner, pleural effusion).

The metadata CSV (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``, 160,861 rows)
ships inside the ``torchxrayvision`` wheel, so the real parent distribution is available on
every machine even without the images (REFERENCES section 3).
"""
from __future__ import annotations

import ast
import os
from functools import lru_cache
from pathlib import Path

import pandas as pd

from cfcl.config import SCANNER, SEX

METADATA_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
REQUIRED_COLUMNS = ("ImageID", "ImageDir", "PatientID", "PatientSex_DICOM", "Projection",
                    "Pediatric", "Manufacturer_DICOM", "Labels")
EXCLUDED_LABELS = ("exclude", "suboptimal study")
EFFUSION_LABEL = "pleural effusion"


def default_metadata_path() -> Path:
    """The copy of the PadChest metadata shipped by torchxrayvision (found without importing it)."""
    from cfcl.data.anatomy import torchxrayvision_data_dir

    return torchxrayvision_data_dir() / METADATA_NAME


def parse_labels(value: object, strip: bool = False) -> list[str]:
    """PadChest's ``Labels`` column holds a Python-literal list of strings (or NaN).

    ``strip=False`` (default) keeps labels as written, as the counterfactual-contrastive code
    does: 991 filtered images carry " pleural effusion" with a leading space and are then not
    counted as effusion (2,285 effusion images; 3,230 with ``strip=True``).
    """
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        labels = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return []
    return [(s.strip() if strip else s) for s in labels if isinstance(s, str)]


def read_metadata(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read the raw PadChest metadata CSV (plain or gzipped); errors name the file."""
    path = Path(path) if path is not None else default_metadata_path()
    if not path.exists():
        raise FileNotFoundError(f"PadChest metadata not found: {path} (setting data.padchest_metadata)")
    try:
        df = pd.read_csv(path, low_memory=False, usecols=lambda c: c in REQUIRED_COLUMNS)
    except Exception as exc:  # pandas raises many types for a corrupt file
        raise ValueError(f"cannot read PadChest metadata {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"PadChest metadata {path} lacks columns {missing}")
    return df


def filter_metadata(df: pd.DataFrame, strip_labels: bool = False) -> pd.DataFrame:
    """Apply the filter of REFERENCES section 3 and add integer parent columns.

    Keeps PA, non-paediatric images of M/F patients from the two scanners, drops studies
    labelled "exclude" or "suboptimal study" (with or without a leading space). Adds ``sex`` (0 F, 1 M), ``scanner``
    (0 ImagingDynamics, 1 Philips) and ``effusion`` (label "pleural effusion"; see :func:`parse_labels`
    for ``strip_labels``).
    """
    out = df[(df["Projection"] == "PA") & (df["Pediatric"] == "No")
             & df["PatientSex_DICOM"].isin(SEX) & df["Manufacturer_DICOM"].isin(SCANNER)].copy()
    # Each distinct Labels string is parsed once (about 1 in 8 rows is distinct): seconds, not half a minute.
    parsed = {v: parse_labels(v) for v in out["Labels"].dropna().unique()}
    raw = out["Labels"].map(lambda v: parsed.get(v, []) if isinstance(v, str) else [])
    stripped = raw.map(lambda ls: [x.strip() for x in ls])
    keep = ~stripped.map(lambda ls: any(x in ls for x in EXCLUDED_LABELS))
    labels = (stripped if strip_labels else raw)
    out, labels = out[keep].copy(), labels[keep]
    out["sex"] = out["PatientSex_DICOM"].map(SEX.index).astype(int)
    out["scanner"] = out["Manufacturer_DICOM"].map(SCANNER.index).astype(int)
    out["effusion"] = labels.map(lambda ls: EFFUSION_LABEL in ls).astype(int)
    return out.reset_index(drop=True)


@lru_cache(maxsize=4)
def _joint(path: str | None) -> pd.DataFrame:
    df = filter_metadata(read_metadata(path))
    joint = df.groupby(["sex", "scanner", "effusion"]).size().rename("count").reset_index()
    joint["p"] = joint["count"] / joint["count"].sum()
    return joint


def joint_distribution(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Counts and probabilities of every (sex, scanner, effusion) cell after the filter.

    Returns a DataFrame with columns ``sex, scanner, effusion, count, p`` (8 rows).
    """
    return _joint(None if path is None else str(path)).copy()
