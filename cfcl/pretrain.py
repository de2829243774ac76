"""One pre-training loop for all eight methods (paper sections 2.2 and 3; Table 2 rows).

A registry (:data:`METHODS`) says, for each method, which views it needs and which loss it
optimises:

=========  ======================================  ==========================  ==========
method     views                                   loss                        labels
=========  ======================================  ==========================  ==========
simclr     2 ordinary augmentations of x           global NT-Xent (SimCLR)     -
vader      2 ordinary augmentations of x           dense NT-Xent (VADeR)       -
dvd_cl     x + do(sc), do(pe), do(sc, pe)          DVD-CL (anchor = x)         -
mvd_cl     x + 3 counterfactuals                   MVD-CL (all views at once)  -
chexmask   1 augmentation of x                     cross-entropy on silver     silver
ssdcl      2 ordinary augmentations of x           SSDCL (Hu et al.)           silver
s_dvd_cl   x + 3 counterfactuals                   S-DVD-CL                    silver
s_mvd_cl   x + 3 counterfactuals                   S-MVD-CL                    silver
=========  ======================================  ==========================  ==========

Every view is augmented independently (random geometry as a 3x3 matrix, then intensity;
paper section 2.1) and pixels are tracked exactly through the matrices (:mod:`cfcl.views`).
``pixels_per_view`` original points (1,000 in the paper) are sampled inside the overlap of
the active views: anchor + target for the dual-view losses, all views for the multi-view ones
(paper section 3, "Sampling"). Silver labels of a sampled point are read from the factual
silver mask at its original location, so all views of a point share its label.

Counterfactual views come from :func:`cfcl.counterfactuals.get_counterfactuals`
(``pretrain.cf_source``: ``hvae`` by default, ``oracle`` for the phantom's exact ones).

Training: AdamW, linear warm-up then cosine decay, bf16 autocast on GPU, an atomic checkpoint
every ``checkpoint_every`` steps; a resumed run ends with the same weights as an uninterrupted
one on CPU because every random draw of step ``k`` comes from a generator seeded by
``(seed, k)``. Multi-GPU / multi-node through torch.distributed (``torchrun``, DDP): every rank
builds the same global batch and keeps its share, so the loss with ``negatives="image"`` equals
the single-process loss on the same global batch (BatchNorm statistics are per rank unless CUDA
SyncBatchNorm is used; ``freeze_bn`` exists for exact comparisons).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cfcl import losses, views
from cfcl.config import METHODS as METHOD_NAMES
from cfcl.config import Profile, get_profile
from cfcl.data import ChestSplit, data_fingerprint, load_split
from cfcl.models import build_model
from cfcl.paths import atomic_path, runs_dir


@dataclass(frozen=True)
class MethodSpec:
    """What a pre-training method needs. ``views``: "cf" (x + 3 counterfactuals), "two"
    (two ordinary augmentations of x) or "one"; ``pairing``: "dual", "multi", "global" or
    "segmentation"; ``supervised``: uses silver labels."""

    name: str
    views: str
    pairing: str
    supervised: bool
    make_loss: Callable[[Profile], nn.Module] | None


def _t(p: Profile) -> dict[str, Any]:
    return {"temperature": p.pretrain.temperature, "negatives": p.pretrain.negatives}


METHODS: dict[str, MethodSpec] = {
    "simclr": MethodSpec("simclr", "two", "global", False,
                         lambda p: losses.SimCLR(temperature=p.pretrain.temperature)),
    "vader": MethodSpec("vader", "two", "dual", False, lambda p: losses.DenseNTXent(**_t(p))),
    "dvd_cl": MethodSpec("dvd_cl", "cf", "dual", False, lambda p: losses.DVDCL(**_t(p))),
    "mvd_cl": MethodSpec("mvd_cl", "cf", "multi", False, lambda p: losses.MVDCL(**_t(p))),
    "chexmask": MethodSpec("chexmask", "one", "segmentation", True, None),
    # SSDCL draws its negatives from the whole batch, as Hu et al. do (REFERENCES section 5).
    "ssdcl": MethodSpec("ssdcl", "two", "multi", True,
                        lambda p: losses.SSDCL(temperature=p.pretrain.temperature, negatives="batch")),
    "s_dvd_cl": MethodSpec("s_dvd_cl", "cf", "dual", True, lambda p: losses.SDVDCL(**_t(p))),
    "s_mvd_cl": MethodSpec("s_mvd_cl", "cf", "multi", True, lambda p: losses.SMVDCL(**_t(p))),
}
assert tuple(METHODS) == METHOD_NAMES


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
class PretrainData:
    """Images, silver masks and (for counterfactual methods) the three counterfactuals."""

    def __init__(self, profile: Profile, method: str, split: ChestSplit | None = None,
                 cf: np.ndarray | None = None) -> None:
        split = split if split is not None else load_split(profile, "pretrain")
        self.images = split.images
        self.silver = split.silver
        self.cf = cf
        if METHODS[method].views == "cf" and cf is None:
            from cfcl.counterfactuals import get_counterfactuals

            self.cf = get_counterfactuals(profile, "pretrain", source=profile.pretrain.cf_source)
        if self.cf is not None and (self.cf.shape[0] != len(self.images) or self.cf.shape[2:] != self.images.shape[1:]):
            raise ValueError(f"counterfactuals have shape {self.cf.shape}, images {self.images.shape}")

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, idx: np.ndarray, spec: MethodSpec) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(np.asarray(self.images[idx], dtype=np.float32) / 255.0)  # (B, H, W)
        if spec.views == "cf":
            cf = torch.from_numpy(np.asarray(self.cf[idx], dtype=np.float32) / 255.0)  # (B, 3, H, W)
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
def prepare(batch: dict[str, torch.Tensor], spec: MethodSpec, profile: Profile,
            generator: torch.Generator) -> dict[str, Any]:
    """Augment every view and sample the tracked points of a (global) batch.

    Returns tensors indexed by image first, so a distributed rank can keep its share with
    :func:`take`: ``views`` (B, V, 1, H, W), ``M`` (B, V, 3, 3), ``silver`` (B, H, W), and for
    dense methods ``pts`` (B, P, N, 2) original points for each of the P point sets (one per
    anchor-target pair for "dual", one for "multi") with their silver ``labels`` (B, P, N).
    """
    imgs, silver = batch["images"], batch["silver"]
    B, V, H, W = imgs.shape
    vimgs, Ms = views.make_views(imgs, views.AugmentConfig(), generator)
    out: dict[str, Any] = {"views": vimgs, "M": Ms, "silver": silver}
    n = profile.pretrain.pixels_per_view
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


def _gather_views(emb: torch.Tensor, Ms: torch.Tensor, pts: torch.Tensor, which: list[int]) -> torch.Tensor:
    """Embeddings (B, len(which), N, D) of original points ``pts`` (B, N, 2) seen in the given views."""
    return torch.stack([views.gather(emb[:, v], views.apply(Ms[:, v], pts)) for v in which], dim=1)


def forward_loss(model: nn.Module, prep: dict[str, Any], spec: MethodSpec, loss_fn: nn.Module | None) -> torch.Tensor:
    """Run the network on the prepared views and evaluate the method's loss."""
    device = next(model.parameters()).device
    vimgs, Ms, silver = prep["views"].to(device), prep["M"].to(device), prep["silver"].to(device)
    B, V, _, H, W = vimgs.shape
    flat = vimgs.reshape(B * V, 1, H, W)
    if spec.pairing == "segmentation":
        lab = views.warp(silver[:, None].float(), Ms[:, 0], mode="nearest")[:, 0].long()
        return F.cross_entropy(model(flat, mode="segment").float(), lab)
    if spec.pairing == "global":
        z = model(flat, mode="global").float().reshape(B, V, -1)
        return loss_fn(z[:, 0], z[:, 1])
    emb = model(flat, mode="embed").float()
    emb = emb.reshape(B, V, *emb.shape[1:])
    pts, labels = prep["pts"].to(device), prep["labels"].to(device)
    if spec.pairing == "dual":
        pairs = [_gather_views(emb, Ms, pts[:, t - 1], [0, t]) for t in range(1, V)]
        anchor = torch.stack([p[:, 0] for p in pairs], 1)  # (B, T, N, D)
        target = torch.stack([p[:, 1] for p in pairs], 1)
        if spec.name == "vader":
            return loss_fn(anchor[:, 0], target[:, 0])
        if spec.supervised:
            return loss_fn(anchor, target, labels, labels)
        return loss_fn(anchor, target)
    z = _gather_views(emb, Ms, pts[:, 0], list(range(V)))  # (B, V, N, D)
    if spec.supervised:
        return loss_fn(z, labels[:, :1].expand(B, V, labels.shape[-1]))
    return loss_fn(z)


def step_generator(seed: int, step: int) -> torch.Generator:
    """The generator of every random draw of ``step`` (so a resumed run repeats them exactly)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, step]).generate_state(1)[0]))


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def run_signature(profile: Profile, method: str) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed or reused: method, data and pre-training config."""
    d = profile.to_dict()
    sig = {"method": method, "seed": profile.seed, "data.fingerprint": data_fingerprint(profile)}
    sig.update({f"data.{k}": v for k, v in d["data"].items()})
    sig.update({f"pretrain.{k}": v for k, v in d["pretrain"].items() if k not in ("checkpoint_every", "num_workers")})
    if METHODS[method].views == "cf" and profile.pretrain.cf_source == "hvae":
        sig.update({f"hvae.{k}": v for k, v in d["hvae"].items()})
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sig.items()}


def check_signature(stored: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    diff = [k for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if diff:
        k = diff[0]
        raise ValueError(f"checkpoint {path} was made with {k}={stored.get(k)!r}, this run has "
                         f"{k}={current.get(k)!r} ({len(diff)} setting(s) differ: {', '.join(diff[:5])}); "
                         f"delete it or use the matching configuration")


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def run_dir(profile: Profile, method: str) -> Path:
    d = runs_dir(profile.name) / "pretrain" / method
    d.mkdir(parents=True, exist_ok=True)
    return d


def final_checkpoint(profile: Profile, method: str) -> Path:
    return run_dir(profile, method) / "model.pt"


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
             freeze_bn: bool = False, device: str | None = None, data: PretrainData | None = None) -> Path:
    """Pre-train ``method`` under ``profile``; return the final checkpoint path.

    Idempotent: a finished run with the same signature is returned as is; an interrupted one
    resumes from its last checkpoint. ``stop_after`` ends the run early after that many steps
    (to simulate an interruption); ``freeze_bn`` keeps BatchNorm in eval mode (for exact
    comparisons across process counts); ``data`` replaces the profile's pre-training data.
    """
    if method not in METHODS:
        raise KeyError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    spec, cfg = METHODS[method], profile.pretrain
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if cfg.batch_size % world:
        raise ValueError(f"pretrain.batch_size={cfg.batch_size} is not divisible by the {world} processes")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and distributed:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    out = run_dir(profile, method)
    final, last = out / "model.pt", out / "last.pt"
    sig = run_signature(profile, method)
    if final.exists():
        check_signature(load_checkpoint(final)["signature"], sig, final)
        return final

    torch.manual_seed(profile.seed)
    net = build_model(cfg.encoder, cfg.embed_dim).to(device)
    if device.startswith("cuda"):
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    start = 0
    if last.exists():
        ck = load_checkpoint(last)
        check_signature(ck["signature"], sig, last)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start = int(ck["step"])

    model: nn.Module = net
    if distributed:
        if device.startswith("cuda"):
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        # Each method uses some heads only (e.g. no segmentation head while contrasting).
        model = nn.parallel.DistributedDataParallel(net, device_ids=None if device == "cpu" else [device],
                                                    find_unused_parameters=True)
    data = data if data is not None else PretrainData(profile, method)
    loss_fn = spec.make_loss(profile) if spec.make_loss else None
    log_path = out / "losses.csv"
    rows = _read_log(log_path, upto=start)
    end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
    bar = tqdm(range(start, end), desc=f"pretrain {method}", disable=not progress or rank != 0,
               initial=start, total=cfg.steps)
    model.train()
    if freeze_bn:
        _set_bn_eval(model)
    use_amp = device.startswith("cuda")
    for step in bar:
        idx = batch_indices(len(data), cfg.batch_size, step, profile.seed)
        # Every rank augments and samples the same global batch, then keeps its share.
        prep = take(prepare(data.batch(idx, spec), spec, profile, step_generator(profile.seed, step)),
                    slice(rank, None, world))
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            loss = forward_loss(model, prep, spec, loss_fn)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        value = loss.detach()
        if distributed:
            dist.all_reduce(value)
            value = value / world
        rows.append({"step": step + 1, "loss": float(value), "lr": sched.get_last_lr()[0]})
        bar.set_postfix(loss=f"{float(value):.4f}")
        done = step + 1
        if rank == 0 and (done % cfg.checkpoint_every == 0 or done == end):
            save_checkpoint(last, {"model": net.state_dict(), "optimizer": opt.state_dict(),
                                   "scheduler": sched.state_dict(), "step": done, "signature": sig})
            _write_log(log_path, rows)
    if rank == 0 and end == cfg.steps:
        save_checkpoint(final, {"model": net.state_dict(), "step": cfg.steps, "signature": sig})
        _write_log(log_path, rows)
    if distributed:
        dist.barrier()
    return final


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


def read_losses(profile: Profile, method: str):
    """The loss log of a run as a DataFrame (step, loss, lr)."""
    import pandas as pd

    return pd.read_csv(run_dir(profile, method) / "losses.csv")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Dense (counterfactual) contrastive pre-training of a U-Net.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--method", required=True, choices=list(METHODS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides, e.g. pretrain.steps=100 data.source=padchest")
    args = ap.parse_args(argv)
    overrides = {}
    for kv in args.set:
        k, _, v = kv.partition("=")
        overrides[k] = _parse_value(v)
    profile = get_profile(args.profile, **overrides)
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    try:
        path = pretrain(profile, args.method)
        if not dist.is_initialized() or dist.get_rank() == 0:
            print(path)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _parse_value(v: str) -> Any:
    import json

    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


if __name__ == "__main__":
    main()
