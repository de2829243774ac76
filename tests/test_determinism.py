"""Reproducible bytes: a run remade with the same settings writes the same artifacts, so its digests (and the
``origin`` its consumers record) do not change, and a data cache regenerated identically leaves its
downstream runs valid; a fold file damaged while a fine-tuning was interrupted is remade, not adopted."""
from __future__ import annotations

import hashlib
import shutil
import warnings

import numpy as np
import pytest

from cfcl import finetune as ft
from cfcl import pretrain as pt
from cfcl.config import get_profile
from cfcl.data import data_run, make_data

from conftest import TINY


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_same_pretraining_in_two_empty_runs_folders_writes_the_same_model_bytes(tiny, tmp_path, monkeypatch):
    prof = tiny({"pretrain.cf_source": "oracle"})
    digests = []
    for folder in ("a", "b"):
        monkeypatch.setenv("CFCL_RUNS", str(tmp_path / folder))
        run = pt.pretrain(prof, "vader", progress=False)
        assert run.folder.is_relative_to(tmp_path / folder)
        digests.append(_sha(run.path("model.pt")))
        assert run.manifest()["artifacts"]["model.pt"]["sha256"] == digests[-1]
    assert digests[0] == digests[1]


@pytest.mark.slow
def test_a_data_cache_deleted_and_regenerated_leaves_its_downstream_runs_valid(tmp_path, monkeypatch):
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    prof = get_profile("smoke", {**TINY, "pretrain.cf_source": "oracle"})
    make_data(prof, ("pretrain",))
    run = pt.pretrain(prof, "vader", progress=False)
    data = data_run(prof, "pretrain")
    before = data.manifest()["artifacts"]
    shutil.rmtree(data.folder)
    make_data(prof, ("pretrain",))
    assert {n: a["sha256"] for n, a in data.manifest()["artifacts"].items()} == {
        n: a["sha256"] for n, a in before.items()}
    pt.pretrain_run(prof, "vader").require()  # not stale
    assert pt.pretrain_run(prof, "vader").key == run.key


@pytest.mark.slow
def test_a_damaged_fold_of_an_interrupted_fine_tuning_is_remade_not_adopted(tiny):
    prof = tiny()
    ft.finetune(prof, "none", progress=False)
    run = ft.finetune_run(prof, "none")
    fold = run.path("fold0.npz")
    good = fold.read_bytes()
    run.manifest_path.unlink()  # as if interrupted after its folds were written
    data = bytearray(good)
    data[len(good) // 2] ^= 0xFF  # a damaged member (the 'origin' member still reads)
    fold.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"fold0\.npz is damaged .*fine-tuning fold 0 again"):
        ft.finetune(prof, "none", progress=False)
    assert run.is_finished() and fold.read_bytes() != bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = ft.load_fold(prof, "none", 0)  # verified against the new manifest, every member reads
    assert loaded["pred"].shape[1:] == (32, 32) and np.isin(loaded["pred"], [0, 1, 2]).all()
