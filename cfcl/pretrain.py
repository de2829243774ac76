"""One pre-training loop for all eight methods (paper sections 2.2 and 3; Table 2 rows).

The method registry (:mod:`cfcl.methods`) says, for each method, which views it needs, how its
pixels pair up and which loss (:mod:`cfcl.losses`) it optimises.

Every view is augmented independently (random geometry as a 3x3 matrix, then intensity;
paper section 2.1) and pixels are tracked exactly through the matrices (:mod:`cfcl.views`).
``pixels_per_view`` original points (1,000 in the paper) are sampled inside the overlap of
the active views: anchor + target for the dual-view losses, all views for the multi-view ones
(paper section 3, "Sampling"). Silver labels of a sampled point are read from the factual
silver mask at its original location, so all views of a point share its label.

Counterfactual views come from :func:`cfcl.counterfactual.generate.get_counterfactuals`
(``pretrain.cf_source``: ``hvae`` by default, ``oracle`` for the phantom's exact ones, ``identity`` for x
itself), mixed with x as ``x + g (cf - x)`` by ``pretrain.cf_gain`` (1: the counterfactuals; the dose
ablation). ``pretrain.labels``: the supervised methods read silver masks (paper) or, on the phantom, gold.

Training: AdamW, linear warm-up then cosine decay, bf16 autocast on GPU, an atomic checkpoint
(``last.pt``) every ``checkpoint_every`` steps; a resumed run ends with the same weights as an
uninterrupted one on CPU because every random draw of step ``k`` comes from a generator seeded by
``(seed, k)``. ``pretrain.compile`` runs the network under ``torch.compile`` (off by default: it does not
pay on CPU, ``benchmarks/results/network.md``; ``benchmarks/bench_gpu.py`` measures it on a GPU). Each
method's pre-training is one run of the run layer (:mod:`cfcl.runs`):
``runs/<profile>/pretrain/<method>-<key>/`` with ``model.pt`` and ``losses.csv``; the key covers
the method, the pre-training settings (``cf_source`` and ``cf_gain`` only for the counterfactual methods,
``labels`` only for the supervised ones, ``cf_gain``, ``labels`` and ``replicate`` only away from their neutral
values 1, "silver" and 0 so that runs made before they existed stay valid; ``checkpoint_every``, ``num_workers``,
``compile`` and ``seeds`` never), the seed, the data and, with HVAE views, the
counterfactual run. It never makes its upstream: missing counterfactuals are an error naming the
command that makes them. Multi-GPU / multi-node through torch.distributed (``torchrun``, DDP): every rank
builds the same global batch and keeps its share, so the loss with ``negatives="image"`` equals
the single-process loss on the same global batch (BatchNorm statistics are per rank unless CUDA
SyncBatchNorm is used; ``freeze_bn`` exists for exact comparisons).
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from cfcl import losses, views
from cfcl.cli import entry_point, profile_of, profile_parser
from cfcl.config import Profile
from cfcl.counterfactual.generate import get_counterfactuals
from cfcl.data import ChestSplit, load_split
from cfcl.device import default_device
from cfcl.methods import METHODS, Method, get
from cfcl.models import network
from cfcl.optim import optimiser_step
from cfcl.paths import atomic_path
from cfcl.progress import tqdm
from cfcl.read.pretrain import (ADDED_LATER, NOT_TRAINING, load_pretrained_state,  # noqa: F401  (re-exported)
                                pretrain_run, read_losses)
from cfcl.runs import Run, resume, save_checkpoint


def make_loss(method: Method, profile: Profile) -> nn.Module | None:
    """The method's loss module (None for the segmentation baseline)."""
    if method.loss is None:
        return None
    cls = getattr(losses, method.loss)
    if method.pairing == "global":
        return cls(temperature=profile.pretrain.temperature)
    return cls(temperature=profile.pretrain.temperature, negatives=method.negatives or profile.pretrain.negatives)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
class PretrainData:
    """Images, silver masks and (for counterfactual methods) the three counterfactuals."""

    def __init__(self, profile: Profile, method: str, split: ChestSplit | None = None,
                 cf: np.ndarray | None = None) -> None:
        split = split if split is not None else load_split(profile, "pretrain")
        self.images = split.images
        self.silver = split.silver if profile.pretrain.labels == "silver" else split.gold
        if self.silver is None:
            raise ValueError(f"pretrain.labels={profile.pretrain.labels!r}: the pre-training split of data source "
                             f"{profile.data.source!r} has no such masks")
        self.gain = profile.pretrain.cf_gain
        self.cf = cf
        if get(method, pretrained=True).views == "cf" and cf is None:
            self.cf = get_counterfactuals(profile, "pretrain", source=profile.pretrain.cf_source)
        if self.cf is not None and (self.cf.shape[0] != len(self.images) or self.cf.shape[2:] != self.images.shape[1:]):
            raise ValueError(f"counterfactuals have shape {self.cf.shape}, images {self.images.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: np.ndarray, spec: Method) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32) / 255.0)  # (B, H, W)
        if spec.views == "cf":
            cf = torch.from_numpy(np.asarray(self.cf[idx], dtype=np.float32) / 255.0)  # (B, 3, H, W)
            if self.gain != 1.0:  # the dose ablation: x + g (cf - x)
                cf = x[:, None] + self.gain * (cf - x[:, None])
            imgs = torch.cat([x[:, None], cf], dim=1)
        elif spec.views == "two":
            imgs = torch.stack([x, x], dim=1)
        else:
            imgs = x[:, None]
        silver = torch.from_numpy(np.asarray(self.silver[idx], dtype=np.int64))
        return {"images": imgs, "silver": silver}


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Indices of the global batch of ``step``: consecutive slices of per-epoch permutations."""
    per_epoch = max(n // batch_size, 1)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    idx = perm[k * batch_size:(k + 1) * batch_size]
    if len(idx) < batch_size:  # fewer images than a batch: wrap around
        idx = np.resize(perm, batch_size)
    return idx


# --------------------------------------------------------------------------------------------
# One step: augmentation and sampling (no network), then the loss
# --------------------------------------------------------------------------------------------
def prepare(batch: dict[str, torch.Tensor], spec: Method, profile: Profile,
            generator: torch.Generator) -> dict[str, Any]:
    """Augment every view and sample the tracked points of a (global) batch.

    Returns tensors indexed by image first, so a distributed rank can keep its share with
    :func:`take`: ``views`` (B, V, 1, H, W), ``M`` (B, V, 3, 3), ``silver`` (B, H, W), and for
    dense methods ``pts`` (B, P, N, 2) original points for each of the P point sets (one per
    anchor-target pair for "dual", one for "multi") with their silver ``labels`` (B, P, N).
    """
    imgs, silver = batch["images"], batch["silver"]
    B, V, H, W = imgs.shape
    with record_function("cfcl::views"):
        vimgs, Ms = views.make_views(imgs, views.AugmentConfig(), generator)
    out: dict[str, Any] = {"views": vimgs, "M": Ms, "silver": silver}
    n = profile.pretrain.pixels_per_view
    with record_function("cfcl::sampling"):
        if spec.pairing == "dual":
            pts = [views.sample_points(Ms, H, n, generator, active=(0, t)) for t in range(1, V)]
        elif spec.pairing == "multi":
            pts = [views.sample_points(Ms, H, n, generator, active=None)]
        else:
            return out
        out["pts"] = torch.stack(pts, dim=1)
        out["labels"] = torch.stack([views.labels_at(silver, p) for p in pts], dim=1)
    return out


def take(prepared: dict[str, Any], idx: slice | torch.Tensor) -> dict[str, Any]:
    """Keep the images ``idx`` of a prepared batch (a distributed rank's share)."""
    return {k: v[idx] for k, v in prepared.items()}


class _GatherBatch(torch.autograd.Function):
    """Concatenate every rank's share of the batch into the global batch, with gradient.

    Rank ``r`` holds images ``r, r + world, ...`` (:func:`take`), so the shares are interleaved back
    into the global order. Every rank then evaluates the same loss on the same global tensor, so the
    gradient reaching this Function is the same on every rank: each rank keeps its own images' part
    (no communication in the backward) times ``world``, which DDP's gradient averaging divides out
    again: the weights get the gradient of the global-batch loss."""

    @staticmethod
    def forward(ctx, local: torch.Tensor) -> torch.Tensor:
        ctx.world, ctx.rank = dist.get_world_size(), dist.get_rank()
        return _all_gather(local)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.unflatten(0, (-1, ctx.world))[:, ctx.rank]
        return grad * ctx.world


def _all_gather(local: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local.contiguous())
    return torch.stack(parts, dim=1).flatten(0, 1)  # rank r holds images r, r + world, ...


def gather_batch(local: torch.Tensor) -> torch.Tensor:
    """The global batch of a per-rank tensor (images first) under torch.distributed, with gradient
    (:class:`_GatherBatch`); the tensor itself in one process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    if not local.requires_grad:
        return _all_gather(local)  # labels
    return _GatherBatch.apply(local)


def view_points(Ms: torch.Tensor, pts: torch.Tensor, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each view is read, as flat view points ``(P, 2)`` and the index ``(P,)`` of their view
    in the flattened ``(B * V)`` views, for ``Ms (B, V, 3, 3)`` and the original points
    ``pts (B, T, N, 2)`` of :func:`prepare`.

    "multi": every view at the N points, image by image, view by view (reshapes to (B, V, N)).
    "dual" (T = V - 1 anchor/target pairs): per image, the anchor view 0 at the points of every
    pair, then target view ``t`` at the points of pair ``t`` (reshapes to (B, 2, T, N): anchor
    rows, then target rows)."""
    B, V = Ms.shape[:2]
    base = torch.arange(B, device=Ms.device)[:, None] * V  # flat index of each image's view 0
    if pairing == "multi":
        N = pts.shape[2]
        q = views.apply(Ms, pts[:, :1])  # (B, V, N, 2)
        image = (base + torch.arange(V, device=Ms.device)).repeat_interleave(N, dim=1)  # (B, V * N)
        return q.reshape(-1, 2), image.reshape(-1)
    T, N = pts.shape[1:3]
    anchor = views.apply(Ms[:, :1], pts)  # (B, T, N, 2)
    targets = views.apply(Ms[:, 1:], pts)  # (B, T, N, 2): view t + 1 at the points of pair t
    q = torch.stack([anchor, targets], dim=1)  # (B, 2, T, N, 2)
    image = torch.cat([base.expand(B, T * N), (base + 1 + torch.arange(T, device=Ms.device)).repeat_interleave(N, 1)], 1)
    return q.reshape(-1, 2), image.reshape(-1)


def forward_loss(model: nn.Module, prep: dict[str, Any], spec: Method, loss_fn: nn.Module | None) -> torch.Tensor:
    """Run the network on the prepared views and evaluate the method's loss.

    Dense methods read the embeddings only at the tracked points (``mode="embed_at"``, equal to
    reading the full embedding map up to round-off: :meth:`cfcl.models.CFCLNet.embed_at`), every
    view in one call. Under torch.distributed the contrastive losses see the global batch
    (:func:`gather_batch`): batch negatives (SSDCL, SimCLR) and the mean over valid anchors
    (supervised losses) are those of the one-process run on the same global batch.
    """
    device = next(model.parameters()).device
    vimgs, Ms, silver = prep["views"].to(device), prep["M"].to(device), prep["silver"].to(device)
    B, V, _, H, W = vimgs.shape
    flat = vimgs.reshape(B * V, 1, H, W)
    if spec.pairing == "segmentation":
        with record_function("cfcl::views"):
            lab = views.warp(silver[:, None].float(), Ms[:, 0], mode="nearest")[:, 0].long()
        with record_function("cfcl::network"):
            logits = model(flat, mode="segment")
        with record_function("cfcl::loss"):
            return F.cross_entropy(logits.float(), lab)
    if spec.pairing == "global":
        with record_function("cfcl::network"):
            z = model(flat, mode="global")
        with record_function("cfcl::loss"):
            z = gather_batch(z.float().reshape(B, V, -1))
            return loss_fn(z[:, 0], z[:, 1])
    pts, labels = prep["pts"].to(device), prep["labels"].to(device)
    with record_function("cfcl::gather"):
        q, image = view_points(Ms, pts, spec.pairing)
    with record_function("cfcl::network"):
        feats = model(flat, mode="embed_at", points=q, image=image)  # (P, D)
    with record_function("cfcl::loss"):
        T, N = pts.shape[1:3]
        labels = gather_batch(labels)
        if spec.pairing == "dual":
            feats = gather_batch(feats.float().view(B, 2, T, N, -1))
            anchor, target = feats[:, 0], feats[:, 1]  # (B, T, N, D)
            if spec.name == "vader":
                return loss_fn(anchor[:, 0], target[:, 0])
            if spec.supervised:
                return loss_fn(anchor, target, labels, labels)
            return loss_fn(anchor, target)
        z = gather_batch(feats.float().view(B, V, N, -1))  # (B, V, N, D)
        if spec.supervised:
            return loss_fn(z, labels[:, :1].expand(z.shape[0], V, N))
        return loss_fn(z)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, batch: dict[str, torch.Tensor], spec: Method,
               profile: Profile, generator: torch.Generator, loss_fn: nn.Module | None,
               share: slice = slice(None)) -> torch.Tensor:
    """One optimisation step on a global ``batch`` (:meth:`PretrainData.batch`); returns the loss.

    The batch moves to the model's device first, so on a GPU the views are rendered and the points
    sampled there (the random draws still come from the CPU ``generator``, so they are the same on
    every device); every rank augments and samples the same global batch, then keeps its
    ``share`` (:func:`take`). bf16 autocast on CUDA."""
    device = next(model.parameters()).device
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    prep = take(prepare(batch, spec, profile, generator), share)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = forward_loss(model, prep, spec, loss_fn)
    optimiser_step(loss, opt)
    return loss.detach()


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of ``step`` (so a resumed run repeats them exactly)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def pretrain_seed(profile: Profile) -> int:
    """The seed of pre-training's random draws (initialisation, batches, views, sampled pixels):
    ``profile.seed`` for replicate 0 (the profile's run, unchanged since replicates exist), for replicate
    ``r > 0`` a seed drawn from ``(profile.seed, r)`` (``pretrain.replicate``; the replicate ablation)."""
    r = profile.pretrain.replicate
    if r == 0:
        return profile.seed
    return int(np.random.SeedSequence([profile.seed, 41, r]).generate_state(1)[0] % 2 ** 31)


def _lr_lambda(cfg) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / max(cfg.warmup_steps, 1)
        progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return f


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def pretrain(profile: Profile, method: str, progress: bool = True, stop_after: int | None = None,
             freeze_bn: bool = False, device: str | None = None, data: PretrainData | None = None) -> Run:
    """Pre-train ``method`` under ``profile``; return its run (``run.artifact("model.pt")``).

    A finished run is verified and returned without work; an interrupted one resumes from its
    last checkpoint. ``stop_after`` ends the run early after that many steps (to simulate an
    interruption); ``freeze_bn`` keeps BatchNorm in eval mode (for exact comparisons across
    process counts); ``data`` replaces the profile's pre-training data (tests).
    Under torch.distributed every rank calls this; rank 0 holds the run's lock and writes.
    """
    spec, cfg = get(method, pretrained=True), profile.pretrain
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world:
        raise ValueError(f"setting pretrain.batch_size={cfg.batch_size} is not divisible by the {world} processes")
    run = pretrain_run(profile, method)
    if run.is_finished():
        return run.require()
    with (run.claim() if rank == 0 else contextlib.nullcontext()):
        finished = [run.is_finished()]
        if distributed:
            dist.broadcast_object_list(finished, src=0)
        if not finished[0]:
            _train(profile, spec, run, rank, world, distributed, progress, stop_after, freeze_bn, device, data)
    if distributed:
        dist.barrier()
    return run.require() if run.is_finished() else run


def _train(profile: Profile, spec: Method, run: Run, rank: int, world: int, distributed: bool, progress: bool,
           stop_after: int | None, freeze_bn: bool, device: str | None, data: PretrainData | None) -> None:
    cfg, method = profile.pretrain, spec.name
    device = device or default_device()
    if device == "cuda" and distributed:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    data = data if data is not None else PretrainData(profile, method)
    started = time.perf_counter()
    seed = pretrain_seed(profile)
    torch.manual_seed(seed)
    net = network(cfg).to(device)
    if device.startswith("cuda"):
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    start, seconds = 0, 0.0
    last = run.path("last.pt")
    ck = resume(run, model=net, optimizer=opt, scheduler=sched)
    if ck is not None:
        start, seconds = int(ck["step"]), float(ck.get("seconds", 0.0))

    model: nn.Module = net
    if distributed:
        if device.startswith("cuda"):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        # Each method uses some heads only (e.g. no segmentation head while contrasting).
        model = nn.parallel.DistributedDataParallel(net, device_ids=None if device == "cpu" else [device],
                                                    find_unused_parameters=True)
    if cfg.compile:  # the same computation up to round-off (benchmarks/bench_network.py, bench_gpu.py)
        model = torch.compile(model)
    loss_fn = make_loss(spec, profile)
    log_path = run.path("losses.csv")
    rows = _read_log(log_path, upto=start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), desc=f"pretrain {method}", disable=not progress or rank != 0,
               initial=start, total=cfg.steps)
    model.train()
    if freeze_bn:
        _set_bn_eval(model)
    for step in bar:
        idx = batch_indices(len(data), cfg.batch_size, step, seed)
        value = train_step(model, opt, data.batch(idx, spec), spec, profile, step_generator(seed, step),
                           loss_fn, share=slice(rank, None, world))
        sched.step()
        if distributed:
            dist.all_reduce(value)
            value = value / world
        rows.append({"step": step + 1, "loss": float(value), "lr": sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{float(value):.4f}")
        done = step + 1
        if rank == 0 and (done % cfg.checkpoint_every == 0 or done == end):
            elapsed = seconds + time.perf_counter() - started
            save_checkpoint({"model": net.state_dict(), "optimizer": opt.state_dict(),
                             "scheduler": sched.state_dict(), "step": done, "seconds": elapsed}, last)
            _write_log(log_path, rows)
    if rank == 0 and end == cfg.steps:
        save_checkpoint({"model": net.state_dict(), "step": cfg.steps, "method": method}, run.path("model.pt"))
        _write_log(log_path, rows)
        run.finish(["model.pt", "losses.csv"], seconds + time.perf_counter() - started)
        last.unlink(missing_ok=True)


def _read_log(path: Path, upto: int) -> list[dict[str, float]]:
    if not path.exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f) if float(r["step"]) <= upto]


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["step", "loss", "lr"])
            w.writeheader()
            for r in rows:
                w.writerow({"step": int(r["step"]), "loss": r["loss"], "lr": r["lr"]})


@entry_point
def main(argv: list[str] | None = None) -> None:
    ap = profile_parser("python -m cfcl.pretrain", "Dense (counterfactual) contrastive pre-training of a U-Net.",
                        set_help="settings, e.g. pretrain.steps=100 pretrain.cf_source=oracle")
    ap.add_argument("--method", required=True, choices=[m for m in METHODS if METHODS[m].pretrained])
    args = ap.parse_args(argv)
    profile = profile_of(args)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        run = pretrain(profile, args.method)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(run.folder)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
