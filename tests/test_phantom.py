"""The phantom SCM (cfcl.data.phantom): parents, exact counterfactuals, labels, cache."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cfcl.config import DataConfig, INTERVENTIONS
from cfcl.data import anatomy
from cfcl.data import phantom as ph

SIZE = 48


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """A temporary cache with a small shape bank (first 40 archive members) for speed."""
    root = tmp_path_factory.mktemp("cache")
    bank = anatomy.build_shape_bank(limit=40)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CFCL_CACHE", str(root))
        mp.setattr(ph.scm, "_bank", lambda: bank)  # looked up there by render and store
        yield root


@pytest.fixture(scope="module")
def items():
    """Eight items covering every (sex, scanner, effusion) cell."""
    noise = ph.sample_noise(8, 0, "val", n_shapes=1000)
    parents = pd.DataFrame(dict(sex=[0, 1] * 4, scanner=[0, 0, 1, 1] * 2, effusion=[0] * 4 + [1] * 4))
    return noise, parents


def tiny(**kw) -> DataConfig:
    base = dict(image_size=32, n_pretrain=6, n_val=4, n_test=8, n_annotated_healthy=3, n_annotated_effusion=5)
    base.update(kw)
    return DataConfig(**base)


# ---------------------------------------------------------------------------------- parents

def test_default_distribution_is_the_real_joint():
    real = ph.real_joint()
    dist = ph.parent_distribution()
    assert real["count"].sum() == 90200  # REFERENCES section 3
    np.testing.assert_allclose(dist["p"], real["p"], rtol=1e-12)


def test_sampling_reproduces_the_joint():
    dist = ph.parent_distribution()
    draws = ph.sample_parents(200_000, np.random.default_rng(0))
    counts = draws.value_counts().reindex(pd.MultiIndex.from_frame(dist[["sex", "scanner", "effusion"]])).to_numpy()
    assert stats.chisquare(counts, dist["p"].to_numpy() * len(draws)).pvalue > 1e-3
    # Confounding kept: effusion about 2.4x more frequent on Philips.
    rate = draws.groupby("scanner")["effusion"].mean()
    assert 2.0 < rate[1] / rate[0] < 2.9


def odds_ratio(d: pd.DataFrame) -> float:
    p = d.groupby(["scanner", "effusion"])["p"].sum()
    return (p[1, 1] / p[1, 0]) / (p[0, 1] / p[0, 0])


@pytest.mark.parametrize("prev,ratio", [(0.3, 1.0), (0.5, 5.0), (None, 1.0), (0.2, None)])
def test_prevalence_and_odds_ratio_knobs(prev, ratio):
    real = ph.parent_distribution()
    dist = ph.parent_distribution(prev, ratio)
    assert dist["p"].sum() == pytest.approx(1.0)
    want_prev = real.loc[real.effusion == 1, "p"].sum() if prev is None else prev
    assert dist.loc[dist.effusion == 1, "p"].sum() == pytest.approx(want_prev, abs=1e-9)
    assert odds_ratio(dist) == pytest.approx(odds_ratio(real) if ratio is None else ratio, rel=1e-6)
    # P(scanner) stays real.
    assert dist.groupby("scanner")["p"].sum().to_numpy() == pytest.approx(real.groupby("scanner")["p"].sum().to_numpy())
    draws = ph.sample_parents(100_000, np.random.default_rng(1), prev, ratio)
    assert draws["effusion"].mean() == pytest.approx(want_prev, abs=0.01)


def test_bad_knobs():
    with pytest.raises(ValueError, match="effusion_prevalence"):
        ph.parent_distribution(1.5)
    with pytest.raises(ValueError, match="odds_ratio"):
        ph.parent_distribution(None, -1.0)
    with pytest.raises(KeyError, match="intervention"):
        ph.intervene(pd.DataFrame(dict(sex=[0], scanner=[0], effusion=[0])), "sex")


# ------------------------------------------------------------------------- counterfactuals

def test_null_intervention_is_pixel_identical(items):
    noise, parents = items
    fact = ph.render(noise, parents, SIZE)
    null = ph.counterfactual(noise, parents, "none", SIZE)
    for k in fact:
        np.testing.assert_array_equal(fact[k], null[k])
    # Reversibility: do(scanner) of do(scanner) is the factual.
    twice = ph.render(noise, ph.intervene(ph.intervene(parents, "scanner"), "scanner"), SIZE)
    np.testing.assert_array_equal(fact["image"], twice["image"])


def test_do_scanner_changes_acquisition_only(items):
    noise, parents = items
    fact = ph.render(noise, parents, SIZE)
    cf = ph.counterfactual(noise, parents, "scanner", SIZE)
    np.testing.assert_array_equal(fact["gold"], cf["gold"])
    np.testing.assert_array_equal(fact["silver"], cf["silver"])
    np.testing.assert_array_equal(fact["fluid"], cf["fluid"])
    np.testing.assert_array_equal(fact["devices"], cf["devices"])
    diff = (fact["image"] != cf["image"]).mean(axis=(1, 2))
    assert (diff > 0.5).all()  # every image visibly re-acquired


def test_do_effusion_is_local_and_keeps_gold(items):
    noise, parents = items
    fact = ph.render(noise, parents, SIZE)
    cf = ph.counterfactual(noise, parents, "effusion", SIZE)
    np.testing.assert_array_equal(fact["gold"], cf["gold"])
    np.testing.assert_array_equal(fact["effusion_region"], cf["effusion_region"])
    changed = fact["image"] != cf["image"]
    assert not (changed & ~fact["effusion_region"]).any()  # nothing changes outside the region
    assert changed.any(axis=(1, 2)).all()  # and every image changes inside it
    # The fluid appears exactly where effusion is 1.
    eff = parents["effusion"].to_numpy() == 1
    assert fact["fluid"][eff].any(axis=(1, 2)).all() and not fact["fluid"][~eff].any()
    assert cf["fluid"][~eff].any(axis=(1, 2)).all() and not cf["fluid"][eff].any()
    # Fluid is brighter than the aerated lung it hides.
    gained = cf["fluid"][~eff]
    assert (cf["image"][~eff][gained].astype(int) - fact["image"][~eff][gained]).mean() > 20


def test_gold_is_independent_of_scanner_and_effusion(items):
    """The annotated outline is anatomy only: no intervention on scanner or effusion moves it."""
    noise, parents = items
    fact = ph.render(noise, parents, SIZE)
    for name in INTERVENTIONS:
        np.testing.assert_array_equal(ph.counterfactual(noise, parents, name, SIZE)["gold"], fact["gold"])
    # The same anatomy under all four (scanner, effusion) settings, not only the flipped ones.
    for sc in (0, 1):
        for ef in (0, 1):
            other = ph.render(noise, parents.assign(scanner=sc, effusion=ef), SIZE)
            np.testing.assert_array_equal(other["gold"], fact["gold"])


def forced(noise, **fields):
    """A copy of ``noise`` with some fields set to a constant for every item."""
    out = {k: v.copy() for k, v in noise.items()}
    for k, val in fields.items():
        out[k][...] = val
    return out


def test_devices_never_move_under_interventions(items):
    noise, parents = items
    with_dev = forced(noise, devices=0.0)  # every device present
    fact = ph.render(with_dev, parents, SIZE)
    assert fact["devices"].any(axis=(1, 2)).all()
    assert (fact["devices"] & (fact["gold"] > 0)).any(axis=(1, 2)).mean() >= 0.75  # lines cross the lungs
    for name in INTERVENTIONS:
        cf = ph.counterfactual(with_dev, parents, name, SIZE)
        np.testing.assert_array_equal(cf["devices"], fact["devices"])
    # Under do(effusion) the device pixels outside the fluid region keep their exact values.
    cf = ph.counterfactual(with_dev, parents, "effusion", SIZE)
    keep = fact["devices"] & ~fact["effusion_region"]
    np.testing.assert_array_equal(cf["image"][keep], fact["image"][keep])
    # Devices are radio-opaque: brighter than the same image without them.
    bare = ph.render(forced(noise, devices=1.0), parents, SIZE)
    assert not bare["devices"].any()
    gain = fact["image"].astype(int) - bare["image"]
    assert gain[fact["devices"]].mean() > 5 and gain[~fact["devices"]].mean() == pytest.approx(0, abs=1)
    np.testing.assert_array_equal(bare["gold"], fact["gold"])


def test_hidden_lung_behind_heart_and_domes(items):
    """Lung air continues outside the annotated outline (behind the heart, below the domes),
    thinner than inside it, so those borders are shallow steps rather than the end of the air."""
    noise, parents = items
    bank = ph.scm._bank()
    scene = ph.renderer._scene(noise, parents["sex"].to_numpy(), 64, bank)
    gold = ph.render(noise, parents, 64)["gold"] > 0
    air = scene["air"]
    outside = np.where(gold, 0, air)
    assert (outside.max(axis=(1, 2)) > 0.05).all()
    assert (outside.sum(axis=(1, 2)) < 0.25 * np.where(gold, air, 0).sum(axis=(1, 2))).all()


def test_inspiration_and_rotation_change_the_projected_lungs(items):
    noise, parents = items
    deep = ph.render(forced(noise, inspiration=2.0), parents, 64)["gold"]
    shallow = ph.render(forced(noise, inspiration=-2.0), parents, 64)["gold"]
    ratio = (deep > 0).sum(axis=(1, 2)) / (shallow > 0).sum(axis=(1, 2))
    assert (ratio > 1.05).all() and np.median(ratio) > 1.15  # long lungs may hit the thorax limit
    # Rotation projects one hemithorax wider: positive rotation widens the left lung (image right).
    ratio = {}
    for rot in (-2.0, 2.0):
        gold = ph.render(forced(noise, rotation=rot), parents, 64)["gold"]
        ratio[rot] = (gold == 2).sum(axis=(1, 2)) / (gold == 1).sum(axis=(1, 2))
    assert (ratio[2.0] > 1.1 * ratio[-2.0]).all()


def test_fluid_from_subtle_to_massive():
    """Effusions range from a blunted angle to most of a lung, of every kind and side."""
    noise = ph.sample_noise(64, 1, "val", n_shapes=1000)
    parents = pd.DataFrame(dict(sex=np.arange(64) % 2, scanner=(np.arange(64) // 2) % 2, effusion=1))
    out = ph.render(noise, parents, 48)
    hidden = 1 - (out["silver"] > 0).sum(axis=(1, 2)) / (out["gold"] > 0).sum(axis=(1, 2))
    assert hidden.min() < 0.12 and hidden.max() > 0.7 and 0.3 < np.median(hidden) < 0.65
    assert set(noise["eff_kind"]) == {0, 1, 2} and set(noise["eff_side"]) == {0, 1, 2}
    assert out["fluid"].any(axis=(1, 2)).all()


def test_breasts_are_a_female_shadow(items):
    noise, _ = items
    g = {s: ph.renderer._geometry(noise, np.full(8, s), 64, ph.scm._bank()) for s in (0, 1)}
    soft = {s: ph.renderer._chest_wall_soft_tissue(g[s], noise) for s in (0, 1)}
    lower = slice(30, 56)  # rows over the lower lung fields at 64 px
    assert (soft[0][:, lower].mean(axis=(1, 2)) > soft[1][:, lower].mean(axis=(1, 2))).all()


@pytest.mark.parametrize("scanner", [0, 1])
def test_side_marker_over_the_field(items, scanner):
    noise, parents = items
    par = parents.assign(scanner=scanner)
    for over, place in ((0.0, "field_marker"), (1.0, "marker")):
        img = ph.render(forced(noise, marker=np.array([0.5, 0.5, over])), par, 256)["image"]
        u, v = ph.SCANNERS[scanner][place]
        # The stem of the "L" is bright in every image, whatever lies under it.
        row, col = int(v * 256), int((u - 0.01) * 256)
        assert (img[:, row, col] > 240).all()


def test_do_both_equals_composition(items):
    noise, parents = items
    both = ph.counterfactual(noise, parents, "both", SIZE)
    comp = ph.counterfactual(noise, ph.intervene(parents, "scanner"), "effusion", SIZE)
    np.testing.assert_array_equal(both["image"], comp["image"])


def test_determinism_and_seed():
    a = ph.sample_noise(3, 5, "pretrain", 100)
    b = ph.sample_noise(3, 5, "pretrain", 100)
    c = ph.sample_noise(3, 6, "pretrain", 100)
    for k in ph.NOISE_FIELDS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["deform"], c["deform"])
    # Item i does not depend on how many items are drawn.
    d = ph.sample_noise(2, 5, "pretrain", 100, start=1)
    np.testing.assert_array_equal(d["deform"], a["deform"][1:])
    parents = pd.DataFrame(dict(sex=[0, 1, 1], scanner=[1, 0, 1], effusion=[1, 0, 0]))
    ra, rb, rc = (ph.render(x, parents, 32)["image"] for x in (a, b, c))
    assert ra.tobytes() == rb.tobytes() and ra.tobytes() != rc.tobytes()


def test_masks_consistent_across_sizes(items):
    noise, parents = items
    small = ph.render(noise, parents, 64)["gold"]
    large = ph.render(noise, parents, 256)["gold"]
    # Majority label of each 4x4 block of the large render.
    blocks = large.reshape(len(large), 64, 4, 64, 4).transpose(0, 1, 3, 2, 4).reshape(len(large), 64, 64, 16)
    votes = np.stack([(blocks == k).sum(-1) for k in range(3)], -1).argmax(-1)
    assert (votes == small).mean() > 0.98
    for k in (1, 2):  # lung areas (as image fractions) agree
        np.testing.assert_allclose((small == k).mean(axis=(1, 2)), (large == k).mean(axis=(1, 2)), atol=0.01)


def test_silver_follows_visible_lung(items):
    noise, parents = items
    out = ph.render(noise, parents, 64)
    gold_area = (out["gold"] > 0).sum(axis=(1, 2))
    silver_area = (out["silver"] > 0).sum(axis=(1, 2))
    eff = parents["effusion"].to_numpy() == 1
    assert (silver_area[eff] < 0.95 * gold_area[eff]).all()  # under-segments under fluid
    inter = ((out["gold"] == out["silver"]) & (out["gold"] > 0)).sum(axis=(1, 2))
    dice = 2 * inter / (gold_area + silver_area)
    assert dice[~eff].mean() > 0.94 and dice[~eff].min() > 0.88  # close match without effusion
    assert out["quality"][~eff].mean() > out["quality"][eff].mean()
    assert ((out["quality"] >= 0) & (out["quality"] <= 1)).all()


def test_render_rejects_bad_input(items):
    noise, parents = items
    with pytest.raises(ValueError, match="size"):
        ph.render(noise, parents, 8)
    with pytest.raises(ValueError, match="rows"):
        ph.render(noise, parents.iloc[:3], 32)
    with pytest.raises(ValueError, match="0/1"):
        ph.render(noise, parents.assign(scanner=2), 32)
    with pytest.raises(ValueError, match="lacks fields"):
        ph.render({k: v for k, v in noise.items() if k != "shape"}, parents, 32)


# --------------------------------------------------------------------------- splits, cache

def test_split_sizes_and_balance():
    cfg = tiny(n_test=16, n_annotated_healthy=20, n_annotated_effusion=50)
    ann = ph.split_parents(cfg, "annotated")
    assert (ann["effusion"] == 0).sum() == 20 and (ann["effusion"] == 1).sum() == 50
    test = ph.split_parents(cfg, "test")
    assert test.groupby(["scanner", "effusion"]).size().tolist() == [4, 4, 4, 4]
    assert len(ph.split_parents(cfg, "pretrain")) == 6 and len(ph.split_parents(cfg, "val")) == 4


def test_load_split_contents_match_render():
    cfg = tiny()
    s = ph.load_split(cfg, "test")
    n = 8
    assert s.images.shape == (n, 32, 32) and s.images.dtype == np.uint8
    assert s.counterfactuals.shape == (n, 3, 32, 32) and s.gold.shape == s.silver.shape == (n, 32, 32)
    assert isinstance(s.images, np.memmap) and s.quality.shape == (n,)
    noise = ph.load_noise(cfg, "test")
    out = ph.render(noise, s.parents, 32)
    np.testing.assert_array_equal(out["image"], s.images)
    np.testing.assert_array_equal(out["silver"], s.silver)
    for j, name in enumerate(INTERVENTIONS):
        np.testing.assert_array_equal(ph.counterfactual(noise, s.parents, name, 32)["image"], s.counterfactuals[:, j])


def test_store_reuse_regeneration_and_interruption(monkeypatch):
    from cfcl.data import store
    from cfcl.runs import ArtifactError

    cfg = tiny(seed=3)
    first = ph.load_split(cfg, "val")
    images = np.array(first.images)
    calls = []
    real_build = ph.build_split
    monkeypatch.setattr(ph, "build_split", lambda *a, **k: calls.append(a) or real_build(*a, **k))
    ph.load_split(cfg, "val")
    assert calls == []  # second load does no work
    other = replace(cfg, n_val=5)
    assert ph.config_hash(other, "val") != ph.config_hash(cfg, "val")
    assert len(ph.load_split(other, "val")) == 5 and len(calls) == 1  # changed config regenerates
    assert ph.config_hash(replace(cfg, padchest_images="/x"), "val") == ph.config_hash(cfg, "val")  # paths don't

    # Interrupted generation: the renderer dies after the arrays were opened: nothing is left behind.
    cfg2 = tiny(seed=4)
    real_render = ph.store.render_with_counterfactuals

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ph.store, "render_with_counterfactuals", boom)
    with pytest.raises(KeyboardInterrupt):
        ph.load_split(cfg2, "val")
    folder = store.split_run(cfg2, "val").folder
    assert not (folder / "manifest.json").exists() and not list(folder.glob("*.npy"))
    monkeypatch.setattr(ph.store, "render_with_counterfactuals", real_render)
    # A half-written split (arrays without manifest) is rebuilt; damaged arrays are refused.
    ph.load_split(cfg2, "val")
    (folder / "manifest.json").unlink()
    n_calls = len(calls)
    ph.load_split(cfg2, "val")
    assert len(calls) == n_calls + 1
    with open(folder / "counterfactuals.npy", "r+b") as f:
        f.seek(300)
        f.write(b"\0" * 64)
    with pytest.raises(ArtifactError, match="counterfactuals.npy"):
        ph.load_split(cfg2, "val")
    np.testing.assert_array_equal(np.array(ph.load_split(cfg, "val").images), images)


def test_a_split_key_covers_its_own_size_only():
    """Per-split keys: a larger test split leaves the other splits (and the runs made from them) as
    they are, and each split's contents do not depend on the other splits' sizes."""
    cfg, bigger = tiny(), tiny(n_test=12)
    for split in ("pretrain", "val", "annotated"):
        assert ph.config_hash(bigger, split) == ph.config_hash(cfg, split)
    assert ph.config_hash(bigger, "test") != ph.config_hash(cfg, "test")
    assert len({ph.config_hash(cfg, s) for s in ("pretrain", "val", "annotated", "test")}) == 4
    for field, split in (("n_pretrain", "pretrain"), ("n_val", "val"), ("n_annotated_effusion", "annotated")):
        changed = tiny(**{field: 7})
        assert [s for s in ("pretrain", "val", "annotated", "test")
                if ph.config_hash(changed, s) != ph.config_hash(cfg, s)] == [split]
    for shared in ("image_size", "seed", "scanner_effusion_odds_ratio"):
        changed = replace(cfg, **{shared: {"image_size": 64, "seed": 9, "scanner_effusion_odds_ratio": 3.0}[shared]})
        assert all(ph.config_hash(changed, s) != ph.config_hash(cfg, s) for s in ("pretrain", "test"))
    pd.testing.assert_frame_equal(ph.split_parents(bigger, "annotated"), ph.split_parents(cfg, "annotated"))
    np.testing.assert_array_equal(np.array(ph.load_split(bigger, "val").images),
                                  np.array(ph.load_split(cfg, "val").images))
    with pytest.raises(KeyError, match="split"):
        ph.config_hash(cfg, "train")


def test_a_larger_test_split_keeps_every_trained_run():
    """The runs read their splits' keys: n_test changes the fine-tuning runs (they predict the test
    split) and the test split's counterfactuals, nothing trained before them."""
    from cfcl.config import get_profile
    from cfcl.counterfactual.cf_finetune import counterfactual_model_run
    from cfcl.counterfactual.generate import counterfactual_run
    from cfcl.counterfactual.hvae_train import hvae_run
    from cfcl.counterfactual.predictors import classifier_run
    from cfcl.finetune import finetune_run
    from cfcl.pretrain import pretrain_run

    a, b = get_profile("smoke"), get_profile("smoke", {"data.n_test": 40})
    same = [lambda p: hvae_run(p), lambda p: counterfactual_model_run(p), lambda p: classifier_run(p, "teacher"), lambda p: pretrain_run(p, "dvd_cl"),
            lambda p: counterfactual_run(p, "pretrain")]
    assert all(f(a).key == f(b).key for f in same)
    assert finetune_run(a, "none").key != finetune_run(b, "none").key
    assert counterfactual_run(a, "test").key != counterfactual_run(b, "test").key


def test_unknown_split_and_source(tmp_path):
    with pytest.raises(KeyError, match="split"):
        ph.load_split(tiny(), "train")
    with pytest.raises(ValueError, match="source"):
        ph.build_split(tiny(source="padchest"), "val", tmp_path)
