"""Shared by the benchmarks: synthetic data and the training steps they time.

Every step here calls the project's own code (:func:`cfcl.pretrain.prepare`,
:func:`cfcl.pretrain.forward_loss`, :func:`cfcl.finetune.augment_batch`,
:func:`cfcl.finetune.train_step`), so a benchmark times what a run does. The "bare" step is the
reference of every ratio: a plain supervised U-Net step (cross-entropy, no augmentation, AdamW) on
the same images x views, i.e. the same number of images through the same network.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.profiler import record_function

try:  # the installed project (or PYTHONPATH's, to time another version of it)
    import cfcl  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfcl import finetune as ft  # noqa: E402
from cfcl import pretrain as pt  # noqa: E402
from cfcl import views  # noqa: E402
from cfcl.config import Profile  # noqa: E402
from cfcl.data import ChestSplit  # noqa: E402
from cfcl.methods import get  # noqa: E402
from cfcl import models  # noqa: E402

try:
    from cfcl.optim import optimiser_step  # noqa: E402
except ImportError:  # a version of the project before cfcl.optim: its loops' step, as they wrote it
    def optimiser_step(loss: torch.Tensor, opt: torch.optim.Optimizer) -> tuple[None, bool]:
        opt.zero_grad(set_to_none=True)
        with record_function("cfcl::backward"):
            loss.backward()
        with record_function("cfcl::optimiser"):
            opt.step()
        return None, True

Step = Callable[[int], torch.Tensor]


def n_views(method: str) -> int:
    return {"cf": 4, "two": 2, "one": 1}[get(method).views]


def fake_data(n: int, size: int, method: str, prof: Profile) -> pt.PretrainData:
    """Random images and counterfactuals with two rectangular 'lungs' as silver masks."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    silver = np.zeros((n, size, size), np.uint8)
    silver[:, size // 4: 3 * size // 4, size // 6: size // 2 - 2] = 1
    silver[:, size // 4: 3 * size // 4, size // 2 + 2: 5 * size // 6] = 2
    cf = rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)
    parents = pd.DataFrame({"sex": np.zeros(n, int), "scanner": np.zeros(n, int), "effusion": np.zeros(n, int)})
    return pt.PretrainData(prof, method, split=ChestSplit("pretrain", images, parents, silver), cf=cf)


def network(prof: Profile, device: str = "cpu", channels_last: bool = False, lr: float = 1e-4):
    """The profile's U-Net (train mode) and its AdamW."""
    torch.manual_seed(0)
    net = models.network(prof.pretrain).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net.train()
    return net, torch.optim.AdamW(net.parameters(), lr=lr)


def _amp(device: str):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def _finish(loss: torch.Tensor, opt: torch.optim.Optimizer) -> torch.Tensor:
    optimiser_step(loss, opt)
    return loss.detach()


def method_step(net, opt, prof: Profile, method: str, device: str = "cpu", stream_above: int | str = "default") -> Step:
    """One pre-training step of ``method``: :func:`cfcl.pretrain.train_step`, the loop's own (fixed images).
    ``stream_above``: the loss's threshold of the streaming path (:mod:`cfcl.losses`; "default": the
    loss's own), to measure the effect of another default."""
    spec = get(method, pretrained=True)
    B = prof.pretrain.batch_size
    data = fake_data(max(B, 8), prof.data.image_size, method, prof)
    loss_fn = pt.make_loss(spec, prof)
    if stream_above != "default" and hasattr(loss_fn, "stream_above"):
        loss_fn.stream_above = stream_above
    batch = data.batch(np.arange(B), spec)

    if not hasattr(pt, "train_step"):  # an older version of the project: its loop body
        def step(i: int) -> torch.Tensor:
            prep = pt.prepare(batch, spec, prof, pt.step_generator(0, i))
            with _amp(device):
                loss = pt.forward_loss(net, prep, spec, loss_fn)
            return _finish(loss, opt)
        return step

    def step(i: int) -> torch.Tensor:
        return pt.train_step(net, opt, batch, spec, prof, pt.step_generator(0, i), loss_fn)

    return step


def bare_step(net, opt, prof: Profile, images: int, device: str = "cpu", channels_last: bool = False) -> Step:
    """A plain supervised U-Net step on ``images`` images (cross-entropy on the silver masks)."""
    size = prof.data.image_size
    data = fake_data(max(images, 8), size, "chexmask", prof)
    reps = -(-images // len(data))
    x = torch.from_numpy(np.tile(data.images, (reps, 1, 1))[:images].astype(np.float32) / 255)[:, None].to(device)
    y = torch.from_numpy(np.tile(data.silver, (reps, 1, 1))[:images].astype(np.int64)).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def step(i: int) -> torch.Tensor:
        with _amp(device):
            with record_function("cfcl::network"):
                logits = net(x)
            with record_function("cfcl::loss"):
                loss = F.cross_entropy(logits.float(), y)
        return _finish(loss, opt)

    return step


def finetune_step(net, opt, prof: Profile, device: str = "cpu") -> Step:
    """One step of :func:`cfcl.finetune.train_fold`: geometric augmentation of images and gold
    masks (one sampling grid, on the CPU as the loop does), cross-entropy + soft Dice, AdamW on
    ``device`` (bf16 autocast and channels_last on a GPU, in :func:`cfcl.finetune.train_step`)."""
    B, size = prof.finetune.batch_size, prof.data.image_size
    data = fake_data(max(B, 8), size, "chexmask", prof)
    x_all = torch.from_numpy(data.images[:B].astype(np.float32) / 255)[:, None]
    y_all = torch.from_numpy(data.silver[:B].astype(np.float32))[:, None]
    aug = views.AugmentConfig(**ft.FINETUNE_AUGMENT)
    gen = torch.Generator().manual_seed(0)

    if not hasattr(ft, "train_step"):  # an older version of the project: its inline loop body
        def step(i: int) -> torch.Tensor:
            M = views.random_geometry(len(x_all), size, aug, gen)
            x = views.warp(x_all, M, mode="bilinear")
            y = views.warp(y_all, M, mode="nearest")[:, 0].long()
            logits = net(x)
            return _finish(F.cross_entropy(logits, y) + ft.soft_dice_loss(logits, y), opt)
        return step

    def step(i: int) -> torch.Tensor:
        with record_function("cfcl::views"):
            x, y = ft.augment_batch(x_all, y_all, aug, gen)
        return ft.train_step(net, opt, x.to(device), y.to(device))

    return step
