"""The network: a standard U-Net with a ResNet encoder, pre-trained whole (paper section 3).

:class:`CFCLNet` wraps a segmentation-models-pytorch ``Unet`` (random init, one input
channel, three classes) and adds the heads pre-training needs:

- a dense projection head (two 1x1 convolutions) on the decoder output, giving a
  ``D``-dimensional embedding per pixel at full resolution for the dense losses;
- a global projection head (MLP on the pooled deepest encoder features) for SimCLR.

Pre-training reads the dense embedding only at its sampled points: :meth:`CFCLNet.embed_at`
gives exactly ``views.gather(embed(x), points)`` while running the head's last (linear) 1x1
convolution on the gathered points instead of on every pixel (bilinear reading and a linear map
commute), which saves most of the head's cost at full resolution.

Fine-tuning uses the U-Net's own 3-class segmentation head. Pre-trained weights transfer
into it with :func:`load_pretrained`: encoder and decoder for the dense methods and the
CheXmask-supervised baseline, the encoder only for SimCLR (which trains no decoder).
The projection heads are discarded, as is usual after contrastive pre-training; the choice
of two 1x1 convolutions with a hidden width of 64 is ours (the paper is silent).
"""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from cfcl.config import UNET_DECODER_CHANNELS
from cfcl.methods import get

N_CLASSES = 3


class CFCLNet(nn.Module):
    """U-Net (smp) + dense and global projection heads.

    Shapes: ``x`` (B, 1, H, W) with H, W divisible by 32;
    ``embed(x)`` -> (B, D, H, W); ``global_embed(x)`` -> (B, D); ``forward(x)`` -> logits (B, 3, H, W).
    """

    def __init__(self, encoder: str = "resnet50", embed_dim: int = 128, hidden: int = 64,
                 decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS) -> None:
        super().__init__()
        self.encoder_name = encoder
        self.unet = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=N_CLASSES,
                             decoder_channels=tuple(decoder_channels))
        dec_ch = self.unet.segmentation_head[0].in_channels
        self.projector = nn.Sequential(
            nn.Conv2d(dec_ch, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True), nn.Conv2d(hidden, embed_dim, 1)
        )
        enc_ch = self.unet.encoder.out_channels[-1]
        self.global_projector = nn.Sequential(
            nn.Linear(enc_ch, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, embed_dim)
        )

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder output (B, C_dec, H, W), the last feature map before any head."""
        return self.unet.decoder(self.unet.encoder(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Dense per-pixel embeddings (B, D, H, W) (not normalised: the losses normalise)."""
        return self.projector(self.decode(x))

    def embed_at(self, x: torch.Tensor, points: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        """Dense embeddings of ``x`` (B, 1, H, W) read bilinearly at view points: the same as
        ``views.gather(self.embed(x), points)``, computed without the full-resolution head.

        ``points``: (B, N, 2) view points of each image -> (B, N, D); or, with ``image`` (P,) long,
        (P, 2) points of image ``image[k]`` each -> (P, D) (images may have different counts).

        Why it is the same function: a bilinear read (``grid_sample``, ``align_corners=True``, zeros
        outside) is a weighted sum over the four pixels ("taps") around a point, and the head is
        ``conv2(ReLU(BN(conv1(d))))`` with 1x1 convolutions, i.e. per pixel. So the head is evaluated
        at the taps only (or at every pixel once, when the taps outnumber the pixels), the taps are
        blended with the bilinear weights, and ``conv2``, being linear, runs after the blend (its
        bias times the in-map weight sum, which is 1 inside the map). BatchNorm keeps its statistics
        over every pixel of the batch, as in :meth:`embed`: in training they come from the first and
        second moments of ``d`` (``mean(conv1 d) = W mean(d) + b``, ``var = diag(W Cov(d) W^T)``),
        and the running statistics are updated as the module would. Equal to the two-step version
        up to float round-off (``tests/test_pretrain.py``). With SyncBatchNorm (CUDA DDP) the
        module itself computes the hidden map (statistics across ranks)."""
        d = self.decode(x)  # (B, C, H, W)
        b, c, h, w = d.shape
        if image is None:
            if points.ndim != 3 or points.shape[0] != b:
                raise ValueError(f"embed_at: points must be (B, N, 2) for {b} images, got {tuple(points.shape)}")
            n = points.shape[1]
            image = torch.arange(b, device=points.device).repeat_interleave(n)
            return self._read(d, points.reshape(-1, 2), image).view(b, n, -1)
        if points.ndim != 2 or image.shape != points.shape[:1]:
            raise ValueError(f"embed_at: points must be (P, 2) with image (P,), got {tuple(points.shape)}, "
                             f"{tuple(image.shape)}")
        return self._read(d, points, image)

    def _read(self, d: torch.Tensor, points: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        b, c, h, w = d.shape
        conv1, bn, _, conv2 = self.projector
        taps, weights = _bilinear_taps(points, image, h, w)  # (P, 4), (P, 4)
        flat = taps.reshape(-1)
        if isinstance(bn, nn.SyncBatchNorm) or not isinstance(bn, nn.BatchNorm2d):
            hmap = self.projector[:-1](d)
            rows = hmap.permute(0, 2, 3, 1).reshape(b * h * w, -1)[flat]
        else:
            weight, bias = self._conv1_bn(d)  # conv1 and BatchNorm folded into one affine map
            pixels = d.permute(0, 2, 3, 1).reshape(b * h * w, c)
            if flat.numel() < b * h * w:  # the head at the taps only
                rows = F.relu(F.linear(pixels[flat], weight, bias))
            else:  # more taps than pixels: the head at every pixel once
                rows = F.relu(F.linear(pixels, weight, bias))[flat]
        hidden = (rows.view(*taps.shape, -1) * weights[..., None].to(rows.dtype)).sum(1)  # (P, hidden)
        out = F.linear(hidden, conv2.weight.flatten(1))
        if conv2.bias is not None:
            out = out + weights.sum(1, keepdim=True).to(out.dtype) * conv2.bias
        return out

    def _conv1_bn(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``conv1`` followed by the projector's BatchNorm as one affine map ``(weight (hid, C), bias)``,
        with the statistics BatchNorm would use on ``conv1(d)`` (and its running statistics updated)."""
        with torch.autocast(d.device.type, enabled=False):  # statistics in float32, as BatchNorm's
            return self._conv1_bn_fp32(d)

    def _conv1_bn_fp32(self, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv1, bn = self.projector[0], self.projector[1]
        w1 = conv1.weight.flatten(1).float()
        b1 = conv1.bias.float() if conv1.bias is not None else w1.new_zeros(w1.shape[0])
        if bn.training or not bn.track_running_stats:
            df = d.float().flatten(2)  # (B, C, HW)
            n = df.shape[0] * df.shape[2]
            mean = df.mean(dim=(0, 2))
            dc = df - mean[:, None]
            cov = torch.matmul(dc, dc.transpose(1, 2)).sum(0) / n  # (C, C), biased as BatchNorm's
            mean_h = w1 @ mean + b1
            var_h = ((w1 @ cov) * w1).sum(1)
            if bn.training and bn.track_running_stats:
                with torch.no_grad():
                    bn.num_batches_tracked.add_(1)
                    f = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
                    bn.running_mean.mul_(1 - f).add_(mean_h.detach().to(bn.running_mean.dtype), alpha=f)
                    unbiased = var_h.detach() * (n / max(n - 1, 1))
                    bn.running_var.mul_(1 - f).add_(unbiased.to(bn.running_var.dtype), alpha=f)
        else:
            mean_h, var_h = bn.running_mean.float(), bn.running_var.float()
        scale = torch.rsqrt(var_h + bn.eps)
        if bn.affine:
            scale = scale * bn.weight.float()
        shift = -mean_h * scale + (bn.bias.float() if bn.affine else 0.0)
        return w1 * scale[:, None], b1 * scale + shift

    def global_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level embedding (B, D) from the pooled deepest encoder features (SimCLR)."""
        feats = self.unet.encoder(x)[-1]
        return self.global_projector(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, mode: str = "segment", points: torch.Tensor | None = None,
                image: torch.Tensor | None = None) -> torch.Tensor:
        """``mode``: "segment" (logits), "embed" (dense embeddings), "embed_at" (dense embeddings
        at view ``points``, :meth:`embed_at`) or "global" (SimCLR embedding).

        One entry point, so that DistributedDataParallel sees every head through ``forward``.
        """
        if mode == "embed":
            return self.embed(x)
        if mode == "embed_at":
            if points is None:
                raise ValueError("mode 'embed_at' needs points (B, N, 2), or (P, 2) with image (P,)")
            return self.embed_at(x, points, image)
        if mode == "global":
            return self.global_embed(x)
        if mode != "segment":
            raise ValueError(f"unknown mode {mode!r}: use 'segment', 'embed', 'embed_at' or 'global'")
        return self.unet(x)


def _bilinear_taps(points: torch.Tensor, image: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The four pixels ("taps") a bilinear read at view points ``points (P, 2)`` of images ``image (P,)``
    blends, as ``grid_sample(align_corners=True, padding_mode="zeros")`` does: flat indices into the
    (B * h * w) pixels, long (P, 4), and their weights (P, 4), 0 for taps outside the map."""
    pts = points.float()
    x, y = pts[:, 0], pts[:, 1]
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    xs = torch.stack([x0, x0 + 1, x0, x0 + 1], 1)
    ys = torch.stack([y0, y0, y0 + 1, y0 + 1], 1)
    wts = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], 1)
    inside = (xs >= 0) & (xs <= w - 1) & (ys >= 0) & (ys <= h - 1)
    wts = torch.where(inside, wts, torch.zeros_like(wts))
    xi = xs.clamp(0, w - 1).long()
    yi = ys.clamp(0, h - 1).long()
    return image.long()[:, None] * (h * w) + yi * w + xi, wts


def build_model(encoder: str, embed_dim: int, decoder_channels: tuple[int, ...] = UNET_DECODER_CHANNELS) -> CFCLNet:
    """The U-Net with its heads (``decoder_channels``: ``pretrain.decoder_channels``)."""
    return CFCLNet(encoder=encoder, embed_dim=embed_dim, decoder_channels=decoder_channels)


def network(cfg) -> CFCLNet:
    """The network a profile's ``pretrain`` section describes (encoder, embedding size, decoder widths):
    the one pre-training trains and fine-tuning, Table 1 and the invariance load."""
    return build_model(cfg.encoder, cfg.embed_dim, cfg.decoder_channels)


def transfer_prefixes(method: str) -> tuple[str, ...]:
    """Which parts of the pre-trained U-Net initialise the fine-tuned one (paper section 3;
    the method registry, :mod:`cfcl.methods`, says per method)."""
    return get(method).transfer


def load_pretrained(model: CFCLNet, state_dict: dict[str, torch.Tensor], method: str) -> list[str]:
    """Copy the transferable parameters of a pre-trained state dict into ``model``.

    Returns the list of keys loaded. Raises if a transferable key is missing, mis-shaped or
    extra, so a checkpoint of another architecture never loads silently.
    """
    prefixes = transfer_prefixes(method)
    own = model.state_dict()
    loaded = []
    for key, value in own.items():
        if not key.startswith(prefixes):
            continue
        if key not in state_dict:
            raise KeyError(f"pre-trained weights of {method!r} lack {key!r}")
        if state_dict[key].shape != value.shape:
            raise ValueError(f"pre-trained {key!r} has shape {tuple(state_dict[key].shape)}, "
                             f"model expects {tuple(value.shape)}")
        own[key] = state_dict[key]
        loaded.append(key)
    extra = [k for k in state_dict if k.startswith(prefixes) and k not in own] if prefixes else []
    if extra:
        raise ValueError(f"pre-trained weights of {method!r} hold {len(extra)} keys this model lacks "
                         f"(e.g. {extra[0]!r}): another encoder?")
    model.load_state_dict(own)
    return loaded
