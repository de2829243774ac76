"""The phantom's splits, rendered once into the data store (:mod:`cfcl.data.store`).

A split is ``cache/phantom/<split>-phantom-<hash>/``: the arrays of :data:`ARRAYS`, ``parents.csv``
and ``noise.npz`` (the exogenous noise of every image, to re-render it under any parents at any
size), verified against the manifest whenever it is read. The hash (:func:`config_hash`) covers the
DataConfig fields that change the split, :data:`PHANTOM_VERSION` and the shape bank's version, so
a new renderer never reuses the old arrays. Each split is drawn from its own random streams
(:func:`cfcl.data.phantom.scm.split_parents`, :func:`~cfcl.data.phantom.scm.sample_noise`), so its key
covers only its own size (:data:`SPLIT_SIZES`): a larger test split (``data.n_test=2000``) leaves the
pre-training, validation and annotated splits, and every run made from them, as they are.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from cfcl.config import INTERVENTIONS, DataConfig
from cfcl.data.split import ChestSplit
from cfcl.data.anatomy import BANK_VERSION
from cfcl.data.phantom import scm
from cfcl.data.phantom.render import MAX_SIZE, MIN_SIZE, render_with_counterfactuals
from cfcl.data.phantom.scm import NOISE_FIELDS, SPLIT_CODES, sample_noise, split_parents
from cfcl.paths import atomic_path
from cfcl.progress import tqdm

PHANTOM_VERSION = 5
# DataConfig fields that change every split (real-data paths and CheXmask settings do not) ...
HASHED_FIELDS = ("image_size", "effusion_prevalence", "scanner_effusion_odds_ratio", "seed")
# ... and the size fields, each of which changes one split only.
SPLIT_SIZES = {"pretrain": ("n_pretrain",), "val": ("n_val",),
               "annotated": ("n_annotated_healthy", "n_annotated_effusion"), "test": ("n_test",)}
ARRAYS = ("images", "gold", "silver", "quality", "counterfactuals")
NOISE_FILE = "noise.npz"


def config_hash(cfg: DataConfig, split: str) -> str:
    """Short hash of the DataConfig fields that affect ``split`` (:data:`HASHED_FIELDS` and the split's
    own :data:`SPLIT_SIZES`), the split's name, PHANTOM_VERSION and BANK_VERSION."""
    import hashlib

    if split not in SPLIT_SIZES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_SIZES)}")
    d = asdict(cfg)
    payload = {k: d[k] for k in HASHED_FIELDS + SPLIT_SIZES[split]}
    payload.update(split=split, version=PHANTOM_VERSION, bank=BANK_VERSION)
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]


def split_key(cfg: DataConfig, split: str) -> str:
    """The data key of one split in :mod:`cfcl.data.store` (:func:`config_hash`)."""
    return config_hash(cfg, split)


def build_split(cfg: DataConfig, split: str, folder: Path, chunk: int | None = None) -> dict:
    """Render one split into ``folder`` (the store's run folder): arrays, ``parents.csv`` and the
    exogenous noise ``noise.npz`` (so any image can be re-rendered under any parents)."""
    if cfg.source != "phantom":
        raise ValueError(f"data.source is {cfg.source!r}; the phantom only serves 'phantom'")
    size = int(cfg.image_size)
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"data.image_size must be in {MIN_SIZE}..{MAX_SIZE}, got {size}")
    parents = split_parents(cfg, split)
    n = len(parents)
    bank = scm._bank()
    chunk = chunk or max(1, 2 ** 20 // (size * size))
    shapes = dict(images=(n, size, size), gold=(n, size, size), silver=(n, size, size),
                  quality=(n,), counterfactuals=(n, len(INTERVENTIONS), size, size))
    noise_parts = []
    with contextlib.ExitStack() as stack:
        arrays = {}
        for name in ARRAYS:
            tmp = stack.enter_context(atomic_path(folder / f"{name}.npy"))
            dtype = np.float32 if name == "quality" else np.uint8
            arrays[name] = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shapes[name])
        for lo in tqdm(range(0, n, chunk), desc=f"phantom {split} ({n} images, {size} px)", unit="chunk",
                       disable=n == 0):
            hi = min(n, lo + chunk)
            nz = sample_noise(hi - lo, cfg.seed, split, len(bank), start=lo)
            noise_parts.append(nz)
            out = render_with_counterfactuals(nz, parents.iloc[lo:hi].reset_index(drop=True), size)
            arrays["images"][lo:hi] = out["image"]
            for name in ("gold", "silver", "quality", "counterfactuals"):
                arrays[name][lo:hi] = out[name]
        for arr in arrays.values():
            arr.flush()
        del arrays
    noise = ({k: np.concatenate([p[k] for p in noise_parts]) for k in NOISE_FIELDS} if noise_parts
             else sample_noise(0, cfg.seed, split, len(bank)))
    with atomic_path(folder / NOISE_FILE) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **noise)
    with atomic_path(folder / "parents.csv") as tmp:
        parents.to_csv(tmp, index=False)
    meta = dict(phantom_version=PHANTOM_VERSION, n=n, image_size=size, noise_fields=list(NOISE_FIELDS),
                interventions=list(INTERVENTIONS),
                counts=parents.value_counts().sort_index().reset_index().to_dict("records"))
    return {"arrays": list(ARRAYS), "files": [NOISE_FILE], "meta": meta}


def load_split(cfg: DataConfig, split: str) -> ChestSplit:
    """One phantom split (rendered into the data store, :mod:`cfcl.data.store`, on first use).

    Arrays are memory-mapped read-only and verified against the split's manifest. Every split has
    gold masks, silver masks, quality scores and oracle counterfactuals (N, 3, H, W) in
    ``config.INTERVENTIONS`` order.
    """
    from cfcl.data.store import ensure_split

    if split not in SPLIT_CODES:
        raise KeyError(f"unknown split {split!r}; choose one of {tuple(SPLIT_CODES)}")
    return ensure_split(cfg, split)


def load_noise(cfg: DataConfig, split: str) -> dict[str, np.ndarray]:
    """The stored exogenous noise of a split (rendering the split if needed), for re-rendering."""
    from cfcl.data.store import split_run

    load_split(cfg, split)
    with np.load(split_run(cfg, split).artifact(NOISE_FILE), allow_pickle=False) as z:
        return {k: z[k] for k in NOISE_FIELDS}
