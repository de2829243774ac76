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
from cfcl.config import get_profile
from cfcl.methods import PRETRAIN_METHODS as METHODS
from cfcl.models import build_model
from cfcl.runs import load_checkpoint
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
    run = pt.pretrain(prof, method, progress=False, data=_data(prof, method))
    ck = load_checkpoint(run.artifact("model.pt"))  # weights_only=True, verified
    assert ck["step"] == 2 and not run.path("last.pt").exists()
    losses = pt.read_losses(prof, method)
    assert list(losses["step"]) == [1, 2]
    assert np.isfinite(losses["loss"]).all()


def test_prepare_tracks_points_into_every_view():
    prof = small_profile()
    split, cf = synthetic_split()
    spec = pt.get("mvd_cl")
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


def _reference_loss(model, prep, spec, loss_fn):
    """The loss as the full embedding map read view by view (the pre-issue-10 computation)."""
    from cfcl import views

    vimgs, Ms, pts, labels = prep["views"], prep["M"], prep["pts"], prep["labels"]
    B, V = vimgs.shape[:2]
    emb = model(vimgs.flatten(0, 1), mode="embed").unflatten(0, (B, V))

    def read(p, which):
        return torch.stack([views.gather(emb[:, v], views.apply(Ms[:, v], p)) for v in which], 1)

    if spec.pairing == "dual":
        pairs = [read(pts[:, t - 1], [0, t]) for t in range(1, V)]
        anchor, target = torch.stack([p[:, 0] for p in pairs], 1), torch.stack([p[:, 1] for p in pairs], 1)
        if spec.name == "vader":
            return loss_fn(anchor[:, 0], target[:, 0])
        return loss_fn(anchor, target, labels, labels) if spec.supervised else loss_fn(anchor, target)
    z = read(pts[:, 0], list(range(V)))
    return loss_fn(z, labels[:, :1].expand(B, V, labels.shape[-1])) if spec.supervised else loss_fn(z)


@pytest.mark.parametrize("method", ["vader", "dvd_cl", "mvd_cl", "ssdcl", "s_dvd_cl", "s_mvd_cl"])
def test_forward_loss_equals_reading_the_full_embedding_maps(method):
    """forward_loss reads the embeddings at the tracked points only (CFCLNet.embed_at, all views in
    one call); loss and gradient equal those of the full embedding maps read view by view."""
    import copy

    prof = small_profile()
    spec = pt.get(method, pretrained=True)
    prep = pt.prepare(_data(prof, method).batch(np.arange(2), spec), spec, prof, pt.step_generator(0, 3))
    torch.manual_seed(0)
    net = build_model("resnet18", 8).train()
    ref = copy.deepcopy(net)
    loss_fn = pt.make_loss(spec, prof)
    got, want = pt.forward_loss(net, prep, spec, loss_fn), _reference_loss(ref, prep, spec, loss_fn)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    want.backward()
    for (k, a), b in zip(net.named_parameters(), ref.parameters()):
        if b.grad is None or k == "projector.0.bias":  # BatchNorm cancels this bias: its gradient is 0 (round-off)
            continue
        err = float((a.grad - b.grad).norm() / b.grad.norm().clamp(min=1e-12))
        assert err < 1e-4, (k, err)
    bn, bn_ref = net.projector[1], ref.projector[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-5, atol=1e-7)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 1


@pytest.mark.parametrize("n_points", [50, 3000])  # fewer taps than pixels (head at the taps), more
@pytest.mark.parametrize("train", [True, False])
def test_embed_at_is_the_embedding_map_read_bilinearly(n_points, train):
    from cfcl import views

    torch.manual_seed(1)
    net = build_model("resnet18", 16).train(train)
    x = torch.rand(3, 1, 32, 32)
    p = torch.rand(3, n_points, 2) * 34 - 1  # some points in the zero padding around the map
    p[:, :4] = torch.tensor([[0.0, 0.0], [31.0, 31.0], [-0.5, 12.25], [31.5, 31.75]])
    with torch.no_grad():
        want = views.gather(net.embed(x), p)
        got = net(x, mode="embed_at", points=p)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    # the flat form: points of each image listed with the image's index
    image = torch.arange(3).repeat_interleave(n_points)
    with torch.no_grad():
        flat = net.embed_at(x, p.reshape(-1, 2), image)
    torch.testing.assert_close(flat.view_as(got), got)


def test_resume_gives_the_same_weights(runs, tmp_path, monkeypatch):
    prof = small_profile()
    full = pt.pretrain(prof, "s_dvd_cl", progress=False, data=_data(prof, "s_dvd_cl"))
    w_full = load_checkpoint(full.artifact("model.pt"))["model"]
    monkeypatch.setenv("CFCL_RUNS", str(tmp_path / "runs2"))
    first = pt.pretrain(prof, "s_dvd_cl", progress=False, stop_after=2, data=_data(prof, "s_dvd_cl"))
    assert not first.is_finished() and first.path("last.pt").exists()
    resumed = pt.pretrain(prof, "s_dvd_cl", progress=False, data=_data(prof, "s_dvd_cl"))
    w_res = load_checkpoint(resumed.artifact("model.pt"))["model"]
    for k in w_full:
        assert torch.equal(w_full[k], w_res[k]), k
    assert len(pt.read_losses(prof, "s_dvd_cl")) == 4


def test_the_key_reads_exactly_the_settings_of_the_method(runs):
    base = pt.pretrain_run(small_profile(), "vader")
    assert pt.pretrain_run(small_profile(**{"pretrain.lr": 0.5}), "vader").key != base.key
    # neither the checkpoint frequency nor the counterfactual source changes VADeR's run ...
    same = small_profile(**{"pretrain.checkpoint_every": 3, "pretrain.cf_source": "identity"})
    assert pt.pretrain_run(same, "vader").key == base.key
    # ... but the counterfactual source does change DVD-CL's
    assert pt.pretrain_run(same, "dvd_cl").key != pt.pretrain_run(small_profile(), "dvd_cl").key
    with pytest.raises(KeyError, match="unknown method"):
        pt.pretrain_run(small_profile(), "none")


def test_hvae_views_need_their_counterfactual_run(runs, tmp_path, monkeypatch):
    from cfcl.runs import MissingRunError

    monkeypatch.setenv("CFCL_CACHE", str(tmp_path / "cache"))
    prof = small_profile(**{"pretrain.cf_source": "hvae"})
    run = pt.pretrain_run(prof, "dvd_cl")
    assert "counterfactuals" in run.upstream
    with pytest.raises(MissingRunError, match=r"python -m cfcl\.counterfactual "):
        pt.PretrainData(prof, "dvd_cl", split=synthetic_split()[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_METHODS = ("dvd_cl", "ssdcl")  # image negatives; batch negatives (gathered across ranks)


def _first_step_grads(prof, method: str, world: int = 1, rank: int = 0) -> dict[str, torch.Tensor]:
    """Parameter gradients of step 0 (BatchNorm frozen), DDP-averaged under torch.distributed."""
    torch.manual_seed(prof.seed)
    net = build_model(prof.pretrain.encoder, prof.pretrain.embed_dim)
    model = net if world == 1 else torch.nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    model.train()
    pt._set_bn_eval(model)
    spec = pt.get(method, pretrained=True)
    data = _data(prof, method)
    idx = pt.batch_indices(len(data), prof.pretrain.batch_size, 0, prof.seed)
    prep = pt.take(pt.prepare(data.batch(idx, spec), spec, prof, pt.step_generator(prof.seed, 0)),
                   slice(rank, None, world))
    pt.forward_loss(model, prep, spec, pt.make_loss(spec, prof)).backward()
    return {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}


def _ddp_worker(rank: int, world: int, port: int, runs: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CFCL_RUNS=runs)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        prof = small_profile(**{"pretrain.steps": 2, "pretrain.batch_size": 4})
        result = {}
        for method in DDP_METHODS:
            run = pt.pretrain(prof, method, progress=False, freeze_bn=True, device="cpu",
                              data=_data(prof, method))
            grads = _first_step_grads(prof, method, world, rank)
            if rank == 0:
                ck = load_checkpoint(run.artifact("model.pt"))
                losses = pt.read_losses(prof, method)["loss"].to_numpy()
                result[method] = {"model": ck["model"], "losses": torch.tensor(losses), "grads": grads}
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process(runs, tmp_path):
    """Every rank keeps its share of the global batch; the contrastive losses gather the embeddings
    of all ranks (with gradient), so image negatives (DVD-CL) and batch negatives (SSDCL) give the
    one-process loss and gradient on the same global batch."""
    prof = small_profile(**{"pretrain.steps": 2, "pretrain.batch_size": 4})
    ref = {}
    for method in DDP_METHODS:
        single = pt.pretrain(prof, method, progress=False, freeze_bn=True, device="cpu", data=_data(prof, method))
        ref[method] = {"model": load_checkpoint(single.artifact("model.pt"))["model"],
                       "losses": pt.read_losses(prof, method)["loss"].to_numpy(),
                       "grads": _first_step_grads(prof, method)}
    out = str(tmp_path / "ddp.pt")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp_runs"), out), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)
    lr = prof.pretrain.lr
    for method in DDP_METHODS:
        got, want = result[method], ref[method]
        np.testing.assert_allclose(got["losses"].numpy(), want["losses"], rtol=1e-5, atol=1e-6, err_msg=method)
        # the gradient itself (Adam's update would hide a wrong scale): DDP's average over ranks
        # equals the one-process gradient of the global-batch loss
        assert got["grads"].keys() == want["grads"].keys()
        for k, g in want["grads"].items():
            err = float((got["grads"][k] - g).norm() / g.norm().clamp(min=1e-12))
            assert err < 1e-4 or float(g.norm()) < 1e-6, (method, k, err)
        # Adam divides by sqrt(v): where a gradient is ~0, float summation order (one process vs
        # an all-reduce over two) can flip the sign of an update (2 * lr apart). Nearly every
        # weight must agree closely, and none may differ by more than that. (About 0.1 % of the
        # weights flip after two steps: 0.095 % for DVD-CL before issue 10, 0.103 % after, both
        # from round-off alone, so the bound is 0.2 %.)
        close, total = 0, 0
        for k, v in want["model"].items():
            if v.is_floating_point():
                d = (got["model"][k] - v).abs()
                assert d.max() <= 2.5 * lr * prof.pretrain.steps, (method, k)
                close += int((d <= 1e-5 + 1e-4 * v.abs()).sum())
                total += v.numel()
        assert close / total > 0.998, (method, close / total)


def test_batch_indices_cover_an_epoch_without_repeats():
    seen = np.concatenate([pt.batch_indices(10, 2, s, seed=3) for s in range(5)])
    assert sorted(seen) == list(range(10))
    assert not np.array_equal(pt.batch_indices(10, 2, 0, 3), pt.batch_indices(10, 2, 5, 3))


def test_cf_gain_mixes_the_views_and_labels_choose_the_masks():
    """``pretrain.cf_gain``: views x + g (cf - x) (g=1: the counterfactuals exactly, g=0: x itself);
    ``pretrain.labels=gold``: the supervised methods read the split's gold masks; at their neutral values
    neither enters a run's key (runs made before the settings existed stay valid)."""
    split, cf = synthetic_split()
    split = ChestSplit("pretrain", split.images, split.parents, split.silver, gold=(split.silver + 1) % 3)
    spec, idx = pt.get("dvd_cl"), np.arange(3)
    x = torch.from_numpy(split.images[idx].astype(np.float32) / 255)
    c = torch.from_numpy(cf[idx].astype(np.float32) / 255)
    for g in (1.0, 0.5, 0.0):
        imgs = pt.PretrainData(small_profile(**{"pretrain.cf_gain": g}), "dvd_cl", split=split, cf=cf).batch(idx, spec)["images"]
        torch.testing.assert_close(imgs[:, 0], x)
        torch.testing.assert_close(imgs[:, 1:], x[:, None] + g * (c - x[:, None]), rtol=0, atol=1e-6)
    assert torch.equal(imgs[:, 1:], x[:, None].expand_as(imgs[:, 1:]))  # g = 0: x itself, exactly
    gold = pt.PretrainData(small_profile(**{"pretrain.labels": "gold"}), "chexmask", split=split)
    assert np.array_equal(gold.batch(idx, pt.get("chexmask"))["silver"].numpy(), split.gold[idx])
    base = small_profile()
    for method in ("dvd_cl", "chexmask", "vader"):
        assert pt.pretrain_run(small_profile(**{"pretrain.cf_gain": 1.0, "pretrain.labels": "silver"}), method).key == \
            pt.pretrain_run(base, method).key
    assert pt.pretrain_run(small_profile(**{"pretrain.cf_gain": 0.5}), "dvd_cl").key != pt.pretrain_run(base, "dvd_cl").key
    assert pt.pretrain_run(small_profile(**{"pretrain.cf_gain": 0.5}), "chexmask").key == pt.pretrain_run(base, "chexmask").key
    assert pt.pretrain_run(small_profile(**{"pretrain.labels": "gold"}), "chexmask").key != pt.pretrain_run(base, "chexmask").key
    assert pt.pretrain_run(small_profile(**{"pretrain.labels": "gold"}), "dvd_cl").key == pt.pretrain_run(base, "dvd_cl").key
    with pytest.raises(ValueError, match="pretrain.labels='gold'"):
        pt.PretrainData(small_profile(**{"pretrain.labels": "gold"}), "chexmask", split=synthetic_split()[0])


def test_a_replicate_is_another_pretraining_seed_and_replicate_zero_is_the_profiles_run(runs):
    """``pretrain.replicate``: 0 keeps the run (key and seed) of the profile; r > 0 is a run of its own with
    another seed for the initialisation, batches, views and pixels (different weights from the same data and
    settings), reproducible, and fine-tuning None does not depend on it."""
    from cfcl.finetune import finetune_run

    base = small_profile(**{"pretrain.steps": 2})
    zero, one = small_profile(**{"pretrain.steps": 2, "pretrain.replicate": 0}), small_profile(**{"pretrain.steps": 2, "pretrain.replicate": 1})
    assert pt.pretrain_run(zero, "dvd_cl").key == pt.pretrain_run(base, "dvd_cl").key
    assert pt.pretrain_seed(zero) == base.seed and pt.pretrain_seed(one) not in (base.seed, pt.pretrain_seed(small_profile(**{"pretrain.replicate": 2})))
    assert pt.pretrain_run(one, "dvd_cl").key != pt.pretrain_run(base, "dvd_cl").key
    assert finetune_run(one, "none").key == finetune_run(base, "none").key
    assert finetune_run(one, "dvd_cl").key != finetune_run(base, "dvd_cl").key
    weights = {}
    for name, prof in (("zero", zero), ("one", one)):
        run = pt.pretrain(prof, "dvd_cl", progress=False, data=_data(prof, "dvd_cl"))
        weights[name] = load_checkpoint(run.artifact("model.pt"))["model"]
    assert any(not torch.equal(weights["zero"][k], weights["one"][k]) for k in weights["zero"])
