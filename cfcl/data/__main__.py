"""``python -m cfcl.data --profile cpu [--set ...]``: make (or verify) every split of the profile's data."""
from __future__ import annotations

import argparse
from typing import Sequence

from cfcl.config import get_profile
from cfcl.data import SPLITS, data_run, make_data


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cfcl.data", description="Make the data splits of a profile.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--variant", default="")
    ap.add_argument("--splits", nargs="*", default=list(SPLITS), choices=list(SPLITS))
    args = ap.parse_args(argv)
    profile = get_profile(args.profile, args.overrides, args.variant)
    for split in make_data(profile, tuple(args.splits)):
        print(f"{split.name}: {len(split)} images ({data_run(profile, split.name).folder})")


if __name__ == "__main__":
    main()
