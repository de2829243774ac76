"""Can the HVAE's do(effusion) be confined to the lungs, with a mask read from x alone?

Most of the fine-tuned HVAE's excess error lies outside the region do(effusion) may change
(`cf_noise_abduction.md`). On real data every image has a CheXmask silver lung mask, so a user might keep the
HVAE's change only in x's lung region: ``x_loc = x + m * (x_cf - x)``, ``m`` the silver mask of x (or its
convex hull) dilated by ``r`` pixels and softened by a 1-pixel Gaussian (``cf_localise.blend``). This script
measures, on the test split's stored counterfactuals and the phantom's exact ones: how much of the exact
change each mask covers (adding fluid to healthy images, removing it from effusion images), and the judge's
effectiveness, the MAE to the exact counterfactual and the changed-region Dice of the masked do(effusion),
beside x and the HVAE as they are. A measurement, not a setting of the pipeline.

    OMP_NUM_THREADS=1 python experiments/cf_lung_region.py --profile cpu [--set KEY=VALUE ...]

Needs the profile's test-split counterfactuals and judge (``make hvae PROFILE=cpu``). Writes
``experiments/results/cf_lung_region.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cfcl.config import INTERVENTIONS, PARENTS, get_profile
from cfcl.counterfactual.diagnostics import blend, lung_masks
from cfcl.counterfactual.generate import ARRAY_NAME, counterfactual_run
from cfcl.counterfactual.predictors import load_classifiers, predict_parents
from cfcl.counterfactual.quality import changed_region_dice, mae
from cfcl.data import load_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--radii", type=int, nargs="*", default=[0, 4, 8, 12])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cf_lung_region.md"))
    args = ap.parse_args(argv)
    prof = get_profile(args.profile, args.overrides)
    data = load_split(prof, "test")
    if data.counterfactuals is None:
        raise SystemExit(f"data source {prof.data.source!r} has no exact counterfactuals: this needs the phantom")
    k, j = INTERVENTIONS.index("effusion"), PARENTS.index("effusion")
    x, silver = np.asarray(data.images), np.asarray(data.silver)
    oracle = np.asarray(data.counterfactuals)[:, k]
    cf = np.load(counterfactual_run(prof, "test").require().artifact(ARRAY_NAME))[:, k]
    judge = load_classifiers(prof, role="judge")
    healthy = data.parents["effusion"].to_numpy() == 0
    changed = np.abs(oracle.astype(np.float32) - x) > 25.5  # the changed region (changed_region_dice's threshold)
    rows = []

    def covers(mask: np.ndarray | None, sel: np.ndarray) -> float:
        """Share of the exact change of the images ``sel`` inside ``mask`` (nan without a mask)."""
        return np.nan if mask is None else float(changed[sel][mask[sel]].sum() / max(changed[sel].sum(), 1))

    def row(name: str, view: np.ndarray, mask: np.ndarray | None) -> None:
        read = predict_parents(judge, view)[:, j] > 0.5
        effective = read == healthy  # the flipped value: fluid read on healthy images, none on the others
        err = mae(view, oracle)
        rows.append(dict(view=name, mask_share=np.nan if mask is None else float(mask.mean()),
                         covers_add=covers(mask, healthy), covers_remove=covers(mask, ~healthy),
                         effectiveness=effective.mean(), eff_add=effective[healthy].mean(),
                         eff_remove=effective[~healthy].mean(), oracle_mae=err.mean(), mae_add=err[healthy].mean(),
                         mae_remove=err[~healthy].mean(), changed_dice=changed_region_dice(x, view, oracle).mean()))

    row("identity (x)", x, None)
    row("HVAE", cf, None)
    for hull in (False, True):
        for r in args.radii:
            mask = lung_masks(silver, r, hull)
            row(f"HVAE in {'hull of ' if hull else ''}lungs + {r} px", blend(x, cf, mask), mask)
    table = pd.DataFrame(rows)
    text = (f"# do(effusion) confined to x's silver lung region ({args.profile} profile, test split, "
            f"{len(x)} images)\n\n"
            f"`OMP_NUM_THREADS=1 python experiments/cf_lung_region.py --profile {args.profile}"
            + (f" --set {' '.join(args.overrides)}" if args.overrides else "") + "`\n\n"
            "`mask_share`: share of the image the mask covers; `covers_add` / `covers_remove`: share of the exact"
            " change (over 25.5 grey levels) inside the mask, when adding fluid to the healthy images / removing it"
            " from the effusion images; `effectiveness` (judge), `oracle_mae` (grey levels) and `changed_dice` of"
            " the masked do(effusion), overall and per direction.\n\n"
            + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
