"""Step time of counterfactual fine-tuning with and without the cycle term (``hvae.cf_cycle``).

The cycle term takes each ``x_cf`` back to the factual parents (one more abduction and decode per step,
:func:`cfcl.counterfactual.cf_finetune.cycle_error`). This times :func:`cfcl.counterfactual.cf_finetune.cf_step` from the
profile's ELBO model, on the fine-tuning's own batches, with the term off and on, pair by pair in one
process (the machine is shared: only the ratio is meant), and prints the ratio.

    OMP_NUM_THREADS=1 python experiments/cf_cycle_cost.py --profile cpu [--pairs 6] [--cycle 3]

Needs the profile's ELBO HVAE and teacher (``make hvae PROFILE=cpu``).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import numpy as np
import torch

from cfcl.config import get_profile
from cfcl.counterfactual import cf_finetune as cft
from cfcl.counterfactual.hvae import HVAE
from cfcl.counterfactual.hvae_train import hvae_run
from cfcl.counterfactual.parents import parents_tensor, to_model_space
from cfcl.counterfactual.predictors import load_classifiers
from cfcl.data import load_split
from cfcl.runs import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--pairs", type=int, default=6, help="timed pairs (the first is a warm-up, left out)")
    ap.add_argument("--cycle", type=float, default=3.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    prof = get_profile(args.profile)
    hv = prof.hvae
    ck = load_checkpoint(hvae_run(prof).require().artifact("hvae.pt"))
    base = HVAE.from_config(ck["model_config"])
    base.load_state_dict(ck["ema"])
    predictor = load_classifiers(prof)
    for p in predictor.parameters():
        p.requires_grad_(False)
    train = load_split(prof, "pretrain")
    pa_all = parents_tensor(train.parents)
    effusion = train.parents["effusion"].to_numpy()
    times: dict[float, list[float]] = {0.0: [], args.cycle: []}
    for rep in range(args.pairs):
        rng = np.random.default_rng([prof.seed, 23, rep])
        idx, which = cft.draw_batch(effusion, hv.batch_size, hv.cf_effusion_fraction, hv.cf_effusion_weight, rng)
        pa = pa_all[idx]
        cf_pa = cft.flip_parents(pa, torch.as_tensor(which))
        x = to_model_space(train.images[idx])
        for cycle in times:
            model, ema = copy.deepcopy(base), copy.deepcopy(base)
            lmbda = torch.nn.Parameter(torch.zeros(1))
            opt, lag = cft.make_optimizers(model, lmbda, hv.cf_lr, hv.cf_lr_lagrange)
            t = time.perf_counter()
            cft.cf_step(model, ema, predictor, opt, lag, lmbda, x, pa, cf_pa, 4.0,
                        dataclasses.replace(cft.CfStepConfig.from_profile(prof), cycle=cycle),
                        generator=torch.Generator().manual_seed(rep))
            if rep:
                times[cycle].append(time.perf_counter() - t)
    off, on = np.array(times[0.0]), np.array(times[args.cycle])
    ratio = on / off
    print(f"{args.profile}: step {np.median(off):.2f} s without the cycle term, {np.median(on):.2f} s with it "
          f"(batch {hv.batch_size}); ratio median {np.median(ratio):.2f} (range {ratio.min():.2f}-{ratio.max():.2f}, "
          f"{len(ratio)} pairs)")


if __name__ == "__main__":
    main()
