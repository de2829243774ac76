"""The U-Net at full speed on CPU (issue 10, section 2).

    OMP_NUM_THREADS=1 python benchmarks/bench_network.py            # writes benchmarks/results/network.md
    OMP_NUM_THREADS=1 python benchmarks/bench_network.py --quick    # fewer rounds, no thread section

One training step of the ``cpu`` profile's network (smp U-Net, ResNet18 encoder, default decoder,
64 px, batch 8, cross-entropy, AdamW; :func:`steps.bare_step`) under several execution settings:
eager (the reference), channels_last, ``torch.compile`` (inductor, compile time reported),
both, oneDNN (mkldnn) off, bf16 autocast on CPU, and AdamW's fused / foreach implementations.

- Speed: every setting is timed in ONE process, round-robin (one step of each setting in turn,
  ``--reps`` rounds), in process CPU time on one thread (robust to other processes on a shared
  machine); images/s per CPU second of one thread, and the ratio to eager (median over rounds
  of eager / setting in the same round).
- Physical floor: the FLOPs of one step (``torch.utils.flop_counter.FlopCounterMode``: forward +
  backward convolutions and matmuls; AdamW's element-wise work is not counted) divided by the
  machine's float32 GEMM rate, measured in the same rounds (a 1024 x 1024 x 1024 matmul, one
  thread): ``step time / floor`` says how far a step is from the GEMM speed of the core.
- Exactness: the first step's gradient (relative L2 error of all the gradients together) and
  20 steps from the same initial weights on the same batch (largest relative difference of the
  loss curve, the issue's bar: 1e-4), against eager. "eager, 2 threads" is the round-off floor:
  the same computation summed in another order; AdamW amplifies round-off where a gradient is ~0
  (its update is ~lr x sign), so no reordering of the arithmetic stays at 1e-4 over 20 steps.
- Compile time: with a fresh inductor cache (``TORCHINDUCTOR_CACHE_DIR``), as a new machine pays it.
- Threads (wall clock, so it depends on the machine's load, which is printed): 2 threads in 1
  process vs 2 processes of 1 thread each (the ``make reproduce`` layout) vs 1 thread.
- Where the time goes: forward + backward time of the encoder, the decoder and the heads, and
  the FLOP shares, to say whether the decoder's width is the cost at 64 px.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))

import steps as S  # noqa: E402
from cfcl.config import get_profile  # noqa: E402
from cfcl.paths import atomic_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ROUND_OFF = "eager, 2 threads"  # exactness only: the round-off floor (another summation order)
SETTINGS = ("eager", "channels_last", "compile", "compile+channels_last", "mkldnn off", "bf16 autocast",
            "AdamW foreach", "AdamW fused")


def batch(prof, images: int):
    data = S.fake_data(max(images, 8), prof.data.image_size, "chexmask", prof)
    x = torch.from_numpy(data.images[:images].astype("float32") / 255)[:, None]
    y = torch.from_numpy(data.silver[:images].astype("int64"))
    return x, y


def make(setting: str, prof, x, y, lr: float):
    """(step function, network) for one execution setting; every setting starts from the same weights."""
    channels_last = "channels_last" in setting
    net, _ = S.network(prof, channels_last=channels_last)
    opt_kw = {"foreach": True} if setting == "AdamW foreach" else {"fused": True} if setting == "AdamW fused" \
        else {"foreach": False}
    opt = torch.optim.AdamW(net.parameters(), lr=lr, **opt_kw)
    xin = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    model = torch.compile(net) if setting.startswith("compile") else net
    amp = setting == "bf16 autocast"
    mkldnn = setting != "mkldnn off"

    def step(i: int, grads: list | None = None) -> float:
        with torch.backends.mkldnn.flags(enabled=mkldnn), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(xin).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grads is not None:  # the gradient of this step, before the update
            grads.extend(p.grad.detach().clone() for p in net.parameters() if p.grad is not None)
        opt.step()
        return float(loss.detach())

    return step, net


def step_flops(prof, x, y) -> float:
    net, _ = S.network(prof)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(net(x), y).backward()
    return float(fc.get_total_flops())


def part_flops(prof, x) -> dict[str, float]:
    """Forward + backward FLOPs of the encoder, the decoder and the segmentation head."""
    net, _ = S.network(prof)
    u = net.unet
    with FlopCounterMode(display=False) as fc:
        f = u.encoder(x)
        d = u.decoder(f)
        u.segmentation_head(d).sum().backward()
    per = fc.get_flop_counts()  # keyed by the class name of each module called at top level
    return {name: float(sum(per.get(type(m).__name__, {}).values()))
            for name, m in (("encoder", u.encoder), ("decoder", u.decoder), ("head", u.segmentation_head))}


def gemm(n: int = 1024) -> tuple[float, float]:
    """(seconds of CPU for one n x n x n float32 matmul, its FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    t0 = time.process_time()
    a @ b
    return time.process_time() - t0, 2.0 * n ** 3


def part_times(prof, x, y, reps: int) -> dict[str, float]:
    """CPU seconds of forward + backward of the encoder, the decoder and the head (median)."""
    net, _ = S.network(prof)
    u = net.unet
    t = {"encoder": [], "decoder": [], "head": []}
    for _ in range(reps + 1):
        t0 = time.process_time()
        feats = u.encoder(x)
        t1 = time.process_time()
        dfe = [f.detach().requires_grad_(f.is_floating_point()) for f in feats]
        d = u.decoder(dfe)
        t2 = time.process_time()
        dd = d.detach().requires_grad_()
        loss = F.cross_entropy(u.segmentation_head(dd), y)
        t3 = time.process_time()
        loss.backward()
        t4 = time.process_time()
        d.backward(dd.grad)
        t5 = time.process_time()
        grads = [(f, g.grad) for f, g in zip(feats, dfe) if g.grad is not None]
        torch.autograd.backward([f for f, _ in grads], [g for _, g in grads])
        t6 = time.process_time()
        t["encoder"].append(t1 - t0 + t6 - t5)
        t["decoder"].append(t2 - t1 + t5 - t4)
        t["head"].append(t3 - t2 + t4 - t3)
        net.zero_grad()
    return {k: statistics.median(v[1:]) for k, v in t.items()}


def narrow_decoder_ratio(prof, x, y, reps: int) -> float:
    """Step time of a half-width decoder (128, 64, 32, 16, 8) over the default one (interleaved)."""
    import segmentation_models_pytorch as smp

    nets = {"default": smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3),
            "narrow": smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=3,
                               decoder_channels=(128, 64, 32, 16, 8))}
    opts = {k: torch.optim.AdamW(n.parameters(), lr=1e-4) for k, n in nets.items()}
    t = {k: [] for k in nets}
    for r in range(reps + 1):
        for k, n in nets.items():
            t0 = time.process_time()
            loss = F.cross_entropy(n(x), y)
            opts[k].zero_grad()
            loss.backward()
            opts[k].step()
            t[k].append(time.process_time() - t0)
    return statistics.median(a / b for a, b in zip(t["narrow"][1:], t["default"][1:]))


# ------------------------------------------------------------------ threads (wall clock)
def _thread_child(profile: str, threads: int, steps: int, images: int, start, q) -> None:
    torch.set_num_threads(threads)
    prof = get_profile(profile)
    x, y = batch(prof, images)
    step, _ = make("eager", prof, x, y, 1e-4)
    step(0)
    start.wait()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i + 1)
    q.put(time.perf_counter() - t0)


def thread_layouts(profile: str, steps: int, images: int) -> dict[str, float]:
    """Images/s (wall clock, all processes together) of three layouts on the machine's cores."""
    ctx = mp.get_context("spawn")
    out = {}
    for name, procs, threads in (("1 process x 1 thread", 1, 1), ("1 process x 2 threads", 1, 2),
                                 ("2 processes x 1 thread", 2, 1)):
        q, start = ctx.Queue(), ctx.Barrier(procs)
        ps = [ctx.Process(target=_thread_child, args=(profile, threads, steps, images, start, q)) for _ in range(procs)]
        for p in ps:
            p.start()
        walls = [q.get() for _ in ps]
        for p in ps:
            p.join()
        out[name] = procs * steps * images / max(walls)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="The cpu profile's U-Net under several CPU execution settings.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--images", type=int, default=None, help="batch (default: the profile's pre-training batch)")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS))
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--exact-steps", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="3 rounds, 5 exactness steps, no thread section")
    ap.add_argument("--no-threads", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "network.md"))
    args = ap.parse_args()
    if args.quick:
        args.reps, args.exact_steps, args.no_threads = 3, 5, True
    torch.set_num_threads(1)
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a cold cache: the compile time a fresh machine pays
        import tempfile

        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    prof = get_profile(args.profile)
    B = args.images or prof.pretrain.batch_size
    x, y = batch(prof, B)
    load0 = os.getloadavg()
    flops = step_flops(prof, x, y)

    # exactness: the first step's gradient, and 20 steps from the same weights (the loss curve),
    # against eager's; "eager, 2 threads" is the same computation summed in another order
    lr = prof.pretrain.lr
    curves, grads, compile_s = {}, {}, {}
    for s in ["eager", *[s for s in args.settings if s != "eager"], ROUND_OFF]:
        torch.set_num_threads(2 if s == ROUND_OFF else 1)
        step, _ = make("eager" if s == ROUND_OFF else s, prof, x, y, lr)
        grads[s] = []
        t0 = time.perf_counter()
        first = step(0, grads[s])
        if s.startswith("compile"):
            compile_s[s] = time.perf_counter() - t0
        curves[s] = [first] + [step(i) for i in range(1, args.exact_steps)]
        print(f"exactness {s}: done", file=sys.stderr, flush=True)
    torch.set_num_threads(1)
    dev = {s: max(abs(a - b) / abs(b) for a, b in zip(curves[s], curves["eager"])) for s in curves}
    ref = torch.cat([g.flatten() for g in grads["eager"]])
    gerr = {s: float((torch.cat([g.flatten() for g in grads[s]]) - ref).norm() / ref.norm()) for s in grads}

    # speed: round-robin, CPU time of one thread
    fns = {s: make(s, prof, x, y, 1e-4)[0] for s in args.settings}
    for s, f in fns.items():  # warm-up (and compilation)
        f(0), f(1)
    t = {s: [] for s in args.settings}
    g = []
    for r in range(args.reps):
        for s, f in fns.items():
            t0 = time.process_time()
            f(r + 2)
            t[s].append(time.process_time() - t0)
        g.append(gemm())
        print(f"round {r + 1}/{args.reps}", file=sys.stderr, flush=True)
    gemm_rate = statistics.median(fl / sec for sec, fl in g)
    floor = flops / gemm_rate
    med = {s: statistics.median(v) for s, v in t.items()}
    speedup = {s: statistics.median(e / v for e, v in zip(t["eager"], t[s])) for s in args.settings}

    parts = part_times(prof, x, y, max(3, args.reps // 2))
    pflops = part_flops(prof, x)
    narrow = narrow_decoder_ratio(prof, x, y, max(3, args.reps // 2))
    layouts = {} if args.no_threads else thread_layouts(args.profile, 6, B)
    load1 = os.getloadavg()

    cmd = "OMP_NUM_THREADS=1 python benchmarks/bench_network.py" + (" --quick" if args.quick else "")
    lines = [
        f"# The U-Net at full speed on CPU ({args.profile} profile)", "",
        f"`{cmd}`, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, torch {torch.__version__}, "
        f"{platform.machine()}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores; "
        f"load average {load0[0]:.1f} before, {load1[0]:.1f} after (the machine is shared: compare ratios within "
        f"this file). Network: smp U-Net, {prof.pretrain.encoder}, default decoder, {prof.data.image_size} px, "
        f"batch {B}, cross-entropy, AdamW; {args.reps} interleaved rounds, one thread, process CPU time.", "",
        f"One step = {flops / 1e9:.1f} GFLOP (forward + backward, FlopCounterMode); float32 GEMM on one core: "
        f"{gemm_rate / 1e9:.1f} GFLOP/s (1024^3 matmul, same rounds); physical floor of a step "
        f"{1000 * floor:.0f} ms = {B / floor:.1f} images/s.", "",
        "| setting | images/s (1 thread) | speed vs eager | step / floor | first gradient vs eager (rel. L2) | "
        f"loss curve vs eager (max rel., {args.exact_steps} steps, lr {lr:g}) | compile time, cold cache (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for s in args.settings:
        lines.append(f"| {s} | {B / med[s]:.1f} | {speedup[s]:.2f} | {med[s] / floor:.2f} | {gerr[s]:.1e} | "
                     f"{dev[s]:.1e} | {compile_s.get(s, float('nan')):.0f} |".replace("| nan |", "| |"))
    lines.append(f"| {ROUND_OFF} (round-off floor) | | | | {gerr[ROUND_OFF]:.1e} | {dev[ROUND_OFF]:.1e} | |")
    lines += ["", "Where a step's time goes (forward + backward, one thread, median):", "",
              "| part | CPU ms | share of time | share of FLOPs |", "|---|---:|---:|---:|"]
    tot_t, tot_f = sum(parts.values()), sum(pflops.values())
    for k in parts:
        lines.append(f"| {k} | {1000 * parts[k]:.0f} | {100 * parts[k] / tot_t:.0f} % | {100 * pflops[k] / tot_f:.0f} % |")
    lines += ["", f"A half-width decoder (decoder_channels 128, 64, 32, 16, 8 instead of 256, 128, 64, 32, 16): "
              f"step time x{narrow:.2f} (its effect on DSC is not measured; not adopted).", ""]
    if layouts:
        lines += ["Thread layouts (wall clock, all processes together; depends on the load above):", "",
                  "| layout | images/s |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in layouts.items()]
        lines.append("")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
