"""The GPU path at the paper's scale: images/s per method, peak memory, fraction of the GPU's peak
(issue 10, section 5). One script, a few minutes on one GPU:

    python benchmarks/bench_gpu.py                  # paper profile: 224 px, ResNet50, 1,000 px/view, batch 32
    python benchmarks/bench_gpu.py --no-compile     # without the torch.compile comparison
    python benchmarks/bench_gpu.py --dry-run        # on CPU, tiny counts (tests/test_paper_dryrun.py runs it)

Every pre-training method runs :func:`cfcl.pretrain.train_step` (the loop's own step: the views
rendered and the points sampled on the GPU, bf16 autocast, the network in channels_last) on a
fixed synthetic batch; a bare U-Net step (cross-entropy, same network, same settings) on the same
images x views is the reference. Printed and written (``--out``, default
``benchmarks/results/gpu.md``) per method: images/s (base images, each with all its views),
time ratio to the bare step, peak memory (``torch.cuda.max_memory_allocated``), and the fraction of
the GPU's dense bf16 peak reached by the U-Net part: the U-Net's FLOPs per step
(``FlopCounterMode``, forward + backward of the B x V images) over the step time, over the peak of
the GPU named by ``torch.cuda.get_device_name`` (table :data:`PEAK_BF16`). With ``--compile``
(default on a GPU) the bare step and one dense method also run under ``torch.compile`` and the
compile time is reported, to say whether ``pretrain.compile`` should be on for the paper profile.

The other stages run on the same device (:func:`cfcl.device.default_device`), so their steps are
timed too (``--no-stages`` leaves them out): an HVAE ELBO step and its validation forward, a step of
counterfactual fine-tuning, counterfactual generation (all three interventions), a fine-tuning step
and the fine-tuned model's prediction, each with the number of such calls in the profile's run. That
gives the projected device time of ``make reproduce`` at the profile, stage by stage (the parent
predictors, the data and the evaluation notebooks are left out: small or CPU work).
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import steps as S  # noqa: E402
from cfcl import finetune as ft  # noqa: E402
from cfcl import pretrain as pt  # noqa: E402
from cfcl.config import get_profile  # noqa: E402
from cfcl.methods import FINETUNE_METHODS, PRETRAIN_METHODS, get  # noqa: E402
from cfcl.paths import atomic_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"

#: Dense bf16 peak (FLOP/s, no sparsity) by a substring of the device name; first match wins.
PEAK_BF16 = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
             ("4090", 165e12), ("A10", 125e12))
DRY_RUN = ("data.image_size=32 pretrain.batch_size=2 pretrain.pixels_per_view=64 pretrain.embed_dim=16 "
           "hvae.widths=[8,8,8,8,8,8,8] hvae.batch_size=2 hvae.cf_batch_size=2 finetune.batch_size=2")


def peak_flops(name: str) -> float | None:
    for key, peak in PEAK_BF16:
        if key in name:
            return peak
    return None


def unet_flops(net, prof, images: int, device: str) -> float:
    """FLOPs of forward + backward of the U-Net (embedding head included) on ``images`` images."""
    size = prof.data.image_size
    x = torch.rand(images, 1, size, size, device=device)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            out = net(x, mode="segment")
        out.float().sum().backward()
    net.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def _mb(mem: float) -> str:
    return "" if mem != mem else f"{mem:.0f}"  # nan (CPU): not measured


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(step, device: str, steps: int, warmup: int) -> tuple[float, float, float]:
    """(median seconds per step, peak memory MB, seconds of the first call: compilation)."""
    _sync(device)
    t0 = time.perf_counter()
    step(0)
    _sync(device)
    first = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step(warmup + i)
        _sync(device)
        times.append(time.perf_counter() - t0)
    mem = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else float("nan")
    return statistics.median(times), mem, first


def stage_steps(prof, device: str):
    """``[(stage, step, images per call, calls in the profile's run)]`` for the stages other than
    pre-training, each step the stage's own code on synthetic inputs of the profile's sizes."""
    from cfcl.counterfactual.cf_finetune import CfStepConfig, cf_step, make_optimizers
    from cfcl.counterfactual.generate import all_interventions
    from cfcl.counterfactual.hvae import HVAE
    from cfcl.counterfactual.hvae_train import train_step as hvae_step
    from cfcl.counterfactual.predictors import ParentClassifier

    hv, d, f = prof.hvae, prof.data, prof.finetune
    size, bs = d.image_size, hv.batch_size
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    hvae = HVAE(size, hv.widths, hv.z_dims, hv.blocks_per_res, stem_stride=hv.stem_stride).to(device)
    ema = copy.deepcopy(hvae).eval()
    opt = torch.optim.AdamW(hvae.parameters(), lr=hv.lr, foreach=True)
    x = torch.rand(bs, 1, size, size, device=device) * 2 - 1
    pa = (torch.rand(bs, 3) < 0.5).float().to(device)
    cf_pa = 1.0 - pa
    steps_per_epoch = math.ceil(d.n_pretrain / bs)

    def elbo(i):
        return hvae_step(hvae, ema, opt, x, pa, hv.beta, hv.grad_clip, hv.grad_skip, hv.ema_rate, generator=gen, step=i)

    @torch.no_grad()
    def validate(i):
        hvae.eval()
        return hvae(x, pa, beta=hv.beta, generator=gen)["loss"]

    predictor = ParentClassifier().to(device).eval()
    lmbda = torch.nn.Parameter(torch.zeros(1, device=device))
    cf_opt, lag_opt = make_optimizers(hvae, lmbda, hv.cf_lr, hv.cf_lr_lagrange)
    cf_cfg = CfStepConfig.from_profile(prof)

    def cf(i):
        return cf_step(hvae, ema, predictor, cf_opt, lag_opt, lmbda, x, pa, cf_pa, 1.0, cf_cfg, step=i,
                       generator=gen)

    n_gen = min(hv.cf_batch_size, 256)
    gen_images = np.random.default_rng(0).integers(0, 255, (n_gen, size, size), dtype=np.uint8)
    gen_pa = (torch.rand(n_gen, 3) < 0.5).float()

    def generate(i):
        return all_interventions(ema, gen_images, gen_pa)

    net, net_opt = S.network(prof, device, channels_last=device == "cuda")
    n_train = (d.n_annotated_healthy + d.n_annotated_effusion) * (f.folds - 1) // f.folds
    models = f.folds * f.seeds * len(FINETUNE_METHODS)
    pred_images = np.random.default_rng(1).integers(0, 255, (256, size, size), dtype=np.uint8)

    def predict(i):
        return ft.predict(net, pred_images)

    return [("HVAE ELBO step", elbo, bs, hv.epochs * steps_per_epoch),
            ("HVAE validation (forward)", validate, bs, hv.epochs * math.ceil(d.n_val / bs)),
            ("HVAE counterfactual fine-tuning step", cf, bs, hv.cf_finetune_steps),
            ("counterfactual generation (3 interventions)", generate, n_gen,
             math.ceil((d.n_pretrain + d.n_test) / n_gen)),
            ("fine-tuning step", S.finetune_step(net, net_opt, prof, device), f.batch_size,
             models * f.epochs * math.ceil(n_train / f.batch_size)),
            ("fine-tuned model: prediction (x and 3 counterfactuals of the test split)", predict, 256,
             models * math.ceil(4 * d.n_test / 256))]


def main() -> None:
    ap = argparse.ArgumentParser(description="Images/s per method on one GPU at the paper profile.")
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--methods", nargs="*", default=list(PRETRAIN_METHODS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--compile", dest="compile", action="store_true", default=None)
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny counts: checks every path quickly")
    ap.add_argument("--no-stages", dest="stages", action="store_false",
                    help="only pre-training (not the HVAE, counterfactual and fine-tuning steps)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    overrides = list(args.overrides)
    if args.dry_run:
        overrides = DRY_RUN.split() + overrides
        args.steps, args.warmup = 1, 1
        torch.set_num_threads(1)
    if args.compile is None:
        args.compile = device == "cuda"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    prof = get_profile(args.profile, overrides)
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)" if args.dry_run else "CPU"
    peak = peak_flops(name) if device == "cuda" else None
    B = prof.pretrain.batch_size
    started = time.perf_counter()

    net, opt = S.network(prof, device, channels_last=device == "cuda")
    views = {m: S.n_views(m) for m in args.methods}
    flops = {v: unet_flops(net, prof, B * v, device) for v in sorted(set(views.values()))}
    rows, bare, per_method = [], {}, {}
    for v in sorted(set(views.values())):
        t, mem, _ = measure(S.bare_step(net, opt, prof, B * v, device, channels_last=device == "cuda"),
                            device, args.steps, args.warmup)
        bare[v] = t
        frac = "" if peak is None else f"{flops[v] / t / peak:.1%}"
        rows.append(f"| bare U-Net x{v} | {v} | {B / t:.1f} | 1.00 | {_mb(mem)} | {frac} |")
        print(rows[-1], flush=True)
    for m in args.methods:
        v = views[m]
        t, mem, _ = measure(S.method_step(net, opt, prof, m, device), device, args.steps, args.warmup)
        per_method[m] = t
        frac = "" if peak is None else f"{flops[v] / t / peak:.1%}"
        rows.append(f"| {m} | {v} | {B / t:.1f} | {t / bare[v]:.2f} | {_mb(mem)} | {frac} |")
        print(rows[-1], flush=True)
    compiled = []
    if args.compile:
        cnet = torch.compile(net)
        for kind in ("bare", "dvd_cl"):
            v = 4
            step = S.bare_step(cnet, opt, prof, B * v, device, channels_last=device == "cuda") if kind == "bare" \
                else S.method_step(cnet, opt, prof, kind, device)
            t, mem, first = measure(step, device, args.steps, args.warmup)
            ref = bare[v] if kind == "bare" else per_method.get(kind)
            compiled.append(f"| {kind} (compiled) | {v} | {B / t:.1f} | "
                            f"{'' if ref is None else f'{ref / t:.2f}'} | {_mb(mem)} | {first:.0f} |")
            print(compiled[-1], flush=True)
    stage_rows, projected = [], []
    if args.stages:
        for m in args.methods:
            projected.append((f"pre-training {m}", per_method[m], prof.pretrain.steps))
        del net, opt
        for stage, step, images, calls in stage_steps(prof, device):
            t, mem, _ = measure(step, device, args.steps, args.warmup)
            stage_rows.append(f"| {stage} | {images} | {images / t:.1f} | {_mb(mem)} | {calls:,} | "
                              f"{t * calls / 3600:.2f} |")
            print(stage_rows[-1], flush=True)
            projected.append((stage, t, calls))
    wall = time.perf_counter() - started

    cmd = "python benchmarks/bench_gpu.py" + (" --dry-run" if args.dry_run else "") + \
          ("" if args.compile or device != "cuda" else " --no-compile") + ("" if args.stages else " --no-stages") + \
          (" --methods " + " ".join(args.methods) if list(args.methods) != list(PRETRAIN_METHODS) else "") + \
          (" --set " + " ".join(args.overrides) if args.overrides else "")
    lines = [f"# GPU path ({args.profile} profile)", "",
             f"`{cmd}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, device: {name}"
             f"{'' if peak is None else f' (dense bf16 peak {peak / 1e12:.0f} TFLOP/s)'}; "
             f"{prof.pretrain.encoder}, {prof.data.image_size} px, batch {B} images, "
             f"{prof.pretrain.pixels_per_view} px/view; bf16 autocast and channels_last on CUDA; median of "
             f"{args.steps} steps after {args.warmup} warm-up; {wall:.0f} s in all.", "",
             "U-Net FLOPs per step (forward + backward of B x V images): "
             + ", ".join(f"{v} views {flops[v] / 1e12:.2f} TFLOP" for v in flops) + ".", "",
             "| method | views | images/s | time vs bare | peak memory (MB) | U-Net share of bf16 peak |",
             "|---|---:|---:|---:|---:|---:|", *rows, ""]
    if compiled:
        lines += ["torch.compile (inductor): speed-up of the compiled step over the eager one, and the "
                  "first call's time (compilation):", "",
                  "| step | views | images/s | speed-up vs eager | peak memory (MB) | first call (s) |",
                  "|---|---:|---:|---:|---:|---:|", *compiled, ""]
    if stage_rows:
        total = sum(t * c for _, t, c in projected) / 3600
        pre = sum(t * c for n, t, c in projected if n.startswith("pre-training")) / 3600
        lines += ["The other stages (the stage's own step on synthetic inputs of the profile's sizes; calls: how many "
                  "such steps or batches the profile's run makes; hours: calls x the median step time):", "",
                  "| stage | images per call | images/s | peak memory (MB) | calls in the run | hours |",
                  "|---|---:|---:|---:|---:|---:|", *stage_rows, "",
                  f"Projected device time of `make reproduce PROFILE={args.profile}` on this device: {total:.1f} h "
                  f"({pre:.1f} h of it pre-training the {len(args.methods)} methods, {prof.pretrain.steps:,} steps "
                  "each at the step times above), leaving out the data, the parent predictors, the evaluation "
                  "notebooks and the time to read images from disk.", ""]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out) if args.out else RESULTS / ("gpu_dry_run.md" if args.dry_run else "gpu.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
