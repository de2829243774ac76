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
  S-MVD-CL: the cost of silver labels.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Ablation:
    """``arms``: arm name -> overrides (``""``: the profile's default run); ``methods``: the methods
    fine-tuned in every arm; ``contrasts``: (method a, arm a, method b, arm b) pairs to decide;
    ``cell``: restrict the test images to (scanner, effusion), or None for all."""

    name: str
    title: str
    arms: dict[str, str]
    methods: tuple[str, ...]
    contrasts: tuple[tuple[str, str, str, str], ...]
    cell: tuple[int, int] | None = None


ABLATIONS: dict[str, Ablation] = {a.name: a for a in (
    Ablation("cf_source", "Where the counterfactual views come from",
             {"identity": "pretrain.cf_source=identity", "hvae": "", "oracle": "pretrain.cf_source=oracle"},
             ("dvd_cl", "s_mvd_cl"),
             tuple((m, a, m, b) for m in ("dvd_cl", "s_mvd_cl")
                   for a, b in (("hvae", "identity"), ("oracle", "identity"), ("oracle", "hvae")))),
    Ablation("dose", "Dose-response: views x + g (exact - x)",
             {"g0": "pretrain.cf_source=oracle pretrain.cf_gain=0", "g05": "pretrain.cf_source=oracle pretrain.cf_gain=0.5",
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
)}


def arm_variant(ablation: str, arm: str) -> str:
    """The variant name of an arm (its runs and notebooks go under ``runs/<profile>-<variant>/``)."""
    return f"abl-{ablation}-{arm}"


def make_plan(profile_overrides: str = "") -> list[tuple[str, str, str]]:
    """``(variant, overrides, methods)`` of every arm that is not the default run, for the Makefile;
    ``profile_overrides`` are prepended to every arm's overrides."""
    out = []
    for ab in ABLATIONS.values():
        for arm, over in ab.arms.items():
            if over:
                out.append((arm_variant(ab.name, arm), " ".join(x for x in (profile_overrides, over) if x),
                            " ".join(ab.methods)))
    return out


def main(argv: list[str] | None = None) -> None:
    """``python3 -m cfcl.ablations plan``: one line per arm to run, ``variant|overrides|methods``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "plan":
        raise SystemExit("usage: python -m cfcl.ablations plan")
    for variant, over, methods in make_plan(" ".join(args[1:])):
        print(f"{variant}|{over}|{methods}")


if __name__ == "__main__":
    main()
