"""Counterfactual hierarchical VAE (paper section 2.1; REFERENCES section 2).

A conditional VDVAE-style HVAE, as in the counterfactual-generation line of work the paper
follows ("using the same method as the authors", i.e. biomedia-mira causal-gen):

- bottom-up encoder: residual blocks per resolution, average-pool downsampling;
- top-down decoder with one latent group per block at every resolution
  (``widths[i]``/``z_dims[i]`` at resolution ``image_size / stem_stride / 2**i``, rounded up).
  ``stem_stride`` (default 2, a choice for CPU cost: 5x faster at 64 px) folds 2x2 pixel
  blocks into channels at the input (space-to-depth) and unfolds the per-pixel likelihood
  parameters at the output, so the finest latents sit at half the image size, as causal-gen's
  chest models keep their full-resolution decoder blocks deterministic (``z_max_res``);
- conditional prior ``p(z_i | z_<i, pa)`` (``cond_prior``): the parents enter the prior, the
  posterior ``q(z_i | z_<i, x, pa)`` and every latent projection of the decoder;
- discretised-Gaussian pixel likelihood, images scaled to ``[-1, 1]`` with 256 bins;
- loss ``NLL + beta * KL``, both in **nats per pixel** (the KL of all latent groups is summed
  and divided by ``H * W``, the NLL is the mean over pixels);
- AdamW with linear warm-up, EMA of the weights, gradient-norm clipping, and skipping of
  steps whose gradient norm exceeds ``grad_skip`` (or is not finite).

Parents vector ``pa``: ``(sex, scanner, effusion)`` as floats in ``{0, 1}`` (all three are
binary, so one-hot would only duplicate each column); see :func:`parents_tensor`.

Training (:func:`train_hvae`) is cached and resumable: one checkpoint per profile under
``runs_dir(profile) / "hvae"``, loadable with ``torch.load(..., weights_only=True)``.
Run it with ``python -m cfcl.hvae --profile cpu [--set hvae.epochs=5 ...]``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from cfcl.config import PARENTS, Profile, get_profile
from cfcl.data import ChestSplit, load_split
from cfcl.paths import atomic_path, runs_dir

MIN_LOGSCALE = -9.0  # lower bound of every log standard deviation (as causal-gen's EPS)
CHECKPOINT_NAME = "hvae.pt"
LOG_NAME = "log.csv"
DEFAULT_STEM_STRIDE = 2  # until HVAEConfig has a ``stem_stride`` field

# HVAE config fields that do not change the trained model (excluded from the mismatch check).
_NOT_TRAINING = ("classifier_epochs", "cf_batch_size")


# --------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------
def parents_tensor(parents: pd.DataFrame) -> torch.Tensor:
    """``(N, 3)`` float tensor of ``(sex, scanner, effusion)`` in ``{0, 1}`` from a parents frame."""
    missing = [p for p in PARENTS if p not in parents.columns]
    if missing:
        raise KeyError(f"parents DataFrame lacks column(s) {missing}; expected {PARENTS}")
    values = parents[list(PARENTS)].to_numpy()
    if not np.isin(values, (0, 1)).all():
        raise ValueError(f"parents {PARENTS} must be 0/1 integers")
    return torch.as_tensor(values.astype(np.float32))


def to_model_space(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, H, W)`` 0..255 -> float ``(N, 1, H, W)`` in ``[-1, 1]``."""
    arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8:
        raise TypeError(f"images must be uint8 0..255, got {arr.dtype}")
    if arr.ndim != 3:
        raise ValueError(f"images must be (N, H, W), got shape {arr.shape}")
    return torch.from_numpy(arr.astype(np.float32)).unsqueeze(1) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float ``(N, 1, H, W)`` in ``[-1, 1]`` -> uint8 ``(N, H, W)`` (round to the nearest bin)."""
    y = torch.round((x.detach().clamp(-1, 1) + 1.0) * 127.5)
    return y.squeeze(1).to(torch.uint8).cpu().numpy()


def resolutions(image_size: int, levels: int) -> list[int]:
    """Resolution of each level: halve (rounding up) from ``image_size``; e.g. 224 -> ... 7, 4."""
    res = [int(image_size)]
    for _ in range(levels - 1):
        res.append(max(1, math.ceil(res[-1] / 2)))
    return res


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
class Block(nn.Module):
    """GELU -> conv -> GELU -> conv, optionally residual. ``(B, c_in, r, r) -> (B, c_out, r, r)``.

    The hidden width is half the input width (a bottleneck, as VDVAE); 3x3 kernels, or 1x1
    at resolutions of 2 px or below.
    """

    def __init__(self, c_in: int, c_out: int, residual: bool = True, kernel: int = 3):
        super().__init__()
        hidden = max(4, c_in // 2)
        pad = kernel // 2
        self.residual = residual
        self.conv1 = nn.Conv2d(c_in, hidden, kernel, padding=pad)
        self.conv2 = nn.Conv2d(hidden, c_out, kernel, padding=pad)
        self.skip = nn.Conv2d(c_in, c_out, 1) if residual and c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.gelu(self.conv1(F.gelu(x))))
        if not self.residual:
            return out
        return out + (self.skip(x) if self.skip is not None else x)


def _pa_map(pa: torch.Tensor, r: int) -> torch.Tensor:
    """Broadcast ``(B, P)`` parents to ``(B, P, r, r)`` maps."""
    return pa[:, :, None, None].expand(-1, -1, r, r)


def gaussian_kl(q_loc: torch.Tensor, q_logscale: torch.Tensor, p_loc: torch.Tensor,
                p_logscale: torch.Tensor) -> torch.Tensor:
    """Elementwise KL( N(q_loc, e^q_logscale) || N(p_loc, e^p_logscale) ) in nats."""
    return (p_logscale - q_logscale - 0.5
            + 0.5 * (torch.exp(2 * q_logscale) + (q_loc - p_loc) ** 2) * torch.exp(-2 * p_logscale))


def discretized_gaussian_nll(x: torch.Tensor, loc: torch.Tensor, logscale: torch.Tensor,
                             bins: int = 256) -> torch.Tensor:
    """Per-pixel NLL (nats) of ``x`` in ``[-1, 1]`` on ``bins`` equal bins under N(loc, scale).

    The two edge bins take the whole tails (as PixelCNN++ / VDVAE). Where a bin's mass
    underflows (< 1e-5) the density at the bin centre times the bin width is used instead.
    Shapes: all ``(B, 1, H, W)``; returns ``(B, 1, H, W)``.
    """
    half = 1.0 / (bins - 1)  # half a bin width in [-1, 1] units (bin width 2 / (bins - 1))
    inv = torch.exp(-logscale)
    centred = x - loc
    upper = inv * (centred + half)
    lower = inv * (centred - half)
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Phi(upper) - Phi(lower)), stable: log_ndtr(upper) + log1p(-exp(log_ndtr(lower) - log_ndtr(upper)))
    log_cdf_lower = torch.special.log_ndtr(lower)
    diff = (log_cdf_lower - log_cdf_upper).clamp(max=-1e-12)
    log_mid = log_cdf_upper + torch.log(-torch.expm1(diff))
    # for bins in the upper tail the complementary form is more accurate
    diff_sf = (torch.special.log_ndtr(-upper) - log_sf_lower).clamp(max=-1e-12)
    log_mid_sf = log_sf_lower + torch.log(-torch.expm1(diff_sf))
    log_mid = torch.where(centred > 0, log_mid_sf, log_mid)
    log_pdf = -0.5 * (inv * centred) ** 2 - logscale - 0.5 * math.log(2 * math.pi) + math.log(2 * half)
    log_mid = torch.where(log_mid > math.log(1e-5), log_mid, torch.maximum(log_mid, log_pdf))
    edge = 1.0 - half / 2
    log_p = torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_sf_lower, log_mid))
    return -log_p


# --------------------------------------------------------------------------------------------
# Encoder / decoder
# --------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """Bottom-up path: ``x (B, 1, H, W)`` -> one activation ``(B, widths[i], res[i], res[i])`` per level."""

    def __init__(self, widths: Sequence[int], res: Sequence[int], blocks_per_res: int, stem_stride: int = 1):
        super().__init__()
        self.res = list(res)
        self.stem_stride = stem_stride
        self.stem = nn.Conv2d(stem_stride ** 2, widths[0], 3, padding=1)
        self.levels = nn.ModuleList(
            nn.Sequential(*[Block(w, w, kernel=3 if r > 2 else 1) for _ in range(blocks_per_res)])
            for w, r in zip(widths, res))
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 1) for i in range(len(widths) - 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.stem_stride > 1:  # space-to-depth: (B, 1, H, W) -> (B, s*s, H/s, W/s)
            x = F.pixel_unshuffle(x, self.stem_stride)
        h = self.stem(x)
        acts = []
        for i, level in enumerate(self.levels):
            h = level(h)
            acts.append(h)
            if i + 1 < len(self.levels):
                h = self.down[i](F.adaptive_avg_pool2d(h, self.res[i + 1]))
        return acts


class DecoderBlock(nn.Module):
    """One latent group ``z`` of ``z_dim`` channels at one resolution.

    prior ``p(z | h, pa)`` and features from ``[h, pa]`` (cond_prior); posterior
    ``q(z | h, x_enc, pa)``; then ``h <- res(h + prior_features + proj([z, pa]))``.
    """

    def __init__(self, width: int, z_dim: int, n_parents: int, res: int, scale: float):
        super().__init__()
        k = 3 if res > 2 else 1
        self.res, self.z_dim = res, z_dim
        self.prior = Block(width + n_parents, 2 * z_dim + width, residual=False, kernel=k)
        self.posterior = Block(2 * width + n_parents, 2 * z_dim, residual=False, kernel=k)
        self.z_proj = nn.Conv2d(z_dim + n_parents, width, 1)
        self.out = Block(width, width, kernel=k)
        # VDVAE-style initialisation: the prior starts as N(0, I) with no features, and the
        # residual branches are scaled down by sqrt(1 / number of blocks).
        nn.init.zeros_(self.prior.conv2.weight)
        nn.init.zeros_(self.prior.conv2.bias)
        self.z_proj.weight.data *= scale
        self.out.conv2.weight.data *= scale

    def prior_stats(self, h: torch.Tensor, pa: torch.Tensor):
        out = self.prior(torch.cat([h, _pa_map(pa, h.shape[-1])], 1))
        return out[:, :self.z_dim], out[:, self.z_dim:2 * self.z_dim].clamp(min=MIN_LOGSCALE), out[:, 2 * self.z_dim:]

    def posterior_stats(self, h: torch.Tensor, act: torch.Tensor, pa: torch.Tensor):
        q_loc, q_logscale = self.posterior(torch.cat([h, act, _pa_map(pa, h.shape[-1])], 1)).chunk(2, 1)
        return q_loc, q_logscale.clamp(min=MIN_LOGSCALE)

    def update(self, h: torch.Tensor, z: torch.Tensor, feat: torch.Tensor, pa: torch.Tensor) -> torch.Tensor:
        h = h + feat + self.z_proj(torch.cat([z, _pa_map(pa, h.shape[-1])], 1))
        return self.out(h)


class HVAE(nn.Module):
    """Conditional hierarchical VAE (see the module docstring).

    ``widths``/``z_dims``: one entry per resolution level, from the image resolution down
    (level ``i`` at ``resolutions(image_size, L)[i]``); ``blocks_per_res`` encoder blocks and
    latent groups per level. The decoder runs from the coarsest level to the finest.
    """

    def __init__(self, image_size: int, widths: Sequence[int], z_dims: Sequence[int],
                 blocks_per_res: int = 1, n_parents: int = len(PARENTS), std_init: float = 0.1,
                 stem_stride: int = 1):
        super().__init__()
        if stem_stride < 1 or image_size % stem_stride:
            raise ValueError(f"hvae.stem_stride={stem_stride} must be >= 1 and divide data.image_size={image_size}")
        if len(widths) != len(z_dims):
            raise ValueError(f"hvae.widths ({len(widths)} levels) and hvae.z_dims ({len(z_dims)}) differ in length")
        if blocks_per_res < 1:
            raise ValueError(f"hvae.blocks_per_res must be >= 1, got {blocks_per_res}")
        self.config = dict(image_size=int(image_size), widths=[int(w) for w in widths],
                           z_dims=[int(z) for z in z_dims], blocks_per_res=int(blocks_per_res),
                           n_parents=int(n_parents), std_init=float(std_init), stem_stride=int(stem_stride))
        self.res = resolutions(image_size // stem_stride, len(widths))
        self.n_parents = n_parents
        self.stem_stride = stem_stride
        self.encoder = Encoder(widths, self.res, blocks_per_res, stem_stride)
        n_blocks = len(widths) * blocks_per_res
        scale = math.sqrt(1.0 / n_blocks)
        self.blocks = nn.ModuleList()  # top-down order: coarsest level first
        self.block_level: list[int] = []
        for lvl in reversed(range(len(widths))):
            for _ in range(blocks_per_res):
                self.blocks.append(DecoderBlock(widths[lvl], z_dims[lvl], n_parents, self.res[lvl], scale))
                self.block_level.append(lvl)
        self.h0 = nn.Parameter(torch.zeros(1, widths[-1], self.res[-1], self.res[-1]))
        self.up = nn.ModuleList(nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1))
        # pixel head: per-pixel (loc, logscale); with stem_stride s each output location predicts
        # its s*s pixels (depth-to-space), so the finest latent resolution is image_size / s.
        s2 = stem_stride ** 2
        self.x_loc = nn.Conv2d(widths[0], s2, 1)
        self.x_logscale = nn.Conv2d(widths[0], s2, 1)
        nn.init.zeros_(self.x_logscale.weight)
        nn.init.constant_(self.x_logscale.bias, math.log(std_init))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HVAE":
        return cls(**config)

    # ---- decoder ------------------------------------------------------------------------
    def decode(self, pa: torch.Tensor, acts: list[torch.Tensor] | None = None,
               latents: Sequence[torch.Tensor] | None = None, mix: tuple[Sequence[torch.Tensor], float] | None = None,
               t: float = 1.0, generator: torch.Generator | None = None):
        """Run the top-down path. Exactly one way of choosing each ``z_i``:

        - ``acts`` (encoder activations): ``z_i ~ q(z_i | z_<i, x, pa)`` at temperature ``t``
          (``t = 0``: posterior means); returns the per-group KL and the posterior stats;
        - ``latents``: the given ``z_i``;
        - ``mix = (q_locs, alpha)``: ``z_i = alpha * q_loc_i + (1 - alpha) * p_loc_i`` with the
          prior mean under the current parents (causal-gen's mixture abduction at zero temperature);
        - none: ``z_i ~ p(z_i | z_<i, pa)`` at temperature ``t``.

        Returns ``(h (B, widths[0], H, W), stats)`` where ``stats`` is a list (one per group) of
        dicts with ``z``, ``kl`` (if ``acts``), ``q_loc``/``q_logscale`` (if ``acts``).
        """
        B = pa.shape[0]
        h = self.h0.expand(B, -1, -1, -1)
        stats = []
        for i, block in enumerate(self.blocks):
            lvl = self.block_level[i]
            if h.shape[-1] != block.res:
                h = self.up[lvl](F.interpolate(h, size=(block.res, block.res), mode="nearest"))
            p_loc, p_logscale, feat = block.prior_stats(h, pa)
            stat: dict[str, torch.Tensor] = {}
            if acts is not None:
                q_loc, q_logscale = block.posterior_stats(h, acts[lvl], pa)
                z = q_loc + t * torch.exp(q_logscale) * _randn(q_loc, generator) if t > 0 else q_loc
                stat.update(kl=gaussian_kl(q_loc, q_logscale, p_loc, p_logscale), q_loc=q_loc, q_logscale=q_logscale)
            elif latents is not None:
                z = latents[i]
            elif mix is not None:
                q_locs, alpha = mix
                z = alpha * q_locs[i] + (1.0 - alpha) * p_loc if alpha != 1.0 else q_locs[i]
            else:
                z = p_loc + t * torch.exp(p_logscale) * _randn(p_loc, generator) if t > 0 else p_loc
            stat["z"] = z
            stats.append(stat)
            h = block.update(h, z, feat, pa)
        return h, stats

    def pixel_params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, logscale)`` of the pixel likelihood, each ``(B, 1, H, W)``."""
        loc, logscale = self.x_loc(h), self.x_logscale(h)
        if self.stem_stride > 1:
            loc, logscale = F.pixel_shuffle(loc, self.stem_stride), F.pixel_shuffle(logscale, self.stem_stride)
        return loc, logscale.clamp(min=MIN_LOGSCALE)

    # ---- training objective -------------------------------------------------------------
    def forward(self, x: torch.Tensor, pa: torch.Tensor, beta: float = 1.0,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Negative ELBO terms for ``x (B, 1, H, W)`` in [-1, 1], ``pa (B, P)``.

        Returns scalars ``loss = nll + beta * kl``, ``nll`` and ``kl`` (nats per pixel).
        """
        acts = self.encoder(x)
        h, stats = self.decode(pa, acts=acts, t=1.0, generator=generator)
        loc, logscale = self.pixel_params(h)
        nll = discretized_gaussian_nll(x, loc, logscale).mean()
        kl = sum(s["kl"].sum(dim=(1, 2, 3)) for s in stats).mean() / (x.shape[-1] * x.shape[-2])
        return dict(loss=nll + beta * kl, nll=nll, kl=kl)

    # ---- inference helpers --------------------------------------------------------------
    @torch.no_grad()
    def abduct(self, x: torch.Tensor, pa: torch.Tensor, t: float = 0.0,
               generator: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
        """Posterior of every latent group: list (coarse to fine) of dicts ``z``, ``q_loc``,
        ``q_logscale``, ``kl``; ``z`` are posterior means at ``t = 0``. Shapes ``(B, z_dim, r, r)``."""
        _, stats = self.decode(pa, acts=self.encoder(x), t=t, generator=generator)
        return stats

    @torch.no_grad()
    def sample(self, pa: torch.Tensor, t: float = 0.7, generator: torch.Generator | None = None,
               mean: bool = True) -> torch.Tensor:
        """Images from the prior ``p(z | pa)`` at temperature ``t``: ``(B, 1, H, W)`` in [-1, 1]
        (the likelihood mean if ``mean``, else one pixel sample)."""
        h, _ = self.decode(pa, t=t, generator=generator)
        loc, logscale = self.pixel_params(h)
        x = loc if mean else loc + torch.exp(logscale) * _randn(loc, generator)
        return x.clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, pa: torch.Tensor) -> torch.Tensor:
        """Likelihood mean decoded from the posterior means: ``(B, 1, H, W)`` in [-1, 1]."""
        h, _ = self.decode(pa, acts=self.encoder(x), t=0.0)
        return self.pixel_params(h)[0].clamp(-1, 1)


def _randn(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


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
    optimizer.zero_grad(set_to_none=True)
    out = model(x, pa, beta=beta, generator=generator)
    out["loss"].backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    skipped = not math.isfinite(grad_norm) or grad_norm >= grad_skip or not torch.isfinite(out["loss"])
    if not skipped:
        optimizer.step()
        ema_update(ema, model, ema_rate if step is None else ema_rate_at(ema_rate, step))
    optimizer.zero_grad(set_to_none=True)
    return dict(loss=float(out["loss"].detach()), nll=float(out["nll"].detach()), kl=float(out["kl"].detach()),
                grad_norm=grad_norm, skipped=float(skipped))


def oversampled_batches(effusion: np.ndarray, batch_size: int, fraction: float,
                        rng: np.random.Generator) -> list[np.ndarray]:
    """Index batches for one epoch with ``round(fraction * batch_size)`` effusion images each.

    ``ceil(N / batch_size)`` batches; each group (effusion / not) is drawn by walking through
    fresh permutations of itself, so every image is used as evenly as the quota allows. With
    ``fraction <= 0`` or a split holding a single class, a plain shuffle.
    """
    effusion = np.asarray(effusion).astype(bool)
    n = len(effusion)
    n_batches = math.ceil(n / batch_size)
    pos, neg = np.flatnonzero(effusion), np.flatnonzero(~effusion)
    if fraction <= 0 or len(pos) == 0 or len(neg) == 0:
        perm = rng.permutation(n)
        return [perm[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
    k_pos = min(batch_size - 1, max(1, round(fraction * batch_size)))
    k_neg = batch_size - k_pos

    def stream(idx: np.ndarray, total: int) -> np.ndarray:
        reps = math.ceil(total / len(idx))
        return np.concatenate([rng.permutation(idx) for _ in range(reps)])[:total]

    p, q = stream(pos, n_batches * k_pos), stream(neg, n_batches * k_neg)
    batches = [np.concatenate([p[i * k_pos:(i + 1) * k_pos], q[i * k_neg:(i + 1) * k_neg]]) for i in range(n_batches)]
    return [rng.permutation(b) for b in batches]


# --------------------------------------------------------------------------------------------
# Training with checkpoints
# --------------------------------------------------------------------------------------------
def run_dir(profile: Profile) -> Path:
    """Folder of the profile's HVAE run: checkpoint, loss log, samples."""
    return runs_dir(profile.name) / "hvae"


def checkpoint_path(profile: Profile) -> Path:
    return run_dir(profile) / CHECKPOINT_NAME


def training_settings(profile: Profile, weight_decay: float = 0.01, warmup_steps: int = 100) -> dict[str, Any]:
    """Everything that determines the trained model, as a plain dict (stored in the checkpoint)."""
    hv = {k: (list(v) if isinstance(v, tuple) else v)
          for k, v in dataclasses.asdict(profile.hvae).items() if k not in _NOT_TRAINING}
    hv.setdefault("stem_stride", stem_stride(profile))
    return dict(hvae=hv, image_size=profile.data.image_size, data=data_key(profile),
                seed=profile.seed, weight_decay=weight_decay, warmup_steps=warmup_steps)


def data_key(profile: Profile) -> str:
    """Hash of the data the model is trained on: the data config, plus for the phantom its own
    digest (which also covers the phantom's version, so a new phantom is not mistaken for the old)."""
    key = profile.section_hash("data")
    if profile.data.source == "phantom":
        from cfcl.data import phantom

        key += "-" + phantom.config_hash(profile.data)
    return key


def settings_mismatch(old: dict[str, Any], new: dict[str, Any], growable: Sequence[str] = ("hvae.epochs",),
                      prefix: str = "") -> list[str]:
    """Human-readable differences between two nested settings dicts (dotted names), ignoring
    the ``growable`` ones (more epochs just continue training)."""
    diffs = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += settings_mismatch(a, b, growable, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in growable:
            diffs.append(f"{prefix}{key}: checkpoint {a!r} vs requested {b!r}")
    return diffs


def build_model(profile: Profile) -> HVAE:
    """A freshly initialised HVAE sized by the profile (seeded by ``profile.seed``)."""
    torch.manual_seed(profile.seed)
    hv = profile.hvae
    return HVAE(profile.data.image_size, hv.widths, hv.z_dims, hv.blocks_per_res,
                stem_stride=stem_stride(profile))


def stem_stride(profile: Profile) -> int:
    """``hvae.stem_stride`` (default 2: the finest latent level is at half the image size, as
    causal-gen's chest models keep their full-resolution blocks deterministic; pixel detail
    is carried by the abducted pixel noise of a counterfactual anyway)."""
    return int(getattr(profile.hvae, "stem_stride", DEFAULT_STEM_STRIDE))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict (``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no HVAE checkpoint; train it with train_hvae(profile) "
                                f"or `python -m cfcl.hvae --profile NAME`")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_hvae(profile_or_path: Profile | str | Path, ema: bool = True, require_finished: bool = True) -> HVAE:
    """The trained HVAE (EMA weights by default) in eval mode."""
    path = checkpoint_path(profile_or_path) if isinstance(profile_or_path, Profile) else Path(profile_or_path)
    ckpt = load_checkpoint(path)
    if require_finished and not ckpt["finished"]:
        raise RuntimeError(f"{path}: training stopped at epoch {ckpt['epoch']} of "
                           f"{ckpt['settings']['hvae']['epochs']}; resume it with train_hvae(profile)")
    model = HVAE.from_config(ckpt["model_config"])
    model.load_state_dict(ckpt["ema" if ema else "model"])
    return model.eval()


@torch.no_grad()
def evaluate_loss(model: HVAE, split: ChestSplit, beta: float, batch_size: int, seed: int) -> dict[str, float]:
    """Mean loss/nll/kl (nats per pixel) of ``model`` over a split, deterministic for a seed."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    pa_all = parents_tensor(split.parents)
    totals = dict(loss=0.0, nll=0.0, kl=0.0)
    n = len(split)
    for start in range(0, n, batch_size):
        x = to_model_space(split.images[start:start + batch_size])
        out = model(x, pa_all[start:start + batch_size], beta=beta, generator=g)
        for k in totals:
            totals[k] += float(out[k]) * len(x)
    return {k: v / max(n, 1) for k, v in totals.items()}


PARENT_SETTINGS = torch.tensor([[s, c, e] for s in (0, 1) for c in (0, 1) for e in (0, 1)], dtype=torch.float32)


def save_sample_grid(model: HVAE, path: Path, per_setting: int = 4, t: float = 0.7, seed: int = 0) -> None:
    """PNG: one row per parent setting (sex, scanner, effusion) in PARENT_SETTINGS order,
    ``per_setting`` prior samples each (likelihood means at temperature ``t``)."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    pa = PARENT_SETTINGS.repeat_interleave(per_setting, 0)
    imgs = to_uint8(model.sample(pa, t=t, generator=g))
    n, H, W = imgs.shape
    grid = imgs.reshape(len(PARENT_SETTINGS), per_setting, H, W).transpose(0, 2, 1, 3).reshape(len(PARENT_SETTINGS) * H, per_setting * W)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def train_hvae(profile: Profile, progress: bool = True, weight_decay: float = 0.01,
               warmup_steps: int = 100, sample_every: int | None = None,
               max_epochs: int | None = None) -> Path:
    """Train the profile's HVAE on the pretrain split; return the checkpoint path.

    Cached and resumable: a checkpoint (state dicts of model, EMA, optimizer, noise RNG, plus
    plain settings) is written atomically after every epoch; a rerun resumes from it, and is a
    no-op once it is finished. A checkpoint made with different settings is refused with an
    error naming each differing setting (``hvae.epochs`` may grow: training continues).
    ``max_epochs`` stops after that many epochs *in this call* (to split long runs).

    Batches oversample effusion to ``hvae.effusion_oversample`` of each batch (REFERENCES
    section 3: PE is 2.5 % of PadChest). The EMA model is validated on the val split after
    every epoch; losses go to ``log.csv``; prior samples every ``sample_every`` epochs
    (default ``max(1, epochs // 5)``) to ``samples/epoch_XXX.png``.
    """
    hv = profile.hvae
    settings = training_settings(profile, weight_decay, warmup_steps)
    path = checkpoint_path(profile)
    model = build_model(profile)
    ema = copy.deepcopy(model).eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=hv.lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(profile.seed + 1)
    epoch, step, log_rows = 0, 0, []
    if path.exists():
        ckpt = load_checkpoint(path)
        diffs = settings_mismatch(ckpt["settings"], settings)
        if diffs:
            raise ValueError(f"{path} was trained with other settings: " + "; ".join(diffs)
                             + f". Delete {path.parent} to retrain, or use another profile / CFCL_RUNS.")
        if ckpt["epoch"] >= hv.epochs:
            return path
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        gen.set_state(ckpt["rng"])
        epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        log_path = path.parent / LOG_NAME
        if log_path.exists():
            log_rows = pd.read_csv(log_path).query("epoch <= @epoch").to_dict("records")

    train, val = load_split(profile, "pretrain"), load_split(profile, "val")
    pa_train = parents_tensor(train.parents)
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
            x = to_model_space(train.images[idx])
            for group in opt.param_groups:
                group["lr"] = hv.lr * min(1.0, (step + 1) / max(1, warmup_steps))
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
        log_rows.append(dict(epoch=epoch, step=step, train_loss=sums["loss"] / n_b, train_nll=sums["nll"] / n_b,
                             train_kl=sums["kl"] / n_b, val_loss=val_out["loss"], val_nll=val_out["nll"],
                             val_kl=val_out["kl"], skipped_steps=int(sums["skipped"]),
                             seconds=round(time.perf_counter() - t0, 1)))
        ckpt = dict(settings=settings, model_config=model.config, model=model.state_dict(), ema=ema.state_dict(),
                    optimizer=opt.state_dict(), rng=gen.get_state(), epoch=epoch, step=step,
                    finished=epoch >= hv.epochs)
        with atomic_path(path) as tmp:
            torch.save(ckpt, tmp)
        with atomic_path(path.parent / LOG_NAME) as tmp:
            pd.DataFrame(log_rows).to_csv(tmp, index=False)
        if epoch % sample_every == 0 or epoch == hv.epochs:
            save_sample_grid(ema, path.parent / "samples" / f"epoch_{epoch:03d}.png", seed=profile.seed)
    bar.close()
    return path


def read_log(profile: Profile) -> pd.DataFrame:
    """The per-epoch loss log of the profile's HVAE run."""
    path = run_dir(profile) / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path}: no HVAE loss log; train it with train_hvae(profile)")
    return pd.read_csv(path)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["hvae.epochs=5", "data.source=phantom"]`` -> ``{"hvae.epochs": 5, ...}`` (JSON values, else strings)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cfcl.hvae", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="profile override with a dotted name, e.g. hvae.epochs=5")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs in this call")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (1 is much faster than 2 on a busy 2-core machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides["seed"] = args.seed
    profile = get_profile(args.profile, **overrides)
    path = train_hvae(profile, max_epochs=args.max_epochs)
    print(f"HVAE checkpoint: {path}")


if __name__ == "__main__":
    main()
