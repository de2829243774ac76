"""Five-fold fine-tuning on the annotated images (paper sections 3 and 4.2; Table 2).

The 70 annotated images (20 healthy, 50 effusion) are split into five folds stratified by
effusion, so every fold tests 4 healthy and 10 effusion images; folds, schedule and seed are
the same for every method. For each fold the whole U-Net is fine-tuned from the method's
pre-trained checkpoint (random init for ``none``; see :func:`cfcl.models.load_pretrained` for
what transfers) on the other four folds with the gold masks, then predicts its test fold and
the held-out test split (and that split's counterfactuals, for the robustness analysis).

Choices where the paper is silent (parameters in :class:`cfcl.config.FinetuneConfig`): AdamW,
cross-entropy + soft Dice loss, light geometric augmentation (rotation, zoom, translation with
exact label warping), a constant learning rate (``finetune.schedule=cosine``: cosine decay to 0 over
the fold's steps, the ``schedule`` ablation), the last epoch's weights (no model selection on the test fold).

The low-label regime (beyond the paper; the ``low_label`` ablation): with ``finetune.train_healthy`` /
``train_effusion`` > 0 each fold fine-tunes on that many healthy / effusion images of its training folds
(:func:`training_images`: a fixed draw per fold, the same for every method), tested as before.

Fine-tuning seeds (``finetune.seeds``, beyond the paper, which reports one run per fold): each fold is
fine-tuned ``seeds`` times from the same checkpoint on the same images, replicate ``r`` seeding its
initialisation of the new layers, batch order and augmentation with ``profile.seed * 1000 + fold +
100000 r``. Every per-image table keeps the replicate (column ``seed``); Table 2's fold means and the
test split's per-image values average over them.

Each fine-tuning seed of a method is one run of the run layer (:mod:`cfcl.runs`):
``runs/<profile>/finetune/<method>-<key>/fold<k>.npz`` for replicate 0 and
``<method>-seed<r>-<key>/fold<k>-seed<r>.npz`` for replicate r >= 1. ``seeds`` itself never enters a
key (as ``pretrain.seeds``): replicate 0 *is* the run of ``seeds=1``, so asking for three seeds reuses
it and fine-tunes only the two new ones. The key covers the method, the other fine-tuning settings,
the replicate, the seed, the data and the pre-training run. Each fold also records the SHA-256 of the
checkpoint it started from, so a fold made from another checkpoint (a pre-training run redone
with the same settings) is redone, never mixed in. Fine-tuning never pre-trains: a missing
checkpoint is an error naming the command that makes it.
"""
from __future__ import annotations

import json
import time
import warnings

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold
from torch.profiler import record_function

from cfcl import metrics, views
from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.config import UNET_DECODER_CHANNELS, Profile, SettingError
from cfcl.data import data_run, load_split
from cfcl.device import default_device
from cfcl.methods import FINETUNE_METHODS, get
from cfcl.models import N_CLASSES, load_pretrained, network
from cfcl.optim import optimiser_step
from cfcl.paths import runs_dir
from cfcl.progress import tqdm
from cfcl.read.finetune import (ADDED_LATER, finetune_run, finetune_runs, fold_file, fold_metrics, fold_runs,  # noqa: F401  (re-exported)
                                load_fold)
from cfcl.runs import Run, archive_problem, load_checkpoint, save_arrays

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


REPLICATE_STRIDE = 100_000


def training_images(effusion: np.ndarray, fold_of: np.ndarray, k: int, profile: Profile) -> np.ndarray:
    """Indices of the annotated images fold ``k`` fine-tunes on: every image outside fold ``k``, or, with
    ``finetune.train_healthy``/``train_effusion`` > 0 (the low-label regime), that many healthy/effusion
    images among them, drawn without replacement by a generator seeded with (seed, fold): the same images for
    every method and fine-tuning seed, so methods stay paired. Too few images is an error naming the setting."""
    cfg = profile.finetune
    train = np.flatnonzero(fold_of != k)
    if not (cfg.train_healthy or cfg.train_effusion):
        return train
    rng = np.random.default_rng([profile.seed, k])
    keep = []
    for cls, name in ((0, "train_healthy"), (1, "train_effusion")):
        pool = train[effusion[train] == cls]
        n = getattr(cfg, name) or len(pool)
        if n > len(pool):
            raise SettingError(f"setting finetune.{name}: fold {k} has {len(pool)} such images outside its "
                               f"test fold, got {n}")
        keep.append(rng.permutation(pool)[:n])
    return np.sort(np.concatenate(keep))


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Label maps (N, H, W) uint8 for uint8 images (N, H, W)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i:i + batch_size], dtype=np.float32) / 255.0)[:, None].to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            logits = model(x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x)
        out.append(logits.argmax(1).to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + images.shape[1:], np.uint8)


def augment_batch(x: torch.Tensor, y: torch.Tensor, aug: views.AugmentConfig,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One random geometry per image, applied to the images ``x (B, 1, H, W)`` (bilinear) and their
    label maps ``y (B, 1, H, W)`` float (nearest) with one sampling grid -> ``(x, y (B, H, W) long)``."""
    M = views.random_geometry(len(x), x.shape[-1], aug, generator)
    grid = views.sampling_grid(M, x.shape[-2], x.shape[-1])
    return views.resample(x, grid, "bilinear"), views.resample(y, grid, "nearest")[:, 0].long()


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One fine-tuning step: cross-entropy + soft Dice on the augmented batch, AdamW. On a GPU the
    network runs under bf16 autocast in channels_last (as pre-training does), the loss in float32."""
    with record_function("cfcl::network"), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        logits = model(x.contiguous(memory_format=torch.channels_last) if x.is_cuda else x)
    with record_function("cfcl::loss"):
        logits = logits.float()
        loss = F.cross_entropy(logits, y) + soft_dice_loss(logits, y)
    optimiser_step(loss, opt)
    return loss.detach()


def train_fold(profile: Profile, method: str, images: np.ndarray, gold: np.ndarray,
               state: dict[str, torch.Tensor] | None, fold: int, progress: bool = True,
               replicate: int = 0) -> torch.nn.Module:
    """Fine-tune one model on ``images``/``gold`` (uint8 arrays) from the pre-trained ``state``
    (``replicate``: the fine-tuning seed, see the module docstring)."""
    cfg = profile.finetune
    seed = profile.seed * 1000 + fold + REPLICATE_STRIDE * replicate
    torch.manual_seed(seed)
    model = network(profile.pretrain)
    if state is not None:
        load_pretrained(model, state, method)
    device = default_device()
    model.to(device)
    if device == "cuda":
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    n, size = len(images), images.shape[-1]
    sched = None
    if cfg.schedule == "cosine":
        total = cfg.epochs * sum(1 for i in range(0, n, cfg.batch_size) if n - i >= 2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    x_all = torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0)[:, None]
    y_all = torch.from_numpy(np.asarray(gold, dtype=np.float32))[:, None]
    aug = views.AugmentConfig(**FINETUNE_AUGMENT)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    desc = f"finetune {method} fold {fold}" + (f" seed {replicate}" if replicate else "")
    for _ in tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False):
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = augment_batch(x_all[idx], y_all[idx], aug, gen)  # on the CPU: the same draws on any device
            train_step(model, opt, x.to(device), y.to(device))
            if sched is not None:
                sched.step()
    return model


def finetune(profile: Profile, method: str, progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the five folds of ``method`` (each ``finetune.seeds`` times); return the
    per-image metrics of the test folds.

    Each finished fold is saved atomically (:func:`fold_file`: its test-fold predictions and its
    predictions on the test split and that split's counterfactuals, with the digest of the
    checkpoint it started from), so an interrupted run resumes at the next fold; a finished run
    is verified and read back without work.
    """
    for r, run in enumerate(finetune_runs(profile, method)):
        if not run.is_finished():
            with run.claim():
                if not run.is_finished():
                    _finetune(profile, method, run, r, progress)
    return fold_metrics(profile, method)


def _finetune(profile: Profile, method: str, run: Run, replicate: int, progress: bool) -> None:
    started = time.perf_counter()
    state, origin = None, "random"
    if get(method).pretrained:
        pre = run.upstream["pretrain"].require()
        origin = pre.manifest()["artifacts"]["model.pt"]["sha256"]
        state = load_checkpoint(pre.artifact("model.pt"))["model"]
    annotated = load_split(profile, "annotated")
    if annotated.gold is None:
        raise ValueError("the annotated split has no gold masks: fine-tuning needs them")
    test = load_split(profile, "test")
    fold_of = folds(annotated.parents["effusion"].to_numpy(), profile.finetune.folds, profile.seed)
    plan = [(replicate, k) for k in range(profile.finetune.folds)]
    names = [fold_file(k, r) for r, k in plan]
    desc = f"folds {method}" + (f" seed {replicate}" if replicate else "")
    for (r, k), name in zip(tqdm(plan, desc=desc, disable=not progress), names):
        path = run.path(name)
        if path.exists():
            problem = archive_problem(path)  # every member read back and CRC-checked before it is reused
            if problem is not None:  # a damaged fold of this unfinished run is this stage's own work: redo it
                warnings.warn(f"{path} is damaged ({problem}): removing it and fine-tuning fold {k} again",
                              stacklevel=2)
                path.unlink()
            else:
                with np.load(path) as z:
                    if str(z["origin"]) == origin:
                        continue
                print(f"{path}: made from another checkpoint; fine-tuning it again")
        train = training_images(annotated.parents["effusion"].to_numpy(), fold_of, k, profile)
        model = train_fold(profile, method, annotated.images[train], annotated.gold[train], state, k, progress, r)
        arrays = {"pred": predict(model, annotated.images[fold_of == k]),
                  "index": np.flatnonzero(fold_of == k), "test_pred": predict(model, test.images)}
        if test.counterfactuals is not None:
            cf = np.asarray(test.counterfactuals)
            arrays["test_cf_pred"] = np.stack([predict(model, cf[:, j]) for j in range(cf.shape[1])], 1)
        save_arrays(path, compressed=True, origin=np.array(origin), **arrays)
    run.finish(names, time.perf_counter() - started, extra={"origin_sha256": origin})


@entry_point
def main(argv: list[str] | None = None) -> None:
    ap = profile_parser("python -m cfcl.finetune", "Five-fold fine-tuning of one method.")
    ap.add_argument("--method", required=True, choices=list(FINETUNE_METHODS))
    args = ap.parse_args(argv)
    table = finetune(profile_of(args), args.method)
    print(metrics.summarise_folds(table))


if __name__ == "__main__":
    main()
