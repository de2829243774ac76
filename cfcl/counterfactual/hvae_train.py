"""Training the counterfactual HVAE (paper section 2.1): ELBO, EMA, resumable checkpoints, one run.

AdamW with linear warm-up, EMA of the weights (warming up, :func:`ema_rate_at`), gradient-norm
clipping, and skipping of steps whose gradient norm exceeds ``grad_skip`` (or is not finite), as
causal-gen does. Batches oversample effusion to ``hvae.effusion_oversample`` of each batch
(REFERENCES section 3: PE is 2.5 % of PadChest).

The trained model is one run of the run layer (:mod:`cfcl.runs`): ``runs/<profile>/hvae/hvae-<key>/``
with ``hvae.pt`` (model configuration, EMA and raw weights), ``log.csv`` (per epoch: train and
validation loss, skipped steps, seconds) and ``samples/epoch_XXX.png``; the key covers the HVAE's
training settings, the image size, the seed and the data. While training, ``last.pt`` holds the
full state after every epoch (weights, EMA, optimiser, noise generator), so a killed run resumes
exactly; it is removed when the run finishes. ``python -m cfcl.counterfactual.hvae_train --profile cpu [--set ...]``.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.config import Profile
from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.parents import PARENT_SETTINGS, oversampled_batches, parents_tensor, to_model_space, to_uint8
from cfcl.data import ChestSplit, load_split
from cfcl.device import default_device
from cfcl.optim import optimiser_step
from cfcl.paths import atomic_path
from cfcl.progress import tqdm
from cfcl.read.hvae import NOT_TRAINING, WARMUP_STEPS, WEIGHT_DECAY, hvae_run  # noqa: F401  (re-exported)
from cfcl.runs import Run, load_checkpoint, resume, save_checkpoint


# --------------------------------------------------------------------------------------------
# Optimisation pieces
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """``p_ema <- rate * p_ema + (1 - rate) * p`` for every parameter; buffers are copied."""
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.mul_(rate).add_(p.detach(), alpha=1.0 - rate)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


def ema_rate_at(rate: float, step: int) -> float:
    """EMA rate with warm-up, ``min(rate, (1 + step) / (10 + step))`` (as TensorFlow's
    ExponentialMovingAverage with ``num_updates``): a choice, so that the EMA of a short CPU run
    is not dominated by the random initialisation (0.999 averages over ~1,000 steps, about half
    of the cpu profile's run)."""
    return min(rate, (1.0 + step) / (10.0 + step))


def train_step(model: HVAE, ema: HVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor,
               pa: torch.Tensor, beta: float, grad_clip: float, grad_skip: float, ema_rate: float,
               generator: torch.Generator | None = None, step: int | None = None) -> dict[str, float]:
    """One optimisation step. Clips the gradient norm to ``grad_clip``; skips the update
    (no optimizer step, no EMA update) when the pre-clip norm is >= ``grad_skip`` or not finite.
    With ``step`` the EMA rate warms up (:func:`ema_rate_at`), else ``ema_rate`` is used as is.

    Returns floats ``loss``, ``nll``, ``kl``, ``grad_norm`` and ``skipped`` (0/1).
    """
    model.train()
    out = model(x, pa, beta=beta, generator=generator)
    grad_norm, stepped = optimiser_step(out["loss"], optimizer, model.parameters(), clip=grad_clip, skip=grad_skip)
    skipped = not stepped
    if stepped:
        ema_update(ema, model, ema_rate if step is None else ema_rate_at(ema_rate, step))
    optimizer.zero_grad(set_to_none=True)
    return dict(loss=float(out["loss"].detach()), nll=float(out["nll"].detach()), kl=float(out["kl"].detach()),
                grad_norm=grad_norm, skipped=float(skipped))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def build_model(profile: Profile) -> HVAE:
    """A freshly initialised HVAE sized by the profile (seeded by ``profile.seed``)."""
    torch.manual_seed(profile.seed)
    hv = profile.hvae
    return HVAE(profile.data.image_size, hv.widths, hv.z_dims, hv.blocks_per_res, stem_stride=hv.stem_stride)


def load_hvae(profile: Profile, ema: bool = True) -> HVAE:
    """The trained HVAE of ``profile`` (EMA weights by default) in eval mode, verified against its
    manifest; :class:`cfcl.runs.MissingRunError` naming the command if it is not trained yet."""
    run = hvae_run(profile).require()
    ckpt = load_checkpoint(run.artifact("hvae.pt"))
    model = HVAE.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["ema" if ema else "model"])
    return model.eval()


@torch.no_grad()
def evaluate_loss(model: HVAE, split: ChestSplit, beta: float, batch_size: int, seed: int) -> dict[str, float]:
    """Mean loss/nll/kl (nats per pixel) of ``model`` over a split, deterministic for a seed."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    pa_all = parents_tensor(split.parents).to(device)
    totals = dict(loss=0.0, nll=0.0, kl=0.0)
    n = len(split)
    for start in range(0, n, batch_size):
        x = to_model_space(split.images[start:start + batch_size]).to(device)
        out = model(x, pa_all[start:start + batch_size], beta=beta, generator=g)
        for k in totals:
            totals[k] += float(out[k]) * len(x)
    return {k: v / max(n, 1) for k, v in totals.items()}


def save_sample_grid(model: HVAE, path: Path, per_setting: int = 4, t: float = 0.7, seed: int = 0) -> None:
    """PNG: one row per parent setting (sex, scanner, effusion) in PARENT_SETTINGS order,
    ``per_setting`` prior samples each (likelihood means at temperature ``t``)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pa = PARENT_SETTINGS.repeat_interleave(per_setting, 0).to(next(model.parameters()).device)
    imgs = to_uint8(model.sample(pa, t=t, generator=g))
    n, H, W = imgs.shape
    grid = imgs.reshape(len(PARENT_SETTINGS), per_setting, H, W).transpose(0, 2, 1, 3).reshape(len(PARENT_SETTINGS) * H, per_setting * W)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def train_hvae(profile: Profile, progress: bool = True, sample_every: int | None = None,
               max_epochs: int | None = None) -> Run:
    """Train the profile's HVAE on the pretrain split (validated on val); return its run.

    A finished run is verified and returned without work; an interrupted one resumes from
    ``last.pt``. ``max_epochs`` stops after that many epochs *in this call* (to split long runs;
    the run is then unfinished). The EMA model is validated after every epoch; prior samples every
    ``sample_every`` epochs (default ``max(1, epochs // 5)``).
    """
    run = hvae_run(profile)
    if run.is_finished():
        return run.require()
    with run.claim():
        if run.is_finished():
            return run.require()
        return _train(profile, run, progress, sample_every, max_epochs)


def _train(profile: Profile, run: Run, progress: bool, sample_every: int | None, max_epochs: int | None) -> Run:
    hv = profile.hvae
    train, val = load_split(profile, "pretrain"), load_split(profile, "val")
    device = default_device()
    model = build_model(profile).to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=hv.lr, weight_decay=WEIGHT_DECAY, foreach=True)
    gen = torch.Generator().manual_seed(profile.seed + 1)
    epoch, step, seconds, log_rows = 0, 0, 0.0, []
    last = run.path("last.pt")
    ck = resume(run, model=model, ema=ema, optimizer=opt)
    if ck is not None:
        gen.set_state(ck["rng"])
        epoch, step, seconds = int(ck["epoch"]), int(ck["step"]), float(ck.get("seconds", 0.0))
        if run.path("log.csv").exists():
            log_rows = pd.read_csv(run.path("log.csv")).query("epoch <= @epoch").to_dict("records")

    pa_train = parents_tensor(train.parents).to(device)
    effusion = train.parents["effusion"].to_numpy()
    sample_every = sample_every or max(1, hv.epochs // 5)
    steps_per_epoch = math.ceil(len(train) / hv.batch_size)
    last_epoch = hv.epochs if max_epochs is None else min(hv.epochs, epoch + max_epochs)
    bar = tqdm(total=(last_epoch - epoch) * steps_per_epoch, desc=f"HVAE [{profile.name}]",
               disable=not progress, leave=False)
    while epoch < last_epoch:
        rng = np.random.default_rng([profile.seed, epoch])
        sums = dict(loss=0.0, nll=0.0, kl=0.0, skipped=0.0)
        t0 = time.perf_counter()
        batches = oversampled_batches(effusion, hv.batch_size, hv.effusion_oversample, rng)
        for idx in batches:
            idx = np.sort(idx)
            x = to_model_space(train.images[idx]).to(device)
            for group in opt.param_groups:
                group["lr"] = hv.lr * min(1.0, (step + 1) / max(1, WARMUP_STEPS))
            out = train_step(model, ema, opt, x, pa_train[idx], hv.beta, hv.grad_clip, hv.grad_skip,
                             hv.ema_rate, generator=gen, step=step)
            step += 1
            for k in sums:
                sums[k] += out[k]
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{out['loss']:.3f}", kl=f"{out['kl']:.3f}")
        epoch += 1
        val_out = evaluate_loss(ema, val, hv.beta, hv.batch_size, seed=profile.seed + 2)
        n_b = len(batches)
        elapsed = time.perf_counter() - t0
        seconds += elapsed
        log_rows.append(dict(epoch=epoch, step=step, train_loss=sums["loss"] / n_b, train_nll=sums["nll"] / n_b,
                             train_kl=sums["kl"] / n_b, val_loss=val_out["loss"], val_nll=val_out["nll"],
                             val_kl=val_out["kl"], skipped_steps=int(sums["skipped"]), seconds=round(elapsed, 1)))
        with atomic_path(run.path("log.csv")) as tmp:
            pd.DataFrame(log_rows).to_csv(tmp, index=False)
        if epoch % sample_every == 0 or epoch == hv.epochs:
            save_sample_grid(ema, run.path(f"samples/epoch_{epoch:03d}.png"), seed=profile.seed)
        save_checkpoint(dict(model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                             rng=gen.get_state(), epoch=epoch, step=step, seconds=seconds), last)
    bar.close()
    if epoch < hv.epochs:
        return run
    save_checkpoint(dict(model_config=model.config, ema=ema.state_dict(), model=model.state_dict(),
                         epochs=epoch, steps=step), run.path("hvae.pt"))
    samples = sorted(p.relative_to(run.folder).as_posix() for p in run.path("samples").glob("*.png"))
    run.finish(["hvae.pt", "log.csv", *samples], seconds)
    last.unlink(missing_ok=True)
    return run


def read_log(profile: Profile) -> pd.DataFrame:
    """The per-epoch loss log of the profile's (finished) HVAE run."""
    return pd.read_csv(hvae_run(profile).require().artifact("log.csv"))


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cfcl.counterfactual.hvae_train --profile cpu [--set hvae.epochs=5 ...]``: train (or verify)
    the HVAE run."""
    parser = profile_parser("python -m cfcl.counterfactual.hvae_train", "Train the counterfactual HVAE.",
                            set_help="settings, e.g. hvae.epochs=5 seed=1", threads=True)
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs in this call")
    args = parser.parse_args(argv)
    run = train_hvae(profile_of(args), max_epochs=args.max_epochs)
    print(f"HVAE run: {run.folder}" + ("" if run.is_finished() else " (unfinished)"))


if __name__ == "__main__":
    main()
