"""How close can *any* counterfactual model get to the phantom's exact do(effusion) when it removes fluid?

The companion of ``cf_floor.py`` (the add direction). Removing fluid reveals what the fluid covered: the
lung base on the fluid's side (its hemidiaphragm, ``dome``), the lung hidden below the domes and behind the
heart (``hidden``) and the gastric bubble under the left dome (``gastric``; ``cfcl.data.phantom.scm.NOISE_SPEC``).
Redrawing them from their *prior* (the ``prior`` row) overstates the floor, because the fluid is not
opaque everywhere and most of them still show in x. An ideal model draws them from their *posterior* given
x. This script samples that posterior by rejection (approximate Bayesian computation). For each effusion image of
the test split, ``--candidates`` fresh draws of those fields are made (the dome only on the fluid's side,
everything else kept), and the image is re-rendered *with* its fluid. A draw is kept if that re-render is
within ``tol`` grey levels (mean absolute difference) of x, that is, if x cannot tell it from the truth at
that tolerance. Each kept draw is rendered under do(effusion = 0). The rows are:

- ``one draw``: the first kept draw, a perfect model that samples the hidden anatomy;
- ``Bayes``: the per-pixel median over the kept draws, the image minimising the expected absolute error.

Images with no kept draw have their hidden anatomy pinned by x at that tolerance: there the ideal model's
counterfactual is the exact one (error 0). Column ``images_kept`` gives the share of images with at least one
kept draw. ``oracle_mae`` averages over all effusion images, counting the pinned ones at 0. ``oracle_mae_kept``
averages over the images with a kept draw only.

What this cannot see (so it is a lower bound on the true floor). The vessel texture under the fluid comes
from a seed that also draws the visible texture, so it is treated as known. And the tolerance admits draws
that x separates only by less than ``tol``.

    OMP_NUM_THREADS=1 python experiments/cf_floor_remove.py --profile cpu --candidates 32

Writes ``experiments/results/cf_floor_remove.md``; needs the profile's data (``make data PROFILE=cpu``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from cf_floor import effusion_subset
from cfcl.config import get_profile
from cfcl.counterfactual.diagnostics import floor_rows, redraw
from cfcl.counterfactual.quality import changed_region_dice
from cfcl.data.phantom import scm
from cfcl.data.phantom.render import render


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--candidates", type=int, default=32)
    ap.add_argument("--tol", type=float, nargs="*", default=[0.1, 0.25, 0.5, 1.0])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cf_floor_remove.md"))
    args = ap.parse_args(argv)
    prof = get_profile(args.profile)
    x, exact, nz, factual, healthy = effusion_subset(prof, 1)
    n = len(x)
    size = prof.data.image_size
    # sanity: the stored noise reproduces x and the exact counterfactual bit for bit
    assert np.array_equal(render(nz, factual, size)["image"], x), "re-render of x differs from the stored one"
    assert np.array_equal(render(nz, healthy, size)["image"], exact), "re-render differs from the stored one"
    fresh_all = scm.sample_noise(n * args.candidates, prof.data.seed + 7927, "test", len(scm._bank()))
    renders = np.empty((args.candidates, n, size, size), np.uint8)
    errors = np.empty((args.candidates, n), np.float32)
    for c in tqdm(range(args.candidates), desc="candidate draws"):
        dn = redraw(nz, scm.take(fresh_all, np.arange(c * n, (c + 1) * n)))
        again = render(dn, factual, size)["image"]
        errors[c] = np.abs(again.astype(np.float32) - x.astype(np.float32)).mean(axis=(1, 2))
        renders[c] = render(dn, healthy, size)["image"]
    ident = float(np.abs(x.astype(np.float32) - exact.astype(np.float32)).mean())
    rows = [dict(counterfactual="identity (x)", tol=np.nan, images_kept=np.nan, draws_kept=np.nan, oracle_mae=ident,
                 oracle_mae_kept=np.nan, changed_dice=float(changed_region_dice(x, x, exact).mean()))]
    for tol in sorted(args.tol) + [np.inf]:
        for name, row in floor_rows(x, exact, renders, errors, tol).items():
            label = f"{name}, prior (every draw)" if np.isinf(tol) else f"{name}, posterior (tol {tol:g})"
            rows.append(dict(counterfactual=label, tol=tol, **row))
    rows.append(dict(counterfactual="exact", tol=np.nan, images_kept=np.nan, draws_kept=np.nan, oracle_mae=0.0,
                     oracle_mae_kept=np.nan, changed_dice=1.0))
    table = pd.DataFrame(rows)
    table["mae_vs_identity"] = table["oracle_mae"] / ident
    quantiles = np.percentile(errors, [10, 50, 90])
    text = (f"# Floor of do(effusion), remove direction ({args.profile} profile, test split, {n} effusion "
            f"images, {args.candidates} candidate draws each)\n\n`OMP_NUM_THREADS=1 python experiments/cf_floor_remove.py "
            f"--profile {args.profile} --candidates {args.candidates}`\n\n"
            + table.drop(columns="tol").to_markdown(index=False, floatfmt=".3f")
            + f"\n\nError of the factual re-render with redrawn hidden anatomy (grey levels, over all candidates): "
              f"10 % {quantiles[0]:.2f}, median {quantiles[1]:.2f}, 90 % {quantiles[2]:.2f}.\n")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
