"""How close can *any* counterfactual model get to the phantom's exact do(effusion) when it adds fluid?

A healthy image carries no trace of the fluid it would have: the effusion's exogenous noise (side, kind,
volume, meniscus, margin, loculus, atelectasis; ``cfcl.data.phantom.scm.NOISE_SPEC``) is drawn for every
image but only rendered when effusion = 1. So no abduction from x can recover it, and the exact
counterfactual of adding fluid is not identifiable from x: a model that knew everything else exactly
(anatomy, acquisition, the mechanisms) could at best draw the fluid's distribution. This script measures
that floor on the held-out test split: for each healthy image, ``--draws`` fresh draws of the effusion noise
(everything else kept), each rendered under do(effusion); the per-pixel median over the draws (the image
minimising the expected absolute error) is the *Bayes* counterfactual. Its MAE to the exact counterfactual,
and the changed-region Dice of its change, bound what issue 9's gates can ask of the HVAE in the add
direction. A single random draw (a perfect model that samples the fluid) is reported beside it.

    OMP_NUM_THREADS=1 python experiments/cf_floor.py --profile cpu --draws 16

Writes ``experiments/results/cf_floor.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cfcl.config import INTERVENTIONS, get_profile
from cfcl.counterfactual.quality import changed_region_dice
from cfcl.data import load_split
from cfcl.data.phantom import scm
from cfcl.data.phantom.render import render
from cfcl.data.phantom.store import load_noise

#: The exogenous noise of the effusion mechanism (rendered only when effusion = 1).
EFFUSION_NOISE = ("eff_side", "eff_kind", "eff_volume", "meniscus", "eff_soft", "loculus", "atelectasis")


def effusion_subset(profile, effusion: int) -> tuple[np.ndarray, np.ndarray, dict, pd.DataFrame, pd.DataFrame]:
    """The test split's images with ``effusion`` (0: healthy, where do(effusion) adds fluid; 1: removes it):
    x, its exact do(effusion), its exogenous noise, and its factual and counterfactual parents."""
    test = load_split(profile, "test")
    rows = np.flatnonzero(test.parents["effusion"].to_numpy() == effusion)
    x = np.asarray(test.images)[rows]
    exact = np.asarray(test.counterfactuals)[rows, INTERVENTIONS.index("effusion")]
    factual = test.parents.iloc[rows].reset_index(drop=True)
    return x, exact, scm.take(load_noise(profile.data, "test"), rows), factual, scm.intervene(factual, "effusion")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--draws", type=int, default=16)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cf_floor.md"))
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    x, exact, nz, _, parents = effusion_subset(prof, 0)
    n = len(x)
    size = prof.data.image_size
    fresh_all = scm.sample_noise(n * args.draws, prof.data.seed + 7919, "test", len(scm._bank()))
    renders = np.empty((args.draws, n, size, size), np.uint8)
    for d in range(args.draws):
        dn = {k: v.copy() for k, v in nz.items()}
        fresh = scm.take(fresh_all, np.arange(d * n, (d + 1) * n))
        for k in EFFUSION_NOISE:
            dn[k] = fresh[k]
        renders[d] = render(dn, parents, size)["image"]
    # sanity: the stored noise reproduces the exact counterfactual bit for bit
    assert np.array_equal(render(nz, parents, size)["image"], exact), "re-render differs from the stored one"
    bayes = np.median(renders.astype(np.float32), axis=0).round().astype(np.uint8)
    rows = []
    for name, cf in (("identity (x)", x), ("one draw of the fluid", renders[0]), (f"Bayes (median of {args.draws} draws)", bayes),
                     ("exact", exact)):
        mae = np.abs(cf.astype(np.float32) - exact.astype(np.float32)).mean(axis=(1, 2))
        dice = changed_region_dice(x, cf, exact)
        rows.append(dict(counterfactual=name, n=n, oracle_mae=float(mae.mean()),
                         changed_dice=float(dice.mean())))
    table = pd.DataFrame(rows)
    ident = table.loc[0, "oracle_mae"]
    table["mae_vs_identity"] = table["oracle_mae"] / ident
    text = (f"# Floor of do(effusion), add direction ({args.profile} profile, test split, {n} healthy "
            f"images, {args.draws} draws)\n\n`OMP_NUM_THREADS=1 python experiments/cf_floor.py --profile "
            f"{args.profile} --draws {args.draws}`\n\n" + table.to_markdown(index=False, floatfmt=".3f") + "\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
