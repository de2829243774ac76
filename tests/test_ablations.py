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
    # the length curve: VADeR beside DVD-CL from the profile's length on (900, 2,700 steps; its 300-step runs
    # are the profile's, which ignore cf_source), the existing arms' overrides (and so run keys) unchanged
    assert arms["pretrain.cf_source=oracle pretrain.steps=100"] == ("abl-length-third", ["none", "dvd_cl"])
    assert arms["pretrain.cf_source=oracle pretrain.steps=900"] == ("abl-length-triple", ["none", "vader", "dvd_cl"])
    assert arms["pretrain.cf_source=oracle pretrain.steps=2700"] == ("abl-length-ninefold", ["none", "vader", "dvd_cl"])
    assert ab.arm_profile(get_profile("cpu"), "length", "ninefold").pretrain.steps == 2700
    assert arms["pretrain.cf_source=oracle pretrain.steps=8100"] == ("abl-length-x27", ["none", "vader", "dvd_cl"])
    # the counterfactual source at length: identity and hvae are new arms, oracle is the length curve's 2,700 steps
    assert arms["pretrain.cf_source=identity pretrain.steps=2700"] == ("abl-cf_source_long-identity", ["dvd_cl"])
    assert arms["pretrain.steps=2700"] == ("abl-cf_source_long-hvae", ["dvd_cl"])
    long_plan = ab.make_plan(get_profile("cpu"), ["cf_source_long"])
    assert [v for v, _, _ in long_plan] == ["abl-cf_source_long-identity", "abl-cf_source_long-hvae", "abl-length-ninefold"]
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


def _arm_runs(rng, arm, steps, gains, n=40, seeds=3):
    """A synthetic ``<name>_per_image.csv`` part: one arm, each method's (replicate, seed) runs."""
    eff = np.arange(n) % 2
    rows = []
    for m, (g, reps) in gains.items():
        for r in range(reps):
            for s in range(seeds):
                dsc = 0.85 + g + rng.normal(0, 0.01, n)
                rows.append(pd.DataFrame({"arm": arm, "steps": steps, "method": m, "replicate": r, "seed": s,
                                          "image": np.arange(n), "effusion": eff, "dsc": dsc, "hd95": 2.0, "asd": 1.0,
                                          "hidden_recall": np.where(eff == 1, 0.7 + g, np.nan)}))
    return rows


def test_length_arms_have_steps_and_seeds_and_its_curve_is_plotted(tmp_path):
    """On synthetic arms written as per_image writes them: the length table's columns (steps, seeds: the
    (replicate, seed) pairs of each method), its thirteen contrasts with their arm's steps, and the plot."""
    rng = np.random.default_rng(1)
    rows = []
    for arm, steps, g in (("third", 100, -0.01), ("profile", 300, 0.0), ("triple", 900, 0.005), ("ninefold", 2700, 0.01),
                          ("x27", 8100, 0.012)):
        gains = {"none": (0.0, 1), "dvd_cl": (g, 1)}
        if arm != "third":
            gains["vader"] = (g / 2, 1)
        rows += _arm_runs(rng, arm, steps, gains)
    path = tmp_path / "length_per_image.csv"
    pd.concat(rows, ignore_index=True).to_csv(path, index=False, float_format="%.4f")
    tables = ab.tables_from_csv(path)
    assert set(tables) == {(m, a) for a in ("third", "profile", "triple", "ninefold", "x27") for m in ab.ABLATIONS["length"].methods_of(a)}
    means = ab.arm_means(tables)
    assert {"method", "steps", "seeds", "n", "dsc", "dsc_pe", "hidden_recall"} <= set(means)
    m = means.set_index(["method", "steps"])
    assert m.loc[("dvd_cl", 2700), "seeds"] == 3 and m.loc[("vader", 900), "n"] == 40
    assert m.loc[("dvd_cl", 2700), "dsc"] == pytest.approx(86.0, abs=0.5)
    res = ab.contrasts(tables, "length", n_boot=500)
    assert len(res) == 13 * 3 and (res["level"] == 1 - 0.05 / 39).all()
    gap = res[(res["a"] == "dvd_cl") & (res["b"] == "none") & (res["metric"] == "dsc")].set_index("steps")
    assert list(gap.index) == [100, 300, 900, 2700, 8100]
    assert gap.loc[2700, "estimate"] == pytest.approx(1.0, abs=0.3) and gap.loc[100, "verdict"] == "contradicted"
    assert set(res.loc[res["a"] == "vader", "steps"]) == {300, 900, 2700, 8100}

    import matplotlib.pyplot as plt

    from cfcl.plots.ablations import plot_length

    fig = plot_length(res, "length")
    axes = fig.axes
    assert len(axes) == 3 and all(ax.get_xscale() == "log" for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["DVD-CL", "VADeR"]
    plt.close(fig)


def test_schedule_and_ceiling_arms_change_only_what_they_name():
    """The schedule arm: cosine over 1.5x the epochs (30 at cpu); the ceiling arms: 1,000 + 1,000 annotated
    images in two folds. Neither touches the test split (so contrasts stay paired) nor the profile's None."""
    from cfcl.data import data_key
    from cfcl.read.finetune import finetune_run

    cpu = get_profile("cpu")
    cos = ab.arm_profile(cpu, "schedule", "cosine")
    assert (cos.finetune.schedule, cos.finetune.epochs, cos.label) == ("cosine", 30, "cpu-abl-schedule-cosine")
    many = ab.arm_profile(cpu, "ceiling", "many")
    half = ab.arm_profile(cpu, "ceiling", "many_half")
    assert (many.data.n_annotated_healthy, many.data.n_annotated_effusion, many.finetune.folds) == (1000, 1000, 2)
    assert (many.finetune.epochs, half.finetune.epochs) == (ab.CEILING_EPOCHS, ab.CEILING_EPOCHS // 2)
    assert data_key(many, "test") == data_key(cpu, "test") and data_key(many, "pretrain") == data_key(cpu, "pretrain")
    assert data_key(many, "annotated") != data_key(cpu, "annotated")
    assert ab.arm_profile(cpu, "ceiling", "paper") == cpu
    assert len({finetune_run(p, "none").key for p in (cpu, cos, many, half)}) == 4


def test_seed_spread_on_hand_made_seeds():
    """Three seeds whose per-image DSC is the image's value + 0, +0.02, +0.04: seed means 1 point apart (sd 1,
    range 2), per-image sd 2 points; a one-seed arm has no spread."""
    base = np.linspace(0.8, 0.9, 5)
    rows = [{"arm": "a", "method": "none", "replicate": 0, "seed": s, "image": i, "dsc": v + 0.02 * s}
            for s in range(3) for i, v in enumerate(base)]
    rows += [{"arm": "b", "method": "none", "replicate": 0, "seed": 0, "image": i, "dsc": v} for i, v in enumerate(base)]
    out = ab.seed_spread(pd.DataFrame(rows)).set_index("arm")
    assert out.loc["a", "seeds"] == 3 and out.loc["a", "seed_means"] == "85.00 87.00 89.00"
    assert out.loc["a", ["sd", "range", "image_sd"]].tolist() == pytest.approx([2.0, 4.0, 2.0])
    assert out.loc["b", "seeds"] == 1 and np.isnan(out.loc["b", "sd"]) and out.loc["b", "range"] == 0
