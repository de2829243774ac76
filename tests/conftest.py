"""Shared fixtures: every test writes under its own tmp folder; stage tests run on a tiny phantom.

``dirs`` points the runs and figures folders of a test to its tmp folder and the data cache to one
folder per test session (the phantom's splits are cheap but not free). ``tiny`` makes profiles of
a 32 px phantom with a few dozen images, a two-level HVAE and two folds, and makes their data, so
a stage test exercises the real data path (the phantom behind ``cfcl.data``) in seconds, with no
monkeypatching of any module.
"""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from cfcl.config import Profile, get_profile
from cfcl.data import make_data

TINY = {
    "data.image_size": 32, "data.n_pretrain": 24, "data.n_val": 8, "data.n_test": 8,
    "data.n_annotated_healthy": 4, "data.n_annotated_effusion": 6,
    "hvae.widths": [8, 8], "hvae.z_dims": [2, 2], "hvae.epochs": 2, "hvae.batch_size": 8,
    "hvae.cf_batch_size": 8, "hvae.classifier_epochs": 1,
    "pretrain.steps": 2, "pretrain.batch_size": 2, "pretrain.pixels_per_view": 16, "pretrain.embed_dim": 8,
    "pretrain.checkpoint_every": 1, "pretrain.warmup_steps": 1,
    "finetune.folds": 2, "finetune.epochs": 1, "finetune.batch_size": 8, "finetune.seeds": 1,
    "latent.n_images": 4, "latent.pixels_per_image": 50, "latent.umap_neighbors": 5,
}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Any:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def dirs(tmp_path, monkeypatch, data_cache):
    """Runs and figures under the test's tmp folder; the data cache shared by the session."""
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CFCL_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("CFCL_CACHE", str(data_cache))
    return tmp_path


@pytest.fixture
def tiny(dirs) -> Callable[..., Profile]:
    """``tiny(**overrides)``: a tiny phantom profile (see :data:`TINY`) with its data made."""
    def make(overrides: dict[str, Any] | None = None, variant: str = "", **dotted: Any) -> Profile:
        prof = get_profile("smoke", {**TINY, **(overrides or {}), **dotted}, variant)
        make_data(prof)
        return prof

    return make


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
