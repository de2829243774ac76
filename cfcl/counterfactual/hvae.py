"""The counterfactual HVAE network (paper section 2.1; REFERENCES section 2).

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
  and divided by ``H * W``, the NLL is the mean over pixels).

Parents vector ``pa``: ``(sex, scanner, effusion)`` as floats in ``{0, 1}``
(:func:`cfcl.counterfactual.parents.parents_tensor`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cfcl.config import PARENTS

MIN_LOGSCALE = -9.0  # lower bound of every log standard deviation (as causal-gen's EPS)


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
               latents: Sequence[torch.Tensor] | None = None,
               mix: tuple[Sequence[torch.Tensor], float | Sequence[float]] | None = None,
               t: float = 1.0, generator: torch.Generator | None = None):
        """Run the top-down path. Exactly one way of choosing each ``z_i``:

        - ``acts`` (encoder activations): ``z_i ~ q(z_i | z_<i, x, pa)`` at temperature ``t``
          (``t = 0``: posterior means); returns the per-group KL and the posterior stats;
        - ``latents``: the given ``z_i``;
        - ``mix = (q_locs, alpha)``: ``z_i = alpha * q_loc_i + (1 - alpha) * p_loc_i`` with the
          prior mean under the current parents (causal-gen's mixture abduction at zero temperature);
          ``alpha`` is one float, or one per latent group (coarse to fine);
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
                a = alpha[i] if isinstance(alpha, (list, tuple)) else alpha
                z = a * q_locs[i] + (1.0 - a) * p_loc if a != 1.0 else q_locs[i]
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
                generator: torch.Generator | None = None, acts: list[torch.Tensor] | None = None,
                per_image: bool = False) -> dict[str, torch.Tensor]:
        """Negative ELBO terms for ``x (B, 1, H, W)`` in [-1, 1], ``pa (B, P)``.

        Returns scalars ``loss = nll + beta * kl``, ``nll`` and ``kl`` (nats per pixel); with
        ``per_image`` the same as ``(B,)`` tensors. ``acts``: the encoder activations of ``x``
        when the caller already has them (counterfactual fine-tuning shares them).
        """
        acts = self.encoder(x) if acts is None else acts
        h, stats = self.decode(pa, acts=acts, t=1.0, generator=generator)
        loc, logscale = self.pixel_params(h)
        nll = discretized_gaussian_nll(x, loc, logscale).mean(dim=(1, 2, 3))
        kl = sum(s["kl"].sum(dim=(1, 2, 3)) for s in stats) / (x.shape[-1] * x.shape[-2])
        if not per_image:
            nll, kl = nll.mean(), kl.mean()
        return dict(loss=nll + beta * kl, nll=nll, kl=kl)

    # ---- inference helpers --------------------------------------------------------------
    @torch.no_grad()
    def abduct(self, x: torch.Tensor, pa: torch.Tensor, t: float = 0.0,
               generator: torch.Generator | None = None) -> list[dict[str, torch.Tensor]]:
        """Posterior of every latent group: list (coarse to fine) of dicts ``z``, ``q_loc``,
        ``q_logscale``, ``kl``; ``z`` are posterior means at ``t = 0``. Shapes ``(B, z_dim, r, r)``.
        No gradient; :meth:`counterfactual` is the differentiable path."""
        _, stats = self.decode(pa, acts=self.encoder(x), t=t, generator=generator)
        return stats

    def counterfactual(self, x: torch.Tensor, pa: torch.Tensor, cf_pa: torch.Tensor, t: float = 0.0,
                       alpha: float | Sequence[float] = 1.0, generator: torch.Generator | None = None,
                       acts: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Differentiable counterfactual (abduction, action, prediction; REFERENCES section 2):
        ``x_cf = clamp(cf_loc + cf_scale * (x - loc) / scale, -1, 1)``, ``(B, 1, H, W)``.

        Abduction ``z ~ q(z | x, pa)`` at temperature ``t`` (0: posterior means) keeps its
        gradient, so counterfactual fine-tuning (:mod:`cfcl.counterfactual.cf_finetune`) trains the encoder
        and the decoder through it. ``alpha < 1``: causal-gen's mixture abduction
        ``alpha * z + (1 - alpha) * prior mean under the decoding parents`` (both decodes, so the
        null intervention stays exact; one ``alpha`` per latent group, coarse to fine, mixes each group
        on its own). ``acts``: the encoder activations of ``x`` if already
        computed. Under ``torch.no_grad()`` this is :func:`cfcl.counterfactual.generate.counterfactual`.
        """
        acts = self.encoder(x) if acts is None else acts
        h, stats = self.decode(pa, acts=acts, t=t, generator=generator)
        zs = [s["z"] for s in stats]
        if alpha == 1.0:
            # the abduction pass already decoded z with the factual parents: h is the factual decode
            h_cf, _ = self.decode(cf_pa, latents=zs)
        else:
            h, _ = self.decode(pa, mix=(zs, alpha))
            h_cf, _ = self.decode(cf_pa, mix=(zs, alpha))
        loc, logscale = self.pixel_params(h)
        cf_loc, cf_logscale = self.pixel_params(h_cf)
        u = (x - loc) * torch.exp(-logscale)
        return (cf_loc + torch.exp(cf_logscale) * u).clamp(-1.0, 1.0)

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
    """Standard normal noise shaped like ``like``, drawn on the generator's device (a CPU generator
    drives a model on the GPU: the random stream is the same on every device)."""
    if generator is None or generator.device == like.device:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=generator.device).to(like.device)

