"""Parent predictors: a small multi-head CNN for sex, scanner and effusion (paper section 2.1).

They measure the *effectiveness* of counterfactuals (Monteiro et al., ICLR 2023; REFERENCES
section 2): does a classifier trained on factual images see the intervened parent in x_cf? And,
frozen, they are the teachers of counterfactual fine-tuning (:mod:`cfcl.hvae.cf_finetune`).

One network, three logits (sex, scanner, effusion), binary cross-entropy per head, trained on
the factual pretrain images. Every batch is **balanced over the four scanner x effusion cells**
(PE is 2.5 % of PadChest and confounded with the scanner: balancing effusion alone would teach the
effusion head to read the scanner). **Augmentation** (``hvae.classifier_augment``, default
``"views"``): the geometry of the pre-training views (:mod:`cfcl.views`: rotation, zoom, shift, and
flips; :data:`AUGMENT`) for every image, and their photometric jitter, blur and solarisation
(:data:`PHOTOMETRIC`) for half of each batch, whose *scanner* label is then left out: the scanner is
the acquisition (contrast, brightness, blur, noise), which the photometric augmentation erases, while
sex and effusion must be read whatever the acquisition. A measuring stick is only trusted after
:func:`cfcl.counterfactuals.gates`: the phantom's exact counterfactuals must read as
counterfactual and x itself must not.

Two roles (``ROLES``), two runs. The **teacher** (``parents``) is trained on the factual images only, as
the paper's predictors are, and teaches counterfactual fine-tuning. The **judge** (``judge``) measures
every effectiveness figure: a model scored by the classifier it was trained to fool is scored too kindly
(its counterfactuals can be adversarial to that classifier: the fine-tuned HVAE's do(effusion) reads as
effusion to the teacher more often than the exact counterfactuals do), so the judge is a separate network,
trained (same architecture, batches, augmentation and compute) on the factual images *and* their exact
counterfactuals where the data source has them (the phantom: every image then shows each parent both
ways, the rare effusion cell included), and never seen by the fine-tuning. With ``hvae.judge_invariance
> 0`` (default 0: off) the judge's batches are **pairs**: half of each batch is drawn balanced over the
cells, the other half is, for each of those, another version of the same anatomy (x or one of its exact
counterfactuals, at random), and the loss adds the symmetric KL between the two readings of every head
whose parent the pair shares (sex always; :func:`invariance_loss`). It was meant to let the stick measure
"sex kept" (the default judge reads a different sex on 9-13 % of the exact counterfactuals, so its
``sex_kept`` gate fails); at the ``cpu`` profile with weight 1 it did not (0.87 / 0.90 / 0.84) and it cost
the effusion gate (0.892 on the exact do(effusion)), so it stays off (``benchmarks/results/hvae.md``).
With ``hvae.classifier_field > 0`` (teacher only; default 0: off) half of each of the teacher's batches also
gets a smooth random intensity field (:func:`smooth_field`), meant to stop the fine-tuning from being paid
for a lung-wide opacity; at the ``cpu`` profile (0.05) the teacher still counted the opacity and do(scanner)
and do(both) failed their gates, so it stays off (``benchmarks/results/hvae.md``).
With ``hvae.classifier_lse = r > 0`` (teacher only; default 0: off) the teacher's effusion logit pools the
logits of every location by log-sum-exp (:class:`ParentClassifier`), meant to make fluid count where it
is and not a little everywhere; at the ``cpu`` profile (r = 1) the teacher still read the lung-wide change as
fluid, and do(scanner) and do(both) failed their gates, so it stays off (``benchmarks/results/hvae.md``).
With ``hvae.classifier_haze > 0`` (teacher only; default 0: off) half of each teacher batch gets a haze
over the silver lungs, one random amplitude for both (:func:`lung_haze`), labels kept: the lung-shaped
version of the field above; at the ``cpu`` profile (0.05) the fine-tuning then added less of the lung-wide
change but removed fluid from far fewer images, and do(effusion) failed its effectiveness gate, so it stays off
(``benchmarks/results/hvae.md``).
The sex the judge reads is trusted where it is confident: ``sex_kept_confident`` in
:mod:`cfcl.counterfactuals` (the exact counterfactuals keep it there, so the stick can license it).
Where the source has no exact counterfactuals (real data) the judge is trained on the factual images only,
with a seed of its own: still independent of the teacher, but as weak; effectiveness figures are then
flagged as unvalidated by the stick gates.

One run of the run layer (:mod:`cfcl.runs`) per role: ``runs/<profile>/classifiers/<parents|judge>-<key>/
classifiers.pt``, resumable per epoch.
"""
from __future__ import annotations

import dataclasses
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
from cfcl.data import data_run, load_split
from cfcl.device import default_device
from cfcl.parents import parents_tensor, to_model_space
from cfcl.paths import runs_dir
from cfcl.progress import tqdm
from cfcl.runs import Run, load_checkpoint, resume, save_checkpoint
from cfcl.views import AugmentConfig, _gaussian_blur, intensity, random_geometry, warp

CHECKPOINT_NAME = "classifiers.pt"
AUGMENTS = ("none", "geometry", "views")
#: The predictors' geometric augmentation: the views' rotation, zoom and shift (cfcl.views), milder
#: (the whole chest stays in view), and horizontal flips (no parent depends on the side).
AUGMENT = AugmentConfig(rotation_deg=10.0, scale=(1.0, 1.25), translate=0.06, flip_p=0.5, jitter_p=0.0,
                        blur_p=0.0, solarize_p=0.0)
#: The views' photometric augmentation (colour jitter, blur, solarisation; cfcl.views defaults).
PHOTOMETRIC = AugmentConfig()
#: Share of each batch that also gets :data:`PHOTOMETRIC` with ``hvae.classifier_augment="views"``.
PHOTOMETRIC_SHARE = 0.5


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


#: Share of each batch that gets the smooth intensity field (:func:`smooth_field`) with ``hvae.classifier_field``.
FIELD_SHARE = 0.5
#: The field's control grid (``FIELD_GRID`` x ``FIELD_GRID`` offsets, upsampled to the image).
FIELD_GRID = 4


#: Share of each teacher batch that gets a lung-shaped haze (:func:`lung_haze`) with ``hvae.classifier_haze``.
HAZE_SHARE = 0.5
#: The haze's edge: Gaussian blur of the lung mask with sigma this share of the image side (2 px at 64).
HAZE_BLUR = 1 / 32


def lung_haze(x: torch.Tensor, lungs: torch.Tensor, sd: float, generator: torch.Generator) -> torch.Tensor:
    """``x (B, 1, H, W)`` in [-1, 1] plus a haze over its lungs: ``a * blur(lungs)``, ``lungs (B, 1, H, W)``
    the silver lung mask (both lungs, 0/1; CheXmask's on real data), blurred by a Gaussian of sigma
    :data:`HAZE_BLUR` x the side, and ``a ~ N(0, sd)`` in [0, 1] intensity, **one** amplitude for both lungs
    of an image (either sign), clamped back to [-1, 1]. The shape of the lung-wide change counterfactual
    fine-tuning makes (``benchmarks/results/cf_stray_change.md``: the same sign on both lungs), given to
    the teacher with its labels kept, so that such a change alone reads as no effusion."""
    a = torch.randn(x.shape[0], 1, 1, 1, generator=generator).to(x) * sd
    sigma = torch.full((x.shape[0],), max(0.5, x.shape[-1] * HAZE_BLUR), dtype=x.dtype, device=x.device)
    return (x + 2.0 * a * _gaussian_blur(lungs.to(x), sigma)).clamp(-1.0, 1.0)


def smooth_field(x: torch.Tensor, sd: float, generator: torch.Generator) -> torch.Tensor:
    """``x (B, 1, H, W)`` in [-1, 1] plus a smooth random intensity field per image: a
    :data:`FIELD_GRID` x :data:`FIELD_GRID` grid of N(0, ``sd``) offsets in [0, 1] intensity, upsampled
    bicubically (align_corners) to the image, clamped back to [-1, 1]: smooth opacities of either sign, with
    no edge, meant to teach the teacher that such a change alone is no effusion (at the ``cpu`` profile it
    still counted the HVAE's lung-shaped opacity: ``benchmarks/results/hvae.md``)."""
    grid = torch.randn(x.shape[0], 1, FIELD_GRID, FIELD_GRID, generator=generator) * sd
    field = F.interpolate(grid.to(x.device, x.dtype), size=x.shape[-2:], mode="bicubic", align_corners=True)
    return (x + 2.0 * field).clamp(-1.0, 1.0)


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


def sibling_indices(anchors: np.ndarray, n_images: int, n_versions: int, rng: np.random.Generator) -> np.ndarray:
    """For indices ``anchors`` into a pool of ``n_versions`` stacked versions of ``n_images`` images (index
    ``v * n_images + i``: version ``v`` of image ``i``, as :func:`_training_pool` stacks x and its exact
    counterfactuals), the index of another version of the same image, drawn uniformly among the other
    ``n_versions - 1``."""
    anchors = np.asarray(anchors)
    version, image = np.divmod(anchors, n_images)
    other = (version + rng.integers(1, n_versions, size=len(anchors))) % n_versions
    return other * n_images + image


def invariance_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
    """Mean symmetric KL between the Bernoulli readings ``sigmoid(logits_a)`` and ``sigmoid(logits_b)``
    (each ``(B, P)``) over the entries where ``shared`` (``(B, P)`` bool or 0/1: the pair shares that
    parent) holds; 0 if none does. For Bernoullis ``KL(p||q) + KL(q||p) = (p - q) (logit p - logit q)``."""
    shared = shared.to(logits_a.dtype)
    skl = (torch.sigmoid(logits_a) - torch.sigmoid(logits_b)) * (logits_a - logits_b)
    return (skl * shared).sum() / shared.sum().clamp(min=1.0)


class ParentClassifier(nn.Module):
    """``(B, 1, H, W)`` in [-1, 1] -> ``(B, 3)`` logits for (sex, scanner, effusion).

    Four stride-2 conv-BN-ReLU stages (widths ``width * (1, 2, 4, 4)``), global average
    pooling, one linear layer. With ``effusion_lse = r > 0`` the effusion logit is instead the
    log-sum-exp pooling of the linear layer's logits at every location of the last feature map,
    ``(1/r) log mean_ij exp(r l_ij)`` (Wang et al., CVPR 2017, ChestX-ray8's weakly supervised
    localisation): between the mean (r -> 0, the average pooling above) and the max (r -> inf), so the
    reading, and the gradient it sends back, rests on the locations with the most evidence of fluid.
    """

    def __init__(self, width: int = 16, n_outputs: int = len(PARENTS), effusion_lse: float = 0.0):
        super().__init__()
        self.config = dict(width=int(width), n_outputs=int(n_outputs))
        self.effusion_lse = float(effusion_lse)
        if self.effusion_lse > 0:  # 0 keeps the config (and the checkpoints) of the predictors before the option
            self.config["effusion_lse"] = self.effusion_lse
        chans = [1, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        if self.effusion_lse <= 0:
            return self.head(F.adaptive_avg_pool2d(f, 1).flatten(1))
        maps = self.head(f.flatten(2).transpose(1, 2))  # (B, locations, outputs): the head at every location
        r, e = self.effusion_lse, PARENTS.index("effusion")
        lse = (torch.logsumexp(r * maps[..., e], dim=1) - math.log(maps.shape[1])) / r
        out = maps.mean(1)
        return torch.cat([out[:, :e], lse[:, None], out[:, e + 1:]], 1)


ROLES = {"teacher": "parents", "judge": "judge"}  # role -> the run's label


def classifier_run(profile: Profile, role: str = "teacher", lr: float = 1e-3) -> Run:
    """The parent predictors' run (``classifiers.pt``) of ``role`` (``teacher`` or ``judge``, see the
    module docstring); its key covers the settings below and the data. Width and epochs are the role's
    own: ``hvae.classifier_width`` and ``hvae.classifier_epochs`` for the teacher, ``hvae.judge_width`` and
    ``hvae.judge_epochs`` for the judge."""
    if role not in ROLES:
        raise ValueError(f"unknown predictor role {role!r}; choose one of {list(ROLES)}")
    hv = profile.hvae
    aug = hv.classifier_augment
    judge = role == "judge"
    settings = dict(epochs=hv.judge_epochs if judge else hv.classifier_epochs, batch_size=hv.batch_size,
                    width=hv.judge_width if judge else hv.classifier_width, lr=lr,
                    balance="scanner_x_effusion", augment=aug,
                    geometry=dataclasses.asdict(AUGMENT) if aug != "none" else None,
                    photometric=(dict(dataclasses.asdict(PHOTOMETRIC), share=PHOTOMETRIC_SHARE) if aug == "views"
                                 else None),
                    image_size=profile.data.image_size, seed=profile.seed)
    if not judge and hv.classifier_field > 0:  # 0 keeps the key of the teacher before the setting
        settings.update(field=dict(sd=float(hv.classifier_field), share=FIELD_SHARE, grid=FIELD_GRID))
    if not judge and hv.classifier_lse > 0:  # likewise
        settings.update(effusion_lse=float(hv.classifier_lse))
    if not judge and hv.classifier_haze > 0:  # likewise
        settings.update(haze=dict(sd=float(hv.classifier_haze), share=HAZE_SHARE, blur=HAZE_BLUR))
    if judge:  # the teacher's settings are unchanged (its runs stay valid)
        settings.update(role="judge", exact_counterfactuals=True, seed_offset=1)
        if hv.judge_invariance > 0:  # 0 keeps the key of the judge before the term
            settings.update(invariance=float(hv.judge_invariance))
    return Run("classifiers", ROLES[role], settings, runs_dir(profile.name), {"data": data_run(profile, "pretrain")},
               remake=f"python -m cfcl.classifiers {profile.cli()}{' --role judge' if role == 'judge' else ''}"
                      f"  (or: make hvae {profile.make_args()})")


def _training_pool(train, role: str) -> tuple[np.ndarray, pd.DataFrame]:
    """The images a predictor learns from and their parents: the factual images, and for the judge also
    their exact counterfactuals (each with its intervened parents) where the source has them."""
    images, parents = [np.asarray(train.images)], [train.parents[list(PARENTS)].reset_index(drop=True)]
    if role == "judge" and train.counterfactuals is not None:
        from cfcl.parents import intervene

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
    batch, whose scanner labels are left out) or ``"none"``; the teacher with ``hvae.classifier_field`` > 0
    also gets :func:`smooth_field` on a random :data:`FIELD_SHARE` of each batch (all heads trained). A
    finished run is verified and returned; an
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
        model = ParentClassifier(settings["width"], effusion_lse=settings.get("effusion_lse", 0.0)).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, foreach=True)
        epoch, seconds = 0, 0.0
        last = run.path("last.pt")
        ck = resume(run, model=model, optimizer=opt)
        if ck is not None:
            epoch, seconds = int(ck["epoch"]), float(ck.get("seconds", 0.0))
        train = load_split(profile, "pretrain")
        images, parents = _training_pool(train, role)
        lungs = torch.from_numpy(np.asarray(train.silver) > 0)[:, None] if "haze" in settings else None
        pa = parents_tensor(parents).to(device)
        cells = 2 * parents["scanner"].to_numpy() + parents["effusion"].to_numpy()
        bs = profile.hvae.batch_size
        n_batches = math.ceil(len(train) / bs)  # the same compute per epoch for both roles
        versions = len(images) // len(train)
        invariance = float(settings.get("invariance", 0.0)) if versions > 1 else 0.0
        bar = tqdm(total=(settings["epochs"] - epoch) * n_batches,
                   desc=f"parent predictors, {role} [{profile.name}]", disable=not progress, leave=False)
        while epoch < settings["epochs"]:
            model.train()
            rng = np.random.default_rng([seed, 7, epoch])
            gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
            if invariance > 0:  # pairs: half the batch balanced over the cells, half their siblings
                batches = cell_batches(cells, bs // 2, n_batches, rng)
                batches = [np.concatenate([a, sibling_indices(a, len(train), versions, rng)]) for a in batches]
            else:
                batches = [np.sort(idx) for idx in cell_batches(cells, bs, n_batches, rng)]
            for idx in batches:
                x = to_model_space(images[idx]).to(device)
                weight = torch.ones(len(idx), len(PARENTS), device=device)
                if lungs is not None:  # before the warp, where the silver masks fit the images
                    on = torch.rand(len(idx), generator=gen) < settings["haze"]["share"]
                    if bool(on.any()):
                        x, sel = x.clone(), torch.as_tensor(idx)[on]
                        x[on.to(device)] = lung_haze(x[on.to(device)], lungs[sel].to(device), settings["haze"]["sd"], gen)
                if settings["augment"] == "geometry":
                    x = augment(x, gen)
                elif settings["augment"] == "views":
                    x, pho = augment_views(x, gen)
                    weight[pho.to(device), PARENTS.index("scanner")] = 0.0
                if "field" in settings:
                    on = (torch.rand(len(idx), generator=gen) < settings["field"]["share"]).to(device)
                    if bool(on.any()):
                        x = x.clone()
                        x[on] = smooth_field(x[on], settings["field"]["sd"], gen)
                logits = model(x)
                loss = (F.binary_cross_entropy_with_logits(logits, pa[idx], reduction="none") * weight).sum(0)
                loss = (loss / weight.sum(0).clamp(min=1)).mean()  # mean per head, then over heads
                if invariance > 0:
                    h = len(idx) // 2
                    shared = (pa[idx[:h]] == pa[idx[h:]]) & (weight[:h] > 0) & (weight[h:] > 0)
                    loss = loss + invariance * invariance_loss(logits[:h], logits[h:], shared)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
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
    from cfcl.parents import intervene

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
    """``python -m cfcl.classifiers --profile cpu [--set ...]``: train (or verify) the parent predictors."""
    parser = profile_parser("python -m cfcl.classifiers", "Train the parent predictors.")
    parser.add_argument("--role", default="teacher", choices=list(ROLES),
                        help="teacher: taught counterfactual fine-tuning; judge: measures effectiveness")
    args = parser.parse_args(argv)
    run = train_classifiers(profile_of(args), role=args.role)
    print(f"parent predictors ({args.role}): {run.folder}")


if __name__ == "__main__":
    main()
