"""Finding and reading the runs of every stage, apart from the code that makes them.

Each module holds one stage's run definitions (the settings payload its key is computed from, its upstream
runs) and the readers of its artifacts: :mod:`.classifiers` (the parent predictors), :mod:`.hvae` (the ELBO and the
counterfactually fine-tuned HVAE), :mod:`.counterfactuals` (the generated counterfactuals and their quality table),
:mod:`.pretrain` and :mod:`.finetune`. Results, ablations, latent-space analyses and claims import these, never
the training loops (:mod:`cfcl.pretrain`, :mod:`cfcl.finetune` and the modules of :mod:`cfcl.counterfactual`),
which re-export them.
"""
