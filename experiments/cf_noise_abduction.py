"""Is the fine-tuned HVAE's error outside the fluid the pixel-noise abduction's, or the decoder's?

The HVAE's counterfactual carries the factual image's pixel noise over (REFERENCES section 2; causal-gen):
``x_cf = cf_loc + cf_scale * (x - loc) / scale``. Where the decoded mean moves nothing, x_cf = x exactly,
so the 10-grey-level error the fine-tuned HVAE makes *outside* the region do(effusion) may change
(`cf_floor.md`) has two candidate sources: the decoded mean moving there (``cf_loc != loc``), or the scale
ratio ``cf_scale / scale`` amplifying the residual ``x - loc``. This script tells them apart on the test
split, for the profile's counterfactual HVAE (:func:`cfcl.counterfactual.cf_finetune.load_counterfactual_model`), by decoding the
same abducted latents four ways:

- ``scaled``: the pipeline's counterfactual (the residual rescaled by the scale ratio);
- ``additive``: ``x + (cf_loc - loc)``, the residual carried over unscaled;
- ``mean``: ``cf_loc`` alone (no residual);
- ``factual mean``: ``loc``, the reconstruction (how far the decoded mean is from x at all).

Per direction (adding fluid to healthy images, removing it from effusion images): MAE to the exact
counterfactual over the image, inside the region the exact counterfactual changes and outside it, and the
reversibility (MAE of do(effusion) undone, to x; the same decoding both ways). With ``identity`` (x itself)
for scale. A measurement, not a setting of the pipeline.

    OMP_NUM_THREADS=1 python experiments/cf_noise_abduction.py --profile cpu [--images 200] [--set KEY=VALUE ...]

Needs the profile's counterfactual HVAE (``make hvae PROFILE=cpu``). Writes
``experiments/results/cf_noise_abduction.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cfcl.config import INTERVENTIONS, get_profile
from cfcl.counterfactual.cf_finetune import load_counterfactual_model
from cfcl.counterfactual.diagnostics import FORMS, decodings
from cfcl.counterfactual.parents import intervene, parents_tensor, to_model_space, to_uint8
from cfcl.data import load_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--images", type=int, default=200, help="images per direction (the first of the test split)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cf_noise_abduction.md"))
    args = ap.parse_args(argv)
    prof = get_profile(args.profile, args.overrides)
    data = load_split(prof, "test")
    if data.counterfactuals is None:
        raise SystemExit(f"data source {prof.data.source!r} has no exact counterfactuals: this needs the phantom")
    model = load_counterfactual_model(prof)
    x8, pa = np.asarray(data.images), parents_tensor(data.parents)
    k = INTERVENTIONS.index("effusion")  # the exact counterfactuals are stored in this order
    effusion = data.parents["effusion"].to_numpy()
    rows = []
    for direction, value in (("add", 0), ("remove", 1)):
        idx = np.flatnonzero(effusion == value)[:args.images]
        views = {f: [] for f in FORMS}
        back = {f: [] for f in FORMS[:2]}
        for lo in range(0, len(idx), args.batch):
            b = idx[lo:lo + args.batch]
            x, a = to_model_space(x8[b]), pa[b]
            c = intervene(a, "effusion")
            for f, v in decodings(model, x, a, c).items():
                views[f].append(to_uint8(v))
                if f in back:  # undo it with the same decoding, from the stored (uint8) counterfactual
                    back[f].append(to_uint8(decodings(model, to_model_space(to_uint8(v)), c, a)[f]))
        x_sel = x8[idx].astype(np.float32)
        exact = np.asarray(data.counterfactuals)[idx, k].astype(np.float32)
        region = exact != x_sel
        cands = {"identity (x)": x_sel, **{f: np.concatenate(v).astype(np.float32) for f, v in views.items()}}
        for name, view in cands.items():
            err = np.abs(view - exact)
            rev = (np.abs(np.concatenate(back[name]).astype(np.float32) - x_sel).mean() if name in back
                   else (0.0 if name == "identity (x)" else np.nan))
            rows.append(dict(direction=direction, counterfactual=name, n=len(idx), oracle_mae=err.mean(),
                             inside=err[region].mean(), outside=err[~region].mean(), reversibility=rev))
    table = pd.DataFrame(rows)
    text = (f"# Pixel-noise abduction or decoder: where the HVAE's do(effusion) error comes from ({args.profile})\n\n"
            f"`OMP_NUM_THREADS=1 python experiments/cf_noise_abduction.py --profile {args.profile}"
            f"{' --set ' + ' '.join(args.overrides) if args.overrides else ''}`\n\n"
            "MAE in grey levels to the exact counterfactual: over the image, inside the region the exact "
            "counterfactual changes, outside it; `reversibility`: MAE to x of do(effusion) undone with the same "
            "decoding.\n\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
