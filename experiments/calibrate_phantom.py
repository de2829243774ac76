"""Calibrate the phantom against the paper's "None" row with the project's own fine-tuning code.

The paper's "None" row (random init, Table 2) is DSC 87.05 overall, 93.59 on healthy images
(DSC_NF) and 84.76 on effusion images (DSC_PE). This script runs exactly what the pipeline runs
for ``none`` (:func:`cfcl.finetune.train_fold` from random init and :func:`cfcl.finetune.predict`,
the profile's folds from :func:`cfcl.finetune.folds`) on the profile's annotated split, and reports

- **cv**: the held-out folds of the 5-fold cross-validation (the paper's protocol), per fold DSC,
  DSC_NF, DSC_PE, then mean +- std over folds (sample std, as :func:`cfcl.metrics.summarise_folds`);
- **test**: the same fold models on the profile's test split (balanced over scanner x effusion);
- **curve**: a low-label curve on the test split: 10 labels (3 healthy + 7 effusion), 20 (6 + 14)
  drawn from each fold's training images, and 56 (all of them, the cv models);
- **speed** (``--speed``): phantom generation (factual + 3 counterfactuals + masks) at 128 px, this
  version against an older copy of the module (``--old-module``) in one process, interleaved, as a
  ratio, because the machine is shared and absolute timings drift;
- **figures** (``--figures DIR``): ``phantom_samples.png`` (scanner x effusion x sex, gold and
  silver outlines) and ``phantom_counterfactuals.png`` (x, do(scanner), do(effusion), do(both) and
  the differences).

DSC is per image the mean over the two lungs (:func:`cfcl.metrics.dice`), in %. The splits come
from the phantom's own store (:func:`cfcl.data.phantom.load_split`, made on first use: the same
arrays the data stage serves). Typical use (about 15 min on one core)::

    CFCL_CACHE=/tmp/phantom_cache CFCL_RUNS=/tmp/phantom_runs OMP_NUM_THREADS=1 \\
        .venv/bin/python experiments/calibrate_phantom.py --profile cpu --curve-folds 0 1

    git show 4ec8a8d:cfcl/data/phantom.py > /tmp/phantom_v3.py   # the v3 renderer, for --speed
    .venv/bin/python experiments/calibrate_phantom.py --no-train --speed --old-module /tmp/phantom_v3.py \\
        --figures experiments/results

Writes a markdown report to stdout (and ``--json``); the figures of record are in
experiments/results/phantom.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cfcl import metrics
from cfcl.config import INTERVENTIONS, get_profile
from cfcl.data import phantom as ph
from cfcl.finetune import folds, predict, train_fold

PAPER_NONE = {"DSC": 87.05, "DSC_NF": 93.59, "DSC_PE": 84.76}
CURVE = {10: (3, 7), 20: (6, 14)}  # labels: (healthy, effusion)


def dsc(pred: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per-image DSC (N,) in %: mean over the two lungs (:func:`cfcl.metrics.dice`)."""
    return 100 * metrics.dice(pred, np.asarray(gold)).mean(1)


def groups(d: np.ndarray, effusion: np.ndarray) -> dict[str, float]:
    """DSC over all images, healthy (NF) and effusion (PE) images."""
    return {"DSC": float(d.mean()), "DSC_NF": float(d[effusion == 0].mean()), "DSC_PE": float(d[effusion == 1].mean())}


def subset(train: np.ndarray, effusion: np.ndarray, n_healthy: int, n_effusion: int, seed: int) -> np.ndarray:
    """A fixed random subset of ``train`` indices with the given numbers of healthy/effusion images."""
    rng = np.random.default_rng(seed)
    pick = [rng.permutation(train[effusion[train] == e])[:n] for e, n in ((0, n_healthy), (1, n_effusion))]
    return np.sort(np.concatenate(pick))


def summary(rows: list[dict[str, float]]) -> dict[str, str]:
    t = pd.DataFrame(rows)
    return {c: f"{t[c].mean():.2f} ± {t[c].std(ddof=1) if len(t) > 1 else float('nan'):.2f}" for c in PAPER_NONE}


def calibrate(profile_name: str, fold_ids: list[int], curve_folds: list[int], log, dump: Path | None = None) -> dict:
    prof = get_profile(profile_name)
    # The phantom's own store (generates a split on first use); the data stage serves the same arrays.
    ann, test = ph.load_split(prof.data, "annotated"), ph.load_split(prof.data, "test")
    images, gold = np.asarray(ann.images), np.asarray(ann.gold)
    eff = ann.parents["effusion"].to_numpy()
    t_img, t_gold = np.asarray(test.images), np.asarray(test.gold)
    t_eff = test.parents["effusion"].to_numpy()
    fold_of = folds(eff, prof.finetune.folds, prof.seed)
    out: dict = {"cv": {}, "test": {}, "curve": {}}
    for k in fold_ids:
        t0 = time.perf_counter()
        train = np.flatnonzero(fold_of != k)
        model = train_fold(prof, "none", images[train], gold[train], None, k, progress=False)
        held = np.flatnonzero(fold_of == k)
        pred_cv, pred_te = predict(model, images[held]), predict(model, t_img)
        out["cv"][k] = groups(dsc(pred_cv, gold[held]), eff[held])
        out["test"][k] = groups(dsc(pred_te, t_gold), t_eff)
        if dump is not None:
            np.savez_compressed(dump / f"fold{k}.npz", held=held, pred_cv=pred_cv, pred_test=pred_te)
        out["curve"].setdefault(len(train), {})[k] = out["test"][k]
        log(f"fold {k} ({len(train)} labels, {time.perf_counter() - t0:.0f} s): cv {fmt(out['cv'][k])} | "
            f"test {fmt(out['test'][k])}")
    for n, (nh, ne) in CURVE.items():
        for k in curve_folds:
            t0 = time.perf_counter()
            train = subset(np.flatnonzero(fold_of != k), eff, nh, ne, seed=1000 * n + k)
            model = train_fold(prof, "none", images[train], gold[train], None, k, progress=False)
            out["curve"].setdefault(n, {})[k] = groups(dsc(predict(model, t_img), t_gold), t_eff)
            log(f"curve {n} labels fold {k} ({time.perf_counter() - t0:.0f} s): test {fmt(out['curve'][n][k])}")
    return out


def fmt(d: dict[str, float]) -> str:
    return f"{d['DSC']:.1f} / {d['DSC_NF']:.1f} / {d['DSC_PE']:.1f}"


def reweighted(d: dict[str, float], share_healthy: float) -> dict[str, float]:
    """The test split's overall DSC as if it had the annotated split's share of healthy images
    (the test split is balanced 50:50, the annotated one 20:50)."""
    return {**d, "DSC": share_healthy * d["DSC_NF"] + (1 - share_healthy) * d["DSC_PE"]}


def report(res: dict, profile_name: str) -> str:
    data = get_profile(profile_name).data
    share = data.n_annotated_healthy / (data.n_annotated_healthy + data.n_annotated_effusion)
    lines = [f"profile {profile_name}; DSC / DSC_NF / DSC_PE in %, mean ± std over folds (sample std)", "",
             "| evaluation | folds | DSC | DSC_NF | DSC_PE |", "|---|---|---|---|---|",
             "| paper, None (Table 2) | 5 | 87.05 ± 4.34 | 93.59 ± 1.28 | 84.76 ± 1.28 |"]
    for name, key in (("held-out folds (CV, paper protocol)", "cv"), ("test split", "test")):
        if res[key]:
            s = summary(list(res[key].values()))
            lines.append(f"| {name} | {len(res[key])} | {s['DSC']} | {s['DSC_NF']} | {s['DSC_PE']} |")
    if res["test"]:
        s = summary([reweighted(d, share) for d in res["test"].values()])
        lines.append(f"| test split, DSC reweighted to {share:.0%} healthy | {len(res['test'])} | {s['DSC']} "
                     f"| {s['DSC_NF']} | {s['DSC_PE']} |")
    lines += ["", "Per fold (cv | test):"]
    for k in res["cv"]:
        lines.append(f"- fold {k}: {fmt(res['cv'][k])} | {fmt(res['test'][k])}")
    if res["curve"]:
        lines += ["", "Low-label curve on the test split (None):", "",
                  "| labels | folds | DSC | DSC_NF | DSC_PE | per fold DSC |", "|---|---|---|---|---|---|"]
        for n in sorted(res["curve"]):
            s = summary(list(res["curve"][n].values()))
            per = ", ".join(f"{res['curve'][n][k]['DSC']:.1f}" for k in sorted(res["curve"][n]))
            lines.append(f"| {n} | {len(res['curve'][n])} | {s['DSC']} | {s['DSC_NF']} | {s['DSC_PE']} | {per} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Generation speed
# ----------------------------------------------------------------------------------------------

def _load_module(path: str):
    spec = importlib.util.spec_from_file_location("phantom_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _generate(mod, n: int, size: int, chunk: int) -> float:
    """Seconds to generate ``n`` images with 3 counterfactuals and labels with module ``mod``."""
    bank = mod._bank()
    t0 = time.perf_counter()
    noise = mod.sample_noise(n, 0, "pretrain", len(bank))
    parents = mod.sample_parents(n, np.random.default_rng(0))
    for lo in range(0, n, chunk):
        mod.render_with_counterfactuals(mod.take(noise, slice(lo, lo + chunk)),
                                        parents.iloc[lo:lo + chunk].reset_index(drop=True), size)
    return time.perf_counter() - t0


def speed(old_module: str | None, n: int = 256, size: int = 128, chunk: int = 64, repeats: int = 3) -> dict:
    """Images/s of this phantom and of ``old_module`` (a path to an older ``phantom.py``),
    interleaved ``repeats`` times in one process; the ratio uses the best time of each."""
    mods = {"new": ph}
    if old_module:
        mods["old"] = _load_module(old_module)
    for mod in mods.values():  # warm-up: shape bank, joint distribution
        _generate(mod, chunk, size, chunk)
    best = {k: float("inf") for k in mods}
    for _ in range(repeats):
        for k, mod in mods.items():
            best[k] = min(best[k], _generate(mod, n, size, chunk))
    out = {f"{k}_images_per_s": n / t for k, t in best.items()}
    if "old" in best:
        out["new_over_old_time"] = best["new"] / best["old"]
    return out


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _contours(ax, labels: np.ndarray, color: str, style: str = "-") -> None:
    for k in (1, 2):
        m = (labels == k).astype(float)
        if m.any():
            ax.contour(m, levels=[0.5], colors=color, linewidths=0.8, linestyles=style)


def figures(folder: Path, size: int = 256, seed: int = 0) -> list[Path]:
    """The sample grid and the counterfactual grid (see the module docstring), from fresh noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bank = ph._bank()
    cells = [dict(scanner=sc, effusion=ef, sex=sx) for sc in (0, 1) for ef in (0, 1) for sx in (0, 1)]
    parents = pd.DataFrame([c for c in cells for _ in range(2)])[["sex", "scanner", "effusion"]]
    noise = ph.sample_noise(len(parents), seed, "val", len(bank))
    r = ph.render(noise, parents, size)
    fig, axes = plt.subplots(4, 4, figsize=(12, 12.8))
    for i, ax in enumerate(axes.flat):
        p = parents.iloc[i]
        ax.imshow(r["image"][i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        _contours(ax, r["gold"][i], "lime")
        _contours(ax, r["silver"][i], "red", "--")
        ax.set_title(f"{'M' if p.sex else 'F'}, {'Philips' if p.scanner else 'ImagingDyn.'}, "
                     f"{'PE' if p.effusion else 'no PE'}, q {r['quality'][i]:.2f}", fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"Phantom v{ph.PHANTOM_VERSION} ({size} px): gold (green) and silver (red dashed) lungs", fontsize=11)
    fig.tight_layout()
    paths = [folder / "phantom_samples.png"]
    fig.savefig(paths[0], dpi=80)
    plt.close(fig)

    rows = [0, 3, 9, 14]  # a mix of scanners, sexes and effusion states
    sub = ph.take(noise, rows)
    par = parents.iloc[rows].reset_index(drop=True)
    out = ph.render_with_counterfactuals(sub, par, size)
    fig, axes = plt.subplots(len(rows), 7, figsize=(17.5, 2.6 * len(rows)))
    for i in range(len(rows)):
        p = par.iloc[i]
        x = out["image"][i].astype(np.int16)
        axes[i, 0].imshow(out["image"][i], cmap="gray", vmin=0, vmax=255)
        axes[i, 0].set_title(f"x: {'Philips' if p.scanner else 'ImagingDyn.'}, {'PE' if p.effusion else 'no PE'}",
                             fontsize=9)
        for j, name in enumerate(INTERVENTIONS):
            cf = out["counterfactuals"][i, j]
            axes[i, 1 + j].imshow(cf, cmap="gray", vmin=0, vmax=255)
            axes[i, 1 + j].set_title(f"do({name})", fontsize=9)
            axes[i, 4 + j].imshow(cf.astype(np.int16) - x, cmap="RdBu_r", vmin=-128, vmax=128)
            axes[i, 4 + j].set_title(f"do({name}) - x", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    paths.append(folder / "phantom_counterfactuals.png")
    fig.savefig(paths[1], dpi=70)
    plt.close(fig)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--folds", type=int, nargs="*", default=None, help="cv folds to run (default: all)")
    ap.add_argument("--curve-folds", type=int, nargs="*", default=[0, 1],
                    help="folds whose 10- and 20-label subsets are trained (default 0 1; none: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", action="store_true", help="measure generation speed")
    ap.add_argument("--old-module", default=None, help="path to an older phantom module for the speed ratio")
    ap.add_argument("--figures", type=Path, default=None, help="folder for the two PNG grids")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    ap.add_argument("--no-train", action="store_true", help="skip the fine-tuning runs")
    ap.add_argument("--dump", type=Path, default=None, help="save each fold's predictions here (npz)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict = {"version": ph.PHANTOM_VERSION, "profile": args.profile}
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    if args.figures:
        args.figures.mkdir(parents=True, exist_ok=True)
        print("figures:", ", ".join(str(p) for p in figures(args.figures)), flush=True)
    if args.speed:
        res["speed"] = speed(args.old_module)
        print("speed at 128 px (factual + 3 counterfactuals + labels):", json.dumps(res["speed"]), flush=True)
    if not args.no_train:
        n_folds = get_profile(args.profile).finetune.folds
        t0 = time.perf_counter()
        res.update(calibrate(args.profile, args.folds if args.folds is not None else list(range(n_folds)),
                             args.curve_folds, lambda s: print(s, flush=True), args.dump))
        res["minutes"] = (time.perf_counter() - t0) / 60
        print(f"\n{report(res, args.profile)}\n\ntraining and evaluation took {res['minutes']:.1f} min")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
