"""Fine-tuning on the tiny phantom: folds are saved, reused, tied to their checkpoint; a missing or
damaged checkpoint is an error naming it; metrics tables have one row per test image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfcl import finetune as ft
from cfcl import pretrain as pt
from cfcl.config import get_profile
from cfcl.runs import ArtifactError, MissingRunError


def test_folds_saved_reused_and_other_settings_are_another_run(tiny):
    prof = tiny()
    table = ft.finetune(prof, "none", progress=False)
    assert len(table) == 10 and sorted(table["index"]) == list(range(10))
    assert set(table["fold"]) == {0, 1}
    assert table["dsc"].between(0, 1).all() and np.isfinite(table[["hd95", "asd"]].to_numpy()).all()
    run = ft.finetune_run(prof, "none")
    files = [run.path(f"fold{k}.npz") for k in range(2)]
    stamps = [f.stat().st_mtime_ns for f in files]
    ft.finetune(prof, "none", progress=False)  # finished: verified and read back, no work
    assert [f.stat().st_mtime_ns for f in files] == stamps
    fold = ft.load_fold(prof, "none", 0)
    assert fold["test_pred"].shape == (8, 32, 32) and fold["test_cf_pred"].shape == (8, 3, 32, 32)
    assert ft.finetune_run(tiny({"finetune.lr": 1e-3}), "none").key != run.key
    assert ft.finetune_run(tiny({"pretrain.lr": 1e-2}), "none").key == run.key  # None reads no pre-training


def test_fine_tuning_seeds_are_replicates_kept_per_image_and_averaged(tiny):
    from cfcl import metrics, results

    one, two = tiny(), tiny({"finetune.seeds": 2})
    table = ft.finetune(two, "none", progress=False)
    assert len(table) == 20 and sorted(set(table["seed"])) == [0, 1]
    for _, t in table.groupby("seed"):
        assert sorted(t["index"]) == list(range(10))
    r0, r1 = ft.finetune_runs(two, "none")
    assert sorted(r0.manifest()["artifacts"]) == ["fold0.npz", "fold1.npz"]
    assert sorted(r1.manifest()["artifacts"]) == ["fold0-seed1.npz", "fold1-seed1.npz"]
    # replicate 0 is the run of seeds=1 (same key, same folder: asking for more seeds reuses it); replicate 1
    # is its own run and starts from another seed
    assert ft.finetune_run(one, "none").folder == r0.folder != r1.folder and ft.finetune_run(one, "none").is_finished()
    assert ft.finetune_run(tiny({"finetune.seeds": 3}), "none", 1).key == r1.key
    with pytest.raises(ValueError, match="finetune.seeds=1"):
        ft.finetune_run(one, "none", 1)
    np.testing.assert_array_equal(ft.load_fold(two, "none", 1, 0)["test_pred"], ft.load_fold(one, "none", 1)["test_pred"])
    ann = ft.load_split(one, "annotated")
    nets = [ft.train_fold(one, "none", ann.images[:8], ann.gold[:8], None, 0, False, r) for r in (0, 1)]
    assert not all(torch.equal(a, b) for a, b in zip(nets[0].state_dict().values(), nets[1].state_dict().values()))
    # the test split's per-image value is the mean over the four fold models
    test = ft.load_split(two, "test")
    eff = test.parents["effusion"].to_numpy()
    dsc = np.mean([metrics.segmentation_table(ft.load_fold(two, "none", k, r)["test_pred"], np.asarray(test.gold),
                                              eff)["dsc"].to_numpy() for r in (0, 1) for k in (0, 1)], axis=0)
    np.testing.assert_allclose(results.test_per_image(two, "none")["dsc"].to_numpy(), dsc)
    # Table 2's fold means are over both seeds, its std over the two folds
    s = metrics.summarise_folds(table)
    fold_means = table.groupby("fold")["dsc"].mean() * 100
    assert s["n_folds"].item() == 2 and np.isclose(s["DSC_mean"].item(), fold_means.mean())
    assert np.isclose(s["DSC_std"].item(), fold_means.std(ddof=1))
    cv = results._cv_per_image(two, "none")
    assert len(cv) == 10 and np.allclose(cv["dsc"], table.groupby("index")["dsc"].mean().to_numpy())


def test_finetuning_never_pretrains_and_checks_the_checkpoint(tiny):
    prof = tiny({"pretrain.cf_source": "oracle"})
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.pretrain --profile smoke .* --method vader"):
        ft.finetune(prof, "vader", progress=False)
    pre = pt.pretrain(prof, "vader", progress=False)
    with open(pre.path("model.pt"), "r+b") as f:  # 4 kB of garbage over the checkpoint
        f.seek(100)
        f.write(np.random.default_rng(0).bytes(4096))
    with pytest.raises(ArtifactError, match="model.pt"):
        ft.finetune(prof, "vader", progress=False)


def test_folds_are_tied_to_the_checkpoint_they_started_from(tiny, capsys):
    prof = tiny({"pretrain.cf_source": "oracle"})
    pre = pt.pretrain(prof, "vader", progress=False)
    ft.finetune(prof, "vader", progress=False)
    run = ft.finetune_run(prof, "vader")
    origin = run.manifest()["origin_sha256"]
    assert origin == pre.manifest()["artifacts"]["model.pt"]["sha256"]
    # the pre-training run is remade (same settings, new weights): the folds are stale
    import shutil

    shutil.rmtree(pre.folder)
    pt.pretrain(tiny({"pretrain.cf_source": "oracle", "pretrain.steps": 1}), "vader", progress=False)
    fake = pt.pretrain_run(prof, "vader")
    other = pt.pretrain_run(tiny({"pretrain.cf_source": "oracle", "pretrain.steps": 1}), "vader")
    shutil.copytree(other.folder, fake.folder)
    import json

    meta = json.loads(fake.manifest_path.read_text())
    meta["key"], meta["settings"] = fake.key, fake.settings  # a consistent manifest, other weights
    fake.manifest_path.write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match="stale"):
        ft.load_fold(prof, "vader", 0)


def test_unknown_method_is_refused():
    with pytest.raises(KeyError, match="unknown method"):
        ft.finetune(get_profile("smoke"), "bogus")


def test_low_label_regime_fine_tunes_each_fold_on_the_asked_images_the_same_for_every_method():
    from cfcl.config import SettingError

    eff = np.array([0] * 20 + [1] * 50)
    fold_of = ft.folds(eff, 5, 0)
    full = get_profile("cpu")
    for k in range(5):  # the default: every image outside the test fold
        np.testing.assert_array_equal(ft.training_images(eff, fold_of, k, full), np.flatnonzero(fold_of != k))
    low = get_profile("cpu", ["finetune.train_healthy=3", "finetune.train_effusion=7"])
    picks = [ft.training_images(eff, fold_of, k, low) for k in range(5)]
    for k, idx in enumerate(picks):
        assert len(idx) == 10 and len(set(idx)) == 10 and (fold_of[idx] != k).all()
        assert np.bincount(eff[idx], minlength=2).tolist() == [3, 7]
        np.testing.assert_array_equal(idx, ft.training_images(eff, fold_of, k, low))  # a fixed draw per fold
    assert not all(np.array_equal(picks[0], p) for p in picks[1:])
    # only the effusion images subsampled: every healthy training image stays
    half = ft.training_images(eff, fold_of, 0, get_profile("cpu", ["finetune.train_effusion=7"]))
    assert (eff[half] == 0).sum() == 16 and (eff[half] == 1).sum() == 7
    with pytest.raises(SettingError, match="finetune.train_healthy: fold 0 has 16"):
        ft.training_images(eff, fold_of, 0, get_profile("cpu", ["finetune.train_healthy=17"]))
    # a setting added later: out of the key at its neutral value, in it otherwise
    assert ft.finetune_run(full, "none").settings["finetune"].keys().isdisjoint(ft.ADDED_LATER)
    assert ft.finetune_run(low, "none").key != ft.finetune_run(full, "none").key


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_schedule_sets_the_learning_rate_of_every_step(schedule, monkeypatch):
    """constant: finetune.lr at every step; cosine: finetune.lr at the first step, then down the cosine to 0
    over the fold's steps (10 images, batches of 4 -> 3 steps an epoch, the last of two images kept)."""
    prof = get_profile("smoke", f"finetune.schedule={schedule} finetune.epochs=2 finetune.batch_size=4 finetune.lr=0.01")
    seen = []
    monkeypatch.setattr(ft, "train_step", lambda model, opt, x, y: seen.append(opt.param_groups[0]["lr"]))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (10, 32, 32), dtype=np.uint8)
    ft.train_fold(prof, "none", images, np.zeros_like(images), None, 0, progress=False)
    assert len(seen) == 6
    want = [0.01] * 6 if schedule == "constant" else [0.01 * (1 + np.cos(np.pi * t / 6)) / 2 for t in range(6)]
    assert seen == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_the_constant_schedule_never_enters_a_key():
    cpu = get_profile("cpu")
    assert ft.finetune_run(cpu, "none").key == ft.finetune_run(get_profile("cpu", "finetune.schedule=constant"), "none").key
    assert ft.finetune_run(cpu, "none").key != ft.finetune_run(get_profile("cpu", "finetune.schedule=cosine"), "none").key
