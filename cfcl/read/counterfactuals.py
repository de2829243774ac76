"""The runs of the HVAE counterfactuals of a split and of their quality table (made by
:mod:`cfcl.counterfactual.generate` and :mod:`cfcl.counterfactual.quality`).
"""
from __future__ import annotations

from cfcl.config import Profile
from cfcl.data import data_run
from cfcl.paths import runs_dir
from cfcl.read.classifiers import classifier_run
from cfcl.read.hvae import counterfactual_model_run, elbo_only
from cfcl.runs import Run


ARRAY_NAME = "counterfactuals.npy"


def counterfactual_run(profile: Profile, split: str = "pretrain", t: float = 0.0, alpha: float = 1.0) -> Run:
    """The run holding the HVAE counterfactuals of one split (``counterfactuals.npy``, uint8
    ``(N, 3, H, W)``); its key covers the abduction settings, the split and the run of the model
    they are drawn from (:func:`cfcl.read.hvae.counterfactual_model_run`: the fine-tuned HVAE, or the
    ELBO one with ``hvae.cf_finetune_steps=0``)."""
    return Run("counterfactuals", split, {"split": split, "t": float(t), "alpha": float(alpha)},
               runs_dir(profile.name), {"hvae": counterfactual_model_run(profile), "data": data_run(profile, split)},
               remake=f"python -m cfcl.counterfactual {profile.cli()} --splits {split}"
                      f"  (or: make hvae {profile.make_args()})")


#: ``sex_kept_confident`` reads sex kept only on the images whose sex the judge reads on x with at least this
#: probability (of either sex): where its reading of x is trusted. Not in the issue, which asks for sex kept on
#: every image; the phantom's sex cues are subtle (the judge reads sex right on 0.915 of x), so the exact
#: counterfactuals themselves flip the reading of about a tenth of the images and the stick cannot license
#: ``sex_kept``; on the confidently read ones it can. Both are reported; neither replaces the other.
SEX_CONFIDENCE = 0.95


QUALITY_NAME = "quality.csv"


#: Bumped whenever :func:`cfcl.counterfactual.quality.quality_rows` changes what it measures, so no table of the old kind is read back.
QUALITY_VERSION = 2  # 2: sex_confident, sex_kept_confident


def quality_run(profile: Profile, split: str = "test", threshold: float = 0.1, t: float = 0.0, alpha: float = 1.0,
                before: bool = True) -> Run:
    """The run holding :func:`cfcl.counterfactual.quality.evaluate`'s table (``quality.csv``). Its key covers the settings below and the
    runs the table reads: the split's counterfactuals (hence the counterfactual HVAE and the data), the
    ELBO-only HVAE's (with ``before`` and fine-tuning on), and the judge and teacher predictors. A variant
    that changes none of them (``pretrain.cf_source=oracle``, a fine-tuning seed) reads the table back
    instead of scoring every counterfactual again (about 200 s at ``cpu`` with the mixture)."""
    before = bool(before and profile.hvae.cf_finetune_steps > 0)
    upstream = {"counterfactuals": counterfactual_run(profile, split, t, alpha),
                "judge": classifier_run(profile, "judge"), "teacher": classifier_run(profile, "teacher")}
    if before:
        upstream["counterfactuals_elbo"] = counterfactual_run(elbo_only(profile), split, t, alpha)
    settings = {"split": split, "threshold": float(threshold), "t": float(t), "alpha": float(alpha),
                "before": before, "sex_confidence": SEX_CONFIDENCE, "version": QUALITY_VERSION}
    return Run("cf_quality", f"{split}-alpha{alpha:g}", settings, runs_dir(profile.name), upstream,
               remake=f"python -m cfcl.counterfactual {profile.cli()} --splits {split} --evaluate --alpha {alpha:g}"
                      f"{'' if before else ' --no-before'}  (or: make hvae {profile.make_args()})")
