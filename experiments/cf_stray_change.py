"""Where does the HVAE's do(effusion) change what the exact counterfactual keeps?

About two thirds of the fine-tuned HVAE's do(effusion) error lie outside the region the exact counterfactual
changes (`cf_noise_abduction.md`: 7.9 grey levels there, where the exact counterfactual equals x), and the decoder,
not the pixel-noise abduction, makes it. This script asks where that change lies, on the test split's stored
counterfactuals and the phantom's exact ones, for each model named by ``--models``:

- ``signed``: the mean of ``x_cf - x`` outside the region (positive: brighter), per image, then averaged;
- ``near`` / ``far``: the mean ``|x_cf - x|`` outside the region within ``--near`` pixels of it, and farther;
- ``dark`` / ``bright``: the same on the darkest and the brightest third of x's pixels outside the region (the
  lungs are dark, bone and soft tissue bright);
- ``same_half`` / ``other_half``: on the images whose exact change lies in one half of the image (one lung:
  unilateral fluid, at least ``--unilateral`` of the region's pixels on one side), the same outside the
  region on the fluid's half and on the other half (the other lung).

Adding fluid to a healthy image cannot know the fluid's side (`cf_floor.md`), so a change on the other lung
is the price of not knowing; removing it can (the fluid is in x), so there it is the model's own error.

A second table asks what each part of the change does to the readers of effusion: the share of images whose
effusion reading flips (the intervention's effectiveness) under the judge and the teacher, for the whole
counterfactual, for its change inside the region alone (x elsewhere) and for its change outside alone (x in
the region); ``--teachers`` adds the readings of other teachers (each named by its overrides, e.g.
``"hvae.classifier_epochs=40"``), the same parts of every model's change read by them. A measurement, not a
setting of the pipeline.

    OMP_NUM_THREADS=1 python experiments/cf_stray_change.py --profile cpu [--models "" "hvae.cf_cycle=0" ...]
        [--teachers "hvae.classifier_epochs=40" ...]

Each model is a string of overrides ("" the profile's own); its test-split counterfactuals are made if
missing (``cfcl.counterfactual.generate.generate``, which verifies them otherwise). Writes
``experiments/results/cf_stray_change.md``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cfcl.config import INTERVENTIONS, PARENTS, get_profile
from cfcl.counterfactual.diagnostics import parts, stray
from cfcl.counterfactual.generate import generate
from cfcl.counterfactual.predictors import load_classifiers, predict_parents
from cfcl.data import load_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--models", nargs="*", default=["", "hvae.cf_cycle=0"],
                    help='each a string of overrides ("" the profile\'s own model)')
    ap.add_argument("--teachers", nargs="*", default=[],
                    help="other teachers (each a string of overrides) that also read the parts of the change")
    ap.add_argument("--near", type=int, default=4)
    ap.add_argument("--unilateral", type=float, default=0.9)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "cf_stray_change.md"))
    args = ap.parse_args(argv)
    k, j = INTERVENTIONS.index("effusion"), PARENTS.index("effusion")
    rows, reads = [], []
    others = {f"teacher {t}": load_classifiers(get_profile(args.profile, t.split())) for t in args.teachers}
    for overrides in args.models:
        prof = get_profile(args.profile, overrides.split())
        data = load_split(prof, "test")
        if data.counterfactuals is None:
            raise SystemExit(f"data source {prof.data.source!r} has no exact counterfactuals: this needs the phantom")
        x, exact = np.asarray(data.images), np.asarray(data.counterfactuals)[:, k]
        cf = generate(prof, "test", progress=False)[:, k]
        healthy = data.parents["effusion"].to_numpy() == 0
        readers = {role: load_classifiers(prof, role=role) for role in ("judge", "teacher")} | others
        for direction, sel in (("add", healthy), ("remove", ~healthy)):
            name = overrides or "(profile's own)"
            rows.append(dict(model=name, direction=direction,
                             **stray(x[sel], cf[sel], exact[sel], args.near, args.unilateral)))
            for part, view in parts(x[sel], cf[sel], exact[sel]).items():
                flipped = {role: float(((predict_parents(c, view)[:, j] > 0.5) == (direction == "add")).mean())
                           for role, c in readers.items()}
                reads.append(dict(model=name, direction=direction, part=part, **flipped))
    table = pd.DataFrame(rows)
    text = (f"# Where the HVAE's do(effusion) changes what it should keep ({args.profile} profile, test split)\n\n"
            f"`OMP_NUM_THREADS=1 python experiments/cf_stray_change.py --profile {args.profile} --models "
            + " ".join(f'"{m}"' for m in args.models)
            + (" --teachers " + " ".join(f'"{t}"' for t in args.teachers) if args.teachers else "") + "`\n\n"
            "Outside the region the exact counterfactual changes (where it equals x), in grey levels: `outside` the"
            " mean |x_cf - x|, `signed` the mean x_cf - x, `near` within"
            f" {args.near} px of the region and `far` beyond, `dark` / `bright` on the darkest / brightest third of"
            " x's pixels there; on the `unilateral` images (at least"
            f" {args.unilateral:.0%} of the region in one half), `same_half` on the fluid's side and `other_half`"
            " on the other lung's.\n\n" + table.to_markdown(index=False, floatfmt=".2f") + "\n\n"
            "Share of the images whose effusion reading the counterfactual flips (judge, teacher: the model's own;"
            " `teacher <overrides>`: another teacher), for the whole change, its part inside the region alone and"
            " its part outside alone:\n\n"
            + pd.DataFrame(reads).to_markdown(index=False, floatfmt=".3f") + "\n")
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
