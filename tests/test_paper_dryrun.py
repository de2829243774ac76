"""A CPU dry run of the ``paper`` profile (224 px, ResNet50, the HVAE's seven levels) with tiny
counts: every stage once, so the GPU profile cannot silently break (issue 10, section 5).

Data (the phantom rendered at 224 px), the HVAE (narrower widths, the paper's seven levels and
latent sizes), its counterfactuals, one pre-training step of a counterfactual method (HVAE views,
as in the paper) and of SSDCL (batch negatives), one fine-tuning epoch of two folds and the
metrics, and the GPU benchmark's ``--dry-run``. Runs and data go to the test's tmp folders
(``dirs`` of conftest.py).
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cfcl import finetune as ft
from cfcl import pretrain as pt
from cfcl.config import get_profile
from cfcl.counterfactual.generate import generate
from cfcl.counterfactual.hvae_train import train_hvae
from cfcl.data import load_split, make_data
from cfcl.runs import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

#: The paper profile at tiny counts. Kept from the paper: 224 px, ResNet50, 1,000 pixels per view,
#: the HVAE's 7 levels, latent sizes and 2 blocks per resolution; narrowed: the HVAE's widths.
TINY_PAPER = {
    "data.n_pretrain": 4, "data.n_val": 2, "data.n_test": 4,
    "data.n_annotated_healthy": 2, "data.n_annotated_effusion": 2,
    "hvae.widths": [8, 8, 8, 8, 8, 8, 8], "hvae.epochs": 1, "hvae.batch_size": 4, "hvae.cf_batch_size": 4,
    "hvae.cf_finetune_steps": 0, "hvae.classifier_epochs": 1,
    "pretrain.steps": 1, "pretrain.batch_size": 2, "pretrain.warmup_steps": 0,
    "finetune.folds": 2, "finetune.epochs": 1, "finetune.batch_size": 2,
    "latent.n_images": 2, "latent.chromap_images": 2, "latent.pixels_per_image": 50, "latent.umap_neighbors": 5,
}


@pytest.mark.slow
def test_paper_profile_dry_run(dirs):
    prof = get_profile("paper", TINY_PAPER)
    assert (prof.data.image_size, prof.pretrain.encoder, prof.pretrain.pixels_per_view) == (224, "resnet50", 1000)
    assert len(prof.hvae.widths) == 7

    make_data(prof)
    pre = load_split(prof, "pretrain")
    assert pre.images.shape == (4, 224, 224) and pre.silver.shape == (4, 224, 224)

    train_hvae(prof, progress=False)
    cf = generate(prof, "pretrain", progress=False)
    assert cf.shape == (4, 3, 224, 224) and cf.dtype == np.uint8

    for method in ("s_mvd_cl", "ssdcl"):  # HVAE views (4 views, S-MVD-CL); batch negatives (SSDCL)
        run = pt.pretrain(prof, method, progress=False)
        ck = load_checkpoint(run.artifact("model.pt"))
        assert ck["step"] == 1 and any(k.startswith("unet.encoder.layer4") for k in ck["model"])
        assert np.isfinite(pt.read_losses(prof, method)["loss"]).all()

    table = ft.finetune(prof, "s_mvd_cl", progress=False)  # the paper profile's three fine-tuning seeds
    assert prof.finetune.seeds == 3 and len(table) == 4 * 3 and sorted(set(table["seed"])) == [0, 1, 2]
    assert table["dsc"].between(0, 1).all()
    assert ft.load_fold(prof, "s_mvd_cl", 0)["test_pred"].shape == (4, 224, 224)


@pytest.mark.slow
def test_gpu_benchmark_dry_run(tmp_path):
    """``benchmarks/bench_gpu.py --dry-run``: the GPU benchmark's every path on CPU, tiny counts."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--dry-run",
                          "--out", str(tmp_path / "gpu.md")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    text = (tmp_path / "gpu.md").read_text()
    for method in pt.METHODS:
        if pt.METHODS[method].pretrained:
            assert f"| {method} |" in text
    for stage in ("HVAE ELBO step", "HVAE counterfactual fine-tuning step", "fine-tuning step"):
        assert f"| {stage} |" in text
    assert "Projected device time of `make reproduce PROFILE=paper`" in text


def test_startup_benchmark_reads_every_import_of_a_notebook():
    """``cfcl.jupyter.notebook_imports`` (used by the startup benchmark): the import statements of every code cell, multi-line ones whole,
    and nothing else (notebook 02 imports over two lines and computes in the same cells)."""
    from cfcl.jupyter import notebook_imports

    code = notebook_imports(ROOT / "notebooks" / "02_counterfactuals.ipynb")
    compile(code, "imports", "exec")
    lines = code.splitlines()
    assert all(line.startswith(("import ", "from ")) for line in lines)
    assert any("plot_before_after" in line and "plot_changed_regions" in line for line in lines)
    assert "from cfcl.counterfactual.cf_finetune import counterfactual_model_run" in code
