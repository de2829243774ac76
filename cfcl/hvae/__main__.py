"""``python -m cfcl.hvae --profile cpu [--set hvae.epochs=5 ...]``: train (or verify) the HVAE run."""
from __future__ import annotations

import argparse
from typing import Sequence

import torch

from cfcl.config import get_profile
from cfcl.hvae.train import train_hvae


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cfcl.hvae", description="Train the counterfactual HVAE.")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="settings, e.g. hvae.epochs=5 seed=1")
    parser.add_argument("--variant", default="")
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs in this call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = train_hvae(get_profile(args.profile, args.overrides, args.variant), max_epochs=args.max_epochs)
    print(f"HVAE run: {run.folder}" + ("" if run.is_finished() else " (unfinished)"))


if __name__ == "__main__":
    main()
