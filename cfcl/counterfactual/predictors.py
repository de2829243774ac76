"""Parent predictors: a small multi-head CNN for sex, scanner and effusion (paper section 2.1).

They measure the *effectiveness* of counterfactuals (Monteiro et al., ICLR 2023; REFERENCES
section 2): does a classifier trained on factual images see the intervened parent in x_cf? And,
frozen, they are the teachers of counterfactual fine-tuning (:mod:`cfcl.counterfactual.cf_finetune`).

One network, three logits (sex, scanner, effusion), binary cross-entropy per head, trained on
the factual pretrain images. Every batch is **balanced over the four scanner x effusion cells**
(PE is 2.5 % of PadChest and confounded with the scanner: balancing effusion alone would teach the
effusion head to read the scanner). **Augmentation** (``hvae.classifier_augment``, default
``"views"``): the geometry of the pre-training views (:mod:`cfcl.views`: rotation, zoom, shift, and
flips; :data:`AUGMENT`) for every image, and their photometric jitter, blur and solarisation
(:data:`PHOTOMETRIC`) for half of each batch, whose *scanner* label is then left out: the scanner is
the acquisition (contrast, brightness, blur, noise), which the photometric augmentation erases, while
sex and effusion must be read whatever the acquisition. A measuring stick is only trusted after
:func:`cfcl.counterfactual.quality.gates`: the phantom's exact counterfactuals must read as
counterfactual and x itself must not.

Two roles (``ROLES``), two runs. The **teacher** (``parents``) is trained on the factual images only, as
the paper's predictors are, and teaches counterfactual fine-tuning. The **judge** (``judge``) measures
every effectiveness figure: a model scored by the classifier it was trained to fool is scored too kindly
(its counterfactuals can be adversarial to that classifier: the fine-tuned HVAE's do(effusion) reads as
effusion to the teacher more often than the exact counterfactuals do), so the judge is a separate network,
trained (same architecture, batches, augmentation and compute) on the factual images *and* their exact
counterfactuals where the data source has them (the phantom: every image then shows each parent both
ways, the rare effusion cell included), and never seen by the fine-tuning.
The sex the judge reads is trusted where it is confident: ``sex_kept_confident`` in
:mod:`cfcl.counterfactual.quality` (the exact counterfactuals keep it there, so the stick can license it).
Where the source has no exact counterfactuals (real data) the judge is trained on the factual images only,
with a seed of its own: still independent of the teacher, but as weak; effectiveness figures are then
flagged as unvalidated by the stick gates.

One run of the run layer (:mod:`cfcl.runs`) per role: ``runs/<profile>/classifiers/<parents|judge>-<key>/
classifiers.pt``, resumable per epoch.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.config import INTERVENTIONS, PARENTS, Profile
from cfcl.counterfactual.parents import intervene, parents_tensor, to_model_space
from cfcl.data import load_split
from cfcl.device import default_device
from cfcl.optim import optimiser_step
from cfcl.progress import tqdm
from cfcl.read.classifiers import (AUGMENT, PHOTOMETRIC, PHOTOMETRIC_SHARE, ROLES,  # noqa: F401  (re-exported)
                                   classifier_run)
from cfcl.runs import Run, load_checkpoint, resume, save_checkpoint
from cfcl.views import AugmentConfig, intensity, random_geometry, warp

CHECKPOINT_NAME = "classifiers.pt"
AUGMENTS = ("none", "geometry", "views")


def augment(x: torch.Tensor, generator: torch.Generator, cfg: AugmentConfig = AUGMENT) -> torch.Tensor:
    """A random rotation/zoom/shift of each image ``(B, 1, H, W)`` in [-1, 1] (one bilinear
    resampling, :func:`cfcl.views.warp`; black outside the image). Differentiable in ``x``:
    counterfactual fine-tuning warps ``x_cf`` the same way before the frozen predictors read it."""
    M = random_geometry(x.shape[0], x.shape[-1], cfg, generator).to(x.device)
    return warp(x + 1.0, M, mode="bilinear") - 1.0


def augment_views(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The views' augmentations for the predictors' training: :func:`augment` (geometry) for every
    image, then :data:`PHOTOMETRIC` for a random :data:`PHOTOMETRIC_SHARE` of them. Returns the images
    and the ``(B,)`` bool mask of the photometrically augmented ones, whose scanner label is not
    trained (the scanner is a photometric signature; the other heads learn to ignore it)."""
    x = augment(x, generator)
    pho = torch.rand(x.shape[0], generator=generator) < PHOTOMETRIC_SHARE
    if bool(pho.any()):
        x, on = x.clone(), pho.to(x.device)
        x[on] = intensity((x[on] + 1.0) / 2.0, PHOTOMETRIC, generator) * 2.0 - 1.0
    return x, pho


def cell_batches(cells: np.ndarray, batch_size: int, n_batches: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n_batches`` index batches with the same number of images from every cell (group label
    per image; the remainder of ``batch_size`` goes to the cells drawn least so far, ties at random,
    so over the epoch every cell is drawn equally often, within one). Each cell is drawn by walking
    through fresh permutations of itself, so its images are used as evenly as possible."""
    cells = np.asarray(cells)
    groups = [np.flatnonzero(cells == c) for c in np.unique(cells)]
    k = len(groups)
    quotas = np.full((n_batches, k), batch_size // k)
    drawn = np.zeros(k)
    for b in range(n_batches):
        extra = np.argsort(drawn + rng.random(k) * 0.5, kind="stable")[:batch_size % k]
        quotas[b, extra] += 1
        drawn[extra] += 1
    streams = []
    for g, need in zip(groups, quotas.sum(0)):
        reps = -(-int(need) // len(g))
        streams.append(np.concatenate([rng.permutation(g) for _ in range(reps)])[:need] if need else g[:0])
    pos = np.zeros(k, int)
    out = []
    for b in range(n_batches):
        parts = []
        for j in range(k):
            parts.append(streams[j][pos[j]:pos[j] + quotas[b, j]])
            pos[j] += quotas[b, j]
        out.append(rng.permutation(np.concatenate(parts)))
    return out


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


def _training_pool(train, role: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The images a predictor learns from and their parents: the factual images, and for the judge also
    their exact counterfactuals (each with its intervened parents) where the source has them."""
    images, parents = [np.asarray(train.images)], [train.parents[list(PARENTS)].reset_index(drop=True)]
    if role == "judge" and train.counterfactuals is not None:
        cfs = np.asarray(train.counterfactuals)
        for k, name in enumerate(INTERVENTIONS):
            images.append(cfs[:, k])
            parents.append(intervene(parents[0], name))
    return np.concatenate(images), pd.concat(parents, ignore_index=True)


def train_classifiers(profile: Profile, progress: bool = True, role: str = "teacher", lr: float = 1e-3) -> Run:
    """Train the parent predictors of ``role`` on the pretrain split (the judge: with the exact
    counterfactuals where the source has them, :func:`_training_pool`); return their run.

    ``hvae.classifier_epochs`` (the judge: ``hvae.judge_epochs``) epochs of AdamW at a constant rate,
    ``ceil(N / hvae.batch_size)`` batches per epoch,
    each balanced over the scanner x effusion cells (:func:`cell_batches`), augmented as
    ``hvae.classifier_augment`` says: ``"geometry"`` (:func:`augment`), ``"views"``
    (:func:`augment_views`: the geometry, plus the views' photometric augmentation on half of each
    batch, whose scanner labels are left out) or ``"none"``. A finished run is verified and returned; an
    interrupted one resumes from ``last.pt`` (after every epoch).
    """
    run = classifier_run(profile, role, lr)
    if run.is_finished():
        return run.require()
    with run.claim():
        if run.is_finished():
            return run.require()
        settings = run.settings
        started = time.perf_counter()
        seed = profile.seed + settings.get("seed_offset", 0)
        torch.manual_seed(seed)
        device = default_device()
        model = ParentClassifier(settings["width"]).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
        epoch, seconds = 0, 0.0
        last = run.path("last.pt")
        ck = resume(run, model=model, optimizer=opt)
        if ck is not None:
            epoch, seconds = int(ck["epoch"]), float(ck.get("seconds", 0.0))
        train = load_split(profile, "pretrain")
        images, parents = _training_pool(train, role)
        pa = parents_tensor(parents).to(device)
        cells = 2 * parents["scanner"].to_numpy() + parents["effusion"].to_numpy()
        bs = profile.hvae.batch_size
        n_batches = math.ceil(len(train) / bs)  # the same compute per epoch for both roles
        bar = tqdm(total=(settings["epochs"] - epoch) * n_batches,
                   desc=f"parent predictors, {role} [{profile.name}]", disable=not progress, leave=False)
        while epoch < settings["epochs"]:
            model.train()
            rng = np.random.default_rng([seed, 7, epoch])
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            for idx in (np.sort(idx) for idx in cell_batches(cells, bs, n_batches, rng)):
                x = to_model_space(images[idx]).to(device)
                weight = torch.ones(len(idx), len(PARENTS), device=device)
                if settings["augment"] == "geometry":
                    x = augment(x, gen)
                elif settings["augment"] == "views":
                    x, pho = augment_views(x, gen)
                    weight[pho.to(device), PARENTS.index("scanner")] = 0.0
                logits = model(x)
                loss = (F.binary_cross_entropy_with_logits(logits, pa[idx], reduction="none") * weight).sum(0)
                loss = (loss / weight.sum(0).clamp(min=1)).mean()  # mean per head, then over heads
                optimiser_step(loss, opt)
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(loss.detach()):.3f}")
            epoch += 1
            save_checkpoint(dict(model=model.state_dict(), optimizer=opt.state_dict(), epoch=epoch,
                                 seconds=seconds + time.perf_counter() - started), last)
        bar.close()
        save_checkpoint(dict(model_config=model.config, model=model.state_dict()), run.path(CHECKPOINT_NAME))
        run.finish([CHECKPOINT_NAME], seconds + time.perf_counter() - started)
        last.unlink(missing_ok=True)
        return run


def load_classifiers(profile: Profile, role: str = "teacher") -> ParentClassifier:
    """The trained parent predictors of ``role`` in eval mode (verified; an error names the command if
    missing)."""
    ck = load_checkpoint(classifier_run(profile, role).require().artifact(CHECKPOINT_NAME))
    model = ParentClassifier(**ck["model_config"])
    model.load_state_dict(ck["model"])
    return model.eval()


@torch.no_grad()
def predict_parents(model: ParentClassifier, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities ``(N, 3)`` of (sex = M, scanner = Philips, effusion) for uint8 ``(N, H, W)`` images."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(to_model_space(images[i:i + batch_size]).to(device))).cpu()
           for i in range(0, len(images), batch_size)]
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


def evaluate_classifiers(profile: Profile, split: str = "val", progress: bool = True,
                         role: str = "teacher") -> pd.DataFrame:
    """Train (if needed) and score the parent predictors of ``role`` on the factual images of ``split``."""
    train_classifiers(profile, progress=progress, role=role)
    model = load_classifiers(profile, role)
    data = load_split(profile, split)
    return classifier_metrics(predict_parents(model, data.images), data.parents)


def predictor_report(profile: Profile, splits: tuple[str, ...] = ("val", "test")) -> pd.DataFrame:
    """The measuring stick, checked: accuracy and ROC AUC per parent on the factual images of each
    split and, where the data has exact counterfactuals (the phantom), on those of every
    intervention, scored against the counterfactual parents. Columns ``split``, ``images``
    (``factual`` or ``do(<intervention>)``), ``parent``, ``accuracy``, ``roc_auc``, ``n``, ``positives``.
    A first column ``predictor`` names the role (teacher, judge). Needs the trained predictors (an error
    names the command)."""
    frames = []
    for role in ROLES:
        model = load_classifiers(profile, role)
        for split in splits:
            data = load_split(profile, split)
            sets = [("factual", np.asarray(data.images), data.parents)]
            if data.counterfactuals is not None:
                cfs = np.asarray(data.counterfactuals)
                sets += [(f"do({k})", cfs[:, i], intervene(data.parents, k)) for i, k in enumerate(INTERVENTIONS)]
            for name, images, parents in sets:
                frames.append(classifier_metrics(predict_parents(model, images), parents)
                              .assign(predictor=role, split=split, images=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["predictor", "split", "images", "parent", "accuracy", "roc_auc", "n", "positives"]]


@entry_point
def main(argv: list[str] | None = None) -> None:
    """``python -m cfcl.counterfactual.predictors --profile cpu [--set ...]``: train (or verify) the parent predictors."""
    parser = profile_parser("python -m cfcl.counterfactual.predictors", "Train the parent predictors.")
    parser.add_argument("--role", default="teacher", choices=list(ROLES),
                        help="teacher: taught counterfactual fine-tuning; judge: measures effectiveness")
    args = parser.parse_args(argv)
    run = train_classifiers(profile_of(args), role=args.role)
    print(f"parent predictors ({args.role}): {run.folder}")


if __name__ == "__main__":
    main()
