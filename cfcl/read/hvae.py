"""The HVAE runs: the ELBO-trained model (made by :mod:`cfcl.counterfactual.hvae_train`) and its counterfactual
fine-tuning (made by :mod:`cfcl.counterfactual.cf_finetune`).
"""
from __future__ import annotations

import dataclasses

from cfcl.config import HVAEConfig, Profile, key_section
from cfcl.data import data_run
from cfcl.paths import runs_dir
from cfcl.read.classifiers import classifier_run
from cfcl.runs import Run


WEIGHT_DECAY = 0.01


WARMUP_STEPS = 100


# HVAE settings that do not change the ELBO-trained model (they are not part of its key): the parent
# predictors' (``classifier_*``, ``judge_*``), counterfactual generation and fine-tuning (``cf_*``, the run of
# :mod:`cfcl.counterfactual.cf_finetune`).
NOT_TRAINING = tuple(f.name for f in dataclasses.fields(HVAEConfig)
                     if f.name.startswith(("classifier_", "judge_", "cf_")))


def hvae_run(profile: Profile) -> Run:
    """The HVAE run of ``profile`` (see :mod:`cfcl.counterfactual.hvae_train`); made by :func:`cfcl.counterfactual.hvae_train.train_hvae`."""
    settings = {"hvae": profile.section("hvae", exclude=NOT_TRAINING), "image_size": profile.data.image_size,
                "seed": profile.seed, "weight_decay": WEIGHT_DECAY, "warmup_steps": WARMUP_STEPS}
    upstream = {"data/pretrain": data_run(profile, "pretrain"), "data/val": data_run(profile, "val")}
    return Run("hvae", "hvae", settings, runs_dir(profile.name), upstream,
               remake=f"python -m cfcl.counterfactual.hvae_train {profile.cli()}  (or: make hvae {profile.make_args()})")


#: Images the ELBO constraint ``eps`` is measured on (all of the split up to this many).
EPS_IMAGES = 2048


#: Fixed choices of the fine-tuning that its key records: the kept parents' target is the predictors'
#: reading of ``x`` (``"predicted"``), and no minimality term (weight 0).
FIXED = {"cf_keep": "predicted", "cf_l1": 0.0}


def cf_settings(profile: Profile) -> dict:
    """The settings the fine-tuning run reads (its key): the ``hvae.cf_*`` settings but
    ``cf_batch_size`` (:func:`cfcl.config.key_section`), and :data:`FIXED`."""
    hv = profile.hvae
    cf = {k: v for k, v in key_section(profile, "hvae").items() if k.startswith("cf_") and k != "cf_batch_size"}
    return {"cf": {**cf, **FIXED}, "batch_size": hv.batch_size, "beta": hv.beta, "grad_clip": hv.grad_clip,
            "grad_skip": hv.grad_skip, "ema_rate": hv.ema_rate, "weight_decay": WEIGHT_DECAY,
            "abduction_t": 0.0, "eps_images": EPS_IMAGES, "seed": profile.seed}


def cf_finetune_run(profile: Profile) -> Run:
    """The counterfactually fine-tuned HVAE of ``profile`` (see :mod:`cfcl.counterfactual.cf_finetune`); made by
    :func:`cfcl.counterfactual.cf_finetune.finetune_counterfactuals`. Upstream: the ELBO run, the parent predictors, the data."""
    upstream = {"hvae": hvae_run(profile), "classifiers": classifier_run(profile),
                "data/pretrain": data_run(profile, "pretrain")}
    return Run("hvae_cf", "hvae_cf", cf_settings(profile), runs_dir(profile.name), upstream,
               remake=f"python -m cfcl.counterfactual.cf_finetune {profile.cli()}  (or: make hvae {profile.make_args()})")


def counterfactual_model_run(profile: Profile) -> Run:
    """The run whose model draws the counterfactuals: the fine-tuned one when
    ``hvae.cf_finetune_steps > 0``, else the ELBO run."""
    return cf_finetune_run(profile) if profile.hvae.cf_finetune_steps > 0 else hvae_run(profile)


def elbo_only(profile: Profile) -> Profile:
    """``profile`` with counterfactual fine-tuning off (``hvae.cf_finetune_steps=0``): its
    counterfactuals come from the ELBO-only HVAE (the "before" of notebook 02)."""
    over = tuple(o for o in profile.overrides if not o.startswith("hvae.cf_finetune_steps="))
    return dataclasses.replace(profile, hvae=dataclasses.replace(profile.hvae, cf_finetune_steps=0),
                               overrides=over + ("hvae.cf_finetune_steps=0",))
