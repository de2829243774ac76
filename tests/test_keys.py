"""The run keys the committed figures and the runs being made were made with: the current code must compute
them unchanged (:mod:`cfcl.run_keys`), so every committed run and every long run stays valid.

Each pinned file lists ``variant, stage, label, key`` of every run one profile's figures come from; every
one must still be computed (runs added since, e.g. a new ablation arm, may be added to the file). After a
deliberate change of a key (never to a setting at its default), regenerate the files with
``python -m cfcl.run_keys cpu`` (and the variants below) and say so in the commit.
"""
from __future__ import annotations

import pytest

from cfcl.config import get_profile
from cfcl.paths import repo_root
from cfcl.run_keys import COLUMNS, figure_runs, runs_csv_text, write_runs_csv

#: The HVAE before the wider one and the cycle term (README: it made pr2, powered and the cf_source arm).
NARROW = "hvae.widths=16,32,64,64 hvae.cf_elbo_slack=0 hvae.cf_cycle=0"
# file -> (profile, variant, overrides, with the ablation arms)
PINNED = {
    "figures/cpu/runs.csv": ("cpu", "", "", True),
    "figures/cpu-powered/runs.csv": ("cpu", "powered", f"{NARROW} finetune.seeds=3", False),
    "figures/cpu-pr2/runs.csv": ("cpu", "pr2", f"{NARROW} pretrain.seeds=2", False),
    # the long experiment (2,700 pre-training steps, 3 pre-training x 3 fine-tuning seeds)
    "tests/keys/cpu-long.csv": ("cpu", "long", "pretrain.steps=2700 finetune.seeds=3 pretrain.seeds=3", False),
    # the HVAEs of earlier cpu figures and ablations: without the cycle term, and the narrow one
    "tests/keys/cpu-cycle0.csv": ("cpu", "cycle0", "hvae.cf_cycle=0", True),
    "tests/keys/cpu-narrow.csv": ("cpu", "narrow", NARROW, True),
    "tests/keys/smoke.csv": ("smoke", "", "", True),
}


@pytest.mark.parametrize("path", sorted(PINNED))
def test_keys_unchanged(path, dirs):
    name, variant, overrides, ablations = PINNED[path]
    rows = figure_runs(get_profile(name, overrides, variant), ablations=ablations)
    committed = (repo_root() / path).read_text().splitlines()
    got = runs_csv_text(rows).splitlines()
    assert got[0] == committed[0]
    lost = sorted(set(committed) - set(got))  # runs added since (a new ablation arm) are allowed
    if lost:
        new = sorted(set(got) - set(committed))
        pytest.fail(f"{path}: {len(lost)} committed run key(s) no longer computed: {lost[:8]}; new: {new[:8]}")
    assert not any((dirs / "runs").rglob("manifest.json")), "listing the runs must make none"


def test_cpu_list_covers_every_stage():
    lines = (repo_root() / "figures/cpu/runs.csv").read_text().splitlines()
    assert tuple(lines[0].split(",")) == COLUMNS
    stages = {line.split(",")[1] for line in lines[1:]}
    assert {"phantom", "classifiers", "hvae", "hvae_cf", "counterfactuals", "cf_quality", "pretrain",
            "finetune"} <= stages
    assert len(lines) - 1 >= 20


def test_a_changed_setting_changes_its_runs_and_their_downstream(dirs):
    base = {(r["stage"], r["label"], r["key"]) for r in figure_runs(get_profile("cpu"))}
    beta = {(r["stage"], r["label"], r["key"]) for r in figure_runs(get_profile("cpu", "hvae.beta=2"))}
    changed = {s for s, _, _ in base - beta}
    assert {"hvae", "hvae_cf", "counterfactuals", "cf_quality"} <= changed
    assert "phantom" not in changed and "classifiers" not in changed
    # methods without counterfactual views do not read the HVAE
    assert ("pretrain", "vader") in {(s, lab) for s, lab, _ in base & beta}


def test_write_runs_csv(dirs):
    prof = get_profile("smoke", variant="v", overrides="seed=1")
    path = write_runs_csv(prof, ablations=False)
    assert path == dirs / "figures" / "smoke-v" / "runs.csv"
    assert path.read_text() == runs_csv_text(figure_runs(prof))


def test_runs_csv_lists_the_ablation_arms_for_the_default_variant_only(dirs):
    """Notebook 06's `write_runs_csv(prof)`: the default variant's file lists the ablation arms' runs (the
    figures of `figures/<label>/ablations/`), a named variant's only its own, like the committed variant files."""
    arm = "abl-"
    default = write_runs_csv(get_profile("smoke")).read_text()
    named = write_runs_csv(get_profile("smoke", variant="powered")).read_text()
    assert any(line.split(",")[0].startswith(arm) for line in default.splitlines())
    assert not any(arm in line.split(",")[0] for line in named.splitlines())
    assert named == runs_csv_text(figure_runs(get_profile("smoke", variant="powered")))
    with_arms = write_runs_csv(get_profile("smoke", variant="powered"), ablations=True).read_text()
    assert any(line.split(",")[0].startswith("powered-abl-") for line in with_arms.splitlines())
