"""Where one pre-training step (per method) and one fine-tuning step spend their time.

    OMP_NUM_THREADS=1 python benchmarks/profile_step.py                       # cpu profile, all methods
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --methods dvd_cl --top 25
    OMP_NUM_THREADS=1 python benchmarks/profile_step.py --set pretrain.pixels_per_view=1000

For each method (and the fine-tuning step, and the bare U-Net step of the same number of images
for comparison) it runs ``--warmup`` steps, then profiles ``--steps`` steps with
``torch.profiler`` and prints

- a breakdown per step, from the ``record_function`` labels the project's code carries:
  views/warping (``cfcl::views``), sampling (``cfcl::sampling``), network forward including the
  heads (``cfcl::network``), view points and bilinear reads set-up (``cfcl::gather``), loss
  (``cfcl::loss``), backward (``cfcl::backward``, the whole backward: network, heads, gather and
  loss together) and optimiser (``cfcl::optimiser``); ``other`` is the rest of the step (batch
  assembly, Python);
- the top operators by self CPU time (``--top``).

Times are wall-clock times of the profiled steps (the profiler times its events in wall clock) on a
shared machine: compare the lines of one run, not runs.

``--device cuda`` profiles on a GPU (bf16 autocast and channels_last, as the loop does there): the
breakdown is then the GPU time of the kernels launched inside each label (the CPU only launches
them), ``other`` the step's wall time left over (launch gaps, synchronisation, Python), and the top
operators are sorted by their own GPU time.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import steps as S  # noqa: E402
from cfcl.config import get_profile  # noqa: E402
from cfcl.methods import PRETRAIN_METHODS  # noqa: E402

LABELS = ("views", "sampling", "network", "gather", "loss", "backward", "optimiser")


def breakdown(prof, n_steps: int, total_ms: float, gpu: bool = False) -> dict[str, float]:
    """ms per step of each ``cfcl::`` label (CPU total: includes the ops inside the label; on a GPU
    the device time of the kernels inside it)."""
    per = {lab: 0.0 for lab in LABELS}
    for evt in prof.key_averages():
        if evt.key.startswith("cfcl::"):
            lab = evt.key.split("::", 1)[1]
            if lab in per:
                t = getattr(evt, "device_time_total", getattr(evt, "cuda_time_total", 0.0)) if gpu else evt.cpu_time_total
                per[lab] += t / 1000 / n_steps
    per["other"] = max(total_ms - sum(per.values()), 0.0)
    return per


def run_one(name: str, step, n_steps: int, warmup: int, top: int, gpu: bool = False) -> dict[str, float]:
    for i in range(warmup):
        step(i)
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])) as prof:
        t0 = time.perf_counter()
        for i in range(n_steps):
            step(warmup + i)
        sync()
        total = (time.perf_counter() - t0) * 1000 / n_steps
    per = breakdown(prof, n_steps, total, gpu)
    print(f"\n=== {name}: {total:.0f} ms per step (wall, profiled)")
    print("  " + "  ".join(f"{k} {v:.0f} ({100 * v / total:.0f}%)" for k, v in per.items()))
    if top:
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if gpu else "self_cpu_time_total",
                                        row_limit=top, max_name_column_width=50))
    return {"total": total, **per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    ap.add_argument("--methods", nargs="*", default=list(PRETRAIN_METHODS))
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prof = get_profile(args.profile, args.overrides)
    dev, gpu = args.device, args.device == "cuda"
    net, opt = S.network(prof, dev, channels_last=gpu)
    B = prof.pretrain.batch_size
    print(f"profile {args.profile} {' '.join(args.overrides)}: {prof.pretrain.encoder}, {prof.data.image_size} px, "
          f"batch {B}, {prof.pretrain.pixels_per_view} px/view, {args.threads} thread(s), torch {torch.__version__}")
    rows = {}
    for v in sorted({S.n_views(m) for m in args.methods}):
        rows[f"bare x{v}"] = run_one(f"bare U-Net step, {B} x {v} images",
                                     S.bare_step(net, opt, prof, B * v, dev, channels_last=gpu),
                                     args.steps, args.warmup, 0, gpu)
    for m in args.methods:
        rows[m] = run_one(f"{m} ({S.n_views(m)} views)", S.method_step(net, opt, prof, m, dev), args.steps,
                          args.warmup, args.top, gpu)
    if not args.no_finetune:
        fb = prof.finetune.batch_size
        rows[f"bare ft x{fb}"] = run_one(f"bare U-Net step, {fb} images",
                                         S.bare_step(net, opt, prof, fb, dev, channels_last=gpu),
                                         args.steps, args.warmup, 0, gpu)
        rows["finetune"] = run_one("fine-tuning step", S.finetune_step(net, opt, prof, dev), args.steps,
                                   args.warmup, args.top, gpu)
    print("\nSummary (ms per step, wall clock)")
    cols = ["total", *LABELS, "other"]
    print("| step | " + " | ".join(cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.0f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
