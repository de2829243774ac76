"""Every stage on the GPU (issue 10, section 5): skipped where no GPU is visible (CI), run on a lent one.

The stages pick :func:`cfcl.device.default_device` and keep every random draw on CPU generators, so a
GPU run draws the same noise, views and batches as a CPU run of the same profile; what differs is
round-off (TF32 convolutions, bf16 autocast of the U-Net). These tests run the same computation on
both devices and bound that difference, and run the tiny pipeline's stages end to end on the GPU.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cfcl import finetune as ft
from cfcl.counterfactual.generate import counterfactual
from cfcl.counterfactual.hvae import HVAE
from cfcl.device import default_device
from cfcl.models import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")


def test_default_device_is_the_gpu():
    assert default_device() == "cuda"


def _hvae() -> HVAE:
    torch.manual_seed(0)
    return HVAE(32, [8, 8], [2, 2], 1)


def test_hvae_loss_same_noise_on_both_devices():
    """A CPU generator drives the GPU model: the same latent noise, so the same loss up to round-off."""
    cpu = _hvae()
    gpu = copy.deepcopy(cpu).cuda()
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    pa = torch.tensor([[0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    a = cpu(x, pa, beta=1.0, generator=torch.Generator().manual_seed(3))["loss"]
    b = gpu(x.cuda(), pa.cuda(), beta=1.0, generator=torch.Generator().manual_seed(3))["loss"]
    other = cpu(x, pa, beta=1.0, generator=torch.Generator().manual_seed(4))["loss"]
    assert abs(float(a) - float(b)) < 1e-2 * abs(float(a) - float(other)) + 1e-4


def test_counterfactual_on_gpu_returns_on_the_input_device():
    model = _hvae().cuda().eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    pa = torch.tensor([[0, 1, 0], [1, 0, 1]], dtype=torch.float32)
    null = counterfactual(model, x, pa, pa)
    assert null.device.type == "cpu"
    assert torch.allclose(null, x.clamp(-1, 1), atol=1e-4)  # the null intervention returns x


def test_finetune_step_close_on_both_devices():
    """One fine-tuning step from the same weights: bf16 autocast on the GPU, float32 on the CPU."""
    torch.manual_seed(0)
    cpu = build_model("resnet18", 8)
    gpu = copy.deepcopy(cpu).cuda().to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 64, 64)
    y = torch.randint(0, 3, (4, 64, 64))
    losses = []
    for net, dev in ((cpu, "cpu"), (gpu, "cuda")):
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        losses.append([float(ft.train_step(net, opt, x.to(dev), y.to(dev))) for _ in range(3)])
    assert np.allclose(losses[0], losses[1], rtol=2e-2), losses


def test_tiny_pipeline_runs_on_the_gpu(tiny):
    """Every training stage of a tiny profile on the GPU; the checkpoints load on the CPU."""
    from cfcl import pretrain as pt
    from cfcl.counterfactual.cf_finetune import finetune_counterfactuals
    from cfcl.counterfactual.generate import generate
    from cfcl.counterfactual.hvae_train import train_hvae
    from cfcl.counterfactual.predictors import train_classifiers
    from cfcl.runs import load_checkpoint

    prof = tiny()
    train_hvae(prof, progress=False)
    train_classifiers(prof, progress=False)
    finetune_counterfactuals(prof, progress=False)
    cf = generate(prof, "pretrain", progress=False)
    assert cf.dtype == np.uint8 and cf.shape[1] == 3
    run = pt.pretrain(prof, "s_mvd_cl", progress=False)
    assert all(v.device.type == "cpu" for v in load_checkpoint(run.artifact("model.pt"))["model"].values())
    per_image = ft.finetune(prof, "s_mvd_cl", progress=False)
    assert np.isfinite(per_image["dsc"]).all() and per_image["dsc"].mean() > 0


def test_compiled_pretraining_on_the_gpu(tiny, tmp_path, monkeypatch):
    """``pretrain.compile`` (1.16x a DVD-CL step on an H200): the compiled loop's first loss matches the eager
    loop's up to round-off, and its checkpoint holds the plain network's keys."""
    from cfcl import pretrain as pt
    from cfcl.runs import load_checkpoint

    losses = []
    for compiled in (False, True):
        monkeypatch.setenv("CFCL_RUNS", str(tmp_path / f"runs-{compiled}"))  # one key (compile is not in it)
        prof = tiny({"pretrain.cf_source": "oracle", "pretrain.compile": compiled})
        run = pt.pretrain(prof, "dvd_cl", progress=False)
        losses.append(pt.read_losses(prof, "dvd_cl")["loss"].to_numpy())
        assert not any(k.startswith("_orig_mod") for k in load_checkpoint(run.artifact("model.pt"))["model"])
    assert np.allclose(losses[0][0], losses[1][0], rtol=2e-2), losses
