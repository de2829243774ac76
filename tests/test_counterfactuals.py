"""Tests of counterfactual generation, its cache, the source interface, quality metrics and the
parent predictors (cfcl.counterfactuals, cfcl.classifiers) on tiny synthetic data (16 px)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cfcl.classifiers as clf
import cfcl.counterfactuals as cfm
import cfcl.hvae as hv
from cfcl.config import INTERVENTIONS, get_profile
from cfcl.data import ChestSplit
from cfcl.paths import cache_dir


def synthetic_split(name: str, n: int, size: int = 16, seed: int = 0) -> ChestSplit:
    """Blob brightness depends on the scanner, a bright lower band on effusion; exact
    counterfactuals rendered from the same noise (a miniature phantom)."""
    rng = np.random.default_rng(seed)
    pa = pd.DataFrame(dict(sex=rng.integers(0, 2, n), scanner=rng.integers(0, 2, n),
                           effusion=(rng.random(n) < 0.3).astype(int)))
    yy, xx = np.mgrid[:size, :size] / size
    noise = rng.normal(0, 6, (n, size, size))

    def render(s, c, e):
        blob = np.exp(-((xx - 0.5) ** 2 + (yy - 0.5) ** 2) / (0.05 + 0.02 * s[:, None, None]))
        img = 40 + 120 * blob * (1 + 0.5 * c[:, None, None]) + 90 * e[:, None, None] * (yy > 0.7) + noise
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    s, c, e = (pa[k].to_numpy() for k in ("sex", "scanner", "effusion"))
    cfs = np.stack([render(s, 1 - c, e), render(s, c, 1 - e), render(s, 1 - c, 1 - e)], 1)
    return ChestSplit(name=name, images=render(s, c, e), parents=pa, silver=np.zeros((n, size, size), np.uint8),
                      counterfactuals=cfs)


def tiny_profile(**over):
    base = {"data.image_size": 16, "data.n_pretrain": 24, "data.n_val": 8, "hvae.widths": [8, 8],
            "hvae.z_dims": [2, 2], "hvae.epochs": 1, "hvae.batch_size": 8, "hvae.cf_batch_size": 8,
            "hvae.classifier_epochs": 1}
    base.update(over)
    return get_profile("smoke", **base)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    splits = {"pretrain": synthetic_split("pretrain", 24, seed=1), "val": synthetic_split("val", 8, seed=2),
              "test": synthetic_split("test", 12, seed=3)}
    for module in (hv, cfm, clf):
        monkeypatch.setattr(module, "load_split", lambda profile, split: splits[split])
    return splits


ORIGINAL_COUNTERFACTUAL = cfm.counterfactual


class Interrupted(Exception):
    """Stands for a kill / Ctrl-C in the middle of generation."""


class CallCounter:
    """Wraps cfm.counterfactual; raises after ``fail_after`` calls (a simulated interruption)."""

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after, self.inner = 0, fail_after, ORIGINAL_COUNTERFACTUAL

    def __call__(self, *args, **kwargs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted("simulated interruption")
        self.calls += 1
        return self.inner(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
def test_intervene_flips_named_parents():
    pa = torch.tensor([[0.0, 1, 0], [1, 0, 1]])
    assert cfm.intervene(pa, "scanner").tolist() == [[0, 0, 0], [1, 1, 1]]
    assert cfm.intervene(pa, "effusion").tolist() == [[0, 1, 1], [1, 0, 0]]
    assert cfm.intervene(pa, "both").tolist() == [[0, 0, 1], [1, 1, 0]]
    assert torch.equal(cfm.intervene(pa, "null"), pa)
    with pytest.raises(KeyError, match="sex"):
        cfm.intervene(pa, "sex")


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_null_intervention_returns_x_exactly(alpha):
    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2).eval()
    split = synthetic_split("x", 6)
    pa = hv.parents_tensor(split.parents)
    # the generation code path: uint8 in, uint8 out, batches of 4
    out = cfm.counterfactual_images(model, split.images, pa, pa, batch_size=4, alpha=alpha)
    np.testing.assert_array_equal(out, split.images)
    x = hv.to_model_space(split.images)
    assert (cfm.counterfactual(model, x, pa, pa, alpha=alpha) - x).abs().max() < 1e-4
    # a real intervention changes the image (the prior/decoder see the parents)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flipped = cfm.counterfactual_images(model, split.images, pa, cfm.intervene(pa, "effusion"), alpha=alpha)
    assert (flipped != split.images).any()


def test_counterfactual_rejects_bad_shapes():
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        cfm.counterfactual(model, torch.zeros(2, 16, 16), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="cf_pa"):
        cfm.counterfactual(model, torch.zeros(2, 1, 16, 16), torch.zeros(2, 3), torch.zeros(1, 3))


def test_generate_cached_resumable_and_invalidated(synthetic, monkeypatch):
    prof = tiny_profile()
    full = np.array(cfm.generate(prof, "pretrain", progress=False))
    assert full.shape == (24, 3, 16, 16) and full.dtype == np.uint8
    model = hv.load_hvae(prof)
    pa = hv.parents_tensor(synthetic["pretrain"].parents)
    np.testing.assert_array_equal(full[:8], cfm.all_interventions(model, synthetic["pretrain"].images[:8], pa[:8]))
    folder = next((cache_dir("smoke") / "counterfactuals").glob("pretrain-*"))
    assert (folder / cfm.MANIFEST_NAME).exists() and not list(folder.glob("rows_*"))

    # cached: nothing recomputed
    counter = CallCounter()
    monkeypatch.setattr(cfm, "counterfactual", counter)
    np.testing.assert_array_equal(cfm.generate(prof, "pretrain", progress=False), full)
    assert counter.calls == 0

    # interrupted after one batch (3 interventions), then resumed: only the other 2 batches run
    cfm.clear_cache(prof)
    monkeypatch.setattr(cfm, "counterfactual", CallCounter(fail_after=3))
    with pytest.raises(Interrupted):
        cfm.generate(prof, "pretrain", progress=False)
    counter = CallCounter()
    monkeypatch.setattr(cfm, "counterfactual", counter)
    np.testing.assert_array_equal(cfm.generate(prof, "pretrain", progress=False), full)
    assert counter.calls == 2 * len(INTERVENTIONS)

    # a new checkpoint (one more epoch) gives a new key: everything is regenerated
    more = tiny_profile(**{"hvae.epochs": 2})
    counter = CallCounter()
    monkeypatch.setattr(cfm, "counterfactual", counter)
    new = cfm.generate(more, "pretrain", progress=False)
    assert counter.calls == 3 * len(INTERVENTIONS) and new.shape == full.shape
    assert len(list(folder.parent.glob("pretrain-*"))) == 2


def test_get_counterfactuals_sources(synthetic):
    prof = tiny_profile()
    oracle = cfm.get_counterfactuals(prof, "pretrain", source="oracle")
    assert oracle is synthetic["pretrain"].counterfactuals
    assert cfm.get_counterfactuals(prof, "pretrain").shape == (24, 3, 16, 16)  # smoke default: hvae
    synthetic["val"].counterfactuals = None
    with pytest.raises(ValueError, match="no oracle counterfactuals"):
        cfm.get_counterfactuals(prof, "val", source="oracle")
    with pytest.raises(ValueError, match="pretrain.cf_source"):
        cfm.get_counterfactuals(prof, "val", source="gan")


def test_metric_functions_hand_made():
    x = np.zeros((2, 8, 8), np.uint8)
    y = x.copy()
    y[0, :4] = 40  # half the pixels of image 0 off by 40
    np.testing.assert_allclose(cfm.mae(y, x), [20.0, 0.0])
    np.testing.assert_allclose(cfm.psnr(y, x), [10 * np.log10(255 ** 2 / 800), 100.0])
    oracle = x.copy()
    oracle[0, :2] = 100  # true change: rows 0-1 (16 px); predicted change: rows 0-3 (32 px)
    np.testing.assert_allclose(cfm.changed_region_dice(x, y, oracle), [2 * 16 / (32 + 16), 1.0])
    assert cfm.ssim(x, x).tolist() == [1.0, 1.0]


def test_quality_rows_hand_made():
    n = 4
    x = np.full((n, 8, 8), 100, np.uint8)
    parents = pd.DataFrame(dict(sex=[0, 1, 0, 1], scanner=[0, 0, 1, 1], effusion=[0, 1, 0, 1]))
    cf = np.repeat(x[:, None], 3, 1)
    # predictor: scanner always flipped correctly, effusion right on the first two images only
    pa = parents.to_numpy()
    probs = []
    for name in INTERVENTIONS:
        p = pa.astype(float).copy()
        if name in ("scanner", "both"):
            p[:, 1] = 1 - p[:, 1]
        if name in ("effusion", "both"):
            p[:2, 2] = 1 - p[:2, 2]
        probs.append(p)
    rows = cfm.quality_rows(x, parents, cf, probs, None, None, cf, "m")
    df = pd.DataFrame(rows).set_index("intervention")
    assert df["effectiveness"].tolist() == [1.0, 0.5, 0.5]
    assert df["preservation"].tolist() == [1.0, 1.0, 1.0]
    assert df["composition_mae"].tolist() == [0.0] * 3 and df["oracle_mae"].tolist() == [0.0] * 3
    assert df["changed_dice"].tolist() == [1.0] * 3


def test_classifier_metrics_and_training(synthetic):
    parents = pd.DataFrame(dict(sex=[0, 1, 0, 1], scanner=[1, 1, 0, 0], effusion=[0, 0, 0, 1]))
    probs = np.array([[0.2, 0.9, 0.1], [0.7, 0.4, 0.6], [0.6, 0.3, 0.2], [0.9, 0.1, 0.8]])
    m = clf.classifier_metrics(probs, parents).set_index("parent")
    assert m.loc["sex", "accuracy"] == 0.75 and m.loc["sex", "roc_auc"] == 1.0
    assert m.loc["scanner", "accuracy"] == 0.75 and m.loc["scanner", "roc_auc"] == 1.0
    assert m.loc["effusion", "accuracy"] == 0.75 and m.loc["effusion", "roc_auc"] == 1.0
    prof = tiny_profile()
    path = clf.train_classifiers(prof, progress=False)
    stamp = path.stat().st_mtime_ns
    assert clf.train_classifiers(prof, progress=False) == path and path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="lr"):
        clf.train_classifiers(prof, progress=False, lr=0.1)
    table = clf.evaluate_classifiers(prof, "val", progress=False)
    assert table["parent"].tolist() == ["sex", "scanner", "effusion"] and table["n"].tolist() == [8] * 3
    assert clf.predict_parents(clf.load_classifiers(prof), synthetic["val"].images).shape == (8, 3)


def test_evaluate_table(synthetic):
    table = cfm.evaluate(tiny_profile(), "test", progress=False)
    assert table[["method", "intervention"]].values.tolist() == [[m, k] for m in ("hvae", "identity") for k in INTERVENTIONS]
    assert (table["composition_mae"] == 0).all()  # the null intervention is exact
    ident = table[table["method"] == "identity"]
    assert (ident["reversibility_mae"] == 0).all()
    assert {"effectiveness", "oracle_mae", "oracle_psnr", "oracle_ssim", "changed_dice"} <= set(table.columns)
    assert table[["effectiveness", "preservation", "changed_dice"]].stack().between(0, 1).all()
