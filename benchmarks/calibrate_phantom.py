"""Calibrate the phantom: does pleural effusion make lung segmentation genuinely hard?

The paper's "None" row (random init, Table 2) has DSC 93.6 on healthy and 84.8 on effusion
images. This script trains a small from-scratch U-Net (smp ``Unet("resnet18",
encoder_weights=None, in_channels=1, classes=3)``) on the profile's annotated split with 5-fold
cross-validation (4 healthy + 10 effusion held out per fold at the default 20/50), AdamW lr 3e-4,
40 epochs, batch 8, inputs image/255, and reports the mean per-image DSC (mean over the two lungs)
on the held-out fold and on the test split, separately for healthy and effusion images. It also
times phantom generation (images/s at 128 px for 1,000 images with their 3 counterfactuals).

    .venv/bin/python benchmarks/calibrate_phantom.py --profile cpu --threads 2

Writes nothing but stdout (a markdown table); copy the figures into benchmarks/results/phantom.md.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cfcl.config import get_profile
from cfcl.data import load_split
from cfcl.data import phantom as ph


def dice_per_image(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Mean over the two lungs of the per-image Dice (N,); a lung empty in both counts as 1."""
    out = []
    for k in (1, 2):
        p, g = pred == k, gold == k
        inter = (p & g).sum(axis=(1, 2))
        tot = p.sum(axis=(1, 2)) + g.sum(axis=(1, 2))
        out.append(np.where(tot > 0, 2 * inter / np.maximum(tot, 1), 1.0))
    return 0.5 * (out[0] + out[1])


def stratified_folds(effusion: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Indices of each fold's held-out images, stratified by effusion."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(folds)]
    for e in (0, 1):
        idx = rng.permutation(np.nonzero(effusion == e)[0])
        for f, chunk in enumerate(np.array_split(idx, folds)):
            parts[f] += chunk.tolist()
    return [np.sort(np.asarray(p, int)) for p in parts]


def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch):
            x = torch.from_numpy(np.asarray(images[lo:lo + batch], np.float32) / 255.0)[:, None]
            out.append(model(x).argmax(1).numpy().astype(np.uint8))
    return np.concatenate(out)


def train_fold(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int, lr: float,
               seed: int) -> torch.nn.Module:
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    y_all = torch.from_numpy(labels.astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        for lo in range(0, len(perm), batch):
            sel = perm[lo:lo + batch]
            loss = loss_fn(model(x_all[sel]), y_all[sel])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def generation_speed(n: int = 1000, size: int = 128, chunk: int = 64) -> float:
    """Images per second (factual + 3 counterfactuals + labels) at ``size`` px."""
    bank = ph._bank()
    t0 = time.perf_counter()
    noise = ph.sample_noise(n, 0, "pretrain", len(bank))
    parents = ph.sample_parents(n, np.random.default_rng(0))
    for lo in range(0, n, chunk):
        ph.render_with_counterfactuals(ph.take(noise, slice(lo, lo + chunk)),
                                       parents.iloc[lo:lo + chunk].reset_index(drop=True), size)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-speed", action="store_true", help="skip the generation-speed measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile)
    ann, test = load_split(prof, "annotated"), load_split(prof, "test")
    images, gold = np.asarray(ann.images), np.asarray(ann.gold)
    eff = ann.parents["effusion"].to_numpy()
    t_eff = test.parents["effusion"].to_numpy()
    cv, te = [], []
    t0 = time.perf_counter()
    for f, held in enumerate(stratified_folds(eff, args.folds, args.seed)):
        train = np.setdiff1d(np.arange(len(images)), held)
        model = train_fold(images[train], gold[train], args.epochs, args.batch, args.lr, args.seed + f)
        d_cv = dice_per_image(predict(model, images[held]), gold[held])
        d_te = dice_per_image(predict(model, np.asarray(test.images)), np.asarray(test.gold))
        cv.append((d_cv[eff[held] == 0].mean(), d_cv[eff[held] == 1].mean()))
        te.append((d_te[t_eff == 0].mean(), d_te[t_eff == 1].mean()))
        print(f"fold {f}: CV healthy {100 * cv[-1][0]:.1f} effusion {100 * cv[-1][1]:.1f} | "
              f"test healthy {100 * te[-1][0]:.1f} effusion {100 * te[-1][1]:.1f}", flush=True)
    minutes = (time.perf_counter() - t0) / 60
    cv_a, te_a = 100 * np.asarray(cv), 100 * np.asarray(te)
    print(f"\nprofile {args.profile}, {args.folds} folds, {args.epochs} epochs, {minutes:.1f} min\n")
    print("| evaluation | DSC healthy | DSC effusion | gap |\n|---|---|---|---|")
    for name, a in (("held-out fold (CV)", cv_a), ("test split", te_a)):
        print(f"| {name} | {a[:, 0].mean():.1f} ± {a[:, 0].std():.1f} | {a[:, 1].mean():.1f} ± "
              f"{a[:, 1].std():.1f} | {a[:, 0].mean() - a[:, 1].mean():.1f} |")
    if not args.no_speed:
        speed = generation_speed()
        print(f"\ngeneration at 128 px (factual + 3 counterfactuals + labels): {speed:.1f} images/s; "
              f"10,000 images: {10000 / speed / 60:.1f} min")


if __name__ == "__main__":
    main()
