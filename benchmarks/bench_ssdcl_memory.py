"""Memory and time of SSDCL (batch negatives): the dense similarity block vs the streaming path.

    python benchmarks/bench_ssdcl_memory.py [--quick] [--batches 1 2 4 8 16 32] [--dense-max-batch 8]

Prints a Markdown section (``benchmarks/bench_losses.py`` puts the same section into
``benchmarks/results/losses.md``). SSDCL draws its negatives from the whole batch, so its contrast
set has ``M = B * V * N`` pixels (paper: B=32 images, V=2 views, N=1,000 pixels, D=128, so
M = 64,000). Two measurements, both forward + backward on one CPU thread, float32:

1. Peak memory: every configuration (path, batch, chunk) runs ONCE in a fresh Python process
   (``--child``), which reports its peak resident set size (``VmHWM`` of /proc/self/status, reset
   to the current RSS just before the loss call; not ``ru_maxrss``, which a child inherits from
   its parent across fork + exec; tracemalloc does not see torch's allocations) and its RSS just
   before the loss call; the difference is the loss's own peak (inputs, imports and the
   interpreter excluded). The dense
   path is only run up to ``--dense-max-batch`` (its block is ``4 M^2`` bytes: 16 GB at the
   paper's batch, above this machine's 24 GB once the backward's copies are counted); beyond it
   the table gives the quadratic extrapolation.
2. Time ratio streaming / dense: interleaved repetitions in this process (median CPU time), with
   the largest value and gradient difference between the two paths.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cfcl.losses as losses  # noqa: E402
from cfcl.losses import CHUNK_SIZE, SSDCL, STREAM_ABOVE  # noqa: E402

VIEWS, PIXELS, DIM = 2, 1000, 128  # the paper's SSDCL batch: B x 2 views x 1,000 pixels, D = 128


def _inputs(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, VIEWS, PIXELS, DIM, generator=g), torch.randint(0, 3, (b, VIEWS, PIXELS), generator=g)


def _loss(path: str, chunk: int):
    """``path="dense"``: one similarity block whatever its size; ``"stream"``: always streamed
    (recomputing each chunk in the backward: ``cfcl.losses.KEEP_BELOW = 0`` during the call)."""
    if path == "dense":
        return SSDCL(stream_above=None)
    loss = SSDCL(stream_above=0, chunk_size=chunk)

    def streamed(z, lab):
        saved, losses.KEEP_BELOW = losses.KEEP_BELOW, 0
        try:
            return loss(z, lab)
        finally:
            losses.KEEP_BELOW = saved
    return streamed


def _status_mb() -> dict[str, float]:
    """``VmRSS`` (current) and ``VmHWM`` (peak) resident set size of this process, in MB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024  # kB
    return out


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux >= 4.0); False where refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(spec: dict) -> dict:
    """One forward + backward in this (fresh) process; memory in MB.

    Peak = the process's high-water RSS (``VmHWM``); ``resource.getrusage(...).ru_maxrss`` is
    printed too, but on Linux it is not reset by fork + exec (a child reports at least its
    parent's RSS at the fork, several GB inside ``bench_losses.py``), so the table uses VmHWM,
    which belongs to the new address space. The peak is reset just before the loss call where
    the kernel allows it, so ``loss_mb`` is the loss's own peak over the RSS before the call."""
    torch.set_num_threads(1)
    z, lab = _inputs(spec["batch"])
    z.requires_grad_(True)
    reset = _reset_peak()
    before = _status_mb()
    t0, w0 = time.process_time(), time.perf_counter()
    loss = _loss(spec["path"], spec["chunk"])(z, lab)
    loss.backward()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    after = _status_mb()
    return dict(spec, peak_mb=after["VmHWM"], before_mb=before["VmRSS"], loss_mb=after["VmHWM"] - before["VmRSS"],
                peak_reset=reset, ru_maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                cpu_s=cpu, wall_s=wall, value=loss.item())


_MEASURED: dict[tuple[str, int, int], dict] = {}


def measure(path: str, batch: int, chunk: int = CHUNK_SIZE) -> dict:
    """Run one configuration in a fresh process (one thread) and return its measurements (once
    per configuration and parent process)."""
    key = (path, batch, chunk)
    if key not in _MEASURED:
        _MEASURED[key] = _measure(*key)
    return _MEASURED[key]


def _measure(path: str, batch: int, chunk: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    spec = json.dumps(dict(path=path, batch=batch, chunk=chunk))
    out = subprocess.run([sys.executable, __file__, "--child", spec], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fb(loss, z: torch.Tensor, lab: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    x = z.detach().clone().requires_grad_(True)
    t0 = time.process_time()
    value = loss(x, lab)
    value.backward()
    return time.process_time() - t0, value.detach(), x.grad


def time_ratios(batches: list[int], chunk: int, reps: int) -> list[str]:
    rows = ["| B | M | dense (ms) | streaming (ms) | streaming / dense | max abs value diff | "
            "max abs grad diff (max abs grad) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for b in batches:
        z, lab = _inputs(b)
        dense, stream = _loss("dense", chunk), _loss("stream", chunk)
        n = reps if b <= 4 else 1  # seconds per call above: one run, no warm-up
        if n > 1:
            _fb(dense, z, lab), _fb(stream, z, lab)
        td, ts = [], []
        for _ in range(n):
            t, vd, gd = _fb(dense, z, lab)
            td.append(t)
            t, vs, gs = _fb(stream, z, lab)
            ts.append(t)
        d, s = statistics.median(td), statistics.median(ts)
        rows.append(f"| {b} | {b * VIEWS * PIXELS} | {1000 * d:.0f} | {1000 * s:.0f} | {s / d:.2f} | "
                    f"{(vd - vs).abs().item():.1e} | {(gd - gs).abs().max().item():.1e} "
                    f"({gd.abs().max().item():.1e}) |")
        del gd, gs
    return rows


def memory_rows(batches: list[int], dense_max_batch: int, chunk: int, chunks: list[int]) -> list[str]:
    rows = [f"Streaming in chunks of {chunk} rows vs the dense block; fresh process per cell; peak = "
            "the whole process's peak RSS during the forward + backward (VmHWM, reset just before; the "
            "process holds about 650 MB before it: the interpreter, torch, the inputs), loss = peak minus "
            "the RSS just before the loss call; block/chunk = "
            "the float32 size of one similarity block (M x M) / one chunk (chunk x M); growth = increase "
            "of the streaming loss's memory over the previous row, per added pixel (an embedding is "
            f"{4 * DIM} bytes). Dense beyond B={dense_max_batch}: not run, its memory extrapolated as "
            "(dense loss / block of the largest dense run) x block.", "",
            "| B | M | dense block (MB) | dense peak (MB) | dense loss (MB) | dense CPU (s) | "
            "chunk (MB) | streaming peak (MB) | streaming loss (MB) | streaming CPU (s) | "
            "streaming growth (KB per added pixel) |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    dense_ratio, prev = None, None
    for b in batches:
        m = b * VIEWS * PIXELS
        block, chunk_mb = 4 * m * m / 2 ** 20, 4 * min(chunk, m) * m / 2 ** 20
        s = measure("stream", b, chunk)
        if b <= dense_max_batch:
            d = measure("dense", b, chunk)
            dense_ratio = d["loss_mb"] / block
            dense = f"{d['peak_mb']:.0f} | {d['loss_mb']:.0f} | {d['cpu_s']:.1f}"
        else:
            extra = f"~{dense_ratio * block:,.0f} (extrapolated)" if dense_ratio else "not run"
            dense = f"not run | {extra} | not run"
        growth = "" if prev is None else f"{1024 * (s['loss_mb'] - prev[1]) / (m - prev[0]):.1f}"
        prev = (m, s["loss_mb"])
        rows.append(f"| {b} | {m:,} | {block:,.0f} | {dense} | {chunk_mb:.0f} | {s['peak_mb']:.0f} | "
                    f"{s['loss_mb']:.0f} | {s['cpu_s']:.1f} | {growth} |")
    if not all(r["peak_reset"] for r in _MEASURED.values()):
        rows += ["", "Note: the kernel refused to reset the peak RSS in some runs; their peak includes the "
                 "import of torch."]
    if chunks:
        b = batches[-1]
        m = b * VIEWS * PIXELS
        rows += ["", f"Chunk size at B={b} (M={m:,}), streaming, fresh process per row:", "",
                 "| chunk (rows) | chunk (MB) | peak (MB) | loss (MB) | CPU (s) |", "|---:|---:|---:|---:|---:|"]
        for c in chunks:
            s = measure("stream", b, c)
            rows.append(f"| {c} | {4 * c * m / 2 ** 20:.0f} | {s['peak_mb']:.0f} | {s['loss_mb']:.0f} | "
                        f"{s['cpu_s']:.1f} |")
    return rows


def intro() -> list[str]:
    """The fixed text that opens the section: the method and the setting."""
    return [
        "Method (`cfcl/losses.py`, module docstring): the core's denominator is the row log-sum-exp of the "
        "M x M similarity block (self excluded). Blocks larger than KEEP_BELOW elements go through "
        "`_StreamingLSE`, a custom autograd Function that computes the block in chunks of `chunk_size` rows "
        "into one reused buffer, keeps only the normalised embeddings and the row log-sum-exp, and recomputes "
        "each chunk in the backward (symmetric form: one shift per set, so row r of the gradient is "
        "`sum_j (b_r + b_j) E_rj z_j` with `E = exp(S - shift)`, one matmul per chunk). Memory: one chunk "
        "(`chunk_size x M`) plus a few `M x D` tensors, linear in the pixels. Equality with the dense path "
        "and the loop references: `tests/test_losses.py`.", "",
        f"SSDCL (`negatives=\"batch\"`) at B images x {VIEWS} views x {PIXELS} pixels, D={DIM}, float32, "
        f"forward + backward, one thread; the paper's batch is B=32 (M=64,000). Defaults: "
        f"`stream_above={STREAM_ABOVE}`, `chunk_size={CHUNK_SIZE}`; here each path is forced "
        "(`stream_above=None`: dense, `stream_above=0`: streaming). Alone: "
        "`OMP_NUM_THREADS=1 python benchmarks/bench_ssdcl_memory.py` (prints this section).", ""]


def section(quick: bool = False, batches: list[int] | None = None, dense_max_batch: int = 8,
            chunks: list[int] | None = None, reps: int = 3) -> list[str]:
    """The Markdown rows of the SSDCL memory / time section."""
    batches = batches or ([1, 2, 4, 8, 32] if quick else [1, 2, 4, 8, 16, 32])
    chunks = ([] if quick else [128, 256, 1024, 4096]) if chunks is None else chunks
    ratio_batches = [b for b in batches if b <= dense_max_batch]
    return [*intro(), "### Peak memory", "", *memory_rows(batches, dense_max_batch, CHUNK_SIZE, chunks), "",
            f"### Time, streaming vs dense (median of {reps} interleaved runs up to B=4, one run above)",
            "", *time_ratios(ratio_batches, CHUNK_SIZE, reps)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="no chunk sweep, batches 1 2 4 8 32")
    ap.add_argument("--batches", type=int, nargs="+")
    ap.add_argument("--dense-max-batch", type=int, default=8, help="largest batch run on the dense path")
    ap.add_argument("--chunks", type=int, nargs="*", help="chunk sizes swept at the largest batch")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    torch.set_num_threads(1)
    print("\n".join(section(args.quick, args.batches, args.dense_max_batch, args.chunks, args.reps)))


if __name__ == "__main__":
    main()
