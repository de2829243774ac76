"""The ablations' plan (what `make ablations` runs) and their statistics on hand-made per-image tables."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cfcl import ablations as ab
from cfcl.config import get_profile


def test_plan_runs_each_distinct_arm_once_with_the_union_of_its_methods():
    plan = ab.make_plan(get_profile("cpu"))
    overrides = [o for _, o, _ in plan]
    assert len(overrides) == len(set(overrides))  # shared arms (g0 = identity, g1 = oracle) run once
    arms = {o: (v, m.split()) for v, o, m in plan}
    assert arms[""] == ("", ["none", "dvd_cl", "chexmask", "s_mvd_cl"])  # the profile's own run
    assert arms["pretrain.cf_source=oracle"] == ("abl-cf_source-oracle", ["none", "vader", "dvd_cl", "s_mvd_cl"])
    assert arms["pretrain.cf_source=oracle pretrain.steps=100"][0] == "abl-length-third"  # a third of 300
    assert "pretrain.cf_source=oracle pretrain.steps=900" in arms
    assert arms["pretrain.replicate=1"] == ("abl-replicate-r1", ["none", "dvd_cl", "s_mvd_cl"])
    # the low-label arm: 10 images per fold for as many optimiser steps as 56 (7 steps per epoch x 20 -> 2 x 70)
    assert arms["finetune.train_healthy=3 finetune.train_effusion=7 finetune.epochs=70"] == (
        "abl-low_label-ten", ["none", "dvd_cl", "chexmask", "s_mvd_cl"])
    # one ablation asked: its arms only, named as in the full plan; under a variant, arms are prefixed
    dose = ab.make_plan(get_profile("smoke", "seed=1", "s1"), ["dose"])
    assert [(v, o) for v, o, _ in dose] == [("s1-abl-cf_source-identity", "seed=1 pretrain.cf_source=identity"),
                                            ("s1-abl-dose-g05", "seed=1 pretrain.cf_source=oracle pretrain.cf_gain=0.5"),
                                            ("s1-abl-cf_source-oracle", "seed=1 pretrain.cf_source=oracle")]
    assert ab.arm_profile(get_profile("smoke", "seed=1", "s1"), "dose", "g05").label == "smoke-s1-abl-dose-g05"
    with pytest.raises(SystemExit, match="unknown ablation"):
        ab.make_plan(get_profile("cpu"), ["bogus"])
    out = subprocess.run(["python3", "-m", "cfcl.ablations", "plan", "smoke", "labels"], capture_output=True,
                         text=True, cwd=Path(__file__).parents[1])  # plain Python: what the Makefile calls
    assert out.stdout.splitlines() == ["||chexmask s_mvd_cl", "abl-labels-gold|pretrain.labels=gold|chexmask s_mvd_cl"]


def _table(values, effusion, hidden=None):
    t = pd.DataFrame({"dsc": values, "effusion": effusion})
    if hidden is not None:
        t["hidden_recall"] = hidden
    t.index.name = "image"
    return t


def test_contrasts_decide_known_shifts():
    """On hand-made per-image tables: g05 is 2 points ahead of g0 on every image (holds, estimate exactly
    2), g1 equals g05 up to noise around 0 (inconclusive against g05, holds against g0); DSC_PE pairs the
    effusion images only; a metric the tables lack (the hidden-lung recall here) is left out; the six
    contrast x metric rows are one family."""
    rng = np.random.default_rng(0)
    n = 60
    eff = np.arange(n) % 2
    base = 0.85 + 0.05 * rng.random(n)
    noise = rng.normal(0, 0.01, n)
    noise -= noise.mean()
    tables = {("dvd_cl", "g0"): _table(base, eff), ("dvd_cl", "g05"): _table(base + 0.02, eff),
              ("dvd_cl", "g1"): _table(base + 0.02 + noise, eff)}
    res = ab.contrasts(tables, "dose", n_boot=2000).set_index(["contrast", "metric"])
    assert set(res.index.get_level_values("metric")) == {"dsc", "dsc_pe"}
    g05_g0 = res.loc[("DVD-CL [g05] - DVD-CL [g0]", "dsc")]
    assert g05_g0["verdict"] == "holds" and g05_g0["estimate"] == pytest.approx(2.0)
    assert res.loc[("DVD-CL [g1] - DVD-CL [g0]", "dsc"), "verdict"] == "holds"
    assert res.loc[("DVD-CL [g1] - DVD-CL [g05]", "dsc"), "verdict"] == "inconclusive"
    assert res.loc[("DVD-CL [g1] - DVD-CL [g0]", "dsc_pe"), "n"] == n // 2
    assert (res["level"] == 1 - 0.05 / 6).all()
    means = ab.arm_means(tables).set_index(["method", "arm"])
    assert means.loc[("dvd_cl", "g05"), "dsc"] == pytest.approx(100 * (base.mean() + 0.02))
    assert means.loc[("dvd_cl", "g0"), "n"] == n


def test_a_cell_of_effusion_images_is_not_counted_twice():
    """The confounding ablation tests on effusion images only: DSC_PE would repeat DSC (and double the
    family), so it is left out."""
    n = 10
    t = {(m, arm): _table(np.linspace(0.5, 0.9, n) + (0.01 if m == "dvd_cl" else 0), np.ones(n, int))
         for m in ("none", "vader", "dvd_cl") for arm in ("or1", "real", "or20")}
    res = ab.contrasts(t, "confounding", n_boot=500)
    assert set(res["metric"]) == {"dsc"} and len(res) == 6 and (res["level"] == 1 - 0.05 / 6).all()
