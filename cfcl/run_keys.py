"""The runs a profile's figures come from, by key, without making any of them.

:func:`figure_runs` lists, for one profile, every run its notebooks read: the data splits, the HVAE
(ELBO and counterfactually fine-tuned), the teacher and judge parent predictors, the counterfactual
arrays, the counterfactual-quality tables, and every pre-training and fine-tuning run (over the
``pretrain.seeds`` replicates and the ``finetune.seeds`` fine-tuning seeds), with the runs each
consumes (its upstream, followed to the data). With ``ablations=True`` the arms of every ablation of
:mod:`cfcl.ablations` are added (their pre-training and fine-tuning runs and upstream).

A run's key comes from its settings alone (:class:`cfcl.runs.Run` computes it when the object is
built; nothing is trained or read), so the list is the same on any machine and at any time for one
version of the code: ``figures/<label>/runs.csv`` (:func:`write_runs_csv`) records it next to the
figures, and ``tests/test_keys.py`` checks that the current code still computes the committed
``cpu`` keys (the runs made with them stay valid).

``python -m cfcl.run_keys PROFILE [--variant V] [--set k=v ...] [--[no-]ablations]`` writes the file (by
default with the arms for the default variant, without them for a named variant).
"""
from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

from cfcl.ablations import make_plan
from cfcl.config import Profile, get_profile
from cfcl.data import SPLITS, data_run
from cfcl.methods import FINETUNE_METHODS, METHODS
from cfcl.paths import atomic_path, figures_dir
from cfcl.read.classifiers import classifier_run
from cfcl.read.counterfactuals import counterfactual_run, quality_run
from cfcl.read.finetune import finetune_runs
from cfcl.read.hvae import counterfactual_model_run, elbo_only
from cfcl.read.pretrain import pretrain_run
from cfcl.replicates import replicate_profiles
from cfcl.runs import Run

COLUMNS = ("variant", "stage", "label", "key")
# Rows are ordered by stage along the chain of stages (cfcl.runs), then by variant and label.
STAGE_ORDER = ("phantom", "padchest", "classifiers", "hvae", "hvae_cf", "counterfactuals", "cf_quality",
               "pretrain", "finetune")


def _own_runs(profile: Profile) -> list[tuple[str, Run]]:
    """``(variant, run)`` of the runs notebooks 00-06 read under ``profile`` (upstream not yet followed)."""
    runs = [data_run(profile, s) for s in SPLITS]
    runs += [classifier_run(profile, "teacher"), classifier_run(profile, "judge"), counterfactual_model_run(profile)]
    runs += [counterfactual_run(profile, s) for s in ("test", "pretrain")]
    if profile.hvae.cf_finetune_steps > 0:  # notebook 02's "before": the ELBO-only HVAE's counterfactuals
        runs.append(counterfactual_run(elbo_only(profile), "test"))
    runs += [quality_run(profile, "test"), quality_run(profile, "test", alpha=0.5, before=False)]
    return [(profile.variant, r) for r in runs] + _training_runs(profile)


def _training_runs(profile: Profile, methods: Sequence[str] | None = None) -> list[tuple[str, Run]]:
    """``(variant, run)`` of the pre-training and fine-tuning runs of ``methods`` (default: all) over the
    profile's pre-training replicates (:func:`cfcl.replicates.replicate_profiles`, each under its own
    variant) and fine-tuning seeds."""
    methods = FINETUNE_METHODS if methods is None else methods
    runs: list[tuple[str, Run]] = []
    for k, prof in enumerate(replicate_profiles(profile)):
        for m in methods:
            if METHODS[m].pretrained:
                runs.append((prof.variant, pretrain_run(prof, m)))
            elif k > 0:  # None pre-trains nothing: one run for every replicate
                continue
            runs += [(prof.variant, r) for r in finetune_runs(prof, m)]
    return runs


def _arm_runs(profile: Profile) -> list[tuple[str, Run]]:
    """``(variant, run)`` of the ablation arms beyond the profile's own run (:func:`cfcl.ablations.make_plan`);
    none for real data (the ablations are the phantom's: their arms need its exact counterfactuals)."""
    out = []
    if profile.data.source != "phantom":
        return out
    for variant, overrides, methods in make_plan(profile):
        if variant == profile.variant:
            continue
        arm = get_profile(profile.name, overrides, variant)
        out += _training_runs(arm, methods.split())
    return out


def _with_upstream(runs: Iterable[tuple[str, Run]]) -> list[tuple[str, Run]]:
    """The runs and, recursively, every run they consume; each (stage, label, key) once, first variant kept."""
    seen: dict[tuple[str, str, str], tuple[str, Run]] = {}
    todo = list(runs)
    while todo:
        variant, run = todo.pop(0)
        ident = (run.stage, run.label, run.key)
        if ident in seen:
            continue
        seen[ident] = (variant, run)
        todo += [(variant, up) for _, up in sorted(run.upstream.items())]
    return list(seen.values())


def figure_runs(profile: Profile, ablations: bool = False) -> list[dict[str, str]]:
    """Rows ``{variant, stage, label, key}`` of every run the figures of ``profile`` come from (see the
    module docstring), in :data:`STAGE_ORDER`; building them trains and reads nothing."""
    rows = _with_upstream(_own_runs(profile) + (_arm_runs(profile) if ablations else []))
    order = {s: i for i, s in enumerate(STAGE_ORDER)}
    out = [{"variant": v, "stage": r.stage, "label": r.label, "key": r.key} for v, r in rows]
    return sorted(out, key=lambda d: (order.get(d["stage"], len(order)), d["stage"], d["variant"], d["label"],
                                      d["key"]))


def runs_csv_text(rows: Sequence[dict[str, str]]) -> str:
    """The CSV text of :func:`figure_runs`' rows (columns :data:`COLUMNS`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_runs_csv(profile: Profile, ablations: bool | None = None) -> Path:
    """Write ``figures/<label>/runs.csv``: the runs :func:`figure_runs` lists; return its path.

    ``ablations=None`` adds the ablation arms (whose figures go to ``figures/<label>/ablations/``) for the
    profile's default variant only: a variant (``powered``, ``pr2``, ``long``) lists its own runs, as its
    committed file does, so a rerun of ``make reproduce VARIANT=...`` rewrites that file byte for byte."""
    if ablations is None:
        ablations = not profile.variant
    path = figures_dir(profile.label) / "runs.csv"
    text = runs_csv_text(figure_runs(profile, ablations=ablations))
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cfcl.run_keys",
                                 description="Write figures/<label>/runs.csv: the key of every run the figures "
                                             "come from (nothing is trained).")
    ap.add_argument("profile")
    ap.add_argument("--variant", default="")
    ap.add_argument("--set", nargs="*", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=None,
                    help="with (or without) the ablation arms' runs; default: with them for the default variant only")
    args = ap.parse_args(argv)
    print(write_runs_csv(get_profile(args.profile, args.overrides, args.variant), ablations=args.ablations))


if __name__ == "__main__":
    main()
