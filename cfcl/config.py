"""Profiles: every knob of a run, as plain frozen dataclasses, validated when built.

Three profiles share one structure and differ only in scale:

- ``smoke``: CI, minutes; exercises every code path on tiny data.
- ``cpu``: the default of ``make reproduce``; about 2.6 hours on 2 CPU cores (``figures/cpu/timings.csv``).
- ``paper``: the paper's scale (PadChest-sized data, 224 px, ResNet50), for a GPU.

A notebook or entry point asks for ``get_profile(name, overrides, variant)``. Overrides use dotted
names (``"pretrain.steps=10"``, or ``{"pretrain.steps": 10}``) so that papermill, ``--set`` and
``make ... SET="..."`` pass plain text. Every value is converted to the type of its setting or
refused, and every setting is checked against its allowed range when the profile is built
(:func:`validate`); each error names the key and what is allowed. A *variant* is a named set of
overrides: its figures go to ``figures/<profile>-<variant>/`` while its runs share every upstream
run the overrides do not touch (:mod:`cfcl.runs`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import types
import typing
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence

from cfcl.constants import (  # noqa: F401  (re-exported: `from cfcl.config import PARENTS` keeps working)
    CF_SOURCES, CLASSES, DATA_SOURCES, EFFUSION, ENCODERS, INTERVENED_PARENTS, INTERVENTIONS, NEGATIVE_SCOPES, PARENTS,
    SCANNER, SEX, UNET_DECODER_CHANNELS, UNET_STRIDE)


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
    cls = type(getattr(PROFILES["smoke"], name))
    return {f.name: f.default for f in fields(cls) if f.metadata.get("omit_default")}


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        data=DataConfig(image_size=64, n_pretrain=64, n_val=16, n_test=16),
        hvae=HVAEConfig(widths=(8, 16, 16, 16), z_dims=(4, 4, 2, 2), epochs=1, batch_size=16,
                        classifier_epochs=1, judge_width=16, judge_epochs=1, cf_finetune_steps=3, cf_cycle=3.0),
        pretrain=PretrainConfig(steps=3, batch_size=2, pixels_per_view=64, checkpoint_every=2,
                                embed_dim=32),
        # Two folds exercise every code path of the five-fold protocol at 40 % of its cost (several fine-tuning
    # seeds: the unit tests and the paper profile's dry run).
        finetune=FinetuneConfig(folds=2, epochs=1, batch_size=8),
        latent=LatentConfig(n_images=4, pixels_per_image=200, umap_neighbors=10, chromap_images=2, umap_fit=500),
    ),
    # At 64 px a view has 4,096 pixels: 256 sampled pixels per view keep the paper's sampled
    # fraction (1,000 of 50,176 at 224 px is 2 %; 256 of 4,096 is 6 %) and keep the loss
    # cheaper than the network, as it is at the paper's scale.
    # The held-out test split has 1,000 images (250 per scanner x effusion cell): the claims issue's
    # power (14 test images per fold detect ~1.75 DSC points at best; see README "Variants").
    # The HVAE is wider than HVAEConfig's default (16, 32, 64, 64), and its counterfactual fine-tuning keeps
    # the ELBO within 0.1 nats per pixel of the ELBO model's: the pair that passes every effectiveness gate of the
    # counterfactual-quality table (experiments/results/cf_capacity.md). The previous model is the variant
    # SET="hvae.widths=16,32,64,64 hvae.cf_elbo_slack=0 hvae.cf_cycle=0". The cycle term (weight 3; not in
    # the anchors) trains reversibility: do(both) comes back within 4 grey levels instead of 8, and every
    # error to the exact counterfactual falls (benchmarks/results/hvae.md); without it: SET="hvae.cf_cycle=0".
    "cpu": Profile(name="cpu", data=DataConfig(n_test=1000),
                   hvae=HVAEConfig(widths=(24, 48, 96, 96), cf_elbo_slack=0.1, cf_cycle=3.0),
                   pretrain=PretrainConfig(pixels_per_view=256), finetune=FinetuneConfig(epochs=20)),
    "paper": Profile(
        name="paper",
        data=DataConfig(image_size=224, n_pretrain=60000, n_val=17000, n_test=2000),
        hvae=HVAEConfig(widths=(32, 64, 128, 256, 512, 1024, 1024), z_dims=(48, 48, 32, 16, 8, 4, 1),
                        blocks_per_res=2, epochs=130, batch_size=16, classifier_epochs=20,
                        effusion_oversample=0.3, cf_batch_size=256),
        pretrain=PretrainConfig(encoder="resnet50", steps=50000, batch_size=32, lr=1e-3,
                                warmup_steps=1000, checkpoint_every=1000, num_workers=8),
        finetune=FinetuneConfig(epochs=100, batch_size=8, seeds=3),
        latent=LatentConfig(n_images=100, pixels_per_image=2000),
    ),
}


# ------------------------------------------------------------------------------------------------
# Overrides: parsing, type conversion, validation
# ------------------------------------------------------------------------------------------------
class SettingError(ValueError):
    """A setting has a value of the wrong type or outside its allowed range (the message names it)."""


def parse_overrides(items: str | Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``"a.b=1 c=x"``, ``["a.b=1", "c=x"]`` or a dict -> ``{"a.b": 1, "c": "x"}``.

    Values are read as JSON where they parse (numbers, lists, null, true/false), else kept as
    text; :func:`get_profile` then converts them to the setting's type or refuses them.
    """
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return dict(items)
    if isinstance(items, str):
        items = shlex.split(items)
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SettingError(f"an override must read key=value, got {item!r}")
        key, value = item.split("=", 1)
        key = key.strip().replace("__", ".")
        if not key:
            raise SettingError(f"an override must read key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _describe(meta: Mapping[str, Any], tp: Any) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    kind = {int: "an integer", float: "a number", str: "a text", bool: "true or false"}.get(tp, str(tp))
    if lo is not None and hi is not None:
        return f"{kind} in [{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{kind} >= {lo:g}"
    if hi is not None:
        return f"{kind} <= {hi:g}"
    return kind


def _convert(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """``value`` as type ``tp`` (int, float, str, bool, ``T | None``, ``tuple[T, ...]``) or SettingError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _convert(key, value, args[0], meta)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.replace(",", " ").split()]
        if not isinstance(value, (list, tuple)) or not value:
            raise SettingError(f"setting {key}: expected a non-empty list of {_describe(meta, inner)}, got {value!r}")
        return tuple(_convert(f"{key}[{i}]", v, inner, meta) for i, v in enumerate(value))
    want = _describe(meta, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SettingError(f"setting {key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise SettingError(f"setting {key}: expected {want}, got {value!r}") from None
        if not isinstance(value, int):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}") from None
        if not math.isfinite(out):
            raise SettingError(f"setting {key}: expected {want}, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            value = json.dumps(value)
        return value
    raise SettingError(f"setting {key}: cannot convert {value!r} to {tp}")  # pragma: no cover


def _check_range(key: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    if isinstance(value, tuple):
        for i, v in enumerate(value):
            _check_range(f"{key}[{i}]", v, typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp, meta)
        return
    choices, lo, hi = meta.get("choices"), meta.get("lo"), meta.get("hi")
    base = [a for a in typing.get_args(tp) if a is not type(None)][0] if typing.get_args(tp) else tp
    if choices and value not in choices:
        raise SettingError(f"setting {key}: expected {_describe(meta, base)}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SettingError(f"setting {key}: expected {_describe(meta, base)}, got {value!r}")


def _set(obj: Any, path: list[str], value: Any, prefix: str = "") -> Any:
    name = path[0]
    key = f"{prefix}{name}"
    names = {f.name: f for f in fields(obj)}
    if name not in names or name in ("name", "variant", "overrides"):
        known = ", ".join(n for n in names if n not in ("name", "variant", "overrides"))
        raise KeyError(f"unknown setting {key!r}; {type(obj).__name__} has: {known}")
    if len(path) == 1:
        hints = typing.get_type_hints(type(obj))
        if dataclasses.is_dataclass(hints[name]):
            raise SettingError(f"setting {key} is a section; set one of its keys, e.g. {key}.<name>=...")
        return replace(obj, **{name: _convert(key, value, hints[name], names[name].metadata)})
    return replace(obj, **{name: _set(getattr(obj, name), path[1:], value, f"{key}.")})


def validate(profile: Profile) -> Profile:
    """Check every setting against its range and the settings that constrain each other; return
    the profile, or raise :class:`SettingError` naming the key and the allowed values."""
    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            if f.name in ("name", "variant", "overrides"):
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                _check_range(f"{prefix}{f.name}", value, hints[f.name], f.metadata)

    walk(profile, "")
    d, h, p, ft, lt = profile.data, profile.hvae, profile.pretrain, profile.finetune, profile.latent
    if d.image_size % UNET_STRIDE:
        raise SettingError(f"setting data.image_size: the U-Net needs a multiple of {UNET_STRIDE}, "
                           f"got {d.image_size}")
    if d.image_size % h.stem_stride:
        raise SettingError(f"setting hvae.stem_stride: must divide data.image_size={d.image_size}, "
                           f"got {h.stem_stride}")
    if len(p.decoder_channels) != len(UNET_DECODER_CHANNELS):
        raise SettingError(f"setting pretrain.decoder_channels: the U-Net's decoder has "
                           f"{len(UNET_DECODER_CHANNELS)} stages, got {list(p.decoder_channels)}")
    if len(h.widths) != len(h.z_dims):
        raise SettingError(f"settings hvae.widths ({len(h.widths)} levels) and hvae.z_dims "
                           f"({len(h.z_dims)} levels) must have the same length")
    if p.pixels_per_view > d.image_size ** 2:
        raise SettingError(f"setting pretrain.pixels_per_view: a view holds {d.image_size}x{d.image_size} = "
                           f"{d.image_size ** 2} pixels at data.image_size={d.image_size}; got {p.pixels_per_view}")
    for name in ("n_annotated_healthy", "n_annotated_effusion"):
        if getattr(d, name) < ft.folds:
            raise SettingError(f"setting data.{name}: each of the finetune.folds={ft.folds} folds needs an "
                               f"image of each class, got {getattr(d, name)}")
    if max(lt.n_images, lt.chromap_images) > d.n_val:
        key = "n_images" if lt.n_images > d.n_val else "chromap_images"
        raise SettingError(f"setting latent.{key}: the validation split holds data.n_val={d.n_val} "
                           f"images, got {getattr(lt, key)}")
    if lt.umap_neighbors >= lt.n_images * lt.pixels_per_image:
        raise SettingError(f"setting latent.umap_neighbors: must be below the number of sampled pixels "
                           f"({lt.n_images * lt.pixels_per_image}), got {lt.umap_neighbors}")
    if d.source == "padchest" and p.labels == "gold":
        raise SettingError("setting pretrain.labels: real data has gold masks for the annotated images only; "
                           "pre-training reads silver masks (pretrain.labels='silver')")
    if d.source == "padchest" and p.cf_source == "oracle":
        raise SettingError("setting pretrain.cf_source: real data (data.source='padchest') has no exact "
                           "counterfactuals; use 'hvae' (or 'identity')")
    return profile


def get_profile(name: str = "cpu", overrides: str | Sequence[str] | Mapping[str, Any] | None = None,
                variant: str = "", **dotted: Any) -> Profile:
    """Return the named profile with overrides applied, converted and validated.

    ``overrides``: ``"pretrain.steps=5 seed=1"``, a list of such items, or a dict; ``dotted``:
    the same as keyword arguments (``**{"pretrain.steps": 5}``). ``variant`` names the set of
    overrides (figures go to ``figures/<name>-<variant>/``).

    >>> get_profile("smoke", "pretrain.steps=5").pretrain.steps
    5
    """
    if name not in PROFILES:
        raise KeyError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    items = {**parse_overrides(overrides), **{k.replace("__", "."): v for k, v in dotted.items()}}
    if variant and any(c in variant for c in "/ \t") or variant.startswith("."):
        raise SettingError(f"variant {variant!r} must be a plain name (it names a folder)")
    prof = PROFILES[name]
    for key, value in items.items():
        prof = _set(prof, key.split("."), value)
    texts = tuple(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in items.items())
    return validate(replace(prof, variant=variant, overrides=texts))
