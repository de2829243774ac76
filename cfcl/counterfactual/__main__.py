"""``python -m cfcl.counterfactual --profile cpu [--splits pretrain test] [--evaluate]``: generate (or
verify) the HVAE counterfactuals of the named splits, and with ``--evaluate`` their quality tables."""
from __future__ import annotations

from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.counterfactual.generate import counterfactual_run, generate
from cfcl.counterfactual.quality import evaluate, quality_run
from cfcl.data import SPLITS


@entry_point
def main(argv: list[str] | None = None) -> None:
    """``python -m cfcl.counterfactual --profile cpu [--splits pretrain test] [--evaluate]``: generate (or
    verify) the HVAE counterfactuals of the named splits (the HVAE must be trained); with ``--evaluate``,
    also their quality table (:func:`cfcl.counterfactual.quality.evaluate`; needs the parent predictors)."""
    ap = profile_parser("python -m cfcl.counterfactual", main.__doc__)
    ap.add_argument("--splits", nargs="*", default=["pretrain", "test"], choices=list(SPLITS))
    ap.add_argument("--alpha", type=float, default=1.0, help="mixture abduction (1: the posterior alone)")
    ap.add_argument("--evaluate", action="store_true", help="also make the quality table of each split")
    ap.add_argument("--no-before", dest="before", action="store_false",
                    help="without the ELBO-only HVAE's rows (as notebook 02's mixture table)")
    args = ap.parse_args(argv)
    profile = profile_of(args)
    for split in args.splits:
        cf = generate(profile, split, alpha=args.alpha)
        print(f"{split}: {cf.shape} ({counterfactual_run(profile, split, alpha=args.alpha).folder})")
        if args.evaluate:
            table = evaluate(profile, split, alpha=args.alpha, before=args.before)
            print(f"{split}: quality table of {len(table)} rows "
                  f"({quality_run(profile, split, alpha=args.alpha, before=args.before).folder})")


if __name__ == "__main__":
    main()
