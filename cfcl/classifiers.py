"""Parent predictors: a small multi-head CNN for sex, scanner and effusion (paper section 2.1).

They measure the *effectiveness* of counterfactuals (Monteiro et al., ICLR 2023; REFERENCES
section 2): does a classifier trained on factual images see the intervened parent in x_cf?

One network, three logits (sex, scanner, effusion), binary cross-entropy per head, trained on
the factual pretrain images with balanced sampling for effusion (half of every batch, since
PE is 2.5 % of PadChest). No augmentation (choice: the phantom and real images share one
geometry; augmentations would blur the scanner signature the scanner head has to read).
Cached like the HVAE: ``runs_dir(profile) / "classifiers" / "classifiers.pt"`` (weights-only
loadable), resumable per epoch, refused with an error on a settings mismatch.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from cfcl.config import PARENTS, Profile
from cfcl.data import load_split
from cfcl.hvae import data_key, oversampled_batches, parents_tensor, settings_mismatch, to_model_space
from cfcl.paths import atomic_path, runs_dir

CHECKPOINT_NAME = "classifiers.pt"


class ParentClassifier(nn.Module):
    """``(B, 1, H, W)`` in [-1, 1] -> ``(B, 3)`` logits for (sex, scanner, effusion).

    Four stride-2 conv-BN-ReLU stages (widths ``width * (1, 2, 4, 4)``), global average
    pooling, one linear layer.
    """

    def __init__(self, width: int = 16, n_outputs: int = len(PARENTS)):
        super().__init__()
        self.config = dict(width=int(width), n_outputs=int(n_outputs))
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def run_dir(profile: Profile) -> Path:
    return runs_dir(profile.name) / "classifiers"


def checkpoint_path(profile: Profile) -> Path:
    return run_dir(profile) / CHECKPOINT_NAME


def training_settings(profile: Profile, width: int = 16, lr: float = 1e-3,
                      effusion_fraction: float = 0.5) -> dict[str, Any]:
    """Everything that determines the trained predictors (stored in the checkpoint)."""
    return dict(epochs=profile.hvae.classifier_epochs, batch_size=profile.hvae.batch_size, width=width, lr=lr,
                effusion_fraction=effusion_fraction, image_size=profile.data.image_size,
                data=data_key(profile), seed=profile.seed)


def train_classifiers(profile: Profile, progress: bool = True, width: int = 16, lr: float = 1e-3,
                      effusion_fraction: float = 0.5) -> Path:
    """Train the parent predictors on the factual pretrain split; return the checkpoint path.

    ``hvae.classifier_epochs`` epochs of AdamW, batches of ``hvae.batch_size`` with
    ``effusion_fraction`` effusion images. Cached/resumable/refused-on-mismatch like
    :func:`cfcl.hvae.train_hvae` (``epochs`` may grow).
    """
    settings = training_settings(profile, width, lr, effusion_fraction)
    path = checkpoint_path(profile)
    torch.manual_seed(profile.seed)
    model = ParentClassifier(width)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    epoch = 0
    if path.exists():
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        diffs = settings_mismatch(ckpt["settings"], settings, growable=("epochs",))
        if diffs:
            raise ValueError(f"{path} was trained with other settings: " + "; ".join(diffs)
                             + f". Delete {path.parent} to retrain.")
        if ckpt["epoch"] >= settings["epochs"]:
            return path
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        epoch = int(ckpt["epoch"])
    train = load_split(profile, "pretrain")
    pa = parents_tensor(train.parents)
    effusion = train.parents["effusion"].to_numpy()
    bs = profile.hvae.batch_size
    bar = tqdm(total=(settings["epochs"] - epoch) * math.ceil(len(train) / bs), desc=f"parent predictors [{profile.name}]",
               disable=not progress, leave=False)
    while epoch < settings["epochs"]:
        model.train()
        rng = np.random.default_rng([profile.seed, 7, epoch])
        for idx in oversampled_batches(effusion, bs, effusion_fraction, rng):
            idx = np.sort(idx)
            logits = model(to_model_space(train.images[idx]))
            loss = F.binary_cross_entropy_with_logits(logits, pa[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
        epoch += 1
        ckpt = dict(settings=settings, model_config=model.config, model=model.state_dict(),
                    optimizer=opt.state_dict(), epoch=epoch, finished=epoch >= settings["epochs"])
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
    bar.close()
    return path


def load_classifiers(profile_or_path: Profile | str | Path) -> ParentClassifier:
    """The trained parent predictors in eval mode."""
    path = checkpoint_path(profile_or_path) if isinstance(profile_or_path, Profile) else Path(profile_or_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no parent-predictor checkpoint; run train_classifiers(profile)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = ParentClassifier(**ckpt["model_config"])
    model.load_state_dict(ckpt["model"])
    return model.eval()


@torch.no_grad()
def predict_parents(model: ParentClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities ``(N, 3)`` of (sex = M, scanner = Philips, effusion) for uint8 ``(N, H, W)`` images."""
    model.eval()
    out = [torch.sigmoid(model(to_model_space(images[i:i + batch_size]))) for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(PARENTS)), np.float32)


def classifier_metrics(probs: np.ndarray, parents: pd.DataFrame) -> pd.DataFrame:
    """Accuracy (threshold 0.5) and ROC AUC per parent; one row per parent."""
    rows = []
    for j, name in enumerate(PARENTS):
        y = parents[name].to_numpy().astype(int)
        auc = roc_auc_score(y, probs[:, j]) if len(np.unique(y)) == 2 else float("nan")
        rows.append(dict(parent=name, accuracy=float(((probs[:, j] > 0.5) == y).mean()), roc_auc=float(auc),
                         n=len(y), positives=int(y.sum())))
    return pd.DataFrame(rows)


def evaluate_classifiers(profile: Profile, split: str = "val", progress: bool = True) -> pd.DataFrame:
    """Train (if needed) and score the parent predictors on the factual images of ``split``."""
    model = load_classifiers(train_classifiers(profile, progress=progress))
    data = load_split(profile, split)
    return classifier_metrics(predict_parents(model, data.images), data.parents)


def main(argv: list[str] | None = None) -> None:
    """``python -m cfcl.classifiers --profile cpu``: train (or reuse) the parent predictors."""
    import argparse

    from cfcl.config import get_profile
    from cfcl.hvae import parse_overrides

    parser = argparse.ArgumentParser(prog="python -m cfcl.classifiers", description="Train the parent predictors.")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    print(f"parent predictors: {train_classifiers(get_profile(args.profile, **parse_overrides(args.overrides)))}")


if __name__ == "__main__":
    main()
