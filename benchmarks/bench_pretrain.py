"""Benchmark: one whole pre-training step per method against a bare U-Net step (issue 10, section 3).

For each method, the step (augmentation, pixel tracking, sampling, the bilinear reads, heads,
loss, backward, AdamW; :func:`steps.method_step`, which calls :mod:`cfcl.pretrain`'s own
functions) on B images with the method's V views is compared with a bare supervised U-Net step
(cross-entropy, no augmentation, AdamW; :func:`steps.bare_step`) on the same B x V images, i.e. the
same number of images through the same network. The fine-tuning step
(:func:`cfcl.finetune.train_step` after :func:`cfcl.finetune.augment_batch`) is compared with a
bare step on its batch. Target at the ``cpu`` profile: ``time_ratio <= 1.3`` for every method,
``<= 1.1`` for fine-tuning.

    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py            # cpu profile: 256 and 1,000 px/view
    OMP_NUM_THREADS=1 python benchmarks/bench_pretrain.py --quick    # 3 repetitions, no memory column

Time: every configuration is timed in ONE process, round-robin (one step of each configuration in
turn, ``--reps`` rounds after ``--warmup`` rounds), in process CPU time on one thread (the
``make reproduce`` setting, and what other processes on a shared machine disturb least);
``time_ratio`` is the median over rounds of (method step / bare step of the same round).
``images_per_s``: base images (each with all its views) per CPU second of one thread, from the
median step time. Memory: each configuration runs again in a fresh process (growth of the peak RSS,
VmHWM, over the RSS before the steps; on CUDA ``max_memory_allocated``); ``memory_ratio`` is the method's over the bare
step's. Writes ``benchmarks/results/pretrain.csv`` and prints it as a table.
"""
from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
try:  # the installed project (or PYTHONPATH's, to time another version of it)
    import cfcl  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import steps as S  # noqa: E402
from cfcl.config import get_profile  # noqa: E402
from cfcl.methods import PRETRAIN_METHODS  # noqa: E402
from cfcl.paths import atomic_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
COLUMNS = ["method", "views", "pixels_per_view", "time_ratio", "memory_ratio", "images_per_s"]


def _profile(name: str, pixels: int | None):
    return get_profile(name, None if pixels is None else f"pretrain.pixels_per_view={pixels}")


STREAM_ABOVE: int | str = "default"  # --stream-above: the losses' streaming threshold (cfcl.losses)


def _make(kind: str, prof, net, opt, device: str):
    """``kind``: a method, ``bare:<images>`` or ``finetune``."""
    if kind.startswith("bare:"):
        return S.bare_step(net, opt, prof, int(kind.split(":")[1]), device)
    if kind == "finetune":
        return S.finetune_step(net, opt, prof)
    return S.method_step(net, opt, prof, kind, device, STREAM_ABOVE)


def _status_mb(field: str) -> float:
    """``VmRSS`` or ``VmHWM`` (peak RSS) of this process in MB. VmHWM, not ``ru_maxrss``: a spawned
    child's ``ru_maxrss`` keeps the peak of the forked parent it was before ``exec``."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _memory_child(kind: str, profile: str, pixels: int | None, device: str, threads: int, stream_above, q) -> None:
    global STREAM_ABOVE
    STREAM_ABOVE = stream_above
    torch.set_num_threads(threads)
    prof = _profile(profile, pixels)
    net, opt = S.network(prof, device)
    step = _make(kind, prof, net, opt, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _status_mb("VmRSS")
    for i in range(2):
        step(i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        q.put(torch.cuda.max_memory_allocated() / 2**20 - before)
    else:
        q.put(_status_mb("VmHWM") - before)


def memory(kind: str, profile: str, pixels: int | None, device: str, threads: int) -> float:
    """Peak memory growth (MB) of two steps of ``kind`` in a fresh process."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(kind, profile, pixels, device, threads, STREAM_ABOVE, q))
    p.start()
    out = q.get()
    p.join()
    return out


def timings(configs: list[tuple[str, int | None]], profile: str, device: str, reps: int, warmup: int,
            seed: int = 0) -> dict[tuple[str, int | None], list[float]]:
    """Seconds per step of each configuration, ``reps`` rounds, round-robin in one process."""
    net, opt = S.network(get_profile(profile), device)
    steps = {c: _make(c[0], _profile(profile, c[1]), net, opt, device) for c in configs}
    out: dict = {c: [] for c in configs}
    order = list(configs)
    rng = random.Random(seed)
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    for r in range(warmup + reps):
        rng.shuffle(order)  # no configuration always follows the same one
        for c in order:
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0 = clock()
            steps[c](r)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if r >= warmup:
                out[c].append(clock() - t0)
        print(f"round {r + 1}/{warmup + reps}", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description="Pre-training and fine-tuning steps vs a bare U-Net step.")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--pixels", type=int, nargs="*", default=None,
                    help="pixels per view (default: the profile's own and 1000)")
    ap.add_argument("--methods", nargs="*", default=list(PRETRAIN_METHODS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--quick", action="store_true", help="3 repetitions, no memory")
    ap.add_argument("--stream-above", type=int, default=None,
                    help="the losses' streaming threshold (default: cfcl.losses.STREAM_ABOVE), to measure another")
    ap.add_argument("--out", default=str(RESULTS / "pretrain.csv"))
    args = ap.parse_args()
    global STREAM_ABOVE
    if args.stream_above is not None:
        STREAM_ABOVE = args.stream_above
    if args.quick:
        args.reps, args.no_memory = 3, True
    torch.set_num_threads(args.threads)
    base = get_profile(args.profile)
    pixels = args.pixels or sorted({base.pretrain.pixels_per_view, 1000})
    B = base.pretrain.batch_size
    views = {m: S.n_views(m) for m in args.methods}
    configs = [(f"bare:{B * v}", None) for v in sorted(set(views.values()))]
    configs += [(m, p) for p in pixels for m in args.methods]
    configs += [(f"bare:{base.finetune.batch_size}", None), ("finetune", None)]
    configs = list(dict.fromkeys(configs))
    load = os.getloadavg()
    t = timings(configs, args.profile, args.device, args.reps, args.warmup)
    mem = {} if args.no_memory else {c: memory(c[0], args.profile, c[1], args.device, args.threads) for c in configs}

    def ratio(c, ref):
        return statistics.median(a / b for a, b in zip(t[c], t[ref]))

    rows = []
    for p in pixels:
        for m in args.methods:
            c, ref = (m, p), (f"bare:{B * views[m]}", None)
            rows.append({"method": m, "views": views[m], "pixels_per_view": p, "time_ratio": f"{ratio(c, ref):.2f}",
                         "memory_ratio": "" if not mem else f"{mem[c] / mem[ref]:.2f}",
                         "images_per_s": f"{B / statistics.median(t[c]):.2f}"})
    c, ref = ("finetune", None), (f"bare:{base.finetune.batch_size}", None)
    rows.append({"method": "finetune", "views": 1, "pixels_per_view": "",
                 "time_ratio": f"{ratio(c, ref):.2f}",
                 "memory_ratio": "" if not mem else f"{mem[c] / mem[ref]:.2f}",
                 "images_per_s": f"{base.finetune.batch_size / statistics.median(t[c]):.2f}"})
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
    print(f"# {args.profile} profile ({base.pretrain.encoder}, {base.data.image_size} px, batch {B}), {args.device}, "
          f"{args.threads} thread(s), {args.reps} rounds; load average before: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; torch {torch.__version__}"
          + ("" if args.stream_above is None else f"; losses' stream_above={args.stream_above}"))
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in COLUMNS) + " |")
    bare = {c: statistics.median(v) for c, v in t.items() if c[0].startswith("bare:")}
    print("bare steps (median s): " + ", ".join(f"{c[0]} {s:.3f}" for c, s in bare.items()))
    if mem:
        print("peak memory growth (MB): " + ", ".join(f"{c[0]}{'' if c[1] is None else f'@{c[1]}'} {v:.0f}"
                                                   for c, v in mem.items()))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
