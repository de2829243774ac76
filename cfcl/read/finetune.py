"""The fine-tuning runs (made by :mod:`cfcl.finetune`, whose docstring describes the key and the folds) and
their readers: the saved folds and their per-image metrics.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from cfcl import metrics
from cfcl.config import UNET_DECODER_CHANNELS, Profile, key_section, omitted_at_default
from cfcl.data import data_run, load_split
from cfcl.methods import get
from cfcl.paths import runs_dir
from cfcl.read.pretrain import pretrain_run
from cfcl.runs import Run


def fold_file(k: int, replicate: int = 0) -> str:
    """The artifact of fold ``k``, fine-tuning replicate ``replicate``."""
    return f"fold{k}.npz" if replicate == 0 else f"fold{k}-seed{replicate}.npz"


def fold_runs(profile: Profile) -> list[tuple[int, int]]:
    """Every (replicate, fold) of a fine-tuning run, in the order they are made."""
    return [(r, k) for r in range(profile.finetune.seeds) for k in range(profile.finetune.folds)]


#: Fine-tuning settings added after runs existed (declared ``omit_default``): out of the key at their default.
ADDED_LATER = omitted_at_default("finetune")


def finetune_run(profile: Profile, method: str, replicate: int = 0) -> Run:
    """The fine-tuning run of ``method``, fine-tuning seed ``replicate`` (its five folds; see
    :mod:`cfcl.finetune`). ``finetune.seeds`` is not part of the key: replicate 0 is the same run for any ``seeds``."""
    spec = get(method)
    if not 0 <= replicate < profile.finetune.seeds:
        raise ValueError(f"fine-tuning replicate {replicate} of {method}: the profile has finetune.seeds="
                         f"{profile.finetune.seeds} (replicates 0 to {profile.finetune.seeds - 1})")
    # seeds=1 in the key keeps the keys of runs made before replicates were runs of their own
    section = key_section(profile, "finetune")
    settings = {"method": method, "finetune": {**section, "seeds": 1}, "seed": profile.seed}
    if replicate:
        settings["replicate"] = replicate
    upstream = {"data/annotated": data_run(profile, "annotated"), "data/test": data_run(profile, "test")}
    if spec.pretrained:
        upstream["pretrain"] = pretrain_run(profile, method)
    else:  # from random initialisation: the architecture is all that matters of pre-training
        settings["network"] = {"encoder": profile.pretrain.encoder, "embed_dim": profile.pretrain.embed_dim}
        if tuple(profile.pretrain.decoder_channels) != UNET_DECODER_CHANNELS:  # out of the key at the default
            settings["network"]["decoder_channels"] = list(profile.pretrain.decoder_channels)
    label = method if replicate == 0 else f"{method}-seed{replicate}"
    return Run("finetune", label, settings, runs_dir(profile.name), upstream,
               remake=f"python -m cfcl.finetune {profile.cli()} --method {method}"
                      f"  (or: make finetune {profile.make_args()})")


def finetune_runs(profile: Profile, method: str) -> list[Run]:
    """The runs of every fine-tuning seed of ``method`` (replicates 0 to ``finetune.seeds`` - 1)."""
    return [finetune_run(profile, method, r) for r in range(profile.finetune.seeds)]


def load_fold(profile: Profile, method: str, k: int, replicate: int = 0) -> dict[str, np.ndarray]:
    """The saved arrays of fold ``k``, fine-tuning replicate ``replicate`` (verified against the run's
    manifest)."""
    with np.load(finetune_run(profile, method, replicate).require().artifact(fold_file(k, replicate))) as z:
        return {key: z[key] for key in z.files if key != "origin"}


def fold_metrics(profile: Profile, method: str) -> pd.DataFrame:
    """Per-image metrics of every test fold and fine-tuning replicate (columns method, seed, fold,
    index, dsc, ..., effusion; ``seed`` is the replicate, 0 to ``finetune.seeds`` - 1)."""
    annotated = load_split(profile, "annotated")
    eff = annotated.parents["effusion"].to_numpy()
    tables = []
    for r, k in fold_runs(profile):
        f = load_fold(profile, method, k, r)
        idx = f["index"]
        t = metrics.segmentation_table(f["pred"], np.asarray(annotated.gold[idx]), eff[idx])
        t.insert(0, "index", idx)
        t.insert(0, "fold", k)
        t.insert(0, "seed", r)
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    table.insert(0, "method", method)
    return table
