"""Counterfactual generation with the HVAE, its disk cache, the counterfactual-source
interface of pre-training, and counterfactual quality (paper section 2.1; REFERENCES section 2).

Counterfactual of an image ``x`` with parents ``pa`` under ``do(pa*)`` (abduction, action,
prediction): abduct every latent group from the posterior ``q(z | x, pa)`` (posterior means at
temperature ``t = 0``), decode with ``pa`` to get ``(loc, scale)`` and with ``pa*`` to get
``(cf_loc, cf_scale)``, abduct the pixel noise ``u = (x - loc) / scale`` and return
``x_cf = clamp(cf_loc + cf_scale * u, -1, 1)``. The null intervention returns ``x`` up to float
rounding (identical after uint8 quantisation).

Three views per image, in the order of ``config.INTERVENTIONS``: do(scanner), do(effusion),
do(scanner, effusion), each flipping the binary parent(s).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, PARENTS, Profile
from cfcl.data import load_split
from cfcl.hvae import HVAE, data_key, load_hvae, parents_tensor, to_model_space, to_uint8, train_hvae
from cfcl.paths import atomic_path, cache_dir

ARRAY_NAME = "counterfactuals.npy"
MANIFEST_NAME = "manifest.json"
CF_SOURCES = ("hvae", "oracle")


# --------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------
def intervene(pa: torch.Tensor, intervention: str) -> torch.Tensor:
    """Counterfactual parents ``(B, 3)``: flip the binary parent(s) named by ``intervention``
    (one of ``config.INTERVENTIONS``, or ``"null"`` for no change)."""
    cf = pa.clone()
    if intervention == "null":
        return cf
    if intervention not in INTERVENED_PARENTS:
        raise KeyError(f"unknown intervention {intervention!r}; choose one of {INTERVENTIONS} or 'null'")
    for name in INTERVENED_PARENTS[intervention]:
        j = PARENTS.index(name)
        cf[:, j] = 1.0 - cf[:, j]
    return cf


@torch.no_grad()
def counterfactual(model: HVAE, x: torch.Tensor, pa: torch.Tensor, cf_pa: torch.Tensor, t: float = 0.0,
                   alpha: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_cf (B, 1, H, W)`` in [-1, 1] for ``x (B, 1, H, W)`` in [-1, 1], ``pa``/``cf_pa (B, 3)``.

    ``t``: temperature of the latent abduction (0: posterior means, deterministic).
    ``alpha``: 1 (default, the brief's abduction) keeps the abducted ``z``; ``alpha < 1`` uses
    causal-gen's mixture ``alpha * z + (1 - alpha) * prior mean under the decoding parents``,
    applied to both decodes so the null intervention stays exact.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"x must be (B, 1, H, W), got {tuple(x.shape)}")
    if pa.shape != cf_pa.shape or pa.shape[0] != x.shape[0]:
        raise ValueError(f"pa {tuple(pa.shape)} and cf_pa {tuple(cf_pa.shape)} must both be (B, P) with B = {x.shape[0]}")
    model.eval()
    zs = [s["z"] for s in model.abduct(x, pa, t=t, generator=generator)]
    if alpha == 1.0:
        h, _ = model.decode(pa, latents=zs)
        h_cf, _ = model.decode(cf_pa, latents=zs)
    else:
        h, _ = model.decode(pa, mix=(zs, alpha))
        h_cf, _ = model.decode(cf_pa, mix=(zs, alpha))
    loc, logscale = model.pixel_params(h)
    cf_loc, cf_logscale = model.pixel_params(h_cf)
    u = (x - loc) * torch.exp(-logscale)
    return (cf_loc + torch.exp(cf_logscale) * u).clamp(-1.0, 1.0)


def counterfactual_images(model: HVAE, images: np.ndarray, pa: torch.Tensor, cf_pa: torch.Tensor,
                          batch_size: int = 64, t: float = 0.0, alpha: float = 1.0) -> np.ndarray:
    """uint8 ``(N, H, W)`` counterfactuals of uint8 ``(N, H, W)`` images, in batches."""
    out = [to_uint8(counterfactual(model, to_model_space(images[i:i + batch_size]), pa[i:i + batch_size],
                                   cf_pa[i:i + batch_size], t=t, alpha=alpha))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.uint8)


def all_interventions(model: HVAE, images: np.ndarray, pa: torch.Tensor, t: float = 0.0,
                      alpha: float = 1.0) -> np.ndarray:
    """uint8 ``(B, 3, H, W)``: the counterfactuals of one batch under every intervention."""
    return np.stack([to_uint8(counterfactual(model, to_model_space(images), pa, intervene(pa, k), t=t, alpha=alpha))
                     for k in INTERVENTIONS], 1)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------
def file_digest(path: str | Path, n: int = 16) -> str:
    """First ``n`` hex digits of the SHA-256 of a file's contents."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]


def cache_key(profile: Profile, checkpoint: str | Path, split: str, t: float = 0.0, alpha: float = 1.0) -> str:
    """``<split>-<hash>``: the hash covers the HVAE checkpoint's contents, the data config and
    the abduction settings, so a new model or new data never reuses stale counterfactuals."""
    payload = json.dumps(dict(ckpt=file_digest(checkpoint), data=data_key(profile), split=split,
                              t=float(t), alpha=float(alpha)), sort_keys=True)
    return f"{split}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _batch_name(lo: int, hi: int) -> str:
    return f"rows_{lo:08d}_{hi:08d}.npy"


def generate(profile: Profile, split: str = "pretrain", progress: bool = True, t: float = 0.0,
             alpha: float = 1.0, batch_size: int | None = None) -> np.ndarray:
    """HVAE counterfactuals of every image of ``split``: uint8 memmap ``(N, 3, H, W)``.

    Trains the HVAE first if needed (a no-op when its checkpoint is finished). Written under
    ``cache_dir(profile) / "counterfactuals" / <key>`` (see :func:`cache_key`) one batch of
    ``hvae.cf_batch_size`` images per file, so an interrupted run resumes with the missing
    batches only; the batches are then joined into one ``.npy`` and ``manifest.json`` is
    written last (everything through ``atomic_path``).
    """
    ckpt = train_hvae(profile, progress=progress)
    folder = cache_dir(profile.name) / "counterfactuals" / cache_key(profile, ckpt, split, t, alpha)
    if (folder / MANIFEST_NAME).exists():
        return np.load(folder / ARRAY_NAME, mmap_mode="r")
    data = load_split(profile, split)
    model = load_hvae(ckpt)
    pa = parents_tensor(data.parents)
    n, (H, W) = len(data), data.images.shape[1:]
    bs = int(batch_size or profile.hvae.cf_batch_size)
    bounds = [(lo, min(lo + bs, n)) for lo in range(0, n, bs)]
    todo = [b for b in bounds if not (folder / _batch_name(*b)).exists()]
    for lo, hi in tqdm(todo, desc=f"counterfactuals {split} [{profile.name}]", disable=not progress, leave=False):
        cf = all_interventions(model, np.asarray(data.images[lo:hi]), pa[lo:hi], t=t, alpha=alpha)
        with atomic_path(folder / _batch_name(lo, hi)) as tmp, open(tmp, "wb") as f:
            np.save(f, cf)
    with atomic_path(folder / ARRAY_NAME) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, len(INTERVENTIONS), H, W))
        for lo, hi in bounds:
            out[lo:hi] = np.load(folder / _batch_name(lo, hi))
        out.flush()
        del out
    manifest = dict(split=split, n=n, shape=[n, len(INTERVENTIONS), H, W], interventions=list(INTERVENTIONS),
                    checkpoint_digest=file_digest(ckpt), data=data_key(profile), t=t, alpha=alpha)
    with atomic_path(folder / MANIFEST_NAME) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))
    for lo, hi in bounds:
        (folder / _batch_name(lo, hi)).unlink(missing_ok=True)
    return np.load(folder / ARRAY_NAME, mmap_mode="r")


def clear_cache(profile: Profile) -> None:
    """Delete every cached counterfactual of the profile (all models, all splits)."""
    shutil.rmtree(cache_dir(profile.name) / "counterfactuals", ignore_errors=True)


def get_counterfactuals(profile: Profile, split: str = "pretrain", source: str | None = None,
                        progress: bool = True) -> np.ndarray:
    """The counterfactual views used by pre-training: uint8 ``(N, 3, H, W)`` in the order of
    ``config.INTERVENTIONS``.

    ``source`` (default ``profile.pretrain.cf_source``): ``"hvae"`` trains the HVAE if needed
    and generates (cached); ``"oracle"`` returns the data source's exact counterfactuals (the
    phantom has them; real data does not).
    """
    source = source or profile.pretrain.cf_source
    if source == "hvae":
        return generate(profile, split, progress=progress)
    if source == "oracle":
        data = load_split(profile, split)
        if data.counterfactuals is None:
            raise ValueError(f"data source {profile.data.source!r} has no oracle counterfactuals for split "
                             f"{split!r}; use pretrain.cf_source='hvae'")
        return data.counterfactuals
    raise ValueError(f"unknown counterfactual source {source!r} (setting pretrain.cf_source); choose one of {CF_SOURCES}")


# --------------------------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------------------------
def mae(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image mean absolute error in grey levels (0..255) of uint8 ``(N, H, W)`` stacks."""
    return np.abs(a.astype(np.float32) - b.astype(np.float32)).reshape(len(a), -1).mean(1)


def psnr(a: np.ndarray, b: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """Per-image PSNR (dB, data range 255) of uint8 stacks; identical images give ``cap``."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10.0 * np.log10(255.0 ** 2 / mse), cap)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM (skimage.metrics.structural_similarity, data range 255) of uint8 stacks."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(x, y, data_range=255) for x, y in zip(a, b)])


def changed_region_dice(x: np.ndarray, cf: np.ndarray, oracle: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Per-image Dice between the changed regions ``|cf - x| > threshold * 255`` and
    ``|oracle - x| > threshold * 255`` (uint8 stacks); 1 when both regions are empty."""
    thr = threshold * 255.0
    xf = x.astype(np.float32)
    pred = (np.abs(cf.astype(np.float32) - xf) > thr).reshape(len(x), -1)
    true = (np.abs(oracle.astype(np.float32) - xf) > thr).reshape(len(x), -1)
    inter, total = (pred & true).sum(1), pred.sum(1) + true.sum(1)
    return np.where(total == 0, 1.0, 2.0 * inter / np.maximum(total, 1))


def quality_rows(x: np.ndarray, parents: pd.DataFrame, cf: np.ndarray, probs: list[np.ndarray],
                 null: np.ndarray | None, reverse: np.ndarray | None, oracle: np.ndarray | None,
                 method: str, threshold: float = 0.1) -> list[dict]:
    """Quality rows (one per intervention) of counterfactuals ``cf (N, 3, H, W)`` of ``x (N, H, W)``.

    ``probs[k]``: parent-predictor probabilities ``(N, 3)`` on ``cf[:, k]``; ``null``: the null
    intervention ``(N, H, W)`` (None: x itself); ``reverse``: counterfactuals of the
    counterfactuals back to the factual parents ``(N, 3, H, W)`` (None: cf itself);
    ``oracle``: the true counterfactuals ``(N, 3, H, W)`` or None.

    Columns: ``effectiveness`` (share of images whose intervened parent(s) are all predicted
    at their counterfactual value), ``preservation`` (same for the other parents at their
    factual value), ``composition_mae`` and ``reversibility_mae`` (grey levels), and with an
    oracle ``oracle_mae``, ``oracle_psnr``, ``oracle_ssim``, ``changed_dice``.
    """
    pa = parents[list(PARENTS)].to_numpy().astype(int)
    comp = mae(null if null is not None else x, x).mean()
    rows = []
    for k, name in enumerate(INTERVENTIONS):
        cf_pa = pa.copy()
        idx = [PARENTS.index(p) for p in INTERVENED_PARENTS[name]]
        cf_pa[:, idx] = 1 - cf_pa[:, idx]
        pred = (probs[k] > 0.5).astype(int)
        keep = [j for j in range(len(PARENTS)) if j not in idx]
        row = dict(method=method, intervention=name, n=len(x),
                   effectiveness=float((pred[:, idx] == cf_pa[:, idx]).all(1).mean()),
                   preservation=float((pred[:, keep] == pa[:, keep]).all(1).mean()),
                   composition_mae=float(comp),
                   reversibility_mae=float(mae(reverse[:, k] if reverse is not None else cf[:, k], x).mean()))
        if oracle is not None:
            row.update(oracle_mae=float(mae(cf[:, k], oracle[:, k]).mean()),
                       oracle_psnr=float(psnr(cf[:, k], oracle[:, k]).mean()),
                       oracle_ssim=float(ssim(cf[:, k], oracle[:, k]).mean()),
                       changed_dice=float(changed_region_dice(x, cf[:, k], oracle[:, k], threshold).mean()))
        rows.append(row)
    return rows


def evaluate(profile: Profile, split: str = "test", threshold: float = 0.1, progress: bool = True,
             t: float = 0.0, alpha: float = 1.0) -> pd.DataFrame:
    """Counterfactual quality on ``split``: one row per (method, intervention).

    ``method = "hvae"``: the HVAE counterfactuals; ``method = "identity"``: the trivial
    baseline that returns ``x`` itself (its composition and reversibility are 0 by
    construction; its effectiveness shows how often the predictors already "see" the
    counterfactual parent on x). Metrics: see :func:`quality_rows`; MAE in grey levels;
    ``threshold`` (fraction of the 0..255 range, default 0.1 = 25.5 grey levels, above the
    phantom's detector noise) defines the changed regions for ``changed_dice``.
    Trains the HVAE and the parent predictors first if needed.
    """
    from cfcl.classifiers import load_classifiers, predict_parents, train_classifiers

    data = load_split(profile, split)
    x = np.asarray(data.images)
    cf = np.asarray(generate(profile, split, progress=progress, t=t, alpha=alpha))
    model = load_hvae(train_hvae(profile, progress=progress))
    clf = load_classifiers(train_classifiers(profile, progress=progress))
    pa = parents_tensor(data.parents)
    bs = profile.hvae.cf_batch_size
    null = counterfactual_images(model, x, pa, pa, bs, t=t, alpha=alpha)
    reverse = np.stack([counterfactual_images(model, cf[:, k], intervene(pa, name), pa, bs, t=t, alpha=alpha)
                        for k, name in enumerate(INTERVENTIONS)], 1)
    oracle = None if data.counterfactuals is None else np.asarray(data.counterfactuals)
    probs = [predict_parents(clf, cf[:, k]) for k in range(len(INTERVENTIONS))]
    rows = quality_rows(x, data.parents, cf, probs, null, reverse, oracle, "hvae", threshold)
    identity = np.repeat(x[:, None], len(INTERVENTIONS), 1)
    p_x = predict_parents(clf, x)
    rows += quality_rows(x, data.parents, identity, [p_x] * len(INTERVENTIONS), None, None, oracle, "identity",
                         threshold)
    return pd.DataFrame(rows)
