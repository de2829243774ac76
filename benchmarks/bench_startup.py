"""A notebook's fixed cost: what every papermill run pays before it computes anything (issue 10, section 4).

    python benchmarks/bench_startup.py            # writes benchmarks/results/startup.md
    python benchmarks/bench_startup.py --reps 3   # fewer rounds

`make reproduce` executes each notebook in its own papermill process and kernel (22 at `smoke`: 00, 01, 02,
eight pre-trainings, nine fine-tunings, 05, 06), so what one start costs is paid 22 times. Each line below is
a fresh Python process importing one thing, timed in that process's CPU time (user + sys, from
``os.wait4``'s resource usage: robust to other processes on a shared machine), median over ``--reps``
interleaved rounds (one process of each line in turn):

- the runner: what ``python -m cfcl.jupyter`` (the Makefile's papermill, on private-socket kernels)
  imports before it starts a kernel, ``import papermill.cli, cfcl.jupyter``, and the same with
  ``rfc3987_syntax`` made unimportable (what ``make install`` does by removing it: jsonschema, which
  papermill reads notebooks with, otherwise builds that package's ~35 Lark parsers at import; jsonschema
  issue #1428). If the package is not installed (an environment made by ``make install``), the first line
  is the second;
- the kernel: ``import ipykernel.kernelapp``;
- each notebook's imports: the import statements of its code cells (``notebooks/*.ipynb``, parsed);
- the heavy libraries one by one, to say which of them a notebook's imports are.

The last table multiplies each notebook's fixed cost (runner + kernel + its imports) by the number of times
the `smoke` pipeline runs it.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from cfcl.jupyter import notebook_imports

ROOT = Path(__file__).resolve().parents[1]
NO_RFC = "import sys; sys.modules['rfc3987_syntax'] = None; "
LIBRARIES = {
    "torch": "import torch",
    "segmentation_models_pytorch (timm, torchvision)": "import segmentation_models_pytorch",
    "torchvision.ops (imports torch._dynamo)": "import torchvision.ops",
    "sklearn.model_selection": "import sklearn.model_selection",
    "scipy.stats": "import scipy.stats",
    "matplotlib.pyplot": "import matplotlib.pyplot",
    "umap": "import umap",
}


def cpu_seconds(code: str) -> float:
    """CPU time (user + sys) of a fresh interpreter running ``code``; fails loudly if ``code`` fails."""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench_startup: `{code[:80]}` failed:\n{err[-2000:]}")
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "startup.md"))
    args = ap.parse_args()

    from cfcl.methods import FINETUNE_METHODS, PRETRAIN_METHODS  # plain Python: the registry

    has_rfc = importlib.util.find_spec("rfc3987_syntax") is not None
    runner = "import papermill.cli, cfcl.jupyter"
    lines: dict[str, str] = {
        f"runner: {runner}" + ("" if has_rfc else " (rfc3987-syntax not installed)"): runner,
        f"runner: {runner}, rfc3987_syntax unimportable": NO_RFC + runner,
        "kernel: import ipykernel.kernelapp": "import ipykernel.kernelapp",
        "python -c pass": "pass",
    }
    notebooks = sorted((ROOT / "notebooks").glob("0[0-6]_*.ipynb"))
    for nb in notebooks:
        lines[f"imports of {nb.stem}"] = notebook_imports(nb)
    for name, code in LIBRARIES.items():
        lines[f"library: {name}"] = code

    load = os.getloadavg()
    times: dict[str, list[float]] = {k: [] for k in lines}
    for r in range(args.reps):
        for k, code in lines.items():
            times[k].append(cpu_seconds(code))
        print(f"round {r + 1}/{args.reps} done", file=sys.stderr)
    med = {k: statistics.median(v) for k, v in times.items()}

    runner_now = med[next(iter(lines))]
    runner_without = med[f"runner: {runner}, rfc3987_syntax unimportable"]
    kernel = med["kernel: import ipykernel.kernelapp"]
    runs = {"00_data": 1, "01_train_hvae": 1, "02_counterfactuals": 1, "03_pretrain": len(PRETRAIN_METHODS),
            "04_finetune": len(FINETUNE_METHODS), "05_latent_space": 1, "06_results": 1}
    rows, total_now, total_without = [], 0.0, 0.0
    for nb in notebooks:
        n = runs[nb.stem]
        own = med[f"imports of {nb.stem}"]
        rows.append(f"| {nb.stem} | {n} | {own:.2f} | {runner_now + kernel + own:.2f} | "
                    f"{runner_without + kernel + own:.2f} |")
        total_now += n * (runner_now + kernel + own)
        total_without += n * (runner_without + kernel + own)

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# A notebook's fixed cost (`python benchmarks/bench_startup.py`)",
        "",
        f"{stamp}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; CPU seconds (user + sys) of a fresh process, median of {args.reps} "
        "interleaved rounds. rfc3987-syntax " + ("installed" if has_rfc else "not installed") + " here. Load "
        f"average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after (CPU time counts a process's own work, "
        "but a loaded machine's shared caches inflate it).",
        "",
        "| process | CPU s |", "| --- | --- |",
        *(f"| {k} | {v:.2f} |" for k, v in med.items()),
        "",
        "Per notebook: its imports, and its whole fixed cost (runner + kernel + imports) with the runner as "
        "installed here and without rfc3987-syntax; `runs` is how often the `smoke` pipeline executes it.",
        "",
        "| notebook | runs | imports | fixed, as here | fixed, without rfc3987-syntax |",
        "| --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"The `smoke` pipeline's {sum(runs.values())} notebooks pay {total_now:.0f} CPU s of fixed cost as "
        f"installed here, {total_without:.0f} without rfc3987-syntax (ratio {total_without / total_now:.2f}).",
        "",
    ]
    Path(args.out).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
