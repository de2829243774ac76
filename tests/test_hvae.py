"""Tests of the counterfactual HVAE (cfcl.counterfactual.hvae, .hvae_train, .cf_finetune): the network on tiny synthetic blobs (16 px), the run
on the tiny phantom of conftest.py."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import norm

import cfcl.counterfactual.hvae as hv
from cfcl.counterfactual import hvae_train as ht
from cfcl.counterfactual.hvae_train import hvae_run, load_hvae, read_log, train_hvae
from cfcl.counterfactual.parents import oversampled_batches, parents_tensor, to_model_space, to_uint8
from cfcl.data import ChestSplit
from cfcl.runs import ArtifactError, MissingRunError


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
    x = to_model_space(img)
    assert x.shape == (1, 1, 16, 16) and x.min() == -1 and x.max() == 1
    np.testing.assert_array_equal(to_uint8(x), img)
    with pytest.raises(TypeError, match="uint8"):
        to_model_space(img.astype(np.float32))
    pa = parents_tensor(pd.DataFrame(dict(sex=[0, 1], scanner=[1, 1], effusion=[0, 1])))
    assert pa.tolist() == [[0, 1, 0], [1, 1, 1]]
    with pytest.raises(KeyError, match="effusion"):
        parents_tensor(pd.DataFrame(dict(sex=[0], scanner=[1])))


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
    x, pa = to_model_space(split.images), parents_tensor(split.parents)
    g = torch.Generator().manual_seed(0)
    losses = [ht.train_step(model, ema, opt, x, pa, 1.0, 200.0, 1e4, 0.9, generator=g)["loss"] for _ in range(25)]
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_ema_update_exact():
    a, b = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        a.weight.fill_(1.0), a.bias.fill_(0.0), b.weight.fill_(3.0), b.bias.fill_(2.0)
    ht.ema_update(a, b, rate=0.9)
    assert torch.allclose(a.weight, torch.full((1, 2), 1.2)) and torch.allclose(a.bias, torch.tensor([0.2]))


def test_grad_skip_triggers_on_huge_gradient():
    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    ema = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    split = synthetic_split("x", 4)
    x, pa = to_model_space(split.images), parents_tensor(split.parents)
    before = copy.deepcopy(model.state_dict())
    # beta = 1e12 blows the gradient up far beyond grad_skip: no update, no EMA change
    out = ht.train_step(model, ema, opt, x, pa, 1e12, 200.0, 1000.0, 0.5)
    assert out["skipped"] == 1.0 and out["grad_norm"] > 1000
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in ema.state_dict().items())
    out = ht.train_step(model, ema, opt, x, pa, 1.0, 200.0, 1000.0, 0.5)
    assert out["skipped"] == 0.0
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_oversampled_batches():
    eff = np.array([1] * 5 + [0] * 35)
    batches = oversampled_batches(eff, 8, 0.25, np.random.default_rng(0))
    assert len(batches) == 5 and all(len(b) == 8 for b in batches)
    assert [int(eff[b].sum()) for b in batches] == [2] * 5
    # each group walks through permutations: the 10 effusion draws use every image twice
    assert np.bincount(np.concatenate(batches)[eff[np.concatenate(batches)] == 1], minlength=5)[:5].tolist() == [2] * 5
    again = oversampled_batches(eff, 8, 0.25, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    plain = oversampled_batches(eff, 8, 0.0, np.random.default_rng(0))
    assert sorted(np.concatenate(plain).tolist()) == list(range(40))


def test_train_resume_equals_uninterrupted(tiny, monkeypatch, tmp_path):
    prof = tiny()
    run = train_hvae(prof, progress=False)
    full = torch.load(run.artifact("hvae.pt"), weights_only=True)
    assert full["epochs"] == 2 and full["steps"] == 6 and not run.path("last.pt").exists()
    log = read_log(prof)
    assert log["epoch"].tolist() == [1, 2] and np.isfinite(log[["train_loss", "val_loss"]].to_numpy()).all()
    assert run.path("samples/epoch_002.png").exists() and "samples/epoch_002.png" in run.manifest()["artifacts"]
    # interrupted after one epoch, then resumed, in another runs folder
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs2"))
    part = train_hvae(prof, progress=False, max_epochs=1)
    assert not part.is_finished() and torch.load(part.path("last.pt"), weights_only=True)["epoch"] == 1
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual\.hvae_train --profile smoke --set"):
        load_hvae(prof)
    resumed = torch.load(train_hvae(prof, progress=False).artifact("hvae.pt"), weights_only=True)
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    assert read_log(prof)["epoch"].tolist() == [1, 2]


def test_finished_run_is_reused_and_other_settings_are_other_runs(tiny):
    prof = tiny({"hvae.epochs": 1})
    run = train_hvae(prof, progress=False)
    stamp = run.path("hvae.pt").stat().st_mtime_ns
    assert train_hvae(prof, progress=False).folder == run.folder and run.path("hvae.pt").stat().st_mtime_ns == stamp
    assert hvae_run(tiny({"hvae.epochs": 1, "hvae.lr": 0.01})).key != run.key
    # settings that do not change the model share the run
    assert hvae_run(tiny({"hvae.epochs": 1, "hvae.cf_batch_size": 4, "pretrain.steps": 9})).key == run.key
    model = load_hvae(prof)
    assert not model.training and model.config["stem_stride"] == 2


def test_damaged_checkpoint_is_refused(tiny):
    prof = tiny({"hvae.epochs": 1})
    run = train_hvae(prof, progress=False)
    path = run.path("hvae.pt")
    with open(path, "ab") as f:
        f.write(b"\0" * 4096)  # still loads with torch.load: only the manifest can tell
    with pytest.raises(ArtifactError, match="hvae.pt"):
        load_hvae(prof)


def test_cli_overrides(tiny, capsys):
    from cfcl.counterfactual.hvae_train import main

    prof = tiny({"hvae.epochs": 1})
    main(["--profile", "smoke", "--set", *prof.overrides])
    assert hvae_run(prof).is_finished() and "HVAE run" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# Counterfactual fine-tuning (cfcl.counterfactual.cf_finetune)
# ---------------------------------------------------------------------------------------------
from cfcl.counterfactual import cf_finetune as cft  # noqa: E402


def _cf_setup(seed: int = 0):
    """A small HVAE, a frozen random predictor and a fixed batch of synthetic blobs."""
    torch.manual_seed(seed)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2)
    ema = copy.deepcopy(model)
    # a frozen predictor that reads the image: 4x4 block means, one linear layer
    predictor = torch.nn.Sequential(torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    torch.nn.init.normal_(predictor[2].weight, std=2.0)
    for p in predictor.parameters():
        p.requires_grad_(False)
    split = synthetic_split("x", 8)
    x, pa = to_model_space(split.images), parents_tensor(split.parents)
    cf_pa = cft.flip_parents(pa, torch.tensor([0, 1, 2, 1, 1, 0, 2, 1]))
    return model, ema, predictor, x, pa, cf_pa


def _steps(model, ema, predictor, x, pa, cf_pa, eps, n, lr=3e-3, lr_lagrange=0.1, damping=0.0, augment=False):
    lmbda = torch.nn.Parameter(torch.zeros(1))
    opt, lag = cft.make_optimizers(model, lmbda, lr, lr_lagrange)
    cfg = cft.CfStepConfig(beta=1.0, damping=damping, grad_clip=200.0, grad_skip=1e6, ema_rate=0.9, augment=augment)
    return [cft.cf_step(model, ema, predictor, opt, lag, lmbda, x, pa, cf_pa, eps, cfg,
                        generator=torch.Generator().manual_seed(i)) for i in range(n)]


def test_the_step_settings_are_the_profiles():
    import dataclasses

    from cfcl.config import get_profile

    prof = get_profile("smoke", {"hvae.cf_damping": 7.0, "hvae.cf_cycle": 2.0})
    hv, cfg = prof.hvae, cft.CfStepConfig.from_profile(prof)
    assert dataclasses.astuple(cfg) == (hv.beta, 7.0, hv.grad_clip, hv.grad_skip, hv.ema_rate, hv.cf_augment, 2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.cycle = 0.0


def test_flip_parents_and_batches():
    pa = torch.tensor([[0.0, 1, 0], [1, 0, 1], [1, 1, 1]])
    assert cft.flip_parents(pa, torch.tensor([0, 1, 2])).tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 0]]
    eff = np.array([1] * 4 + [0] * 60)
    idx, which = cft.draw_batch(eff, 16, 0.5, 0.5, np.random.default_rng(0))
    assert len(idx) == 16 and eff[idx].sum() == 8 and (np.diff(idx) >= 0).all()
    _, which = cft.draw_batch(eff, 4000, 0.5, 0.6, np.random.default_rng(1))
    share = np.bincount(which, minlength=3) / 4000  # INTERVENTIONS order: scanner, effusion, both
    assert abs(share[1] - 0.6) < 0.03 and abs(share[0] - 0.2) < 0.03 and abs(share[2] - 0.2) < 0.03


def _parent_dependent(seed: int = 0):
    """:func:`_cf_setup` after a few fine-tuning steps: at initialisation the parents barely move the
    decoder (its counterfactuals come back to x to 1e-4); the steps make them matter."""
    model, ema, predictor, x, pa, cf_pa = _cf_setup(seed)
    _steps(model, ema, predictor, x, pa, cf_pa, eps=1e6, n=8, lr=5e-3)
    return model, ema, predictor, x, pa, cf_pa


def test_cycle_error_is_the_reversibility_of_the_counterfactual():
    import cfcl.counterfactual.generate as cfgen

    model, _, _, x, pa, cf_pa = _parent_dependent()
    with torch.no_grad():  # the null intervention of x is x: no cycle error
        assert cft.cycle_error(model, x, x, pa, pa).abs().max() < 1e-5
    x_cf = model.counterfactual(x, pa, cf_pa)
    err = cft.cycle_error(model, x, x_cf, pa, cf_pa)
    assert err.shape == (len(x),) and (err > 1e-4).all()  # the counterfactual does not come back exactly
    with torch.no_grad():  # the same as generating the counterfactual and its way back
        back = cfgen.counterfactual(model, x_cf.detach(), cf_pa, pa)
    torch.testing.assert_close(err.detach(), (back - x).abs().mean(dim=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    model.zero_grad()
    err.sum().backward()  # it trains the encoder through both abductions
    assert model.encoder.stem.weight.grad.abs().sum() > 0


def test_cf_step_cycle_term_is_logged_and_lowered():
    model, ema, predictor, x, pa, cf_pa = _parent_dependent()
    ends = {}
    for cycle in (0.0, 100.0):  # the same state, the same steps, with and without the cycle term
        m, e = copy.deepcopy(model), copy.deepcopy(ema)
        lmbda = torch.nn.Parameter(torch.zeros(1))
        opt, lag = cft.make_optimizers(m, lmbda, 5e-3, 0.1)
        cfg = cft.CfStepConfig(beta=1.0, damping=0.0, grad_clip=200.0, grad_skip=1e6, ema_rate=0.9, cycle=cycle)
        out = [cft.cf_step(m, e, predictor, opt, lag, lmbda, x, pa, cf_pa, 1e6, cfg,
                           generator=torch.Generator().manual_seed(i)) for i in range(6)]
        assert (out[0]["cycle"] > 0) == (cycle > 0)  # logged where it is trained
        with torch.no_grad():
            ends[cycle] = float(cft.cycle_error(m, x, m.counterfactual(x, pa, cf_pa), pa, cf_pa).mean())
    assert ends[100.0] < 0.5 * ends[0.0]


def test_cf_step_keeps_the_parents_the_predictor_reads():
    """The target of an intervened parent is its counterfactual value, that of a kept parent the frozen
    predictor's probability on x: the logged terms equal a by-hand float64 computation on the same
    counterfactual, and differ from the cross-entropy against the labels."""
    import torch.nn.functional as F

    model, ema, predictor, x, pa, cf_pa = _parent_dependent()
    with torch.no_grad():
        logits = predictor(model.counterfactual(x, pa, cf_pa, t=0.0)).double()
        read = torch.sigmoid(predictor(x)).double()
    kept = cf_pa == pa
    assert 0 < kept.double().mean() < 1  # every intervention keeps some parents and flips others
    target = torch.where(kept, read, cf_pa.double())
    per_parent = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(0)
    lmbda = torch.nn.Parameter(torch.zeros(1))
    opt, lag = cft.make_optimizers(model, lmbda, 1e-3, 0.1)
    out = cft.cf_step(model, ema, predictor, opt, lag, lmbda, x, pa, cf_pa, 1e6,
                      cft.CfStepConfig(beta=1.0, damping=0.0, grad_clip=200.0, grad_skip=1e6, ema_rate=0.9))
    for j, p in enumerate(cft.PARENTS):
        assert out[f"aux_{p}"] == pytest.approx(float(per_parent[j]), rel=1e-5, abs=1e-6)
    assert out["aux"] == pytest.approx(float(per_parent.sum()), rel=1e-5)
    labels = F.binary_cross_entropy_with_logits(logits, cf_pa.double(), reduction="none").mean(0)
    assert abs(float(labels.sum()) - out["aux"]) > 1e-3  # the labels would give another loss


def test_mixture_weights_per_latent_group():
    model, _, _, x, pa, cf_pa = _cf_setup()
    n = len(model.blocks)
    assert n >= 2
    with torch.no_grad():
        for a in (1.0, 0.0, 0.5):  # one weight per group, all equal: the same as the single weight
            torch.testing.assert_close(model.counterfactual(x, pa, cf_pa, alpha=(a,) * n),
                                       model.counterfactual(x, pa, cf_pa, alpha=a), rtol=0, atol=1e-6)
        zs = [s["z"] for s in model.abduct(x, pa)]
        _, mixed = model.decode(cf_pa, mix=(zs, (0.0,) + (1.0,) * (n - 1)))
        _, prior = model.decode(cf_pa, mix=(zs, 0.0))
    torch.testing.assert_close(mixed[0]["z"], prior[0]["z"])  # the coarsest group: its prior mean
    for i in range(1, n):  # the others: the abducted latents
        torch.testing.assert_close(mixed[i]["z"], zs[i], rtol=0, atol=0)


def test_counterfactual_is_differentiable_and_matches_generation():
    import cfcl.counterfactual.generate as cfgen

    model, _, _, x, pa, cf_pa = _cf_setup()
    x_cf = model.counterfactual(x, pa, cf_pa)
    assert x_cf.requires_grad
    x_cf.sum().backward()
    assert model.encoder.stem.weight.grad is not None and model.encoder.stem.weight.grad.abs().sum() > 0
    with torch.no_grad():
        torch.testing.assert_close(cfgen.counterfactual(model, x, pa, cf_pa), x_cf.detach(), rtol=0, atol=0)


def test_cf_step_reduces_the_auxiliary_loss_on_a_fixed_batch():
    model, ema, predictor, x, pa, cf_pa = _cf_setup()
    out = _steps(model, ema, predictor, x, pa, cf_pa, eps=1e6, n=8, lr=5e-3)
    aux = [o["aux"] for o in out]
    assert np.isfinite(aux).all() and np.mean(aux[-2:]) < 0.9 * aux[0]
    assert all(o["lambda"] == 0.0 for o in out)  # eps far above the ELBO: the constraint holds


def test_lagrange_multiplier_rises_when_the_elbo_constraint_is_violated():
    model, ema, predictor, x, pa, cf_pa = _cf_setup()
    held = _steps(copy.deepcopy(model), copy.deepcopy(ema), predictor, x, pa, cf_pa, eps=1e6, n=5)
    assert [o["lambda"] for o in held] == [0.0] * 5
    violated = _steps(model, ema, predictor, x, pa, cf_pa, eps=-1e3, n=5)
    lam = [o["lambda"] for o in violated]
    assert lam[0] > 0 and all(b > a for a, b in zip(lam, lam[1:]))  # gradient ascent: up every step


def test_damping_pulls_the_elbo_towards_eps():
    model, ema, predictor, x, pa, cf_pa = _cf_setup()
    with torch.no_grad():
        start = float(model(x, pa, beta=1.0, generator=torch.Generator().manual_seed(0))["loss"])
    out = _steps(model, ema, predictor, x, pa, cf_pa, eps=0.8 * start, n=10, lr=1e-3, lr_lagrange=0.0,
                 damping=100.0)
    assert out[-1]["elbo"] < start and all(o["lambda"] == 0.0 for o in out)


def _cf_profile(tiny, **extra):
    return tiny({"hvae.epochs": 1, "hvae.cf_finetune_steps": 4, **extra})


def test_cf_finetune_needs_its_upstream_runs(tiny):
    prof = _cf_profile(tiny)
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual\.hvae_train --profile smoke"):
        cft.finetune_counterfactuals(prof, progress=False)
    train_hvae(prof, progress=False)
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual\.predictors --profile smoke"):
        cft.finetune_counterfactuals(prof, progress=False)
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual\.cf_finetune --profile smoke"):
        cft.load_counterfactual_model(prof)


def test_cf_finetune_run_resumes_exactly_is_verified_and_keeps_the_null_intervention(tiny):
    import shutil

    import cfcl.counterfactual.predictors as clf
    from cfcl.counterfactual.generate import counterfactual_images
    from cfcl.data import load_split

    prof = _cf_profile(tiny)
    train_hvae(prof, progress=False)
    clf.train_classifiers(prof, progress=False)
    run = cft.finetune_counterfactuals(prof, progress=False)
    assert run.folder.parent.name == "hvae_cf" and set(run.upstream) == {"hvae", "classifiers", "data/pretrain"}
    full = torch.load(run.artifact("hvae_cf.pt"), weights_only=True)
    log = cft.read_cf_log(prof)
    assert log["step"].tolist() == [1, 2, 3, 4] and np.isfinite(log[["aux", "elbo", "eps"]].to_numpy()).all()
    assert not run.path("last.pt").exists()
    # reused as is
    stamp = run.path("hvae_cf.pt").stat().st_mtime_ns
    assert cft.finetune_counterfactuals(prof, progress=False).path("hvae_cf.pt").stat().st_mtime_ns == stamp
    # the null intervention is still exact after fine-tuning
    model = cft.load_counterfactual_model(prof)
    split = load_split(prof, "test")
    pa = parents_tensor(split.parents)
    np.testing.assert_array_equal(counterfactual_images(model, split.images, pa, pa), split.images)
    # interrupted after 2 steps, then resumed: the same weights, EMA and multiplier
    shutil.rmtree(run.folder)
    part = cft.finetune_counterfactuals(prof, progress=False, max_steps=2)
    assert not part.is_finished() and torch.load(part.path("last.pt"), weights_only=True)["step"] == 2
    resumed = torch.load(cft.finetune_counterfactuals(prof, progress=False).artifact("hvae_cf.pt"), weights_only=True)
    for key in ("model", "ema"):
        for name, value in full[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    assert full["lambda"] == resumed["lambda"] and full["eps"] == resumed["eps"]
    pd.testing.assert_frame_equal(cft.read_cf_log(prof), log)
    # a damaged checkpoint is refused
    with open(run.path("hvae_cf.pt"), "ab") as f:
        f.write(b"\0" * 1024)
    with pytest.raises(ArtifactError, match="hvae_cf.pt"):
        cft.load_counterfactual_model(prof)
    # a replicate starts from the same models and draws other batches and interventions
    rep = _cf_profile(tiny, **{"hvae.cf_replicate": 1})
    cft.finetune_counterfactuals(rep, progress=False)
    other = cft.read_cf_log(rep)
    assert other["eps"].tolist() == log["eps"].tolist() and other["aux"].tolist() != log["aux"].tolist()


def test_cf_finetune_keys(tiny):
    prof = _cf_profile(tiny)
    run = cft.cf_finetune_run(prof)
    assert cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.cf_lr": 1e-3})).key != run.key
    assert cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.epochs": 2})).key != run.key  # another ELBO run
    assert cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.classifier_epochs": 2})).key != run.key
    # generation settings do not change it; fine-tuning settings do not change the ELBO run
    assert cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.cf_batch_size": 3})).key == run.key
    # the fixed choices are recorded in the key (as when they were settings)
    assert {k: cft.cf_settings(prof)["cf"][k] for k in cft.FIXED} == {"cf_keep": "predicted", "cf_l1": 0.0}
    # the cycle term (on at the smoke profile): its weight keys the run, 0 (its default) keys nothing
    assert prof.hvae.cf_cycle == 3.0 and cft.cf_settings(prof)["cf"]["cf_cycle"] == 3.0
    assert cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.cf_cycle": 1.0})).key != run.key
    assert "cf_cycle" not in cft.cf_settings(_cf_profile(tiny, **{"hvae.cf_cycle": 0.0}))["cf"]
    # a replicate is another run from the same ELBO model and predictors; replicate 0 is the profile's run
    rep = cft.cf_finetune_run(_cf_profile(tiny, **{"hvae.cf_replicate": 1}))
    assert rep.key != run.key and rep.upstream.keys() == run.upstream.keys()
    assert all(rep.upstream[k].key == run.upstream[k].key for k in run.upstream)
    assert "cf_replicate" not in cft.cf_settings(prof)["cf"]
    assert hvae_run(_cf_profile(tiny, **{"hvae.cf_lr": 1e-3, "hvae.cf_finetune_steps": 0})).key == hvae_run(prof).key
    off = _cf_profile(tiny, **{"hvae.cf_finetune_steps": 0})
    assert cft.counterfactual_model_run(off).key == hvae_run(prof).key
    assert cft.counterfactual_model_run(prof).key == run.key
    assert cft.elbo_only(prof).hvae.cf_finetune_steps == 0 and "hvae.cf_finetune_steps=0" in cft.elbo_only(prof).overrides


def test_cf_finetune_cli(tiny, capsys):
    import cfcl.counterfactual.predictors as clf
    from cfcl.counterfactual.cf_finetune import main

    prof = _cf_profile(tiny, **{"hvae.cf_finetune_steps": 2})
    train_hvae(prof, progress=False)
    clf.train_classifiers(prof, progress=False)
    main(["--profile", "smoke", "--set", *prof.overrides])
    assert cft.cf_finetune_run(prof).is_finished() and "counterfactual HVAE run" in capsys.readouterr().out


def test_finetune_log_figure_shows_the_cycle_only_when_trained():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cfcl.config import PARENTS
    from cfcl.plots.counterfactuals import plot_cf_finetune_log

    log = pd.DataFrame([dict(step=i + 1, aux=1.0, **{f"aux_{p}": 0.3 for p in PARENTS}, cycle=0.0, elbo=3.9, nll=3.8,
                             kl=0.03, eps=3.94, **{"lambda": 0.1}, grad_norm=1.0, skipped=0.0) for i in range(5)])
    fig = plot_cf_finetune_log(log)
    assert len(fig.axes) == 3  # no cycle term (weight 0): the three panels of before
    plt.close(fig)
    fig = plot_cf_finetune_log(log.drop(columns="cycle"))  # a log written before the column existed
    assert len(fig.axes) == 3
    plt.close(fig)
    log["cycle"] = 0.02
    fig = plot_cf_finetune_log(log)
    assert len(fig.axes) == 4 and fig.axes[3].lines[0].get_ydata()[-1] == pytest.approx(127.5 * 0.02)
    plt.close(fig)
