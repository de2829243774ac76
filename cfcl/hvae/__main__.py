"""``python -m cfcl.hvae --profile cpu [--set hvae.epochs=5 ...]``: train (or verify) the HVAE run."""
from __future__ import annotations

from typing import Sequence

import torch

from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.hvae.train import train_hvae


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    parser = profile_parser("python -m cfcl.hvae", "Train the counterfactual HVAE.",
                            set_help="settings, e.g. hvae.epochs=5 seed=1")
    parser.add_argument("--max-epochs", type=int, default=None, help="stop after this many epochs in this call")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = train_hvae(profile_of(args), max_epochs=args.max_epochs)
    print(f"HVAE run: {run.folder}" + ("" if run.is_finished() else " (unfinished)"))


if __name__ == "__main__":
    main()
