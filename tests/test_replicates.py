"""Pre-training replicates in the results (cfcl/replicates.py): keys, the plan make follows, and the
per-image averages and seed spread of the claims."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cfcl import finetune as ft
from cfcl import pretrain as pt
from cfcl.claims import Contrast, decide
from cfcl.config import get_profile
from cfcl.replicates import main, plan, replicate_profiles
from cfcl import results


def test_replicate_profiles_and_keys():
    base = get_profile("cpu")
    two = get_profile("cpu", "pretrain.seeds=2", "powered")
    assert replicate_profiles(base) == [base]
    r0, r1 = replicate_profiles(two)
    assert (r0.pretrain.replicate, r1.pretrain.replicate) == (0, 1)
    assert (r0.variant, r1.variant) == ("powered", "powered-pr1")
    # seeds never enters a key; replicate 0 is the profile's own run, replicate 1 another
    for m in ("dvd_cl", "simclr"):
        assert pt.pretrain_run(two, m).key == pt.pretrain_run(base, m).key == pt.pretrain_run(r0, m).key
        assert pt.pretrain_run(r1, m).key != pt.pretrain_run(base, m).key
    assert ft.finetune_run(r1, "none").key == ft.finetune_run(base, "none").key  # None pre-trains nothing
    # from another replicate on: replicates 2 and 3
    assert [p.pretrain.replicate for p in replicate_profiles(get_profile("cpu", "pretrain.replicate=2 pretrain.seeds=2"))] == [2, 3]


def test_plan_and_cli(capsys):
    assert plan(get_profile("cpu")) == []
    assert plan(get_profile("cpu", "pretrain.seeds=3"), ("none", "dvd_cl")) == [
        ("pr1", "pretrain.replicate=1", "dvd_cl"), ("pr2", "pretrain.replicate=2", "dvd_cl")]
    assert plan(get_profile("cpu", "pretrain.seeds=2"), ("none",)) == []  # nothing pre-trained
    main(["plan", "cpu", "--", "pretrain.seeds=2", "seed=1", "variant=v", "only=none", "only=vader"])
    assert capsys.readouterr().out.splitlines() == ["v-pr1|seed=1 pretrain.replicate=1|vader"]


@pytest.mark.slow
def test_results_average_over_replicates(tiny):
    prof = tiny({"pretrain.seeds": 2})
    reps = replicate_profiles(prof)
    for p in reps:
        pt.pretrain(p, "vader", progress=False)
        ft.finetune(p, "vader", progress=False)
    ft.finetune(prof, "none", progress=False)
    regions = results.changed_regions(prof)
    both = results.test_per_image(prof, "vader", regions)
    one = [results.test_per_image(prof, "vader", regions, replicate=r) for r in (0, 1)]
    assert not np.allclose(one[0]["dsc"], one[1]["dsc"])  # two pre-training runs, two sets of models
    assert np.allclose(both["dsc"], (one[0]["dsc"] + one[1]["dsc"]) / 2)  # same number of fold models each
    assert np.allclose(results.test_per_image(reps[0], "vader", regions)["dsc"], one[0]["dsc"])
    with pytest.raises(ValueError, match="replicate 5"):
        results.test_per_image(prof, "vader", regions, replicate=5)

    spread = results.per_image_by_seed(prof, ("none", "vader"), regions)
    assert len(spread) == 2 and spread[0]["none"].equals(spread[1]["none"])
    c = decide({m: results.test_per_image(prof, m, regions) for m in ("none", "vader")},
               (Contrast("t", "vader", "none"),), n_boot=200, per_seed=spread)
    est = [float(np.mean(100 * (t["vader"]["dsc"] - t["none"]["dsc"]))) for t in spread]
    assert c.loc[0, "seeds"] == 2 and np.isclose(c.loc[0, "seed_min"], min(est))
    assert results.per_image_by_seed(tiny(), ("none", "vader"), regions) is None
    assert isinstance(both, pd.DataFrame)
    # what notebook 06 reads: each model's metrics computed once, the same tables bit for bit
    models = results.model_metrics(prof, "vader", regions)
    assert len(models) == 2 * 2 * len(both) and sorted(set(models["replicate"])) == [0, 1]
    per_image, per_seed = results.per_image_tables(prof, ("none", "vader"), regions)
    assert per_image["vader"].equals(both) and per_image["none"].equals(results.test_per_image(prof, "none", regions))
    assert all(a[m].equals(b[m]) for a, b in zip(per_seed, spread) for m in ("none", "vader"))
