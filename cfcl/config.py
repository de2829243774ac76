"""Profiles: every knob of a run, as plain frozen dataclasses.

Three profiles share one structure and differ only in scale:

- ``smoke``: CI, minutes; exercises every code path on tiny data.
- ``cpu``: the default of ``make reproduce``; about an hour on 2 CPU cores.
- ``paper``: the paper's scale (PadChest-sized data, 224 px, ResNet50), for a GPU.

A notebook or entry point asks for ``get_profile(name, **overrides)``; overrides use
dotted names (``"pretrain.steps": 10``) so that papermill can pass plain values.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

# Parent encodings used everywhere in the project (data, HVAE, classifiers, metrics).
SEX = ("F", "M")  # 0 = female, 1 = male
SCANNER = ("ImagingDynamicsCompanyLtd", "PhilipsMedicalSystems")  # 0, 1
EFFUSION = ("no effusion", "pleural effusion")  # 0, 1
PARENTS = ("sex", "scanner", "effusion")
# The three interventions of paper section 2.1, in the order counterfactual arrays are stored.
INTERVENTIONS = ("scanner", "effusion", "both")
INTERVENED_PARENTS = {"scanner": ("scanner",), "effusion": ("effusion",), "both": ("scanner", "effusion")}
# Label map classes (paper: background, left lung, right lung). The patient's right lung
# appears on the image's left side (radiological convention).
CLASSES = ("background", "right lung", "left lung")

METHODS = ("simclr", "vader", "dvd_cl", "mvd_cl", "chexmask", "ssdcl", "s_dvd_cl", "s_mvd_cl")
FINETUNE_METHODS = ("none",) + METHODS


@dataclass(frozen=True)
class DataConfig:
    """Which data, how much of it, and at which resolution.

    ``source`` is ``"phantom"`` (the embedded structural causal model, default) or
    ``"padchest"`` (real PadChest images + CheXmask silver masks + a folder of gold masks).
    """

    source: str = "phantom"
    image_size: int = 64
    n_pretrain: int = 2000
    n_val: int = 200
    n_test: int = 200  # held-out test set, balanced over scanner x effusion
    n_annotated_healthy: int = 20  # paper section 3: 70 manually annotated images
    n_annotated_effusion: int = 50
    # Phantom knobs: None keeps the real PadChest joint distribution of (sex, scanner, effusion).
    effusion_prevalence: float | None = None
    scanner_effusion_odds_ratio: float | None = None
    seed: int = 0
    # Real-data paths (only read when source == "padchest").
    padchest_metadata: str | None = None  # default: the copy shipped inside torchxrayvision
    padchest_images: str | None = None
    chexmask_csv: str | None = None
    gold_masks: str | None = None
    chexmask_min_dice_rca: float = 0.8


@dataclass(frozen=True)
class HVAEConfig:
    """Counterfactual hierarchical VAE (paper section 2.1; REFERENCES section 2)."""

    widths: tuple[int, ...] = (16, 32, 64, 64)
    stem_stride: int = 2  # the first layer folds 2x2 pixel blocks into channels (finest latents at H/2)
    z_dims: tuple[int, ...] = (8, 8, 4, 4)
    blocks_per_res: int = 1
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    beta: float = 3.0
    ema_rate: float = 0.999
    grad_clip: float = 200.0
    grad_skip: float = 1000.0
    effusion_oversample: float = 0.3  # fraction of effusion images per batch while training
    classifier_epochs: int = 5
    cf_batch_size: int = 64


@dataclass(frozen=True)
class PretrainConfig:
    """Dense contrastive pre-training (paper sections 2.2 and 3)."""

    encoder: str = "resnet18"  # the paper uses resnet50 (the `paper` profile does)
    embed_dim: int = 128
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 10
    pixels_per_view: int = 1000  # paper section 3: 1,000 pixels per view
    temperature: float = 0.1
    negatives: str = "image"  # "image": negatives from the same image's views; "batch": whole batch
    cf_source: str = "hvae"  # "hvae" (default) or "oracle" (phantom's exact counterfactuals)
    checkpoint_every: int = 100
    num_workers: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    """Five-fold fine-tuning on the 70 annotated images (paper section 4.2)."""

    folds: int = 5
    epochs: int = 40
    batch_size: int = 8
    lr: float = 3e-4
    weight_decay: float = 1e-4


@dataclass(frozen=True)
class LatentConfig:
    """Latent-space analysis (paper section 4.1): Table 1 and the CHRO-maps."""

    n_images: int = 20
    pixels_per_image: int = 1000
    umap_neighbors: int = 30


@dataclass(frozen=True)
class Profile:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    hvae: HVAEConfig = field(default_factory=HVAEConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_hash(self, *sections: str) -> str:
        """Short stable hash of the named sections (e.g. ``"data"``), for cache keys."""
        d = self.to_dict()
        payload = json.dumps({s: d[s] for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DataConfig(image_size=64, n_pretrain=64, n_val=16, n_test=16),
        hvae=HVAEConfig(widths=(8, 16, 16, 16), z_dims=(4, 4, 2, 2), epochs=1, batch_size=16,
                        classifier_epochs=1),
        pretrain=PretrainConfig(steps=3, batch_size=2, pixels_per_view=64, checkpoint_every=2,
                                embed_dim=32),
        finetune=FinetuneConfig(epochs=1, batch_size=8),
        latent=LatentConfig(n_images=4, pixels_per_image=200, umap_neighbors=10),
    ),
    # At 64 px a view has 4,096 pixels: 256 sampled pixels per view keep the paper's sampled
    # fraction (1,000 of 50,176 at 224 px is 2 %; 256 of 4,096 is 6 %) and keep the loss
    # cheaper than the network, as it is at the paper's scale.
    "cpu": Profile(name="cpu", pretrain=PretrainConfig(pixels_per_view=256),
                   finetune=FinetuneConfig(epochs=20)),
    "paper": Profile(
        name="paper",
        data=DataConfig(image_size=224, n_pretrain=60000, n_val=17000, n_test=2000),
        hvae=HVAEConfig(widths=(32, 64, 128, 256, 512, 1024, 1024), z_dims=(48, 48, 32, 16, 8, 4, 1),
                        blocks_per_res=2, epochs=130, batch_size=16, classifier_epochs=20,
                        effusion_oversample=0.3, cf_batch_size=256),
        pretrain=PretrainConfig(encoder="resnet50", steps=50000, batch_size=32, lr=1e-3,
                                warmup_steps=1000, checkpoint_every=1000, num_workers=8),
        finetune=FinetuneConfig(epochs=100, batch_size=8),
        latent=LatentConfig(n_images=100, pixels_per_image=2000),
    ),
}


def _set(obj: Any, path: list[str], value: Any) -> Any:
    name = path[0]
    if not hasattr(obj, name):
        raise KeyError(f"unknown setting {name!r} in {type(obj).__name__}")
    if len(path) == 1:
        current = getattr(obj, name)
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        return replace(obj, **{name: value})
    return replace(obj, **{name: _set(getattr(obj, name), path[1:], value)})


def get_profile(name: str = "cpu", **overrides: Any) -> Profile:
    """Return the named profile with dotted-name overrides applied.

    >>> get_profile("smoke", **{"pretrain.steps": 5}).pretrain.steps
    5
    """
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    prof = PROFILES[name]
    for key, value in overrides.items():
        prof = _set(prof, key.replace("__", ".").split("."), value)
    return prof
