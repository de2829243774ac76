"""Pre-training replicates: the seed spread of pre-training in the results (the claims issue, section 1).

One pre-training run per method leaves the pre-training seed out of every interval, and on the phantom
that seed alone moved the hidden-lung recall by 3.6 (DVD-CL) and 6.0 points (S-MVD-CL;
figures/cpu/ablations/replicate.md).
``pretrain.seeds = R`` asks the results to stand on R pre-training runs per method: replicates
``r0, ..., r0 + R - 1`` with ``r0 = pretrain.replicate`` (0: the profile's own run). Each replicate is
its own pre-training run (:func:`cfcl.pretrain.pretrain_seed`) and its own fine-tuning run (the same
fine-tuning seeds); None, which pre-trains nothing, is one run for all.

The results (:func:`cfcl.results.test_per_image`) then average every image's metric over all
``R x finetune.seeds x folds`` fine-tuned models, and the claims (:func:`cfcl.claims.decide`) estimate each
contrast on every (replicate, fine-tuning seed) alone too: a verdict other than inconclusive needs every
one of them on its side of 0; beside that verdict, ``run_ci_low``/``run_ci_high`` and ``run_verdict`` come from a
bootstrap over the replicates, the fine-tuning seeds nested within them and the images
(:func:`cfcl.stats.two_level_ci`), the interval that contains the pre-training spread. ``pretrain.seeds`` never
enters a run's key.

``make reproduce`` makes the replicates beyond the profile's own first, each as a variant restricted to
the pre-trained methods (:func:`plan`; ``python -m cfcl.replicates plan PROFILE -- OVERRIDES``).
"""
from __future__ import annotations

import sys

from cfcl.cli import entry_point
from cfcl.config import Profile, get_profile
from cfcl.methods import FINETUNE_METHODS, METHODS, select


def replicate_profiles(profile: Profile) -> list[Profile]:
    """The profiles of the ``pretrain.seeds`` pre-training replicates of ``profile`` (the first is
    ``profile`` itself), each with ``pretrain.replicate`` set and ``pretrain.seeds = 1``."""
    r0, n = profile.pretrain.replicate, profile.pretrain.seeds
    if n == 1:
        return [profile]
    base = [o for o in profile.overrides if not o.startswith(("pretrain.replicate=", "pretrain.seeds="))]
    return [get_profile(profile.name, [*base, f"pretrain.replicate={r}"], _variant(profile, r - r0))
            for r in range(r0, r0 + n)]


def _variant(profile: Profile, k: int) -> str:
    """The variant of the ``k``-th replicate: the profile's own for ``k = 0``, else ``<variant>-pr<k>``."""
    if k == 0:
        return profile.variant
    return f"{profile.variant}-pr{k}" if profile.variant else f"pr{k}"


def plan(profile: Profile, methods: tuple[str, ...] | None = None) -> list[tuple[str, str, str]]:
    """``(variant, overrides, methods)`` of every replicate beyond the profile's own: what ``make
    reproduce`` fine-tunes (pre-training first) before the results. ``methods``: the rows asked for
    (default: all); only the pre-trained ones have replicates."""
    rows = [m for m in (methods or FINETUNE_METHODS) if METHODS[m].pretrained]
    return [(p.variant, " ".join(p.overrides), " ".join(rows)) for p in replicate_profiles(profile)[1:]] if rows else []


@entry_point
def main(argv: list[str] | None = None) -> None:
    """``python -m cfcl.replicates plan PROFILE [-- OVERRIDES [variant=V] [only=m1,m2]]``: one line per
    replicate to make, ``variant|overrides|methods`` (none with ``pretrain.seeds = 1``)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "plan":
        raise SystemExit("usage: python -m cfcl.replicates plan PROFILE [-- OVERRIDES [variant=V] [only=m1,m2]]")

    over = args[args.index("--") + 1:] if "--" in args else []
    variant = next((o[len("variant="):] for o in over if o.startswith("variant=")), "")
    only = " ".join(o[len("only="):] for o in over if o.startswith("only="))  # only=a,b or only=a only=b
    profile = get_profile(args[1], [o for o in over if not o.startswith(("variant=", "only="))], variant)
    for v, overrides, methods in plan(profile, tuple(select(only.replace(",", " "), FINETUNE_METHODS))):
        print(f"{v}|{overrides}|{methods}")


if __name__ == "__main__":
    main()
