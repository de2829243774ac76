"""Write notebooks 01_train_hvae.ipynb and 02_counterfactuals.ipynb (clean, no outputs).

Run from the repository root: ``.venv/bin/python notebooks/_make_01_02.py``.
"""
from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
KERNEL = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}


def parameters(extra: str = "") -> nbformat.NotebookNode:
    return new_code_cell(f'profile = "smoke"\nseed = 0{extra}', metadata={"tags": ["parameters"]})


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata=KERNEL)
    nbformat.validate(nb)
    nbformat.write(nb, HERE / name)


NB01 = [
    new_markdown_cell(
        "# 01 · Training the counterfactual HVAE\n\n"
        "Paper section 2.1: a conditional hierarchical VAE (HVAE) with the parents sex, scanner and "
        "pleural effusion (PE) is trained \"using the same method as the authors\" of the "
        "counterfactual-generation work it builds on: a VDVAE-style encoder/decoder with latent groups at "
        "several resolutions, a prior conditioned on the parents, a discretised-Gaussian likelihood and the "
        "loss NLL + β·KL. This notebook trains it on the pre-training split (oversampling PE, which is "
        "2.5 % of PadChest), and shows the loss curves, samples for every parent setting and reconstructions."),
    parameters(),
    new_code_cell(
        "from cfcl.config import get_profile\n"
        "prof = get_profile(profile, seed=seed)\n"
        "from cfcl.data import load_split\n"
        "from cfcl.hvae import load_hvae, read_log, train_hvae\n"
        "from cfcl.paths import figures_dir\n"
        "from cfcl.plots.counterfactuals import plot_loss_curves, plot_reconstructions, plot_samples"),
    new_markdown_cell(
        "## Training\n\n"
        "`train_hvae` trains on the pre-training split with AdamW, an EMA of the weights, gradient clipping "
        "and skipping of outlier steps; it checkpoints every epoch, resumes after an interruption and is a "
        "no-op once the model for this profile is trained. Losses are in nats per pixel."),
    new_code_cell(
        "checkpoint = train_hvae(prof)\n"
        "model = load_hvae(prof)\n"
        "print(f\"latent resolutions (coarse to fine): {sorted(set(model.res))}, \"\n"
        "      f\"{sum(p.numel() for p in model.parameters()):,} parameters\")\n"
        "log = read_log(prof)\n"
        "log.round(3)"),
    new_markdown_cell("## Loss curves\n\nTraining loss (running model) and validation loss (EMA model) per epoch."),
    new_code_cell(
        "fig = plot_loss_curves(log)\n"
        "fig.savefig(figures_dir(prof.name) / \"hvae_loss.png\", dpi=120, bbox_inches=\"tight\")"),
    new_markdown_cell(
        "## Samples per parent setting\n\n"
        "Images drawn from the conditional prior p(z | pa) at temperature 0.7, one row per combination of "
        "sex, scanner and PE: the parents should be visible in the samples."),
    new_code_cell(
        "fig = plot_samples(model, per_setting=4, t=0.7, seed=prof.seed)\n"
        "fig.savefig(figures_dir(prof.name) / \"hvae_samples.png\", dpi=120, bbox_inches=\"tight\")"),
    new_markdown_cell(
        "## Reconstructions\n\n"
        "Validation images decoded from their posterior means. What the decoder mean misses is carried by "
        "the abducted pixel noise when counterfactuals are generated (notebook 02)."),
    new_code_cell(
        "val = load_split(prof, \"val\")\n"
        "fig = plot_reconstructions(model, val.images, val.parents, n=6)\n"
        "fig.savefig(figures_dir(prof.name) / \"hvae_reconstructions.png\", dpi=120, bbox_inches=\"tight\")"),
]

NB02 = [
    new_markdown_cell(
        "# 02 · Counterfactuals and their quality\n\n"
        "Paper section 2.1: for every image the HVAE generates three counterfactuals, do(scanner), "
        "do(PE) and do(scanner, PE), by abduction (latents from the posterior, pixel noise "
        "u = (x − loc)/scale), action (flip the parent) and prediction (decode with the new parents). "
        "This notebook generates them, shows them next to the phantom's exact (oracle) counterfactuals, and "
        "scores them: effectiveness (parent predictors see the new parent), composition (the null "
        "intervention returns x), reversibility (undoing the intervention returns x) and the error to the "
        "oracle, against the trivial baseline that returns x itself."),
    parameters(),
    new_code_cell(
        "from cfcl.config import get_profile\n"
        "prof = get_profile(profile, seed=seed)\n"
        "from cfcl.classifiers import evaluate_classifiers\n"
        "from cfcl.counterfactuals import evaluate, generate, get_counterfactuals\n"
        "from cfcl.data import load_split\n"
        "from cfcl.paths import figures_dir\n"
        "from cfcl.plots.counterfactuals import plot_counterfactual_grid, save_table"),
    new_markdown_cell(
        "## Counterfactuals of test images\n\n"
        "Columns: the image, the HVAE counterfactual, the oracle counterfactual (rendered by the phantom "
        "from the same exogenous noise) and both differences to x (red brighter, blue darker). The HVAE "
        "is trained as in notebook 01 if needed; counterfactuals are cached on disk per model."),
    new_code_cell(
        "test = load_split(prof, \"test\")\n"
        "cf = generate(prof, \"test\")\n"
        "fig = plot_counterfactual_grid(test.images, test.parents, cf, test.counterfactuals)\n"
        "fig.savefig(figures_dir(prof.name) / \"counterfactual_grid.png\", dpi=120, bbox_inches=\"tight\")"),
    new_markdown_cell(
        "## Parent predictors\n\n"
        "Small CNNs trained on factual images predict sex, scanner and PE; their accuracy and ROC AUC on "
        "the factual validation images bound what effectiveness can show."),
    new_code_cell(
        "predictors = evaluate_classifiers(prof, \"val\")\n"
        "save_table(predictors, \"parent_predictors\", prof.name)\n"
        "predictors.round(3)"),
    new_markdown_cell(
        "## Counterfactual quality\n\n"
        "One row per method and intervention on the test split (balanced over scanner × PE). "
        "`effectiveness`: share of counterfactuals whose intervened parent(s) the predictors read at the new "
        "value; `preservation`: same for the other parents at their old value; `composition_mae`, "
        "`reversibility_mae`, `oracle_mae`: mean absolute error in grey levels; `oracle_psnr` (dB), "
        "`oracle_ssim`; `changed_dice`: Dice between the regions changed by more than 10 % of the grey "
        "range in the HVAE and in the oracle counterfactual. `identity` returns x itself."),
    new_code_cell(
        "quality = evaluate(prof, \"test\")\n"
        "save_table(quality, \"counterfactual_quality\", prof.name)\n"
        "quality.round(3)"),
    new_markdown_cell(
        "## The views used for pre-training\n\n"
        "`get_counterfactuals` is what pre-training calls: the three HVAE counterfactuals of every "
        "pre-training image (or the oracle ones with `pretrain.cf_source = \"oracle\"`)."),
    new_code_cell(
        "views = get_counterfactuals(prof, \"pretrain\")\n"
        "print(f\"{prof.pretrain.cf_source} counterfactuals: {views.shape} {views.dtype}\")"),
]

if __name__ == "__main__":
    write("01_train_hvae.ipynb", NB01)
    write("02_counterfactuals.ipynb", NB02)
    print("wrote 01_train_hvae.ipynb, 02_counterfactuals.ipynb")
