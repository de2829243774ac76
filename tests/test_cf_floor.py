"""The do(effusion) diagnostics of experiments/ (cfcl.counterfactual.diagnostics): the remove direction's floor (what it
redraws, what it keeps, its averages), the noise-abduction decodings, the lung and change masks, and the
breakdown of the stray change, on hand-made arrays (and a tiny HVAE)."""
from __future__ import annotations

import numpy as np
import pytest

import cfcl.counterfactual.diagnostics as diag


def test_redraw_takes_only_what_fluid_can_hide():
    n = 3
    noise = dict(eff_side=np.array([0, 1, 2]), dome=np.zeros((n, 2)), hidden=np.zeros((n, 3)),
                 gastric=np.zeros((n, 3)), habitus=np.zeros(n))
    fresh = {k: np.ones_like(v, dtype=float) for k, v in noise.items()}
    out = diag.redraw(noise, fresh)
    # the dome is redrawn on the fluid's side only: right, left, both
    assert out["dome"].tolist() == [[1, 0], [0, 1], [1, 1]]
    assert (out["hidden"] == 1).all() and (out["gastric"] == 1).all()
    assert (out["habitus"] == 0).all() and (out["eff_side"] == noise["eff_side"]).all()  # the rest is kept
    assert (noise["dome"] == 0).all()  # the input is not modified


def test_floor_rows_keeps_draws_within_tolerance():
    x = np.zeros((2, 1, 4), np.uint8)
    exact = np.full((2, 1, 4), 100, np.uint8)
    renders = np.stack([np.full((2, 1, 4), v, np.uint8) for v in (90, 100, 120)])  # (C=3, N=2, 1, 4)
    errors = np.array([[0.1, 5.0], [0.2, 5.0], [3.0, 5.0]])  # image 1: no draw within any tolerance below 5
    rows = diag.floor_rows(x, exact, renders, errors, tol=0.5)
    one, bayes = rows["one draw"], rows["Bayes"]
    assert one["images_kept"] == bayes["images_kept"] == 0.5
    assert one["draws_kept"] == 2.0  # image 0 keeps draws 0 and 1
    # image 0: the first kept draw (90) is 10 off; image 1 is pinned by x and counts at 0
    assert one["oracle_mae_kept"] == pytest.approx(10.0) and one["oracle_mae"] == pytest.approx(5.0)
    # the per-pixel median of 90 and 100 (95) is 5 off
    assert bayes["oracle_mae_kept"] == pytest.approx(5.0) and bayes["oracle_mae"] == pytest.approx(2.5)
    prior = diag.floor_rows(x, exact, renders, errors, tol=np.inf)["Bayes"]
    assert prior["images_kept"] == 1.0 and prior["draws_kept"] == 3.0
    assert prior["oracle_mae"] == pytest.approx(0.0)  # the median of 90, 100, 120 is exact


def test_noise_abduction_forms_decode_the_same_latents():
    """The noise-abduction decodings (experiments/cf_noise_abduction.py): the `scaled` form is the pipeline's counterfactual, `additive` carries
    the residual over unscaled, and the null intervention returns x under both."""
    import torch

    import cfcl.counterfactual.hvae as hv
    from cfcl.counterfactual.parents import intervene

    torch.manual_seed(0)
    model = hv.HVAE(16, widths=[8, 8], z_dims=[2, 2], stem_stride=2).eval()
    with torch.no_grad():  # a decoder that visibly depends on the parents
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.rand(3, 1, 16, 16) * 1.6 - 0.8
    pa = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    cf_pa = intervene(pa, "effusion")
    out = diag.decodings(model, x, pa, cf_pa)
    assert set(out) == set(diag.FORMS)
    with torch.no_grad():
        want = model.counterfactual(x, pa, cf_pa)
    assert torch.allclose(out["scaled"], want, atol=1e-6)
    assert not torch.allclose(out["additive"], out["scaled"], atol=1e-3)  # the scale ratio is not 1 here
    delta = out["mean"] - out["factual mean"]  # additive = x + (cf_loc - loc), where nothing is clamped
    inside = (out["mean"].abs() < 1) & (out["factual mean"].abs() < 1) & (out["additive"].abs() < 1)
    assert torch.allclose(out["additive"][inside], (x + delta)[inside], atol=1e-5)
    null = diag.decodings(model, x, pa, pa)
    assert torch.allclose(null["scaled"], x, atol=1e-5) and torch.allclose(null["additive"], x, atol=1e-6)


def test_lung_masks_dilate_the_lungs_or_their_hull():
    s = np.zeros((1, 9, 9), np.uint8)
    s[0, 2:7, 1:3] = 1  # right lung
    s[0, 2:7, 6:8] = 2  # left lung, a gap of three columns between them
    lungs = diag.lung_masks(s, 0, hull=False)
    assert lungs.dtype == bool and lungs.sum() == 20 and not lungs[0, 4, 4]
    hull = diag.lung_masks(s, 0, hull=True)
    assert hull[0, 2:7, 1:8].all() and hull.sum() == 35  # the gap between the lungs is filled
    grown = diag.lung_masks(s, 1, hull=False)
    # one 4-connected step: each 5 x 2 lung gains a row above and below (2 + 2) and a column each side (5 + 5)
    assert grown[0, 1, 1] and grown[0, 4, 3] and not grown[0, 1, 0] and not grown[0, 4, 4] and grown.sum() == 2 * (10 + 14)
    assert (diag.lung_masks(np.zeros((1, 4, 4), np.uint8), 2, hull=True) == 0).all()  # no lungs: nothing


def test_blend_keeps_the_change_inside_the_mask_only():
    x = np.full((1, 21, 21), 100, np.uint8)
    cf = np.full((1, 21, 21), 200, np.uint8)
    mask = np.zeros((1, 21, 21), bool)
    mask[0, 5:16, 5:16] = True
    out = diag.blend(x, cf, mask)
    # beyond the softening's reach (scipy truncates the 1-pixel Gaussian at 4 pixels): cf inside, x outside
    assert out[0, 10, 10] == 200 and out[0, 0, 0] == 100
    assert 100 < out[0, 10, 5] < 200 and 100 < out[0, 10, 4] < 200  # at the edge the two are mixed
    assert (diag.blend(x, cf, np.zeros_like(mask)) == x).all()
    # localise: the mask is where the smoothed change exceeds tau; a change of 100 everywhere passes tau 50 only
    assert (diag.localise(x, cf, 1.5, 50.0) == cf).all() and (diag.localise(x, cf, 1.5, 150.0) == x).all()


def test_stray_splits_the_change_outside_the_region_by_place():
    x = np.full((2, 8, 8), 100, np.uint8)
    exact = x.copy()
    exact[0, 4:6, 1:3] = 150  # image 0: fluid on the left half only (unilateral)
    exact[1, 4:6, 1:3] = 150  # image 1: both halves (bilateral)
    exact[1, 4:6, 5:7] = 150
    cf = exact.copy()
    cf[0, 4:6, 1:3] = 140  # inside the region: not counted anywhere
    cf[0, 3, 1] = 120  # outside, next to the region (near), on the fluid's half: +20
    cf[0, 0, 6] = 90  # outside, far, on the other half: -10
    out = diag.stray(x, cf, exact, near=1, unilateral=0.9)
    assert out["n"] == 2 and out["unilateral"] == 1
    n_out = 64 - 4, 64 - 8
    assert out["outside"] == pytest.approx(30 / (n_out[0] + n_out[1]))
    assert out["signed"] == pytest.approx((10 / n_out[0] + 0) / 2)
    # near: 1-pixel 4-connected ring around each 2 x 2 block: 8 pixels per block, 8 + 16 in all, one of them +20
    assert out["near"] == pytest.approx(20 / 24)
    assert out["far"] == pytest.approx(10 / (n_out[0] + n_out[1] - 24))
    # x is flat: its darkest and brightest thirds are all of it
    assert out["dark"] == out["bright"] == out["outside"]
    # the fluid's half of image 0 holds 32 - 4 outside pixels, its other half 32; image 1 is in neither
    assert out["same_half"] == pytest.approx(20 / 28) and out["other_half"] == pytest.approx(10 / 32)
    # the thirds by intensity
    x2 = x.copy()
    x2[:, :4] = 10  # the top half dark: 64 dark pixels outside the region, 52 bright ones (100)
    exact2 = np.where(exact != x, exact, x2).astype(np.uint8)
    cf2 = exact2.copy()
    cf2[:, 0] = 15  # +5 on the 16 pixels of the top rows, all dark
    d = diag.stray(x2, cf2, exact2, near=1)
    assert d["dark"] == pytest.approx(80 / 64) and d["bright"] == 0 and d["outside"] == pytest.approx(80 / 116)
    # no change at all: zeros; no region at all: the halves are undefined
    assert diag.stray(x, x, x)["outside"] == 0 and np.isnan(diag.stray(x, x, x)["same_half"])
    # the parts of the change: inside the region only, outside only; together they make the whole
    p = diag.parts(x, cf, exact)
    assert (p["whole"] == cf).all()
    assert p["inside only"][0, 4, 1] == 140 and p["inside only"][0, 3, 1] == 100 and p["inside only"][0, 0, 6] == 100
    assert p["outside only"][0, 4, 1] == 100 and p["outside only"][0, 3, 1] == 120 and p["outside only"][0, 0, 6] == 90
    assert ((p["inside only"].astype(int) + p["outside only"] - x) == cf).all()
