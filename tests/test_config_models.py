"""Profiles, paths and the network: overrides, hashing, atomic writes, weight transfer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cfcl.config import PROFILES, HVAEConfig, SettingError, get_profile, parse_overrides
from cfcl.data.metadata import joint_distribution
from cfcl.finetune import folds, soft_dice_loss
from cfcl.models import CFCLNet, load_pretrained, transfer_prefixes
from cfcl.paths import atomic_path


def test_overrides_and_errors():
    p = get_profile("smoke", **{"pretrain.steps": 7, "data.image_size": 128, "seed": 3})
    assert (p.pretrain.steps, p.data.image_size, p.seed) == (7, 128, 3)
    assert get_profile("smoke").pretrain.steps == PROFILES["smoke"].pretrain.steps  # not mutated
    with pytest.raises(KeyError, match="unknown profile"):
        get_profile("nope")
    with pytest.raises(KeyError, match="stepz"):
        get_profile("smoke", **{"pretrain.stepz": 1})


@pytest.mark.parametrize("override, key", [
    ("pretrain.steps=0", "pretrain.steps"), ("pretrain.steps=-5", "pretrain.steps"),
    ("pretrain.steps=abc", "pretrain.steps"), ("pretrain.batch_size=0", "pretrain.batch_size"),
    ("pretrain.pixels_per_view=100000", "pretrain.pixels_per_view"), ("hvae.epochs=0", "hvae.epochs"),
    ("finetune.batch_size=1", "finetune.batch_size"), ("data.image_size=48", "data.image_size"),
    ("pretrain.negatives=all", "pretrain.negatives"), ("pretrain.cf_source=gan", "pretrain.cf_source"),
    ("seed=-1", "seed"), ("pretrain.lr=fast", "pretrain.lr"), ("data.effusion_prevalence=1.5", "data.effusion_prevalence"),
    ("hvae.widths=8,16", "hvae.widths"), ("data.n_annotated_healthy=1", "data.n_annotated_healthy"),
    ("latent.n_images=99", "latent.n_images"), ("hvae.stem_stride=3", "hvae.stem_stride"),
    ("pretrain.steps=1.5", "pretrain.steps"), ("pretrain.steps=true", "pretrain.steps"),
    ("pretrain.decoder_channels=[64,32]", "pretrain.decoder_channels"),
    ("pretrain.decoder_channels=[64,32,16,0,16]", "pretrain.decoder_channels"),
    ("pretrain.encoder=resnet999", "pretrain.encoder"),
])
def test_invalid_settings_are_refused_naming_the_key(override, key):
    with pytest.raises(SettingError, match=key.replace(".", r"\.")):
        get_profile("smoke", override)


def test_an_unknown_encoder_names_the_setting_and_the_choices():
    with pytest.raises(SettingError, match=r"setting pretrain\.encoder: expected one of 'resnet18'.*got 'resnet999'"):
        get_profile("smoke", "pretrain.encoder=resnet999")
    assert get_profile("smoke", "pretrain.encoder=resnet34").pretrain.encoder == "resnet34"


def test_settings_declared_omit_default_leave_the_key_at_their_default():
    """The one rule of :func:`cfcl.config.key_section`: a setting declared ``omit_default`` is out of a key at
    its default and in it otherwise; every other setting is always in it."""
    from cfcl import finetune, pretrain
    from cfcl.config import key_section

    prof = get_profile("smoke", "hvae.cf_cycle=0")
    hv = key_section(prof, "hvae")
    assert "cf_cycle" not in hv and "cf_replicate" not in hv and hv["cf_lr"] == prof.hvae.cf_lr
    assert key_section(get_profile("smoke"), "hvae")["cf_cycle"] == 3.0  # the smoke profile's own weight
    assert key_section(get_profile("smoke", "hvae.cf_replicate=2"), "hvae")["cf_replicate"] == 2
    assert "steps" not in key_section(prof, "pretrain", exclude=["steps"])
    # the settings the stages leave out at their neutral value are exactly those declared so
    for name, later in (("pretrain", pretrain.ADDED_LATER), ("finetune", finetune.ADDED_LATER)):
        section = key_section(get_profile("cpu"), name)
        assert not set(later) & set(section), name
        assert set(later) | set(section) == set(get_profile("cpu").section(name)), name


def test_values_are_converted_to_the_setting_type():
    p = get_profile("smoke", "pretrain.steps=5 pretrain.lr=1 hvae.widths=8,16,16,16 data.effusion_prevalence=null")
    assert p.pretrain.steps == 5 and isinstance(p.pretrain.lr, float) and p.hvae.widths == (8, 16, 16, 16)
    assert p.data.effusion_prevalence is None
    assert get_profile("smoke", {"pretrain.steps": "7"}).pretrain.steps == 7
    assert parse_overrides("a.b=1 c=x 'd=two words'") == {"a.b": 1, "c": "x", "d": "two words"}
    with pytest.raises(SettingError, match="key=value"):
        parse_overrides("pretrain.steps")


def test_real_data_has_no_oracle():
    with pytest.raises(SettingError, match="cf_source"):
        get_profile("smoke", "data.source=padchest pretrain.cf_source=oracle")


def test_variant_label_and_the_commands_that_remake_a_profile():
    p = get_profile("smoke", "pretrain.cf_source=oracle seed=1", variant="oracle")
    assert p.label == "smoke-oracle" and get_profile("smoke").label == "smoke"
    assert p.cli() == "--profile smoke --set pretrain.cf_source=oracle seed=1"
    assert p.make_args() == "PROFILE=smoke VARIANT=oracle SET='pretrain.cf_source=oracle seed=1'"
    again = get_profile(p.name, " ".join(p.overrides), p.variant)
    assert again == p
    with pytest.raises(SettingError, match="plain name"):
        get_profile("smoke", "seed=1", variant="a/b")


@pytest.mark.slow
def test_entry_points_exit_non_zero_naming_the_key(tmp_path):
    import subprocess
    import sys

    env = {**__import__("os").environ, "CFCL_RUNS": str(tmp_path), "CFCL_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "cfcl.pretrain", "--profile", "smoke", "--method", "vader",
                          "--set", "pretrain.steps=0"], capture_output=True, text=True, env=env)
    assert out.returncode != 0 and "pretrain.steps" in out.stderr


def test_method_registry_is_the_one_source():
    from cfcl import methods

    assert methods.FINETUNE_METHODS == ("none",) + methods.PRETRAIN_METHODS
    assert methods.PROPOSED == ("dvd_cl", "mvd_cl", "s_dvd_cl", "s_mvd_cl")
    assert methods.METHODS["s_mvd_cl"].table2["DSC"] == (93.93, 1.92)
    assert methods.METHODS["s_dvd_cl"].table1 == (17.07, 0.9581)
    with pytest.raises(KeyError, match="unknown method"):
        methods.get("none", pretrained=True)
    import subprocess

    out = subprocess.run(["python3", "-m", "cfcl.methods", "proposed"], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(__file__).parents[1])
    assert out.stdout.split() == list(methods.PROPOSED)
    # the Makefile starts these methods' pre-training after notebook 02 (their views are counterfactuals)
    out = subprocess.run(["python3", "-m", "cfcl.methods", "counterfactual"], capture_output=True, text=True,
                         cwd=__import__("pathlib").Path(__file__).parents[1])
    assert out.stdout.split() == ["dvd_cl", "mvd_cl", "s_dvd_cl", "s_mvd_cl"] == list(methods.COUNTERFACTUAL)


def test_method_subsets_keep_the_registry_order_and_refuse_unknown_names():
    from cfcl.methods import FINETUNE_METHODS, PROPOSED, select

    assert select("", FINETUNE_METHODS) == FINETUNE_METHODS
    assert select("s_mvd_cl none", FINETUNE_METHODS) == ("none", "s_mvd_cl")
    assert select("none,s_mvd_cl", PROPOSED) == ("s_mvd_cl",)  # none is not a proposed method
    assert select(["dvd_cl"], PROPOSED) == ("dvd_cl",)
    with pytest.raises(KeyError, match=r"unknown method.*dvdcl"):
        select("none dvdcl")
    import subprocess

    out = subprocess.run(["make", "-n", "reproduce", "PROFILE=smoke", "ONLY=none dvdcl"], capture_output=True,
                         text=True, cwd=__import__("pathlib").Path(__file__).parents[1])
    assert out.returncode != 0 and "unknown method(s) dvdcl" in out.stderr


def test_paper_profile_is_the_paper():
    p = get_profile("paper")
    assert p.pretrain.encoder == "resnet50" and p.pretrain.pixels_per_view == 1000
    assert p.data.n_annotated_healthy == 20 and p.data.n_annotated_effusion == 50
    assert p.finetune.folds == 5


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole"


def test_joint_distribution_matches_the_measured_padchest_counts():
    j = joint_distribution().set_index(["scanner", "sex", "effusion"])["count"]
    # REFERENCES section 3: ImagingDynamics F 27,518 / 364 PE; M 25,625 / 520; Philips F 17,801 / 633; M 16,971 / 768
    assert j.sum() == 90200
    assert (j[0, 0, 0], j[0, 0, 1], j[0, 1, 0], j[0, 1, 1]) == (27518, 364, 25625, 520)
    assert (j[1, 0, 0], j[1, 0, 1], j[1, 1, 0], j[1, 1, 1]) == (17801, 633, 16971, 768)


def test_model_shapes_and_modes():
    net = CFCLNet("resnet18", embed_dim=8).eval()
    x = torch.randn(2, 1, 64, 64)
    assert net(x).shape == (2, 3, 64, 64)
    assert net(x, mode="embed").shape == (2, 8, 64, 64)
    assert net(x, mode="global").shape == (2, 8)
    with pytest.raises(ValueError):
        net(x, mode="bogus")


@pytest.mark.parametrize("method", ["simclr", "dvd_cl", "none"])
def test_weight_transfer(method):
    torch.manual_seed(0)
    src = CFCLNet("resnet18", embed_dim=8)
    torch.manual_seed(1)
    dst = CFCLNet("resnet18", embed_dim=8)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    loaded = load_pretrained(dst, src.state_dict(), method)
    prefixes = transfer_prefixes(method)
    for k, v in dst.state_dict().items():
        want = src.state_dict()[k] if k.startswith(prefixes) and prefixes else before[k]
        assert torch.equal(v, want), k
    assert all(k.startswith(prefixes) for k in loaded)
    if method == "simclr":
        assert not any(k.startswith("unet.decoder.") for k in loaded)


def test_weight_transfer_refuses_other_architectures():
    src = CFCLNet("resnet34", embed_dim=8).state_dict()
    with pytest.raises((KeyError, ValueError)):
        load_pretrained(CFCLNet("resnet18", embed_dim=8), src, "dvd_cl")
    narrow = CFCLNet("resnet18", embed_dim=8, decoder_channels=(64, 32, 16, 16, 16))
    with pytest.raises(ValueError, match="shape"):  # another decoder width is another architecture
        load_pretrained(narrow, CFCLNet("resnet18", embed_dim=8).state_dict(), "dvd_cl")


def test_a_narrower_decoder_is_a_setting_out_of_the_keys_at_its_default():
    from cfcl.finetune import finetune_run
    from cfcl.pretrain import pretrain_run

    base, narrow = get_profile("cpu"), get_profile("cpu", "pretrain.decoder_channels=[64,32,16,16,16]", "n")
    assert narrow.pretrain.decoder_channels == (64, 32, 16, 16, 16)
    net = CFCLNet("resnet18", embed_dim=8, decoder_channels=narrow.pretrain.decoder_channels).eval()
    x = torch.randn(2, 1, 64, 64)
    assert net(x).shape == (2, 3, 64, 64) and net(x, mode="embed").shape == (2, 8, 64, 64)
    assert net.unet.decoder(net.unet.encoder(x)).shape[1] == 16
    wide = sum(p.numel() for p in CFCLNet("resnet18", embed_dim=8).unet.decoder.parameters())
    assert sum(p.numel() for p in net.unet.decoder.parameters()) < wide / 4
    for run in (pretrain_run, finetune_run):  # None reads the architecture too
        for m in ("dvd_cl", "none") if run is finetune_run else ("dvd_cl",):
            assert "decoder_channels" not in str(run(base, m).settings)
            assert run(narrow, m).key != run(base, m).key


def test_folds_are_stratified_4_healthy_10_effusion():
    eff = np.array([0] * 20 + [1] * 50)
    f = folds(eff, 5, seed=0)
    for k in range(5):
        assert (eff[f == k] == 0).sum() == 4 and (eff[f == k] == 1).sum() == 10
    assert np.array_equal(f, folds(eff, 5, seed=0))


def test_soft_dice_loss_is_zero_for_a_perfect_prediction():
    y = torch.zeros(1, 8, 8, dtype=torch.long)
    y[0, 2:5, 1:3], y[0, 2:5, 5:7] = 1, 2
    logits = torch.nn.functional.one_hot(y, 3).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(logits, y).item() < 1e-3
    assert soft_dice_loss(-logits, y).item() > 0.9


def test_table2_test_reads_per_image_tables():
    import pandas as pd

    from cfcl.results import table2_test

    # 4 images: 2 healthy (DSC 0.9, 0.8) and 2 with effusion (0.6, 0.7); one empty prediction (HD95 inf).
    t = pd.DataFrame({"dsc": [0.9, 0.8, 0.6, 0.7], "hd95": [1.0, 3.0, np.inf, 5.0], "asd": [0.5, 0.5, 1.0, 1.0],
                      "effusion": [0, 0, 1, 1]})
    row = table2_test({"dvd_cl": t}, n_boot=200).iloc[0]
    assert row["n"] == 4 and row["name"] == "DVD-CL"
    assert row["DSC_mean"] == pytest.approx(75.0) and row["DSC_NF_mean"] == pytest.approx(85.0)
    assert row["DSC_PE_mean"] == pytest.approx(65.0)
    assert row["HD95_mean"] == pytest.approx(3.0)  # the non-finite distance is left out
    assert row["DSC_low"] <= 75.0 <= row["DSC_high"] and row["DSC_low"] >= 60.0 and row["DSC_high"] <= 90.0
    assert row["DSC_paper"] == pytest.approx(92.76)



def test_the_previous_cpu_hvae_stays_reachable_with_the_readme_settings():
    """The `cpu` HVAE is wider with a slack (cf_capacity.md) and a cycle term (hvae.md); the README's SET gives
    back the models before them: the dataclass default with no slack and no cycle, so the same run keys as the
    runs made when it was the default (a cycle weight of 0 keys nothing)."""
    from cfcl.counterfactual.cf_finetune import cf_finetune_run, cf_settings

    now = get_profile("cpu")
    assert now.hvae.widths == (24, 48, 96, 96) and now.hvae.cf_elbo_slack == 0.1 and now.hvae.cf_cycle == 3.0
    before = get_profile("cpu", "hvae.widths=16,32,64,64 hvae.cf_elbo_slack=0 hvae.cf_cycle=0")
    assert before.hvae == HVAEConfig()
    assert cf_finetune_run(before).key != cf_finetune_run(now).key
    no_cycle = get_profile("cpu", "hvae.cf_cycle=0")
    assert cf_finetune_run(no_cycle).key != cf_finetune_run(now).key and "cf_cycle" not in cf_settings(no_cycle)["cf"]
    assert cf_finetune_run(no_cycle).upstream["hvae"].key == cf_finetune_run(now).upstream["hvae"].key
    # the ELBO model does not depend on the fine-tuning's slack
    assert cf_finetune_run(now).upstream["hvae"].key == cf_finetune_run(
        get_profile("cpu", "hvae.cf_elbo_slack=0")).upstream["hvae"].key
