"""The pre-training runs (made by :mod:`cfcl.pretrain`, whose docstring describes the key) and their readers.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from cfcl.config import Profile, key_section, omitted_at_default
from cfcl.data import data_run
from cfcl.methods import get
from cfcl.paths import runs_dir
from cfcl.read.counterfactuals import counterfactual_run
from cfcl.runs import Run, load_checkpoint

if TYPE_CHECKING:
    import torch


# Pre-training settings that never change the trained weights (not part of a run's key).
NOT_TRAINING = ("checkpoint_every", "num_workers", "compile", "seeds")


#: Settings added after runs existed (declared ``omit_default``): out of the key at their default.
ADDED_LATER = omitted_at_default("pretrain")


def pretrain_run(profile: Profile, method: str) -> Run:
    """The pre-training run of ``method`` under ``profile`` (see :mod:`cfcl.pretrain`)."""
    spec = get(method, pretrained=True)
    exclude = NOT_TRAINING + (() if spec.views == "cf" else ("cf_source", "cf_gain"))
    exclude += (() if spec.supervised else ("labels",))
    settings = {"method": method, "pretrain": key_section(profile, "pretrain", exclude), "seed": profile.seed}
    upstream = {"data": data_run(profile, "pretrain")}
    if spec.views == "cf" and profile.pretrain.cf_source == "hvae":
        upstream["counterfactuals"] = counterfactual_run(profile, "pretrain")
    return Run("pretrain", method, settings, runs_dir(profile.name), upstream,
               remake=f"python -m cfcl.pretrain {profile.cli()} --method {method}"
                      f"  (or: make pretrain {profile.make_args()})")


def load_pretrained_state(profile: Profile, method: str) -> dict[str, torch.Tensor]:
    """The pre-trained weights of ``method`` (verified); an error names the command if not made yet."""
    run = pretrain_run(profile, method).require()
    return load_checkpoint(run.artifact("model.pt"))["model"]


def read_losses(profile: Profile, method: str):
    """The loss log of a finished run as a DataFrame (step, loss, lr)."""
    import pandas as pd

    return pd.read_csv(pretrain_run(profile, method).require().artifact("losses.csv"))
