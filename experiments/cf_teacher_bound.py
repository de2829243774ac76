"""Is the teacher what limits counterfactual fine-tuning? Fine-tune with the judge as the teacher.

The fine-tuned HVAE's do(effusion) satisfies its teacher (the teacher reads the fluid removed on nearly
every image) while the judge still sees fluid on four images in ten: the counterfactuals are adversarial to
the teacher. This script fine-tunes the same ELBO model with the *judge* in the teacher's place (the judge
was trained on the phantom's exact counterfactuals, so this is an upper bound no real-data run can reach,
and the judge then grades its own pupil: a diagnostic, never a setting of the pipeline), beside the
pipeline's teacher under the same settings, and reads both with the judge on a fixed part of the test split
(300 images with effusion for removal, 300 without for adding, 150 + 150 for do(scanner) and do(both)).

    OMP_NUM_THREADS=1 python experiments/cf_teacher_bound.py --profile cpu [--set hvae.cf_elbo_slack=0.1 ...]

Needs the profile's ELBO run, teacher and judge (``make hvae PROFILE=cpu``); each fine-tuning is a run of its
own (keyed by its settings and its teacher), reused when made. Prints a markdown table; ``--out`` appends it.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import cfcl.counterfactual.predictors as clf
from cfcl.config import INTERVENTIONS, get_profile
from cfcl.counterfactual import cf_finetune as cft
from cfcl.counterfactual.generate import counterfactual_images
from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.parents import intervene, parents_tensor
from cfcl.counterfactual.quality import changed_region_dice, mae
from cfcl.data import load_split
from cfcl.runs import load_checkpoint

#: Test images per case (the first ones of each kind in the split's order).
N_CASE = 300


def cases(effusion: np.ndarray) -> dict[str, tuple[str, np.ndarray]]:
    """``name -> (intervention, test indices)``: removal on images with effusion, adding on images without,
    do(scanner) and do(both) on half of each."""
    eff, healthy = np.flatnonzero(effusion == 1)[:N_CASE], np.flatnonzero(effusion == 0)[:N_CASE]
    mixed = np.r_[eff[:N_CASE // 2], healthy[:N_CASE // 2]]
    return {"remove": ("effusion", eff), "add": ("effusion", healthy), "scanner": ("scanner", mixed),
            "both": ("both", mixed)}


def with_teacher(stand_in: str, fn, *args, **kwargs):
    """Call ``fn`` with ``stand_in``'s predictors in the teacher's place wherever it asks for the teacher
    (the fine-tuning's key then names that role's run); other roles are served as usual."""
    load, run = clf.load_classifiers, clf.classifier_run

    def swap(role: str) -> str:
        return stand_in if role == "teacher" else role

    clf.load_classifiers = lambda profile, role="teacher": load(profile, role=swap(role))
    clf.classifier_run = lambda profile, role="teacher", lr=1e-3: run(profile, swap(role), lr)
    try:
        return fn(*args, **kwargs)
    finally:
        clf.load_classifiers, clf.classifier_run = load, run


def judged(profile, model: HVAE, data, judge) -> list[dict]:
    """One row per case, each metric as :func:`cfcl.counterfactual.quality.quality_rows` defines it: the judge's
    effectiveness, MAE to the exact counterfactual (and as a multiple of returning x), changed-region Dice,
    and ``sex_kept`` (the judge reads the same sex on the counterfactual as on x)."""
    pa_all = parents_tensor(data.parents)
    rows = []
    for name, (k, idx) in cases(data.parents["effusion"].to_numpy()).items():
        pa = pa_all[idx]
        cf_pa = intervene(pa, k)
        out = counterfactual_images(model, data.images[idx], pa, cf_pa, batch_size=100)
        p = clf.predict_parents(judge, out) > 0.5
        sex_x = clf.predict_parents(judge, data.images[idx])[:, 0] > 0.5
        target = cf_pa.numpy() > 0.5
        heads = {"scanner": (1,), "effusion": (2,), "both": (1, 2)}[k]
        exact = data.counterfactuals[idx, INTERVENTIONS.index(k)]
        err, base = mae(out, exact).mean(), mae(data.images[idx], exact).mean()
        rows.append(dict(case=name, n=len(idx), effectiveness=np.all(p[:, heads] == target[:, heads], 1).mean(),
                         oracle_mae=err, vs_identity=err / base,
                         changed_dice=np.nanmean(changed_region_dice(data.images[idx], out, exact)),
                         sex_kept=(p[:, 0] == sex_x).mean()))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--roles", nargs="*", default=["teacher", "judge"], choices=clf.ROLES)
    ap.add_argument("--out", default=None, help="append the table to this markdown file")
    args = ap.parse_args(argv)
    prof = get_profile(args.profile, args.overrides)
    data = load_split(prof, "test")
    if data.counterfactuals is None:
        raise SystemExit(f"data source {prof.data.source!r} has no exact counterfactuals: this needs the phantom")
    judge = clf.load_classifiers(prof, role="judge")
    rows = []
    for role in args.roles:
        run = with_teacher(role, cft.finetune_counterfactuals, prof)
        ck = load_checkpoint(run.artifact(cft.CHECKPOINT_NAME))
        model = HVAE.from_config(ck["model_config"])
        model.load_state_dict(ck["ema"])
        rows += [dict(teacher=role, run=run.folder.name, **r) for r in judged(prof, model.eval(), data, judge)]
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")
    text = f"\n`--set {' '.join(args.overrides) or '(defaults)'}`\n\n{table}\n"
    print(text)
    if args.out:
        with Path(args.out).open("a") as f:
            f.write(text)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
