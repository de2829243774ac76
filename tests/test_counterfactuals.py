"""Tests of counterfactual generation, its run, the source interface, quality metrics and the
parent predictors (cfcl.counterfactual.generate, .quality and .predictors): pure functions on tiny synthetic blobs
(16 px), runs on the tiny phantom of conftest.py."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cfcl.counterfactual.hvae as hv
import cfcl.counterfactual.predictors as clf
import cfcl.counterfactual.generate as cfgen
import cfcl.counterfactual.quality as cfq
from cfcl.config import INTERVENTIONS
from cfcl.counterfactual.hvae_train import load_hvae, train_hvae
from cfcl.counterfactual.parents import intervene, parents_tensor, to_model_space
from cfcl.data import ChestSplit, load_split
from cfcl.runs import ArtifactError, MissingRunError


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


ORIGINAL_COUNTERFACTUAL = cfgen.counterfactual


class Interrupted(Exception):
    """Stands for a kill / Ctrl-C in the middle of generation."""


class CallCounter:
    """Wraps cfgen.counterfactual; raises after ``fail_after`` calls (a simulated interruption)."""

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
    assert intervene(pa, "scanner").tolist() == [[0, 0, 0], [1, 1, 1]]
    assert intervene(pa, "effusion").tolist() == [[0, 1, 1], [1, 0, 0]]
    assert intervene(pa, "both").tolist() == [[0, 0, 1], [1, 1, 0]]
    assert torch.equal(intervene(pa, "none"), pa)
    frame = pd.DataFrame(dict(sex=[0, 1], scanner=[1, 0], effusion=[0, 1]))
    assert intervene(frame, "both")[["scanner", "effusion"]].values.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(KeyError, match="sex"):
        intervene(pa, "sex")


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_null_intervention_returns_x_exactly(alpha):
    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2).eval()
    split = synthetic_split("x", 6)
    pa = parents_tensor(split.parents)
    # the generation code path: uint8 in, uint8 out, batches of 4
    out = cfgen.counterfactual_images(model, split.images, pa, pa, batch_size=4, alpha=alpha)
    np.testing.assert_array_equal(out, split.images)
    x = to_model_space(split.images)
    assert (cfgen.counterfactual(model, x, pa, pa, alpha=alpha) - x).abs().max() < 1e-4
    # a real intervention changes the image (the prior/decoder see the parents)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    flipped = cfgen.counterfactual_images(model, split.images, pa, intervene(pa, "effusion"), alpha=alpha)
    assert (flipped != split.images).any()


def test_counterfactual_rejects_bad_shapes():
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        cfgen.counterfactual(model, torch.zeros(2, 16, 16), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="cf_pa"):
        cfgen.counterfactual(model, torch.zeros(2, 1, 16, 16), torch.zeros(2, 3), torch.zeros(1, 3))


def test_generate_is_a_run_resumable_and_keyed_by_the_hvae(tiny, monkeypatch):
    prof = tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 0})  # the ELBO-only HVAE draws them
    with pytest.raises(MissingRunError, match=r"cfcl\.counterfactual\.hvae_train"):
        cfgen.generate(prof, "pretrain", progress=False)  # never trains the HVAE behind the user's back
    train_hvae(prof, progress=False)
    full = np.array(cfgen.generate(prof, "pretrain", progress=False))
    assert full.shape == (24, 3, 32, 32) and full.dtype == np.uint8
    split = load_split(prof, "pretrain")
    np.testing.assert_array_equal(full[:8], cfgen.all_interventions(load_hvae(prof), split.images[:8],
                                                                  parents_tensor(split.parents)[:8]))
    run = cfgen.counterfactual_run(prof, "pretrain")
    assert run.is_finished() and not list(run.folder.glob("rows_*"))

    # made: nothing recomputed
    counter = CallCounter()
    monkeypatch.setattr(cfgen, "counterfactual", counter)
    np.testing.assert_array_equal(cfgen.generate(prof, "pretrain", progress=False), full)
    assert counter.calls == 0

    # interrupted after one batch (3 interventions), then resumed: only the other 2 batches run
    import shutil

    shutil.rmtree(run.folder)
    monkeypatch.setattr(cfgen, "counterfactual", CallCounter(fail_after=3))
    with pytest.raises(Interrupted):
        cfgen.generate(prof, "pretrain", progress=False)
    counter = CallCounter()
    monkeypatch.setattr(cfgen, "counterfactual", counter)
    np.testing.assert_array_equal(cfgen.generate(prof, "pretrain", progress=False), full)
    assert counter.calls == 2 * len(INTERVENTIONS)

    # another HVAE (one more epoch) is another upstream run: another counterfactual run
    more = tiny({"hvae.epochs": 2, "hvae.cf_finetune_steps": 0})
    assert cfgen.counterfactual_run(more, "pretrain").key != run.key


def test_counterfactual_run_is_keyed_by_the_fine_tuned_run(tiny):
    from cfcl.counterfactual.cf_finetune import cf_finetune_run, finetune_counterfactuals
    from cfcl.counterfactual.hvae_train import hvae_run

    prof = tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 2})
    run = cfgen.counterfactual_run(prof, "test")
    assert run.upstream["hvae"].key == cf_finetune_run(prof).key != hvae_run(prof).key
    elbo = cfgen.counterfactual_run(tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 0}), "test")
    assert elbo.upstream["hvae"].key == hvae_run(prof).key and elbo.key != run.key
    assert cfgen.counterfactual_run(tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 2, "hvae.cf_damping": 1.0}),
                                  "test").key != run.key
    # never fine-tunes (nor trains) behind the caller's back
    train_hvae(prof, progress=False)
    clf.train_classifiers(prof, progress=False)
    with pytest.raises(MissingRunError, match=r"cfcl\.counterfactual\.cf_finetune"):
        cfgen.generate(prof, "test", progress=False)
    finetune_counterfactuals(prof, progress=False)
    cf = np.asarray(cfgen.generate(prof, "test", progress=False))
    split = load_split(prof, "test")
    from cfcl.counterfactual.cf_finetune import load_counterfactual_model

    np.testing.assert_array_equal(cf, cfgen.all_interventions(load_counterfactual_model(prof), split.images,
                                                            parents_tensor(split.parents)))
    assert not np.array_equal(cf, cfgen.all_interventions(load_hvae(prof), split.images,
                                                        parents_tensor(split.parents)))


def _generate_in_process(overrides, cache, runs, out):
    import os

    os.environ.update(CFCL_CACHE=cache, CFCL_RUNS=runs)
    import numpy

    import cfcl.counterfactual.generate as c
    from cfcl.config import get_profile

    numpy.save(out, numpy.asarray(c.generate(get_profile("smoke", overrides), "pretrain", progress=False)))


@pytest.mark.slow
def test_two_processes_generating_at_once_both_get_the_result(tiny, dirs):
    import multiprocessing as mp
    import os

    prof = tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 0})
    train_hvae(prof, progress=False)
    ctx = mp.get_context("spawn")
    outs = [str(dirs / f"out{i}.npy") for i in range(2)]
    procs = [ctx.Process(target=_generate_in_process,
                         args=(list(prof.overrides), os.environ["CFCL_CACHE"], os.environ["CFCL_RUNS"], o))
             for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (np.load(o) for o in outs)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (24, 3, 32, 32)


def test_get_counterfactuals_sources(tiny):
    prof = tiny({"hvae.epochs": 1})
    data = load_split(prof, "pretrain")
    np.testing.assert_array_equal(cfgen.get_counterfactuals(prof, "pretrain", source="oracle"), data.counterfactuals)
    ident = cfgen.get_counterfactuals(prof, "pretrain", source="identity")
    assert ident.shape == (24, 3, 32, 32) and (ident == np.asarray(data.images)[:, None]).all()
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual "):
        cfgen.get_counterfactuals(prof, "pretrain")  # smoke default: hvae, not generated yet
    with pytest.raises(ValueError, match="pretrain.cf_source"):
        cfgen.get_counterfactuals(prof, "val", source="gan")


def test_metric_functions_hand_made():
    x = np.zeros((2, 8, 8), np.uint8)
    y = x.copy()
    y[0, :4] = 40  # half the pixels of image 0 off by 40
    np.testing.assert_allclose(cfq.mae(y, x), [20.0, 0.0])
    np.testing.assert_allclose(cfq.psnr(y, x), [10 * np.log10(255 ** 2 / 800), 100.0])
    oracle = x.copy()
    oracle[0, :2] = 100  # true change: rows 0-1 (16 px); predicted change: rows 0-3 (32 px)
    np.testing.assert_allclose(cfq.changed_region_dice(x, y, oracle), [2 * 16 / (32 + 16), 1.0])
    assert cfq.ssim(x, x).tolist() == [1.0, 1.0]


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
    p_x = pa.astype(float).copy()
    p_x[0, 0] = 1.0  # the sex head reads image 0 as M on x, F on every counterfactual: not kept
    rows = cfq.quality_rows(x, parents, cf, probs, None, None, cf, "m", p_x=p_x)
    df = pd.DataFrame(rows).set_index("intervention")
    assert df.index.tolist() == ["scanner", "effusion", "both", "effusion_add", "effusion_remove", "both_add",
                                 "both_remove"]
    assert df["effectiveness"].tolist() == [1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]
    assert df["n"].tolist() == [4, 4, 4, 2, 2, 2, 2]
    assert df["preservation"].tolist() == [1.0] * 7
    assert df["sex_kept"].tolist() == [0.75, 0.75, 0.75, 0.5, 1.0, 0.5, 1.0]
    assert (df["composition_mae"] == 0).all() and (df["oracle_mae"] == 0).all()
    assert (df["changed_dice"] == 1).all()
    # every sex reading of x is certain (0 or 1): the confident subset is the whole split
    assert (df["sex_confident"] == 1).all() and df["sex_kept_confident"].tolist() == df["sex_kept"].tolist()
    # image 1 read at 0.6 (unsure, left out), image 0 at exactly the confidence (kept in)
    p_x[0, 0], p_x[1, 0] = cfq.SEX_CONFIDENCE, 0.6
    df = pd.DataFrame(cfq.quality_rows(x, parents, cf, probs, None, None, cf, "m", p_x=p_x)).set_index("intervention")
    assert df["sex_kept"].tolist() == [0.75, 0.75, 0.75, 0.5, 1.0, 0.5, 1.0]
    assert df["sex_confident"].tolist() == [0.75, 0.75, 0.75, 1.0, 0.5, 1.0, 0.5]
    np.testing.assert_allclose(df["sex_kept_confident"], [2 / 3, 2 / 3, 2 / 3, 0.5, 1.0, 0.5, 1.0])
    # no confident image in the remove subset (images 1 and 3): NaN there, not 0
    p_x[3, 0] = 0.5
    df = pd.DataFrame(cfq.quality_rows(x, parents, cf, probs, None, None, cf, "m", p_x=p_x)).set_index("intervention")
    assert np.isnan(df.loc["effusion_remove", "sex_kept_confident"]) and df.loc["effusion_remove", "sex_confident"] == 0
    assert df.loc["effusion", "sex_kept_confident"] == 0.5 and df.loc["effusion_add", "sex_kept_confident"] == 0.5


def test_cell_batches_balance_every_cell():
    cells = np.array([0] * 50 + [1] * 3 + [2] * 30 + [3] * 5)
    batches = clf.cell_batches(cells, 10, 12, np.random.default_rng(0))
    assert len(batches) == 12 and all(len(b) == 10 for b in batches)
    counts = np.array([np.bincount(cells[b], minlength=4) for b in batches])
    assert counts.min() >= 2 and counts.max() <= 3 and counts.sum(0).tolist() == [30, 30, 30, 30]
    # the three images of cell 1 are used ten times each
    assert np.bincount(np.concatenate(batches)[cells[np.concatenate(batches)] == 1])[50:53].tolist() == [10] * 3


def test_augment_is_a_differentiable_warp():
    x = (torch.rand(3, 1, 16, 16) * 2 - 1).requires_grad_(True)
    y = clf.augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    z = clf.augment(x.detach(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(z, y.detach())


def test_gates():
    rows = []
    for k in INTERVENTIONS:
        rows += [dict(method="oracle", intervention=k, effectiveness=0.97, sex_kept=0.96),
                 dict(method="identity", intervention=k, effectiveness=0.05, oracle_mae=10.0),
                 dict(method="hvae", intervention=k, effectiveness=0.9, changed_dice=0.7, oracle_mae=6.0,
                      sex_kept=0.99, composition_mae=0.0, reversibility_mae=2.0)]
    q = pd.DataFrame(rows)
    g = cfq.gates(q)
    assert (g[g["gate"] == "stick"]["passed"]).all() and len(g[g["gate"] == "stick"]) == 9
    h = g[g["gate"] == "hvae"].set_index(["intervention", "metric"])
    assert h.loc[("scanner", "effectiveness"), "passed"] == False  # noqa: E712  (0.9 < 0.95)
    assert h.loc[("effusion", "effectiveness"), "passed"] == True  # noqa: E712
    assert h.loc[("effusion", "oracle_mae"), "passed"] == True and "x 10.000" in h.loc[("effusion", "oracle_mae"), "target"]  # noqa: E712
    # a stick that fails: no effectiveness claimed, the oracle-based gates still are
    q.loc[(q["method"] == "identity") & (q["intervention"] == "effusion"), "effectiveness"] = 0.3
    g = cfq.gates(q)
    h = g[g["gate"] == "hvae"].set_index(["intervention", "metric"])
    assert not g[g["gate"] == "stick"]["passed"].all()
    assert h.loc[("effusion", "effectiveness"), "passed"] is None and "not claimed" in h.loc[("effusion", "effectiveness"), "note"]
    assert h.loc[("effusion", "changed_dice"), "passed"] == True  # noqa: E712
    assert h.loc[("effusion", "sex_kept"), "passed"] == True  # noqa: E712  (its own gates still pass)
    assert "effectiveness: FAILS identity effusion 0.300" in cfq.stick_verdict(g)
    assert "sex_kept: passes" in cfq.stick_verdict(g)
    # the exact counterfactuals flip the sex reading: sex_kept is not claimed, effectiveness is again
    q.loc[(q["method"] == "identity") & (q["intervention"] == "effusion"), "effectiveness"] = 0.05
    q.loc[(q["method"] == "oracle") & (q["intervention"] == "both"), "sex_kept"] = 0.9
    g = cfq.gates(q)
    h = g[g["gate"] == "hvae"].set_index(["intervention", "metric"])
    assert h.loc[("scanner", "sex_kept"), "passed"] is None and "sex_kept gates" in h.loc[("scanner", "sex_kept"), "note"]
    assert h.loc[("effusion", "effectiveness"), "passed"] == True  # noqa: E712
    assert "sex_kept: FAILS oracle both 0.900" in cfq.stick_verdict(g)
    # a table without the sex readings cannot license sex_kept
    g = cfq.gates(q.drop(columns="sex_kept").assign(sex_kept=[np.nan if m == "oracle" else 0.99 for m in q["method"]]))
    assert g.set_index(["gate", "intervention", "metric"]).loc[("hvae", "effusion", "sex_kept"), "passed"] is None
    # no exact counterfactuals (real data): identity's gates pass, but nothing is licensed by half a stick
    g = cfq.gates(q[q["method"] != "oracle"])
    h = g[g["gate"] == "hvae"].set_index(["intervention", "metric"])
    assert (g[g["gate"] == "stick"]["method"] == "identity").all() and g[g["gate"] == "stick"]["passed"].all()
    assert h.loc[("effusion", "effectiveness"), "passed"] is None and "cannot be checked" in h.loc[("effusion", "effectiveness"), "note"]
    assert h.loc[("effusion", "sex_kept"), "passed"] is None
    assert "effectiveness: cannot be checked (3 of its gates have inputs)" in cfq.stick_verdict(g)


def test_gates_sex_kept_on_confident_images():
    """The stick fails sex_kept on every image but passes it on the confidently read ones: the HVAE's
    sex_kept_confident is then decided (here: passed for scanner, failed for effusion), sex_kept is not."""
    rows = []
    for k in INTERVENTIONS:
        rows += [dict(method="oracle", intervention=k, effectiveness=0.97, sex_kept=0.90, sex_kept_confident=0.97),
                 dict(method="identity", intervention=k, effectiveness=0.05, oracle_mae=10.0),
                 dict(method="hvae", intervention=k, effectiveness=0.96, sex_kept=0.9,
                      sex_kept_confident=0.99 if k == "scanner" else 0.93)]
    g = cfq.gates(pd.DataFrame(rows))
    s = g[g["gate"] == "stick"].set_index(["intervention", "metric"])
    assert len(s) == 12 and not s.loc[("effusion", "sex_kept"), "passed"] and s.loc[("effusion", "sex_kept_confident"), "passed"]
    h = g[g["gate"] == "hvae"].set_index(["intervention", "metric"])
    assert h.loc[("effusion", "sex_kept"), "passed"] is None
    assert h.loc[("scanner", "sex_kept_confident"), "passed"] == True  # noqa: E712
    assert h.loc[("effusion", "sex_kept_confident"), "passed"] == False  # noqa: E712
    verdict = cfq.stick_verdict(g)
    assert "sex_kept: FAILS oracle scanner 0.900" in verdict and "sex_kept_confident: passes its gates" in verdict
    # an older table, without the column: its gates are left out, nothing is claimed on it
    g = cfq.gates(pd.DataFrame(rows).drop(columns="sex_kept_confident"))
    assert "sex_kept_confident" not in set(g["metric"])


def test_classifier_metrics_and_training(tiny):
    from cfcl.counterfactual.cf_finetune import cf_finetune_run
    from cfcl.counterfactual.hvae_train import hvae_run

    parents = pd.DataFrame(dict(sex=[0, 1, 0, 1], scanner=[1, 1, 0, 0], effusion=[0, 0, 0, 1]))
    probs = np.array([[0.2, 0.9, 0.1], [0.7, 0.4, 0.6], [0.6, 0.3, 0.2], [0.9, 0.1, 0.8]])
    m = clf.classifier_metrics(probs, parents).set_index("parent")
    assert m.loc["sex", "accuracy"] == 0.75 and m.loc["sex", "roc_auc"] == 1.0
    assert m.loc["scanner", "accuracy"] == 0.75 and m.loc["scanner", "roc_auc"] == 1.0
    assert m.loc["effusion", "accuracy"] == 0.75 and m.loc["effusion", "roc_auc"] == 1.0
    prof = tiny()
    run = clf.train_classifiers(prof, progress=False)
    stamp = run.path("classifiers.pt").stat().st_mtime_ns
    assert clf.train_classifiers(prof, progress=False).folder == run.folder
    assert run.path("classifiers.pt").stat().st_mtime_ns == stamp
    assert clf.classifier_run(prof, lr=0.1).key != run.key
    assert clf.classifier_run(tiny({"hvae.classifier_augment": "geometry"})).key != run.key
    table = clf.evaluate_classifiers(prof, "val", progress=False)
    assert table["parent"].tolist() == ["sex", "scanner", "effusion"] and table["n"].tolist() == [8] * 3
    assert clf.predict_parents(clf.load_classifiers(prof), load_split(prof, "val").images).shape == (8, 3)
    # the judge: its own run, trained on the factual images and their exact counterfactuals
    judge = clf.train_classifiers(prof, progress=False, role="judge")
    assert judge.folder != run.folder and judge.folder.name.startswith("judge-")
    assert clf.classifier_run(prof).key == run.key  # the teacher's key did not move
    for change in ({"hvae.judge_width": 8}, {"hvae.judge_epochs": 2}):
        assert clf.classifier_run(tiny(change), "judge").key != judge.key, change  # the judge's own settings
        assert clf.classifier_run(tiny(change)).key == run.key, change  # never the teacher's
        assert hvae_run(tiny(change)).key == hvae_run(prof).key, change  # nor the HVAE's
        assert cf_finetune_run(tiny(change)).key == cf_finetune_run(prof).key, change
    assert clf.load_classifiers(prof, "judge").config["width"] == prof.hvae.judge_width
    wide = tiny({"hvae.classifier_width": 8})
    assert clf.classifier_run(wide).key != run.key and clf.classifier_run(wide, "judge").key == judge.key
    assert clf.classifier_run(wide).settings["width"] == 8 and hvae_run(wide).key == hvae_run(prof).key
    assert cf_finetune_run(wide).key != cf_finetune_run(prof).key  # the teacher taught it
    pool, parents = clf._training_pool(load_split(prof, "pretrain"), "judge")
    train = load_split(prof, "pretrain")
    assert len(pool) == 4 * len(train) and np.array_equal(pool[len(train):2 * len(train)], train.counterfactuals[:, 0])
    assert (parents["scanner"].to_numpy()[len(train):2 * len(train)] == 1 - train.parents["scanner"].to_numpy()).all()
    assert len(clf._training_pool(train, "teacher")[0]) == len(train)
    assert not all(torch.equal(a, b) for a, b in zip(clf.load_classifiers(prof).state_dict().values(),
                                                      clf.load_classifiers(prof, "judge").state_dict().values()))
    with pytest.raises(ValueError, match="unknown predictor role"):
        clf.classifier_run(prof, "referee")
    report = clf.predictor_report(prof)
    assert report[["predictor", "split", "images"]].drop_duplicates().values.tolist() == [
        [r, s, i] for r in ("teacher", "judge") for s in ("val", "test")
        for i in ("factual", "do(scanner)", "do(effusion)", "do(both)")]


def test_evaluate_table(tiny):
    from cfcl.counterfactual.cf_finetune import elbo_only, finetune_counterfactuals

    prof = tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 2})
    train_hvae(prof, progress=False)
    clf.train_classifiers(prof, progress=False)
    finetune_counterfactuals(prof, progress=False)
    with pytest.raises(MissingRunError, match="--role judge"):  # the judge is trained by its own call
        cfq.evaluate(prof, "test", progress=False)
    clf.train_classifiers(prof, progress=False, role="judge")
    table = cfq.evaluate(prof, "test", progress=False)
    names = list(INTERVENTIONS) + ["effusion_add", "effusion_remove", "both_add", "both_remove"]
    assert table[["method", "intervention"]].values.tolist() == [
        [m, k] for m in ("hvae", "hvae_elbo", "identity", "oracle") for k in names]
    assert (table["composition_mae"] == 0).all()  # the null intervention is exact, before and after
    assert (table[~table["method"].str.startswith("hvae")]["reversibility_mae"] == 0).all()
    oracle = table[table["method"] == "oracle"]
    assert (oracle["oracle_mae"] == 0).all() and (oracle["changed_dice"] == 1).all()
    assert {"effectiveness", "effectiveness_teacher", "sex_kept", "oracle_mae", "oracle_psnr", "oracle_ssim",
            "changed_dice"} <= set(table.columns)
    assert table[["effectiveness", "preservation", "sex_kept", "changed_dice"]].stack().between(0, 1).all()
    split = table[table["intervention"].isin(["effusion_add", "effusion_remove"])].groupby("method")["n"].sum()
    assert (split == 8).all()  # the two directions cover the split
    assert set(cfq.gates(table)["gate"]) == {"stick", "hvae"}

    # Made once: a second call (a variant that shares the HVAE and the predictors) reads the same table back,
    # verified; a damaged table is an error naming the file, not a quiet re-scoring.
    run = cfq.quality_run(prof, "test")
    made = run.manifest()["finished_at"], run.path(cfq.QUALITY_NAME).stat().st_mtime_ns
    pd.testing.assert_frame_equal(cfq.evaluate(prof, "test", progress=False), table)
    assert (run.manifest()["finished_at"], run.path(cfq.QUALITY_NAME).stat().st_mtime_ns) == made
    assert cfq.quality_run(prof, "test", alpha=0.5, before=False).key != run.key
    assert cfq.quality_run(elbo_only(prof), "test").key != run.key
    variant = tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 2, "pretrain.cf_source": "oracle", "finetune.seeds": 2})
    assert cfq.quality_run(variant, "test").key == run.key
    path = run.path(cfq.QUALITY_NAME)
    path.write_text(path.read_text().replace("hvae", "hvaX", 1))
    with pytest.raises(ArtifactError, match=str(path)):
        cfq.evaluate(prof, "test", progress=False)
