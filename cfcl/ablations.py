"""Ablations only a causal phantom allows, as variants of the one pipeline (issue: a protocol that can tell).

Each ablation is a few *arms*; an arm is a variant (``make reproduce ... VARIANT=<label> SET=<overrides>``
without the figures): its runs share every upstream run its overrides do not touch, and only the
methods the ablation compares are fine-tuned. The arms are then compared on the held-out test set
with the paired statistics of :mod:`cfcl.stats` (notebook 07, ``make ablations``):

- ``cf_source``: where the three extra views of DVD-CL and S-MVD-CL come from: ``identity`` (x itself:
  as many views, none counterfactual; separates "more views" from "counterfactual views"), ``hvae``
  (the paper), ``oracle`` (the phantom's exact counterfactuals);
- ``dose``: views ``x + g (exact - x)`` for g in {0, 0.5, 1}: DVD-CL's gain as a function of how much
  of the true counterfactual change the views carry;
- ``confounding``: the scanner-effusion odds ratio of the data (1, the real ~2.4, 20), with exact
  counterfactuals so the HVAE is not retrained per arm; DVD-CL against VADeR and None on the rare cell
  (effusion on ImagingDynamics scanners), where confounded augmentation should help most;
- ``labels``: silver (CheXmask-like) against gold labels for CheXmask-supervised pre-training and
  S-MVD-CL: the cost of silver labels;
- ``replicate``: DVD-CL and S-MVD-CL pre-trained again with another seed (``pretrain.replicate=1``: another
  initialisation, batch order, views and sampled pixels; the fine-tuning seeds unchanged): ``m [r1] - m [r0]``
  is the spread one pre-training run leaves in every other one-run comparison (an interval covering 0
  is the expected verdict; its width is the noise floor of the ablations above), and each method against
  None in both replicates says whether its verdict survives a new pre-training seed;
- ``length``: DVD-CL with exact counterfactuals after a third of, as many as, three, nine and 27 times
  the profile's pre-training steps (100, 300, 900, 2,700, 8,100 at `cpu`) against None, and VADeR (dense
  contrastive pre-training without counterfactual views; its runs ignore ``pretrain.cf_source``, so its
  300-step arm is the profile's VADeR) beside it from the profile's length on: the pre-training-length
  curve, with the control that tells whether length helps counterfactual views or dense pre-training in
  general (DVD-CL - None, VADeR - None, DVD-CL - VADeR at each length).
- ``cf_source_long``: ``cf_source`` for DVD-CL after nine times the profile's pre-training steps (2,700 at
  `cpu`): whether the HVAE's do(effusion) fidelity gap costs anything once pre-training has converged (its
  ``oracle`` arm is the ``length`` ablation's ninefold arm, its ``hvae`` arm the ``long`` variant's first
  pre-training replicate);
- ``low_label``: fine-tuning on 10 annotated images per fold (3 healthy + 7 effusion, drawn from the fold's
  training folds, :func:`cfcl.finetune.training_images`) against all of them (56 per fold at `cpu`), for
  the same number of optimiser steps (``finetune.epochs`` scaled, 140 steps at `cpu`): whether pre-training
  (DVD-CL, S-MVD-CL) gains on None, and S-MVD-CL on CheXmask-supervised pre-training, where labels are
  scarce. Its contrasts are method against baseline within each arm.
- ``schedule``: None fine-tuned with a cosine decay of the learning rate over 1.5 times the profile's
  epochs (``finetune.schedule=cosine``) against the profile's constant rate: whether a schedule that
  converges cuts the seed-to-seed spread of fine-tuning (:func:`seed_spread`; run with
  ``finetune.seeds=3`` or more) at most at 1.5 times the cost;
- ``ceiling``: None fine-tuned on :data:`CEILING_IMAGES` healthy + as many effusion images with exact masks
  (two folds: each model trains on half of them; cosine schedule) for :data:`CEILING_EPOCHS` epochs and for
  half as many (``many_half``: does doubling the training still move it?), against the profile's 56 per
  fold: the DSC a U-Net attains on the phantom at the profile's resolution when labels are not scarce,
  the ceiling every pre-training gain is a share of. Only the annotated split and fine-tuning change: the
  test split is the same, so the contrasts stay paired.

Arms with the same overrides are one run (the dose's g=0 is the ``identity`` source: x itself; g=1 is
``oracle``), and an arm without overrides is the profile's own run. Each arm's runs go under
``runs/<profile>/`` like every run (keyed by their settings), its executed notebooks under
``runs/<profile>-abl-<ablation>-<arm>/notebooks/``.

Statistics (:func:`contrasts`): per contrast the paired per-image difference on the held-out test
split (restricted to ``cell`` where given), on DSC, DSC of the effusion images and the hidden-lung
recall, each ablation one family (intervals at the Bonferroni level, Holm-adjusted Wilcoxon p,
Hodges-Lehmann estimate, verdicts as for the claims, :func:`cfcl.stats.contrast_family`). Direction: ``a``
is expected ahead. :func:`arm_means` gives each (method, arm) its pre-training ``steps`` and its number of
(pre-training replicate, fine-tuning seed) pairs ``seeds``.

What the statistics stand on is written next to them: :func:`per_image` (what notebook 07 reads) writes
``figures/<label>/ablations/<name>_per_image.csv``, one row per (arm, method, replicate, seed, test image
of the ablation's cell), each metric the mean over that pair's folds (4 decimals); :func:`tables_from_csv`
reads it back into the tables :func:`contrasts` and :func:`arm_means` take.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cfcl.config import get_profile
from cfcl.methods import FINETUNE_METHODS, METHODS

if TYPE_CHECKING:  # plain Python at import: the Makefile asks `python3 -m cfcl.ablations plan`
    import pandas as pd


@dataclass(frozen=True)
class Ablation:
    """``arms``: arm name -> overrides (``""``: the profile's default run); ``methods``: the methods
    fine-tuned in every arm, unless ``arm_methods`` names an arm's own (a subset); ``contrasts``: (method a,
    arm a, method b, arm b) pairs to decide; ``cell``: restrict the test images to (scanner, effusion), or
    None for all."""

    name: str
    title: str
    arms: dict[str, str]
    methods: tuple[str, ...]
    contrasts: tuple[tuple[str, str, str, str], ...]
    cell: tuple[int, int] | None = None
    arm_methods: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def methods_of(self, arm: str) -> tuple[str, ...]:
        """The methods fine-tuned in ``arm``."""
        return self.arm_methods.get(arm, self.methods)


#: The low-label regime: images each fold fine-tunes on (the claims issue: 3 healthy + 7 effusion).
LOW_LABEL = (3, 7)
#: The ceiling ablation: healthy (and as many effusion) images with exact masks, and epochs over half of them.
CEILING_IMAGES, CEILING_EPOCHS = 1000, 12
_CEILING = (f"data.n_annotated_healthy={CEILING_IMAGES} data.n_annotated_effusion={CEILING_IMAGES} "
            "finetune.folds=2 finetune.schedule=cosine finetune.epochs=")

#: The ``length`` arms, shortest first (VADeR from the second on: its 100-step arm is not made).
_LENGTH_ARMS = ("third", "profile", "triple", "ninefold", "x27")
#: The counterfactual-source contrasts (arm a, arm b) of ``cf_source`` and ``cf_source_long``.
_SOURCE_PAIRS = (("hvae", "identity"), ("oracle", "identity"), ("oracle", "hvae"))


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("cf_source", "Where the counterfactual views come from",
             {"identity": "pretrain.cf_source=identity", "hvae": "", "oracle": "pretrain.cf_source=oracle"},
             ("dvd_cl", "s_mvd_cl"),
             tuple((m, a, m, b) for m in ("dvd_cl", "s_mvd_cl") for a, b in _SOURCE_PAIRS)),
    Ablation("dose", "Dose-response: views x + g (exact - x)",
             {"g0": "pretrain.cf_source=identity", "g05": "pretrain.cf_source=oracle pretrain.cf_gain=0.5",
              "g1": "pretrain.cf_source=oracle"},
             ("dvd_cl",), (("dvd_cl", "g05", "dvd_cl", "g0"), ("dvd_cl", "g1", "dvd_cl", "g0"),
                           ("dvd_cl", "g1", "dvd_cl", "g05"))),
    Ablation("confounding", "Scanner-effusion confounding (test: effusion on ImagingDynamics)",
             {"or1": "data.scanner_effusion_odds_ratio=1 pretrain.cf_source=oracle",
              "real": "pretrain.cf_source=oracle",
              "or20": "data.scanner_effusion_odds_ratio=20 pretrain.cf_source=oracle"},
             ("none", "vader", "dvd_cl"),
             tuple((a, arm, b, arm) for arm in ("or1", "real", "or20") for a, b in (("dvd_cl", "vader"), ("dvd_cl", "none"))),
             cell=(0, 1)),
    Ablation("labels", "Silver against gold labels for supervised pre-training",
             {"silver": "", "gold": "pretrain.labels=gold"}, ("chexmask", "s_mvd_cl"),
             (("chexmask", "gold", "chexmask", "silver"), ("s_mvd_cl", "gold", "s_mvd_cl", "silver"))),
    Ablation("replicate", "Pre-training replicates: a second pre-training seed",
             {"r0": "", "r1": "pretrain.replicate=1"}, ("none", "dvd_cl", "s_mvd_cl"),
             (("dvd_cl", "r1", "dvd_cl", "r0"), ("s_mvd_cl", "r1", "s_mvd_cl", "r0"),
              *((m, r, "none", r) for m in ("dvd_cl", "s_mvd_cl") for r in ("r0", "r1")))),
    Ablation("length", "Pre-training length (DVD-CL with exact counterfactuals, VADeR) against None",
             {"third": "pretrain.cf_source=oracle pretrain.steps={steps_third}", "profile": "pretrain.cf_source=oracle",
              "triple": "pretrain.cf_source=oracle pretrain.steps={steps_triple}",
              "ninefold": "pretrain.cf_source=oracle pretrain.steps={steps_9x}",
              "x27": "pretrain.cf_source=oracle pretrain.steps={steps_27x}"},
             ("none", "dvd_cl", "vader"),
             (*(("dvd_cl", arm, "none", arm) for arm in _LENGTH_ARMS),
              *(("vader", arm, "none", arm) for arm in _LENGTH_ARMS[1:]),
              *(("dvd_cl", arm, "vader", arm) for arm in _LENGTH_ARMS[1:])),
             arm_methods={"third": ("none", "dvd_cl")}),
    Ablation("cf_source_long", "Where the counterfactual views come from, after nine times the pre-training",
             {"identity": "pretrain.cf_source=identity pretrain.steps={steps_9x}", "hvae": "pretrain.steps={steps_9x}",
              "oracle": "pretrain.cf_source=oracle pretrain.steps={steps_9x}"},
             ("dvd_cl",), tuple(("dvd_cl", a, "dvd_cl", b) for a, b in _SOURCE_PAIRS)),
    Ablation("low_label", "Ten labels per fold (3 healthy + 7 effusion) against all of them",
             {"all": "", "ten": f"finetune.train_healthy={LOW_LABEL[0]} finetune.train_effusion={LOW_LABEL[1]} "
                                "finetune.epochs={epochs_low}"},
             ("none", "chexmask", "dvd_cl", "s_mvd_cl"),
             tuple((a, arm, b, arm) for arm in ("ten", "all")
                   for a, b in (("dvd_cl", "none"), ("s_mvd_cl", "none"), ("s_mvd_cl", "chexmask")))),
    Ablation("schedule", "Fine-tuning schedule: cosine decay over 1.5x the epochs against a constant rate",
             {"constant": "", "cosine": "finetune.schedule=cosine finetune.epochs={epochs_x1_5}"}, ("none",),
             (("none", "cosine", "none", "constant"),)),
    Ablation("ceiling", f"The phantom's ceiling: None fine-tuned on {CEILING_IMAGES} + {CEILING_IMAGES} labelled images",
             {"paper": "", "many_half": _CEILING + str(CEILING_EPOCHS // 2), "many": _CEILING + str(CEILING_EPOCHS)},
             ("none",), (("none", "many", "none", "paper"), ("none", "many", "none", "many_half"))),
)}
METRICS = ("dsc", "dsc_pe", "hidden_recall")


def arm_variant(ablation: str, arm: str) -> str:
    """The variant name of an arm (its runs and notebooks go under ``runs/<profile>-<variant>/``)."""
    return f"abl-{ablation}-{arm}"


def _steps_per_epoch(n: int, batch: int) -> int:
    """Optimiser steps of one fine-tuning epoch over ``n`` images (a last batch of one image is skipped)."""
    return n // batch + (1 if n % batch >= 2 else 0)


def _resolve(over: str, profile) -> str:
    """An arm's overrides for ``profile``: ``{steps_third}``, ``{steps_triple}``, ``{steps_9x}`` and ``{steps_27x}``
    become a third of, three, nine and 27 times the profile's pre-training steps; ``{epochs_low}`` the fine-tuning epochs that give the
    low-label arm (:data:`LOW_LABEL` images per fold) the profile's number of optimiser steps; ``{epochs_x1_5}``
    1.5 times the profile's fine-tuning epochs."""
    steps, d, ft = profile.pretrain.steps, profile.data, profile.finetune
    n_full = (d.n_annotated_healthy + d.n_annotated_effusion) * (ft.folds - 1) // ft.folds
    per_epoch = _steps_per_epoch(n_full, ft.batch_size), _steps_per_epoch(sum(LOW_LABEL), ft.batch_size)
    return over.format(steps_third=max(1, steps // 3), steps_triple=3 * steps, steps_9x=9 * steps, steps_27x=27 * steps,
                       epochs_low=max(1, round(ft.epochs * per_epoch[0] / per_epoch[1])),
                       epochs_x1_5=max(1, round(1.5 * ft.epochs)))


def _arms(profile, names: list[str] | None = None) -> dict[str, tuple[str, set[str]]]:
    """Distinct arms of the ``names`` ablations (all by default): resolved overrides -> (variant,
    methods). An arm shared by several ablations is named after the first in the registry, whichever are
    asked; under a variant of the profile, arms are ``<variant>-abl-...`` and the own run is the variant."""
    prefix = f"{profile.variant}-" if profile.variant else ""
    variants: dict[str, str] = {}
    for ab in ABLATIONS.values():
        for arm, over in ab.arms.items():
            variants.setdefault(_resolve(over, profile), prefix + arm_variant(ab.name, arm) if over else profile.variant)
    out: dict[str, tuple[str, set[str]]] = {}
    for ab in (ABLATIONS[n] for n in (names or ABLATIONS)):
        for arm, o in ab.arms.items():
            over = _resolve(o, profile)
            out[over] = (variants[over], out.get(over, ("", set()))[1] | set(ab.methods_of(arm)))
    return out


def make_plan(profile, names: list[str] | None = None) -> list[tuple[str, str, str]]:
    """``(variant, overrides, methods)`` of every distinct arm of the ``names`` ablations under
    ``profile`` (a :class:`cfcl.config.Profile`), for the Makefile; the profile's own run has its own
    variant (``""`` by default) and overrides. Unknown names are an error listing the ablations."""
    unknown = [n for n in names or () if n not in ABLATIONS]
    if unknown:
        raise SystemExit(f"unknown ablation(s) {unknown}; choose among {list(ABLATIONS)}")

    return [(variant, " ".join([*profile.overrides, *over.split()]),
             " ".join(m for m in FINETUNE_METHODS if m in methods))
            for over, (variant, methods) in _arms(profile, names).items()]


def arm_profile(profile, ablation: str, arm: str):
    """The profile of one arm: ``profile``'s overrides plus the arm's, under the arm's variant."""
    over = _resolve(ABLATIONS[ablation].arms[arm], profile)
    return get_profile(profile.name, [*profile.overrides, *over.split()], _arms(profile)[over][0])


def available(profile) -> tuple[list[str], dict[str, str]]:
    """The ablations whose every (arm, method) has finished fine-tuning under ``profile``, and for the others
    the command that makes them (notebook 07 without an explicit list reports those, it does not run them)."""
    from cfcl.read.finetune import finetune_runs

    done, missing = [], {}
    for name, ab in ABLATIONS.items():
        if all(run.is_finished() for arm in ab.arms for m in ab.methods_of(arm)
               for run in finetune_runs(arm_profile(profile, name, arm), m)):
            done.append(name)
        else:
            missing[name] = f"make ablations {profile.make_args()} ABLATIONS={name}"
    return done, missing


def per_image(profile, ablation: str, write: bool = True) -> dict[tuple[str, str], pd.DataFrame]:
    """Per-image test metrics (:func:`cfcl.results.test_per_image`, mean over the fold models) of every
    (method, arm) of ``ablation``, restricted to its ``cell``; an error names the command when an arm's
    runs are missing. Each table's ``attrs`` hold ``steps`` (the arm's pre-training steps) and ``seeds``
    (its (pre-training replicate, fine-tuning seed) pairs). With ``write`` and a labelled test split, also
    writes ``figures/<label>/ablations/<ablation>_per_image.csv`` (the module docstring)."""
    import numpy as np
    import pandas as pd

    from cfcl.data import load_split
    from cfcl.results import changed_regions, model_metrics, run_table, test_per_image, write_runs

    ab = ABLATIONS[ablation]
    out, runs = {}, []
    for arm in ab.arms:
        prof = arm_profile(profile, ablation, arm)
        regions = changed_regions(prof)
        keep = None
        if ab.cell is not None:
            par = load_split(prof, "test").parents
            keep = np.flatnonzero((par["scanner"].to_numpy() == ab.cell[0]) & (par["effusion"].to_numpy() == ab.cell[1]))
        labelled = load_split(prof, "test").gold is not None
        for m in ab.methods_of(arm):
            models = model_metrics(prof, m, regions) if labelled else None
            t = test_per_image(prof, m, regions, models=models)
            t = t if keep is None else t.loc[t.index.intersection(keep)]
            r = None
            if models is not None:
                r = run_table({m: models})
                r = (r if keep is None else r[r["image"].isin(keep)]).copy()
                r.insert(0, "steps", prof.pretrain.steps)
                r.insert(0, "arm", arm)
                runs.append(r)
            t.attrs.update(steps=prof.pretrain.steps,
                           seeds=len(r[["replicate", "seed"]].drop_duplicates()) if r is not None else np.nan)
            out[(m, arm)] = t
    if write and runs:
        write_runs(pd.concat(runs, ignore_index=True), profile, f"ablations/{ablation}_per_image")
    return out


def tables_from_csv(path) -> dict[tuple[str, str], pd.DataFrame]:
    """The per-image tables of an ablation (as :func:`per_image` returns them) from its committed
    ``<name>_per_image.csv`` alone: per (method, arm) the mean over its (replicate, seed) rows, with
    ``attrs`` ``steps`` and ``seeds``; a missing column is an error naming the file."""
    import pandas as pd

    from cfcl.claims import RUN_COLUMNS, tables_from_runs

    t = pd.read_csv(path)
    missing = [c for c in ("arm", "steps", *RUN_COLUMNS) if c not in t]
    if missing:
        raise ValueError(f"{path}: columns {missing} missing; write it again with cfcl.ablations.per_image")
    out = {}
    for arm, g in t.groupby("arm", sort=False):
        tables, _ = tables_from_runs(g.drop(columns=["arm", "steps"]))
        for m, table in tables.items():
            rows = g[g["method"] == m]
            table.attrs.update(steps=int(rows["steps"].iloc[0]), seeds=len(rows[["replicate", "seed"]].drop_duplicates()))
            out[(m, str(arm))] = table
    return out


def contrasts(tables: dict[tuple[str, str], pd.DataFrame], ablation: str, metrics: tuple[str, ...] = METRICS,
              n_boot: int = 10000, seed: int = 0) -> pd.DataFrame:
    """The contrasts of ``ablation`` on per-image ``tables`` (:func:`per_image`), one family over all
    contrasts x ``metrics`` (a metric a table lacks, or with fewer than 2 paired images, is left out).
    Columns ``ablation``, ``contrast``, ``metric``, ``estimate``, ``ci_low``, ``ci_high``, ``hl`` (x 100),
    ``p``, ``p_holm``, ``verdict``, ``n``, ``detectable``, ``sd``, ``level``, then ``a``, ``arm_a``, ``b``,
    ``arm_b`` (the methods and arms compared) and ``steps`` (arm a's pre-training steps, from the tables'
    ``attrs``; nan where they do not say)."""
    import pandas as pd

    from cfcl import stats
    from cfcl.claims import paired

    ab = ABLATIONS[ablation]
    if ab.cell is not None and ab.cell[1] == 1:  # a cell of effusion images: DSC_PE would repeat DSC
        metrics = tuple(m for m in metrics if m != "dsc_pe")
    kept, pairs = [], []
    for metric in metrics:
        for ma, arm_a, mb, arm_b in ab.contrasts:
            pair = paired(tables[(ma, arm_a)], tables[(mb, arm_b)], metric)
            if pair is None:
                continue
            kept.append((f"{METHODS[ma].display} [{arm_a}] - {METHODS[mb].display} [{arm_b}]", metric,
                         {"a": ma, "arm_a": arm_a, "b": mb, "arm_b": arm_b,
                          "steps": tables[(ma, arm_a)].attrs.get("steps", float("nan"))}))
            pairs.append((*pair, 1))
    rows = stats.contrast_family(pairs, n_boot=n_boot, seed=seed)
    columns = ["ablation", "contrast", "metric", "estimate", "ci_low", "ci_high", "hl", "p", "p_holm", "verdict", "n",
               "detectable", "sd", "level", "a", "arm_a", "b", "arm_b", "steps"]
    return pd.DataFrame([{"ablation": ablation, "contrast": c, "metric": m, **r, **extra}
                         for (c, m, extra), r in zip(kept, rows)], columns=columns)


def arm_means(tables: dict[tuple[str, str], pd.DataFrame], metrics: tuple[str, ...] = METRICS) -> pd.DataFrame:
    """Mean per-image metric (x 100) of every (method, arm), with its pre-training ``steps`` (the arm's;
    None pre-trains nothing and its rows repeat one run), ``seeds`` (its (pre-training replicate,
    fine-tuning seed) pairs) and ``n`` test images: columns ``method``, ``arm``, ``steps``, ``seeds``,
    ``n``, then the metrics. ``steps`` and ``seeds`` come from the tables' ``attrs`` (:func:`per_image`,
    :func:`tables_from_csv`), nan where they do not say."""
    import numpy as np
    import pandas as pd

    from cfcl.claims import _metric

    rows = []
    for (m, arm), t in tables.items():
        row = {"method": m, "arm": arm, "steps": t.attrs.get("steps", np.nan), "seeds": t.attrs.get("seeds", np.nan),
               "n": len(t)}
        for metric in metrics:
            if metric == "dsc_pe" or metric in t:
                row[metric] = 100 * float(np.nanmean(_metric(t, metric))) if len(_metric(t, metric)) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def seed_spread(runs: pd.DataFrame, metric: str = "dsc") -> pd.DataFrame:
    """How far the fine-tuning seeds of one method and arm lie apart on the test split, from an ablation's
    per-image rows (``<name>_per_image.csv``: ``arm``, ``method``, ``replicate``, ``seed``, ``image``, the
    metric): per (arm, method) the number of ``seeds``, each seed's mean (``seed_means``, x 100), their
    standard deviation ``sd`` and range ``range``, and ``image_sd``: the per-image standard deviation
    over the seeds averaged over images (x 100; steadier than ``sd`` with few seeds)."""
    import numpy as np
    import pandas as pd

    rows = []
    for (arm, method), g in runs.groupby(["arm", "method"], sort=False):
        wide = g.pivot_table(index="image", columns=["replicate", "seed"], values=metric, aggfunc="mean")
        means = 100 * wide.mean(axis=0).to_numpy()
        rows.append({"arm": arm, "method": method, "seeds": wide.shape[1],
                     "seed_means": " ".join(f"{m:.2f}" for m in means),
                     "sd": float(np.std(means, ddof=1)) if len(means) > 1 else np.nan,
                     "range": float(np.ptp(means)),
                     "image_sd": 100 * float(np.nanmean(wide.std(axis=1, ddof=1))) if wide.shape[1] > 1 else np.nan})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    """``python3 -m cfcl.ablations plan PROFILE [NAME ...] [-- OVERRIDES]``: one line per distinct arm to
    run, ``variant|overrides|methods``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "plan":
        raise SystemExit("usage: python -m cfcl.ablations plan PROFILE [NAME ...] [-- OVERRIDES [VARIANT]]")

    names, over = args[2:], []
    if "--" in names:
        names, over = names[:names.index("--")], names[names.index("--") + 1:]
    variant = next((o[len("variant="):] for o in over if o.startswith("variant=")), "")
    profile = get_profile(args[1], [o for o in over if not o.startswith("variant=")], variant)
    for variant, overrides, methods in make_plan(profile, names or None):
        print(f"{variant}|{overrides}|{methods}")


if __name__ == "__main__":
    main()
