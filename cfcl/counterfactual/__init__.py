"""The counterfactual wing (paper section 2.1): everything that makes, checks and serves the counterfactual
views.

- :mod:`.parents`: parents and images as the models see them (encodings, interventions, batches);
- :mod:`.hvae`: the counterfactual hierarchical VAE (the network);
- :mod:`.hvae_train`: its ELBO training as one run (``python -m cfcl.counterfactual.hvae_train``);
- :mod:`.predictors`: the parent predictors, teacher and judge (``python -m cfcl.counterfactual.predictors``);
- :mod:`.cf_finetune`: the HVAE's counterfactual fine-tuning as another run
  (``python -m cfcl.counterfactual.cf_finetune``), and the model counterfactuals are drawn from;
- :mod:`.generate`: counterfactual generation, its run, and the views pre-training reads
  (:func:`.generate.get_counterfactuals`);
- :mod:`.quality`: image metrics, the quality table (one run) and its gates;
- :mod:`.diagnostics`: the tested pieces of the investigations in ``experiments/``.

``python -m cfcl.counterfactual`` generates the counterfactuals of a profile's splits (and with ``--evaluate``
their quality tables). The runs' definitions and readers are in :mod:`cfcl.read` (:mod:`cfcl.read.hvae`,
:mod:`cfcl.read.classifiers`, :mod:`cfcl.read.counterfactuals`). The package imports none of its modules, so
each is loaded only where it is used.
"""
