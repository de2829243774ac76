"""Fine-tuning on the phantom's annotated split: folds are saved, reused and redone when the
configuration changes; metrics tables have one row per test image."""
from __future__ import annotations

import numpy as np
import pytest

from cfcl import finetune as ft
from cfcl.config import get_profile


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    return tmp_path


def tiny(**over):
    base = {"finetune.folds": 2, "finetune.epochs": 1, "finetune.batch_size": 16,
            "data.n_test": 4, "data.n_annotated_healthy": 4, "data.n_annotated_effusion": 6}
    base.update(over)
    return get_profile("smoke", **base)


def test_folds_saved_reused_and_redone(dirs):
    prof = tiny()
    table = ft.finetune(prof, "none", progress=False)
    assert len(table) == 10 and sorted(table["index"]) == list(range(10))
    assert set(table["fold"]) == {0, 1}
    assert table["dsc"].between(0, 1).all() and np.isfinite(table[["hd95", "asd"]].to_numpy()).all()
    files = sorted((dirs / "runs" / "smoke" / "finetune" / "none").glob("fold*.npz"))
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    ft.finetune(prof, "none", progress=False)  # finished: read back, no work
    assert [f.stat().st_mtime_ns for f in files] == stamps
    fold = ft.load_fold(prof, "none", 0)
    assert fold["test_pred"].shape == (4, 64, 64) and fold["test_cf_pred"].shape == (4, 3, 64, 64)
    ft.finetune(tiny(**{"finetune.lr": 1e-3}), "none", progress=False)  # other config: redone
    assert [f.stat().st_mtime_ns for f in files] != stamps


def test_unknown_method_is_refused():
    with pytest.raises(KeyError, match="unknown method"):
        ft.finetune(get_profile("smoke"), "bogus")
