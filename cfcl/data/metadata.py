"""PadChest metadata: the filter of the counterfactual-contrastive line of work and the
joint distribution of the parents (sex, scanner, pleural effusion).

The metadata CSV (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``, 160,861 rows)
ships inside the ``torchxrayvision`` wheel, so the real parent distribution is available on
every machine even without the images (REFERENCES section 3).

Checks (docs/real_data.md, "Checks on the tables"): a value outside :data:`KNOWN_VALUES` (the values
of the real file: a misspelt scanner, a lower-case projection, an empty cell of a cut-short row)
and a ``Labels`` cell that is not a Python-literal list drop their rows with a
:class:`cfcl.data.DataWarning` that names the file and counts them per column and value; a
repeated ImageID keeps its first row, with a counted warning. A plain (not gzipped) file whose
last line has no newline is refused as cut short.
"""
from __future__ import annotations

import ast
import os
import warnings
from functools import lru_cache
from pathlib import Path

import pandas as pd

from cfcl.config import SCANNER, SEX
from cfcl.data.anatomy import torchxrayvision_data_dir
from cfcl.data.split import DataWarning

METADATA_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
REQUIRED_COLUMNS = ("ImageID", "ImageDir", "PatientID", "PatientSex_DICOM", "Projection",
                    "Pediatric", "Manufacturer_DICOM", "Labels")
EXCLUDED_LABELS = ("exclude", "suboptimal study")
EFFUSION_LABEL = "pleural effusion"
# Every value the real file (160,861 rows) holds in the columns the filter reads; an empty sex cell
# (4 rows there) and sex "O" (18) are known, and excluded by the filter like the other known values
# that are not PA / "No" / M, F / the two scanners.
KNOWN_VALUES = {"Projection": ("PA", "L", "AP_horizontal", "AP", "COSTAL", "EXCLUDE", "UNK"),
                "Pediatric": ("No", "PED"),
                "PatientSex_DICOM": SEX + ("O",),
                "Manufacturer_DICOM": SCANNER}
EMPTY_KNOWN = ("PatientSex_DICOM",)  # columns where an empty cell is a known value


def default_metadata_path() -> Path:
    """The copy of the PadChest metadata shipped by torchxrayvision (found without importing it)."""
    return torchxrayvision_data_dir() / METADATA_NAME


def parse_labels(value: object, strip: bool = False) -> list[str]:
    """PadChest's ``Labels`` column holds a Python-literal list of strings (or NaN).

    ``strip=False`` (default) keeps labels as written, as the counterfactual-contrastive code
    does: 991 filtered images carry " pleural effusion" with a leading space and are then not
    counted as effusion (2,285 effusion images; 3,230 with ``strip=True``).
    """
    labels = _literal_labels(value)
    return [(s.strip() if strip else s) for s in labels or [] if isinstance(s, str)]


def _literal_labels(value: object) -> list | None:
    """The list a ``Labels`` cell holds; ``[]`` for an empty cell, None when it is not a list literal."""
    if not isinstance(value, str) or not value.strip():
        return []
    try:
        labels = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return labels if isinstance(labels, (list, tuple)) else None


def read_metadata(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read the raw PadChest metadata CSV (plain or gzipped); errors name the file."""
    path = Path(path) if path is not None else default_metadata_path()
    if not path.exists():
        raise FileNotFoundError(f"PadChest metadata not found: {path} (setting data.padchest_metadata)")
    check_complete(path, "PadChest metadata", "data.padchest_metadata")
    try:
        df = pd.read_csv(path, low_memory=False, usecols=lambda c: c in REQUIRED_COLUMNS)
    except Exception as exc:  # pandas raises many types for a corrupt file
        raise ValueError(f"cannot read PadChest metadata {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"PadChest metadata {path} lacks columns {missing}")
    df.attrs["source"] = str(path)
    return df


def check_complete(path: str | os.PathLike, what: str, setting: str) -> None:
    """Refuse a plain CSV whose last line has no newline: a download or copy cut short mid-row
    (its last row would be read with empty cells). Compressed files check themselves."""
    path = Path(path)
    if path.suffix in (".gz", ".bz2", ".xz", ".zip", ".zst"):
        return
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                raise ValueError(f"{what} {path} is empty (setting {setting})")
            fh.seek(size - 1)
            last = fh.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc
    if last not in (b"\n", b"\r"):
        raise ValueError(f"{what} {path} ends mid-line, without a final newline: cut short (an interrupted "
                         f"download or copy?); fetch it again (setting {setting}). If it is complete, add "
                         "the newline: echo >> FILE")


def unknown_values(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """``{column: {value: rows}}`` of the values outside :data:`KNOWN_VALUES` (empty cells as ``<empty>``)."""
    out: dict[str, dict[str, int]] = {}
    for col, known in KNOWN_VALUES.items():
        values = df[col]
        bad = ~values.isin(known) & ~(values.isna() & (col in EMPTY_KNOWN))
        if bad.any():
            out[col] = values[bad].map(lambda v: "<empty>" if pd.isna(v) else str(v)).value_counts().to_dict()
    return out


def _counted(counts: dict[str, int], limit: int = 5) -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{v!r}: {n}" for v, n in items[:limit])
    return text + (f", and {len(items) - limit} more values" if len(items) > limit else "")


def filter_metadata(df: pd.DataFrame, strip_labels: bool = False, source: str | None = None) -> pd.DataFrame:
    """Apply the filter of REFERENCES section 3 and add integer parent columns.

    Keeps PA, non-paediatric images of M/F patients from the two scanners, drops studies
    labelled "exclude" or "suboptimal study" (with or without a leading space). Adds ``sex`` (0 F, 1 M), ``scanner``
    (0 ImagingDynamics, 1 Philips) and ``effusion`` (label "pleural effusion"; see :func:`parse_labels`
    for ``strip_labels``).

    Rows with a value outside :data:`KNOWN_VALUES` or a ``Labels`` cell that is not a list
    literal are dropped, and a repeated ImageID keeps its first row; each with a
    :class:`cfcl.data.DataWarning` naming ``source`` (default: the file :func:`read_metadata` read)
    and counting the rows.
    """
    source = source or df.attrs.get("source", "PadChest metadata")
    dup = df["ImageID"].duplicated(keep="first")
    if dup.any():
        warnings.warn(f"PadChest metadata {source}: {int(dup.sum())} rows repeat an ImageID of an earlier row "
                      f"(first: {df['ImageID'][dup].iloc[0]!r}); the first row of each ImageID is kept",
                      DataWarning, stacklevel=2)
        df = df[~dup]
    unknown = unknown_values(df)
    if unknown:
        n = int((~pd.concat([df[c].isin(KNOWN_VALUES[c]) | (df[c].isna() & (c in EMPTY_KNOWN))
                             for c in KNOWN_VALUES], axis=1).all(axis=1)).sum())
        detail = "; ".join(f"{col} {_counted(vals)}" for col, vals in unknown.items())
        warnings.warn(f"PadChest metadata {source}: {n} rows hold values the real file does not ({detail}): "
                      "dropped (misspelt? the known values are cfcl.data.metadata.KNOWN_VALUES)",
                      DataWarning, stacklevel=2)
    out = df[(df["Projection"] == "PA") & (df["Pediatric"] == "No")
             & df["PatientSex_DICOM"].isin(SEX) & df["Manufacturer_DICOM"].isin(SCANNER)].copy()
    # Each distinct Labels string is parsed once (about 1 in 8 rows is distinct): seconds, not half a minute.
    literal = {v: _literal_labels(v) for v in out["Labels"].dropna().unique()}
    broken = out["Labels"].map(lambda v: isinstance(v, str) and literal[v] is None).astype(bool)
    if broken.any():
        warnings.warn(f"PadChest metadata {source}: {int(broken.sum())} rows that pass the filter have a Labels "
                      f"cell that is not a list literal (first: ImageID {out['ImageID'][broken].iloc[0]!r}, "
                      f"Labels {str(out['Labels'][broken].iloc[0])[:60]!r}): dropped (their effusion label is "
                      "unknown)", DataWarning, stacklevel=2)
        out = out[~broken]
    parsed = {v: parse_labels(v) for v in out["Labels"].dropna().unique()}
    raw = out["Labels"].map(lambda v: parsed.get(v, []) if isinstance(v, str) else [])
    stripped = raw.map(lambda ls: [x.strip() for x in ls])
    # astype(bool): an empty selection would otherwise be an object Series, read as column labels
    keep = ~stripped.map(lambda ls: any(x in ls for x in EXCLUDED_LABELS)).astype(bool)
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
