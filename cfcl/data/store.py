"""Splits on disk: every data source stores its splits the same way, as runs of the data stage.

A split lives in ``cache/<source>/<split>-<key>/`` (:mod:`cfcl.runs`), where ``<key>`` is the
source's key of everything that split reads (:func:`source_key`): ``<array>.npy`` files opened as
read-only memmaps (``images``, ``silver``, and where the source has them ``gold``, ``quality``,
``counterfactuals``), ``parents.csv``, any extra files of the source (the phantom's ``noise.npz``)
and ``manifest.json``, written last. Reading a split verifies every file against the manifest;
building one holds the run's lock, so two processes never build the same split at once.

A source module provides ``split_key(cfg, split) -> str`` and ``build_split(cfg, split, folder) -> dict``:
the latter writes the arrays and files into ``folder`` (through :func:`cfcl.paths.atomic_path`)
and returns ``{"arrays": [...], "files": [...], "meta": {...}}``.
"""
from __future__ import annotations

import dataclasses
import time
from functools import lru_cache
from importlib import import_module

import numpy as np
import pandas as pd

from cfcl.config import DATA_SOURCES, DataConfig
from cfcl.data.split import SPLITS, ChestSplit
from cfcl.paths import cache_dir
from cfcl.runs import Run

ARRAYS = ("images", "silver", "gold", "quality", "counterfactuals")
PARENTS_FILE = "parents.csv"


def source_module(source: str):
    """The module of a data source (``cfcl.data.<source>``)."""
    if source not in DATA_SOURCES:
        raise ValueError(f"unknown data source {source!r} (setting data.source): use one of {DATA_SOURCES}")
    return import_module(f"cfcl.data.{source}")


def source_key(cfg: DataConfig, split: str) -> str:
    """``<source>-<hash>``: the key of one split of the data (see the module docstring)."""
    return _source_key(cfg, split)


@lru_cache(maxsize=64)
def _source_key(cfg: DataConfig, split: str) -> str:
    # once per process, configuration and split: the PadChest key stats every image file
    return f"{cfg.source}-{source_module(cfg.source).split_key(cfg, split)}"


def split_run(cfg: DataConfig, split: str, remake: str = "") -> Run:
    """The data run of one split."""
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; choose one of {SPLITS}")
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "allow_short_split" or v}  # as before it
    return Run(cfg.source, split, {"data": settings}, cache_dir(), key=source_key(cfg, split),
               remake=remake or f"python -m cfcl.data --set data.source={cfg.source} ... (the same data settings)")


def ensure_split(cfg: DataConfig, split: str, remake: str = "") -> ChestSplit:
    """The split, built first if it is not (the data stage's own work)."""
    run = split_run(cfg, split, remake)
    if not run.is_finished():
        with run.claim():
            if not run.is_finished():
                started = time.perf_counter()
                out = source_module(cfg.source).build_split(cfg, split, run.folder)
                arrays = [a for a in ARRAYS if a in out["arrays"]]
                files = [f"{a}.npy" for a in arrays] + [PARENTS_FILE] + list(out.get("files", []))
                run.finish(files, time.perf_counter() - started, extra={"arrays": arrays, **out.get("meta", {})})
    return read_split(run)


def read_split(run: Run) -> ChestSplit:
    """A finished split, every file verified against its manifest (errors name the file and the
    command that remakes it)."""
    meta = run.require().manifest()
    arrays = {a: np.load(run.artifact(f"{a}.npy"), mmap_mode="r") for a in meta["arrays"]}
    parents = pd.read_csv(run.artifact(PARENTS_FILE), dtype={"ImageID": str, "PatientID": str})
    for col in ("sex", "scanner", "effusion"):
        parents[col] = parents[col].astype(np.int64)
    ids = (parents["ImageID"].tolist() if "ImageID" in parents.columns
           else [f"{run.stage}-{run.label}-{i:05d}" for i in range(len(parents))])
    return ChestSplit(name=run.label, images=arrays["images"], parents=parents, silver=arrays["silver"],
                      gold=arrays.get("gold"), quality=None if "quality" not in arrays else np.asarray(arrays["quality"]),
                      counterfactuals=arrays.get("counterfactuals"), ids=ids)
