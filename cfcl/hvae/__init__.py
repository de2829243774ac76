"""The counterfactual hierarchical VAE of paper section 2.1: the network (:mod:`cfcl.hvae.model`),
its ELBO training as one run (:mod:`cfcl.hvae.train`, ``python -m cfcl.hvae``) and its counterfactual
fine-tuning as another (:mod:`cfcl.hvae.cf_finetune`, ``python -m cfcl.hvae.cf_finetune``).
Counterfactuals are drawn in :mod:`cfcl.counterfactuals` from :func:`load_counterfactual_model`."""
from cfcl.hvae.cf_finetune import (cf_finetune_run, counterfactual_model_run, elbo_only, finetune_counterfactuals,
                                   load_counterfactual_model, read_cf_log)
from cfcl.hvae.model import HVAE, discretized_gaussian_nll, gaussian_kl, resolutions
from cfcl.hvae.train import build_model, hvae_run, load_hvae, read_log, train_hvae

__all__ = ["HVAE", "build_model", "cf_finetune_run", "counterfactual_model_run", "discretized_gaussian_nll",
           "elbo_only", "finetune_counterfactuals", "gaussian_kl", "hvae_run", "load_counterfactual_model",
           "load_hvae", "read_cf_log", "read_log", "resolutions", "train_hvae"]
