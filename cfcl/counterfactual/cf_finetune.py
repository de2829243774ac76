"""Counterfactual fine-tuning of the HVAE (De Sousa Ribeiro et al., ICML 2023; causal-gen
``src/chest_xray/pgm/train_cf.py`` and ``dscm.py``; REFERENCES section 2).

An HVAE trained on the ELBO alone may ignore the parents where the latents already carry the
same information: abducting ``z`` from an image with fluid and decoding with ``effusion = 0``
then gives the fluid back (do(effusion) was a no-op at the cpu profile). Counterfactual
fine-tuning makes the parents matter. Starting from the ELBO run's EMA weights, every step:

1. draws a batch of factual images, ``hvae.cf_effusion_fraction`` of them with effusion (so
   do(effusion) removes fluid as often as it adds it), and one intervention per image:
   do(effusion) with probability ``hvae.cf_effusion_weight``, do(scanner) and do(both) sharing
   the rest; every intervention flips its binary parent(s);
2. abducts ``z ~ q(z | x, pa)`` (posterior means, the abduction of generation) **with its
   gradient**, decodes ``(loc, scale)`` with ``pa`` and ``(cf_loc, cf_scale)`` with ``pa*`` and forms
   ``x_cf = clamp(cf_loc + cf_scale * (x - loc) / scale, -1, 1)`` (:meth:`HVAE.counterfactual`);
3. minimises the frozen parent predictors' binary cross-entropy on ``x_cf`` summed over every
   parent: the intervened ones at their new value, the others kept at the predictors' own reading of
   ``x`` (causal-gen keeps them at their label; an imperfect head is then asked to keep what it reads
   rather than to exaggerate the label), the terms summed with weight 1 as causal-gen's; with
   ``hvae.cf_augment`` the predictors read ``x_cf`` through a random warp, as in their training, so the
   HVAE cannot satisfy them with a fixed adversarial pixel pattern; plus ``hvae.cf_cycle``
   times the mean ``|x_back - x|``, ``x_back`` the counterfactual of ``x_cf`` back to the factual parents
   (:func:`cycle_error`: reversibility, trained; not in causal-gen, which measures it only; on at the
   ``cpu`` and ``smoke`` profiles, off at ``paper``, the anchors'), under the constraint
   that the negative ELBO of the factual batch stays at ``eps`` = the ELBO model's loss on the
   training split (weighted as the batches are) + ``hvae.cf_elbo_slack``:

   ``loss = aux - (lambda - damping * stopgrad(eps - elbo)) * (eps - elbo)``

   with the Lagrange multiplier ``lambda >= 0`` updated by gradient *ascent* (Adam, maximise,
   ``hvae.cf_lr_lagrange``; it rises while the constraint is violated and returns to 0 while it
   holds) and the damping term (``hvae.cf_damping``) pulling the ELBO back to ``eps`` from both sides
   (the modified differential method of multipliers, as causal-gen).

AdamW (``hvae.cf_lr``), gradient-norm clipping and skipping (``hvae.grad_clip``, ``hvae.grad_skip``),
and an EMA of the weights (``hvae.ema_rate`` with the warm-up of :func:`cfcl.counterfactual.hvae_train.ema_rate_at`);
the EMA weights draw the counterfactuals.

The fine-tuned model is its own run of the run layer (:mod:`cfcl.runs`),
``runs/<profile>/hvae_cf/hvae_cf-<key>/`` with ``hvae_cf.pt`` and ``log.csv`` (one row per step),
keyed by its settings, the ELBO run it starts from, the parent predictors' run and the data. Every
random draw of a step comes from ``(seed, step)`` (and ``hvae.cf_replicate`` when > 0: another
fine-tuning seed from the same ELBO model and predictors, to measure the fine-tuning's seed spread), so a
run interrupted after any checkpoint (``last.pt``, every tenth of the run) resumes exactly.
``hvae.cf_finetune_steps = 0`` turns it off: the ELBO run then draws the counterfactuals
(:func:`counterfactual_model_run`).
``python -m cfcl.counterfactual.cf_finetune --profile cpu [--set ...]``.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.config import INTERVENED_PARENTS, INTERVENTIONS, PARENTS, Profile
from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.hvae_train import WEIGHT_DECAY, ema_rate_at, ema_update, hvae_run, load_hvae
from cfcl.counterfactual.parents import parents_tensor, to_model_space
from cfcl.counterfactual.predictors import augment as warp_like_predictors
from cfcl.counterfactual.predictors import load_classifiers
from cfcl.data import load_split
from cfcl.device import default_device
from cfcl.optim import optimiser_step
from cfcl.paths import atomic_path
from cfcl.progress import tqdm
from cfcl.read.hvae import (EPS_IMAGES, FIXED, cf_finetune_run, cf_settings,  # noqa: F401  (re-exported)
                            counterfactual_model_run, elbo_only)
from cfcl.runs import Run, load_checkpoint, resume, save_checkpoint

CHECKPOINT_NAME = "hvae_cf.pt"
#: ``FLIPS[k, j] = 1`` where intervention ``INTERVENTIONS[k]`` flips parent ``PARENTS[j]``.
FLIPS = torch.tensor([[float(p in INTERVENED_PARENTS[k]) for p in PARENTS] for k in INTERVENTIONS])
LOG_COLUMNS = ("step", "loss", "aux", *(f"aux_{p}" for p in PARENTS), "cycle", "elbo", "nll", "kl", "eps",
               "lambda", "grad_norm", "skipped")


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


def load_counterfactual_model(profile: Profile, ema: bool = True) -> HVAE:
    """The HVAE counterfactuals are drawn from (EMA weights by default), in eval mode, verified:
    the fine-tuned model, or the ELBO one with ``hvae.cf_finetune_steps = 0``.
    :class:`cfcl.runs.MissingRunError` naming the command when it is not made yet."""
    if profile.hvae.cf_finetune_steps == 0:
        return load_hvae(profile, ema=ema)
    ck = load_checkpoint(cf_finetune_run(profile).require().artifact(CHECKPOINT_NAME))
    model = HVAE.from_config(ck["model_config"])
    model.load_state_dict(ck["ema" if ema else "model"])
    return model.eval()


def read_cf_log(profile: Profile) -> pd.DataFrame:
    """The per-step log of the profile's (finished) fine-tuning run."""
    return pd.read_csv(cf_finetune_run(profile).require().artifact("log.csv"))


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def flip_parents(pa: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Counterfactual parents: ``pa (B, P)`` with the parents of intervention ``INTERVENTIONS[which[b]]``
    flipped in row ``b``."""
    mask = FLIPS[which]
    return pa + mask * (1.0 - 2.0 * pa)


def draw_batch(effusion: np.ndarray, batch_size: int, fraction: float, effusion_weight: float,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (sorted) of one fine-tuning batch with ``round(fraction * batch_size)`` effusion
    images, and one intervention (an index into ``INTERVENTIONS``) per image: do(effusion) with
    probability ``effusion_weight``, do(scanner) and do(both) with half the rest each."""
    effusion = np.asarray(effusion).astype(bool)
    pos, neg = np.flatnonzero(effusion), np.flatnonzero(~effusion)
    if fraction <= 0 or len(pos) == 0 or len(neg) == 0:
        idx = rng.choice(len(effusion), batch_size, replace=len(effusion) < batch_size)
    else:
        k = min(batch_size - 1, max(1, round(fraction * batch_size)))
        idx = np.concatenate([rng.choice(pos, k, replace=len(pos) < k),
                              rng.choice(neg, batch_size - k, replace=len(neg) < batch_size - k)])
    probs = np.array([(1 - effusion_weight) / 2 if k != "effusion" else effusion_weight for k in INTERVENTIONS])
    which = rng.choice(len(INTERVENTIONS), batch_size, p=probs / probs.sum())
    order = np.argsort(idx, kind="stable")
    return idx[order], which[order]


@torch.no_grad()
def elbo_constraint(model: HVAE, images: np.ndarray, pa: torch.Tensor, beta: float, fraction: float,
                    slack: float = 0.0, batch_size: int = 64, seed: int = 0, max_images: int = EPS_IMAGES) -> float:
    """``eps``: the negative ELBO (nats per pixel) of ``model`` on the training images (up to
    ``max_images``, a seeded draw), weighted as the fine-tuning batches are (``fraction`` of
    effusion images), plus ``slack``. Deterministic for a seed."""
    model.eval()
    device = next(model.parameters()).device
    n = len(images)
    rng = np.random.default_rng([seed, 29])
    sel = np.sort(rng.choice(n, max_images, replace=False)) if n > max_images else np.arange(n)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for lo in range(0, len(sel), batch_size):
        b = sel[lo:lo + batch_size]
        losses.append(model(to_model_space(images[b]).to(device), pa[b].to(device), beta=beta, generator=g,
                            per_image=True)["loss"])
    loss = torch.cat(losses).double().cpu().numpy()
    eff = pa[sel, PARENTS.index("effusion")].numpy() > 0.5
    if fraction > 0 and eff.any() and (~eff).any():
        value = fraction * loss[eff].mean() + (1 - fraction) * loss[~eff].mean()
    else:
        value = loss.mean()
    return float(value) + float(slack)


@dataclass(frozen=True)
class CfStepConfig:
    """The settings of a counterfactual fine-tuning step (:func:`cf_step`), built once per run from the
    profile (:meth:`from_profile`).

    ``beta``: the KL weight of the ELBO (``hvae.beta``); ``damping``: the damping of the multiplier
    (``hvae.cf_damping``); ``grad_clip``, ``grad_skip``: the HVAE's gradient norm is clipped to the first and
    the step skipped at or above the second (``hvae.grad_clip``, ``hvae.grad_skip``); ``ema_rate``: the EMA
    rate before warm-up (``hvae.ema_rate``); ``augment``: the predictors read ``x_cf`` through a random warp
    (``hvae.cf_augment``); ``cycle``: the weight of the cycle term (``hvae.cf_cycle``).
    """

    beta: float
    damping: float
    grad_clip: float
    grad_skip: float
    ema_rate: float
    augment: bool = False
    cycle: float = 0.0

    @classmethod
    def from_profile(cls, profile: Profile) -> "CfStepConfig":
        hv = profile.hvae
        return cls(beta=hv.beta, damping=hv.cf_damping, grad_clip=hv.grad_clip, grad_skip=hv.grad_skip,
                   ema_rate=hv.ema_rate, augment=hv.cf_augment, cycle=hv.cf_cycle)


def cf_step(model: HVAE, ema: HVAE, predictor: nn.Module, opt: torch.optim.Optimizer,
            lag_opt: torch.optim.Optimizer, lmbda: torch.Tensor, x: torch.Tensor, pa: torch.Tensor,
            cf_pa: torch.Tensor, eps: float, cfg: CfStepConfig, *, step: int | None = None,
            generator: torch.Generator | None = None) -> dict[str, float]:
    """One step of counterfactual fine-tuning (see the module docstring) on ``x (B, 1, H, W)`` in
    [-1, 1] with parents ``pa`` and counterfactual parents ``cf_pa`` ``(B, P)``, with the settings
    ``cfg`` (:class:`CfStepConfig`). ``predictor`` is
    frozen (eval mode, no gradient to its weights). The targets of the intervened parents are their
    counterfactual values; those of the others are the frozen predictors' own probabilities on ``x``
    (keep what the predictor reads, whatever its accuracy); the per-parent means over the batch are
    logged as ``aux_<parent>`` and summed.
    ``cfg.cycle``: weight of the mean ``|x_back - x|``, ``x_back`` the counterfactual of ``x_cf`` (abducted
    under ``cf_pa``, with its gradient) back to ``pa`` (:func:`cycle_error`; reversibility, trained).
    ``lmbda`` is the ``(1,)`` multiplier that
    ``lag_opt`` maximises (clamped at 0). Skipped (no update of the HVAE, the multiplier or the
    EMA) when the HVAE's gradient norm is not finite or ``>= cfg.grad_skip``. With ``step`` the EMA rate
    warms up (:func:`ema_rate_at`).

    Returns floats ``loss``, ``aux`` (summed over parents), ``aux_<parent>``, ``elbo`` (the
    negative ELBO, nats per pixel), ``nll``, ``kl``, ``eps``, ``lambda`` (after the step),
    ``grad_norm`` and ``skipped``."""
    model.train()
    predictor.eval()
    acts = model.encoder(x)
    out = model(x, pa, beta=cfg.beta, generator=generator, acts=acts)
    x_cf = model.counterfactual(x, pa, cf_pa, t=0.0, acts=acts)
    seen = warp_like_predictors(x_cf, generator) if cfg.augment else x_cf
    with torch.no_grad():
        target = torch.where(cf_pa != pa, cf_pa, torch.sigmoid(predictor(x)))
    per_parent = F.binary_cross_entropy_with_logits(predictor(seen), target, reduction="none").mean(0)
    aux = per_parent.sum()
    back_err = torch.zeros((), device=x.device)
    if cfg.cycle > 0:  # reversibility: x_cf taken back to the factual parents should be x
        back_err = cycle_error(model, x, x_cf, pa, cf_pa).mean()
        aux = aux + cfg.cycle * back_err
    gap = eps - out["loss"]
    loss = aux - (lmbda - cfg.damping * gap.detach()) * gap
    loss = loss.sum()
    grad_norm, stepped = optimiser_step(loss, (opt, lag_opt), model.parameters(), clip=cfg.grad_clip,
                                        skip=cfg.grad_skip)
    skipped = not stepped
    if stepped:
        with torch.no_grad():
            lmbda.clamp_(min=0.0)
        ema_update(ema, model, cfg.ema_rate if step is None else ema_rate_at(cfg.ema_rate, step))
    opt.zero_grad(set_to_none=True)
    lag_opt.zero_grad(set_to_none=True)
    res = dict(loss=float(loss.detach()), aux=float(aux.detach()),
               **{f"aux_{p}": float(v) for p, v in zip(PARENTS, per_parent.detach())},
               elbo=float(out["loss"].detach()), nll=float(out["nll"].detach()), kl=float(out["kl"].detach()),
               eps=float(eps), grad_norm=grad_norm, skipped=float(skipped), cycle=float(back_err.detach()))
    res["lambda"] = float(lmbda.detach())
    return res


def cycle_error(model: HVAE, x: torch.Tensor, x_cf: torch.Tensor, pa: torch.Tensor,
                cf_pa: torch.Tensor) -> torch.Tensor:
    """Per-image ``(B,)`` mean ``|x_back - x|`` (in [-1, 1] units), ``x_back`` the counterfactual of
    ``x_cf`` under ``cf_pa`` back to ``pa`` (:meth:`HVAE.counterfactual`, with its gradient): the
    reversibility of notebook 02 (there in grey levels, on the generated views), as a training term."""
    back = model.counterfactual(x_cf, cf_pa, pa, t=0.0)
    return (back - x).abs().mean(dim=(1, 2, 3))


def make_optimizers(model: HVAE, lmbda: torch.Tensor, lr: float, lr_lagrange: float):
    """AdamW for the HVAE (weight decay as its ELBO training) and Adam *maximising* the multiplier
    (no weight decay), as causal-gen's train_cf.py."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)
    lag_opt = torch.optim.AdamW([lmbda], lr=lr_lagrange, weight_decay=0.0, maximize=True)
    return opt, lag_opt


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def finetune_counterfactuals(profile: Profile, progress: bool = True, max_steps: int | None = None) -> Run:
    """Fine-tune the profile's HVAE for counterfactuals (see the module docstring); return the run.

    Needs the ELBO run and the parent predictors (a :class:`cfcl.runs.MissingRunError` names the
    command that makes each; nothing upstream is trained here). A finished run is verified and
    returned without work; an interrupted one resumes from ``last.pt``. ``max_steps`` stops after
    that many steps *in this call* (the run is then unfinished). With ``hvae.cf_finetune_steps = 0``
    there is nothing to do: the ELBO run is returned (verified).
    """
    if profile.hvae.cf_finetune_steps == 0:
        return hvae_run(profile).require()
    run = cf_finetune_run(profile)
    if run.is_finished():
        return run.require()
    for up in run.upstream.values():
        up.require()
    with run.claim():
        if run.is_finished():
            return run.require()
        return _finetune(profile, run, progress, max_steps)


def _finetune(profile: Profile, run: Run, progress: bool, max_steps: int | None) -> Run:
    hv = profile.hvae
    started = time.perf_counter()
    start = load_checkpoint(run.upstream["hvae"].artifact("hvae.pt"))
    device = default_device()
    model = HVAE.from_config(start["model_config"])
    model.load_state_dict(start["ema"])
    model.to(device)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    predictor = load_classifiers(profile).to(device)
    for p in predictor.parameters():
        p.requires_grad_(False)
    lmbda = nn.Parameter(torch.zeros(1, device=device))
    opt, lag_opt = make_optimizers(model, lmbda, hv.cf_lr, hv.cf_lr_lagrange)
    train = load_split(profile, "pretrain")
    pa_all = parents_tensor(train.parents)
    effusion = train.parents["effusion"].to_numpy()

    step, seconds, rows, eps = 0, 0.0, [], None
    last = run.path("last.pt")
    ck = resume(run, model=model, ema=ema, optimizer=opt, lagrange_optimizer=lag_opt)
    if ck is not None:
        with torch.no_grad():
            lmbda.copy_(ck["lambda"])
        step, seconds, eps = int(ck["step"]), float(ck["seconds"]), float(ck["eps"])
        if run.path("log.csv").exists():
            rows = pd.read_csv(run.path("log.csv")).query("step <= @step").to_dict("records")
    if eps is None:
        eps = elbo_constraint(model, train.images, pa_all, hv.beta, hv.cf_effusion_fraction, hv.cf_elbo_slack,
                              batch_size=max(hv.batch_size, 64), seed=profile.seed)

    step_cfg = CfStepConfig.from_profile(profile)
    total = hv.cf_finetune_steps
    stop = total if max_steps is None else min(total, step + max_steps)
    every = max(1, total // 10)
    bar = tqdm(total=stop - step, desc=f"HVAE counterfactual fine-tuning [{profile.name}]", disable=not progress,
               leave=False)
    t0 = started

    def save_state() -> None:
        with atomic_path(run.path("log.csv")) as tmp:
            pd.DataFrame(rows, columns=list(LOG_COLUMNS)).to_csv(tmp, index=False)
        save_checkpoint(dict(model=model.state_dict(), ema=ema.state_dict(), optimizer=opt.state_dict(),
                             lagrange_optimizer=lag_opt.state_dict(), **{"lambda": lmbda.detach().clone()},
                             step=step, eps=eps, seconds=seconds + time.perf_counter() - t0), last)

    while step < stop:
        rng = np.random.default_rng([profile.seed, 23, step] + ([hv.cf_replicate] if hv.cf_replicate else []))
        idx, which = draw_batch(effusion, hv.batch_size, hv.cf_effusion_fraction, hv.cf_effusion_weight, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2 ** 62)))
        pa = pa_all[idx]
        cf_pa = flip_parents(pa, torch.as_tensor(which)).to(device)
        x, pa = to_model_space(train.images[idx]).to(device), pa.to(device)
        out = cf_step(model, ema, predictor, opt, lag_opt, lmbda, x, pa, cf_pa, eps, step_cfg, step=step,
                      generator=gen)
        step += 1
        rows.append(dict(step=step, **{k: out[k] for k in LOG_COLUMNS if k != "step"}))
        bar.update(1)
        bar.set_postfix(aux=f"{out['aux']:.3f}", elbo=f"{out['elbo']:.3f}", eps=f"{eps:.3f}",
                        lam=f"{out['lambda']:.2f}")
        if step % every == 0 or step == stop:
            save_state()
    bar.close()
    if step < total:
        return run
    seconds += time.perf_counter() - t0
    save_checkpoint(dict(model_config=model.config, ema=ema.state_dict(), model=model.state_dict(),
                         **{"lambda": float(lmbda.detach())}, eps=eps, steps=step), run.path(CHECKPOINT_NAME))
    tail = pd.DataFrame(rows).tail(max(1, total // 10))
    run.finish([CHECKPOINT_NAME, "log.csv"], seconds,
               extra={"eps": eps, "final": {k: float(tail[k].mean()) for k in ("aux", "elbo", "lambda")},
                      "skipped_steps": int(pd.DataFrame(rows)["skipped"].sum())})
    last.unlink(missing_ok=True)
    return run


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """``python -m cfcl.counterfactual.cf_finetune --profile cpu [--set ...]``: fine-tune (or verify) the HVAE
    for counterfactuals (the ELBO run and the parent predictors must be made)."""
    ap = profile_parser("python -m cfcl.counterfactual.cf_finetune", main.__doc__, threads=True)
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in this call")
    args = ap.parse_args(argv)
    run = finetune_counterfactuals(profile_of(args), max_steps=args.max_steps)
    print(f"counterfactual HVAE run: {run.folder}" + ("" if run.is_finished() else " (unfinished)"))


if __name__ == "__main__":
    main()
