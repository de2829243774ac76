"""Counterfactual generation with the HVAE, its disk cache (the counterfactual run), and the
counterfactual-source interface of pre-training (paper section 2.1; REFERENCES section 2).

Counterfactual of an image ``x`` with parents ``pa`` under ``do(pa*)`` (abduction, action,
prediction): abduct every latent group from the posterior ``q(z | x, pa)`` (posterior means at
temperature ``t = 0``), decode with ``pa`` to get ``(loc, scale)`` and with ``pa*`` to get
``(cf_loc, cf_scale)``, abduct the pixel noise ``u = (x - loc) / scale`` and return
``x_cf = clamp(cf_loc + cf_scale * u, -1, 1)``. The null intervention returns ``x`` up to float
rounding (identical after uint8 quantisation).

The model is the counterfactually fine-tuned HVAE (:mod:`cfcl.counterfactual.cf_finetune`) when
``hvae.cf_finetune_steps > 0`` (default), else the ELBO-only one; the counterfactual run is keyed by
that model's run, so the two never share counterfactuals.

Three views per image, in the order of ``config.INTERVENTIONS``: do(scanner), do(effusion),
do(scanner, effusion), each flipping the binary parent(s). Their quality is measured in
:mod:`cfcl.counterfactual.quality`.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from cfcl.config import CF_SOURCES, INTERVENTIONS, Profile
from cfcl.counterfactual.cf_finetune import load_counterfactual_model
from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.parents import intervene, parents_tensor, to_model_space, to_uint8
from cfcl.data import load_split
from cfcl.device import default_device
from cfcl.paths import atomic_path
from cfcl.progress import tqdm
from cfcl.read.counterfactuals import ARRAY_NAME, counterfactual_run  # noqa: F401  (re-exported)
from cfcl.runs import Run, reserve


# --------------------------------------------------------------------------------------------
# One batch
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def counterfactual(model: HVAE, x: torch.Tensor, pa: torch.Tensor, cf_pa: torch.Tensor, t: float = 0.0,
                   alpha: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_cf (B, 1, H, W)`` in [-1, 1] for ``x (B, 1, H, W)`` in [-1, 1], ``pa``/``cf_pa (B, 3)``
    (:meth:`cfcl.counterfactual.hvae.HVAE.counterfactual` without gradient, in eval mode).

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
    device = next(model.parameters()).device  # the model's device; the result on x's
    return model.counterfactual(x.to(device), pa.to(device), cf_pa.to(device), t=t, alpha=alpha,
                                generator=generator).to(x.device)


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
# The counterfactual run
# --------------------------------------------------------------------------------------------


def _batch_name(lo: int, hi: int) -> str:
    return f"rows_{lo:08d}_{hi:08d}.npy"


def generate(profile: Profile, split: str = "pretrain", progress: bool = True, t: float = 0.0,
             alpha: float = 1.0, batch_size: int | None = None) -> np.ndarray:
    """HVAE counterfactuals of every image of ``split``: uint8 memmap ``(N, 3, H, W)``.

    Needs the counterfactual HVAE (:func:`cfcl.counterfactual.cf_finetune.load_counterfactual_model`; an error names
    the command that makes it otherwise). Made once, as the run
    :func:`counterfactual_run`: one batch of ``hvae.cf_batch_size`` images per file, so an
    interrupted run resumes with the missing batches only; the batches are then joined into one
    ``.npy`` and the manifest written last. Two processes (or torchrun ranks) asking at once:
    one generates, the other waits for it (the run's lock) and then reads the result.
    """
    run = counterfactual_run(profile, split, t, alpha)
    if not run.is_finished():
        with run.claim():
            if not run.is_finished():
                _generate(profile, run, split, progress, t, alpha, batch_size)
    return np.load(run.require().artifact(ARRAY_NAME), mmap_mode="r")


def _generate(profile: Profile, run: Run, split: str, progress: bool, t: float, alpha: float,
              batch_size: int | None) -> None:
    started = time.perf_counter()
    model = load_counterfactual_model(profile).to(default_device())
    data = load_split(profile, split)
    pa = parents_tensor(data.parents)
    n, (H, W) = len(data), data.images.shape[1:]
    bs = int(batch_size or profile.hvae.cf_batch_size)
    bounds = [(lo, min(lo + bs, n)) for lo in range(0, n, bs)]
    todo = [b for b in bounds if not run.path(_batch_name(*b)).exists()]
    for lo, hi in tqdm(todo, desc=f"counterfactuals {split} [{profile.name}]", disable=not progress, leave=False):
        cf = all_interventions(model, np.asarray(data.images[lo:hi]), pa[lo:hi], t=t, alpha=alpha)
        with atomic_path(run.path(_batch_name(lo, hi))) as tmp, open(tmp, "wb") as f:
            np.save(f, cf)
    with atomic_path(run.path(ARRAY_NAME)) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, len(INTERVENTIONS), H, W))
        reserve(tmp)  # a full disk is an error naming the file now, not a SIGBUS through the map
        for lo, hi in bounds:
            out[lo:hi] = np.load(run.path(_batch_name(lo, hi)))
        out.flush()
        del out
    run.finish([ARRAY_NAME], time.perf_counter() - started,
               extra={"shape": [n, len(INTERVENTIONS), H, W], "interventions": list(INTERVENTIONS)})
    for lo, hi in bounds:
        run.path(_batch_name(lo, hi)).unlink(missing_ok=True)


def get_counterfactuals(profile: Profile, split: str = "pretrain", source: str | None = None) -> np.ndarray:
    """The counterfactual views used by pre-training: uint8 ``(N, 3, H, W)`` in the order of
    ``config.INTERVENTIONS``.

    ``source`` (default ``profile.pretrain.cf_source``): ``"hvae"``, the HVAE's (made by
    :func:`generate`; an error names the command when they are not made yet); ``"oracle"``, the
    data source's exact counterfactuals (the phantom has them; real data does not);
    ``"identity"``, ``x`` itself three times (an ablation: as many views, none counterfactual).
    """
    source = source or profile.pretrain.cf_source
    if source == "hvae":
        run = counterfactual_run(profile, split)
        return np.load(run.require().artifact(ARRAY_NAME), mmap_mode="r")
    data = load_split(profile, split)
    if source == "oracle":
        if data.counterfactuals is None:
            raise ValueError(f"data source {profile.data.source!r} has no oracle counterfactuals for split "
                             f"{split!r}; use pretrain.cf_source='hvae'")
        return data.counterfactuals
    if source == "identity":
        return np.broadcast_to(np.asarray(data.images)[:, None], (len(data), len(INTERVENTIONS)) + data.images.shape[1:])
    raise ValueError(f"unknown counterfactual source {source!r} (setting pretrain.cf_source); choose one of {CF_SOURCES}")
