"""cfcl.stats on hand-made samples: intervals, tests, Holm, verdicts, detectable effects."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st

from cfcl import stats


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 30), rng.normal(1.0, 1.0, 3000)
    lo_s, hi_s = stats.bootstrap_ci(small, n_boot=4000)
    lo_l, hi_l = stats.bootstrap_ci(large, n_boot=4000)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < 0.2 * (hi_s - lo_s)
    # the percentile interval of a normal sample is close to mean +- 1.96 se
    se = large.std(ddof=1) / np.sqrt(len(large))
    assert abs((hi_l - lo_l) - 2 * 1.96 * se) < 0.1 * (hi_l - lo_l)


def test_wilcoxon_and_holm_against_hand_values():
    d = np.array([1.0, 2.0, 3.0, -0.5, 4.0, 5.0])
    assert stats.wilcoxon_p(d) == pytest.approx(st.wilcoxon(d, zero_method="pratt").pvalue)
    assert stats.wilcoxon_p(np.zeros(5)) == 1.0
    # Holm: sorted p (0.01, 0.02, 0.04) -> (0.03, 0.04, 0.04), monotone, capped at 1
    np.testing.assert_allclose(stats.holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(stats.holm([0.5, 0.9]), [1.0, 1.0])


@pytest.mark.parametrize("lo, hi, direction, want", [
    (0.1, 0.5, 1, "holds"), (-0.5, -0.1, 1, "contradicted"), (-0.1, 0.5, 1, "inconclusive"),
    (-0.5, -0.1, -1, "holds"), (0.1, 0.5, -1, "contradicted")])
def test_verdicts(lo, hi, direction, want):
    assert stats.verdict(lo, hi, direction) == want
    assert stats.verdict(lo, hi, direction, p=0.01) == want  # the test agrees
    assert stats.verdict(lo, hi, direction, p=0.2) == "inconclusive"  # the corrected test does not


def test_interval_and_test_must_agree():
    # A mean shift carried by a few large differences: the bootstrap interval of the mean excludes 0, but
    # most differences are small and of both signs, so the signed-rank test does not reject.
    d = np.r_[np.full(6, 3.0), np.tile([-0.1, 0.1], 47)]
    lo, hi = stats.bootstrap_ci(d, level=0.95, n_boot=4000)
    assert lo > 0 and stats.wilcoxon_p(d) > 0.05
    row = stats.contrast_family([(d, np.zeros_like(d), 1)], n_boot=4000)[0]
    assert row["ci_low"] > 0 and row["p_holm"] > 0.05 and row["verdict"] == "inconclusive"


def test_family_uses_bonferroni_intervals_and_holm():
    rng = np.random.default_rng(1)
    base = rng.normal(0.9, 0.05, 200)
    clear = base + 0.03 + rng.normal(0, 0.01, 200)  # a real gain
    noise = base + rng.normal(0, 0.01, 200)  # no effect
    worse = base - 0.02 + rng.normal(0, 0.01, 200)
    rows = stats.contrast_family([(clear, base, 1), (noise, base, 1), (worse, base, 1)], n_boot=3000)
    assert [r["verdict"] for r in rows] == ["holds", "inconclusive", "contradicted"]
    assert all(r["level"] == pytest.approx(1 - 0.05 / 3) for r in rows)
    assert rows[0]["p_holm"] >= rows[0]["p"] and rows[0]["n"] == 200
    assert 0 < rows[1]["detectable"] < 0.01  # the protocol would see a 1-point effect here


def test_paired_inputs_are_checked():
    with pytest.raises(ValueError, match="one length"):
        stats.paired_contrast(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="non-finite"):
        stats.paired_contrast(np.array([0.0, np.nan]), np.zeros(2))


def test_claims_are_decided_on_paired_per_image_tables():
    import pandas as pd

    from cfcl.claims import CLAIMS, decide
    from cfcl.methods import FINETUNE_METHODS

    rng = np.random.default_rng(2)
    n = 300
    eff = (np.arange(n) % 2).astype(int)
    base = rng.normal(0.85, 0.05, n)
    gain = {"none": 0.0, "simclr": 0.01, "vader": 0.02, "dvd_cl": 0.03, "mvd_cl": 0.02, "chexmask": 0.05,
            "ssdcl": 0.04, "s_dvd_cl": 0.045, "s_mvd_cl": 0.02}
    tables = {m: pd.DataFrame({"dsc": base + g + rng.normal(0, 0.005, n), "effusion": eff,
                               "hidden_recall": np.where(eff == 1, 0.5 + g, np.nan)})
              for m, g in gain.items()}
    t = decide(tables, n_boot=2000).set_index("contrast")
    assert len(t) == len(CLAIMS) and set(FINETUNE_METHODS) >= {c.a for c in CLAIMS}
    assert t.loc["DVD-CL - None"].query("metric == 'dsc'")["verdict"].item() == "holds"
    assert t.loc["S-MVD-CL - CheXMask"].query("metric == 'dsc'")["verdict"].item() == "contradicted"
    assert abs(t.loc["DVD-CL - None"].query("metric == 'dsc'")["estimate"].item() - 3.0) < 0.2  # DSC points
    assert t.loc["DVD-CL - None"].query("metric == 'dsc_pe'")["n"].item() == n // 2
    assert (t["p_holm"] >= t["p"]).all()
    # without hidden-lung recall (real data), those contrasts are left out, not faked
    for m in tables:
        tables[m] = tables[m].drop(columns="hidden_recall")
    assert "hidden_recall" not in set(decide(tables, n_boot=500)["metric"])


def test_the_seed_spread_can_only_make_a_verdict_inconclusive():
    import pandas as pd

    from cfcl.claims import Contrast, decide

    rng = np.random.default_rng(3)
    n = 200
    eff = (np.arange(n) % 2).astype(int)
    base = rng.normal(0.85, 0.05, n)

    def seed_tables(gain_a: float, gain_b: float) -> dict[str, pd.DataFrame]:
        return {m: pd.DataFrame({"dsc": base + g + rng.normal(0, 0.002, n), "effusion": eff})
                for m, g in (("dvd_cl", gain_a), ("none", 0.0), ("vader", gain_b))}

    # DVD-CL - None: +2, +2.5, +1.5 points on the three seeds; VADeR - None: +3, -0.5, +3 (one seed reverses)
    seeds = [seed_tables(0.02, 0.03), seed_tables(0.025, -0.005), seed_tables(0.015, 0.03)]
    mean = {m: sum(s[m] for s in seeds) / 3 for m in seeds[0]}
    contrasts = (Contrast("c", "dvd_cl", "none"), Contrast("c", "vader", "none"))
    plain = decide(mean, contrasts, n_boot=1000).set_index("contrast")
    assert (plain["verdict"] == "holds").all() and "seed_sd" not in plain
    t = decide(mean, contrasts, n_boot=1000, per_seed=seeds).set_index("contrast")
    assert t.loc["DVD-CL - None", "verdict"] == "holds" and t.loc["VADeR - None", "verdict"] == "inconclusive"
    assert t.loc["DVD-CL - None", "seeds"] == 3
    np.testing.assert_allclose(t.loc["DVD-CL - None", ["seed_min", "seed_max"]].to_numpy(float), [1.5, 2.5], atol=0.05)
    np.testing.assert_allclose(t.loc["VADeR - None", "seed_sd"], np.std([3, -0.5, 3], ddof=1), atol=0.05)
    np.testing.assert_allclose(t["estimate"], plain["estimate"])  # the estimate is the seed-averaged one


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 50, 301])
def test_hodges_lehmann_is_the_median_of_the_walsh_averages(n):
    rng = np.random.default_rng(n)
    for d in (rng.normal(0, 1, n), rng.integers(-3, 4, n).astype(float)):  # continuous, and heavy ties
        walsh = [(d[i] + d[j]) / 2 for i in range(n) for j in range(i, n)]
        assert stats.hodges_lehmann(d) == pytest.approx(float(np.median(walsh)), abs=1e-12)
    with pytest.raises(ValueError, match="non-empty finite"):
        stats.hodges_lehmann(np.array([0.0, np.nan]))


@pytest.mark.parametrize("lo, hi, direction, median, want", [
    (0.1, 0.5, 1, 0.3, "holds"), (0.1, 0.5, 1, -0.2, "inconclusive"), (0.1, 0.5, 1, 0.0, "inconclusive"),
    (-0.5, -0.1, 1, -0.3, "contradicted"), (-0.5, -0.1, 1, 0.54, "inconclusive"),
    (-0.5, -0.1, -1, -0.3, "holds"), (-0.5, -0.1, -1, 0.2, "inconclusive")])
def test_the_verdict_needs_the_median_on_the_intervals_side(lo, hi, direction, median, want):
    assert stats.verdict(lo, hi, direction, p=0.001, median=median) == want


def test_a_mean_and_a_median_of_opposite_signs_are_inconclusive():
    """The issue's case: mean -0.31 and paired median +0.54. Most images gain a little, a tenth lose much:
    the interval of the mean lies below 0 and the signed-rank test rejects, but in the other direction
    (its Hodges-Lehmann estimate is above 0), so the contrast is not contradicted: inconclusive."""
    d = np.r_[np.linspace(0.04, 1.16, 900), np.full(100, -8.5)]
    row = stats.contrast_family([(d, np.zeros_like(d), 1)], n_boot=4000)[0]
    assert row["estimate"] == pytest.approx(-0.31, abs=1e-9) and row["hl"] == pytest.approx(0.54, abs=0.03)
    assert row["ci_high"] < 0 and row["p_holm"] < 1e-10
    assert stats.verdict(row["ci_low"], row["ci_high"], 1, row["p_holm"]) == "contradicted"  # the old rule
    assert row["verdict"] == "inconclusive"
    # where mean and median agree, the rule still decides: the same gains without the large losses
    agree = stats.contrast_family([(d[:900], np.zeros(900), 1), (-d[:900], np.zeros(900), 1)], n_boot=2000)
    assert [r["verdict"] for r in agree] == ["holds", "contradicted"]


def _runs(rng, offsets, seeds, n, noise=0.3, base=None, seed_sd=0.2):
    """(replicates, seeds, images): an image effect shared by every run, one offset per replicate, a
    seed effect (sd ``seed_sd``) and per-image noise."""
    base = rng.normal(0, 2, n) if base is None else base
    return np.stack([[base + o + rng.normal(0, seed_sd) + rng.normal(0, noise, n) for _ in range(seeds)]
                     for o in offsets])


def test_two_level_interval_contains_the_spread_between_pretraining_runs():
    rng = np.random.default_rng(4)
    n = 400
    base = rng.normal(0, 2, n)
    a = _runs(rng, [-3.0, 0.5, 3.0], 3, n, base=base + 1.0)  # three pre-training runs far apart
    b = _runs(rng, [0.0], 3, n, base=base)  # None: one run, three fine-tuning seeds
    est, lo, hi = stats.two_level_ci(a, b, level=0.95, n_boot=4000, seed=1)
    d = a.mean((0, 1)) - b.mean((0, 1))  # the run-averaged per-image differences
    assert est == pytest.approx(d.mean())
    img_lo, img_hi = stats.bootstrap_ci(d, 0.95, 4000)
    per_run = (a.mean(2) - b.mean()).mean(1)  # each replicate's own estimate
    # with three replicates, a draw of the same run thrice has probability 1/27 > 2.5 %: the interval reaches
    # (nearly) the lowest and the highest run's estimate, the spread between pre-training runs
    spread = per_run.max() - per_run.min()
    assert lo < per_run.min() + 0.05 * spread and hi > per_run.max() - 0.05 * spread
    assert (hi - lo) > 10 * (img_hi - img_lo)  # the image interval does not
    assert stats.two_level_ci(a, b, 0.95, 4000, seed=1) == (est, lo, hi)  # deterministic
    # runs that differ only by per-image noise: the two-level interval is about as wide as the image one
    a2, b2 = _runs(rng, [1.0] * 3, 3, n, base=base, seed_sd=0), _runs(rng, [0.0], 3, n, base=base, seed_sd=0)
    d2 = a2.mean((0, 1)) - b2.mean((0, 1))
    _, lo2, hi2 = stats.two_level_ci(a2, b2, 0.95, 4000)
    w = np.subtract(*stats.bootstrap_ci(d2, 0.95, 4000)[::-1])
    assert 0.8 * w < hi2 - lo2 < 2.5 * w


def test_two_level_interval_with_one_run_is_the_image_interval():
    rng = np.random.default_rng(5)
    n = 300
    a, b = rng.normal(1, 2, (1, 1, n)), rng.normal(0, 2, (1, 1, n))
    est, lo, hi = stats.two_level_ci(a, b, 0.95, n_boot=6000)
    ilo, ihi = stats.bootstrap_ci(a[0, 0] - b[0, 0], 0.95, 6000)
    assert est == pytest.approx(float(np.mean(a - b)))
    assert lo == pytest.approx(ilo, abs=0.05 * (ihi - ilo)) and hi == pytest.approx(ihi, abs=0.05 * (ihi - ilo))
    with pytest.raises(ValueError, match="same images"):
        stats.two_level_ci(a, b[:, :, :10])


def test_claims_get_a_run_interval_and_verdict_from_the_per_run_table():
    import pandas as pd

    from cfcl.claims import Contrast, RUN_COLUMNS, decide, tables_from_runs

    rng = np.random.default_rng(6)
    n = 300
    eff = (np.arange(n) % 2).astype(int)
    base = rng.normal(85, 5, n)
    arrays = {"none": _runs(rng, [0.0], 3, n, base=base), "dvd_cl": _runs(rng, [1.0, 2.0, 3.0], 3, n, base=base),
              "vader": _runs(rng, [-2.0, 1.0, 4.0], 3, n, base=base)}
    rows = [{"method": m, "replicate": r, "seed": s, "image": i, "effusion": eff[i], "dsc": v[r, s, i] / 100,
             "hd95": 1.0, "asd": 0.5, "hidden_recall": np.nan}
            for m, v in arrays.items() for r in range(v.shape[0]) for s in range(v.shape[1]) for i in range(n)]
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    per_image, per_seed = tables_from_runs(runs)
    assert len(per_seed) == 9 and per_seed.runs is runs
    t = decide(per_image, (Contrast("c", "dvd_cl", "none"), Contrast("c", "vader", "none")), n_boot=2000,
               per_seed=per_seed).set_index("contrast")
    dvd, vader = t.loc["DVD-CL - None"], t.loc["VADeR - None"]
    assert dvd["verdict"] == dvd["run_verdict"] == "holds"
    assert 0.5 < dvd["run_ci_low"] < 1.5 and 2.5 < dvd["run_ci_high"] < 3.5  # replicates at +1, +2, +3
    assert dvd["ci_high"] - dvd["ci_low"] < 0.3 * (dvd["run_ci_high"] - dvd["run_ci_low"])
    assert vader["run_ci_low"] < -1 and vader["run_ci_high"] > 3 and vader["run_verdict"] == "inconclusive"
    assert vader["verdict"] == "inconclusive"  # one replicate reverses it
    # without the per-run table (plain per-seed tables), no run interval
    assert "run_ci_low" not in decide(per_image, (Contrast("c", "dvd_cl", "none"),), n_boot=200, per_seed=list(per_seed))
