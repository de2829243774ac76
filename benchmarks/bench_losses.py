"""Benchmark of the dense contrastive losses (cfcl.losses): forward + backward time.

    python benchmarks/bench_losses.py [--quick] [--skip-memory]

Writes a Markdown report to ``benchmarks/results/losses.md`` (atomically). Everything runs on
one CPU thread (``torch.set_num_threads(1)``) and is timed in process CPU time
(``time.process_time``, user + system), which other processes on the shared machine disturb
less than wall time; still, the report gives RATIOS measured within one run, each from
interleaved repetitions (median times):

1. each loss vs the naive vectorised version with dense boolean masks (``tests/reference_losses
   .masked_*``) at a realistic size (B images, 1,000 pixels per view, D=128, 4 views), and vs a
   "floor": the bare similarity matmul + log-sum-exp of the same contrast sets, which any
   implementation must pay;
2. each loss vs the Python-loop reference (``tests/reference_losses.loop_*``) at a small size
   (the loops are too slow at the realistic one);
3. scaling of the dense losses with pixels per view (250..4000) and with the number of views
   (2..6), relative to the smallest size;
4. the two paths of the core's log-sum-exp (the dense similarity block vs streaming it in row
   chunks, ``stream_above`` / ``chunk_size`` in ``cfcl.losses``), each loss forced on each path;
5. SSDCL with batch negatives up to the paper's batch (32 images x 2 views x 1,000 pixels):
   peak memory of each path in a fresh process per configuration, and the time ratio
   (``benchmarks/bench_ssdcl_memory.py``, which also runs alone). ``--skip-memory`` leaves this
   section out (the paper's batch alone takes about 2 min of CPU per configuration).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import reference_losses as ref  # noqa: E402
import bench_ssdcl_memory  # noqa: E402
import cfcl.losses as losses  # noqa: E402
from cfcl.losses import (CHUNK_SIZE, DVDCL, MVDCL, SDVDCL, SMVDCL, SSDCL, STREAM_ABOVE,  # noqa: E402
                         DenseNTXent, SimCLR)
from cfcl.paths import atomic_path  # noqa: E402


def _inputs(b: int, v: int, n: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, v, n, d, generator=g)
    labels = torch.randint(0, 3, (b, v, n), generator=g)
    return z, labels


def _floor(sets):
    """Bare cost of the similarity blocks: normalise, one matmul, row log-sum-exp, (G, M, D) sets."""
    def fn(z: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.normalize(sets(z), dim=-1)
        return torch.logsumexp(torch.matmul(x / 0.1, x.transpose(1, 2)), dim=-1).sum()
    return fn


def _cases(b: int, v: int, n: int, d: int, **kw):
    """name -> (fast fn, masked fn, loop fn, floor fn) taking one leaf tensor z (B, V, N, D);
    ``kw`` (``stream_above``, ``chunk_size``) goes to our losses."""
    _, lab = _inputs(b, v, n, d)
    t = v - 1
    la = lab[:, :1].expand(b, t, n)
    lt = lab[:, 1:]

    def anc(z):
        return z[:, :1].expand(-1, t, -1, -1)

    pairs = _floor(lambda z: torch.cat([anc(z), z[:, 1:]], dim=2).reshape(b * t, 2 * n, d))
    views_all = _floor(lambda z: z.reshape(b, v * n, d))
    return {
        "VADeR / DenseNTXent (2 views)": (
            lambda z: DenseNTXent(**kw)(z[:, 0], z[:, 1]),
            lambda z: ref.masked_dvdcl(z[:, :1], z[:, 1:2]),
            lambda z: ref.loop_dense_ntxent(z[:, 0], z[:, 1]),
            _floor(lambda z: z[:, :2].reshape(b, 2 * n, d))),
        f"DVD-CL ({t} targets)": (
            lambda z: DVDCL(**kw)(anc(z), z[:, 1:]),
            lambda z: ref.masked_dvdcl(anc(z), z[:, 1:]),
            lambda z: ref.loop_dvdcl(anc(z), z[:, 1:]),
            pairs),
        f"MVD-CL ({v} views)": (
            lambda z: MVDCL(**kw)(z), lambda z: ref.masked_mvdcl(z), lambda z: ref.loop_mvdcl(z), views_all),
        f"S-DVD-CL ({t} targets)": (
            lambda z: SDVDCL(**kw)(anc(z), z[:, 1:], la, lt),
            lambda z: ref.masked_sdvdcl(anc(z), z[:, 1:], la, lt),
            lambda z: ref.loop_sdvdcl(anc(z), z[:, 1:], la, lt),
            pairs),
        f"S-MVD-CL ({v} views)": (
            lambda z: SMVDCL(**kw)(z, lab), lambda z: ref.masked_smvdcl(z, lab), lambda z: ref.loop_smvdcl(z, lab),
            views_all),
        "SSDCL (2 views, batch negatives)": (
            lambda z: SSDCL(**kw)(z[:, :2], lab[:, :2]),
            lambda z: ref.masked_smvdcl(z[:, :2], lab[:, :2], negatives="batch"),
            lambda z: ref.loop_smvdcl(z[:, :2], lab[:, :2], negatives="batch"),
            _floor(lambda z: z[:, :2].reshape(1, b * 2 * n, d))),
    }


def _fb(fn, z: torch.Tensor) -> float:
    """Seconds for one forward + backward of fn at a fresh leaf copy of z."""
    x = z.detach().clone().requires_grad_(True)
    t0 = time.process_time()
    fn(x).backward()
    return time.process_time() - t0


def _interleaved(fns, z: torch.Tensor, reps: int, warmup: bool = True) -> list[float]:
    """Median time of each fn, runs interleaved (after one warm-up each) to share the noise."""
    for fn in fns if warmup else []:
        _fb(fn, z)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for k, fn in enumerate(fns):
            times[k].append(_fb(fn, z))
    return [statistics.median(t) for t in times]


def _ms(s: float) -> str:
    return f"{1000 * s:.1f}"


def bench_vs_masked(b: int, n: int, d: int, v: int, reps: int) -> list[str]:
    z, _ = _inputs(b, v, n, d)
    rows = [f"Size: B={b} images, N={n} pixels per view, D={d}, V={v} views (T={v - 1} targets), "
            f"float32, {reps} interleaved repetitions (median).", "",
            "| loss | ours (ms) | naive masked (ms) | masked / ours | floor (ms) | ours / floor |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, (fast, masked, _, floor) in _cases(b, v, n, d).items():
        tf, tm, t0 = _interleaved([fast, masked, floor], z, reps)
        rows.append(f"| {name} | {_ms(tf)} | {_ms(tm)} | {tm / tf:.2f} | {_ms(t0)} | {tf / t0:.2f} |")
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(2, 32, d, generator=g)
    tf, tm = _interleaved([lambda x: SimCLR()(x[0], x[1]),
                           lambda x: ref.masked_dvdcl(x[0][None, None], x[1][None, None])], z1, reps)
    rows.append(f"| SimCLR (global, batch 32) | {_ms(tf)} | {_ms(tm)} | {tm / tf:.2f} | | |")
    return rows


def bench_vs_loops(b: int, n: int, d: int, v: int, reps: int) -> list[str]:
    z, _ = _inputs(b, v, n, d)
    z = z.double()
    rows = [f"Size: B={b}, N={n}, D={d}, V={v}, float64 (the loops are too slow at the realistic size).", "",
            "| loss | ours (ms) | loop reference (ms) | loop / ours |", "|---|---:|---:|---:|"]
    for name, (fast, _, loop, _) in _cases(b, v, n, d).items():
        tf, tl = _interleaved([fast, loop], z, reps)
        rows.append(f"| {name} | {_ms(tf)} | {_ms(tl)} | {tl / tf:.0f} |")
    return rows


def bench_scaling(b: int, d: int, pixels: list[int], views: list[int], n_views: int, reps: int) -> list[str]:
    losses = {
        "DVD-CL": lambda z: DVDCL()(z[:, :1].expand(-1, z.shape[1] - 1, -1, -1), z[:, 1:]),
        "MVD-CL": lambda z: MVDCL()(z),
        "S-MVD-CL": lambda z: SMVDCL()(z, torch.randint(0, 3, z.shape[:3], generator=torch.Generator()
                                                        .manual_seed(0))),
    }
    rows = [f"Time relative to the smallest size (B={b}, D={d}, float32; absolute ms of the smallest in "
            "brackets; sizes above 1,000 pixels: a single run). `M^2` is the growth of the similarity "
            "block: pixels in one contrast set, squared. Default paths on CPU: blocks of at most KEEP_BELOW "
            f"elements are kept, larger ones streamed (section 4), i.e. (S-)MVD-CL at N=4000 (M={n_views * 4000}).", "",
            f"Pixels per view (V={n_views} views):", "",
            "| N | " + " | ".join(losses) + " | M^2 ratio |", "|---:|" + "---:|" * (len(losses) + 1)]
    base: dict[str, float] = {}
    for n in pixels:
        z, _ = _inputs(b, n_views, n, d)
        big = n > 1000  # seconds per call: one run, no warm-up
        ts = _interleaved(list(losses.values()), z, 1 if big else reps, warmup=not big)
        cells = []
        for name, t in zip(losses, ts):
            base.setdefault(name, t)
            cells.append(f"{t / base[name]:.1f}" + (f" ({_ms(t)})" if n == pixels[0] else ""))
        rows.append(f"| {n} | " + " | ".join(cells) + f" | {(n / pixels[0]) ** 2:.0f} |")
    rows += ["", f"Views (N=1000 pixels per view; DVD-CL has V-1 pairs of 2N pixels, (S-)MVD-CL one set of "
                 "V*N):", "", "| V | " + " | ".join(losses) + " | MVD M^2 ratio | DVD pairs ratio |",
             "|---:|" + "---:|" * (len(losses) + 2)]
    base = {}
    for v in views:
        z, _ = _inputs(b, v, 1000, d)
        ts = _interleaved(list(losses.values()), z, reps)
        cells = []
        for name, t in zip(losses, ts):
            base.setdefault(name, t)
            cells.append(f"{t / base[name]:.1f}" + (f" ({_ms(t)})" if v == views[0] else ""))
        rows.append(f"| {v} | " + " | ".join(cells) + f" | {(v / views[0]) ** 2:.1f} | "
                    f"{(v - 1) / (views[0] - 1):.0f} |")
    return rows


def _recomputing(fn):
    """fn on the streaming path proper: the chunked path recomputing each chunk (KEEP_BELOW = 0)."""
    def run(z):
        saved, losses.KEEP_BELOW = losses.KEEP_BELOW, 0
        try:
            return fn(z)
        finally:
            losses.KEEP_BELOW = saved
    return run


def bench_paths(b: int, n: int, d: int, v: int, reps: int) -> list[str]:
    """Every loss forced on the dense path (``stream_above=None``) and on the chunked path
    (``stream_above=0``, default chunk), streaming (recomputing) and keeping, interleaved."""
    z, _ = _inputs(b, v, n, d)
    dense = _cases(b, v, n, d, stream_above=None)
    chunked = _cases(b, v, n, d, stream_above=0, chunk_size=CHUNK_SIZE)
    rows = [f"Size as in section 1 (B={b}, N={n}, D={d}, V={v}), float32, {reps} interleaved repetitions "
            f"(median). Chunks of {CHUNK_SIZE} rows; streaming recomputes each chunk in the backward, keeping "
            f"reuses the chunks of the forward (blocks of up to KEEP_BELOW = {losses.KEEP_BELOW} elements). "
            f"By default on CPU every block of at most KEEP_BELOW elements is kept (symmetric form); off CPU, "
            f"sets of more than `stream_above={STREAM_ABOVE}` pixels take the chunked path.", "",
            "| loss | pixels per set M | default path | dense (ms) | streaming (ms) | keeping (ms) | "
            "streaming / dense | keeping / dense |",
            "|---|---:|---|---:|---:|---:|---:|---:|"]
    sizes = [2 * n, 2 * n, v * n, 2 * n, v * n, b * 2 * n]
    sets = [b, b * (v - 1), b, b * (v - 1), b, 1]  # G: contrast sets of one call
    for (name, (fd, *_)), (_, (fc, *_)), m, g in zip(dense.items(), chunked.items(), sizes, sets):
        td, ts, tk = _interleaved([fd, _recomputing(fc), fc], z, reps)
        default = "keeping" if g * m * m <= losses.KEEP_BELOW else "streaming"  # on CPU
        rows.append(f"| {name} | {m} | {default} | {_ms(td)} | {_ms(ts)} | {_ms(tk)} | {ts / td:.2f} | {tk / td:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer repetitions and sizes, no chunk sweep (about 1 min of CPU, plus 2 for section 5)")
    ap.add_argument("--skip-memory", action="store_true", help="leave out section 5 (SSDCL memory, several min)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "losses.md"))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    reps = 2 if args.quick else 3
    pixels = [250, 500, 1000, 2000] if args.quick else [250, 500, 1000, 2000, 4000]
    views = [2, 3, 4] if args.quick else [2, 3, 4, 5, 6]
    t_start, c_start = time.perf_counter(), time.process_time()
    sections = [
        ("1. Ours vs the naive masked implementation, realistic size", bench_vs_masked(2, 1000, 128, 4, reps)),
        ("2. Ours vs the loop reference, equal small size", bench_vs_loops(1, 12, 16, 4, 2 * reps)),
        ("3. Scaling", bench_scaling(1, 128, pixels, views, 4, reps)),
        ("4. Dense vs streaming log-sum-exp, every loss", bench_paths(2, 1000, 128, 4, reps)),
    ]
    if not args.skip_memory:
        sections.append(("5. SSDCL with batch negatives up to the paper's batch: memory and time",
                         bench_ssdcl_memory.section(quick=args.quick, reps=reps)))
    lines = ["# Dense contrastive losses: forward + backward on CPU", "",
             f"`python benchmarks/bench_losses.py{' --quick' if args.quick else ''}"
             f"{' --skip-memory' if args.skip_memory else ''}`, "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, torch {torch.__version__}, "
             f"1 thread, {platform.processor() or platform.machine()}. The machine is shared: compare "
             "ratios within this file, not absolute times across runs.", ""]
    for title, rows in sections:
        lines += [f"## {title}", "", *rows, ""]
    lines.append(f"Total benchmark time: {time.process_time() - c_start:.0f} s CPU in this process, "
                 f"{time.perf_counter() - t_start:.0f} s wall (the difference: other load on the machine"
                 f"{'' if args.skip_memory else ', and the CPU of section 5 child processes, in its tables'}).")
    out = Path(args.out)
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
