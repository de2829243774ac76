"""The network: a standard U-Net with a ResNet encoder, pre-trained whole (paper section 3).

:class:`CFCLNet` wraps a segmentation-models-pytorch ``Unet`` (random init, one input
channel, three classes) and adds the heads pre-training needs:

- a dense projection head (two 1x1 convolutions) on the decoder output, giving a
  ``D``-dimensional embedding per pixel at full resolution for the dense losses;
- a global projection head (MLP on the pooled deepest encoder features) for SimCLR.

Fine-tuning uses the U-Net's own 3-class segmentation head. Pre-trained weights transfer
into it with :func:`load_pretrained`: encoder and decoder for the dense methods and the
CheXmask-supervised baseline, the encoder only for SimCLR (which trains no decoder).
The projection heads are discarded, as is usual after contrastive pre-training; the choice
of two 1x1 convolutions with a hidden width of 64 is ours (the paper is silent).
"""
from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

N_CLASSES = 3


class CFCLNet(nn.Module):
    """U-Net (smp) + dense and global projection heads.

    Shapes: ``x`` (B, 1, H, W) with H, W divisible by 32;
    ``embed(x)`` -> (B, D, H, W); ``global_embed(x)`` -> (B, D); ``forward(x)`` -> logits (B, 3, H, W).
    """

    def __init__(self, encoder: str = "resnet50", embed_dim: int = 128, hidden: int = 64) -> None:
        super().__init__()
        self.encoder_name = encoder
        self.unet = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=N_CLASSES)
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

    def global_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image-level embedding (B, D) from the pooled deepest encoder features (SimCLR)."""
        feats = self.unet.encoder(x)[-1]
        return self.global_projector(feats.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor, mode: str = "segment") -> torch.Tensor:
        """``mode``: "segment" (logits), "embed" (dense embeddings) or "global" (SimCLR embedding).

        One entry point, so that DistributedDataParallel sees every head through ``forward``.
        """
        if mode == "embed":
            return self.embed(x)
        if mode == "global":
            return self.global_embed(x)
        if mode != "segment":
            raise ValueError(f"unknown mode {mode!r}: use 'segment', 'embed' or 'global'")
        return self.unet(x)


def build_model(encoder: str, embed_dim: int) -> CFCLNet:
    return CFCLNet(encoder=encoder, embed_dim=embed_dim)


def transfer_prefixes(method: str) -> tuple[str, ...]:
    """Which parts of the pre-trained U-Net initialise the fine-tuned one (paper section 3)."""
    if method == "none":
        return ()
    if method == "simclr":
        return ("unet.encoder.",)
    return ("unet.encoder.", "unet.decoder.")


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
