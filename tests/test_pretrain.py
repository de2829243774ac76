"""The pre-training loop: every method runs, resume is exact, configuration changes are refused,
and two gloo processes give the loss of one process on the same global batch."""
from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cfcl import pretrain as pt
from cfcl.config import METHODS, get_profile
from cfcl.data import ChestSplit

SIZE = 64


def synthetic_split(n: int = 6, seed: int = 0) -> tuple[ChestSplit, np.ndarray]:
    """Blobs with two 'lungs' and three perturbed copies standing in for counterfactuals."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    images, silver = [], []
    for _ in range(n):
        lab = np.zeros((SIZE, SIZE), np.uint8)
        cx = rng.integers(18, 24)
        lab[(abs(xx - cx) < 8) & (abs(yy - 32) < 16)] = 1
        lab[(abs(xx - (SIZE - cx)) < 8) & (abs(yy - 32) < 16)] = 2
        img = 160 - 90 * (lab > 0) + rng.normal(0, 10, (SIZE, SIZE))
        images.append(np.clip(img, 0, 255).astype(np.uint8))
        silver.append(lab)
    images, silver = np.stack(images), np.stack(silver)
    cf = np.stack([np.clip(images.astype(int) + d, 0, 255).astype(np.uint8) for d in (-20, 15, 30)], axis=1)
    parents = pd.DataFrame({"sex": np.zeros(n, int), "scanner": np.zeros(n, int), "effusion": np.zeros(n, int)})
    return ChestSplit("pretrain", images, parents, silver), cf


def small_profile(**over):
    base = {"pretrain.steps": 4, "pretrain.batch_size": 2, "pretrain.pixels_per_view": 32,
            "pretrain.embed_dim": 8, "pretrain.checkpoint_every": 2, "pretrain.warmup_steps": 1,
            "pretrain.cf_source": "oracle"}
    base.update(over)
    return get_profile("smoke", **base)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _data(prof, method):
    split, cf = synthetic_split()
    return pt.PretrainData(prof, method, split=split, cf=cf)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_logs(method, runs):
    prof = small_profile(**{"pretrain.steps": 2})
    path = pt.pretrain(prof, method, progress=False, data=_data(prof, method))
    ck = pt.load_checkpoint(path)  # weights_only=True
    assert ck["step"] == 2
    losses = pt.read_losses(prof, method)
    assert list(losses["step"]) == [1, 2]
    assert np.isfinite(losses["loss"]).all()


def test_prepare_tracks_points_into_every_view():
    prof = small_profile()
    split, cf = synthetic_split()
    spec = pt.METHODS["mvd_cl"]
    data = pt.PretrainData(prof, "mvd_cl", split=split, cf=cf)
    prep = pt.prepare(data.batch(np.arange(2), spec), spec, prof, pt.step_generator(0, 0))
    assert prep["views"].shape == (2, 4, 1, SIZE, SIZE)
    assert prep["pts"].shape == (2, 1, 32, 2)
    # the silver label of a tracked point, read in each view of the warped label map, is the
    # label of the original point (nearest warping; points are pixel centres)
    from cfcl import views

    lab = prep["silver"][:, None].float()
    for v in range(4):
        warped = views.warp(lab, prep["M"][:, v], mode="nearest")[:, 0]
        pv = views.apply(prep["M"][:, v], prep["pts"][:, 0])
        got = views.labels_at(warped.long(), pv)
        agree = (got == prep["labels"][:, 0]).float().mean()
        assert agree > 0.9  # points on label boundaries may round either way


def test_resume_gives_the_same_weights(runs, tmp_path, monkeypatch):
    prof = small_profile()
    full = pt.pretrain(prof, "s_dvd_cl", progress=False, data=_data(prof, "s_dvd_cl"))
    w_full = pt.load_checkpoint(full)["model"]
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs2"))
    first = pt.pretrain(prof, "s_dvd_cl", progress=False, stop_after=2, data=_data(prof, "s_dvd_cl"))
    assert not first.exists() and (first.parent / "last.pt").exists()
    resumed = pt.pretrain(prof, "s_dvd_cl", progress=False, data=_data(prof, "s_dvd_cl"))
    w_res = pt.load_checkpoint(resumed)["model"]
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    assert len(pt.read_losses(prof, "s_dvd_cl")) == 4


def test_checkpoint_of_another_configuration_is_refused(runs):
    prof = small_profile()
    pt.pretrain(prof, "vader", progress=False, stop_after=2, data=_data(prof, "vader"))
    other = small_profile(**{"pretrain.lr": 0.5})
    with pytest.raises(ValueError, match="pretrain.lr"):
        pt.pretrain(other, "vader", progress=False, data=_data(other, "vader"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, runs: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CFCL_RUNS=runs)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        prof = small_profile(**{"pretrain.steps": 2, "pretrain.batch_size": 4})
        path = pt.pretrain(prof, "dvd_cl", progress=False, freeze_bn=True, device="cpu",
                           data=_data(prof, "dvd_cl"))
        if rank == 0:
            ck = pt.load_checkpoint(path)
            losses = pt.read_losses(prof, "dvd_cl")["loss"].to_numpy()
            torch.save({"model": ck["model"], "losses": torch.tensor(losses)}, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(runs, tmp_path):
    prof = small_profile(**{"pretrain.steps": 2, "pretrain.batch_size": 4})
    single = pt.pretrain(prof, "dvd_cl", progress=False, freeze_bn=True, device="cpu", data=_data(prof, "dvd_cl"))
    ref = pt.load_checkpoint(single)["model"]
    ref_losses = pt.read_losses(prof, "dvd_cl")["loss"].to_numpy()
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp_runs"), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    np.testing.assert_allclose(got["losses"].numpy(), ref_losses, rtol=1e-5, atol=1e-6)
    # Adam divides by sqrt(v): where a gradient is ~0, float summation order (one process vs an
    # all-reduce over two) can flip the sign of the first update (2 * lr apart). Nearly every
    # weight must agree closely, and none may differ by more than that.
    lr = prof.pretrain.lr
    close, total = 0, 0
    for k, v in ref.items():
        if v.is_floating_point():
            d = (got["model"][k] - v).abs()
            assert d.max() <= 2.5 * lr * prof.pretrain.steps, k
            close += int((d <= 1e-5 + 1e-4 * v.abs()).sum())
            total += v.numel()
    assert close / total > 0.999, close / total


def test_batch_indices_cover_an_epoch_without_repeats():
    seen = np.concatenate([pt.batch_indices(10, 2, s, seed=3) for s in range(5)])
    assert sorted(seen) == list(range(10))
    assert not np.array_equal(pt.batch_indices(10, 2, 0, 3), pt.batch_indices(10, 2, 5, 3))
