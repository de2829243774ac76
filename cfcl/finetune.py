"""Five-fold fine-tuning on the annotated images (paper sections 3 and 4.2; Table 2).

The 70 annotated images (20 healthy, 50 effusion) are split into five folds stratified by
effusion, so every fold tests 4 healthy and 10 effusion images; folds, schedule and seed are
the same for every method. For each fold the whole U-Net is fine-tuned from the method's
pre-trained checkpoint (random init for ``none``; see :func:`cfcl.models.load_pretrained` for
what transfers) on the other four folds with the gold masks, then predicts its test fold and
the held-out test split (and that split's counterfactuals, for the robustness analysis).

Choices where the paper is silent (parameters in :class:`cfcl.config.FinetuneConfig`): AdamW,
cross-entropy + soft Dice loss, light geometric augmentation (rotation, zoom, translation with
exact label warping), the last epoch's weights (no model selection on the test fold).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from tqdm.auto import tqdm

from cfcl import metrics, views
from cfcl.config import FINETUNE_METHODS, Profile, get_profile
from cfcl.data import data_fingerprint, load_split
from cfcl.models import N_CLASSES, build_model, load_pretrained
from cfcl.paths import atomic_path, runs_dir

#: Geometric augmentation while fine-tuning: milder than pre-training, no intensity changes.
FINETUNE_AUGMENT = dict(rotation_deg=10.0, scale=(1.0, 1.2), translate=0.05)


def folds(effusion: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold index (N,) of each annotated image, stratified by effusion (4 + 10 per fold for 20/50)."""
    out = np.empty(len(effusion), dtype=int)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test) in enumerate(skf.split(np.zeros(len(effusion)), effusion)):
        out[test] = k
    return out


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the two lung classes. logits (B, C, H, W), target (B, H, W) long."""
    prob = logits.softmax(1)
    onehot = F.one_hot(target, N_CLASSES).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))
    denom = prob.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    dice = (2 * inter + eps) / (denom + eps)
    return 1 - dice[1:].mean()


def _signature(profile: Profile, method: str) -> dict[str, Any]:
    """Everything a fold's results depend on, including the pre-training run's own signature."""
    from cfcl.pretrain import run_signature

    d = profile.to_dict()
    pre = run_signature(profile, method) if method != "none" else None
    return json.loads(json.dumps({"pretrain_run": pre, "method": method, "seed": profile.seed, "data": d["data"],
                                  "data_fingerprint": data_fingerprint(profile),
                                  "finetune": d["finetune"], "encoder": profile.pretrain.encoder,
                                  "embed_dim": profile.pretrain.embed_dim}, default=str))


def _pretrained_state(profile: Profile, method: str) -> dict[str, torch.Tensor] | None:
    if method == "none":
        return None
    from cfcl.pretrain import load_checkpoint, pretrain

    return load_checkpoint(pretrain(profile, method, progress=False))["model"]


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Label maps (N, H, W) uint8 for uint8 images (N, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i:i + batch_size], dtype=np.float32) / 255.0)[:, None].to(device)
        out.append(model(x).argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.uint8)


def train_fold(profile: Profile, method: str, images: np.ndarray, gold: np.ndarray,
               state: dict[str, torch.Tensor] | None, fold: int, progress: bool = True) -> torch.nn.Module:
    """Fine-tune one model on ``images``/``gold`` (uint8 arrays) from the pre-trained ``state``."""
    cfg = profile.finetune
    torch.manual_seed(profile.seed * 1000 + fold)
    model = build_model(profile.pretrain.encoder, profile.pretrain.embed_dim)
    if state is not None:
        load_pretrained(model, state, method)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]
    y_all = torch.from_numpy(np.asarray(gold, dtype=np.float32))[:, None]
    aug = views.AugmentConfig(**FINETUNE_AUGMENT)
    gen = torch.Generator().manual_seed(profile.seed * 1000 + fold)
    n, size = len(images), images.shape[-1]
    model.train()
    for _ in tqdm(range(cfg.epochs), desc=f"finetune {method} fold {fold}", disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            M = views.random_geometry(len(idx), size, aug, gen)
            x = views.warp(x_all[idx], M, mode="bilinear")
            y = views.warp(y_all[idx], M, mode="nearest")[:, 0].long()
            logits = model(x)
            loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


def results_dir(profile: Profile, method: str) -> Path:
    d = runs_dir(profile.name) / "finetune" / method
    d.mkdir(parents=True, exist_ok=True)
    return d


def finetune(profile: Profile, method: str, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the five folds of ``method``; return the per-image metrics of the test folds.

    Each finished fold is saved atomically (``fold{k}.npz``: its test-fold predictions and its
    predictions on the test split and that split's counterfactuals), so an interrupted run
    resumes at the next fold and a finished one is read back without work.
    """
    if method not in FINETUNE_METHODS:
        raise KeyError(f"unknown method {method!r}; choose one of {list(FINETUNE_METHODS)}")
    annotated = load_split(profile, "annotated")
    if annotated.gold is None:
        raise ValueError("the annotated split has no gold masks: fine-tuning needs them")
    test = load_split(profile, "test")
    eff = annotated.parents["effusion"].to_numpy()
    fold_of = folds(eff, profile.finetune.folds, profile.seed)
    out = results_dir(profile, method)
    sig = _signature(profile, method)
    state = None
    for k in tqdm(range(profile.finetune.folds), desc=f"folds {method}", disable=not progress):
        path = out / f"fold{k}.npz"
        if path.exists():
            with np.load(path) as z:
                stored = json.loads(str(z["signature"]))
            if stored == sig:
                continue
            path.unlink()  # made under another configuration: redo
        if state is None:
            state = _pretrained_state(profile, method)
        train = fold_of != k
        model = train_fold(profile, method, annotated.images[train], annotated.gold[train], state, k, progress)
        arrays = {"pred": predict(model, annotated.images[fold_of == k]),
                  "index": np.flatnonzero(fold_of == k), "test_pred": predict(model, test.images)}
        if test.counterfactuals is not None:
            cf = np.asarray(test.counterfactuals)
            arrays["test_cf_pred"] = np.stack([predict(model, cf[:, j]) for j in range(cf.shape[1])], 1)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, signature=json.dumps(sig), **arrays)
    return fold_metrics(profile, method)


def load_fold(profile: Profile, method: str, k: int) -> dict[str, np.ndarray]:
    with np.load(results_dir(profile, method) / f"fold{k}.npz") as z:
        return {key: z[key] for key in z.files if key != "signature"}


def fold_metrics(profile: Profile, method: str) -> pd.DataFrame:
    """Per-image metrics of every test fold (columns fold, index, dsc, ..., effusion)."""
    annotated = load_split(profile, "annotated")
    eff = annotated.parents["effusion"].to_numpy()
    tables = []
    for k in range(profile.finetune.folds):
        f = load_fold(profile, method, k)
        idx = f["index"]
        t = metrics.segmentation_table(f["pred"], np.asarray(annotated.gold[idx]), eff[idx])
        t.insert(0, "index", idx)
        t.insert(0, "fold", k)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "method", method)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Five-fold fine-tuning of one pre-training method.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--method", required=True, choices=list(FINETUNE_METHODS))
    args = ap.parse_args(argv)
    table = finetune(get_profile(args.profile), args.method)
    print(metrics.summarise_folds(table))


if __name__ == "__main__":
    main()
