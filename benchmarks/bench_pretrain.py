"""Benchmark: one whole pre-training step per method against a plain supervised U-Net step.

For each method, the step (augmentation, pixel tracking, sampling, forward, loss, backward,
AdamW) on B images with the method's V views is compared with a plain supervised U-Net step
(cross-entropy on the silver masks, no augmentation) on the same B x V images. The aim is that
everything the method adds costs little next to the network itself. Each measurement runs in
a fresh process so that its peak memory (CPU: peak RSS; GPU: torch.cuda.max_memory_allocated)
is its own. Ratios within one run are reported, not absolute times (the machine is shared).

    python benchmarks/bench_pretrain.py                 # cpu profile sizes, CPU
    python benchmarks/bench_pretrain.py --quick         # fewer steps
    python benchmarks/bench_pretrain.py --device cuda --profile paper   # GPU: bf16 + channels_last, images/s

Results: benchmarks/results/pretrain.md (or pretrain_gpu.md).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cfcl import pretrain as pt  # noqa: E402
from cfcl.config import METHODS, get_profile  # noqa: E402
from cfcl.data import ChestSplit  # noqa: E402
from cfcl.models import build_model  # noqa: E402
from cfcl.paths import atomic_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def fake_data(n: int, size: int, method: str, prof) -> pt.PretrainData:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, size, size), dtype=np.uint8)
    silver = np.zeros((n, size, size), np.uint8)
    silver[:, size // 4: 3 * size // 4, size // 6: size // 2 - 2] = 1
    silver[:, size // 4: 3 * size // 4, size // 2 + 2: 5 * size // 6] = 2
    cf = rng.integers(0, 255, (n, 3, size, size), dtype=np.uint8)
    import pandas as pd

    parents = pd.DataFrame({"sex": np.zeros(n, int), "scanner": np.zeros(n, int), "effusion": np.zeros(n, int)})
    return pt.PretrainData(prof, method, split=ChestSplit("pretrain", images, parents, silver), cf=cf)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(kind: str, profile_name: str, device: str, steps: int, warmup: int, q: mp.Queue) -> None:
    """Run in a child process: time ``steps`` steps of ``kind`` (a method or "plain:<V>")."""
    torch.manual_seed(0)
    if device == "cpu":
        torch.set_num_threads(max(torch.get_num_threads(), 1))
    prof = get_profile(profile_name)
    cfg = prof.pretrain
    size = prof.data.image_size
    net = build_model(cfg.encoder, cfg.embed_dim).to(device)
    amp = device.startswith("cuda")
    if amp:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    B = cfg.batch_size
    if kind.startswith("plain:"):
        V = int(kind.split(":")[1])
        data = fake_data(max(B, 8), size, "chexmask", prof)
        x = torch.from_numpy(data.images[:B].astype(np.float32) / 255).repeat(V, 1, 1)[:, None].to(device)
        y = torch.from_numpy(data.silver[:B].astype(np.int64)).repeat(V, 1, 1).to(device)
        if amp:
            x = x.contiguous(memory_format=torch.channels_last)

        def step(i: int) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    else:
        spec = pt.METHODS[kind]
        data = fake_data(max(B, 8), size, kind, prof)
        loss_fn = spec.make_loss(prof) if spec.make_loss else None

        def step(i: int) -> None:
            prep = pt.prepare(data.batch(np.arange(B), spec), spec, prof, pt.step_generator(0, i))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                loss = pt.forward_loss(net, prep, spec, loss_fn)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.train()
    for i in range(warmup):
        step(i)
    _sync(device)
    if amp:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    mem = torch.cuda.max_memory_allocated() / 2**20 if amp else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    q.put((dt, mem))


def run(kind: str, profile: str, device: str, steps: int, warmup: int) -> tuple[float, float]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=measure, args=(kind, profile, device, steps, warmup, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    args = ap.parse_args()
    steps, warmup = (3, 1) if args.quick else (8, 2)
    prof = get_profile(args.profile)
    views_of = {m: {"cf": 4, "two": 2, "one": 1}[pt.METHODS[m].views] for m in args.methods}
    plain = {v: run(f"plain:{v}", args.profile, args.device, steps, warmup) for v in sorted(set(views_of.values()))}
    rows = []
    for m in args.methods:
        dt, mem = run(m, args.profile, args.device, steps, warmup)
        pdt, pmem = plain[views_of[m]]
        ips = prof.pretrain.batch_size / dt
        rows.append(f"| {m} | {views_of[m]} | {dt / pdt:.2f} | {mem / pmem:.2f} | {ips:.1f} |")
        print(rows[-1], flush=True)
    mem_unit = "GPU max allocated" if args.device.startswith("cuda") else "peak RSS"
    text = "\n".join([
        f"# Pre-training step vs a plain supervised U-Net step ({args.profile} profile, {args.device})",
        "",
        f"`python benchmarks/bench_pretrain.py --profile {args.profile} --device {args.device}"
        f"{' --quick' if args.quick else ''}`; {prof.pretrain.encoder}, {prof.data.image_size} px, "
        f"batch {prof.pretrain.batch_size} images, {prof.pretrain.pixels_per_view} pixels per view; "
        f"mean of {steps} steps after {warmup} warm-up, each method in a fresh process.",
        "",
        "Time ratio: the method's whole step (augmentation, tracking, sampling, forward, loss, backward, AdamW) "
        "over a plain cross-entropy U-Net step on the same number of images x views. "
        f"Memory ratio: {mem_unit} over the plain step's. Images/s: base images (each with all its views) per second "
        "(absolute, noisy on a shared machine).",
        "",
        "| method | views | time ratio | memory ratio | images/s |",
        "| --- | --- | --- | --- | --- |",
        *rows, ""])
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("pretrain.md" if args.device == "cpu" else "pretrain_gpu.md")
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
