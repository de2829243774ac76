"""Tests of the counterfactual HVAE (cfcl.hvae) on tiny synthetic data (16 px)."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

import cfcl.hvae as hv
from cfcl.config import get_profile
from cfcl.data import ChestSplit


def synthetic_split(name: str, n: int, size: int = 16, seed: int = 0) -> ChestSplit:
    """Blobs whose brightness depends on the scanner and a bright lower band on effusion,
    with exact (oracle) counterfactuals rendered from the same noise."""
    rng = np.random.default_rng(seed)
    pa = pd.DataFrame(dict(sex=rng.integers(0, 2, n), scanner=rng.integers(0, 2, n),
                           effusion=(rng.random(n) < 0.25).astype(int)))
    yy, xx = np.mgrid[:size, :size] / size
    noise = rng.normal(0, 6, (n, size, size))
    cx = rng.uniform(0.35, 0.65, n)[:, None, None]

    def render(s, c, e):
        blob = np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) / (0.05 + 0.02 * s[:, None, None]))
        img = 40 + 120 * blob * (1 + 0.5 * c[:, None, None]) + 90 * e[:, None, None] * (yy > 0.7) + noise
        return np.clip(np.round(img), 0, 255).astype(np.uint8)

    s, c, e = (pa[k].to_numpy() for k in ("sex", "scanner", "effusion"))
    cfs = np.stack([render(s, 1 - c, e), render(s, c, 1 - e), render(s, 1 - c, 1 - e)], 1)
    return ChestSplit(name=name, images=render(s, c, e), parents=pa, silver=np.zeros((n, size, size), np.uint8),
                      counterfactuals=cfs)


def tiny_profile(**over):
    base = {"data.image_size": 16, "data.n_pretrain": 24, "data.n_val": 8, "hvae.widths": [8, 8],
            "hvae.z_dims": [2, 2], "hvae.epochs": 2, "hvae.batch_size": 8, "hvae.cf_batch_size": 8,
            "hvae.classifier_epochs": 1}
    base.update(over)
    return get_profile("smoke", **base)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run far faster on one thread than on two contended ones."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Route load_split to synthetic splits and every output folder to tmp."""
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    splits = {"pretrain": synthetic_split("pretrain", 24, seed=1), "val": synthetic_split("val", 8, seed=2),
              "test": synthetic_split("test", 8, seed=3)}
    monkeypatch.setattr(hv, "load_split", lambda profile, split: splits[split])
    return splits


# ---------------------------------------------------------------------------------------------
def test_discretized_gaussian_matches_scipy():
    x = torch.tensor([-1.0, 3 / 127.5 - 1, 128 / 127.5 - 1, 1.0, 200 / 127.5 - 1]).view(1, 1, 1, 5)
    loc = torch.tensor([-0.9, -0.97, 0.0, 0.95, 0.5]).view(1, 1, 1, 5)
    scale = torch.tensor([0.05, 0.01, 0.3, 0.02, 0.2]).view(1, 1, 1, 5)
    got = hv.discretized_gaussian_nll(x, loc, scale.log()).flatten().double().numpy()
    ref = []
    for xi, li, si in zip(*(v.flatten().double().numpy() for v in (x, loc, scale))):
        lo, hi = (xi - 1 / 255 - li) / si, (xi + 1 / 255 - li) / si
        p = norm.cdf(hi) if xi < -0.99 else norm.sf(lo) if xi > 0.99 else norm.cdf(hi) - norm.cdf(lo)
        ref.append(-np.log(p))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_discretized_gaussian_far_tail_is_finite_and_large():
    x = torch.full((1, 1, 1, 1), 0.5)
    nll = hv.discretized_gaussian_nll(x, torch.full_like(x, -0.5), torch.full_like(x, np.log(0.01)))
    assert torch.isfinite(nll).all() and nll.item() > 1000


def test_conversions_round_trip():
    img = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    x = hv.to_model_space(img)
    assert x.shape == (1, 1, 16, 16) and x.min() == -1 and x.max() == 1
    np.testing.assert_array_equal(hv.to_uint8(x), img)
    with pytest.raises(TypeError, match="uint8"):
        hv.to_model_space(img.astype(np.float32))
    pa = hv.parents_tensor(pd.DataFrame(dict(sex=[0, 1], scanner=[1, 1], effusion=[0, 1])))
    assert pa.tolist() == [[0, 1, 0], [1, 1, 1]]
    with pytest.raises(KeyError, match="effusion"):
        hv.parents_tensor(pd.DataFrame(dict(sex=[0], scanner=[1])))


def test_resolutions():
    assert hv.resolutions(64, 4) == [64, 32, 16, 8]
    assert hv.resolutions(224, 7) == [224, 112, 56, 28, 14, 7, 4]


@pytest.mark.parametrize("stride", [1, 2])
def test_abduction_shapes(stride):
    torch.manual_seed(0)
    model = hv.HVAE(32, widths=[8, 12, 16], z_dims=[3, 2, 1], blocks_per_res=2, stem_stride=stride)
    x, pa = torch.rand(2, 1, 32, 32) * 2 - 1, torch.tensor([[0.0, 1, 0], [1, 0, 1]])
    stats = model.abduct(x, pa)
    res = [32 // stride, 16 // stride, 8 // stride]
    # one latent group per block, coarse to fine, blocks_per_res groups per level
    expected = [(2, z, r, r) for z, r in zip([1, 1, 2, 2, 3, 3], [res[2]] * 2 + [res[1]] * 2 + [res[0]] * 2)]
    assert [tuple(s["z"].shape) for s in stats] == expected
    assert all(torch.equal(s["z"], s["q_loc"]) for s in stats)  # t = 0: posterior means
    assert model.reconstruct(x, pa).shape == x.shape
    assert model.sample(pa, t=0.5).shape == x.shape


def test_loss_finite_and_decreasing():
    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    split = synthetic_split("x", 8)
    x, pa = hv.to_model_space(split.images), hv.parents_tensor(split.parents)
    g = torch.Generator().manual_seed(0)
    losses = [hv.train_step(model, ema, opt, x, pa, 1.0, 200.0, 1e4, 0.9, generator=g)["loss"] for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_ema_update_exact():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.fill_(1.0), a.bias.fill_(0.0), b.weight.fill_(3.0), b.bias.fill_(2.0)
    hv.ema_update(a, b, rate=0.9)
    assert torch.allclose(a.weight, torch.full((1, 2), 1.2)) and torch.allclose(a.bias, torch.tensor([0.2]))


def test_grad_skip_triggers_on_huge_gradient():
    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    split = synthetic_split("x", 4)
    x, pa = hv.to_model_space(split.images), hv.parents_tensor(split.parents)
    before = copy.deepcopy(model.state_dict())
    # beta = 1e12 blows the gradient up far beyond grad_skip: no update, no EMA change
    out = hv.train_step(model, ema, opt, x, pa, 1e12, 200.0, 1000.0, 0.5)
    assert out["skipped"] == 1.0 and out["grad_norm"] > 1000
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())
    out = hv.train_step(model, ema, opt, x, pa, 1.0, 200.0, 1000.0, 0.5)
    assert out["skipped"] == 0.0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_oversampled_batches():
    eff = np.array([1] * 5 + [0] * 35)
    batches = hv.oversampled_batches(eff, 8, 0.25, np.random.default_rng(0))
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)
    assert [int(eff[b].sum()) for b in batches] == [2] * 5
    # each group walks through permutations: the 10 effusion draws use every image twice
    assert np.bincount(np.concatenate(batches)[eff[np.concatenate(batches)] == 1], minlength=5)[:5].tolist() == [2] * 5
    again = hv.oversampled_batches(eff, 8, 0.25, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    plain = hv.oversampled_batches(eff, 8, 0.0, np.random.default_rng(0))
    assert sorted(np.concatenate(plain).tolist()) == list(range(40))


def test_train_checkpoint_resume_equals_uninterrupted(synthetic, monkeypatch, tmp_path):
    prof = tiny_profile()
    path = hv.train_hvae(prof, progress=False)
    full = torch.load(path, weights_only=True)
    assert full["finished"] and full["epoch"] == 2 and full["step"] == 6
    log = hv.read_log(prof)
    assert log["epoch"].tolist() == [1, 2] and np.isfinite(log[["train_loss", "val_loss"]].to_numpy()).all()
    assert (path.parent / "samples" / "epoch_002.png").exists()
    # interrupted after one epoch, then resumed, in another runs folder
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs2"))
    hv.train_hvae(prof, progress=False, max_epochs=1)
    assert torch.load(hv.checkpoint_path(prof), weights_only=True)["epoch"] == 1
    resumed = torch.load(hv.train_hvae(prof, progress=False), weights_only=True)
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    assert hv.read_log(prof)["epoch"].tolist() == [1, 2]


def test_finished_checkpoint_is_noop_and_mismatch_refused(synthetic):
    prof = tiny_profile(**{"hvae.epochs": 1})
    path = hv.train_hvae(prof, progress=False)
    stamp = path.stat().st_mtime_ns
    assert hv.train_hvae(prof, progress=False) == path and path.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match=r"hvae\.lr: checkpoint 0\.001 vs requested 0\.01"):
        hv.train_hvae(tiny_profile(**{"hvae.epochs": 1, "hvae.lr": 0.01}), progress=False)
    with pytest.raises(ValueError, match=r"hvae\.z_dims"):
        hv.train_hvae(tiny_profile(**{"hvae.epochs": 1, "hvae.z_dims": [2, 1]}), progress=False)
    # more epochs continue the same run
    more = tiny_profile(**{"hvae.epochs": 2})
    assert torch.load(hv.train_hvae(more, progress=False), weights_only=True)["epoch"] == 2
    model = hv.load_hvae(more)
    assert not model.training and model.config["stem_stride"] == 2


def test_load_hvae_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no HVAE checkpoint"):
        hv.load_hvae(tmp_path / "missing.pt")


def test_cli_overrides(synthetic):
    assert hv.parse_overrides(["hvae.epochs=1", "hvae.widths=[8,8]", "data.source=phantom"]) == {
        "hvae.epochs": 1, "hvae.widths": [8, 8], "data.source": "phantom"}
    with pytest.raises(ValueError, match="key=value"):
        hv.parse_overrides(["hvae.epochs"])
    hv.main(["--profile", "smoke", "--set", "data.image_size=16", "--set", "hvae.widths=[8,8]",
             "--set", "hvae.z_dims=[2,2]", "--set", "hvae.epochs=1", "--set", "hvae.batch_size=8"])
    prof = tiny_profile(**{"hvae.epochs": 1, "data.n_pretrain": 64, "data.n_val": 16})
    assert torch.load(hv.checkpoint_path(prof), weights_only=True)["finished"]
