"""The settings schema: every knob of a run, as plain frozen dataclasses with their allowed ranges.

Each setting is declared with :func:`setting` (its default, its range ``lo``/``hi`` or its ``choices``, and
whether a run's key leaves it out at its default); one frozen dataclass per section (:data:`SECTIONS`), and
:class:`Profile` holds them all. The values are checked when a profile is built
(:func:`cfcl.config.overrides.validate`); the named profiles are in :mod:`cfcl.config.profiles`; the domain
constants the ranges read (encoders, data sources, ...) in :mod:`cfcl.constants`.
"""
from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from cfcl.constants import CF_SOURCES, DATA_SOURCES, ENCODERS, NEGATIVE_SCOPES, UNET_DECODER_CHANNELS


def setting(default: Any, *, lo: float | None = None, hi: float | None = None,
            choices: Sequence[Any] | None = None, doc: str = "", omit_default: bool = False) -> Any:
    """A dataclass field with its allowed range (``lo``/``hi`` inclusive) or ``choices``.

    ``omit_default``: the setting is left out of a run's key while it has its default value
    (:func:`key_section`), so a setting added after runs were made keeps their keys at its default."""
    meta = {"lo": lo, "hi": hi, "choices": tuple(choices) if choices is not None else None, "doc": doc,
            "omit_default": omit_default}
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed in profiles")
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class DataConfig:
    """Which data, how much of it, and at which resolution.

    ``source`` is ``"phantom"`` (the embedded structural causal model, default) or
    ``"padchest"`` (real PadChest images + CheXmask silver masks + a folder of gold masks).
    """

    source: str = setting("phantom", choices=DATA_SOURCES)
    image_size: int = setting(64, lo=32, hi=1024, doc="a multiple of 32 (U-Net)")
    n_pretrain: int = setting(2000, lo=1)
    n_val: int = setting(200, lo=1)
    n_test: int = setting(200, lo=4, doc="held-out test set, balanced over scanner x effusion")
    n_annotated_healthy: int = setting(20, lo=1, doc="paper section 3: 70 manually annotated images")
    n_annotated_effusion: int = setting(50, lo=1)
    # Phantom knobs: None keeps the real PadChest joint distribution of (sex, scanner, effusion).
    effusion_prevalence: float | None = setting(None, lo=1e-6, hi=1 - 1e-6)
    scanner_effusion_odds_ratio: float | None = setting(None, lo=1e-6)
    seed: int = setting(0, lo=0)
    # Real-data paths (only read when source == "padchest").
    padchest_metadata: str | None = setting(None, doc="default: the copy shipped inside torchxrayvision")
    padchest_images: str | None = setting(None)
    chexmask_csv: str | None = setting(None)
    gold_masks: str | None = setting(None)
    chexmask_min_dice_rca: float = setting(0.8, lo=0.0, hi=1.0)
    allow_short_split: bool = setting(False, doc="padchest: accept a split smaller than its size setting, or "
                                      "one missing a value of a parent, with a warning (default: refused); "
                                      "not in the data key at False")


@dataclass(frozen=True)
class HVAEConfig:
    """Counterfactual hierarchical VAE (paper section 2.1; REFERENCES section 2)."""

    widths: tuple[int, ...] = setting((16, 32, 64, 64), lo=1)
    stem_stride: int = setting(2, lo=1, doc="the first layer folds s x s pixel blocks into channels")
    z_dims: tuple[int, ...] = setting((8, 8, 4, 4), lo=1)
    blocks_per_res: int = setting(1, lo=1)
    epochs: int = setting(30, lo=1)
    batch_size: int = setting(32, lo=2)
    lr: float = setting(1e-3, lo=1e-12, hi=10.0)
    beta: float = setting(3.0, lo=0.0)
    ema_rate: float = setting(0.999, lo=0.0, hi=1.0)
    grad_clip: float = setting(200.0, lo=1e-12)
    grad_skip: float = setting(1000.0, lo=1e-12)
    effusion_oversample: float = setting(0.3, lo=0.0, hi=1.0, doc="fraction of effusion images per batch")
    # Parent predictors (cfcl.counterfactual.predictors): the measuring stick of effectiveness, and the frozen
    # teachers of counterfactual fine-tuning. Batches of ``batch_size`` balanced over the four
    # scanner x effusion cells (no shortcut from the confounded scanner to effusion).
    classifier_epochs: int = setting(20, lo=1)
    classifier_width: int = setting(16, lo=1, doc="channels of the teacher's first stage")
    classifier_augment: str = setting("views", choices=("none", "geometry", "views"),
                                      doc="geometry: the views' rotation/zoom/shift/flip (cfcl.views); views: "
                                          "plus their photometric jitter on half of each batch, whose "
                                          "scanner label is left out (the scanner is photometric)")
    # The judge (cfcl.counterfactual.predictors, role "judge") measures every effectiveness figure; it learns from four
    # times the images (the exact counterfactuals too) and must pass the stick's gates
    # (cfcl.counterfactual.quality.STICK_GATES), so it has its own width and length; the teacher keeps
    # the settings above (its runs, and the fine-tuned HVAE keyed by them, stay valid).
    judge_width: int = setting(32, lo=1, doc="channels of the judge's first stage")
    judge_epochs: int = setting(40, lo=1, doc="the judge's epochs (of ceil(n_pretrain / batch_size) batches)")
    cf_batch_size: int = setting(64, lo=1, doc="images per batch when generating counterfactuals")
    # Counterfactual fine-tuning (cfcl.counterfactual.cf_finetune; De Sousa Ribeiro et al., ICML 2023, causal-gen
    # train_cf.py): after the ELBO training, minimise the frozen predictors' cross-entropy on x_cf
    # under the constraint ELBO(x) <= eps (Lagrange multiplier by gradient ascent, damped).
    cf_finetune_steps: int = setting(300, lo=0, doc="0: counterfactuals from the ELBO-only HVAE")
    cf_lr: float = setting(1e-4, lo=1e-12, hi=10.0, doc="AdamW learning rate of the HVAE (anchor 1e-4)")
    cf_lr_lagrange: float = setting(1e-2, lo=0.0, hi=10.0, doc="Adam (maximising) rate of the multiplier")
    cf_damping: float = setting(100.0, lo=0.0, doc="damping of the ELBO constraint (anchor 100)")
    cf_elbo_slack: float = setting(0.0, lo=0.0, doc="eps = the ELBO model's training loss + slack "
                                                    "(nats per pixel)")
    cf_effusion_weight: float = setting(0.5, lo=0.0, hi=1.0, doc="share of do(effusion) among the drawn "
                                                                 "interventions; do(scanner) and do(both) "
                                                                 "share the rest")
    cf_effusion_fraction: float = setting(0.5, lo=0.0, hi=1.0, doc="share of effusion images per batch, "
                                                                   "so fluid is added and removed alike")
    cf_augment: bool = setting(True, doc="the predictors read a randomly warped x_cf (as in their "
                                         "training), against adversarial pixel patterns")
    cf_replicate: int = setting(0, lo=0, omit_default=True, doc="counterfactual fine-tuning replicate: 0 the profile's run; r > 0 "
                                             "another seed for its batches, interventions and warps (the seed "
                                             "spread of the fine-tuning; same ELBO model and predictors)")
    cf_cycle: float = setting(0.0, lo=0.0, omit_default=True, doc="weight of the cycle term: mean |x_back - x| (in [-1, 1] units), "
                                               "x_back the counterfactual of x_cf back to the factual parents "
                                               "(reversibility, trained); 0: off")


@dataclass(frozen=True)
class PretrainConfig:
    """Dense contrastive pre-training (paper sections 2.2 and 3)."""

    encoder: str = setting("resnet18", choices=ENCODERS, doc="the paper uses resnet50 (the `paper` profile does)")
    embed_dim: int = setting(128, lo=1)
    decoder_channels: tuple[int, ...] = setting(UNET_DECODER_CHANNELS, lo=1, omit_default=True,
                                                doc="the U-Net decoder's five widths (smp's default); at 64 px the "
                                                    "decoder is half a training step (issue 10): a narrower one, "
                                                    "e.g. [64,32,16,16,16], is twice as fast")
    steps: int = setting(300, lo=1)
    batch_size: int = setting(8, lo=2)
    lr: float = setting(1e-3, lo=1e-12, hi=10.0)
    weight_decay: float = setting(1e-4, lo=0.0)
    warmup_steps: int = setting(10, lo=0)
    pixels_per_view: int = setting(1000, lo=2, doc="paper section 3: 1,000 pixels per view")
    temperature: float = setting(0.1, lo=1e-6)
    negatives: str = setting("image", choices=NEGATIVE_SCOPES,
                             doc="image: negatives from the same image's views; batch: whole batch")
    cf_source: str = setting("hvae", choices=CF_SOURCES,
                             doc="hvae (paper), oracle (phantom's exact counterfactuals), identity (x itself)")
    cf_gain: float = setting(1.0, lo=0.0, hi=1.0, omit_default=True,
                             doc="counterfactual views x + g (cf - x): 1 the counterfactuals (paper), 0 x itself "
                                 "(the dose ablation)")
    labels: str = setting("silver", choices=("silver", "gold"), omit_default=True,
                          doc="masks of the supervised pre-training: silver (CheXmask, paper) or gold (the "
                              "labels ablation; the phantom has gold masks for every image)")
    replicate: int = setting(0, lo=0, omit_default=True, doc="pre-training replicate: 0 the profile's run; r > 0 another seed for the "
                                          "network's initialisation, batches, views and pixels (the seed spread "
                                          "of pre-training; the replicate ablation), fine-tuning seeds unchanged")
    seeds: int = setting(1, lo=1, doc="pre-training replicates per method that the results and claims average over "
                                      "(replicate, replicate + 1, ...; cfcl.replicates); never in a run's key")
    checkpoint_every: int = setting(100, lo=1)
    num_workers: int = setting(0, lo=0)
    compile: bool = setting(False, doc="torch.compile the network (inductor; never changes the run's key). "
                                       "Off: eager. On CPU it does not pay (benchmarks/results/network.md); on "
                                       "a GPU a DVD-CL step runs 1.16x faster (benchmarks/results/gpu.md)")


@dataclass(frozen=True)
class FinetuneConfig:
    """Five-fold fine-tuning on the 70 annotated images (paper section 4.2)."""

    folds: int = setting(5, lo=2)
    epochs: int = setting(40, lo=1)
    batch_size: int = setting(8, lo=2, doc="BatchNorm needs two images")
    lr: float = setting(3e-4, lo=1e-12, hi=10.0)
    weight_decay: float = setting(1e-4, lo=0.0)
    seeds: int = setting(1, lo=1, doc="fine-tuning seeds per fold (beyond the paper's one; each its own run, "
                                      "replicate 0 the run of seeds=1): results average over them and keep "
                                      "them per image (cfcl.finetune)")
    train_healthy: int = setting(0, lo=0, omit_default=True, doc="healthy images each fold fine-tunes on, drawn from its training "
                                              "folds (0: all of them); the low-label regime (claims issue): 3")
    train_effusion: int = setting(0, lo=0, omit_default=True, doc="effusion images each fold fine-tunes on (0: all); low-label: 7")
    schedule: str = setting("constant", choices=("constant", "cosine"), omit_default=True,
                            doc="learning rate over the fold's optimiser steps: constant (the paper is silent), "
                                "or cosine decay from finetune.lr to 0 (the schedule ablation)")


@dataclass(frozen=True)
class LatentConfig:
    """Latent-space analysis (paper section 4.1): Table 1 and the CHRO-maps."""

    n_images: int = setting(20, lo=1, doc="validation images of Table 1")
    pixels_per_image: int = setting(1000, lo=3)
    umap_neighbors: int = setting(30, lo=2)
    chromap_images: int = setting(4, lo=1, doc="images of Figure 2 (CHRO-maps)")
    umap_fit: int = setting(5000, lo=10, doc="pixels the CHRO-map's UMAP is fitted on (the rest are transformed)")


SECTIONS = ("data", "hvae", "pretrain", "finetune", "latent")


@dataclass(frozen=True)
class Profile:
    """All settings of a run. ``name`` is the profile (smoke, cpu, paper); ``variant`` names a set of
    ``overrides`` (kept as the ``key=value`` texts that made them, for the commands that remake a run);
    neither enters any run's key: only the settings do."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    hvae: HVAEConfig = field(default_factory=HVAEConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    seed: int = setting(0, lo=0)
    variant: str = ""
    overrides: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``name`` or ``name-variant``: the folder of the profile's figures and executed notebooks."""
        return f"{self.name}-{self.variant}" if self.variant else self.name

    def to_dict(self) -> dict[str, Any]:
        """The settings (every section and the seed) as plain JSON-able values."""
        d = dataclasses.asdict(self)
        return {k: _plain(d[k]) for k in SECTIONS + ("seed",)}

    def section(self, name: str, exclude: Sequence[str] = ()) -> dict[str, Any]:
        """One section's settings as a plain dict, without the ``exclude`` keys."""
        return {k: v for k, v in self.to_dict()[name].items() if k not in exclude}

    def cli(self) -> str:
        """``--profile NAME [--set k=v ...]``: the arguments that rebuild this profile in an entry point."""
        args = f"--profile {self.name}"
        if self.overrides:
            args += " --set " + " ".join(shlex.quote(o) for o in self.overrides)
        return args

    def make_args(self) -> str:
        """``PROFILE=... [VARIANT=... SET="..."]``: the same for a make target."""
        args = f"PROFILE={self.name}"
        if self.variant or self.overrides:
            args += f" VARIANT={self.variant or 'custom'} SET={shlex.quote(' '.join(self.overrides))}"
        return args


def key_section(profile: Profile, name: str, exclude: Sequence[str] = ()) -> dict[str, Any]:
    """One section's settings as a stage's key reads them: :meth:`Profile.section` without the ``exclude``
    keys and without every setting declared ``omit_default`` that has its default value (the one rule that
    keeps the keys of runs made before such a setting existed)."""
    cls = type(getattr(profile, name))
    omit = {f.name for f in fields(cls) if f.metadata.get("omit_default")
            and getattr(getattr(profile, name), f.name) == f.default}
    return profile.section(name, exclude=tuple(exclude) + tuple(omit))


def omitted_at_default(name: str) -> dict[str, Any]:
    """The settings of section ``name`` declared ``omit_default``, with the default at which
    :func:`key_section` leaves each out of a key."""
    cls = type(getattr(Profile(name=""), name))
    return {f.name: f.default for f in fields(cls) if f.metadata.get("omit_default")}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v
