"""Writes notebooks 03-06 (clean, no outputs). Run: .venv/bin/python notebooks/_make_03_06.py"""
from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).parent


def notebook(cells, path):
    nb = nbf.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    out = []
    for kind, src in cells:
        if kind == "md":
            out.append(nbf.v4.new_markdown_cell(src.strip()))
        elif kind == "params":
            c = nbf.v4.new_code_cell(src.strip())
            c.metadata["tags"] = ["parameters"]
            out.append(c)
        else:
            out.append(nbf.v4.new_code_cell(src.strip()))
    for i, c in enumerate(out):  # stable ids: regenerating an unchanged notebook changes nothing
        c["id"] = f"{Path(path).stem.split('_')[0]}-{i:02d}"
    nb.cells = out
    nbf.write(nb, HERE / path)


notebook([
    ("md", """
# 03 · Dense (counterfactual) contrastive pre-training

Paper sections 2.2 and 3. One U-Net (ResNet encoder) is pre-trained *whole*, encoder and decoder,
with one of eight objectives: the four proposed losses (DVD-CL, MVD-CL, S-DVD-CL, S-MVD-CL), which use
the base image and its three counterfactuals do(scanner), do(effusion), do(scanner, effusion) as views,
and the baselines SimCLR, VADeR, SSDCL (two ordinary augmentations) and CheXmask (supervised
segmentation on the silver masks). The Makefile runs this notebook once per method."""),
    ("params", """
profile = "smoke"
seed = 0
method = "s_mvd_cl"
"""),
    ("code", """
import numpy as np
from cfcl.config import get_profile
from cfcl.paths import figures_dir
from cfcl.pretrain import METHODS, PretrainData, prepare, pretrain, read_losses, step_generator
from cfcl.plots.pretrain import plot_losses, plot_tracked_views

prof = get_profile(profile, seed=seed)
spec = METHODS[method]
fig_dir = figures_dir(prof.name)
print(f"{method}: views={spec.views}, pairing={spec.pairing}, supervised={spec.supervised}")
"""),
    ("md", """
## Views and precise pixel tracking

Every view is augmented independently (rotation, crop/scale, intensity jitter, blur, solarization).
Each geometric transform is a 3x3 homogeneous matrix, so an original point is known exactly in every
view. The points below are drawn in the overlap of the active views (anchor and first target for the
dual-view losses, all views for the multi-view ones); the same colour marks the same original point."""),
    ("code", """
data = PretrainData(prof, method)
prep = prepare(data.batch(np.arange(2), spec), spec, prof, step_generator(prof.seed, 0))
fig = plot_tracked_views(prep, spec.views)
fig.savefig(fig_dir / f"views_{method}.png", dpi=120, bbox_inches="tight")
"""),
    ("md", """
## Pre-training

AdamW with warm-up and cosine decay; a checkpoint every few steps (a rerun resumes, a finished run is
reused). `python -m cfcl.pretrain --profile paper --method ...` runs the same function, also under `torchrun`."""),
    ("code", """
path = pretrain(prof, method)
print(path.relative_to(path.parents[3]))
"""),
    ("md", "## Loss curve"),
    ("code", """
fig = plot_losses(read_losses(prof, method), title=f"{method} ({prof.name})")
fig.savefig(fig_dir / f"pretrain_loss_{method}.png", dpi=120, bbox_inches="tight")
"""),
], "03_pretrain.ipynb")

notebook([
    ("md", """
# 04 · Fine-tuning: five-fold cross-validation on the annotated images

Paper sections 3 and 4.2. The whole U-Net is fine-tuned from a pre-trained checkpoint (or from random
initialisation, `none`) on the 70 annotated images (20 healthy, 50 with pleural effusion) with gold masks,
in five folds stratified so that every test fold holds 4 healthy and 10 effusion images. Metrics are
computed on each test fold: DSC (mean of both lungs), DSC on healthy (NF) and effusion (PE) images,
HD95 and ASD (pixels at the evaluation resolution). The Makefile runs this notebook once per method."""),
    ("params", """
profile = "smoke"
seed = 0
method = "s_mvd_cl"
"""),
    ("code", """
from cfcl.config import get_profile
from cfcl.data import load_split
from cfcl.finetune import finetune, load_fold
from cfcl.metrics import summarise_folds
from cfcl.paths import figures_dir
from cfcl.plots.results import plot_segmentations

prof = get_profile(profile, seed=seed)
fig_dir = figures_dir(prof.name)
"""),
    ("md", "## Fine-tune the five folds"),
    ("code", """
table = finetune(prof, method)
table.to_csv(fig_dir / f"finetune_{method}_per_image.csv", index=False)
summarise_folds(table).round(2)
"""),
    ("md", "## A test image of fold 0 with pleural effusion"),
    ("code", """
ann = load_split(prof, "annotated")
fold0 = load_fold(prof, method, 0)
rows = table[(table.fold == 0)].reset_index(drop=True)
j = int(rows.effusion.to_numpy().argmax())
i = int(rows.loc[j, "index"])
fig = plot_segmentations(ann.images[i], ann.gold[i], {method: fold0["pred"][j]}, {method: 100 * rows.loc[j, "dsc"]})
fig.savefig(fig_dir / f"finetune_example_{method}.png", dpi=120, bbox_inches="tight")
"""),
], "04_finetune.ipynb")

notebook([
    ("md", """
# 05 · Latent space before fine-tuning: Table 1 and the CHRO-maps (Figure 2)

Paper sections 2.3 and 4.1. The output pixel embeddings of the four proposed pre-trained models on
validation images are clustered by K-means (3 clusters) and scored by purity against the silver labels,
and summarised by d/σ, the inter-class distance over the intra-class standard deviation. The CHRO-map
projects the embeddings to 2-D with UMAP, maps their minimum-volume enclosing ellipse to the unit circle
and colours every pixel by angle (hue) and radius (value)."""),
    ("params", """
profile = "smoke"
seed = 0
"""),
    ("code", """
from cfcl.config import get_profile
from cfcl.latent import chromaps, latent_table
from cfcl.paths import figures_dir
from cfcl.plots.latent import plot_chromaps
from cfcl.results import write_table

prof = get_profile(profile, seed=seed)
fig_dir = figures_dir(prof.name)
PROPOSED = ["dvd_cl", "mvd_cl", "s_dvd_cl", "s_mvd_cl"]
"""),
    ("md", "## Table 1: d/σ and K-means purity of the pixel embeddings"),
    ("code", """
table1 = latent_table(prof, PROPOSED)
write_table(table1, "table1", prof, caption="Table 1: latent space of the pre-trained embeddings (val split)")
table1
"""),
    ("md", "## Figure 2: CHRO-maps of the four methods"),
    ("code", """
images, maps = chromaps(prof, PROPOSED, n_images=4)
fig = plot_chromaps(images, maps)
fig.savefig(fig_dir / "figure2_chromaps.png", dpi=150, bbox_inches="tight")
"""),
], "05_latent_space.ipynb")

notebook([
    ("md", """
# 06 · Results: Table 2, Figure 3 and robustness

Paper section 4.2. Table 2 gathers the five-fold fine-tuning results of all nine rows (random init, the
unsupervised and the supervised pre-training methods), mean ± std over the folds, beside the published
numbers. Figure 3 shows the same effusion image segmented by every method. Beyond the paper, the
phantom's exact counterfactuals measure robustness: DSC per scanner and effusion status on a held-out
test set, and how consistent each model's prediction stays under do(scanner) and do(effusion)."""),
    ("params", """
profile = "smoke"
seed = 0
"""),
    ("code", """
import pandas as pd
from cfcl.config import FINETUNE_METHODS, get_profile
from cfcl.data import load_split
from cfcl.finetune import load_fold
from cfcl.paths import figures_dir
from cfcl.plots.results import plot_segmentations
from cfcl.results import ROW_NAMES, changed_regions, claims, format_table2, robustness, table2, write_table

prof = get_profile(profile, seed=seed)
fig_dir = figures_dir(prof.name)
"""),
    ("md", "## Table 2: fine-tuning results (5 folds), with the paper's numbers"),
    ("code", """
t2 = table2(prof)
t2.to_csv(fig_dir / "table2_numbers.csv", index=False)
table = format_table2(t2)
write_table(table, "table2", prof, caption=f"Table 2 ({prof.name} profile): DSC %, HD95/ASD in pixels; mean ± std over 5 folds")
table
"""),
    ("md", """
## Which of the paper's claims hold here

Each claim is checked on the means; the evidence gives mean ± std over the folds, so a difference
smaller than the spread is visible as such."""),
    ("code", """
c = claims(t2)
write_table(c, "claims", prof, caption=f"The paper's claims on the {prof.name} profile")
c
"""),
    ("md", "## Figure 3: one effusion image segmented by every method"),
    ("code", """
ann = load_split(prof, "annotated")
f0 = {m: load_fold(prof, m, 0) for m in FINETUNE_METHODS}
j = int(ann.parents["effusion"].to_numpy()[f0["none"]["index"]].argmax())
i = int(f0["none"]["index"][j])
fig = plot_segmentations(ann.images[i], ann.gold[i], {ROW_NAMES[m]: f0[m]["pred"][j] for m in FINETUNE_METHODS})
fig.savefig(fig_dir / "figure3_segmentations.png", dpi=150, bbox_inches="tight")
"""),
    ("md", """
## Robustness on the held-out test set (beyond the paper)

DSC (%) per scanner (0 ImagingDynamics, 1 Philips) and effusion status, and consistency (%): the Dice
between the prediction on an image and on its exact counterfactual, outside the effusion region."""),
    ("code", """
regions = changed_regions(prof)
rob = pd.concat([robustness(prof, m, regions) for m in FINETUNE_METHODS], ignore_index=True)
rob["method"] = rob["method"].map(ROW_NAMES)
write_table(rob.round(2), "robustness", prof, caption="Robustness on the held-out test split")
rob.round(2)
"""),
], "06_results.ipynb")
print("ok")
